"""Per-layer bit allocation under a latency budget: a multiple-choice knapsack with pairwise terms.

Pick one option per group to minimise the summed loss subject to ``latency <= budget`` (and
optionally ``weight bytes <= max_weight_bytes``), where latency includes a base and pairwise
interaction terms (``hwq.alloc.problem``). Solvers:

- :func:`solve_exact`: a mixed-integer program on HiGHS (``scipy.optimize.milp``), exact, with
  interactions linearised exactly;
- :func:`solve_dp`: a dynamic program over latency in whole steps of ``resolution_ms`` (no
  interactions), a cross-check: exact when latencies are whole steps, conservative otherwise;
- :func:`solve_greedy`: Chen, Wang, Cheng (ICCV 2021): downgrade the group with the smallest loss
  increase per ms saved until the budget holds, then re-spend what is left; then a local search
  (:mod:`hwq.alloc.greedy`) that takes it to within 0.05 % of the optimum on the solver benchmark;
- :func:`pareto_front`: the exact latency/loss trade-off over a sweep of budgets.

A budget below the fastest plan raises :class:`hwq.errors.InfeasibleBudgetError`, which states the
fastest achievable latency and the plan that reaches it. Pure: numpy and scipy, no torch, no tvm.
"""

from __future__ import annotations

import math
import time

import numpy as np

from hwq.alloc.greedy import GreedyState
from hwq.alloc.milp import KnapsackMilp
from hwq.alloc.problem import Group, Interaction, Problem, Solution
from hwq.errors import ConfigError, InfeasibleBudgetError

__all__ = ["Group", "Interaction", "Problem", "Solution", "solve_exact", "solve_dp", "solve_greedy",
           "pareto_front", "feasibility_tolerance"]

# Rounding each group up loses up to one step per group, so the default resolution splits the
# budget into 1000 steps per group (at most 0.1 % of it lost) within 50 M table cells (50 MB):
# beyond 223 groups the steps are fewer and the loss grows (1000 groups: up to 2 %).
_DP_STEPS_PER_GROUP = 1000
_DP_DEFAULT_CELLS = 50_000_000
_DP_MAX_CELLS = 400_000_000      # groups x steps of the back-pointer table, one byte each


def feasibility_tolerance(bound: float) -> float:
    """How far over a bound a plan may be and still count as meeting it: float sums taken in a
    different order (the solver's, the problem's) differ in the last bits."""
    return 1e-9 * max(1.0, abs(bound))


def solve_exact(problem: Problem, budget_ms: float, max_weight_bytes: float | None = None) -> Solution:
    """The plan of least loss within the latency budget (and weight bound), exactly.

    Args:
        problem: the allocation problem.
        budget_ms: latency budget in ms (base and interaction terms included), finite and > 0.
        max_weight_bytes: optional bound on the plan's weight bytes (every group must state them).

    Returns:
        The optimal :class:`Solution` (``solver="exact"``); its totals are recomputed from the
        problem, not read from the solver.

    Raises:
        InfeasibleBudgetError: no plan meets the budget or the weight bound.
    """
    t0 = time.perf_counter()
    _check_bounds(problem, budget_ms, max_weight_bytes)
    return _exact(problem, KnapsackMilp(problem), budget_ms, max_weight_bytes, t0)


def _exact(problem, milp: KnapsackMilp, budget, max_w, t0) -> Solution:
    tol = feasibility_tolerance(budget)
    rhs, w_rhs = budget - problem.base_latency_ms, max_w
    # HiGHS meets rows to its own feasibility tolerance (~1e-7) and rounds binaries to 1e-6, so
    # the rounded plan can overshoot by a hair: tighten the bound by the overshoot and solve again
    for _ in range(4):
        repair = _greedy_repair(problem, rhs + problem.base_latency_ms, w_rhs)
        choice = milp.solve("loss", rhs, w_rhs, incumbent=repair)
        if choice is None:
            break
        over = problem.latency(choice) - budget
        w_over = 0.0 if max_w is None else problem.weight_bytes(choice) - max_w
        if over <= tol and (max_w is None or w_over <= feasibility_tolerance(max_w)):
            return Solution.of(problem, choice, "exact", time.perf_counter() - t0)
        rhs -= max(over, 0.0) + tol
        if max_w is not None:
            w_rhs -= max(w_over, 0.0) + feasibility_tolerance(max_w)
    # infeasible, or within tolerance of the fastest plan
    return Solution.of(problem, _fastest_within(problem, milp, budget, max_w), "exact",
                       time.perf_counter() - t0)


