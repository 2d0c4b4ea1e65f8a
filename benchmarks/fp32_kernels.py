"""Speed of hwq's hand float32 kernels (``hwq.lower.kernels.fp32_conv``) on the largest layers of
MobileNetV2 (224x224) and ResCNN (28x28), against torch's own ``F.conv2d`` / ``F.linear``.

For each layer (the biggest regular convs by MACs, the biggest depthwise convs and the classifier
of each model, distinct shapes only) and batch: the kernel's median time under TVM's
``time_evaluator`` (``hwq.lower.device.time_function``: 300 ms warm-up, then repeats), its GFLOP/s
(1 MAC = 2 FLOP) against two peaks: the target file's fp32 peak, and the FMA peak measured here
by a probe kernel of independent FMA chains on every core (the target file describes one machine;
the one running this may have other vector units). torch runs on NCHW (its default) and on
channels_last inputs. Each engine runs in its own process (TVM's thread pool keeps spinning after
a call and would steal torch's cores), ``--rounds`` times, alternating; other work on a shared
machine only ever slows a round down, so each layer reports its best round's median (the JSON
keeps every round).

    nice -n 19 .venv/bin/python benchmarks/fp32_kernels.py          # table + results/fp32_kernels.json
    .venv/bin/python benchmarks/fp32_kernels.py --tune 20            # search tiles first (hwq's tuned-tile file)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenetv2", "rescnn")
TOP_CONVS, TOP_DEPTHWISE = 6, 2
PEAK_CHAINS, PEAK_ITERS = 12, 2_000_000


def model_layers(name: str) -> list[dict]:
    """The model's conv / linear layers with their input shapes (one forward pass with hooks),
    biggest first: ``TOP_CONVS`` regular convs, ``TOP_DEPTHWISE`` depthwise ones, the classifier."""
    import torch
    from torch import nn

    if name == "mobilenetv2":
        from hwq.models.mobilenet_v2 import MobileNetV2
        model, x, act = MobileNetV2().eval(), torch.zeros(1, 3, 224, 224), (0.0, 6.0)
    elif name == "rescnn":
        from hwq.models import ResCNN
        model, x, act = ResCNN().eval(), torch.zeros(1, 1, 28, 28), (0.0, float("inf"))
    else:
        raise SystemExit(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    seen, layers = set(), []

    def hook(mod, inputs, output, path):
        shape = tuple(inputs[0].shape[1:])
        if isinstance(mod, nn.Conv2d):
            key = (shape, tuple(mod.weight.shape), mod.stride, mod.padding, mod.dilation, mod.groups)
            kind = "depthwise" if mod.groups > 1 else "conv"
            macs = int(np.prod(output.shape[1:])) * mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        else:
            key, kind, macs = (shape, tuple(mod.weight.shape)), "dense", int(np.prod(mod.weight.shape))
        if key not in seen:
            seen.add(key)
            layers.append({"model": name, "layer": path, "kind": kind, "module": mod, "in_shape": shape,
                           "macs": macs, "act": None if kind == "dense" else act})

    handles = [m.register_forward_hook(lambda mod, i, o, p=path: hook(mod, i, o, p))
               for path, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    by_kind = {k: sorted((la for la in layers if la["kind"] == k), key=lambda la: -la["macs"])
               for k in ("conv", "depthwise", "dense")}
    return by_kind["conv"][:TOP_CONVS] + by_kind["depthwise"][:TOP_DEPTHWISE] + by_kind["dense"][:1]


def describe(la: dict) -> str:
    m = la["module"]
    if la["kind"] == "dense":
        return f"dense {m.in_features}->{m.out_features}"
    c, h, w = la["in_shape"]
    k = m.kernel_size
    return f"{la['kind']} {h}x{w}x{c}->{m.out_channels} {k[0]}x{k[1]} s{m.stride[0]}"


def time_torch(la: dict, batch: int) -> dict:
    """torch's median ms on NCHW and on channels_last inputs (``hwq.timing.median_ms``)."""
    import torch
    import torch.nn.functional as F

    from hwq.timing import median_ms

    m = la["module"]
    x = torch.randn(batch, *la["in_shape"])
    out = {}
    with torch.no_grad():
        if la["kind"] == "dense":
            return {"nchw": median_ms(lambda: F.linear(x, m.weight, m.bias), iters=50, min_seconds=0.5)}
        for fmt, mem in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xf, wf = x.to(memory_format=mem), m.weight.to(memory_format=mem)
            out[fmt] = median_ms(lambda: F.conv2d(xf, wf, m.bias, m.stride, m.padding, m.dilation, m.groups),
                                 iters=50, min_seconds=0.5)
    return out


def build_kernel(la: dict, target):
    from hwq.lower.kernels.fp32_conv import float_conv_kernel, float_dense_kernel

    m = la["module"]
    w = m.weight.detach().numpy()
    b = None if m.bias is None else m.bias.detach().numpy()
    if la["kind"] == "dense":
        return float_dense_kernel(m.in_features, w, b, la["act"], False, target)
    c, h, wd = la["in_shape"]
    return float_conv_kernel((h, wd, c), w, b, m.stride, m.padding, m.dilation, m.groups, la["act"], False, target)


