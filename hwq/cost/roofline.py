"""The bare roofline of one kernel on one workload: the cost model's last resort.

Time = max(compute at the target's peak rate, traffic at its memory bandwidth), counting what the
kernel really does: channels padded to its instruction block (a 3-channel conv gathered into
4-byte patches, 24 output channels rounded to 32 on VNNI), weights at their stored width (4-bit
weights packed two per byte), activations as bytes. A roofline is an optimistic bound; measured
tables and the efficiency factors fitted to them (``hwq.cost.calibrate``) replace it wherever they
exist, and every ``Estimate`` says which of the three it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwq.cost.options import KernelFamily
from hwq.cost.workload import Workload
from hwq.target import Target

SOURCES = ("measured", "calibrated", "roofline")


@dataclass(frozen=True)
class Estimate:
    """Predicted latency of one piece of work, and where the number came from.

    Attributes:
        ms: the prediction, milliseconds.
        ops: operations (2 per multiply-accumulate, padded channels included).
        bytes: activation and weight bytes the kernel moves (each counted once).
        compute_ms, memory_ms: the two roofline terms at the target's peak and bandwidth.
        source: ``"measured"`` (a table entry for this exact workload), ``"calibrated"`` (efficiency
            factors fitted to measurements of other workloads) or ``"roofline"`` (the target file only).
        provenance: where the source came from, in words (table file and device, fit, target file).
        kernel: the kernel family that runs it.
    """

    ms: float
    ops: float
    bytes: float
    compute_ms: float
    memory_ms: float
    source: str
    provenance: str
    kernel: str

    @property
    def bound(self) -> str:
        """``"compute"`` or ``"memory"``: the larger roofline term."""
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def traffic(workload: Workload, kernel: KernelFamily, batch: int) -> tuple[float, float]:
    """``(ops, bytes)`` of ``kernel`` running ``workload`` on ``batch`` images."""
    oh, ow = workload.out_hw
    kh, kw = workload.kernel
    cin, cout = workload.in_channels, workload.out_channels
    if kernel.dtype == "fp32":
        cout_p = cout if workload.op == "depthwise" or kernel.name == "generic-fp32" else _round_up(cout, kernel.block)
        ops = 2.0 * batch * oh * ow * cout_p * workload.reduction
        return ops, 4.0 * (cout_p * workload.reduction + workload.in_elems(batch) + batch * oh * ow * cout_p)
    if kernel.name in ("cpu-depthwise", "generic"):
        reduction, cout_p = workload.reduction, cout
    elif workload.op == "conv2d" and cin < 4 and kh * kw > 1:
        reduction, cout_p = _round_up(kh * kw * cin, 4), _round_up(cout, kernel.block)   # im2col patches
    else:
        reduction, cout_p = _round_up(cin, 4) * kh * kw, _round_up(cout, kernel.block)
    ops = 2.0 * batch * oh * ow * cout_p * reduction
    weight_bytes = cout_p * reduction * kernel.weight_bits / 8
    act_bytes = workload.in_elems(batch) + batch * oh * ow * cout_p
    return ops, float(weight_bytes + act_bytes)


def parallel_share(workload: Workload, kernel: KernelFamily, target: Target) -> float:
    """The fraction of the target's cores a kernel keeps busy. hwq's CPU kernels split the output
    rows among the cores (one parallel region per call, whatever the batch): 7 rows on 2 cores
    leave one core idle an eighth of the time, and a dense layer (one row) runs on one core."""
    if kernel.kind != "cpu" or kernel.name.startswith("generic"):
        return 1.0
    rows, units = workload.out_hw[0], target.compute.units
    return rows / (units * -(-rows // units))


def roofline(workload: Workload, kernel: KernelFamily, target: Target, batch: int = 1) -> Estimate:
    """The roofline estimate of ``kernel`` running ``workload`` at ``batch`` on ``target``.

    The compute term counts the cores the kernel's row split keeps busy (``parallel_share``).

    Example (hand-checkable): a dense 1024 -> 1024 layer at batch 1 on a 2-core target with a
    1 TOP/s int8 peak and 10 GB/s does 2.1 M ops (4.2 us on the one core its single row runs on)
    and moves 1 MiB of weights (105 us): memory bound.
    """
    ops, nbytes = traffic(workload, kernel, batch)
    peak = target.peak_ops_per_s("fp32" if kernel.dtype == "fp32" else "int8")
    compute_ms = ops / (peak * parallel_share(workload, kernel, target)) * 1e3
    memory_ms = nbytes / (target.memory.bandwidth_gbs * 1e9) * 1e3
    return Estimate(max(compute_ms, memory_ms), ops, nbytes, compute_ms, memory_ms, "roofline",
                    f"roofline of target file {target.name!r}", kernel.name)
