"""The Relax build pipeline per target kind: TVM's four ordered pass lists, with hwq's passes in.

``tvm.compile(mod, target)`` with the ``"default"`` pipeline neither fuses operators nor schedules
them on CPUs; hwq's CPU pipeline legalizes, fuses (hand-scheduled kernels are opaque to FuseOps),
schedules the fused glue, then lowers as TVM's CPU backend does.

The CUDA pipeline is TVM's CUDA backend with one DLight rule for the glue, ``gpu.Fallback``
(threads over the output elements, reductions serial in each thread): hwq's conv / dense
kernels arrive scheduled (DLight skips them), and what is left is elementwise, padding, layout
moves, pooling and the convs hwq has no CUDA kernel for (grouped, depthwise). TVM's other rules
fail on these in TVM 0.27: ``gpu.GeneralReduction`` schedules a grouped int8 conv fused with
its requantization as a cross-thread reduction that ``LowerCrossThreadReduction`` then rejects
("reduction-related loops ... are not the deepest"), and ``gpu.Matmul`` sends an int8 matmul
to the tensor-core path, which fails on sm_75-sm_86.
"""

from __future__ import annotations

import tvm
from tvm import relax

from hwq.errors import ConfigError, choices
from hwq.lower.kernels.injective import ScheduleInjectiveCPU
from hwq.lower.shape_order import SortShapeFuncStores


def _backend_pipeline(target: tvm.target.Target, backend, schedule_glue: tvm.transform.Pass, name: str):
    """TVM's pass lists of ``backend`` around legalize, fuse and ``schedule_glue`` (hand-scheduled
    kernels are opaque to FuseOps; the glue between them is what ``schedule_glue`` schedules),
    then the shape functions' stores in a fixed order (``hwq.lower.shape_order``: else the
    library differs from build to build)."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                backend.library_dispatch_passes(target)
                + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                   relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                   schedule_glue]
                + backend.dataflow_lower_passes(target)
                + backend.finalize_passes(target)
                + [SortShapeFuncStores])
            return seq(mod)

    return _pipeline


def _cpu(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return _backend_pipeline(target, cpu, ScheduleInjectiveCPU, "hwq.CPUPipeline")


def _cuda(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    return _backend_pipeline(target, cuda, dl.ApplyDefaultSchedule(dl.gpu.Fallback()), "hwq.CUDAPipeline")


PIPELINES = {"cpu": _cpu, "cuda": _cuda}


def get_pipeline(kind: str, target: tvm.target.Target) -> tvm.transform.Pass:
    """The Relax pipeline for an hwq target kind (``"cpu"``, ``"cuda"``)."""
    if kind not in PIPELINES:
        raise ConfigError(f"no build pipeline for target kind {kind!r}; available: {choices(PIPELINES)}")
    return PIPELINES[kind](target)