def kernel_args(k, batch: int, device):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *k.in_shape), dtype=np.float32)
    return [device.tensor(x)] + [device.tensor(p) for p in k.params] + [device.empty((batch, *k.out_shape), "float32")]


def compile_main(func, tvm_target):
    import tvm

    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm_target)


def measured_peak_gflops(tvm_target, threads: int, lanes: int) -> float:
    """fp32 FLOP/s of ``PEAK_CHAINS`` independent FMA chains of ``lanes``-wide vectors per thread
    (the best of 5 runs): what the FMA units of this machine do when nothing else limits them."""
    import tvm
    from tvm.script import tirx as T

    chains, iters = PEAK_CHAINS, PEAK_ITERS

    @T.prim_func(s_tir=True)
    def peak(seed: T.Buffer((lanes,), "float32"), out: T.Buffer((threads, chains, lanes), "float32")):
        for t in T.parallel(threads):
            with T.sblock("chains"):
                acc = T.sblock_alloc_buffer((chains, lanes), "float32", scope="local")
                for c in T.unroll(chains):
                    for v in T.vectorized(lanes):
                        acc[c, v] = seed[v]
                # constants, not loads: a load of the seed in the loop might alias the accumulators
                # (a workspace allocation) and would pin them in memory
                for _ in range(iters):
                    for c in T.unroll(chains):
                        for v in T.vectorized(lanes):
                            acc[c, v] = acc[c, v] * T.float32(0.999) + T.float32(0.001)
                for c in T.unroll(chains):
                    for v in T.vectorized(lanes):
                        out[t, c, v] = acc[c, v]

    lib = compile_main(peak, tvm_target)
    seed = tvm.runtime.tensor(np.ones(lanes, np.float32))
    out = tvm.runtime.empty((threads, chains, lanes), "float32")
    seconds = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=5)(seed, out).results
    return 2 * threads * chains * lanes * iters / min(seconds) / 1e9


def tune(layers, kernels, target, tvm_target, budget_s: float, device):
    """Search each layer's tiles at batch 16 (``tuning.tune_workload``) and store the winners in the
    user's tuned-tile file, where ``float_conv_kernel`` finds them; returns ``{workload: tile}``."""
    from dataclasses import asdict

    from hwq.lower.kernels import tuning

    mine, found = dict(tuning.user_configs(target.name)), {}
    for la, k in zip(layers, kernels):
        build = lambda t, k=k: compile_main(k.rebuild(t), tvm_target)["main"]   # noqa: E731
        tile, ms, trials = tuning.tune_workload(build, k.candidates, lambda k=k: kernel_args(k, 16, device), budget_s)
        if tile is not None:
            mine[k.workload] = {**asdict(tile), "ms_batch16": round(ms, 4), "trials": len(trials)}
            found[k.workload] = tile
            print(f"  tuned {describe(la)}: {tile} {ms:.3f} ms at batch 16 ({len(trials)} tiles)", flush=True)
    tuning.save_configs(target.name, mine)
    return found


def _setup(args):
    """(target, threads, batches, layers) of a run; sets the thread counts before any pool starts."""
    import torch

    from hwq.target import load_target

    target = load_target(args.target)
    threads = args.threads or int(target.tvm.get("num-cores", os.cpu_count()))
    os.environ["TVM_NUM_THREADS"] = str(threads)
    # torch runs in the TVM child only to read the models' shapes: one thread, no pool to spin
    torch.set_num_threads(threads if args.engine == "torch" else 1)
    batches = [int(b) for b in args.batches.split(",")]
    return target, threads, batches, [la for name in args.models.split(",") for la in model_layers(name)]


def run_engine(args) -> dict:
    """Child process: one round of one engine over every layer and batch (or the tile search)."""
    target, threads, batches, layers = _setup(args)
    if args.engine == "torch":
        import torch
        return {"torch": torch.__version__, "ms": [{b: time_torch(la, b) for b in batches} for la in layers]}
    import tvm

    from hwq.lower.device import LocalDevice, time_function
    from hwq.lower.kernels.fp32_conv import float_isa
    from hwq.lower.tvm_target import resolve_features, to_tvm_target

    target = resolve_features(target)
    isa = float_isa(target)
    if isa is None:
        raise SystemExit(f"target {target.name!r} has no hand float32 kernels (features {target.features})")
    tvm_target, device = to_tvm_target(target), LocalDevice()
    kernels = [build_kernel(la, target) for la in layers]
    if args.engine == "tune":
        tune(layers, kernels, target, tvm_target, args.tune, device)
        return {}
    ms = []
    for k in kernels:
        lib = compile_main(k.func, tvm_target)
        ms.append({b: time_function(device, lib.mod, "main", kernel_args(k, b, device), repeats=args.repeats)
                   for b in batches})
    return {"tvm": tvm.__version__, "isa": isa.feature, "lanes": isa.lanes, "ms": ms,
            "kernels": [(k.name, vars(k.tile), k.workload) for k in kernels],
            "peak_gflops": measured_peak_gflops(tvm_target, threads, isa.lanes)}


