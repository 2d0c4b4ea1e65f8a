"""The knapsack of a model on a target: its latency equals the cost model's, plans map both ways."""

import itertools
import random

import pytest

from hwq.alloc.build import budget_ms, build_allocation, parse_budget
from hwq.alloc.solve import solve_exact
from hwq.cost import CostModel
from hwq.errors import ConfigError, InfeasibleBudgetError
from hwq.plan import BitPlan, LayerSpec

LOSS = {"fp32": -0.005, "w8a8": 0.0, "w7a8": 0.01, "w4a8": 0.05, "w8a4": 0.03, "w4a4": 0.1}


def losses(layer, options):
    return [LOSS[o] * (2 if layer == "stem.0" else 1) for o in options]


@pytest.fixture(scope="module")
def alloc(rescnn_graph):
    return build_allocation(rescnn_graph, CostModel("x86-avx2", table=None), losses, batch=16)


def test_problem_latency_is_the_cost_models_plan_latency(rescnn_graph, alloc):
    cost = CostModel("x86-avx2", table=None)
    p = alloc.problem
    assert [g.name for g in p.groups] == ["stem.0", "down.0", "block1.0", "block2.0", "fc"]
    assert p.interactions, "a consumer's kernel depends on its producer's width: pairwise terms"
    rng = random.Random(0)
    for _ in range(30):
        choice = tuple(rng.randrange(len(g.options)) for g in p.groups)
        plan = alloc.plan(choice)
        assert p.latency(choice) == pytest.approx(cost.plan(rescnn_graph, plan, 16).total_ms, rel=1e-9)
        assert alloc.choice(plan) == choice
        assert p.loss(choice) == pytest.approx(sum(losses(n, [s.name])[0]
                                                   for n, s in plan.layers.items()))


def test_latency_matches_with_a_fitted_glue_model(rescnn_graph):
    """With a table whose whole-model entries give a glue fit with a cold-cache term, the knapsack
    still prices every plan exactly as ``CostModel.plan`` does."""
    from hwq.cost import LatencyTable
    from hwq.cost.machine import this_cpu

    table = LatencyTable("x86-avx2", this_cpu())
    for i, (total, kernels, ops, mb, mem) in enumerate([(3.0, 2.0, 8, 0.1, 0.5), (9.0, 6.0, 8, 2.0, 1.0),
                                                         (5.0, 3.5, 21, 0.5, 2.0), (40.0, 30.0, 21, 30.0, 4.0)]):
        table.models[f"m{i}"] = {"median_ms": total, "kernels_ms": kernels, "glue_ops": ops, "glue_mb": mb,
                                 "kernels_memory_ms": mem}
    cost = CostModel("x86-avx2", table)
    assert cost.glue_fit is not None and cost.cold > 0
    alloc = build_allocation(rescnn_graph, cost, losses, batch=16)
    rng = random.Random(1)
    for _ in range(10):
        choice = tuple(rng.randrange(len(g.options)) for g in alloc.problem.groups)
        assert alloc.problem.latency(choice) == pytest.approx(cost.plan(rescnn_graph, alloc.plan(choice), 16).total_ms,
                                                              rel=1e-9)


def test_exact_plan_meets_the_budget_and_is_optimal(alloc):
    p = alloc.problem
    every = list(itertools.product(*[range(len(g.options)) for g in p.groups]))
    w8 = budget_ms(alloc, "1x")
    assert budget_ms(alloc, "0.9x") == pytest.approx(0.9 * w8)
    fastest = min(p.latency(c) for c in every)
    budget = (w8 + fastest) / 2
    sol = solve_exact(p, budget)
    assert sol.latency_ms <= budget * (1 + 1e-9)
    best = min(p.loss(c) for c in every if p.latency(c) <= budget * (1 + 1e-9))
    assert sol.loss == pytest.approx(best)
    with pytest.raises(InfeasibleBudgetError, match=f"{fastest:.3f} ms"):
        solve_exact(p, fastest * 0.95)


def test_ties_and_bad_input(rescnn_graph):
    cost = CostModel("x86-avx2", table=None)
    tied = build_allocation(rescnn_graph, cost, losses, batch=1, ties=[("block1.0", "block2.0")])
    assert [g.name for g in tied.problem.groups] == ["block1.0+block2.0", "stem.0", "down.0", "fc"]
    plan = tied.plan((5, 0, 0, 0))          # options: fp32, w8a8, w7a8, w4a8, w8a4, w4a4
    assert plan.layers["block1.0"] == plan.layers["block2.0"] == LayerSpec(4, 4)
    with pytest.raises(ConfigError, match=r"\['block3.0'\] the model lacks; close matches: \['block1.0', 'block2.0'"):
        build_allocation(rescnn_graph, cost, losses, ties=[("block3.0", "stem.0")])
    with pytest.raises(ConfigError, match="gives tied layers"):
        tied.choice(BitPlan(layers={"block1.0": LayerSpec(4, 4)}))
    for bad in ("fast", "-1ms", "0x", "3 s"):
        with pytest.raises(ConfigError, match=f"budget {bad!r} is not a positive latency"):
            parse_budget(bad)
    assert parse_budget("2.5ms") == (2.5, "ms") and parse_budget("0.8x") == (0.8, "x")
