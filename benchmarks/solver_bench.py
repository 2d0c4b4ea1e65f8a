"""Speed and quality of the bit-allocation solvers (hwq.alloc.solve) on synthetic problems.

Instances: N groups of 6 options ("fp32", "w8a8", ..., "w4a8"); within a group latency falls as
the loss rises (loss 0 for the most accurate option, per-group sensitivities log-normal over about
two decades), weight bytes follow the bit width, and about every second pair of consecutive groups
has an interaction table (a conversion cost growing with the width difference, plus noise of
either sign). Budgets at 25 %, 50 % and 75 % of the way from the fastest plan's latency to the most
accurate plan's.

Measured, median over seeds and budgets:
- exact (milp) vs greedy: time, and the greedy's optimality gap in % of the exact objective
  (``100 * (greedy - exact) / |exact|``);
- dp on the same groups without interactions (default resolution, budget / 10 000), with its gap;
- exact vs greedy on MobileNetV2-sized instances (53 groups of 3-6 options, 50 interactions) at 10
  budgets from the fastest plan to the most accurate, and a 100-budget pareto_front sweep on them;
- exact vs greedy on the allocation study's knapsacks (``results/alloc_study_problems.json``: each
  model's groups, cost-model latencies and interaction tables under each sensitivity method, at the
  study's budgets, as ``build_allocation`` makes them from ``results/alloc_study.json``). They are
  data here; ``benchmarks/study_problems.py`` rebuilds them (it needs torch, the models and the
  study's cost table).

    .venv/bin/python benchmarks/solver_bench.py            # ~1 min on 2 cores; results/solver.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import scipy

from hwq.alloc.solve import (Group, Interaction, Problem, pareto_front, solve_dp, solve_exact,
                             solve_greedy)
from hwq.fileio import atomic_write_json
from hwq.timing import environment

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = ("fp32", "w8a8", "w7a8", "w6a8", "w5a8", "w4a8")
BITS = np.array([32, 8, 7, 6, 5, 4])
FRACTIONS = (0.25, 0.5, 0.75)
STUDY_PROBLEMS = RESULTS / "alloc_study_problems.json"


def synthetic(n_groups: int, seed: int, options=6, n_interactions=None, chain=0.5) -> Problem:
    """A random allocation problem (see the module docstring); ``options=None`` draws 3-6 per
    group; ``n_interactions`` caps the chain's interactions."""
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(n_groups):
        n = options or int(rng.integers(3, 7))
        slowest = rng.lognormal(-1.0, 0.8)
        lat = slowest * np.concatenate([[1.0], np.sort(rng.uniform(0.25, 0.9, n - 1))[::-1]])
        loss = rng.lognormal(-6.0, 1.5) * np.concatenate([[0.0], np.sort(rng.exponential(1.0, n - 1))])
        params = int(rng.integers(1_000, 1_000_000))
        groups.append(Group(f"layer{g}", OPTIONS[:n], lat, loss, params * BITS[:n] / 8))
    inters = []
    for g in range(n_groups - 1):
        if rng.random() < chain and (n_interactions is None or len(inters) < n_interactions):
            na, nb = len(groups[g].options), len(groups[g + 1].options)
            scale = 0.05 * groups[g + 1].latency_ms[0]
            i, j = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
            inters.append(Interaction(g, g + 1, scale * np.abs(i - j) / 5 + rng.normal(0.0, 0.02 * scale, (na, nb))))
    return Problem(tuple(groups), tuple(inters), base_latency_ms=0.1)


def _budgets(p: Problem):
    fastest = sum(min(g.latency_ms) for g in p.groups)
    # the span is only for placing budgets: interactions move the true ends a little
    accurate = sum(g.latency_ms[int(np.argmin(g.loss))] for g in p.groups)
    return [p.base_latency_ms + fastest + f * (accurate - fastest) for f in FRACTIONS]


def _gap(loss, exact_loss):
    """The gap in % of the exact objective; a study's losses can be negative (a plan can beat the
    float model on the sensitivity set), hence ``|exact|``."""
    if loss == exact_loss:
        return 0.0
    return 100.0 * (loss - exact_loss) / abs(exact_loss) if exact_loss else math.inf


def _compare(problem: Problem, budgets) -> list:
    """``(exact s, greedy s, gap %)`` per budget, the greedy checked feasible."""
    out = []
    for budget in budgets:
        e, g = solve_exact(problem, budget), solve_greedy(problem, budget)
        # the exact solve is optimal to HiGHS's objective gap (1e-6 absolute on the scaled objective,
        # hwq.alloc.milp): a greedy plan may tie it up to that (seen on MobileNetV2, 6e-7 relative)
        if g.latency_ms > budget * (1 + 1e-9) or g.loss < e.loss - 1e-5 * max(1.0, abs(e.loss)):
            raise RuntimeError(f"greedy plan {g} breaks the budget {budget!r} or beats the exact {e}")
        out.append((e.seconds, g.seconds, _gap(g.loss, e.loss)))
    return out


def _summary(runs) -> dict:
    exact_t, greedy_t, gaps = zip(*runs)
    med = statistics.median
    return {"solves": len(runs), "exact_s_median": med(exact_t), "exact_s_max": max(exact_t),
            "greedy_s_median": med(greedy_t), "greedy_s_max": max(greedy_t),
            "greedy_gap_pct_median": med(gaps), "greedy_gap_pct_max": max(gaps),
            "greedy_gap_over_0.5pct": sum(g > 0.5 for g in gaps)}


