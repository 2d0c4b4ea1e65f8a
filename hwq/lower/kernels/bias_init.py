"""Start a kernel's int32 accumulator from the bias instead of adding the bias in the epilogue.

The kernels' TE definitions add the bias in the epilogue (``dot_conv.epilogue``): ``acc + bias``
is the arithmetic the reference defines. Left there, TVM's simplifier and LLVM both rewrite
``int64(acc + bias) * M`` into ``(int64(acc) + int64(bias)) * M``, which is no longer a 32 x 32
multiply-high, and the requantization falls back to emulated 64-bit vector multiplies (about 40
instructions per 8 lanes on AVX2, most of a depthwise conv's time). Starting the reduction from
the bias computes the same int32 and keeps the multiply-high visible.

TVM's ``te.sum(..., init=...)`` would say this in the definition, but ``te.create_prim_func``
drops the ``init`` (TVM 0.27), so the schedule edits the two blocks instead.
"""

from __future__ import annotations

from tvm import ir, tirx
from tvm.ir.prim import expr as P
from tvm.s_tir import SBlock


def _load_of(e, buf):
    """``e`` as a load of ``buf`` (under at most one cast), else None."""
    if isinstance(e, P.Cast):
        e = e.value
    return e if isinstance(e, ir.expr.TensorLoad) and e.source.same_as(buf) else None


def _drop_add_of(e, buf, found: list):
    """``e`` with every ``x + buf[...]`` (or ``x + cast(buf[...])``) replaced by ``x``; the
    dropped loads are appended to ``found``."""
    load = _load_of(e.b, buf) if isinstance(e, P.Add) else None
    if load is not None:
        found.append(load)
        return _drop_add_of(e.a, buf, found)
    if isinstance(e, P.BinaryOpExpr):
        return type(e)(_drop_add_of(e.a, buf, found), _drop_add_of(e.b, buf, found))
    if isinstance(e, P.Cast):
        return P.Cast(e.ty, _drop_add_of(e.value, buf, found))
    return e


def bias_as_init(sch, acc_block: str = "acc", out_block: str = "out", bias_name: str = "bias") -> bool:
    """Rewrite ``sch`` in place (before any loop transformation): ``acc`` starts from
    ``bias[o]`` and ``out`` no longer adds it. Returns False (and changes nothing) when the
    epilogue does not have exactly one bias add of that form."""
    acc_rv, out_rv = sch.get_sblock(acc_block), sch.get_sblock(out_block)
    acc, out = sch.get(acc_rv), sch.get(out_rv)
    bias = next((r.source for r in out.reads if r.source.name == bias_name), None)
    if bias is None or acc.init is None or not isinstance(out.body, tirx.BufferStore):
        return False
    found: list = []
    value = _drop_add_of(out.body.value, bias, found)
    init = acc.init
    # one add, indexed by the output channel (the last axis of both blocks)
    if len(found) != 1 or len(found[0].indices) != 1 or not found[0].indices[0].same_as(out.body.indices[-1]):
        return False
    channel = init.indices[-1]
    # the bias stays out of the update's read regions: tensor intrinsics match them exactly
    new_acc = SBlock(acc.iter_vars, acc.reads, acc.writes, acc.name_hint, acc.body,
                     tirx.BufferStore(init.buffer, tirx.BufferLoad(bias, [channel]), init.indices),
                     acc.alloc_buffers, acc.match_buffers, acc.annotations)
    new_out = SBlock(out.iter_vars, [r for r in out.reads if not r.source.same_as(bias)], out.writes, out.name_hint,
                     tirx.BufferStore(out.body.buffer, value, out.body.indices), None, out.alloc_buffers,
                     out.match_buffers, out.annotations)
    sch.state.replace(sch.get_sref(acc_rv), new_acc, {acc: new_acc})
    sch.state.replace(sch.get_sref(out_rv), new_out, {out: new_out})
    return True
