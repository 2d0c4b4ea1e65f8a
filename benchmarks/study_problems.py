"""The allocation study's knapsacks as data, for ``solver_bench.py``: rebuilt from ``alloc_study.json``.

For each model of ``results/alloc_study.json`` and each sensitivity method: ``build_allocation`` on
the model's graph, the study's sensitivities and the x86-avx2 cost table it names (this CPU's,
``$HWQ_CACHE/measured/...``), at the study's batch; its budgets in the cost model's ms (the
study's measured budgets times its ``model_ms_per_measured_ms``), as the study's solver saw them.
Writes ``results/alloc_study_problems.json`` (groups, options, latencies, losses, weight bytes,
interaction tables; numbers rounded to 6 significant digits), which ``solver_bench.py`` reads
without torch.

    python benchmarks/study_problems.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _r(x):
    return float(f"{x:.6g}")


def problem_json(problem, budgets) -> dict:
    return {"base_latency_ms": _r(problem.base_latency_ms), "budgets_ms": [_r(b) for b in budgets],
            "groups": [{"name": g.name, "options": list(g.options), "latency_ms": [_r(v) for v in g.latency_ms],
                        "loss": [_r(v) for v in g.loss],
                        "weight_bytes": [_r(v) for v in g.weight_bytes] if g.weight_bytes else None,
                        "layers": list(g.layers)} for g in problem.groups],
            "interactions": [{"a": t.a, "b": t.b, "latency_ms": [[_r(v) for v in row] for row in t.latency_ms]}
                             for t in problem.interactions]}


def main() -> int:
    from hwq.alloc.build import build_allocation
    from hwq.alloc.sensitivities import Sensitivities
    from hwq.alloc_job import AllocateConfig, model_and_data
    from hwq.cost import CostModel
    from hwq.fileio import atomic_write_json, display_path
    from hwq.qat import quantize_
    from hwq.timing import environment

    study = json.loads((RESULTS / "alloc_study.json").read_text())
    out = {"source": "hwq.alloc.build.build_allocation on each model of benchmarks/results/alloc_study.json: its "
                     "sensitivities (per method), its budgets in the cost model's ms, the x86-avx2 table of this CPU, "
                     "its batch (benchmarks/study_problems.py); numbers rounded to 6 significant digits",
           "problems": {}, "environment": environment()}
    for name, entry in study["models"].items():
        cost = CostModel(entry["target"])           # this CPU's measured table, as the study used
        if cost.table is None:
            raise SystemExit(f"no {entry['target']} table for this CPU ({cost.note}): run benchmarks/alloc_study.py here")
        model, calib, _, _ = model_and_data(AllocateConfig(model=name), lambda s: None)
        graph = quantize_(quantize_(model, step="prepare", calibration=calib), step="convert")
        scale = entry["latency"]["model_ms_per_measured_ms"]
        for method, sens in entry["sensitivities"].items():
            s = Sensitivities.from_json(json.dumps(sens))
            alloc = build_allocation(graph, cost, s.losses, entry["batch"])
            out["problems"][f"{name}/{method}"] = problem_json(alloc.problem, [b * scale for b in entry["budgets"]])
            print(f"{name}/{method}: {len(alloc.problem.groups)} groups, {len(alloc.problem.interactions)} interactions")
        out["cost_table"] = display_path(cost.table.path)
    atomic_write_json(RESULTS / "alloc_study_problems.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