def _size_row(n_groups: int, seeds: int) -> dict:
    runs, dp_t, dp_gaps, exact_plain_t = [], [], [], []
    for seed in range(seeds):
        p = synthetic(n_groups, seed)
        plain = Problem(p.groups, (), p.base_latency_ms)
        runs += _compare(p, _budgets(p))
        for budget in _budgets(p):
            ep, d = solve_exact(plain, budget), solve_dp(plain, budget)
            exact_plain_t.append(ep.seconds)
            dp_t.append(d.seconds)
            dp_gaps.append(_gap(d.loss, ep.loss))
    med = statistics.median
    return {"groups": n_groups, "options": 6, "interactions_mean": float(np.mean(
                [len(synthetic(n_groups, s).interactions) for s in range(seeds)])),
            **_summary(runs),
            "no_interactions": {"exact_s_median": med(exact_plain_t), "dp_s_median": med(dp_t),
                                "dp_gap_pct_median": med(dp_gaps), "dp_gap_pct_max": max(dp_gaps)}}


def _mobilenet_sized(seed: int) -> Problem:
    return synthetic(53, 100 + seed, options=None, n_interactions=50, chain=1.0)


def _mobilenet_row(seeds: int) -> dict:
    runs = []
    for seed in range(seeds):
        p = _mobilenet_sized(seed)
        fastest = pareto_front(p, n_budgets=1)[0].latency_ms
        accurate = p.latency([int(np.lexsort((g.latency_ms, g.loss))[0]) for g in p.groups])
        runs += _compare(p, np.linspace(fastest, accurate, 12)[1:-1])
    return {"groups": 53, "options": "3-6", "interactions": 50, "budgets": 10, **_summary(runs)}


def _load_study() -> dict:
    data = json.loads(STUDY_PROBLEMS.read_text())
    out = {}
    for key, d in data["problems"].items():
        groups = tuple(Group(g["name"], tuple(g["options"]), g["latency_ms"], g["loss"], g["weight_bytes"],
                             tuple(g["layers"])) for g in d["groups"])
        inters = tuple(Interaction(t["a"], t["b"], t["latency_ms"]) for t in d["interactions"])
        out[key] = (Problem(groups, inters, d["base_latency_ms"]), d["budgets_ms"])
    return out


def _study_rows() -> list:
    rows = []
    for key, (p, budgets) in _load_study().items():
        rows.append({"problem": key, "groups": len(p.groups), "interactions": len(p.interactions),
                     **_summary(_compare(p, budgets))})
    return rows


def _pareto_row(seeds: int) -> dict:
    times, points, cpu = [], [], []
    for seed in range(seeds):
        p = _mobilenet_sized(seed)
        t0, c0 = time.perf_counter(), time.process_time()
        front = pareto_front(p, n_budgets=100)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        points.append(len(front))
    return {"groups": 53, "options": "3-6", "interactions": 50, "budgets": 100,
            "seconds_median": statistics.median(times), "seconds_max": max(times),
            "cpu_seconds_median": statistics.median(cpu), "points_median": statistics.median(points)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds per size (1000 groups: at most 3)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    rows = [_size_row(n, args.seeds if n < 1000 else min(args.seeds, 3)) for n in (50, 200, 1000)]
    mobilenet = _mobilenet_row(min(args.seeds, 3))
    study = _study_rows()
    pareto = _pareto_row(min(args.seeds, 3))
    result = {"sizes": rows, "mobilenet_sized": mobilenet, "study": study, "pareto_sweep": pareto,
              "budget_fractions": FRACTIONS,
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
              "environment": {**environment(), "scipy": scipy.__version__}}
    atomic_write_json(RESULTS / "solver.json", result)

    print(f"\n{'instance':>22} {'solves':>6} {'exact s':>8} {'(max)':>7} {'greedy s':>9} {'(max)':>7}"
          f" {'gap %':>7} {'(max)':>7} | {'no-inter exact s':>16} {'dp s':>7} {'dp gap %':>8}")
    named = [(f"synthetic {r['groups']}", r) for r in rows] + [("MobileNetV2-sized", mobilenet)] \
        + [(r["problem"], r) for r in study]
    for name, r in named:
        n = r.get("no_interactions")
        dp = f" | {n['exact_s_median']:>16.3f} {n['dp_s_median']:>7.3f} {n['dp_gap_pct_median']:>8.4f}" if n else ""
        print(f"{name:>22} {r['solves']:>6} {r['exact_s_median']:>8.4f} {r['exact_s_max']:>7.4f}"
              f" {r['greedy_s_median']:>9.4f} {r['greedy_s_max']:>7.4f} {r['greedy_gap_pct_median']:>7.3f}"
              f" {r['greedy_gap_pct_max']:>7.3f}{dp}")
    print(f"pareto_front, 53 groups, 50 interactions, 100 budgets: {pareto['seconds_median']:.2f} s "
          f"(max {pareto['seconds_max']:.2f} s, CPU {pareto['cpu_seconds_median']:.2f} s), "
          f"{pareto['points_median']:.0f} points")
    print(f"1-min load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"wrote {RESULTS / 'solver.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