def solve_dp(problem: Problem, budget_ms: float, resolution_ms: float | None = None) -> Solution:
    """The plan of least loss within the budget, by dynamic programming over latency steps.

    Latencies are rounded up to whole steps of ``resolution_ms`` and the budget down, so a plan it
    returns never exceeds the budget; it is exact when every latency and the budget minus the base
    are whole steps, and may miss the optimum by less than one step per group otherwise.

    Args:
        problem: an allocation problem without interactions (use :func:`solve_exact` for those).
        budget_ms: latency budget in ms, finite and > 0.
        resolution_ms: the step; default the budget less the base in ``min(1000 * groups,
            5e7 / groups)`` steps (the rounding costs at most 0.1 % of the budget up to 223
            groups, 2 % at 1000).

    Returns:
        The :class:`Solution` (``solver="dp"``).

    Raises:
        InfeasibleBudgetError: no plan meets the budget.
        ConfigError: the problem has interactions, the resolution is not a positive number or is
            so fine the table would not fit, or it is so coarse that no rounded plan fits although
            the fastest plan does.
    """
    t0 = time.perf_counter()
    _check_bounds(problem, budget_ms, None)
    if problem.interactions:
        raise ConfigError(f"solve_dp handles problems without interactions; this one has "
                          f"{len(problem.interactions)} (use solve_exact)")
    cap = budget_ms - problem.base_latency_ms
    n_groups = len(problem.groups)
    default_steps = min(_DP_STEPS_PER_GROUP * n_groups, _DP_DEFAULT_CELLS // n_groups)
    step = resolution_ms if resolution_ms is not None else (cap if cap > 0 else budget_ms) / default_steps
    if isinstance(step, bool) or not isinstance(step, (int, float, np.floating)) \
            or not math.isfinite(step) or step <= 0:
        raise ConfigError(f"resolution_ms must be a finite number > 0, got {resolution_ms!r}")
    # the 1e-9 (relative): 0.3 / 0.1 is 2.9999999999999996, and a whole step must stay whole
    n_steps = math.floor(cap / step * (1 + 1e-9) + 1e-9)
    if n_steps < 0:
        _fastest_within(problem, KnapsackMilp(problem), budget_ms, None)   # raises
        n_steps = 0                                                        # base == budget: tolerance
    if n_groups * (n_steps + 1) > _DP_MAX_CELLS:
        raise ConfigError(f"resolution_ms={step!r} makes {n_steps + 1} steps for {n_groups} "
                          f"groups, more than {_DP_MAX_CELLS} cells; pass a coarser resolution_ms")
    units = [np.ceil(np.asarray(g.latency_ms) / step * (1 - 1e-9) - 1e-9).astype(np.int64) for g in problem.groups]
    best = np.zeros(n_steps + 1)          # best[b]: least loss of the groups so far within b steps
    index = np.int8 if max(len(g.options) for g in problem.groups) < 127 else np.int16
    back = np.empty((n_groups, n_steps + 1), dtype=index)
    for gi, (g, k) in enumerate(zip(problem.groups, units)):
        new = np.full(n_steps + 1, np.inf)
        arg = np.full(n_steps + 1, -1, dtype=index)
        for i, (ki, li) in enumerate(zip(k, g.loss)):
            if ki > n_steps:
                continue
            cand = np.full(n_steps + 1, np.inf)
            cand[ki:] = best[:n_steps + 1 - ki] + li
            better = cand < new
            new[better], arg[better] = cand[better], i
        best, back[gi] = new, arg
    if not np.isfinite(best[n_steps]):
        fastest = _fastest_within(problem, KnapsackMilp(problem), budget_ms, None)   # raises if none
        raise ConfigError(f"no plan fits budget {budget_ms!r} ms with latencies rounded up to whole "
                          f"steps of resolution_ms={step!r}, although the fastest plan takes "
                          f"{problem.latency(fastest):.6g} ms; pass a finer resolution_ms or use solve_exact")
    choice, b = [0] * len(problem.groups), n_steps
    for gi in range(len(problem.groups) - 1, -1, -1):
        choice[gi] = int(back[gi, b])
        b -= int(units[gi][choice[gi]])
    return Solution.of(problem, choice, "dp", time.perf_counter() - t0)


def pareto_front(problem: Problem, n_budgets: int = 100, max_weight_bytes: float | None = None,
                 solver: str = "exact") -> list:
    """The latency/loss trade-off: solutions for ``n_budgets`` budgets evenly spaced from the
    fastest plan's latency to the most accurate plan's, deduplicated, sorted by latency, with
    dominated points removed (along the result latency goes up and loss goes down).

    Args:
        problem: the allocation problem.
        n_budgets: how many budgets to solve, an int >= 1.
        max_weight_bytes: optional weight bound every point meets.
        solver: ``"exact"`` (one constraint matrix for every budget), ``"greedy"``, or ``"dp"``
            (no interactions, no weight bound; budgets so close to the fastest plan that no plan
            fits once latencies are rounded up to whole steps are skipped).

    Returns:
        A list of :class:`Solution`, by increasing latency.
    """
    if solver not in ("exact", "greedy", "dp"):
        raise ConfigError(f"solver {solver!r} is not known; valid: 'exact', 'greedy', 'dp'")
    if isinstance(n_budgets, bool) or not isinstance(n_budgets, (int, np.integer)) or n_budgets < 1:
        raise ConfigError(f"n_budgets must be an int >= 1, got {n_budgets!r}")
    if max_weight_bytes is not None:
        if solver == "dp":
            raise ConfigError("solver 'dp' has no weight bound; use 'exact' or 'greedy' with max_weight_bytes")
        _check_bounds(problem, 1.0, max_weight_bytes)
    milp = KnapsackMilp(problem)
    lo = problem.latency(_fastest_within(problem, milp, math.inf, max_weight_bytes))
    hi = max(lo, problem.latency(milp.solve("loss", math.inf, max_weight_bytes)))
    points, last = {}, None
    # from the largest budget down: the plan found at budget b is optimal for every budget from
    # its own latency up to b, so the exact sweep skips those
    for budget in np.linspace(lo, hi, int(n_budgets))[::-1]:
        budget = float(max(budget, lo, 1e-12))
        if solver == "exact":
            if last is not None and last.latency_ms <= budget:
                continue
            last = _exact(problem, milp, budget, max_weight_bytes, time.perf_counter())
        elif solver == "greedy":
            last = solve_greedy(problem, budget, max_weight_bytes)
        else:
            try:
                last = solve_dp(problem, budget)
            except InfeasibleBudgetError:
                raise
            except ConfigError:
                continue      # near the fastest plan, latencies rounded up to whole steps fit no plan
        points.setdefault(last.choice, last)
    front = []
    for s in sorted(points.values(), key=lambda s: (s.latency_ms, s.loss)):
        if not front or s.loss < front[-1].loss - feasibility_tolerance(front[-1].loss):
            front.append(s)
    return front


# --- the greedy -----------------------------------------------------------------------------------


def solve_greedy(problem: Problem, budget_ms: float, max_weight_bytes: float | None = None) -> Solution:
    """The greedy of Chen, Wang, Cheng (ICCV 2021) and a local search: fast, possibly suboptimal,
    always feasible.

    Starts from the most accurate option per group and repeatedly applies the change with the
    smallest loss increase per ms saved (the true total latency, interactions included; a change is
    one group's option or two linked groups' options together) until the budget and bound hold;
    then re-spends leftover budget on the upgrades that buy the most loss per ms. If no change gets
    closer to the budget (interactions or the weight bound can trap it) it restarts from the exact
    fastest plan. Then :meth:`hwq.alloc.greedy.GreedyState.improve` makes larger moves that lower
    the loss (a small exact DP over the moves a Lagrangian bound leaves open; one group forced and
    the rest repaired) until none does. On the solver benchmark (``benchmarks/solver_bench.py``:
    synthetic 50-1000 groups, MobileNetV2-sized, the allocation study's knapsacks) its worst gap to
    :func:`solve_exact` is 0.05 %, at a median 3-10x faster.

    Args:
        problem: the allocation problem.
        budget_ms: latency budget in ms, finite and > 0.
        max_weight_bytes: optional bound on the plan's weight bytes.

    Returns:
        A feasible :class:`Solution` (``solver="greedy"``, or ``"greedy+fastest"`` after a restart).

    Raises:
        InfeasibleBudgetError: no plan meets the budget or the bound.
    """
    t0 = time.perf_counter()
    _check_bounds(problem, budget_ms, max_weight_bytes)
    state = GreedyState(problem, budget_ms, max_weight_bytes, feasibility_tolerance)
    state.reset(state.most_accurate())
    state.downgrade_along_hulls()
    name = "greedy"
    if not state.downgrade_until_feasible():
        name = "greedy+fastest"
        state.reset(_fastest_within(problem, KnapsackMilp(problem), budget_ms, max_weight_bytes))
    state.improve()
    return Solution.of(problem, tuple(state.choice), name, time.perf_counter() - t0)


def _greedy_repair(problem: Problem, budget: float, max_w):
    """The incumbent for the exact solver: the greedy's two passes from each given plan (the
    rounded LP solution, the best Lagrangian plan: each a step or two from the optimum); the
    best plan they reach, or None if they make none feasible."""
    def repair(starts):
        state, best = GreedyState(problem, budget, max_w, feasibility_tolerance), None
        for choice in starts:
            state.reset(choice)
            if state.downgrade_until_feasible():
                state.upgrade_while_feasible()
                plan = tuple(int(c) for c in state.choice)
                if best is None or problem.loss(plan) < problem.loss(best):
                    best = plan
        return best
    return repair


# --- bounds and the fastest plan ------------------------------------------------------------------


def _check_bounds(problem: Problem, budget_ms, max_weight_bytes) -> None:
    if not isinstance(problem, Problem):
        raise ConfigError(f"problem must be a hwq.alloc.problem.Problem, got {type(problem).__name__}")
    for name, v in (("budget_ms", budget_ms), ("max_weight_bytes", max_weight_bytes)):
        if name == "max_weight_bytes" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
    if max_weight_bytes is not None and not problem.has_weights:
        missing = [g.name for g in problem.groups if g.weight_bytes is None]
        raise ConfigError(f"max_weight_bytes needs weight_bytes on every group; missing on {missing}")


def _fastest_within(problem: Problem, milp: KnapsackMilp, budget: float, max_w) -> tuple:
    """The fastest plan (within the weight bound), if it meets ``budget``; else raise
    InfeasibleBudgetError stating it (or the lightest plan, if the weight bound is what fails)."""
    if max_w is not None:
        lightest = tuple(int(np.lexsort((g.latency_ms, g.weight_bytes))[0]) for g in problem.groups)
        lightest_bytes = problem.weight_bytes(lightest)
        if lightest_bytes > max_w + feasibility_tolerance(max_w):
            raise InfeasibleBudgetError(
                f"max_weight_bytes {max_w!r} is below the lightest plan this target allows, "
                f"{lightest_bytes:.10g} bytes ({problem.describe(lightest)})",
                lightest_bytes=lightest_bytes, lightest_choice=problem.option_names(lightest))

    def fits(starts):
        ok = [c for c in starts if max_w is None or problem.weight_bytes(c) <= max_w]
        return min(ok, key=problem.latency) if ok else None

    fastest = milp.solve("latency", math.inf, max_w, incumbent=fits)
    if fastest is None:
        raise RuntimeError(f"HiGHS found no plan within max_weight_bytes={max_w!r} although the "
                           f"lightest plan meets it")
    fastest_ms = problem.latency(fastest)
    if fastest_ms > budget + feasibility_tolerance(budget):
        digits = 3
        while f"{budget:.{digits}f}" == f"{fastest_ms:.{digits}f}" and digits < 12:
            digits += 1   # show enough digits to tell the two apart
        within = "" if max_w is None else f" within max_weight_bytes={max_w!r}"
        raise InfeasibleBudgetError(
            f"budget {budget:.{digits}f} ms is below the fastest plan this target allows{within}, "
            f"{fastest_ms:.{digits}f} ms ({problem.describe(fastest)})",
            fastest_ms=fastest_ms, fastest_choice=problem.option_names(fastest))
    return fastest
