"""The local moves of the greedy allocator (Chen, Wang, Cheng, ICCV 2021): change one group's
option at a time, judged on the plan's true total latency (interactions included).

:func:`hwq.alloc.solve.solve_greedy` runs both passes from the most accurate plan; the exact
solver runs them from the rounded LP solution to get a good first plan.
"""

from __future__ import annotations

import numpy as np

from hwq.alloc.problem import Problem


class GreedyState:
    """A plan plus, for every group and option, how the plan's latency, loss and weight would
    change if that group alone switched to that option (refreshed only where a move changes them:
    the moved group and its interaction neighbours).

    Args:
        problem: the allocation problem.
        budget: latency budget in ms; ``tolerance``: how far over it (and the weight bound) still
            counts as meeting it.
        max_w: weight bound in bytes, or None.
    """

    def __init__(self, problem: Problem, budget: float, max_w, tolerance):
        self.p, self.budget, self.max_w, self.tolerance = problem, budget, max_w, tolerance
        n = max(len(g.options) for g in problem.groups)
        self.valid = np.array([[i < len(g.options) for i in range(n)] for g in problem.groups])

        def pad(rows, fill):
            return np.array([list(r) + [fill] * (n - len(r)) for r in rows])

        self.lat = pad([g.latency_ms for g in problem.groups], np.inf)
        self.loss = pad([g.loss for g in problem.groups], np.inf)
        self.w = pad([g.weight_bytes or (0.0,) * len(g.options) for g in problem.groups], 0.0)
        self.tables = [np.asarray(t.latency_ms) for t in problem.interactions]
        self.incident = [[] for _ in problem.groups]      # group -> [(interaction, group is its a)]
        for k, t in enumerate(problem.interactions):
            self.incident[t.a].append((k, True))
            self.incident[t.b].append((k, False))
        # below this a loss change is float noise, not a gain (keeps the second pass from cycling)
        self.loss_eps = 1e-12 * max(1.0, float(np.sum(np.ptp(np.where(self.valid, self.loss, 0.0), axis=1))))

    def most_accurate(self) -> list:
        """Each group's least-loss option, ties to its faster own latency."""
        return [int(np.lexsort((lat, loss))[0]) for lat, loss in zip(self.lat, self.loss)]

    def reset(self, choice) -> None:
        """Start from ``choice``."""
        self.choice = np.array(choice, dtype=np.int64)
        self.d_lat, self.d_loss, self.d_w = (np.zeros(self.valid.shape) for _ in range(3))
        for g in range(len(self.choice)):
            self._refresh(g)
        self._resync()

    def _resync(self) -> None:
        # running totals drift by rounding; recompute them exactly from the problem
        self.total_lat = self.p.latency(self.choice)
        self.total_w = self.p.weight_bytes(self.choice) or 0.0

    def _refresh(self, g: int) -> None:
        c = self.choice
        n = len(self.p.groups[g].options)
        d = self.lat[g] - self.lat[g, c[g]]
        for k, g_is_a in self.incident[g]:
            t, inter = self.tables[k], self.p.interactions[k]
            row = t[:, c[inter.b]] if g_is_a else t[c[inter.a], :]
            d[:n] += row - row[c[g]]
        self.d_lat[g] = np.where(self.valid[g], d, np.inf)
        self.d_loss[g] = self.loss[g] - self.loss[g, c[g]]
        self.d_w[g] = self.w[g] - self.w[g, c[g]]

    def _move(self, g: int, i: int) -> None:
        self.total_lat += self.d_lat[g, i]
        self.total_w += self.d_w[g, i]
        self.choice[g] = i
        inter = self.p.interactions
        for h in {g, *(inter[k].b if g_is_a else inter[k].a for k, g_is_a in self.incident[g])}:
            self._refresh(h)

    def _violation(self, lat, w):
        """How far over the bounds, each relative to its bound (0 when within)."""
        v = np.maximum(lat - self.budget, 0.0) / max(self.budget, 1e-300)
        if self.max_w is not None:
            v = v + np.maximum(w - self.max_w, 0.0) / self.max_w
        return v

    def feasible(self) -> bool:
        return self.total_lat <= self.budget + self.tolerance(self.budget) and \
            (self.max_w is None or self.total_w <= self.max_w + self.tolerance(self.max_w))

    def downgrade_until_feasible(self) -> bool:
        """First pass: apply the change with the smallest loss increase per unit saved on the
        violated bounds, until they hold. False when stuck (no single change gets closer)."""
        while True:
            if self.feasible():
                self._resync()
                if self.feasible():
                    return True
            lat, w = self.total_lat, self.total_w
            v = self._violation(lat, w)
            # saving counts the bounds now violated, each relative to its bound
            saving = np.zeros(self.valid.shape)
            if lat > self.budget:
                saving -= np.where(self.valid, self.d_lat, 0.0) / max(self.budget, 1e-300)
            if self.max_w is not None and w > self.max_w:
                saving -= self.d_w / self.max_w
            ok = self.valid & (saving > 0) & (self._violation(lat + self.d_lat, w + self.d_w) < v * (1 - 1e-12))
            if not ok.any():
                return False
            score = np.where(ok, self.d_loss / np.where(ok, saving, 1.0), np.inf)
            self._move(*np.unravel_index(np.argmin(score), score.shape))

    def upgrade_while_feasible(self) -> None:
        """Second pass: apply the change that stays within the bounds and gains the most loss per
        ms spent (one that also saves latency first), until no change reduces the loss."""
        lat_cap = self.budget + self.tolerance(self.budget)
        w_cap = self.max_w + self.tolerance(self.max_w) if self.max_w is not None else np.inf
        while True:
            gain = -self.d_loss
            ok = self.valid & (gain > self.loss_eps) & (self.total_lat + self.d_lat <= lat_cap) \
                & (self.total_w + self.d_w <= w_cap)
            if not ok.any():
                self._resync()
                return
            free = ok & (self.d_lat <= 0)
            if free.any():
                score = np.where(free, gain, -np.inf)
            else:
                score = np.where(ok, gain / np.where(ok, self.d_lat, 1.0), -np.inf)
            self._move(*np.unravel_index(np.argmax(score), score.shape))
