"""Integer conv2d / dense for AVX-512 VNNI: NHWC activations, weights pre-packed, fused epilogue.

The reduction runs on ``vpdpbusd`` (u8 x s8 -> s32, 64 MACs per instruction): activations are
uint8 (a signed input is shifted by +128 and the shift is folded into the bias), weights int8
packed as ``[O/16, KH, KW, I/4, 16, 4]`` so that one zmm load holds the 16x4 block the
instruction multiplies with 4 input-channel bytes broadcast from one pixel. A tile of ``tw``
output pixels x ``ob*16`` output channels stays in zmm registers across the whole reduction;
the epilogue (bias, fixed-point requantization, clamp, cast) runs on that tile right after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from hwq.lower.kernels import intrin


@dataclass(frozen=True)
class ConvTile:
    """Register tile of the conv kernel: ``tw`` output pixels x ``ob`` blocks of 16 channels."""

    tw: int = 4
    ob: int = 2


def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """int8 OIHW (O % 16 == 0, I % 4 == 0) -> [O/16, KH, KW, I/4, 16, 4]."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // 16, 16, i // 4, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax):
    """TE definition: padded NHWC uint8 input, packed weight, per-channel bias/multiplier/shift -> NHWC."""
    oh = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    X = te.placeholder((n, hp, wp, cin), "uint8", name="X")
    W = te.placeholder((cout // 16, kh, kw, cin // 4, 16, 4), "int8", name="W")
    B = te.placeholder((cout,), "int32", name="bias")
    M = te.placeholder((cout,), "int64", name="mult")
    S = te.placeholder((cout,), "int64", name="shift")
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cin), "rc")
    acc = te.compute(
        (n, oh, ow, cout),
        lambda b, y, x, o: te.sum(
            X[b, y * stride[0] + rh * dilation[0], x * stride[1] + rw * dilation[1], rc].astype("int32")
            * W[o // 16, rh, rw, rc // 4, o % 16, rc % 4].astype("int32"), axis=[rh, rw, rc]),
        name="acc")
    out = te.compute((n, oh, ow, cout), lambda b, y, x, o: _epilogue(acc[b, y, x, o], B[o], M[o], S[o], out_dtype, qmin, qmax),
                     name="out")
    return [X, W, B, M, S, out]


def _epilogue(acc, bias, mult, shift, out_dtype, qmin, qmax):
    if out_dtype == "int32":
        return acc + bias
    v = (acc + bias).astype("int64") * mult + (tirx.const(1, "int64") << (shift - tirx.const(1, "int64")))
    v = tirx.max(tirx.min(v >> shift, tirx.const(qmax, "int64")), tirx.const(qmin, "int64"))
    return v.astype(out_dtype)


def schedule_conv(func: tvm.tirx.PrimFunc, tile: ConvTile) -> tvm.tirx.PrimFunc:
    """Tile, parallelize over (batch, rows), tensorize the 16x4 dot with VNNI, fuse the epilogue."""
    intrin.register()
    sch = tvm.s_tir.Schedule(func)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, y, x, o, rh, rw, rc = sch.get_loops(acc)
    xo, xi = sch.split(x, [None, tile.tw])
    oo, om, oi = sch.split(o, [None, tile.ob, 16])
    co, ci = sch.split(rc, [None, 4])
    # rows outermost: one parallel region per call whatever the batch (a region per image costs
    # a thread-pool wake-up each)
    sch.reorder(y, b, xo, oo, rh, rw, co, xi, om, oi, ci)
    sch.reverse_compute_at(out, oo)
    sch.parallel(y)
    sch.decompose_reduction(acc, rh)
    sch.tensorize(oi, intrin.VNNI_16x4)
    sch.unroll(xi)
    sch.unroll(om)
    ox = sch.get_loops(out)[-1]
    sch.vectorize(ox)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def im2col_compute(n, h, w, cin, in_dtype, kh, kw, stride, dilation, pad, k_padded, offset):
    """Patches of a conv with few input channels, NHWC: P[b, y, x, (i, j, c)] as uint8.

    Padding (spatial, and channels up to ``k_padded``) and the +128 shift of a signed input happen
    here, in the same pass: out of bounds reads give ``offset``, the shifted real zero.
    """
    pt, pl = pad[0], pad[2]
    oh = (h + pad[0] + pad[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + pad[2] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    X = te.placeholder((n, h, w, cin), in_dtype, name="X")
    real = kh * kw * cin

    def patch(b, y, x, k):
        i, j, c = k // (kw * cin), (k // cin) % kw, k % cin
        yy, xx = y * stride[0] + i * dilation[0] - pt, x * stride[1] + j * dilation[1] - pl
        inside = tirx.all(k < real, yy >= 0, yy < h, xx >= 0, xx < w)
        v = X[b, tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xx, w - 1), 0), tirx.min(c, cin - 1)]
        shifted = (v.astype("int16") + tirx.const(offset, "int16")).astype("uint8")
        return tirx.Select(inside, shifted, tirx.const(offset, "uint8"))

    P = te.compute((n, oh, ow, k_padded), patch, name="patches")
    return [X, P]


def schedule_im2col(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Rows in parallel, one region per call; the short inner loops stay scalar."""
    sch = tvm.s_tir.Schedule(func)
    b, y, x, k = sch.get_loops(sch.get_sblock("patches"))
    sch.reorder(y, b, x, k)
    sch.parallel(y)
    sch.unroll(k)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)
