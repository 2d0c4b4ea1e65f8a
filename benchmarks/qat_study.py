"""Accuracy study of constrained QAT on Fashion-MNIST with the project's ResCNN.

Two experiments, every model fine-tuned from the cached float checkpoint (the demo's: 3 epochs on
the full training split) and evaluated on the full 10 000-image test set:

1. Uniform precision W8A8, W4A4, W2A2: post-training quantization (min/max calibration) vs STE
   QAT (the constraints only measured, λ = 0) vs constrained QAT with STE gradients (per-layer
   constraints; and with the output constraint CE(softmax(fp), q) <= 0.3 added, the fp side a
   frozen copy of the float model) vs constrained QAT with the paper's float-path gradients.
   At W4A4 the three STE runs are repeated with two more seeds (data order), to see how much of
   their difference is the seed.
2. Layer selection (Hounie et al.): the duals of the constrained W2A2 runs rank the layers; keep
   k layers in W8A8 and the rest in W2A2, for every k-subset of the 5 layers (k = 1, 2), retrain
   each with STE QAT, and compare the subset of largest Σλ (top-k) with the smallest (bottom-k) and
   with a random choice (the mean over all k-subsets); report Spearman's rank correlation between
   Σλ of the kept layers and the accuracy gained over uniform W2A2.

Accuracies are those of the fake-quantized models, which compute the same integers as the
converted integer programs (tests/qat/test_prepare_convert.py); for every uniform run the
converted program's predictions are also compared with the fake-quant model's on 500 test images.

    .venv/bin/python benchmarks/qat_study.py          # ~15 min on 2 quiet cores; results/qat_study.{json,png}
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hwq.data import load_fashion_mnist
from hwq.models import ResCNN, TrainConfig, evaluate, load_or_train
from hwq.models.train import to_float_input
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import QATConfig, evaluate_quantized, quantize_, quantize_ptq, run_reference, train_constrained
from hwq.qat.reference import dequantize_output, quantize_input
from hwq.timing import environment

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = ("stem.0", "down.0", "block1.0", "block2.0", "fc")
EPS = {8: 0.001, 4: 0.02, 2: 0.1}             # per-layer bound on the relative output MSE, by bit width
EPS_OUTPUT = 0.3   # output constraint: CE(softmax(fp), q) <= 0.3; the float model's own entropy is 0.28
METHODS = {                                    # name -> (gradient mode, dual lr, primal lr, output constraint)
    "STE QAT": ("ste", 0.0, 5e-4, None),
    "constrained QAT (STE grads)": ("ste", 10.0, 5e-4, None),
    "constrained QAT + output (STE grads)": ("ste", 10.0, 5e-4, EPS_OUTPUT),
    "constrained QAT (fp grads, paper)": ("fp", 10.0, 1e-4, None),
}


def _dataset(split, n=0, seed=0):
    s = split.subset(n, seed=seed) if n else split
    return TensorDataset(to_float_input(s.images), torch.from_numpy(s.labels))


def _qat(model, plan, calib, train_set, test_set, method, epochs, eps, seed=0):
    mode, dual_lr, lr, eps_output = METHODS[method]
    prepared = quantize_(model, plan, calibration=calib, range_mode="learned")
    config = QATConfig(epochs=epochs, lr=lr, dual_lr=dual_lr, eps=eps, eps_output=eps_output, gradient_mode=mode,
                       dual_period=5, seed=seed)
    t0 = time.time()
    report = train_constrained(prepared, train_set, config, progress=False, log=lambda s: None)
    seconds = time.time() - t0
    return prepared, report, evaluate_quantized(prepared, test_set), seconds


def _integer_agreement(prepared, test_set, n=500):
    """Fraction of ``n`` test images on which the converted integer program predicts what the fake-quant model does."""
    graph = quantize_(prepared, step="convert")
    x = test_set.tensors[0][:n]
    ints = dequantize_output(graph, run_reference(graph, quantize_input(graph, x))).argmax(1)
    with torch.no_grad():
        return float((prepared.eval()(x).argmax(1) == ints).float().mean())


def _ranks(v):
    """Ranks 0..n-1, ties sharing their mean rank."""
    v = np.asarray(v, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    for value in np.unique(v):
        ranks[v == value] = ranks[v == value].mean()
    return ranks


def _spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson's on the ranks); NaN when one side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def uniform(model, calib, train_set, test_set, epochs, log):
    rows = []
    for bits in (8, 4, 2):
        plan = BitPlan(default=LayerSpec(bits, bits))
        # PTQ: min/max calibration, no training (the prepared model before QAT); on 500 images its
        # predictions are compared with those of hwq's PTQ integer program (quantize_ptq)
        ptq = quantize_(model, plan, calibration=calib)
        graph = quantize_ptq(model, calib, plan)
        x = test_set.tensors[0][:500]
        with torch.no_grad():
            same = ptq.eval()(x).argmax(1) == dequantize_output(graph, run_reference(graph, quantize_input(graph, x))).argmax(1)
        rows.append({"bits": bits, "method": "PTQ", "accuracy": evaluate_quantized(ptq, test_set),
                     "integer_agreement": _integer_agreement(ptq, test_set), "quantize_ptq_agreement": float(same.float().mean())})
        log(f"W{bits}A{bits} PTQ: {rows[-1]['accuracy']:.2f}%")
        for method in METHODS:
            prepared, report, acc, seconds = _qat(model, plan, calib, train_set, test_set, method, epochs, EPS[bits])
            rows.append({"bits": bits, "method": method, "accuracy": acc, "seconds": seconds, "eps": EPS[bits],
                         "integer_agreement": _integer_agreement(prepared, test_set),
                         "lambdas": report.lambdas(), "slacks": {r.name: r.slack for r in report.layers}})
            log(f"W{bits}A{bits} {method}: {acc:.2f}% ({seconds:.0f} s), lambdas "
                + ", ".join(f"{k} {v:.3g}" for k, v in report.lambdas().items()))
    return rows


def selection(model, calib, train_set, test_set, epochs, lambdas_by_source, log, low=2, high=8):
    """Retrain every k-subset kept in W{high}A{high} (rest W{low}A{low}); rank them by Σλ."""
    runs = {}
    for k in (0, 1, 2):
        for kept in itertools.combinations(LAYERS, k):
            plan = BitPlan(default=LayerSpec(low, low), layers={name: LayerSpec(high, high) for name in kept})
            _, _, acc, seconds = _qat(model, plan, calib, train_set, test_set, "STE QAT", epochs, EPS[low])
            runs[kept] = acc
            log(f"kept in {high} bits {list(kept) or '(none)'}: {acc:.2f}% ({seconds:.0f} s)")
    base = runs[()]
    out = {"base_accuracy": base, "runs": [{"kept": list(s), "accuracy": a, "gain": a - base} for s, a in runs.items()],
           "by_lambda_source": {}}
    for source, lam in lambdas_by_source.items():
        res = {"lambdas": lam}
        pooled_sum, pooled_gain = [], []
        for k in (1, 2):
            subsets = [s for s in runs if len(s) == k]
            sums = [sum(lam[n] for n in s) for s in subsets]
            gains = [runs[s] - base for s in subsets]
            top, bottom = subsets[int(np.argmax(sums))], subsets[int(np.argmin(sums))]
            res[f"k={k}"] = {"top": {"kept": list(top), "accuracy": runs[top]},
                             "bottom": {"kept": list(bottom), "accuracy": runs[bottom]},
                             "random_mean": float(np.mean([runs[s] for s in subsets])),
                             "random_std": float(np.std([runs[s] for s in subsets])),
                             "spearman_sum_lambda_vs_gain": _spearman(sums, gains)}
            pooled_sum += sums
            pooled_gain += gains
        res["spearman_pooled"] = _spearman(pooled_sum, pooled_gain)
        out["by_lambda_source"][source] = res
    return out


def seed_spread(model, calib, train_set, test_set, epochs, result, seeds, log):
    """W4A4 STE QAT vs constrained QAT (STE grads) again with other seeds (data order): how much of
    the difference between them is the seed. Seed 0 is the uniform experiment's run."""
    out = {}
    for method in ("STE QAT", "constrained QAT (STE grads)", "constrained QAT + output (STE grads)"):
        accs = [next(r["accuracy"] for r in result["uniform"] if r["bits"] == 4 and r["method"] == method)]
        for seed in seeds:
            _, _, acc, seconds = _qat(model, BitPlan(default=LayerSpec(4, 4)), calib, train_set, test_set, method,
                                      epochs, EPS[4], seed=seed)
            accs.append(acc)
            log(f"W4A4 {method}, seed {seed}: {acc:.2f}% ({seconds:.0f} s)")
        out[method] = {"seeds": [0, *seeds], "accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
    return out


def table(result) -> str:
    lines = [f"ResCNN, Fashion-MNIST test set ({result['test_images']} images): fp32 {result['fp32_accuracy']:.2f}%", "",
             f"{'bits':6s} {'method':36s} {'top-1 %':>8s} {'vs fp32':>8s} {'int==fq':>8s}"]
    for r in result["uniform"]:
        lines.append(f"W{r['bits']}A{r['bits']:<3d} {r['method']:36s} {r['accuracy']:8.2f} "
                     f"{r['accuracy'] - result['fp32_accuracy']:+8.2f} {100 * r['integer_agreement']:7.1f}%")
    for method, r in result.get("w4a4_seeds", {}).items():
        lines.append(f"W4A4 {method} over seeds {r['seeds']}: " + ", ".join(f"{a:.2f}" for a in r["accuracy"])
                     + f" -> {r['mean']:.2f} ± {r['std']:.2f}%")
    sel = result["selection"]
    lines += ["", f"layer selection: k layers in W8A8, the rest W2A2; uniform W2A2 under the same schedule: "
                  f"{sel['base_accuracy']:.2f}%"]
    for source, res in sel["by_lambda_source"].items():
        lines.append(f"  λ from {source}: " + ", ".join(f"{n} {v:.3g}" for n, v in res["lambdas"].items()))
        for k in (1, 2):
            r = res[f"k={k}"]
            lines.append(f"    k={k}: top-k {r['top']['kept']} {r['top']['accuracy']:.2f}% | bottom-k "
                         f"{r['bottom']['kept']} {r['bottom']['accuracy']:.2f}% | random {r['random_mean']:.2f} "
                         f"± {r['random_std']:.2f}% | Spearman(Σλ, gain) {r['spearman_sum_lambda_vs_gain']:+.2f}")
        lines.append(f"    Spearman over all 15 subsets: {res['spearman_pooled']:+.2f}")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = ["PTQ"] + list(METHODS)
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        accs = [next(r["accuracy"] for r in result["uniform"] if r["bits"] == bits and r["method"] == m) for bits in (8, 4, 2)]
        a.bar(np.arange(3) + i * width, accs, width, label=m)
    a.axhline(result["fp32_accuracy"], color="k", ls="--", lw=1, label="fp32")
    a.set_xticks(np.arange(3) + 0.4 - width / 2, ["W8A8", "W4A4", "W2A2"])
    a.set_ylabel("test top-1 (%)")
    a.set_ylim(0, 100)
    a.legend(fontsize=7, loc="lower left")
    a.set_title("uniform precision")
    sel = result["selection"]
    source = next(iter(sel["by_lambda_source"]))
    lam = sel["by_lambda_source"][source]["lambdas"]
    for k, marker in ((1, "o"), (2, "s")):
        pts = [(sum(lam[n] for n in r["kept"]), r["gain"]) for r in sel["runs"] if len(r["kept"]) == k]
        b.scatter(*zip(*pts), marker=marker, label=f"k={k}")
        for r in sel["runs"]:
            if len(r["kept"]) == k:
                b.annotate(",".join(n.split(".")[0] for n in r["kept"]), (sum(lam[n] for n in r["kept"]), r["gain"]), fontsize=6)
    b.set_xlabel(f"Σλ of the layers kept in W8A8 (λ from {source})")
    b.set_ylabel("accuracy gained over uniform W2A2 (points)")
    b.legend()
    b.set_title("layer selection by dual variables")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-subset", type=int, default=10000, help="QAT images for the uniform runs")
    p.add_argument("--selection-subset", type=int, default=3000, help="QAT images for each layer-selection run")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--test-subset", type=int, default=0, help="evaluate on this many test images (0 = all; for a smoke run)")
    p.add_argument("--out", default=str(RESULTS / "qat_study.json"))
    p.add_argument("--render", metavar="JSON", help="print the table and draw the plot of an earlier run's JSON, no training")
    p.add_argument("--add-seeds", metavar="JSON", help="rerun the W4A4 STE and constrained (STE) QAT of an earlier run "
                                                       "with --seeds and add the spread to its JSON")
    p.add_argument("--seeds", default="1,2", help="extra seeds for --add-seeds (default 1,2)")
    args = p.parse_args(argv)
    if args.add_seeds:
        result = json.loads(Path(args.add_seeds).read_text())
        settings = result["settings"]
        torch.manual_seed(0)
        train = load_fashion_mnist("train")
        model, _ = load_or_train(ResCNN(), train, TrainConfig(epochs=3))
        calib = to_float_input(train.subset(settings["calibration_images"], seed=1).images)
        test = load_fashion_mnist("test")
        if result["test_images"] != len(test):
            test = test.subset(result["test_images"], seed=0)
        result["w4a4_seeds"] = seed_spread(model, calib, _dataset(train, settings["train_subset"], seed=2), _dataset(test),
                                           settings["epochs"], result, [int(s) for s in args.seeds.split(",")],
                                           lambda s: print(s, flush=True))
        Path(args.add_seeds).write_text(json.dumps(result, indent=2))
        args.render = args.add_seeds
    if args.render:
        result = json.loads(Path(args.render).read_text())
        plot(result, Path(args.render).with_suffix(".png"))
        print(table(result))
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.time()
    torch.manual_seed(0)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    model, cached = load_or_train(ResCNN(), train, TrainConfig(epochs=3))      # the demo's checkpoint
    if args.test_subset:
        test = test.subset(args.test_subset, seed=0)
    fp32 = evaluate(model, test)
    log(f"float model ({'cached' if cached else 'trained'}): {fp32:.2f}%")
    calib = to_float_input(train.subset(1024, seed=1).images)
    test_set = _dataset(test)
    rows = uniform(model, calib, _dataset(train, args.train_subset, seed=2), test_set, args.epochs, log)
    sources = {f"{r['method']} at W2A2": r["lambdas"] for r in rows if r["bits"] == 2 and r["method"].startswith("constrained")}
    sel = selection(model, calib, _dataset(train, args.selection_subset, seed=3), test_set, args.epochs, sources, log)
    seeds = seed_spread(model, calib, _dataset(train, args.train_subset, seed=2), test_set, args.epochs,
                        {"uniform": rows}, [int(s) for s in args.seeds.split(",")], log)
    result = {"fp32_accuracy": fp32, "test_images": len(test), "uniform": rows, "selection": sel, "w4a4_seeds": seeds, "environment": environment(),
              "settings": {"train_subset": args.train_subset, "selection_subset": args.selection_subset,
                           "epochs": args.epochs, "eps": EPS, "methods": {k: dict(zip(("gradient_mode", "dual_lr", "lr", "eps_output"), v))
                                                                          for k, v in METHODS.items()},
                           "range_mode": "learned", "dual_period": 5, "batch_size": 128, "calibration_images": 1024,
                           "float_model": "ResCNN, 3 epochs on the full training split (the demo's cached checkpoint)"},
              "seconds": time.time() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print()
    print(table(result))
    print(f"\nwrote {out} and {out.with_suffix('.png')} in {result['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
