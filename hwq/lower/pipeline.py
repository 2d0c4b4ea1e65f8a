"""The Relax build pipeline per target kind: TVM's four ordered pass lists, with hwq's passes in.

``tvm.compile(mod, target)`` with the ``"default"`` pipeline neither fuses operators nor schedules
them on CPUs; hwq's CPU pipeline legalizes, fuses (hand-scheduled kernels are opaque to FuseOps),
schedules the fused glue, then lowers as TVM's CPU backend does.
"""

from __future__ import annotations

import tvm
from tvm import relax

from hwq.errors import ConfigError, choices
from hwq.lower.kernels.injective import ScheduleInjectiveCPU


def _cpu(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="hwq.CPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target)
                + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                   relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                   ScheduleInjectiveCPU]
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline


PIPELINES = {"cpu": _cpu}


def get_pipeline(kind: str, target: tvm.target.Target) -> tvm.transform.Pass:
    """The Relax pipeline for an hwq target kind (``"cpu"``, ...)."""
    if kind not in PIPELINES:
        raise ConfigError(f"no build pipeline for target kind {kind!r}; available: {choices(PIPELINES)}")
    return PIPELINES[kind](target)
