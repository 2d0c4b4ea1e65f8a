"""How faithful is the cost model? Held-out layers, and whole models under random mixed plans, measured.

1. ``hwq profile`` of the models on the target (resumed from the user's table if one exists for
   this CPU), so every number below comes from this machine, this run or the table it extends.
2. Per layer: the measured (workload, kernel, batch) entries are split by workload into folds; the
   efficiency factors are fitted on the other folds and predict the held-out ones. Spearman rank
   correlation and the median absolute error of the predictions against the measurements.
3. Whole models: random mixed plans (each layer a random option the target offers), each compiled
   and timed here through the Relax VM at every batch size, against ``estimate_plan``'s prediction
   from the table (kernels measured in isolation + the glue fitted to uniform plans, which are not
   among the random ones), and against a bit-operations count (MACs x weight bits x input bits),
   the budget NNCF, AIMET and ModelOpt use.

Writes benchmarks/results/cost_fidelity.json (+ .png) with the machine, versions and date.

    python benchmarks/cost_fidelity.py --target x86-avx2 --plans 10
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from hwq.fileio import display_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def held_out_layers(table, target, folds: int, seed: int = 0) -> list[dict]:
    """Each entry predicted by factors fitted without its workload (K folds over workloads)."""
    from hwq.cost.calibrate import fit_kernels
    from hwq.cost.options import family
    from hwq.cost.roofline import roofline
    from hwq.cost.table import parse_kernel_key

    workloads = sorted({k.split("|")[0] for k in table.kernels})
    random.Random(seed).shuffle(workloads)
    fold_of = {w: i % folds for i, w in enumerate(workloads)}
    rows = []
    for f in range(folds):
        train = {k for k in table.kernels if fold_of[k.split("|")[0]] != f}
        fits = fit_kernels(table, target, keys=train)
        for key, m in table.kernels.items():
            if key in train:
                continue
            wl, kernel, batch = parse_kernel_key(key)
            roof = roofline(wl, family(kernel), target, batch)
            fit = fits.get(kernel)
            pred = fit.predict(roof.compute_ms, roof.memory_ms, wl.out_elems(batch) / 1e6) if fit is not None else roof.ms
            rows.append({"key": key, "kernel": kernel, "batch": batch, "measured_ms": m.median_ms,
                         "predicted_ms": pred, "roofline_ms": roof.ms})
    return rows


def random_plan(graph, target, rng):
    from hwq.cost import Workload, layer_options
    from hwq.cost.workload import layer_nodes
    from hwq.plan import BitPlan

    layers = {}
    for n in layer_nodes(graph):
        opts = layer_options(Workload.of(n, graph.tensors[n.input].shape), target, n.requant is not None)
        layers[n.name] = rng.choice(opts).spec
    return BitPlan(layers=layers)


def bit_ops(graph, plan, target) -> float:
    from hwq.cost import plan_layers

    return float(sum(c.workload.macs() * c.option.weight_bits * c.input_bits for c in plan_layers(graph, plan, target)))


def summarize(pred, meas) -> dict:
    pred, meas = np.asarray(pred), np.asarray(meas)
    err = np.abs(pred / meas - 1)
    return {"n": int(len(meas)), "spearman": float(spearmanr(pred, meas).statistic),
            "median_abs_error": float(np.median(err)), "within_10pct": float(np.mean(err <= 0.10)),
            "within_20pct": float(np.mean(err <= 0.20))}



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="x86-avx2")
    p.add_argument("--models", nargs="+", default=["rescnn", "mobilenetv2"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--plans", type=int, default=10, help="random mixed plans per model")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--time-budget", type=float, default=1500.0, help="for the profile, seconds")
    p.add_argument("--name", default="cost_fidelity")
    args = p.parse_args(argv)

    from hwq.cost import CostModel
    from hwq.lower import compile_model
    from hwq.lower.device import LocalDevice
    from hwq.lower.profile import measure_model
    from hwq.models.zoo import example_graph
    from hwq.profile_job import ProfileConfig, run_profile
    from hwq.timing import environment

    t0 = time.perf_counter()
    table = run_profile(ProfileConfig(models=tuple(args.models), target=args.target, batches=tuple(args.batches),
                                      time_budget_s=args.time_budget, repeats=args.repeats, progress=False))
    profile_s = time.perf_counter() - t0
    cost = CostModel(args.target, table)
    target = cost.target
    layers = held_out_layers(table, target, args.folds)
    per_layer = summarize([r["predicted_ms"] for r in layers], [r["measured_ms"] for r in layers])
    roof_layer = summarize([r["roofline_ms"] for r in layers], [r["measured_ms"] for r in layers])

    rng = random.Random(0)
    device, models = LocalDevice(), []
    for name in args.models:
        base = example_graph(name)
        for i in range(args.plans):
            plan = random_plan(base, target, rng)
            graph = example_graph(name, plan)
            compiled = compile_model(graph, target)
            for b in args.batches:
                med, q1, q3 = measure_model(compiled, device, b, args.repeats, name=f"{name}-{i}")
                est = cost.plan(graph, plan, b)
                models.append({"model": name, "plan": i, "batch": b, "measured_ms": med, "q1_ms": q1, "q3_ms": q3,
                               "predicted_ms": est.total_ms, "kernels_ms": est.layers_ms, "glue_ms": est.glue_ms,
                               "sources": sorted({r.estimate.source for r in est.rows}),
                               "bit_ops": bit_ops(graph, plan, target),
                               "options": {r.name: r.option for r in est.rows}})
                print(f"{name:12s} plan {i:2d} batch {b:3d}: measured {med:9.3f} ms  predicted {est.total_ms:9.3f} ms "
                      f"({est.total_ms / med - 1:+6.1%})", flush=True)
    whole = summarize([m["predicted_ms"] for m in models], [m["measured_ms"] for m in models])
    bops = {"spearman": float(spearmanr([m["bit_ops"] for m in models], [m["measured_ms"] for m in models]).statistic)}
    per_model = {f"{n}|b{b}": summarize([m["predicted_ms"] for m in models if (m["model"], m["batch"]) == (n, b)],
                                        [m["measured_ms"] for m in models if (m["model"], m["batch"]) == (n, b)])
                 for n in args.models for b in args.batches}
    bops_within = {k: float(spearmanr([m["bit_ops"] for m in models if f"{m['model']}|b{m['batch']}" == k],
                                      [m["measured_ms"] for m in models if f"{m['model']}|b{m['batch']}" == k]).statistic)
                   for k in per_model}

    print(f"\ncost-model fidelity on {target.name} ({table.device.describe()}), profile {profile_s:.0f} s")
    print(f"{'':34s} {'n':>4s} {'Spearman':>9s} {'med |err|':>9s} {'<=10%':>6s} {'<=20%':>6s}")
    for label, s in (("per layer, held out (calibrated)", per_layer), ("per layer, bare roofline", roof_layer),
                     ("whole model, random mixed plans", whole)):
        print(f"{label:34s} {s['n']:4d} {s['spearman']:9.3f} {s['median_abs_error']:9.1%} {s['within_10pct']:6.0%} "
              f"{s['within_20pct']:6.0%}")
    for k, s in per_model.items():
        print(f"  {k:32s} {s['n']:4d} {s['spearman']:9.3f} {s['median_abs_error']:9.1%} {s['within_10pct']:6.0%}"
              f"   bit-ops Spearman {bops_within[k]:.3f}")
    print(f"bit-operations count, whole models: Spearman {bops['spearman']:.3f}")

    out = {"benchmark": args.name, "environment": environment(), "target": target.name,
           "target_features": list(target.features), "table": display_path(table.path), "profile_seconds": profile_s,
           "table_device": table.device.to_json(), "per_layer_held_out": per_layer, "per_layer_roofline": roof_layer,
           "whole_model": whole, "whole_model_by_model_batch": per_model, "bit_ops": bops,
           "bit_ops_by_model_batch": bops_within, "folds": args.folds, "repeats": args.repeats,
           "layers": layers, "models": models}
    RESULTS.mkdir(exist_ok=True)
    from hwq.fileio import atomic_write_json
    atomic_write_json(RESULTS / f"{args.name}.json", out)
    _plot(layers, models, RESULTS / f"{args.name}.png", target.name)
    print(f"wrote {RESULTS / (args.name + '.json')}")
    return 0


def _plot(layers, models, path, target):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, rows, title in ((axes[0], layers, "layers (held out)"), (axes[1], models, "whole models (random plans)")):
        meas = [r["measured_ms"] for r in rows]
        pred = [r["predicted_ms"] for r in rows]
        groups = sorted({r.get("kernel") or f"{r['model']} b{r['batch']}" for r in rows})
        for g in groups:
            sel = [(m, p) for r, m, p in zip(rows, meas, pred) if (r.get("kernel") or f"{r['model']} b{r['batch']}") == g]
            ax.scatter([s[0] for s in sel], [s[1] for s in sel], s=14, label=g)
        lo, hi = min(meas + pred), max(meas + pred)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [lo * 1.1, hi * 1.1], "k:", lw=0.6)
        ax.plot([lo, hi], [lo * 0.9, hi * 0.9], "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.set_title(f"{title}, {target}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
