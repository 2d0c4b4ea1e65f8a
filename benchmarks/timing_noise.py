"""How steady is a latency ratio on a shared host? Two ways of timing one pair of builds, repeated.

``hwq allocate --verify`` and ``alloc_study.py`` check budgets as the ratio of a plan's latency to
uniform W8A8's. This script times pairs of MobileNetV2 builds (batch 16, ``x86-avx2``) several
times in a row, each trial with both estimators, the same timed runs per trial:

- ``coarse``: 5 rounds; each round times the reference for 5 repeats (>= 50 ms each), then the
  plan for 5, each side after its own warm-up; the median of the 5 round ratios (the first
  ``measure_ratio``);
- ``fine``: 25 rounds of one repeat each, the order swapped every round, both builds warmed up
  once (``measure_ratio`` now).

The spread of each estimator over the trials (max / min) is what a verdict of "within 3 % of the
budget" has to live with. Pairs: uniform W8A8 over uniform W7A8 (30 % apart on AVX2), and the
plan the study's measured sensitivities chose at its tightest budget over uniform W7A8 (the cost
model predicts the two equal). Writes benchmarks/results/timing_noise.json.

    python benchmarks/timing_noise.py --trials 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def coarse(device, vm_a, vm_b, x, rounds=5, repeats=5) -> float:
    from hwq.lower.device import time_vm

    ratios = []
    for _ in range(rounds):
        b = time_vm(device, vm_b, x, repeats)[0]
        ratios.append(time_vm(device, vm_a, x, repeats)[0] / b)
    return float(np.median(ratios))


def fine(device, vm_a, vm_b, x, rounds=25) -> float:
    from hwq.lower.device import vm_timer

    ta, tb = vm_timer(device, vm_a, x), vm_timer(device, vm_b, x)
    ratios = []
    for r in range(rounds):
        if r % 2 == 0:
            b = tb()
            a = ta()
        else:
            a = ta()
            b = tb()
        ratios.append(a / b)
    return float(np.median(ratios))


def plans(study_json: Path) -> dict:
    """The uniform plans and the study's tightest measured-sensitivity plan (as BitPlan JSON)."""
    from hwq.plan import BitPlan, LayerSpec

    out = {"w8a8": BitPlan(default=LayerSpec(8, 8)).to_json(), "w7a8": None}
    if study_json.is_file():
        r = json.loads(study_json.read_text())["models"].get("mobilenetv2")
        if r:
            out["w7a8"] = json.dumps(r["uniform"]["w7a8"]["plan"])
            tight = min(r["budgets"])
            out["tied"] = json.dumps(next(q["plan"] for q in r["plans"]
                                          if q["method"] == "measured" and q["budget_ms"] == tight))
    if out["w7a8"] is None:
        raise SystemExit(f"{study_json} has no MobileNetV2 entry: run benchmarks/alloc_study.py --models mobilenetv2")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--study", default=str(RESULTS / "alloc_study.json"), help="where the tied plan comes from")
    p.add_argument("--out", default=str(RESULTS / "timing_noise.json"))
    args = p.parse_args(argv)
    from hwq.alloc_job import AllocateConfig, model_and_data
    from hwq.fileio import atomic_write_json
    from hwq.lower import compile_model
    from hwq.lower.device import LocalDevice
    from hwq.plan import BitPlan
    from hwq.qat import quantize_ptq
    from hwq.timing import environment

    model, calib, _, _ = model_and_data(AllocateConfig(model="mobilenetv2", images=64), lambda s: None)
    device = LocalDevice()
    vms = {}
    for name, text in plans(Path(args.study)).items():
        c = compile_model(quantize_ptq(model, calib[:32], BitPlan.from_json(text)), "x86-avx2")
        vms[name] = device.vm(c.executable, c.target, name)
    x = np.random.default_rng(0).random((args.batch, 3, 224, 224), dtype=np.float32)
    pairs = [(a, "w7a8") for a in vms if a != "w7a8"]
    rows = {f"{a}/{b}": {"coarse": [], "fine": []} for a, b in pairs}
    t0 = time.time()
    for trial in range(args.trials):
        for a, b in pairs:
            row = rows[f"{a}/{b}"]
            row["coarse"].append(coarse(device, vms[a], vms[b], x))
            row["fine"].append(fine(device, vms[a], vms[b], x))
            print(f"{time.time() - t0:5.0f} s  trial {trial + 1}: {a}/{b}  coarse {row['coarse'][-1]:.3f}  "
                  f"fine {row['fine'][-1]:.3f}", flush=True)
    print(f"\n{'pair':12s} {'estimator':9s} {'median':>7s} {'min':>7s} {'max':>7s} {'max/min':>8s}")
    for pair, row in rows.items():
        for est in ("coarse", "fine"):
            v = row[est]
            row[f"{est}_spread"] = max(v) / min(v)
            print(f"{pair:12s} {est:9s} {np.median(v):7.3f} {min(v):7.3f} {max(v):7.3f} {max(v) / min(v):8.3f}")
    atomic_write_json(Path(args.out), {"model": "mobilenetv2", "target": "x86-avx2", "batch": args.batch,
                                       "trials": args.trials, "pairs": rows, "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
