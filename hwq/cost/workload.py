"""``Workload``: the shape of one conv / dense layer, the unit the cost model prices and measures.

Plain data read off a ``QGraph`` node (or built by hand): no weights, no scales, so two layers of
the same shape share one measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwq.errors import ConfigError

OPS = ("conv2d", "depthwise", "dense")


@dataclass(frozen=True)
class Workload:
    """One layer's shape, batch excluded.

    Attributes:
        op: ``"conv2d"`` (groups == 1 or grouped), ``"depthwise"`` (groups == channels) or ``"dense"``.
        in_shape: ``(C, H, W)`` of the input (``(C,)`` for dense), unpadded.
        out_channels: output channels (features for dense).
        kernel, stride, padding, dilation: per axis (rows, columns); ``(1, 1)``/``(0, 0)`` for dense.
        groups: 1 for a regular conv and dense, C for depthwise.
    """

    op: str
    in_shape: tuple
    out_channels: int
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def __post_init__(self):
        if self.op not in OPS:
            raise ConfigError(f"Workload.op {self.op!r} is not one of {', '.join(map(repr, OPS))}")
        want = 1 if self.op == "dense" else 3
        if len(self.in_shape) != want or min(self.in_shape) < 1:
            raise ConfigError(f"Workload.in_shape {self.in_shape!r} must be {want} positive sizes for {self.op!r}")
        if self.out_channels < 1 or self.groups < 1:
            raise ConfigError(f"Workload needs out_channels and groups >= 1, got {self.out_channels!r}, {self.groups!r}")

    @classmethod
    def of(cls, node, in_shape) -> "Workload":
        """The workload of a ``Conv2d`` or ``Dense`` node whose input has shape ``in_shape`` (batch excluded)."""
        shape = tuple(int(s) for s in in_shape)
        if node.op == "dense":
            return cls("dense", (int(node.weight.shape[1]),), int(node.weight.shape[0]))
        if node.op != "conv2d":
            raise ConfigError(f"node {node.name!r} is a {node.op!r}; workloads are conv2d or dense layers")
        cout, per_group = node.weight.shape[:2]
        depthwise = node.groups == shape[0] == cout and per_group == 1
        return cls("depthwise" if depthwise else "conv2d", shape, int(cout), tuple(node.weight.shape[2:]),
                   tuple(node.stride), tuple(node.padding), tuple(node.dilation), int(node.groups))

    @property
    def in_channels(self) -> int:
        return self.in_shape[0]

    @property
    def out_hw(self) -> tuple:
        """Output rows and columns (``(1, 1)`` for dense)."""
        if self.op == "dense":
            return 1, 1
        _, h, w = self.in_shape
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                     for size, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel, self.stride))

    @property
    def reduction(self) -> int:
        """Multiply-accumulates per output element."""
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    def macs(self, batch: int = 1) -> int:
        oh, ow = self.out_hw
        return batch * oh * ow * self.out_channels * self.reduction

    def weight_elems(self) -> int:
        return self.out_channels * self.reduction

    def in_elems(self, batch: int = 1) -> int:
        n = 1
        for s in self.in_shape:
            n *= s
        return batch * n

    def out_elems(self, batch: int = 1) -> int:
        oh, ow = self.out_hw
        return batch * oh * ow * self.out_channels

    @property
    def key(self) -> str:
        """A stable text key, e.g. ``conv2d:32x28x28->64:k3x3:s1x1:p1x1:d1x1:g1``."""
        if self.op == "dense":
            return f"dense:{self.in_shape[0]}->{self.out_channels}"
        c, h, w = self.in_shape
        k, s, p, d = (f"{a}x{b}" for a, b in (self.kernel, self.stride, self.padding, self.dilation))
        return f"{self.op}:{c}x{h}x{w}->{self.out_channels}:k{k}:s{s}:p{p}:d{d}:g{self.groups}"

    @classmethod
    def from_key(cls, key: str) -> "Workload":
        """Inverse of :attr:`key`."""
        try:
            op, rest = key.split(":", 1)
            if op == "dense":
                i, o = rest.split("->")
                return cls("dense", (int(i),), int(o))
            shape, k, s, p, d, g = rest.split(":")
            chw, cout = shape.split("->")
            pair = lambda t: tuple(int(v) for v in t[1:].split("x"))   # noqa: E731
            return cls(op, tuple(int(v) for v in chw.split("x")), int(cout), pair(k), pair(s), pair(p), pair(d),
                       int(g[1:]))
        except (ValueError, IndexError):
            raise ConfigError(f"not a workload key: {key!r} (e.g. 'conv2d:32x28x28->64:k3x3:s1x1:p1x1:d1x1:g1' "
                              f"or 'dense:1280->1000')") from None


def layer_nodes(graph) -> list:
    """The conv2d / dense nodes of ``graph``, in execution order."""
    return [n for n in graph.nodes if n.op in ("conv2d", "dense")]