def _child(args, engine: str) -> dict:
    with tempfile.TemporaryDirectory() as wd:
        out = Path(wd) / "out.json"
        argv = [sys.executable, __file__, "--engine", engine, "--out", str(out), "--target", args.target,
                "--models", args.models, "--batches", args.batches, "--repeats", str(args.repeats),
                "--threads", str(args.threads), "--tune", str(args.tune)]
        subprocess.run(argv, check=True)
        return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86-host")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=7, help="time_evaluator repeats per kernel and round (median)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each engine (the best round's median reported)")
    ap.add_argument("--tune", type=float, default=0.0, metavar="SECONDS",
                    help="search tiles for SECONDS per layer first, stored in the user's tuned-tile file")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for TVM and torch (default: the target's cores); the target file's peak is scaled")
    ap.add_argument("--name", default="fp32_kernels", help="results/NAME.json")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        Path(args.out).write_text(json.dumps(run_engine(args)))
        return

    from hwq.fileio import atomic_write_json
    from hwq.timing import environment

    target, threads, batches, layers = _setup(args)
    if args.tune > 0:
        _child(args, "tune")
    runs = {"torch": [], "tvm": []}
    for r in range(args.rounds):
        for engine in runs:   # each in its own process, alternating, so a busy spell hits both
            print(f"round {r + 1}/{args.rounds}: {engine} ...", flush=True)
            runs[engine].append(_child(args, engine))
    tv = runs["tvm"][0]
    peak_file = target.peak_ops_per_s("fp32") / 1e9 * min(threads, target.compute.units) / target.compute.units
    peak_here = max(run["peak_gflops"] for run in runs["tvm"])
    rows = []
    for i, la in enumerate(layers):
        name, tile, workload = tv["kernels"][i]
        row = {"model": la["model"], "layer": la["layer"], "kind": la["kind"], "shape": describe(la),
               "macs_per_image": la["macs"], "kernel": name, "tile": tile, "workload": workload, "batches": {}}
        for b in map(str, batches):
            med, q1, q3 = min((run["ms"][i][b] for run in runs["tvm"]), key=lambda t: t[0])
            torch_best = {f: min(run["ms"][i][b][f] for run in runs["torch"]) for f in runs["torch"][0]["ms"][i][b]}
            gflops = 2 * la["macs"] * int(b) / med / 1e6
            row["batches"][b] = {
                "ms": round(med, 5), "q1_ms": round(q1, 5), "q3_ms": round(q3, 5), "gflops": round(gflops, 1),
                "pct_of_target_peak": round(100 * gflops / peak_file, 1),
                "pct_of_measured_peak": round(100 * gflops / peak_here, 1),
                "torch_ms": {f: round(v, 5) for f, v in torch_best.items()},
                "speedup_vs_torch": round(min(torch_best.values()) / med, 2),
                "rounds_ms": [round(run["ms"][i][b][0], 5) for run in runs["tvm"]],
                "torch_rounds_ms": [{f: round(v, 5) for f, v in run["ms"][i][b].items()} for run in runs["torch"]]}
        rows.append(row)

    print(f"\n{target.name} ({tv['isa']}, {tv['lanes']} lanes, {threads} threads); fp32 peak: target file "
          f"{peak_file:.0f} GFLOP/s, measured here {peak_here:.0f} GFLOP/s")
    head = f"{'model':12s} {'layer':34s} {'b':>3s} {'ms':>8s} {'GFLOP/s':>8s} {'%file':>6s} {'%here':>6s} " \
           f"{'torch ms':>9s} {'speedup':>7s}"
    print(head + "\n" + "-" * len(head))
    for row in rows:
        for b, r in row["batches"].items():
            print(f"{row['model']:12s} {row['shape']:34s} {b:>3s} {r['ms']:8.4f} {r['gflops']:8.1f} "
                  f"{r['pct_of_target_peak']:6.1f} {r['pct_of_measured_peak']:6.1f} "
                  f"{min(r['torch_ms'].values()):9.4f} {r['speedup_vs_torch']:6.2f}x")
    result = {"benchmark": args.name,
              "environment": {**environment(), "tvm": tv["tvm"], "torch": runs["torch"][0]["torch"]},
              "target": target.name, "isa": tv["isa"], "lanes": tv["lanes"], "threads": threads,
              "peak_gflops": {"target_file": round(peak_file, 1), "measured_fma": round(peak_here, 1),
                              "measured_fma_rounds": [round(run["peak_gflops"], 1) for run in runs["tvm"]]},
              "tuned_s_per_layer": args.tune, "rounds": args.rounds, "repeats": args.repeats, "layers": rows}
    path = atomic_write_json(RESULTS / f"{args.name}.json", result, indent=1)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
