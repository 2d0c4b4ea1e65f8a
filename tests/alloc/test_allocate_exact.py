"""An allocated plan compiles and runs bit-exact with the torch integer reference; ``hwq allocate`` end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import zoo_models
from hwq.alloc.build import build_allocation
from hwq.alloc.sensitivity import layer_sensitivities
from hwq.alloc.solve import solve_exact
from hwq.cost import CostModel, Workload, layer_options
from hwq.cost.workload import layer_nodes
from hwq.lower import compile_model
from hwq.plan import BitPlan
from hwq.qat import quantize_, quantize_ptq, run_reference
from hwq.qat.reference import quantize_input

TARGET = "x86-avx2"


def test_allocated_plan_is_bit_exact_on_the_target():
    model, shape, _ = zoo_models()["rescnn"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, *shape, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    prepared = quantize_(model, step="prepare", calibration=x[:64])
    graph = quantize_(prepared, step="convert")
    cost = CostModel(TARGET, table=None)
    options = {n.name: [o.spec for o in layer_options(Workload.of(n, graph.tensors[n.input].shape), cost.target,
                                                      n.requant is not None)] for n in layer_nodes(graph)}
    sens = layer_sensitivities(prepared, options, (x[64:], y[64:]), "measured", images=32, batch_size=32)
    alloc = build_allocation(graph, cost, sens.losses, batch=16)
    p = alloc.problem
    # halfway between uniform W8A8 (option 0 everywhere) and the fastest plan: a mixed plan
    budget = 0.5 * (p.latency(tuple(0 for _ in p.groups)) + min(p.latency(c) for c in _all(p)))
    sol = solve_exact(p, budget)
    assert sol.latency_ms <= budget * (1 + 1e-9)
    plan = alloc.plan(sol.choice)
    assert BitPlan.from_json(plan.to_json()) == plan
    qgraph = quantize_ptq(model, x[:64], plan)
    compiled = compile_model(qgraph, TARGET)
    kernels = {r.name: r.estimate.kernel for r in cost.plan(qgraph, plan, 16).rows}
    assert len(set(kernels.values())) >= 2, kernels      # a mixed plan runs more than one kernel
    xi = quantize_input(qgraph, torch.rand(16, *shape, generator=g))
    out = compiled.run_int(xi.numpy().astype(qgraph.input.dtype))
    assert np.array_equal(out.astype(np.int64), run_reference(qgraph, xi).numpy())


def _all(p):
    import itertools
    return itertools.product(*[range(len(g.options)) for g in p.groups])


@pytest.mark.slow
def test_hwq_allocate_cli_writes_a_plan_that_compiles(tmp_path):
    """The command on the demo model (its cached float checkpoint, trained once if missing)."""
    plan_path, report = tmp_path / "plan.json", tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "hwq.cli", "allocate", "rescnn", "--target", TARGET, "--budget", "0.85x",
                          "--batch", "16", "--images", "200", "--out", str(plan_path), "--json", str(report), "--verify"],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-1500:]
    assert "predicted total" in out.stdout and "wrote" in out.stdout
    plan = BitPlan.from_json(plan_path.read_text())
    doc = json.loads(report.read_text())
    assert doc["predicted_ms"] <= doc["budget_ms"] * (1 + 1e-6)
    rounds = doc["verify_rounds"]           # (solver budget, predicted, measured) per plan timed here
    assert rounds and "verify: predicted" in out.stdout and rounds[0][0] == pytest.approx(doc["budget_ms"])
    assert "x uniform W8A8" in out.stdout     # an x budget is checked as a ratio to uniform W8A8, timed back to back
    from hwq.models import ResCNN
    model = ResCNN().eval()
    qgraph = quantize_ptq(model, torch.rand(32, 1, 28, 28), plan)
    compiled = compile_model(qgraph, TARGET)
    xi = quantize_input(qgraph, torch.rand(4, 1, 28, 28))
    assert np.array_equal(compiled.run_int(xi.numpy().astype(qgraph.input.dtype)).astype(np.int64),
                          run_reference(qgraph, xi).numpy())
    bad = subprocess.run([sys.executable, "-m", "hwq.cli", "allocate", "rescnn", "--target", TARGET, "--budget", "0.01ms",
                          "--images", "100", "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=1800)
    assert bad.returncode == 2 and "below the fastest plan this target allows" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
