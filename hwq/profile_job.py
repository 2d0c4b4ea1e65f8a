"""``hwq profile``: calibrate the cost model of a target by measuring on it (here, or on a board over RPC).

For each model: every distinct (layer shape, kernel) that any plan over the target's options can
run is built with the real lowering and tuned tiles and timed at each batch size
(``hwq.lower.profile.measure_kernels``); then a few whole models (every layer at one option) are
compiled and timed, which is what the glue between kernels is fitted to. The table is saved after
every step to ``$HWQ_CACHE/measured/<target>/<device>.json``, so a killed profile resumes, and a
time budget stops it cleanly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hwq.cost.calibrate import fit_glue, fit_kernels
from hwq.cost.machine import CpuId, runs_on_this_machine, this_cpu
from hwq.cost.options import layer_options
from hwq.cost.table import LatencyTable, user_path
from hwq.cost.workload import Workload
from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec
from hwq.target import Target, load_target


@dataclass(frozen=True)
class ProfileConfig:
    """What ``run_profile`` measures.

    Args:
        models: zoo model names (``hwq.models.zoo.MODELS``).
        target: target name or path.
        batches: batch sizes to time each workload at.
        time_budget_s: stop measuring after this long (what was measured is kept).
        rpc: ``"HOST:PORT"`` of a TVM RPC server on the board, or of a tracker with ``key``.
        key: the device key at the tracker (``rpc`` is then the tracker's address).
        repeats: timed repeats per workload (the median is kept, with the quartiles).
        whole_models: also time whole models (the glue fit needs them).
    """

    models: tuple = ("rescnn",)
    target: str = "x86-host"
    batches: tuple = (1, 16)
    time_budget_s: float = 900.0
    rpc: str | None = None
    key: str | None = None
    repeats: int = 7
    whole_models: bool = True
    progress: bool = True

    def __post_init__(self):
        from hwq.models.zoo import MODELS

        for m in self.models:
            if m not in MODELS:
                raise ConfigError(f"unknown model {m!r}; valid: {', '.join(map(repr, sorted(MODELS)))}")
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"batches must be positive integers, got {self.batches!r}")
        if not self.time_budget_s > 0:
            raise ConfigError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats!r}")
        if self.key is not None and self.rpc is None:
            raise ConfigError("a tracker key needs the tracker's address: --tracker HOST:PORT --key KEY")
        if self.rpc is not None:
            _host_port(self.rpc)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"RPC address {text!r} is not HOST:PORT (e.g. 192.0.2.7:9090)")
    return host, int(port)


def _device(config: ProfileConfig, target: Target):
    """(device, target with resolved features, the CpuId the table records)."""
    if config.rpc is not None:
        from hwq.lower.device import RpcDevice

        host, port = _host_port(config.rpc)
        device = RpcDevice(host, port, key=config.key)
        arch = (target.host_triple or "").split("-")[0]
        return device, target, CpuId(target.description, "", "", tuple(sorted(target.features)), arch)
    if not runs_on_this_machine(target):
        raise ConfigError(f"target {target.name!r} does not run on this machine; measure it on the board: "
                          f"hwq profile --target {target.name} --rpc HOST:PORT (a TVM RPC server there)")
    from hwq.lower.device import LocalDevice
    from hwq.lower.tvm_target import resolve_features

    return LocalDevice(), resolve_features(target), this_cpu()


def _uniform_plans(graph, target: Target) -> list[tuple[str, BitPlan]]:
    """Uniform W8A8 and, where the target offers narrower options, every layer at the fastest one."""
    from hwq.cost.workload import layer_nodes

    offered = set()
    for node in layer_nodes(graph):
        offered |= set(layer_options(Workload.of(node, graph.tensors[node.input].shape), target))
    plans = [("uniform-w8a8", BitPlan())]
    narrow = min(offered, key=lambda o: (o.weight_bits + o.act_bits, o.weight_bits))
    if narrow.name != "w8a8":
        plans.append((f"uniform-{narrow.name}", BitPlan(default=LayerSpec(narrow.weight_bits, narrow.act_bits))))
    if any(o.spec.is_float for o in offered):       # every layer in float: the glue of the float borders
        plans.append(("uniform-fp32", BitPlan(layers={n.name: LayerSpec.parse("fp32") for n in layer_nodes(graph)})))
    return plans


def run_profile(config: ProfileConfig, log=print) -> LatencyTable:
    """Measure ``config.models`` on ``config.target`` and return (and save) the table."""
    from importlib.metadata import version

    import hwq
    from hwq.lower import compile_model
    from hwq.lower.profile import measure_bandwidth, measure_kernels, measure_model, record_model
    from hwq.models.zoo import example_graph

    start = time.perf_counter()
    target = load_target(config.target)
    device, target, cpu = _device(config, target)
    path = user_path(target.name, cpu, device.remote)
    table = (LatencyTable.load(path) if path.is_file() else
             LatencyTable(target.name, cpu, device.remote, hwq.__version__, version("apache-tvm"), path=path))
    if table.kernels:
        log(f"resuming {path}: {len(table.kernels)} kernel entries already measured")
    graphs = {m: example_graph(m) for m in config.models}
    left = lambda: config.time_budget_s - (time.perf_counter() - start)   # noqa: E731
    n = measure_kernels(list(graphs.values()), target, table, device, config.batches, config.repeats,
                        left(), config.progress, log)
    log(f"measured {n} kernel workload(s) on {device.describe()}")
    if "bandwidth_gbs" not in table.peaks and left() > 0:
        table.peaks["bandwidth_gbs"] = round(measure_bandwidth(device, target), 2)
        table.peaks["how"] = ("bandwidth_gbs: a parallel vectorized byte copy-and-add over 64 MiB (read + write); "
                              "int8_gops_best_kernel: the fastest rate any measured hwq kernel reached")
        table.save()
    if config.whole_models:
        for m, graph in graphs.items():
            for plan_name, plan in _uniform_plans(graph, target):
                todo = [b for b in config.batches if f"{m}|{plan_name}|b{b}" not in table.models]
                if not todo or left() <= 0:
                    continue
                g = graph if plan_name == "uniform-w8a8" else example_graph(m, plan)
                compiled = compile_model(g, target)
                # the cost model reads the plan over the integer graph (a float layer is a conv there)
                priced = graph if plan_name == "uniform-fp32" else g
                for b in todo:
                    timing = measure_model(compiled, device, b, config.repeats, name=f"{m}-{plan_name}")
                    record_model(table, f"{m}|{plan_name}|b{b}", priced, plan, target, b, timing)
                    log(f"{m} {plan_name} batch {b}: {timing[0]:.3f} ms")
    fits = fit_kernels(table, target)
    for k, f in sorted(fits.items()):
        log(f"  {k:18s} {f.samples:3d} entries: {1 / f.compute_scale if f.compute_scale else float('inf'):6.1%} of peak, "
            f"{f.overhead_ms * 1e3:6.1f} us per call")
    glue = fit_glue(table)
    if glue is not None:
        log(f"  glue: {glue.call_ms * 1e3:.1f} us per call + {glue.launch_ms * 1e3:.2f} us per operator + "
            f"{glue.ms_per_mb:.3f} ms per MB + {glue.cold:.3f} x the kernels' memory time "
            f"({glue.samples} whole-model measurements)")
    log(f"wrote {table.save()}")
    return table
