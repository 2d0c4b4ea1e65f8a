"""Meeting the budget when measured: a device slower than the model predicts makes the loop
tighten the solver's budget until the measured plan fits; an impossible budget says so."""

import random

import pytest

from hwq.alloc.problem import Group, Problem
from hwq.alloc.solve import solve_exact
from hwq.alloc.verify import meet_measured_budget
from hwq.errors import ConfigError, InfeasibleBudgetError


def _problem(n=12, seed=0):
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        lat = sorted((rng.uniform(0.5, 2.0) for _ in range(4)), reverse=True)
        loss = sorted(rng.uniform(0, 1) for _ in range(4))
        groups.append(Group(f"l{i}", ("a", "b", "c", "d"), tuple(lat), tuple(loss)))
    return Problem(tuple(groups))


def test_a_device_slower_than_predicted_gets_a_tighter_plan_that_fits():
    p = _problem()
    # this device runs the plans 6 % slower than the model says, plus a per-plan wobble
    measure = lambda sol: p.latency(sol.choice) * (1.06 + 0.01 * (sum(sol.choice) % 3))   # noqa: E731
    budget = 0.5 * (p.latency((0,) * 12) + p.latency((3,) * 12))
    first = solve_exact(p, budget)
    assert measure(first) > budget * 1.03                  # the plain knapsack plan misses when measured
    v = meet_measured_budget(lambda b: solve_exact(p, b), measure, budget)
    assert v.met and v.measured_ms <= budget * 1.03 and len(v.rounds) >= 2
    assert v.solver_budget_ms < budget and v.rounds[0][0] == budget
    assert v.solution.loss >= first.loss                   # meeting it costs accuracy, never gains


def test_a_plan_already_within_budget_is_kept_after_one_measurement():
    p = _problem()
    budget = p.latency((1,) * 12)
    v = meet_measured_budget(lambda b: solve_exact(p, b), lambda sol: p.latency(sol.choice), budget)
    assert v.met and len(v.rounds) == 1 and v.solution.choice == solve_exact(p, budget).choice


def test_unreachable_budgets_report_the_fastest_measured_or_the_fastest_plan():
    p = _problem()
    fastest = p.latency((3,) * 12)       # option "d" is the fastest of each group
    timed = []
    with pytest.raises(InfeasibleBudgetError, match="measured here") as e:   # below the fastest, predicted and measured
        meet_measured_budget(lambda b: solve_exact(p, b), lambda s: timed.append(s) or p.latency(s.choice),
                             fastest * 0.9)
    assert e.value.fastest_ms == pytest.approx(fastest) and [s.choice for s in timed] == [(3,) * 12]
    v = meet_measured_budget(lambda b: solve_exact(p, b), lambda s: 2 * p.latency(s.choice), fastest * 1.2)
    assert not v.met and v.measured_ms == pytest.approx(2 * fastest)
    with pytest.raises(ConfigError, match="tolerance"):
        meet_measured_budget(lambda b: None, lambda s: 0.0, 1.0, tolerance=-0.1)


def test_tightening_starts_from_the_plans_prediction_not_the_solver_budget():
    """A plan predicted well under the solver's budget but measured over the user's: asking for
    budget x budget / measured would give the same plan back; the next plan must predict less than it."""
    p = _problem(seed=3)
    measure = lambda sol: 1.25 * p.latency(sol.choice)                       # noqa: E731
    budget = 0.6 * p.latency((0,) * 12) + 0.4 * p.latency((3,) * 12)
    v = meet_measured_budget(lambda b: solve_exact(p, b), measure, budget, tolerance=0.0, max_rounds=6)
    assert v.met and v.measured_ms <= budget and len({r[1] for r in v.rounds}) == len(v.rounds)


def test_a_budget_below_the_predicted_fastest_plan_is_met_when_the_device_is_faster():
    """The model calls the budget infeasible, but on this device the fastest plan meets it: the
    device decides, and the plan is kept."""
    p = _problem()
    fastest = p.latency((3,) * 12)
    with pytest.raises(InfeasibleBudgetError):
        solve_exact(p, fastest * 0.95)
    v = meet_measured_budget(lambda b: solve_exact(p, b), lambda s: 0.9 * p.latency(s.choice), fastest * 0.95)
    assert v.met and v.solution.choice == (3,) * 12 and len(v.rounds) == 1
