"""Efficiency factors fitted to a measured table, so that shapes never measured are predicted too.

Per kernel family, the measured time of a workload is modelled as

    t = a + b * compute_ms + c * memory_ms + d * M        (a, b, c, d >= 0)

with ``compute_ms`` and ``memory_ms`` the two roofline terms of the target file (``hwq.cost.roofline``,
the compute term over the cores the kernel's row split keeps busy) and ``M`` the millions of output
elements: ``a`` is the fixed cost of a call (the thread pool's fork and join), ``1/b`` the fraction
of peak the kernel reaches, ``1/c`` the fraction of bandwidth, ``d`` the requantization epilogue's
cost per output. Four numbers per family, fitted by non-negative least squares on *relative* errors (a 10 us layer matters as much
as a 10 ms one to a ranking). The glue between kernels gets the same treatment from whole-model
measurements (``GlueFit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from hwq.cost.options import family
from hwq.cost.roofline import roofline
from hwq.cost.table import LatencyTable, parse_kernel_key
from hwq.target import Target

MIN_SAMPLES = 4


@dataclass(frozen=True)
class KernelFit:
    """``t = overhead_ms + compute_scale * compute_ms + memory_scale * memory_ms + epilogue_ms * M``
    for one kernel family, ``M`` the millions of output elements (each one requantized)."""

    kernel: str
    overhead_ms: float
    compute_scale: float
    memory_scale: float
    epilogue_ms: float
    samples: int

    def predict(self, compute_ms: float, memory_ms: float, mega_outputs: float) -> float:
        return (self.overhead_ms + self.compute_scale * compute_ms + self.memory_scale * memory_ms
                + self.epilogue_ms * mega_outputs)


@dataclass(frozen=True)
class GlueFit:
    """A whole model beyond its kernels' isolated times: ``call_ms + launches * launch_ms +
    megabytes * ms_per_mb + cold * kernels_memory_ms``. The last term is what the kernels pay in the
    model and not when timed alone: repeated in isolation, a kernel finds its weights and input in
    cache; in the model they were last touched one or more operators ago (it scales with the
    kernels' roofline memory time)."""

    call_ms: float
    launch_ms: float
    ms_per_mb: float
    cold: float
    samples: int

    def predict(self, launches: int, megabytes: float, kernels_memory_ms: float) -> float:
        return self.call_ms + launches * self.launch_ms + megabytes * self.ms_per_mb + self.cold * kernels_memory_ms


def _relative_nnls(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Non-negative ``x`` minimising ``sum(((features @ x) / measured - 1)^2)``."""
    x, _ = nnls(features / measured[:, None], np.ones(len(measured)))
    return x


def fit_kernels(table: LatencyTable, target: Target, keys=None) -> dict[str, KernelFit]:
    """One :class:`KernelFit` per kernel family with at least ``MIN_SAMPLES`` entries in ``table``
    (restricted to ``keys`` when given: a held-out evaluation fits on part of the table)."""
    rows: dict = {}
    for key, m in table.kernels.items():
        if keys is not None and key not in keys:
            continue
        workload, kernel, batch = parse_kernel_key(key)
        est = roofline(workload, family(kernel), target, batch)
        rows.setdefault(kernel, []).append((1.0, est.compute_ms, est.memory_ms, workload.out_elems(batch) / 1e6,
                                            m.median_ms))
    fits = {}
    for kernel, r in rows.items():
        if len(r) < MIN_SAMPLES:
            continue
        a = np.asarray(r)
        x = _relative_nnls(a[:, :4], a[:, 4])
        fits[kernel] = KernelFit(kernel, *(float(v) for v in x), len(r))
    return fits


def fit_glue(table: LatencyTable) -> GlueFit | None:
    """The glue model from the table's whole-model measurements (None with fewer than 2). Fitted on
    the relative error of the whole model's time, the quantity a budget is about."""
    rows = [(m["median_ms"], m["kernels_ms"], 1.0, m["glue_ops"], m["glue_mb"], m["kernels_memory_ms"])
            for m in table.models.values() if "kernels_memory_ms" in m]
    if len(rows) < 2:
        return None
    a = np.asarray(rows, dtype=float)
    total, kernels = a[:, 0], a[:, 1]
    x, _ = nnls(a[:, 2:] / total[:, None], (total - kernels) / total)
    return GlueFit(*(float(v) for v in x), len(rows))
