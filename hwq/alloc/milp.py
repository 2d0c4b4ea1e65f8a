"""The allocation problem as one mixed-integer program on HiGHS (``scipy.optimize.milp``), built
once per problem and re-solved with different bounds or objectives (a budget sweep changes only the
latency row's right-hand side).

Variables: ``x[g, i]`` binary, group ``g`` picks option ``i``, with ``sum_i x[g, i] = 1``. An
interaction between groups ``a`` and ``b`` gets a continuous ``y[i, j] >= 0`` per table entry with

    sum_j y[i, j] = x[a, i]   and   sum_i y[i, j] = x[b, j]

For binary ``x`` the only solution puts ``y = 1`` on the picked pair and 0 elsewhere, so
``sum T[i, j] y[i, j]`` is exactly the interaction's latency, for entries of either sign (the
usual ``y >= x_a + x_b - 1`` linearisation is exact only when minimisation pushes ``y`` down, i.e.
for non-negative entries), and its LP relaxation is the tighter local-marginal polytope.

Speed: on the whole model HiGHS spends most of its time at the root, looking for good plans and
restarting as it fixes variables. So the solver first finds a good plan itself (the caller's
``incumbent``: the greedy's passes from the rounded LP solution and from the best Lagrangian plan),
fixes every option that a Lagrangian bound (:mod:`hwq.alloc.lagrange`) proves cannot be in a better
plan, and hands HiGHS only the rest: on 200 groups of 6 options about 80% of the options go.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import csr_array, vstack

from hwq.alloc.lagrange import ForestBound
from hwq.alloc.problem import Problem


class KnapsackMilp:
    """The constraint matrix and objectives of a :class:`Problem`, built once.

    Equality rows: one per group (``= 1``) and the interaction marginals (``= 0``). Inequality
    rows: latency (groups' own plus interaction terms) and, when every group states its weight
    bytes, weight. Rows and objectives are scaled to O(1) because HiGHS's tolerances (feasibility
    1e-7, objective gap 1e-6) are absolute, and latencies in ms or losses of 1e-4 would blur them.
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        sizes = np.array([len(g.options) for g in problem.groups])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.n_x = nx = int(self.offsets[-1])
        self.y_offsets = nx + np.concatenate([[0], np.cumsum([len(t.latency_ms) * len(t.latency_ms[0])
                                                               for t in problem.interactions])]).astype(int)
        n_vars = int(self.y_offsets[-1])

        group_of = np.repeat(np.arange(len(sizes)), sizes)
        rows, cols, vals = [group_of], [np.arange(nx)], [np.ones(nx)]
        r = len(sizes)
        for t, col0 in zip(problem.interactions, self.y_offsets):
            na, nb = len(t.latency_ms), len(t.latency_ms[0])
            y = col0 + np.arange(na * nb).reshape(na, nb)
            # sum_j y[i, j] - x[a, i] = 0, then sum_i y[i, j] - x[b, j] = 0
            rows += [r + np.repeat(np.arange(na), nb), r + np.arange(na),
                     r + na + np.tile(np.arange(nb), na), r + na + np.arange(nb)]
            cols += [y.ravel(), self.offsets[t.a] + np.arange(na), y.ravel(), self.offsets[t.b] + np.arange(nb)]
            vals += [np.ones(na * nb), -np.ones(na), np.ones(na * nb), -np.ones(nb)]
            r += na + nb
        self.a_eq = csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(r, n_vars))
        self.b_eq = np.zeros(r)
        self.b_eq[:len(sizes)] = 1.0

        lat = np.concatenate([np.concatenate([g.latency_ms for g in problem.groups])]
                             + [np.ravel(t.latency_ms) for t in problem.interactions])
        self.lat_scale = float(np.max(np.abs(lat))) or 1.0
        self.lat_row = csr_array(lat[None, :] / self.lat_scale)
        self.w_row = None
        if problem.has_weights:
            w = np.concatenate([np.concatenate([g.weight_bytes for g in problem.groups]), np.zeros(n_vars - nx)])
            self.w_scale = float(np.max(w)) or 1.0
            self.w_row = csr_array(w[None, :] / self.w_scale)

        # a group's least loss is a constant every plan pays: subtract it, so the objective is >= 0
        loss = np.concatenate([np.asarray(g.loss) - min(g.loss) for g in problem.groups])
        self.objectives = {"loss": np.concatenate([loss / (float(np.max(loss)) or 1.0), np.zeros(n_vars - nx)]),
                           "latency": lat / self.lat_scale}
        self.integrality = np.concatenate([np.ones(nx), np.zeros(n_vars - nx)])
        self._pad_index = (group_of, np.arange(nx) - self.offsets[group_of])
        self._pad_shape = (len(sizes), int(sizes.max()))
        self.inter_a = np.array([t.a for t in problem.interactions], dtype=int)
        self.inter_b = np.array([t.b for t in problem.interactions], dtype=int)
        self.inter_nb = np.array([len(t.latency_ms[0]) for t in problem.interactions], dtype=int)
        # the x columns of each y column's two options
        self.y_xa = np.concatenate([np.repeat(self.offsets[t.a] + np.arange(len(t.latency_ms)), len(t.latency_ms[0]))
                                    for t in problem.interactions] or [np.zeros(0, int)])
        self.y_xb = np.concatenate([np.tile(self.offsets[t.b] + np.arange(len(t.latency_ms[0])), len(t.latency_ms))
                                    for t in problem.interactions] or [np.zeros(0, int)])
        self.bound = ForestBound(problem, self._pad_index, self.y_offsets[:-1], lat)

    def solve(self, objective: str, latency_rhs: float, max_weight_bytes: float | None,
              incumbent=None) -> tuple | None:
        """Minimise ``objective`` (``"loss"`` or ``"latency"``) subject to the groups' own plus
        interaction latency ``<= latency_rhs`` (the budget less the base; ``inf`` for none) and
        the weight bound.

        Args:
            incumbent: optional ``f(list of choices) -> best feasible plan made from them, or
                None``; it gets the rounded LP solution and the best feasible Lagrangian plan. The
                plan it returns lets every option that a lower bound proves cannot be in a better
                plan be fixed before the MILP starts (the result stays exact).

        Returns:
            The choice (each group's largest ``x``), or None if no plan is feasible.
        """
        rows = {}
        if math.isfinite(latency_rhs):
            rows["latency"] = (self.lat_row, latency_rhs / self.lat_scale)
        if max_weight_bytes is not None:
            rows["weight"] = (self.w_row, max_weight_bytes / self.w_scale)
        a_ub = vstack([r for r, _ in rows.values()], format="csr") if rows else None
        b_ub = np.array([b for _, b in rows.values()])
        c = self.objectives[objective]
        lb, ub = np.zeros(c.size), np.ones(c.size)
        upper = None
        if incumbent is not None:
            lp = linprog(c, A_ub=a_ub, b_ub=b_ub if rows else None, A_eq=self.a_eq, b_eq=self.b_eq,
                         bounds=(0, 1), method="highs")
            if lp.status == 2:
                return None
            if lp.status == 0:
                duals = dict(zip(rows, -np.minimum(lp.ineqlin.marginals, 0.0))) if rows else {}
                upper = self._fix(c, rows, duals, self._round(lp.x), incumbent, lb, ub)
        if objective == "loss" and upper is not None and upper > 0:
            # HiGHS's objective gap is absolute (1e-6): scaled by the largest option's loss, a plan
            # whose loss is 1e-4 of it was "optimal" within 1 % (seen on MobileNetV2, where a 4-bit
            # option costs 10^4 times the fp32 mixes at stake). Scaled by a feasible plan's own
            # objective, the optimum is in (0, 1] and the gap is relative to it.
            c = c / upper
        x = self._milp(c, a_ub, b_ub, lb, ub)
        if x is None and (lb.any() or not ub.all()):
            # fixing trusts the incumbent's feasibility; if HiGHS disagrees by a tolerance, re-solve whole
            x = self._milp(c, a_ub, b_ub, np.zeros(c.size), np.ones(c.size))
        return None if x is None else self._round(x)

    def _fix(self, c, rows: dict, duals: dict, rounded: tuple, incumbent, lb, ub) -> float | None:
        """Fix every option whose Lagrangian lower bound (:mod:`hwq.alloc.lagrange`), forced in or
        out, exceeds the incumbent's objective: no better plan has it that way. The multipliers
        sweep around the LP's latency dual (the bound is valid for any of them), and the plans
        that minimise the Lagrangian are candidates for the incumbent. Returns the incumbent's
        objective (None without one)."""
        lam0 = duals.get("latency", 0.0)
        # wide for the bound, fine just above lam0 where the Lagrangian plans turn feasible
        lams = lam0 * np.concatenate([[1.0], np.geomspace(0.25, 4.0, 32), 1.0 + np.geomspace(1e-6, 0.2, 16)]) \
            if lam0 > 0 else np.zeros(1)
        cols = np.repeat(c[None, :], lams.size, axis=0)
        const = np.zeros(lams.size)
        for name, lam in (("latency", lams), ("weight", duals.get("weight", 0.0))):
            if name in rows:
                row, rhs = rows[name]
                cols += np.multiply.outer(lam, row.toarray()[0]) if np.ndim(lam) else lam * row.toarray()
                const -= lam * rhs
        if_one, if_zero, plans = self.bound.min_marginals(cols, const)
        vectors = self.plan_vectors(plans)
        ok = np.ones(len(plans), dtype=bool)
        for row, rhs in rows.values():
            ok &= (vectors @ row.toarray()[0]) <= rhs + 1e-9 * max(1.0, abs(rhs))
        starts = [rounded] + ([tuple(int(i) for i in plans[np.flatnonzero(ok)[np.argmin((vectors @ c)[ok])]])]
                              if ok.any() else [])
        plan = incumbent(starts)
        if plan is None:
            return None
        upper = float(c @ self.plan_vectors(np.array([plan]))[0])
        margin = 1e-7 + 1e-9 * abs(upper)
        ub[:self.n_x][if_one[self._pad_index] > upper + margin] = 0.0
        lb[:self.n_x][if_zero[self._pad_index] > upper + margin] = 1.0
        return upper

    def plan_vectors(self, choices: np.ndarray) -> np.ndarray:
        """The variable vectors (``x`` one-hot per group, ``y`` one-hot per interaction) of plans
        given as a ``(plans, groups)`` array of option indices."""
        choices = np.asarray(choices)
        v = np.zeros((len(choices), self.a_eq.shape[1]))
        rows = np.arange(len(choices))[:, None]
        v[rows, self.offsets[:-1] + choices] = 1.0
        if self.problem.interactions:
            v[rows, self.y_offsets[:-1] + choices[:, self.inter_a] * self.inter_nb + choices[:, self.inter_b]] = 1.0
        return v

    def _round(self, x) -> tuple:
        padded = np.full(self._pad_shape, -1.0)
        padded[self._pad_index] = x[:self.n_x]
        return tuple(int(i) for i in np.argmax(padded, axis=1))

    def _milp(self, c, a_ub, b_ub, lb, ub) -> np.ndarray | None:
        """HiGHS on the columns not fixed to 0 (an interaction's ``y[i, j]`` is 0 when either of
        its options is): after fixing, a far smaller model than the whole one."""
        ub = ub.copy()
        ub[self.n_x:] = np.minimum(ub[self.y_xa], ub[self.y_xb])
        keep = ub > 0
        constraints = [LinearConstraint(self.a_eq[:, keep], self.b_eq, self.b_eq)]
        if b_ub.size:
            constraints.append(LinearConstraint(a_ub[:, keep], -np.inf, b_ub))
        res = milp(c[keep], integrality=self.integrality[keep], bounds=Bounds(lb[keep], ub[keep]),
                   constraints=constraints, options={"mip_rel_gap": 0.0})
        if res.status == 2:
            return None
        if res.x is None:
            raise RuntimeError(f"HiGHS stopped without a plan: {res.message}")
        x = np.zeros(c.size)
        x[keep] = res.x
        return x
