"""Measure what the cost model predicts: each kernel workload, and whole models, on a device.

``measure_kernels`` builds every distinct (workload, kernel) a set of graphs can run on a target,
over every option the target offers (``hwq.cost.options``), with the real rules and tuned tiles,
and times it at each batch size with TVM's ``time_evaluator`` (median and quartiles of several
repeats). The table is saved after each workload, so an interrupted profile resumes where it
stopped, and a ``time_budget_s`` stops it cleanly with what it has. ``measure_model`` times a
compiled model through the Relax VM, the record the glue between kernels is fitted to.
"""

from __future__ import annotations

import time

import numpy as np
import tvm
from tqdm import tqdm

from hwq import qgraph as qg
from hwq.cost import glue as cost_glue
from hwq.cost.estimate import CostModel
from hwq.cost.options import GENERIC, GENERIC_FP32, KernelFamily, kernel_for, layer_options, option_kernel
from hwq.cost.roofline import traffic
from hwq.cost.table import LatencyTable, Measurement
from hwq.cost.workload import Workload
from hwq.errors import ConfigError
from hwq.lower.device import LocalDevice, time_function, time_vm, vm_timer
from hwq.lower.kernels import select_kernel
from hwq.lower.kernels.fp32_conv import float_conv_kernel, float_dense_kernel
from hwq.lower.tvm_target import to_tvm_target
from hwq.plan import BitPlan
from hwq.target import Target

# (weight |max|, input max) pairs that reach each kernel family of a workload: 8-bit weights on
# a full byte, 7-bit weights, 4-bit weights, and 8-bit weights on a 4-bit input.
_RANGES = ((127, 255), (63, 255), (7, 255), (127, 15))


def kernel_workloads(graphs, target: Target) -> list[tuple[Workload, KernelFamily]]:
    """Every distinct (workload, kernel) that some plan over ``target``'s options runs for a layer
    of ``graphs`` (a layer's kernel depends on its weights' width and its input's)."""
    out = {}
    for graph in graphs:
        for node in graph.nodes:
            if node.op not in ("conv2d", "dense"):
                continue
            wl = Workload.of(node, graph.tensors[node.input].shape)
            signed = graph.tensors[node.input].dtype == "int8"
            opts = layer_options(wl, target)
            in_bits = {8} | {o.act_bits for o in opts if o.act_bits <= 8}
            for o in opts:
                for b in sorted(in_bits):
                    k = option_kernel(wl, target, o, b, signed)
                    if k not in (GENERIC, GENERIC_FP32):
                        out.setdefault((wl.key, k.name), (wl, k))
    return list(out.values())


