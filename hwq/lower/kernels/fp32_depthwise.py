"""float32 depthwise conv2d (groups == channels) on CPUs: NHWC, channel vectors, fused epilogue.

No reduction over channels: each tap is a vector load of ``block`` input channels, one of their
weights and an FMA, so the kernel is bound by loads, not FMAs (one input load per FMA). A tile
of ``tw`` pixels x ``cb`` vectors of channels keeps its accumulators in registers across the
kh x kw taps, and each weight vector is loaded once per tap for the ``tw`` pixels. The layout
is the integer ``cpu_depthwise`` kernel's, in float32; the padding is a bounds test on the reads
(``fp32_direct.padded_input``), not a padded copy of the rows, and channel blocks run outside
pixel tiles. At batch 16 the big early layers of MobileNetV2 are bound by memory bandwidth
(their input and output do not fit in cache), as the integer kernels are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te

from hwq.lower.kernels.bias_init import bias_as_init
from hwq.lower.kernels.fp32_direct import F32, out_size, padded_input, vectorize_epilogue, with_epilogue

MAX_TW = 8


@dataclass(frozen=True)
class FloatDepthwiseTile:
    """``tw`` output pixels x ``cb`` vectors of ``block`` channels."""

    tw: int = 4
    cb: int = 2


def pack_weight(w: np.ndarray) -> np.ndarray:
    """float32 ``[C, 1, KH, KW]`` -> ``[KH, KW, C]``: a tap's channels are one vector load."""
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0), dtype=np.float32)


def depthwise_compute(n, h, w, c, kh, kw, stride, dilation, pad, act, residual: bool):
    """TE definition: raw NHWC input, weight ``[KH, KW, C]``, bias ``[C]``, [residual] -> NHWC.

    Returns ``[X, W, bias, out]`` or ``[X, W, bias, R, out]``.
    """
    oh = out_size(h, kh, stride[0], dilation[0], pad[0], pad[1])
    ow = out_size(w, kw, stride[1], dilation[1], pad[2], pad[3])
    X = te.placeholder((n, h, w, c), F32, name="X")
    Xp = padded_input(X, h, w, pad)
    W = te.placeholder((kh, kw, c), F32, name="W")
    B = te.placeholder((c,), F32, name="bias")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    acc = te.compute(
        (n, oh, ow, c),
        lambda b, y, x, k: te.sum(Xp(b, y * stride[0] + rh * dilation[0], x * stride[1] + rw * dilation[1], k)
                                  * W[rh, rw, k], axis=[rh, rw]), name="acc")
    extra, out = with_epilogue(acc, B, n, oh, ow, c, act, residual)
    return [X, W, B, *extra, out]


def schedule_depthwise(func: tvm.tirx.PrimFunc, tile: FloatDepthwiseTile, block: int) -> tvm.tirx.PrimFunc:
    """Rows x images in parallel, a ``tw x cb*block`` register tile accumulated over the taps."""
    sch = tvm.s_tir.Schedule(func)
    bias_as_init(sch)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, y, x, k, rh, rw = sch.get_loops(acc)
    xo, xi = sch.split(x, [None, tile.tw])
    ko, km, ki = sch.split(k, [None, tile.cb, block])
    # channel blocks outside pixel tiles: a block's weights (kh x kw vectors) and the input
    # columns it reads stay in L1 along the row (2x on a 14x14x576 layer against pixels outside)
    sch.reorder(y, b, ko, xo, rh, rw, xi, km, ki)
    sch.reverse_compute_at(out, xo)
    sch.parallel(sch.fuse(y, b))     # rows only: see fp32_direct.schedule_conv
    sch.unroll(xi)
    sch.unroll(km)
    sch.vectorize(ki)
    sch.decompose_reduction(acc, rh)
    vectorize_epilogue(sch, out, block)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def _fits(tw: int, cb: int, registers: int) -> bool:
    return tw * cb + cb + 2 <= registers     # accumulators, the tap's weight vectors, two inputs (fp32_direct.fits)


def candidates(ow: int, blocks: int, registers: int) -> list:
    """Tiles worth timing: up to 8 pixels dividing the output width x 1, 2 or 4 channel vectors; the default first."""
    widths = [d for d in range(1, min(ow, MAX_TW) + 1) if ow % d == 0]
    tiles = [FloatDepthwiseTile(tw, cb) for cb in (1, 2, 4) if blocks % cb == 0 for tw in widths
             if _fits(tw, cb, registers)]
    first = default_tile(ow, blocks, registers)
    return [first] + [t for t in tiles if t != first]


def default_tile(ow: int, blocks: int, registers: int) -> FloatDepthwiseTile:
    """The untuned tile: up to 4 pixels (dividing the width) x 2 channel vectors (1 if the channels
    are one vector): 8 accumulators cover the FMA latency of two pipes."""
    tw = max(d for d in range(1, min(ow, 4) + 1) if ow % d == 0)
    return FloatDepthwiseTile(tw, 2 if blocks % 2 == 0 and _fits(tw, 2, registers) else 1)
