"""Shape functions in a fixed order, so that one model builds to a byte-identical library.

TVM's ``VMShapeLower`` (TVM 0.27) computes a dynamic batch's symbolic shapes (``4 * n * 10``,
``n * 28 * 28``, ...) in host PrimFuncs ``shape_func``, ``shape_func1``, ...: each stores a set
of shape values into the VM's shape heap ``H`` at fixed slots, all read from slots filled before
it runs (the batch ``n``). Which values each function computes is fixed, but their order comes
from iterating an ``std::unordered_map`` keyed by the expressions' structural hash, which hashes
a free variable (``n``) by its address: the stores come out in a different order from build to
build, in one process as in two, and LLVM keeps the order in the machine code. The stores are
independent, so sorting them by slot changes nothing but makes the order (and the library) the
same every time.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx


def _constant_index(indices) -> int | None:
    if len(indices) == 1 and isinstance(indices[0], tirx.IntImm):
        return int(indices[0].value)
    return None


def stores_in_slot_order(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` with its stores sorted by slot, if it is a host function whose body is only
    stores to distinct constant slots of one buffer, none reading a slot another writes (then
    any order gives the same result); else None."""
    body = func.body
    if not (func.attrs and func.attrs.get("tirx.is_host_func")) or not isinstance(body, tirx.SeqStmt):
        return None
    stores = list(body.seq)
    if not stores or not all(isinstance(s, tirx.BufferStore) for s in stores):
        return None
    slots = [_constant_index(s.indices) for s in stores]
    if None in slots or len(set(slots)) != len(slots) or not all(s.buffer.same_as(stores[0].buffer) for s in stores):
        return None
    for store in stores:
        loads = []
        relax.analysis.post_order_visit(store.value, lambda n: loads.append(n) if isinstance(n, tvm.ir.TensorLoad) else None)
        for load in loads:
            slot = _constant_index(load.indices) if load.source.same_as(store.buffer) else -1
            if slot is None or slot in slots:
                return None
    order = sorted(range(len(stores)), key=slots.__getitem__)
    return func.with_body(tirx.SeqStmt([stores[i] for i in order]))


@tvm.transform.module_pass(opt_level=0, name="hwq.SortShapeFuncStores")
def SortShapeFuncStores(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Sort the stores of every shape function (:func:`stores_in_slot_order`); run after
    ``VMShapeLower``."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            ordered = stores_in_slot_order(func)
            if ordered is not None:
                mod[gv] = ordered
    return mod
