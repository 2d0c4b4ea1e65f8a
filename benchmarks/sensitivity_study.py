"""Sensitivity study: do the duals and the Hessian predict which (layer, option) pairs cost loss?

For each model (the demo's ResCNN, 5 quantizable layers, and ResNet-20, 22 layers; both float
checkpoints from ``load_or_train``'s cache) and the options w8a8, w7a8, w6a8, w4a8, w4a4, three
estimates of s[l][o], the loss added when layer l runs at option o instead of w8a8
(``hwq.alloc.sensitivity``):

(a) duals: λ_l · (g_l(o) - g_l(w8a8)), λ from a short constrained QAT run (paper's float-path
    gradients) of the float model at W4A4, ε = 0.02 for every layer. At W8A8 every layer's relative
    error is far below any useful ε, every constraint is slack and every λ stays 0: the duals only
    carry information where the constraints bind, so the run is at the low end of the option set,
    as in Hounie et al.'s layer selection;
(b) hessian: HAWQ's ½ Tr(H)/n · ‖ΔW‖² plus the output activation's term, Hutchinson traces of the
    float model's loss;
(c) measured: the held-out loss change with only that layer changed, the others at w8a8, on the
    float model prepared at W8A8 (calibrated ranges): the ground truth.

Agreement is Spearman's rank correlation with (c): over (layer, option) pairs (w8a8 left out; this
one is flattered by every method ranking an option's fewer bits above its more bits within a layer),
over layers scored by their worst option, and over layers at each option (the ranking the
allocator really needs: which layers to spend bits on).

    .venv/bin/python benchmarks/sensitivity_study.py     # 10-20 min on 2 shared cores; results/sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from hwq.alloc.sensitivities import Sensitivities, rank_agreement
from hwq.alloc.sensitivity import layer_sensitivities
from hwq.data import load_fashion_mnist
from hwq.fileio import atomic_write_json
from hwq.models import ResCNN, ResNet20, TrainConfig, evaluate, load_or_train
from hwq.models.train import to_float_input
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import QATConfig, quantize_, train_constrained
from hwq.timing import environment

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = ("w8a8", "w7a8", "w6a8", "w4a8", "w4a4")
REFERENCE = "w8a8"
# model -> (constructor, float training); ResCNN's is the demo's checkpoint, ResNet-20's is kept to
# ~10 minutes on 2 cores (2 epochs over a third of the training split)
MODELS = {"rescnn": (ResCNN, TrainConfig(epochs=3)),
          "resnet20": (ResNet20, TrainConfig(epochs=2, train_subset=20000))}
QAT = QATConfig(epochs=1, batch_size=128, lr=1e-4, gradient_mode="fp", dual_lr=10.0, dual_period=5, eps=0.02)
QAT_PLAN = BitPlan(default=LayerSpec(4, 4))


def _restricted(s: Sensitivities, option: str) -> Sensitivities:
    """The table with only ``option`` (and the reference): ranking layers at one option."""
    return Sensitivities({k: {REFERENCE: 0.0, option: row[option]} for k, row in s.values.items()}, s.method)


def agreement(pred: Sensitivities, truth: Sensitivities) -> dict:
    """Spearman of ``pred`` against ``truth``: over pairs, over layers (worst option), per option."""
    out = {"pairs": rank_agreement(pred, truth, "pairs"), "layers": rank_agreement(pred, truth, "layers")}
    for o in OPTIONS[1:]:
        out[f"layers@{o}"] = rank_agreement(_restricted(pred, o), _restricted(truth, o), "layers")
    # nan (one side constant, e.g. every dual 0) is not JSON: null
    return {k: None if math.isnan(v) else v for k, v in out.items()}


def top_layers(s: Sensitivities, option: str, k: int = 5) -> list:
    return sorted(s.values, key=lambda name: -s.values[name][option])[:k]


def study(name: str, train, test, args, log) -> dict:
    """Train (or load) the float model, compute the three estimates and compare them."""
    make, float_config = MODELS[name]
    torch.manual_seed(0)
    t0 = time.time()
    model, cached = load_or_train(make(), train, float_config, log=lambda s: log("  " + s))
    fp32 = evaluate(model, test)
    log(f"{name}: float model {'cached' if cached else 'trained'} ({time.time() - t0:.0f} s), "
        f"test accuracy {fp32:.2f}%")
    calib = to_float_input(train.subset(1024, seed=1).images)
    held = test.subset(args.images, seed=0)
    data = (to_float_input(held.images), torch.from_numpy(held.labels))
    seconds, tables = {}, {}

    prepared = quantize_(model, BitPlan(), calibration=calib)
    for method, kwargs in (("measured", {"batch_size": 250}),
                           ("hessian", {"batch_size": args.hessian_batch, "samples": args.samples})):
        t = time.time()
        tables[method] = layer_sensitivities(prepared, list(OPTIONS), data, method, images=args.images, **kwargs)
        seconds[method] = time.time() - t
        log(f"  {method}: {seconds[method]:.0f} s")

    t = time.time()
    qat = quantize_(model, QAT_PLAN, calibration=calib)
    sub = train.subset(args.qat_images, seed=2)
    report = train_constrained(qat, TensorDataset(to_float_input(sub.images), torch.from_numpy(sub.labels)), QAT,
                               progress=False, log=lambda s: log("  " + s))
    tables["duals"] = layer_sensitivities(qat, list(OPTIONS), data, "duals", report=report, images=args.images)
    seconds["duals"] = time.time() - t
    log(f"  duals (QAT at W4A4 on {len(sub)} images + g_l): {seconds['duals']:.0f} s; "
        f"{sum(r.lam > 0 for r in report.layers)}/{len(report.layers)} layers with λ > 0")

    truth = tables["measured"]
    return {"float_accuracy": fp32, "layers": truth.layers, "seconds": seconds,
            "agreement": {m: agreement(tables[m], truth) for m in ("duals", "hessian")},
            "top5_at_w4a8": {m: top_layers(s, "w4a8") for m, s in tables.items()},
            "lambdas": report.lambdas(), "qat_history": list(report.history),
            "sensitivities": {m: json.loads(s.to_json()) for m, s in tables.items()}}


def table(result: dict) -> str:
    """Spearman with the measured ground truth, per model and method."""
    keys = ["pairs", "layers"] + [f"layers@{o}" for o in OPTIONS[1:]]
    lines = [f"{'model':9s} {'method':8s} " + " ".join(f"{k:>14s}" for k in keys)]
    for name, r in result["models"].items():
        for m, a in r["agreement"].items():
            lines.append(f"{name:9s} {m:8s} " + " ".join(f"{a[k]:14.3f}" if a[k] is not None else f"{'-':>14s}"
                                                        for k in keys))
    return "\n".join(lines)


def detail(result: dict) -> str:
    """Per model, the three tables side by side at w4a8 and w4a4."""
    out = []
    for name, r in result["models"].items():
        s = {m: Sensitivities.from_json(json.dumps(d)) for m, d in r["sensitivities"].items()}
        w = max(len(k) for k in r["layers"])
        out.append(f"\n{name} (float {r['float_accuracy']:.2f}%): s[l][o] at w4a8 | w4a4")
        out.append(f"{'layer':{w}s} " + " ".join(f"{m:>10s}" for m in ("measured", "hessian", "duals")) + " |"
                   + " ".join(f"{m:>10s}" for m in ("measured", "hessian", "duals")) + f" {'lambda':>8s}")
        for layer in r["layers"]:
            row = [s[m].values[layer][o] for o in ("w4a8", "w4a4") for m in ("measured", "hessian", "duals")]
            out.append(f"{layer:{w}s} " + " ".join(f"{v:10.3g}" for v in row[:3]) + " |"
                       + " ".join(f"{v:10.3g}" for v in row[3:]) + f" {r['lambdas'][layer]:8.3g}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="rescnn,resnet20", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--images", type=int, default=1000, help="held-out test images for every estimate")
    p.add_argument("--samples", type=int, default=64, help="Hutchinson samples (one batch each)")
    p.add_argument("--hessian-batch", type=int, default=128)
    p.add_argument("--qat-images", type=int, default=5000, help="training images of the constrained QAT run")
    p.add_argument("--out", default=str(RESULTS / "sensitivity.json"))
    p.add_argument("--render", metavar="JSON", help="print the tables of an earlier run's JSON, no computation")
    args = p.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        print(table(result) + "\n" + detail(result))
        return 0
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; valid: {', '.join(MODELS)}")
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.time()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    result = {"options": list(OPTIONS), "reference": REFERENCE,
              "settings": {"images": args.images, "samples": args.samples, "hessian_batch": args.hessian_batch,
                           "qat_images": args.qat_images, "qat": json.loads(QAT.to_json()), "qat_plan": "W4A4",
                           "float_training": {n: vars(MODELS[n][1]) for n in names}},
              "models": {n: study(n, train, test, args, log) for n in names}}
    result["environment"] = environment()
    result["seconds"] = time.time() - t0
    atomic_write_json(args.out, result)
    print("\nSpearman rank correlation with the measured loss change\n" + table(result) + "\n" + detail(result))
    print(f"\nwrote {args.out} in {result['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
