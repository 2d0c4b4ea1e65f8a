"""``estimate`` and ``estimate_plan``: what a layer, and a whole plan, cost on a target.

Lookups prefer, in order: the measured table entry of this exact workload, kernel and batch
(``measured``); the kernel family's efficiency factors fitted to the table (``calibrated``); the
bare roofline of the target file (``roofline``). ARM and CUDA targets say ``roofline`` until
someone profiles a board (``hwq profile --rpc``); nothing pretends otherwise.

Example:
    >>> model = CostModel("x86-avx2")
    >>> est = model.plan(graph, BitPlan(default=LayerSpec(7, 8)), batch=16)
    >>> print(est.table())
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from hwq import qgraph as qg
from hwq.cost.calibrate import fit_glue, fit_kernels
from hwq.cost.glue import GlueOp, glue_ops
from hwq.cost.machine import resolve_host
from hwq.cost.options import KernelFamily, Option, option_kernel, plan_layers
from hwq.cost.roofline import Estimate, roofline
from hwq.cost.table import LatencyTable, find_table
from hwq.cost.workload import Workload
from hwq.errors import ConfigError
from hwq.plan import BitPlan
from hwq.target import Target, load_target

AUTO = "auto"   # table argument: look the measured table up (``hwq.cost.table.find_table``)
# Glue priced by the roofline alone (no whole-model measurement yet): traffic at the target's
# bandwidth plus a launch cost of a few microseconds, the order TVM's VM measures per operator.
_DEFAULT_LAUNCH_MS = 0.002


class CostModel:
    """The cost model of one target: its measured table (if any) and the fits made from it.

    Args:
        target: a ``Target`` or a target name; ``mcpu = "host"`` targets are resolved against
            this machine's CPU (the same kernels the lowering would pick here).
        table: a ``LatencyTable``, ``None`` (roofline only), or ``"auto"`` (the table measured for
            this target on this CPU, if one exists; ``note`` says why one was refused).
    """

    def __init__(self, target: Target | str, table: LatencyTable | None | str = AUTO):
        self.target = resolve_host(load_target(target) if isinstance(target, str) else target)
        self.note = ""
        if isinstance(table, str):
            if table != AUTO:
                raise ConfigError(f"table must be a LatencyTable, None or {AUTO!r}, got {table!r}")
            table, self.note = find_table(self.target)
        self.table = table
        measured_bw = table.peaks.get("bandwidth_gbs") if table is not None else None
        if measured_bw:
            # the roofline of the machine the table was measured on, not of the file's reference CPU
            self.target = dataclasses.replace(
                self.target, memory=dataclasses.replace(self.target.memory, bandwidth_gbs=float(measured_bw)))
        self.fits = fit_kernels(table, self.target) if table is not None else {}
        self.glue_fit = fit_glue(table) if table is not None else None

    @property
    def cold(self) -> float:
        """What a kernel pays in a model beyond its isolated time, per ms of its roofline memory time."""
        return self.glue_fit.cold if self.glue_fit is not None else 0.0

    def in_model_ms(self, workload: Workload, kernel: KernelFamily, batch: int = 1) -> float:
        """A kernel's time inside a model: its estimate plus its share of the glue fit's cold term
        (summed over a plan's layers, with ``glue(..., kernels_memory_ms=0)``, the plan's total)."""
        est = self.kernel(workload, kernel, batch)
        return est.ms + self.cold * est.memory_ms

    def kernel(self, workload: Workload, kernel: KernelFamily, batch: int = 1) -> Estimate:
        """The estimate of ``kernel`` running ``workload``: measured, else calibrated, else roofline."""
        roof = roofline(workload, kernel, self.target, batch)
        m = self.table.get(workload, kernel.name, batch) if self.table is not None else None
        if m is not None:
            return Estimate(m.median_ms, roof.ops, roof.bytes, roof.compute_ms, roof.memory_ms, "measured",
                            f"{self.table.describe()} (median of {m.repeats})", kernel.name)
        fit = self.fits.get(kernel.name)
        if fit is not None:
            ms = fit.predict(roof.compute_ms, roof.memory_ms, workload.out_elems(batch) / 1e6)
            return Estimate(ms, roof.ops, roof.bytes, roof.compute_ms,
                            roof.memory_ms, "calibrated",
                            f"{kernel.name} efficiency fitted to {fit.samples} entries of {self.table.describe()}",
                            kernel.name)
        return roof

    def estimate(self, workload: Workload, option: Option, batch: int = 1, input_bits: int = 8,
                 input_signed: bool = False) -> Estimate:
        """One layer at ``option`` whose input is ``input_bits`` wide (its producer's option)."""
        return self.kernel(workload, option_kernel(workload, self.target, option, input_bits, input_signed), batch)

    def glue(self, ops: list[GlueOp], batch: int = 1, kernels_memory_ms: float = 0.0) -> tuple[float, str]:
        """Milliseconds of a model's glue operators, one per-call overhead and what its kernels pay
        in the model beyond their isolated times, and the source."""
        mb = batch * sum(op.bytes_per_image for op in ops) / 1e6
        if self.glue_fit is not None:
            return self.glue_fit.predict(len(ops), mb, kernels_memory_ms), "calibrated"
        return len(ops) * _DEFAULT_LAUNCH_MS + mb / self.target.memory.bandwidth_gbs, "roofline"

    def extra_glue_ms(self, ops: list[GlueOp], batch: int = 1) -> float:
        """What ``ops`` add to a model's glue (their launches and traffic, not the per-call overhead)."""
        return self.glue(ops, batch)[0] - self.glue([], batch)[0]

    def plan_glue(self, graph: qg.QGraph, plan: BitPlan, batch: int = 1) -> tuple[float, str, int]:
        """``(ms, source, operators)`` of the glue of ``graph`` under ``plan``."""
        ops = glue_ops(graph, plan, self.target)
        memory = sum(self.kernel(c.workload, c.kernel, batch).memory_ms for c in plan_layers(graph, plan, self.target))
        ms, source = self.glue(ops, batch, memory)
        return ms, source, len(ops)

    def plan(self, graph: qg.QGraph, plan: BitPlan, batch: int = 1) -> "PlanEstimate":
        """The per-layer table and the whole-model prediction of ``graph`` under ``plan``."""
        plan.check_names(c.name for c in plan_layers(graph, BitPlan(), self.target))
        rows = []
        for c in plan_layers(graph, plan, self.target):
            rows.append(PlanRow(c.name, c.workload.op, c.option.name, c.input_bits,
                                self.kernel(c.workload, c.kernel, batch)))
        glue_ms, glue_source, n_ops = self.plan_glue(graph, plan, batch)
        return PlanEstimate(self.target.name, batch, rows, glue_ms, glue_source, n_ops, self.note)


@dataclass(frozen=True)
class PlanRow:
    """One layer of a plan estimate."""

    name: str
    op: str
    option: str
    input_bits: int
    estimate: Estimate


@dataclass(frozen=True)
class PlanEstimate:
    """Per-layer estimates, the glue, and the whole-model total of one plan on one target."""

    target: str
    batch: int
    rows: list = field(default_factory=list)
    glue_ms: float = 0.0
    glue_source: str = "roofline"
    glue_ops: int = 0
    note: str = ""

    @property
    def layers_ms(self) -> float:
        return sum(r.estimate.ms for r in self.rows)

    @property
    def total_ms(self) -> float:
        return self.layers_ms + self.glue_ms

    def table(self) -> str:
        """The per-layer table and the total, as text."""
        w = max([len(r.name) for r in self.rows] + [5])
        lines = [f"{'layer':{w}s}  {'op':9s} {'option':6s} {'in':>3s} {'kernel':17s} {'MOPs':>9s} {'KB':>9s} "
                 f"{'ms':>9s}  {'bound':7s} source"]
        for r in self.rows:
            e = r.estimate
            lines.append(f"{r.name:{w}s}  {r.op:9s} {r.option:6s} {r.input_bits:3d} {e.kernel:17s} {e.ops / 1e6:9.2f} "
                         f"{e.bytes / 1e3:9.1f} {e.ms:9.4f}  {e.bound:7s} {e.source}")
        lines.append(f"{'glue':{w}s}  {self.glue_ops} operators (layout, shift/pad, adds, pools, quantize)"
                     f"{'':>4s} {self.glue_ms:9.4f}  {'memory':7s} {self.glue_source}")
        lines.append(f"{'total':{w}s}  batch {self.batch} on {self.target}: {self.total_ms:.4f} ms "
                     f"(layers {self.layers_ms:.4f} + glue {self.glue_ms:.4f})")
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"target": self.target, "batch": self.batch, "total_ms": self.total_ms, "layers_ms": self.layers_ms,
                "glue_ms": self.glue_ms, "glue_source": self.glue_source, "glue_ops": self.glue_ops, "note": self.note,
                "layers": [{"name": r.name, "op": r.op, "option": r.option, "input_bits": r.input_bits,
                            "kernel": r.estimate.kernel, "ops": r.estimate.ops, "bytes": r.estimate.bytes,
                            "ms": r.estimate.ms, "bound": r.estimate.bound, "source": r.estimate.source,
                            "provenance": r.estimate.provenance} for r in self.rows]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def estimate(workload: Workload, option: Option, target: Target | str, batch: int = 1, *,
             table: LatencyTable | None | str = AUTO, input_bits: int = 8, input_signed: bool = False) -> Estimate:
    """Latency of one layer at ``option`` on ``target`` (see :class:`CostModel`)."""
    return CostModel(target, table).estimate(workload, option, batch, input_bits, input_signed)


def estimate_plan(graph: qg.QGraph, plan: BitPlan, target: Target | str, batch: int = 1, *,
                  table: LatencyTable | None | str = AUTO) -> PlanEstimate:
    """Per-layer table and whole-model prediction of ``graph`` under ``plan`` on ``target``."""
    return CostModel(target, table).plan(graph, plan, batch)
