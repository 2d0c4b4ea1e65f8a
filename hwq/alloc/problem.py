"""The bit-allocation problem as data: groups of layers that choose one precision option together,
pairwise latency interactions between groups, and the solution a solver returns.

Pure Python + numpy. A plan's latency is not a plain sum over groups: a constant base (glue ops,
per-call overhead) and pairwise terms (a kernel whose speed depends on its producer's activation
width, a conversion at a precision boundary) are added::

    latency = base + sum_g latency_g[c_g] + sum_(a, b) T_ab[c_a, c_b]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hwq.errors import ConfigError


def _vector(value, what: str, n: int, *, nonnegative: bool) -> tuple:
    """``value`` as a tuple of ``n`` finite floats (``>= 0`` if ``nonnegative``), or a ConfigError."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a sequence of {n} numbers, got {value!r}") from None
    if arr.shape != (n,):
        raise ConfigError(f"{what} must have one entry per option ({n}), got shape {arr.shape} "
                          f"from {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    if nonnegative and np.any(arr < 0):
        raise ConfigError(f"{what} must be >= 0, got {value!r}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class Group:
    """Layers that choose one precision option together (tied by the user, or sharing one
    activation quantizer).

    Args:
        name: unique name of the group (e.g. the first layer's module name).
        options: option names, e.g. ``("w8a8", "w4a8", "fp32")``.
        latency_ms: the group's own latency per option (from the cost model), finite and >= 0.
        loss: predicted loss increase per option (sensitivity); any finite number, smaller is better.
        weight_bytes: stored weight size per option, or None if the group is not weight-bounded.
        layers: the module names in the group (informational).
    """

    name: str
    options: tuple
    latency_ms: tuple
    loss: tuple
    weight_bytes: tuple | None = None
    layers: tuple = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Group.name must be a non-empty string, got {self.name!r}")
        options = tuple(self.options) if isinstance(self.options, (list, tuple)) else None
        if not options or not all(isinstance(o, str) and o for o in options):
            raise ConfigError(f"Group {self.name!r}: options must be a non-empty sequence of non-empty "
                              f"strings, got {self.options!r}")
        if len(set(options)) != len(options):
            raise ConfigError(f"Group {self.name!r}: duplicate option names in {options!r}")
        n = len(options)
        set_ = object.__setattr__   # frozen: normalise once, here
        set_(self, "options", options)
        set_(self, "latency_ms", _vector(self.latency_ms, f"Group {self.name!r} latency_ms", n,
                                         nonnegative=True))
        set_(self, "loss", _vector(self.loss, f"Group {self.name!r} loss", n, nonnegative=False))
        if self.weight_bytes is not None:
            set_(self, "weight_bytes", _vector(self.weight_bytes, f"Group {self.name!r} weight_bytes",
                                               n, nonnegative=True))
        layers = tuple(self.layers) if isinstance(self.layers, (list, tuple)) else None
        if layers is None or not all(isinstance(s, str) for s in layers):
            raise ConfigError(f"Group {self.name!r}: layers must be a sequence of module names, "
                              f"got {self.layers!r}")
        set_(self, "layers", layers)


@dataclass(frozen=True)
class Interaction:
    """A latency term that depends on the options of two groups.

    Args:
        a, b: indices of the two groups in ``Problem.groups`` (distinct).
        latency_ms: table of shape ``(len(groups[a].options), len(groups[b].options))``: the plan
            pays ``latency_ms[i][j]`` when group ``a`` picks option ``i`` and ``b`` picks ``j``.
            Entries may be negative (a discount against the groups' own latencies) but finite.
    """

    a: int
    b: int
    latency_ms: tuple

    def __post_init__(self):
        for side in ("a", "b"):
            v = getattr(self, side)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"Interaction.{side} must be a group index (an int >= 0), got {v!r}")
            object.__setattr__(self, side, int(v))
        if self.a == self.b:
            raise ConfigError(f"Interaction links group {self.a!r} with itself; a and b must differ")
        try:
            table = np.asarray(self.latency_ms, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"Interaction({self.a}, {self.b}).latency_ms must be a 2-D table of "
                              f"numbers, got {self.latency_ms!r}") from None
        if table.ndim != 2 or table.size == 0:
            raise ConfigError(f"Interaction({self.a}, {self.b}).latency_ms must be a non-empty 2-D "
                              f"table, got shape {table.shape}")
        if not np.all(np.isfinite(table)):
            raise ConfigError(f"Interaction({self.a}, {self.b}).latency_ms must be finite, got "
                              f"{self.latency_ms!r}")
        object.__setattr__(self, "latency_ms", tuple(tuple(float(v) for v in row) for row in table))

    @property
    def shape(self) -> tuple:
        return len(self.latency_ms), len(self.latency_ms[0])


@dataclass(frozen=True)
class Problem:
    """One precision choice per group; latency = base + own latencies + interaction terms.

    Args:
        groups: the groups, in a fixed order (a choice is a tuple of option indices in this order).
        interactions: pairwise latency terms between groups.
        base_latency_ms: constant latency every plan pays (glue ops, per-call overhead), >= 0.

    Example:
        >>> p = Problem((Group("conv1", ("w8a8", "w4a8"), (2.0, 1.0), (0.0, 0.3)),
        ...              Group("conv2", ("w8a8", "w4a8"), (3.0, 1.5), (0.0, 0.1))),
        ...             (Interaction(0, 1, ((0.0, 0.2), (0.2, 0.0))),), base_latency_ms=0.5)
        >>> p.latency((0, 1)), p.loss((0, 1))
        (4.2, 0.1)
    """

    groups: tuple
    interactions: tuple = ()
    base_latency_ms: float = 0.0

    def __post_init__(self):
        groups = tuple(self.groups) if isinstance(self.groups, (list, tuple)) else ()
        if not groups or not all(isinstance(g, Group) for g in groups):
            raise ConfigError(f"Problem.groups must be a non-empty sequence of Group, got {self.groups!r}")
        names = [g.name for g in groups]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"Problem has duplicate group names {dup}; group names must be unique")
        inters = tuple(self.interactions) if isinstance(self.interactions, (list, tuple)) else None
        if inters is None or not all(isinstance(t, Interaction) for t in inters):
            raise ConfigError(f"Problem.interactions must be a sequence of Interaction, got "
                              f"{self.interactions!r}")
        for t in inters:
            for idx in (t.a, t.b):
                if idx >= len(groups):
                    raise ConfigError(f"Interaction({t.a}, {t.b}) names group index {idx!r}, but the "
                                      f"problem has {len(groups)} groups (valid: 0..{len(groups) - 1})")
            want = (len(groups[t.a].options), len(groups[t.b].options))
            if t.shape != want:
                raise ConfigError(f"Interaction({t.a}, {t.b}) between {groups[t.a].name!r} and "
                                  f"{groups[t.b].name!r} has a {t.shape} table; their options need {want}")
        base = self.base_latency_ms
        if isinstance(base, bool) or not isinstance(base, (int, float, np.floating, np.integer)) \
                or not math.isfinite(base) or base < 0:
            raise ConfigError(f"Problem.base_latency_ms must be a finite number >= 0, got {base!r}")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "interactions", inters)
        object.__setattr__(self, "base_latency_ms", float(base))

    @cached_property
    def has_weights(self) -> bool:
        """Whether every group states its weight bytes (needed for a weight bound)."""
        return all(g.weight_bytes is not None for g in self.groups)

    def check_choice(self, choice) -> tuple:
        """``choice`` as a tuple of ints, or a ConfigError naming the first bad entry."""
        choice = tuple(choice)
        if len(choice) != len(self.groups):
            raise ConfigError(f"a choice needs one option index per group ({len(self.groups)}), "
                              f"got {len(choice)}: {choice!r}")
        for g, c in zip(self.groups, choice):
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(g.options):
                raise ConfigError(f"group {g.name!r}: option index {c!r} is out of range; valid: "
                                  f"0..{len(g.options) - 1} ({', '.join(g.options)})")
        return tuple(int(c) for c in choice)

    def latency(self, choice) -> float:
        """Total latency of a plan in ms: base + the groups' own latencies + interaction terms."""
        c = self.check_choice(choice)
        return math.fsum([self.base_latency_ms]
                         + [g.latency_ms[i] for g, i in zip(self.groups, c)]
                         + [t.latency_ms[c[t.a]][c[t.b]] for t in self.interactions])

    def loss(self, choice) -> float:
        """Predicted loss increase of a plan: the sum of its groups' losses."""
        c = self.check_choice(choice)
        return math.fsum(g.loss[i] for g, i in zip(self.groups, c))

    def weight_bytes(self, choice) -> float | None:
        """Stored weight bytes of a plan, or None when some group does not state its weight bytes."""
        c = self.check_choice(choice)
        if not self.has_weights:
            return None
        return math.fsum(g.weight_bytes[i] for g, i in zip(self.groups, c))

    def option_names(self, choice) -> dict:
        """``{group name: option name}`` of a plan."""
        c = self.check_choice(choice)
        return {g.name: g.options[i] for g, i in zip(self.groups, c)}

    def describe(self, choice, limit: int = 12) -> str:
        """``"conv1=w4a8, conv2=w7a8, ..."`` (at most ``limit`` groups, then how many more)."""
        items = [f"{k}={v}" for k, v in self.option_names(choice).items()]
        more = len(items) - limit
        return ", ".join(items[:limit]) + (f", ... ({more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Solution:
    """A plan a solver picked, with its totals recomputed from the problem (not from the solver).

    Args:
        choice: one option index per group, in ``Problem.groups`` order.
        latency_ms, loss, weight_bytes: the plan's totals (``weight_bytes`` None when not stated).
        solver: which solver produced it (``"exact"``, ``"dp"``, ``"greedy"``, ...).
        seconds: wall time the solver took.
    """

    choice: tuple
    latency_ms: float
    loss: float
    weight_bytes: float | None
    solver: str
    seconds: float

    @classmethod
    def of(cls, problem: Problem, choice, solver: str, seconds: float) -> "Solution":
        """The solution for ``choice``, its totals computed from ``problem``."""
        c = problem.check_choice(choice)
        return cls(c, problem.latency(c), problem.loss(c), problem.weight_bytes(c), solver, seconds)

    def option_names(self, problem: Problem) -> dict:
        """``{group name: option name}``, e.g. ``{"conv1": "w4a8", "conv2": "w8a8"}``."""
        return problem.option_names(self.choice)
