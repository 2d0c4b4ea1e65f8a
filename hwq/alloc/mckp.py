"""Building blocks for the multiple-choice knapsack local search in :mod:`hwq.alloc.greedy`: the
LP relaxation along convex hulls, the Lagrangian multiplier that a plan comes closest to being
optimal for, and a Pareto-front dynamic program over a few groups.

Pure numpy. Every function works on flat arrays of *moves* (a change of one group's option, or of
a set of linked groups' options) described by their latency and loss changes from the plan now.
"""

from __future__ import annotations

import numpy as np


def hull_curve(x, y, mask, rows, cheapest: bool):
    """The LP trade-off of moving rows along their convex hulls.

    Each row's masked moves ``(x > 0, y)`` from its current point ``(0, 0)``: ``cheapest`` takes
    the lower hull (least cost ``y`` per unit ``x``, every step), otherwise the upper hull while it
    gains (``y > 0``). The steps of every row, sorted by slope, give the least cost (most gain) of
    any fractional mix of moves per ``x`` moved; a row's steps come in slope order on its own hull,
    so the sort keeps them in order.

    Returns:
        ``(cum_x, cum_y, moves)``: the cumulative x and y after each step (from 0) and the index of
        each step's move (the hull corner it reaches), in the order taken.
    """
    keep = np.flatnonzero(mask & (x > 0))
    xs, ys, rs = x[keep], y[keep], rows[keep]
    n_rows = int(rows.max()) + 1 if len(rows) else 0
    steps = []
    hx, hy = np.zeros(n_rows), np.zeros(n_rows)
    sign = 1.0 if cheapest else -1.0
    alive = np.ones(len(xs), dtype=bool)
    while alive.any():
        # every row's next hull corner: the least (most) slope from its current one, the farthest
        # of equal slopes
        ahead = alive & (xs > hx[rs])
        slope = np.where(ahead, (ys - hy[rs]) / np.where(ahead, xs - hx[rs], 1.0), np.nan)
        best = np.full(n_rows, np.inf)
        np.minimum.at(best, rs[ahead], sign * slope[ahead])
        pick = ahead & (sign * slope == best[rs]) & (cheapest or slope > 0)
        far = np.full(n_rows, -np.inf)
        np.maximum.at(far, rs[pick], xs[pick])
        idx = np.flatnonzero(pick & (xs == far[rs]))
        idx = idx[~_duplicate(rs[idx])]
        if not len(idx):
            break
        steps.append((xs[idx] - hx[rs[idx]], ys[idx] - hy[rs[idx]], keep[idx]))
        moved = np.zeros(n_rows, dtype=bool)
        moved[rs[idx]] = True
        hx[rs[idx]], hy[rs[idx]] = xs[idx], ys[idx]
        alive &= moved[rs] & (xs > hx[rs])
    sx, sy, sm = (np.concatenate(v) for v in zip(*steps)) if steps else (np.zeros(0),) * 2 + (np.zeros(0, int),)
    order = np.argsort(sign * sy / sx, kind="stable")
    return (np.concatenate([[0.0], np.cumsum(sx[order])]), np.concatenate([[0.0], np.cumsum(sy[order])]),
            sm[order])


def best_multiplier(dl, dL):
    """The loss-per-ms multiplier ``lam >= 0`` under which the plan is closest to Lagrangian-optimal:
    it minimises ``neg(lam)``, the sum of the negative reduced costs ``dL + lam * dl`` of the moves
    (convex and piecewise linear in ``lam``, so 0 or a move's ratio ``|dL / dl|`` minimises it).
    Returns ``(lam, neg)``, or ``(None, None)`` when no move trades latency for loss."""
    down = (dl < 0) & (dL >= 0)     # saves latency at a cost: negative once lam > dL / -dl
    up = (dl > 0) & (dL < 0)        # gains loss for latency: negative while lam < -dL / dl
    free = (dl <= 0) & (dL < 0)     # gains and saves: negative at every lam
    if not (down.any() or up.any()):
        return None, None
    r_down, r_up = dL[down] / -dl[down], -dL[up] / dl[up]
    o_d, o_u = np.argsort(r_down), np.argsort(r_up)[::-1]
    r_down, r_up = r_down[o_d], r_up[o_u]          # smallest first, largest first
    lams = np.unique(np.concatenate([[0.0], r_down, r_up]))
    # at each lam: the down moves with a ratio below it, the up moves with one above it
    cd_x = np.concatenate([[0.0], np.cumsum(-dl[down][o_d])])
    cd_y = np.concatenate([[0.0], np.cumsum(dL[down][o_d])])
    cu_x = np.concatenate([[0.0], np.cumsum(dl[up][o_u])])
    cu_y = np.concatenate([[0.0], np.cumsum(-dL[up][o_u])])
    k_d = np.searchsorted(r_down, lams, side="left")
    k_u = np.searchsorted(-r_up, -lams, side="left")
    neg = (lams * cd_x[k_d] - cd_y[k_d]) + (cu_y[k_u] - lams * cu_x[k_u]) \
        + (-np.sum(dL[free]) + lams * np.sum(-dl[free]))
    k = int(np.argmin(neg))
    return float(lams[k]), float(max(neg[k], 0.0))


def pareto_dp(lat, loss, cap, max_front):
    """The least total loss over one option per row (``lat[r]``, ``loss[r]``: the row's options,
    option 0 its current one) with total latency within ``cap``, by merging Pareto fronts row by
    row; a front longer than ``max_front`` keeps that many points evenly spaced along it. Returns
    ``(loss, option per row)`` or None."""
    # a partial sum may exceed cap by what the rows still to come can save at most
    can_save = np.concatenate([np.cumsum([max(0.0, -float(np.min(x))) for x in lat][::-1])[::-1], [0.0]])
    f_lat, f_loss, back = np.zeros(1), np.zeros(1), []
    for r, (x, y) in enumerate(zip(lat, loss)):
        a_lat = (f_lat[:, None] + x[None, :]).ravel()
        a_loss = (f_loss[:, None] + y[None, :]).ravel()
        src = np.repeat(np.arange(len(f_lat)), len(x))
        opt = np.tile(np.arange(len(x)), len(f_lat))
        keep = np.flatnonzero(a_lat <= cap + can_save[r + 1])
        keep = keep[np.lexsort((a_loss[keep], a_lat[keep]))]
        # the Pareto front: along increasing latency, only points that lower the loss
        lowest = np.minimum.accumulate(np.concatenate([[np.inf], a_loss[keep][:-1]]))
        keep = keep[a_loss[keep] < lowest]
        if len(keep) > max_front:
            keep = keep[np.unique(np.linspace(0, len(keep) - 1, max_front).astype(np.int64))]
        f_lat, f_loss = a_lat[keep], a_loss[keep]
        back.append((src[keep], opt[keep]))
    fits = np.flatnonzero(f_lat <= cap)
    if not len(fits):
        return None
    k = int(fits[np.argmin(f_loss[fits])])
    best, picks = float(f_loss[k]), []
    for src, opt in reversed(back):
        picks.append(int(opt[k]))
        k = int(src[k])
    return best, picks[::-1]


def _duplicate(values):
    """True where a value appeared earlier in ``values``."""
    _, first = np.unique(values, return_index=True)
    dup = np.ones(len(values), dtype=bool)
    dup[first] = False
    return dup


def curve_at(cx, cy, x, beyond=None):
    """The curve's y at ``x`` (linear between steps); past its end ``beyond``, or its last y."""
    y = np.interp(x, cx, cy)
    return y if beyond is None else np.where(x > cx[-1], beyond, y)