def _float_layer(wl: Workload, kernel: KernelFamily, target: Target, rng):
    """The float32 kernel of a layer of shape ``wl`` (random weights, ReLU), as the lowering builds it."""
    cout = wl.out_channels
    shape = (cout, wl.in_channels // wl.groups, *wl.kernel) if wl.op != "dense" else (cout, wl.in_channels)
    weight = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    if wl.op == "dense":
        k = float_dense_kernel(wl.in_channels, weight, bias, (0.0, float("inf")), False, target)
    else:
        c, h, w = wl.in_shape
        k = float_conv_kernel((h, w, c), weight, bias, wl.stride, wl.padding, wl.dilation, wl.groups,
                              (0.0, float("inf")), False, target)
    if k is None:
        raise ValueError(f"no float kernel for {wl.key} on {target.name!r}")
    return k


def _time_float_kernel(k, wl: Workload, target: Target, tvm_target, device, batches, repeats, rng) -> dict:
    exe = tvm.compile(tvm.IRModule({"main": k.func.with_attr("global_symbol", "main")}), tvm_target)
    mod = device.load(exe, target, f"k{abs(hash((wl.key, k.name))) % 10**10}")
    in_shape = (wl.in_channels,) if wl.op == "dense" else (*wl.in_shape[1:], wl.in_shape[0])
    out = {}
    for b in batches:
        args = [device.tensor(rng.standard_normal((b, *in_shape)).astype(np.float32))]
        args += [device.tensor(p) for p in k.params] + [device.empty((b, *k.out_shape), "float32")]
        out[b] = time_function(device, mod, "main", args, repeats)
    return out


def _synthetic_layer(wl: Workload, kernel: KernelFamily, target: Target, rng):
    """A layer of shape ``wl`` whose integer ranges make the rules pick ``kernel`` (random weights,
    typical requantization): the kernel's speed depends on its shape and ranges, not its values."""
    for wmax, amax in _RANGES:
        if kernel_for(wl, target, wmax, amax).name == kernel.name:
            break
    else:
        raise ValueError(f"no integer ranges select kernel {kernel.name!r} for {wl.key}")
    cout = wl.out_channels
    shape = (cout, wl.in_channels // wl.groups, *wl.kernel) if wl.op != "dense" else (cout, wl.in_channels)
    weight = rng.integers(-wmax, wmax + 1, shape).astype(np.int8)
    weight.flat[0] = wmax
    bias = rng.integers(-1000, 1000, cout).astype(np.int32)
    rq = qg.Requant(np.full(cout, 1 << 30, np.int64), np.full(cout, 40, np.int64), 0, 255)
    in_info = qg.TensorInfo("x", wl.in_shape, "uint8", 1.0, 0, amax)
    oh, ow = wl.out_hw
    out_info = qg.TensorInfo("y", (cout, oh, ow) if wl.op != "dense" else (cout,), "uint8", 1.0, 0, 255)
    if wl.op == "dense":
        node = qg.Dense("layer", "x", "y", weight, bias, rq)
    else:
        node = qg.Conv2d("layer", "x", "y", weight, bias, wl.stride, wl.padding, wl.dilation, wl.groups, rq)
    k = select_kernel(node, in_info, out_info, target)
    if k is None or k.name != kernel.name:
        raise ValueError(f"the rules chose {getattr(k, 'name', None)!r}, not {kernel.name!r}, for {wl.key}")
    return k, in_info


def _time_kernel(k, in_info, wl: Workload, target: Target, tvm_target, device, batches, repeats, rng,
                 out_dtype: str = "uint8") -> dict:
    """``{batch: (median, q1, q3)}`` of one built kernel (plus its im2col gather, if it has one)."""
    funcs = [("main", k.func)] + ([("pre", k.pre)] if k.pre is not None else [])
    mods = {}
    for name, func in funcs:
        exe = tvm.compile(tvm.IRModule({name: func.with_attr("global_symbol", name)}), tvm_target)
        mods[name] = device.load(exe, target, f"k{abs(hash((wl.key, k.name, name))) % 10**10}")
    out = {}
    for b in batches:
        parts = []
        x = rng.integers(0, 128, (b, *k.in_shape)).astype(k.in_dtype)
        args = [device.tensor(x)] + [device.tensor(p) for p in k.params]
        if k.residual is not None:      # the fused add's other input
            args.append(device.tensor(rng.integers(0, 64, (b, *k.out_shape)).astype(k.residual.dtype)))
        args.append(device.empty((b, *k.out_shape), k.residual.out_dtype if k.residual is not None else out_dtype))
        parts.append(time_function(device, mods["main"], "main", args, repeats))
        if "pre" in mods:
            c, h, w = in_info.shape
            raw = rng.integers(0, 128, (b, h, w, c)).astype(in_info.dtype)
            pre_out = device.empty((b, *k.out_shape[:2], k.in_channels), k.in_dtype)
            parts.append(time_function(device, mods["pre"], "pre", [device.tensor(raw), pre_out], repeats))
        out[b] = tuple(float(sum(p[i] for p in parts)) for i in range(3))
    return out


def measure_kernels(graphs, target: Target, table: LatencyTable, device: LocalDevice | None = None,
                    batches=(1, 16), repeats: int = 7, time_budget_s: float = 900.0, progress: bool = True,
                    log=print) -> int:
    """Time every (workload, kernel) of ``graphs`` on ``target`` not yet in ``table``; returns how
    many were measured. ``target`` must have its features resolved for the device."""
    device = device or LocalDevice()
    tvm_target = to_tvm_target(target)
    work = [(wl, k) for wl, k in kernel_workloads(graphs, target)
            if any(table.get(wl, k.name, b) is None for b in batches)]
    rng = np.random.default_rng(0)
    start, done = time.perf_counter(), 0
    bar = tqdm(work, desc=f"profiling {target.name} on {device.describe()}", disable=not progress, unit="kernel")
    for wl, kernel in bar:
        if time.perf_counter() - start > time_budget_s:
            log(f"time budget of {time_budget_s:.0f} s reached: {len(work) - done} workload(s) left unmeasured "
                f"(run again to continue)")
            break
        if kernel.dtype == "fp32":
            k = _float_layer(wl, kernel, target, rng)
            times = _time_float_kernel(k, wl, target, tvm_target, device, batches, repeats, rng)
        else:
            k, in_info = _synthetic_layer(wl, kernel, target, rng)
            times = _time_kernel(k, in_info, wl, target, tvm_target, device, batches, repeats, rng)
        for b, (med, q1, q3) in times.items():
            table.add(wl, kernel.name, b, Measurement(med, q1, q3, repeats, str(k.tile)))
        table.save()
        done += 1
    bar.close()
    ops = [traffic(*_parse(key))[0] / (m.median_ms * 1e-3) for key, m in table.kernels.items()
           if _parse(key)[1].dtype != "fp32"]
    if ops:
        table.peaks["int8_gops_best_kernel"] = round(max(ops) / 1e9, 2)
        table.save()
    return done


def _parse(key):
    from hwq.cost.options import family
    from hwq.cost.table import parse_kernel_key

    wl, kernel, batch = parse_kernel_key(key)
    return wl, family(kernel), batch


def measure_model(compiled, device: LocalDevice | None = None, batch: int = 1, repeats: int = 7,
                  name: str = "model") -> tuple[float, float, float]:
    """``(median, q1, q3)`` ms of a ``CompiledModel``'s float entry point at ``batch``, on ``device``."""
    device = device or LocalDevice()
    vm = device.vm(compiled.executable, compiled.target, name)
    shape = tuple(compiled.graph.input.shape)
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    return time_vm(device, vm, x, repeats)


def measure_ratio(compiled, reference, device: LocalDevice | None = None, batch: int = 1, rounds: int = 25,
                  repeats: int = 1) -> tuple[float, float, float]:
    """``(ratio, ms, reference ms)``: the median over ``rounds`` of ``compiled``'s time over
    ``reference``'s, the two timed in alternation (``repeats`` repeats of >= 50 ms each per round,
    the order swapped every round), and the medians of each.

    On a shared machine the speed drifts over minutes and bursts of a neighbour's load last
    seconds: a latency measured alone moves with both (ad-hoc timings here: one build from 3.0 to
    4.8 ms within minutes). A ratio of the two builds timed within the same fraction of a second
    moves far less, and the finer the alternation, the less (``benchmarks/timing_noise.py``: 25
    rounds of one repeat against 5 rounds of 5, as many timed runs). Budgets relative to a
    reference plan (``0.8x`` uniform W8A8) are checked this way."""
    if rounds < 1 or repeats < 1:
        raise ConfigError(f"rounds and repeats must be >= 1, got {rounds!r}, {repeats!r}")
    device = device or LocalDevice()
    # both loaded and warmed up once (over RPC every load uploads the library)
    x = np.random.default_rng(0).random((batch, *tuple(compiled.graph.input.shape)), dtype=np.float32)
    time_ref = vm_timer(device, device.vm(reference.executable, reference.target, "reference"), x)
    time_mine = vm_timer(device, device.vm(compiled.executable, compiled.target, "model"), x)
    ratios, mine, ref = [], [], []
    for r in range(rounds):
        # the order swapped every round (AB, BA, ...): over two rounds a drift weighs on both alike
        order = (("ref", time_ref), ("mine", time_mine)) if r % 2 == 0 else (("mine", time_mine), ("ref", time_ref))
        t = {side: float(np.median([timer() for _ in range(repeats)])) for side, timer in order}
        mine.append(t["mine"])
        ref.append(t["ref"])
        ratios.append(mine[-1] / ref[-1])
    return float(np.median(ratios)), float(np.median(mine)), float(np.median(ref))


def record_model(table: LatencyTable, key: str, graph: qg.QGraph, plan: BitPlan, target: Target, batch: int,
                 timing: tuple[float, float, float]) -> dict:
    """Store a whole-model measurement with what the glue fit needs: the measured kernels' sum and
    the glue's operator count and megabytes."""
    est = CostModel(target, table).plan(graph, plan, batch)
    ops = cost_glue.glue_ops(graph, plan, target)
    entry = {"median_ms": timing[0], "q1_ms": timing[1], "q3_ms": timing[2], "kernels_ms": est.layers_ms,
             "kernels_memory_ms": sum(r.estimate.memory_ms for r in est.rows),
             "kernel_sources": sorted({r.estimate.source for r in est.rows}),
             "glue_ops": len(ops), "glue_mb": batch * sum(o.bytes_per_image for o in ops) / 1e6}
    table.models[key] = entry
    table.save()
    return entry


def measure_bandwidth(device: LocalDevice | None = None, target: Target | None = None, mib: int = 64) -> float:
    """GB/s of a parallel, vectorized byte copy-and-add over two ``mib`` MiB arrays (read + write)."""
    from tvm import te

    device = device or LocalDevice()
    n = mib << 20
    a = te.placeholder((n,), "uint8", name="A")
    b = te.compute((n,), lambda i: a[i] + tvm.tirx.const(1, "uint8"), name="B")
    func = te.create_prim_func([a, b]).with_attr("global_symbol", "main")
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock("B")
    outer, inner = sch.split(sch.get_loops(blk)[0], [None, 64])
    sch.parallel(outer)
    sch.vectorize(inner)
    tvm_target = to_tvm_target(target) if target is not None else tvm.target.Target({"kind": "llvm"})
    exe = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), tvm_target)
    mod = device.load(exe, target, "bandwidth") if target is not None else exe.mod
    x = device.tensor(np.zeros(n, np.uint8))
    y = device.empty((n,), "uint8")
    med, _, _ = time_function(device, mod, "main", [x, y], repeats=9, min_repeat_ms=50)
    return 2 * n / (med * 1e-3) / 1e9
