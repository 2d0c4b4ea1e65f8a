"""The greedy allocator (Chen, Wang, Cheng, ICCV 2021), its moves judged on the plan's true total
latency (interactions included), and a local search that improves the plan it reaches.

A move changes one group's option, or the options of two groups linked by an interaction together
(a producer and its consumer: switching either alone can add a conversion that switching both
saves, so neither single move looks worth making). The first pass applies the move with the least
loss per unit saved until the bounds hold, the second re-spends what is left on the moves that buy
the most loss per ms.

Both passes stop at the first plan no single move improves, which can be far from the optimum: the
last downgrade may overshoot the budget by a large group whose few ms would have paid for many
small downgrades elsewhere (13.9 % worse than the optimum on a ResNet-20 study instance, 23 % on a
50-group synthetic one). :meth:`GreedyState.improve` then alternates two larger moves, keeping one
only if it lowers the loss within the bounds, until neither does:

- *core*: find the loss-per-ms multiplier under which the plan is closest to Lagrangian-optimal;
  a move whose reduced cost under it exceeds the slack's worth (plus the plan's negative reduced
  costs) cannot be part of any better plan (on a problem without interactions); solve the few moves
  left exactly, by a Pareto-front DP in which linked groups count as one row with their joint
  latency. Without interactions and with at most ``_CORE_MOVES`` such moves, this step finds the
  optimum, so on such problems the search ends at an optimal plan.
- *exchange*: force one group to another option and let the two passes repair the rest around it,
  in the order of an LP bound on the gain (the other groups' convex hulls); this reaches what the
  core misses when interactions or a weight bound make the reduced costs a poor guide.

:func:`hwq.alloc.solve.solve_greedy` runs the passes and the search from the most accurate plan;
the exact solver runs the passes from the rounded LP solution to get a good first plan.
"""

from __future__ import annotations

import math

import numpy as np

from hwq.alloc.mckp import best_multiplier, curve_at, hull_curve, pareto_dp
from hwq.alloc.problem import Problem

# The first pass in bulk: each round makes the hull downgrades that cover this share of the excess
# latency, then re-reads the deltas (neighbours moved: interactions changed); below this many steps
# a round is not worth its hull, and the one-move-at-a-time pass finishes. On the solver benchmark's
# instances the two passes end at plans as good (the same worst gap) as without it, and the first
# pass is about 70x faster at 1000 groups.
_BULK_SHARE, _BULK_MIN_STEPS, _BULK_ROUNDS = 0.8, 16, 32
# The core step's size: at most this many moves (those of least reduced cost), a Pareto front of
# at most this many points, linked groups joined into one row up to this many option combinations;
# the DP then takes about a millisecond. Past these it is a heuristic (the exchange step remains).
_CORE_MOVES, _CORE_FRONT, _CORE_JOINT = 48, 2000, 64


