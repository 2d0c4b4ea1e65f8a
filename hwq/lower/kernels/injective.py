"""CPU schedule for the glue between kernels: fused elementwise / injective / small reductions.

After FuseOps + FuseTIR, requantization chains, residual adds, padding and layout moves are
PrimFuncs of a few blocks each. TVM's CPU pipeline leaves them as serial scalar loops; this rule
inlines every block into the last one, vectorizes the contiguous inner extent and runs the rest
in parallel. A function it cannot schedule is left as it was: correct, only slower.
"""

from __future__ import annotations

import tvm
from tvm import tirx

_LANES = (64, 32, 16, 8, 4)


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def schedule_injective(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """Return a scheduled copy of ``func``, or None if it is not a fused injective function."""
    sch = tvm.s_tir.Schedule(func)
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    for b in blocks[:-1]:
        sch.compute_inline(b)
    block = sch.get_child_blocks(root)[-1]
    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    n_spatial = 0
    for iv in iters:
        if iv.iter_type != tirx.IterVar.DataPar:
            break
        n_spatial += 1
    if n_spatial == 0 or len(loops) != len(iters):
        return None
    spatial = loops[:n_spatial]
    if n_spatial == len(loops):          # purely elementwise: vectorize the innermost (channel) axis
        last = _static(sch.get(spatial[-1]).extent)
        lanes = next((v for v in _LANES if last is not None and last % v == 0), None)
        if lanes is not None and last > lanes:
            _, vec = sch.split(spatial[-1], [None, lanes])
            sch.vectorize(vec)
        elif last is not None and last <= 64:
            sch.vectorize(spatial[-1])
        outer = spatial[:-1]
    else:                                # a reduction (pooling): parallel over the spatial loops
        outer = spatial
    # parallel over (batch, rows): splitting a flattened index would put div/mod into every
    # access and ruin the vector loads of padding and layout moves
    if outer:
        sch.parallel(sch.fuse(*outer[:2]) if len(outer) > 1 else outer[0])
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="hwq.ScheduleInjectiveCPU")
def ScheduleInjectiveCPU(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (TVM pass naming)
    """Schedule every PrimFunc of ``mod`` that is not already scheduled (see module docstring)."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is not None and "tir.is_scheduled" in func.attrs:
            continue
        try:
            new = schedule_injective(func.with_attr("global_symbol", "main"))
        except Exception:  # noqa: BLE001  (any schedule error: keep the correct unscheduled function)
            new = None
        if new is not None:
            updates[gv] = new.with_attrs(dict(func.attrs) if func.attrs else {}).with_attr("tir.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod
