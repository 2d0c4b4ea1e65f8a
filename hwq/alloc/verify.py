"""Meet the budget when measured: solve, measure the plan on the device, tighten, solve again.

The cost model predicts a whole plan within a few percent (``benchmarks/cost_fidelity.py``), and
a knapsack solution sits at its budget by construction, so about half of the plans land just over
it when measured. ``meet_measured_budget`` closes that loop with the device itself: when the
measured latency exceeds the budget by more than the tolerance, the budget the solver sees is
set to the plan's own prediction times ``budget / measured`` (the model's error on this very
plan) and the problem is solved again, a few rounds at most. Pure: the caller passes the solver and the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hwq.alloc.problem import Solution
from hwq.errors import ConfigError, InfeasibleBudgetError


@dataclass(frozen=True)
class Verified:
    """A plan checked on the device.

    Attributes:
        solution: the plan kept (the solver's, at ``solver_budget_ms``).
        measured_ms: its measured latency.
        met: whether ``measured_ms <= budget_ms * (1 + tolerance)``.
        rounds: ``(solver budget, predicted ms, measured ms)`` of every plan tried, in order.
    """

    solution: Solution
    measured_ms: float
    budget_ms: float
    solver_budget_ms: float
    met: bool
    rounds: tuple = field(default_factory=tuple)


def meet_measured_budget(solve, measure, budget_ms: float, tolerance: float = 0.03, max_rounds: int = 4) -> Verified:
    """Solve at ``budget_ms``; while the measured plan is over ``budget_ms * (1 + tolerance)``,
    solve again at the budget scaled by the measured error.

    Args:
        solve: ``budget_ms -> Solution`` (e.g. ``lambda b: solve_exact(problem, b)``); may raise
            ``InfeasibleBudgetError`` below the fastest plan. A user's budget below the fastest
            plan *as predicted* is not the end: the fastest plan is measured, and kept if it meets
            the budget on the device.
        measure: ``Solution -> measured ms`` (compile and time the plan on the device).
        budget_ms: the user's budget.
        tolerance: the slack the measurement may use (timing noise), as a fraction.
        max_rounds: plans measured at most.

    Returns:
        The first plan that meets the budget; if none does within ``max_rounds``, the fastest
        measured one, with ``met=False``.

    Raises:
        InfeasibleBudgetError: the budget is below the fastest plan both as predicted and as
            measured (the message gives both).
    """
    if not budget_ms > 0 or not tolerance >= 0 or max_rounds < 1:
        raise ConfigError(f"budget_ms must be > 0, tolerance >= 0 and max_rounds >= 1, got "
                          f"{budget_ms!r}, {tolerance!r}, {max_rounds!r}")
    solver_budget, tried = budget_ms, []          # tried: (solution, measured ms, solver budget)
    below_fastest = None        # the model's verdict that the budget itself is below the fastest plan

    def verified(sol, ms, sb):
        rounds = tuple((b, t.latency_ms, m) for t, m, b in tried)
        return Verified(sol, ms, budget_ms, sb, ms <= budget_ms * (1 + tolerance), rounds)

    for _ in range(max_rounds):
        try:
            sol = solve(solver_budget)
        except InfeasibleBudgetError as e:
            if e.fastest_ms is None or any(t.latency_ms <= e.fastest_ms * (1 + 1e-9) for t, _, _ in tried):
                if not tried:
                    raise
                break                   # the fastest plan is measured already: nothing faster to try
            # below the fastest plan as predicted: measure that plan once, the device decides (a
            # model that over-predicts this machine calls budgets infeasible that the plan meets)
            below_fastest = below_fastest or (e if not tried else None)
            solver_budget = e.fastest_ms * (1 + 1e-9)
            continue
        again = next((m for t, m, _ in tried if t.choice == sol.choice), None)
        if again is not None:           # a plan already measured: ask for less than it predicts
            solver_budget = min(solver_budget, sol.latency_ms * budget_ms / again) * (1 - 0.01)
            continue
        ms = float(measure(sol))
        tried.append((sol, ms, solver_budget))
        if ms <= budget_ms * (1 + tolerance):
            return verified(sol, ms, solver_budget)
        # the model under-predicted this plan by measured / predicted: the next plan must predict
        # at most this plan's prediction scaled by budget / measured (a solver budget above the
        # plan's own prediction would give the same plan back)
        solver_budget = min(solver_budget, sol.latency_ms * budget_ms / ms) * (1 - 0.01)
    if below_fastest is not None:       # predicted and measured, the fastest plan is over the budget
        fastest = min(tried, key=lambda t: t[1])
        raise InfeasibleBudgetError(f"{below_fastest} (measured here: {fastest[1]:.4g} ms)", below_fastest.fastest_ms,
                                    below_fastest.fastest_choice)
    return verified(*min(tried, key=lambda t: t[1]))