class GreedyState:
    """A plan plus, for every move, how the plan's latency, loss and weight would change.

    The deltas live in flat arrays, single moves ``(group, option)`` first, then pair moves
    ``(pair, a option, b option)``; a move refreshes only those it changes (the moved group and its
    interaction neighbours, and the pairs that hold one of them).

    Args:
        problem: the allocation problem.
        budget: latency budget in ms; ``tolerance``: how far over it (and the weight bound) still
            counts as meeting it.
        max_w: weight bound in bytes, or None.
    """

    def __init__(self, problem: Problem, budget: float, max_w, tolerance):
        self.p, self.budget, self.max_w = problem, budget, max_w
        self.lat_cap = budget + tolerance(budget)
        self.w_cap = max_w + tolerance(max_w) if max_w is not None else np.inf
        n_groups, n = len(problem.groups), max(len(g.options) for g in problem.groups)
        self.valid = np.array([[i < len(g.options) for i in range(n)] for g in problem.groups])

        def pad(rows, fill):
            return np.array([list(r) + [fill] * (n - len(r)) for r in rows])

        self.lat = pad([g.latency_ms for g in problem.groups], np.inf)
        self.loss = pad([g.loss for g in problem.groups], np.inf)
        self.w = pad([g.weight_bytes or (0.0,) * len(g.options) for g in problem.groups], 0.0)
        # the interactions by linked pair of groups (a < b), their tables summed and laid out
        # (a option, b option), zero-padded: both the latency deltas and the pair moves read these
        linked = {}
        for t in problem.interactions:
            a, b = min(t.a, t.b), max(t.a, t.b)
            table = np.asarray(t.latency_ms) if t.a == a else np.asarray(t.latency_ms).T
            full = np.zeros((n, n))
            full[:table.shape[0], :table.shape[1]] = table
            linked[(a, b)] = linked.get((a, b), 0.0) + full
        keys = sorted(linked)
        self.pair_a = np.array([a for a, _ in keys], dtype=np.int64)
        self.pair_b = np.array([b for _, b in keys], dtype=np.int64)
        self.pair_t = np.array([linked[k] for k in keys]).reshape(len(keys), n, n)
        self.pair_valid = self.valid[self.pair_a][:, :, None] & self.valid[self.pair_b][:, None, :]
        self.pairs_of = [[] for _ in problem.groups]
        for q, (a, b) in enumerate(keys):
            self.pairs_of[a].append(q)
            self.pairs_of[b].append(q)
        # a move of group g changes the single deltas of g and its neighbours, and so the pair
        # deltas of every pair that holds one of them
        other = [[int(self.pair_b[q] if self.pair_a[q] == g else self.pair_a[q]) for q in self.pairs_of[g]]
                 for g in range(n_groups)]
        self.neighbours = [sorted({g, *other[g]}) for g in range(n_groups)]
        self.pairs_touched = [np.array(sorted({q for h in self.neighbours[g] for q in self.pairs_of[h]}),
                                       dtype=np.int64) for g in range(n_groups)]
        self.n_single = n_groups * n
        # below this a loss change is float noise, not a gain (keeps the second pass from cycling)
        self.loss_eps = 1e-12 * max(1.0, float(np.sum(np.ptp(np.where(self.valid, self.loss, 0.0), axis=1))))

    def most_accurate(self) -> list:
        """Each group's least-loss option, ties to its faster own latency."""
        return [int(np.lexsort((lat, loss))[0]) for lat, loss in zip(self.lat, self.loss)]

    def reset(self, choice) -> None:
        """Start from ``choice``."""
        self.choice = np.array(choice, dtype=np.int64)
        size = self.n_single + self.pair_t.size
        # every move's (latency, loss, weight) change, flat: first the single moves (group,
        # option), then the pair moves (pair, a option, b option); d_* and p_* are views
        self.m_lat, self.m_loss, self.m_w = np.zeros(size), np.zeros(size), np.zeros(size)
        self.m_ok = np.zeros(size, dtype=bool)
        self.m_ok[:self.n_single] = self.valid.ravel()
        self._views()
        self.freeze(None)
        self._refresh_all()

    def _views(self) -> None:
        k, shape = self.n_single, self.valid.shape
        self.d_lat, self.d_loss, self.d_w = (v[:k].reshape(shape) for v in (self.m_lat, self.m_loss, self.m_w))
        self.p_lat, self.p_loss, self.p_w, self.p_ok = (v[k:].reshape(self.pair_t.shape)
                                                        for v in (self.m_lat, self.m_loss, self.m_w, self.m_ok))

    def freeze(self, g) -> None:
        """Keep group ``g`` (None: no group) where it is: no move that changes it is made."""
        self.frozen = g
        self.movable = self.m_ok.copy()
        if g is not None:
            self.movable[:self.n_single].reshape(self.valid.shape)[g] = False
            self.movable[self.n_single:].reshape(self.pair_t.shape)[(self.pair_a == g) | (self.pair_b == g)] = False

    def _resync(self) -> None:
        # running totals drift by rounding; recompute them exactly (as Problem.latency does, but
        # without its per-entry checks: this runs after every pass)
        c, g = self.choice, np.arange(len(self.choice))
        self.total_lat = math.fsum(np.concatenate([[self.p.base_latency_ms], self.lat[g, c],
                                                   self.pair_t[np.arange(len(self.pair_a)), c[self.pair_a], c[self.pair_b]]]))
        self.total_w = math.fsum(self.w[g, c])

    def total_loss(self) -> float:
        """The plan's loss (summed exactly)."""
        return math.fsum(self.loss[np.arange(len(self.choice)), self.choice])

    def _refresh_all(self) -> None:
        """Every delta from the choice now (what :meth:`_refresh` does group by group, at once)."""
        c, g = self.choice, np.arange(len(self.choice))
        d = self.lat - self.lat[g, c][:, None]
        a, b, q = self.pair_a, self.pair_b, np.arange(len(self.pair_a))
        t_now = self.pair_t[q, c[a], c[b]][:, None]
        np.add.at(d, a, self.pair_t[q, :, c[b]] - t_now)
        np.add.at(d, b, self.pair_t[q, c[a], :] - t_now)
        self.d_lat[:] = np.where(self.valid, d, np.inf)
        self.d_loss[:] = self.loss - self.loss[g, c][:, None]
        self.d_w[:] = self.w - self.w[g, c][:, None]
        self._refresh_pairs(q)
        self._resync()

    def _refresh(self, g: int) -> None:
        c = self.choice
        d = self.lat[g] - self.lat[g, c[g]]
        for q in self.pairs_of[g]:
            t, a, b = self.pair_t[q], self.pair_a[q], self.pair_b[q]
            row = t[:, c[b]] if g == a else t[c[a], :]
            d += row - row[c[g]]
        self.d_lat[g] = np.where(self.valid[g], d, np.inf)
        self.d_loss[g] = self.loss[g] - self.loss[g, c[g]]
        self.d_w[g] = self.w[g] - self.w[g, c[g]]

    def _move(self, g: int, i: int) -> None:
        self.total_lat += self.d_lat[g, i]
        self.total_w += self.d_w[g, i]
        self.choice[g] = i
        for h in self.neighbours[g]:
            self._refresh(h)
        self._refresh_pairs(self.pairs_touched[g])

    def _refresh_pairs(self, q) -> None:
        """The deltas of pair moves ``q``. A pair move's latency is exact: the singles' deltas
        each count the pair's table at the other's current option, the joint move pays it at both
        new options."""
        if not len(q):
            return
        a, b = self.pair_a[q], self.pair_b[q]
        ca, cb, r = self.choice[a], self.choice[b], np.arange(len(q))
        t = self.pair_t[q]
        # d_lat[a, i] + d_lat[b, j] + T[i, j] - T[i, cb] - T[ca, j] + T[ca, cb]
        own_a = self.d_lat[a] - t[r, :, cb] + t[r, ca, cb][:, None]
        own_b = self.d_lat[b] - t[r, ca, :]
        self.p_lat[q] = t + own_a[:, :, None] + own_b[:, None, :]
        self.p_loss[q] = self.d_loss[a][:, :, None] + self.d_loss[b][:, None, :]
        self.p_w[q] = self.d_w[a][:, :, None] + self.d_w[b][:, None, :]
        ok = self.pair_valid[q]          # a copy: fancy indexing
        ok[r, ca, :] = False             # a pair move changes both groups
        ok[r, :, cb] = False
        self.p_ok[q] = ok
        if self.frozen is not None:
            ok &= ((a != self.frozen) & (b != self.frozen))[:, None, None]
        self.movable[self.n_single:].reshape(self.pair_t.shape)[q] = ok

    def _apply(self, m: int) -> None:
        """Make move ``m`` (an index into the flat ``m_*`` arrays)."""
        if m < self.n_single:
            self._move(*divmod(m, self.valid.shape[1]))
            return
        q, i, j = np.unravel_index(m - self.n_single, self.pair_t.shape)
        a, b = int(self.pair_a[q]), int(self.pair_b[q])
        self._move(a, int(i))
        self._move(b, int(j))

    def _violation(self, lat, w):
        """How far over the bounds, each relative to its bound (0 when within)."""
        v = np.maximum(lat - self.budget, 0.0) / max(self.budget, 1e-300)
        if self.max_w is not None:
            v = v + np.maximum(w - self.max_w, 0.0) / self.max_w
        return v

    def feasible(self) -> bool:
        """Whether the plan meets the budget and the weight bound (within tolerance)."""
        return self.total_lat <= self.lat_cap and self.total_w <= self.w_cap

    def downgrade_along_hulls(self) -> None:
        """Make most of the first pass's downgrades in a few rounds: each takes the steps along
        every group's lower convex hull of (latency saved, loss added), in the order of loss per
        ms saved (the order the first pass takes them in while no interaction changes them), that
        cover ``_BULK_SHARE`` of the excess latency, then re-reads the deltas. The first pass
        makes the last steps. Skipped under a weight bound (the hulls count latency only)."""
        n_groups, n = self.valid.shape
        rows = np.repeat(np.arange(n_groups), n)
        for _ in range(_BULK_ROUNDS):
            if self.max_w is not None or self.total_lat <= self.budget:
                return
            cum_x, _, moves = hull_curve(-self.d_lat.ravel(), self.d_loss.ravel(), self.movable[:self.n_single],
                                         rows, cheapest=True)
            take = moves[:max(int(np.searchsorted(cum_x, _BULK_SHARE * (self.total_lat - self.budget))) - 1, 0)]
            if len(take) < _BULK_MIN_STEPS:
                return
            self.choice[take // n] = take % n        # steps of a group come in order: its last one wins
            self._refresh_all()

    def downgrade_until_feasible(self) -> bool:
        """First pass: apply the move with the smallest loss increase per unit saved on the
        violated bounds, until they hold. False when stuck (no move gets closer)."""
        while True:
            if self.feasible():
                self._resync()
                if self.feasible():
                    return True
            lat, w = self.total_lat, self.total_w
            d_lat, d_loss, d_w, ok = self.m_lat, self.m_loss, self.m_w, self.movable
            v = self._violation(lat, w)
            # saving counts the bounds now violated, each relative to its bound
            saving = np.zeros(d_lat.shape)
            if lat > self.budget:
                saving -= np.where(ok, d_lat, 0.0) / max(self.budget, 1e-300)
            if self.max_w is not None and w > self.max_w:
                saving -= d_w / self.max_w
            ok = ok & (saving > 0) & (self._violation(lat + d_lat, w + d_w) < v * (1 - 1e-12))
            if not ok.any():
                return False
            score = np.where(ok, d_loss / np.where(ok, saving, 1.0), np.inf)
            self._apply(int(np.argmin(score)))

    def upgrade_while_feasible(self) -> None:
        """Second pass: apply the move that stays within the bounds and gains the most loss per
        ms spent (one that also saves latency first), until no move reduces the loss."""
        while True:
            d_lat, d_w = self.m_lat, self.m_w
            gain = -self.m_loss
            ok = self.movable & (gain > self.loss_eps) & (self.total_lat + d_lat <= self.lat_cap) \
                & (self.total_w + d_w <= self.w_cap)
            if not ok.any():
                self._resync()
                return
            free = ok & (d_lat <= 0)
            if free.any():
                score = np.where(free, gain, -np.inf)
            else:
                score = np.where(ok, gain / np.where(ok, d_lat, 1.0), -np.inf)
            self._apply(int(np.argmax(score)))

    # --- the local search -----------------------------------------------------------------------

    def improve(self) -> None:
        """Re-spend what is left, then make core and exchange moves that lower the loss, until
        none does (each kept move lowers it by more than float noise, so this ends)."""
        while True:
            self.upgrade_while_feasible()
            if not (self._core() or self._exchange()):
                return

    def _saved(self) -> tuple:
        return (self.choice.copy(), self.m_lat.copy(), self.m_loss.copy(), self.m_w.copy(), self.m_ok.copy(),
                self.total_lat, self.total_w)

    def _restore(self, saved) -> None:
        self.choice, self.m_lat, self.m_loss, self.m_w, self.m_ok = (v.copy() for v in saved[:5])
        self.total_lat, self.total_w = saved[5:]
        self._views()
        self.freeze(None)

    def _keep_if_better(self, before: float, saved, hold=None) -> bool:
        """After a large move: repair the bounds and re-spend (group ``hold`` stays where the move
        put it); keep the result if the loss went below ``before``, else go back to ``saved``."""
        self._resync()
        self.freeze(hold)
        if self.downgrade_until_feasible():
            self.upgrade_while_feasible()
            if self.total_loss() < before - self.loss_eps:
                self.freeze(None)
                return True
        self._restore(saved)
        return False

    def _core(self) -> bool:
        """The core move (module docstring); True if kept."""
        if self.max_w is not None:
            return False           # the DP bounds latency only
        slack = self.lat_cap - self.total_lat
        current = np.zeros(self.valid.shape, dtype=bool)
        current[np.arange(len(self.choice)), self.choice] = True
        can = self.valid & ~current
        d_lat = np.where(can, self.d_lat, 0.0)
        lam, neg = best_multiplier(d_lat[can], self.d_loss[can])
        if lam is None:
            return False
        # a better plan changes a set of groups whose reduced costs sum to less than lam * slack,
        # so none of its moves can cost more than that plus every negative reduced cost
        reduced = np.where(can, self.d_loss + lam * d_lat, np.inf).ravel()
        flat = np.flatnonzero(reduced < lam * slack + neg)
        if not len(flat):
            return False
        flat = flat[np.argsort(reduced[flat], kind="stable")[:_CORE_MOVES]]
        n = self.valid.shape[1]
        options = {int(g): [int(self.choice[g])] for g in np.unique(flat // n)}
        for m in flat:
            options[int(m // n)].append(int(m % n))
        rows = self._joint_rows(options)
        best = pareto_dp([r[1] for r in rows], [r[2] for r in rows], slack, _CORE_FRONT)
        if best is None or best[0] >= -self.loss_eps:
            return False
        before, saved = self.total_loss(), self._saved()
        for (members, _, _, combos), k in zip(rows, best[1]):
            for g, o in zip(members, combos[k]):
                if o != self.choice[g]:
                    self._move(g, int(o))
        return self._keep_if_better(before, saved)

    def _joint_rows(self, options: dict) -> list:
        """The rows of the core DP: each set of linked groups in ``options`` (``{group: option
        indices, its current one first}``) is one row over every combination of their options,
        with its exact latency change (a pair's table counted at both new options); a set with
        more than ``_CORE_JOINT`` combinations is split. Returns ``[(groups, latency changes, loss
        changes, combinations)]``, each row's combination of current options first."""
        root = {g: g for g in options}

        def find(g):
            while root[g] != g:
                g = root[g]
            return g

        for a, b in zip(self.pair_a.tolist(), self.pair_b.tolist()):
            if a in options and b in options:
                root[find(a)] = find(b)
        sets = {}
        for g in options:
            sets.setdefault(find(g), []).append(g)
        rows = []
        for members in sets.values():
            part = []
            for g in members:
                if part and np.prod([len(options[h]) for h in part]) * len(options[g]) > _CORE_JOINT:
                    rows.append(self._joint_row(part, options))
                    part = []
                part.append(g)
            rows.append(self._joint_row(part, options))
        return rows

    def _joint_row(self, members: list, options: dict) -> tuple:
        combos = np.array(np.meshgrid(*[options[g] for g in members], indexing="ij")).reshape(len(members), -1).T
        lat = sum(self.d_lat[g][combos[:, k]] for k, g in enumerate(members))
        loss = sum(self.d_loss[g][combos[:, k]] for k, g in enumerate(members))
        index = {g: k for k, g in enumerate(members)}
        for q, (a, b) in enumerate(zip(self.pair_a.tolist(), self.pair_b.tolist())):
            if a in index and b in index:
                t, ca, cb = self.pair_t[q], self.choice[a], self.choice[b]
                i, j = combos[:, index[a]], combos[:, index[b]]
                lat = lat + t[i, j] - t[i, cb] - t[ca, j] + t[ca, cb]
        return members, lat, loss, combos

    def _exchange(self) -> bool:
        """Try exchanges (module docstring) in the order of their bound on the gain; keep the
        first that lowers the loss. True if one was kept."""
        slack = self.lat_cap - self.total_lat
        k, n = self.n_single, self.valid.shape[1]
        d_lat, d_loss, ok = self.m_lat[:k], self.m_loss[:k], self.movable[:k]
        rows = np.repeat(np.arange(self.valid.shape[0]), n)
        cheapest = hull_curve(-d_lat, d_loss, ok & (d_lat < 0), rows, cheapest=True)
        dearest = hull_curve(d_lat, -d_loss, ok & (d_lat > 0), rows, cheapest=False)
        # an upgrade too dear to fit, repaired by downgrades elsewhere (at least the LP of those
        # downgrades costs), or a downgrade whose saving the upgrades re-spend (at most the LP)
        bound = np.full(k, -np.inf)
        up = ok & (d_loss < -self.loss_eps) & (d_lat > slack)
        bound[up] = -d_loss[up] - curve_at(*cheapest[:2], d_lat[up] - slack, beyond=np.inf)
        down = ok & (d_lat < 0) & (d_loss > self.loss_eps)
        bound[down] = curve_at(*dearest[:2], slack - d_lat[down]) - d_loss[down]
        order = np.argsort(-bound, kind="stable")
        before, saved = self.total_loss(), self._saved()
        for m in order[bound[order] > self.loss_eps]:
            g, i = divmod(int(m), n)
            self._move(g, i)
            if self._keep_if_better(before, saved, hold=g):
                return True
        return False
