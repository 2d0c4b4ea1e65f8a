"""Lower bounds on the allocation MILP for fixing options before it is solved.

Move the latency (and weight) row into the objective with multipliers ``lam`` (and ``kappa``): what
remains is one option per group with unary costs and pairwise interaction costs, a min-sum problem
on the interaction graph. On a spanning forest of that graph min-sum is solved exactly by two
message passes, which also give every option's *min-marginal*: the best energy with that option
forced. Interactions off the forest are bounded below by a separable part (``T[i, j] >= u[i] +
v[j]``), so the result is a valid lower bound on every plan, for every multiplier; the best over a
sweep of multipliers is, on a forest, the bound of the LP with that option forced.
"""

from __future__ import annotations

import numpy as np

from hwq.alloc.problem import Problem


class ForestBound:
    """The interaction graph of a problem split into a spanning forest (solved exactly) and the
    remaining edges (bounded separably); built once per problem."""

    def __init__(self, problem: Problem, x_cols, y_offsets, latency: np.ndarray):
        """Args: the problem, the padded ``(group, option)`` of every ``x`` column (two index
        arrays), the first column of each interaction's ``y`` block, and every column's latency."""
        n_groups = len(problem.groups)
        self.sizes = [len(g.options) for g in problem.groups]
        self.shape = (n_groups, max(self.sizes))
        self.x_cols = x_cols
        pairs = {}              # (a, b), a < b -> y column blocks laid out (a option, b option)
        for t, col0 in zip(problem.interactions, y_offsets):
            na, nb = len(t.latency_ms), len(t.latency_ms[0])
            cols = (col0 + np.arange(na * nb)).reshape(na, nb)
            key = (min(t.a, t.b), max(t.a, t.b))
            pairs.setdefault(key, []).append(cols if t.a < t.b else cols.T)
        # the widest tables go on the forest, where they are counted exactly
        spread = {k: sum(float(np.ptp(latency[blk])) for blk in blocks) for k, blocks in pairs.items()}
        root = list(range(n_groups))

        def find(g):
            while root[g] != g:
                root[g] = root[root[g]]
                g = root[g]
            return g

        adjacent = [[] for _ in range(n_groups)]
        self.off_forest = []
        for (a, b) in sorted(pairs, key=lambda k: -spread[k]):
            ra, rb = find(a), find(b)
            if ra == rb:
                self.off_forest.append((a, b, pairs[(a, b)]))
            else:
                root[ra] = rb
                adjacent[a].append((b, pairs[(a, b)], False))
                adjacent[b].append((a, pairs[(a, b)], True))
        # breadth-first order per tree; parent_cols[g]: y columns as (parent option, g's option)
        self.order, self.parent, self.parent_cols, seen = [], [-1] * n_groups, [None] * n_groups, set()
        for r in range(n_groups):
            if r in seen:
                continue
            seen.add(r)
            queue = [r]
            for g in queue:
                self.order.append(g)
                for h, blocks, transposed in adjacent[g]:
                    if h not in seen:
                        seen.add(h)
                        queue.append(h)
                        self.parent[h] = g
                        # blocks are (a option, b option) with a < b; orient them (g's, h's)
                        self.parent_cols[h] = [blk.T if transposed else blk for blk in blocks]
        self.roots = [g for g in self.order if self.parent[g] < 0]

    def min_marginals(self, col_costs: np.ndarray, const: np.ndarray):
        """Lower bounds with each option forced in, and forced out.

        Args:
            col_costs: ``(K, n_columns)``, the objective plus multipliers times rows, per multiplier.
            const: ``(K,)``, the constant part (minus the multipliers times the right-hand sides).

        Returns:
            ``(if_one, if_zero, plans)``: the first two ``(groups, max options)``, the best bound
            over the ``K`` multipliers on any plan that picks (resp. does not pick) the option,
            padding inf; ``plans`` ``(K, groups)``, each multiplier's minimising plan.
        """
        k = col_costs.shape[0]
        unary = np.full((k,) + self.shape, np.inf)
        unary[:, self.x_cols[0], self.x_cols[1]] = col_costs[:, :len(self.x_cols[0])]
        const = np.array(const, dtype=float)
        for a, b, blocks in self.off_forest:
            table = sum(col_costs[:, blk] for blk in blocks)           # (K, na, nb)
            u = table.min(axis=2)
            v = (table - u[:, :, None]).min(axis=1)
            unary[:, a, :u.shape[1]] += u
            unary[:, b, :v.shape[1]] += v
        acc = unary.copy()                     # unary plus the messages from the children
        pair, up = [None] * self.shape[0], [None] * self.shape[0]
        for g in reversed(self.order):
            p = self.parent[g]
            if p < 0:
                continue
            pair[g] = sum(col_costs[:, blk] for blk in self.parent_cols[g])   # (K, n_p, n_g)
            up[g] = (pair[g] + acc[:, g, None, :self.sizes[g]]).min(axis=2)
            acc[:, p, :self.sizes[p]] += up[g]
        belief = acc.copy()
        for g in self.order:
            p = self.parent[g]
            if p >= 0:
                rest = belief[:, p, :self.sizes[p]] - up[g]
                belief[:, g, :self.sizes[g]] += (rest[:, :, None] + pair[g]).min(axis=1)
        best = belief.min(axis=2)                                          # (K, groups)
        total = best[:, self.roots].sum(axis=1) + const                    # (K,)
        if_one = (total[:, None, None] - best[:, :, None] + belief).max(axis=0)
        second = np.partition(belief, 1, axis=2)[:, :, 1] if self.shape[1] > 1 else np.full(best.shape, np.inf)
        extra = np.where(belief == best[:, :, None], (second - best)[:, :, None], 0.0)
        if_zero = (total[:, None, None] + extra).max(axis=0)
        return if_one, if_zero, self._decode(acc, pair)

    def _decode(self, acc, pair) -> np.ndarray:
        """The plan minimising each multiplier's relaxed energy, ``(K, groups)``: each root's best
        option, then each child's best given its parent's (``acc`` holds the upward pass)."""
        k = acc.shape[0]
        plans = np.zeros((k, self.shape[0]), dtype=np.int64)
        for g in self.order:
            p = self.parent[g]
            cost = acc[:, g, :self.sizes[g]]
            if p >= 0:
                cost = cost + pair[g][np.arange(k), plans[:, p], :]
            plans[:, g] = np.argmin(cost, axis=1)
        return plans

