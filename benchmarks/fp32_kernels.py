"""Speed of hwq's hand float32 kernels (``hwq.lower.kernels.fp32_conv``) on the largest layers of
MobileNetV2 (224x224) and ResCNN (28x28), against torch's own ``F.conv2d`` / ``F.linear``.

For each layer (the biggest regular convs by MACs, the biggest depthwise convs and the classifier
of each model, distinct shapes only) and batch: the kernel's median time under TVM's
``time_evaluator`` (``hwq.lower.device.time_function``: 300 ms warm-up, then repeats), its GFLOP/s
(1 MAC = 2 FLOP) against two peaks: the target file's fp32 peak, and the FMA peak measured here
by a probe kernel of independent FMA chains on every core (the target file describes one machine;
the one running this may have other vector units). torch is timed first, in the same process,
before TVM's thread pool exists (once started it keeps spinning and would steal torch's cores),
on NCHW (its default) and on channels_last inputs.

    nice -n 19 .venv/bin/python benchmarks/fp32_kernels.py          # table + results/fp32_kernels.json
    .venv/bin/python benchmarks/fp32_kernels.py --tune 20            # search tiles first (hwq's tuned-tile file)
"""

from __future__ import annotations

import argparse
import os
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86-host")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=7, help="time_evaluator repeats per kernel (median reported)")
    ap.add_argument("--tune", type=float, default=0.0, metavar="SECONDS",
                    help="search tiles for SECONDS per layer first, stored in the user's tuned-tile file")
    ap.add_argument("--name", default="fp32_kernels", help="results/NAME.json")
    args = ap.parse_args()

    from hwq.target import load_target
    target = load_target(args.target)
    threads = int(target.tvm.get("num-cores", os.cpu_count()))
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))   # before TVM's thread pool starts
    import torch
    torch.set_num_threads(threads)
    batches = [int(b) for b in args.batches.split(",")]
    layers = [la for name in args.models.split(",") for la in model_layers(name)]

    print(f"torch {torch.__version__}, {threads} threads ...", flush=True)
    torch_ms = [{b: time_torch(la, b) for b in batches} for la in layers]

    import tvm

    from hwq.lower.device import LocalDevice, time_function
    from hwq.lower.kernels.fp32_conv import float_isa
    from hwq.lower.tvm_target import resolve_features, to_tvm_target
    from hwq.timing import environment
    from hwq.fileio import atomic_write_json

    target = resolve_features(target)
    isa = float_isa(target)
    if isa is None:
        raise SystemExit(f"target {target.name!r} has no hand float32 kernels (features {target.features})")
    tvm_target, device = to_tvm_target(target), LocalDevice()
    kernels = [build_kernel(la, target) for la in layers]
    if args.tune > 0:
        tune(layers, kernels, target, tvm_target, args.tune, device)
        kernels = [build_kernel(la, target) for la in layers]      # with the tuned tiles
    peak_file = target.peak_ops_per_s("fp32") / 1e9
    peak_here = measured_peak_gflops(tvm_target, threads, isa.lanes)
    rows = []
    for la, k, tms in zip(layers, kernels, torch_ms):
        lib = compile_main(k.func, tvm_target)
        row = {"model": la["model"], "layer": la["layer"], "kind": la["kind"], "shape": describe(la),
               "macs_per_image": la["macs"], "kernel": k.name, "tile": vars(k.tile), "workload": k.workload,
               "batches": {}}
        for b in batches:
            med, q1, q3 = time_function(device, lib.mod, "main", kernel_args(k, b, device), repeats=args.repeats)
            gflops = 2 * la["macs"] * b / med / 1e6
            best_torch = min(tms[b].values())
            row["batches"][str(b)] = {
                "ms": round(med, 4), "q1_ms": round(q1, 4), "q3_ms": round(q3, 4), "gflops": round(gflops, 1),
                "pct_of_target_peak": round(100 * gflops / peak_file, 1),
                "pct_of_measured_peak": round(100 * gflops / peak_here, 1),
                "torch_ms": {f: round(v, 4) for f, v in tms[b].items()},
                "speedup_vs_torch": round(best_torch / med, 2)}
        rows.append(row)
        print(f"  {la['model']:12s} {row['shape']:34s} "
              + "  ".join(f"b{b}: {row['batches'][str(b)]['gflops']:6.1f} GFLOP/s" for b in batches), flush=True)

    print(f"\n{target.name} ({isa.feature}, {isa.lanes} lanes, {threads} threads); fp32 peak: target file "
          f"{peak_file:.0f} GFLOP/s, measured here {peak_here:.0f} GFLOP/s")
    head = f"{'model':12s} {'layer':34s} {'b':>3s} {'ms':>8s} {'GFLOP/s':>8s} {'%file':>6s} {'%here':>6s} " \
           f"{'torch ms':>9s} {'speedup':>7s}"
    print(head + "\n" + "-" * len(head))
    for row in rows:
        for b, r in row["batches"].items():
            print(f"{row['model']:12s} {row['shape']:34s} {b:>3s} {r['ms']:8.3f} {r['gflops']:8.1f} "
                  f"{r['pct_of_target_peak']:6.1f} {r['pct_of_measured_peak']:6.1f} "
                  f"{min(r['torch_ms'].values()):9.3f} {r['speedup_vs_torch']:6.2f}x")
    result = {"benchmark": args.name, "environment": {**environment(), "tvm": tvm.__version__},
              "target": target.name, "isa": isa.feature, "lanes": isa.lanes, "threads": threads,
              "peak_gflops": {"target_file": round(peak_file, 1), "measured_fma": round(peak_here, 1)},
              "torch_threads": torch.get_num_threads(), "tuned_s_per_layer": args.tune, "layers": rows}
    path = atomic_write_json(RESULTS / f"{args.name}.json", result, indent=1)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
