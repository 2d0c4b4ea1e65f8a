"""What every kernel rule shares: the ``Kernel`` it returns and what it reads off a ``QGraph`` node
(geometry, the bias with the input offset folded in, the requantization arrays padded to the
kernel's channel count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from hwq import qgraph as qg

OPAQUE = 8   # relax's kOpaque op pattern: FuseOps must not merge other ops into a scheduled kernel


@dataclass(frozen=True)
class Kernel:
    """A scheduled PrimFunc plus what the graph must do around it.

    The kernel reads NHWC ``in_dtype`` data already padded by ``pad`` (top, bottom, left, right)
    and with ``in_channels`` channels (zero channels appended), after ``input_offset`` was added
    to take the graph's tensor into ``in_dtype`` (+128 int8 -> uint8 for VNNI, -128 uint8 -> int8
    for sdot, 0 when the dtypes agree); padding holds ``input_offset``, the shifted real zero.
    It writes NHWC with ``out_channels`` channels (the node's, rounded up).
    """

    name: str
    func: tvm.tirx.PrimFunc
    params: tuple            # numpy arrays, passed after the data: packed weight, bias, multiplier, shift
    pad: tuple
    in_channels: int
    out_channels: int
    input_offset: int
    out_shape: tuple         # (OH, OW, out_channels), batch excluded
    pre: tvm.tirx.PrimFunc | None = None   # im2col: reads the raw input, pads and shifts it itself
    tile: object = None
    workload: str = ""
    in_shape: tuple = ()     # (H, W, C) the kernel reads, batch excluded
    rebuild: object = None   # tile -> PrimFunc of the same workload (for tuning)
    candidates: tuple = ()   # tiles a search may try
    in_dtype: str = "uint8"  # what the PrimFunc reads (and ``pre`` writes)
    residual: ResidualAdd | None = None   # fused: the PrimFunc takes the add's other input after ``params``


@dataclass(frozen=True)
class ResidualAdd:
    """A residual add fused into the epilogue of the conv that produces one of its inputs:
    ``clamp((y * m_self + r * m_other + 2^(shift-1)) >> shift, qmin, qmax)`` in int64, ``y`` the
    conv's requantized output, ``r`` the other input (a tensor of the conv's output shape), exactly
    ``hwq.qgraph.Add``; the kernel then writes the add's output, in ``out_dtype``."""

    dtype: str               # the other input's dtype
    m_self: int
    m_other: int
    shift: int
    qmin: int
    qmax: int
    out_dtype: str

    def apply(self, y, r):
        """The add on the conv's clamped integer ``y`` and the other input's element ``r``."""
        from tvm import tirx

        i64 = lambda v: tirx.const(v, "int64")   # noqa: E731
        s = (y.astype("int64") * i64(self.m_self) + r.astype("int64") * i64(self.m_other)
             + i64(1 << (self.shift - 1))) >> i64(self.shift)
        return tirx.max(tirx.min(s, i64(self.qmax)), i64(self.qmin)).astype(self.out_dtype)


def round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit``."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class ConvGeometry:
    """A conv2d (groups == 1) or a dense layer seen as a 1x1 conv on a 1x1 image.

    ``w`` is the int8 weight in OIHW; ``h``, ``wd`` the input size after padding by ``pad``
    (rows, columns; the same on both sides).
    """

    w: np.ndarray
    kh: int
    kw: int
    stride: tuple
    dilation: tuple
    pad: tuple
    h: int
    wd: int

    @property
    def out_hw(self) -> tuple:
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return (self.h - dh * (self.kh - 1) - 1) // sh + 1, (self.wd - dw * (self.kw - 1) - 1) // sw + 1


def conv_geometry(node, in_info: qg.TensorInfo) -> ConvGeometry | None:
    """The geometry of a groups == 1 conv2d or a dense node; None for anything else."""
    if node.op == "conv2d" and node.groups == 1:
        (ph, pw) = node.padding
        kh, kw = node.weight.shape[2:]
        return ConvGeometry(node.weight, kh, kw, tuple(node.stride), tuple(node.dilation), (ph, pw),
                            in_info.shape[1] + 2 * ph, in_info.shape[2] + 2 * pw)
    if node.op == "dense":
        return ConvGeometry(node.weight[:, :, None, None], 1, 1, (1, 1), (1, 1), (0, 0), 1, 1)
    return None


def folded_bias(node, w: np.ndarray, offset: int, cout_p: int) -> np.ndarray | None:
    """int64 bias of ``cout_p`` channels for a kernel that reads ``x + offset`` instead of ``x``.

    ``(x + offset) . w = x . w + offset * sum(w)``: the second term is subtracted here. None when
    the result does not fit int32 (the kernel cannot take the layer).
    """
    cout = w.shape[0]
    bias = np.zeros(cout_p, np.int64)
    bias[:cout] = node.bias.astype(np.int64) - offset * w.reshape(cout, -1).astype(np.int64).sum(1)
    return None if np.abs(bias).max() >= 2 ** 31 else bias


HIGH_MIN_SHIFT = 33   # the 32-bit multiply-high form of the requantization needs every n >= 33


def requant_params(rq: qg.Requant | None, cout: int, cout_p: int) -> tuple:
    """(multiplier, shift, qmin, qmax) with per-channel arrays of ``cout_p`` entries (padding
    channels get multiplier 1, shift 1); an int32 output (``rq`` None) gets int64 placeholders.

    When every shift ``n`` is at least 33 (real multipliers below 2^-2, i.e. nearly every conv)
    the arrays are int32 ``M`` and ``n - 32``: the kernels' epilogue then computes the same
    integer in 32-bit lanes (``dot_conv.epilogue``); otherwise int64 ``M`` and ``n``.
    """
    mult, shift = np.ones(cout_p, np.int64), np.ones(cout_p, np.int64)
    if rq is None:
        return mult, shift, 0, 0
    mult[:cout] = np.broadcast_to(rq.multiplier, (cout,))
    shift[:cout] = np.broadcast_to(rq.shift, (cout,))
    if shift[:cout].min() >= HIGH_MIN_SHIFT:
        shift[:cout] -= 32
        return mult.astype(np.int32), shift.astype(np.int32), rq.qmin, rq.qmax
    return mult, shift, rq.qmin, rq.qmax
