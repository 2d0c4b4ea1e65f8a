"""NHWC integer conv2d / dense around a 4-byte dot-product instruction, for any CPU that has one.

x86 ``vpdpbusd`` and Arm ``sdot`` compute the same thing: ``C[block] += A[4] . B[block, 4]``, the
4 input-channel bytes of one pixel (broadcast) times a ``block x 4`` tile of weights, into
``block`` int32 lanes; on AVX2 without VNNI two ``vpmaddwd`` do it (``x86_avx2``). So one TE
definition and one schedule serve all; an ISA module (``x86_vnni``, ``x86_avx2``,
``arm_dotprod``) names its intrinsic, its block (16, 8 or 4 output channels), the dtype it reads
activations in, the order of its weight tile, and the register tiles that fit its register file.

Weights are packed as ``[O/block, KH, KW, I/4, block, 4]`` (AVX2 reorders the last two axes) so
that the tile one instruction multiplies is contiguous vector loads. A tile of ``tw`` output pixels x
``ob * block`` output channels stays in registers across the whole reduction; the epilogue (bias,
fixed-point requantization, clamp, cast) runs on that tile right after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from hwq.lower.kernels import intrin
from hwq.lower.kernels.bias_init import bias_as_init


@dataclass(frozen=True)
class ConvTile:
    """Register tile of the conv kernel: ``tw`` output pixels x ``ob`` blocks of output channels."""

    tw: int = 4
    ob: int = 2


def pack_conv_weight(w: np.ndarray, block: int) -> np.ndarray:
    """int8 OIHW (O % block == 0, I % 4 == 0) -> [O/block, KH, KW, I/4, block, 4]."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // block, block, i // 4, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def _plain_tile(c, k):
    return c, k


def conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, in_dtype, block,
                 w_tile=None, w_index=_plain_tile, rq_dtype="int64", residual=None):
    """TE definition: padded NHWC input, packed weight, per-channel bias/multiplier/shift -> NHWC.

    One instruction's ``block x 4`` weights are a ``w_tile``-shaped tile (default ``(block, 4)``)
    in which weight (channel c, input k) sits at ``w_index(c, k)``: an ISA whose instruction pairs
    the inputs differently (``x86_avx2``) packs its tile in that order.
    """
    return packed_conv_compute(
        n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, in_dtype,
        (cout // block, kh, kw, cin // 4, *(w_tile or (block, 4))),
        lambda o, rh, rw, rc: (o // block, rh, rw, rc // 4, *w_index(o % block, rc % 4)), rq_dtype,
        residual=residual)


def packed_conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, in_dtype, w_shape, w_at,
                        rq_dtype="int64", weight=None, residual=None):
    """The integer NHWC conv of every hwq kernel, for any packed weight layout: ``W`` has shape
    ``w_shape`` and weight (output o, tap rh, rw, input rc) is ``W[w_at(o, rh, rw, rc)]``; the
    requantization arrays are ``rq_dtype`` (see ``epilogue``). ``weight``, when given, is the
    int8 weight tensor to read instead of a placeholder of ``w_shape`` (an unpacking stage).
    ``residual`` (``conv_params.ResidualAdd``), when given, adds a residual input ``R`` of the
    output's shape in the epilogue, and ``out`` is then the add's output.

    Returns ``[X, W, bias, mult, shift, out]`` (``[X, W, bias, mult, shift, R, out]`` with a
    residual); ``out`` is ``(n, OH, OW, cout)`` in ``out_dtype`` (the int32 accumulator plus bias
    when ``out_dtype`` is ``'int32'``).
    """
    oh = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    X = te.placeholder((n, hp, wp, cin), in_dtype, name="X")
    W = weight if weight is not None else te.placeholder(w_shape, "int8", name="W")
    B = te.placeholder((cout,), "int32", name="bias")
    M = te.placeholder((cout,), rq_dtype, name="mult")
    S = te.placeholder((cout,), rq_dtype, name="shift")
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cin), "rc")
    acc = te.compute(
        (n, oh, ow, cout),
        lambda b, y, x, o: te.sum(
            X[b, y * stride[0] + rh * dilation[0], x * stride[1] + rw * dilation[1], rc].astype("int32")
            * W[w_at(o, rh, rw, rc)].astype("int32"), axis=[rh, rw, rc]),
        name="acc")
    if residual is None:
        out = te.compute((n, oh, ow, cout), lambda b, y, x, o: epilogue(acc[b, y, x, o], B[o], M[o], S[o], out_dtype,
                                                                        qmin, qmax), name="out")
        return [X, W, B, M, S, out]
    R = te.placeholder((n, oh, ow, cout), residual.dtype, name="R")
    out = te.compute((n, oh, ow, cout), lambda b, y, x, o: residual.apply(
        epilogue(acc[b, y, x, o], B[o], M[o], S[o], "int32", qmin, qmax, requantize=True), R[b, y, x, o]), name="out")
    return [X, W, B, M, S, R, out]


def epilogue(acc, bias, mult, shift, out_dtype, qmin, qmax, requantize=None):
    """``v = acc + bias``, then (unless the output is the int32 ``v``) ``hwq.fixed_point``'s
    requantization ``(v * M + 2^(n-1)) >> n``, clamp, cast.

    With int64 ``mult`` / ``shift`` (``M``, ``n``) it is computed as written. With int32 ones
    (``M``, ``r = n - 32``, ``conv_params.requant_params`` picks this form when every ``n >= 33``)
    it is the same integer computed in 32-bit lanes: with ``v * M = hi * 2^32 + lo``
    (``0 <= lo < 2^32``) and the rounding term ``2^(n-1) = 2^(r-1) * 2^32`` falling wholly into
    ``hi``, ``floor((v * M + 2^(n-1)) / 2^n) = (hi + 2^(r-1)) >> r`` because ``lo / 2^32 < 1`` cannot
    carry ``hi`` across a multiple of ``2^r``. ``hi`` is a multiply-high (``vpmuldq`` pairs on
    AVX2, ``smull2`` on Arm); CPUs without 64-bit vector multiplies and arithmetic shifts (AVX2,
    whose int64 form is emulated in about 40 instructions per 8 lanes) run it several times faster,
    and ``|hi| < 2^30`` keeps the rounding add inside int32. The schedules move the bias into the
    accumulator's initial value (``bias_as_init``): TVM and LLVM widen ``int64(acc + bias)`` into
    ``int64(acc) + int64(bias)``, and a multiply-high is no longer recognizable after that.

    ``requantize`` forces the requantization (default: unless ``out_dtype`` is int32), for an
    epilogue that goes on with the clamped value (a fused residual add) in ``out_dtype`` int32.
    """
    v = acc + bias
    if requantize is None:
        requantize = out_dtype != "int32"
    if not requantize:
        return v
    if mult.dtype == "int32":
        hi = ((v.astype("int64") * mult.astype("int64")) >> tirx.const(32, "int64")).astype("int32")
        y = (hi + (tirx.const(1, "int32") << (shift - tirx.const(1, "int32")))) >> shift
        return tirx.max(tirx.min(y, tirx.const(qmax, "int32")), tirx.const(qmin, "int32")).astype(out_dtype)
    y = (v.astype("int64") * mult + (tirx.const(1, "int64") << (shift - tirx.const(1, "int64")))) >> shift
    return tirx.max(tirx.min(y, tirx.const(qmax, "int64")), tirx.const(qmin, "int64")).astype(out_dtype)


def schedule_conv(func: tvm.tirx.PrimFunc, tile: ConvTile, block: int, intrin: str,
                  unpack: str | None = None) -> tvm.tirx.PrimFunc:
    """Tile, parallelize over rows, tensorize the ``block x 4`` dot with ``intrin``, fuse the epilogue.

    ``unpack`` names a block that produces the int8 weights from a narrower packed form
    (``x86_avx2_s4``): it is computed right before each reduction step, for the step's ``ob``
    weight tiles only, so the unpacked weights live in registers and never in memory.
    """
    sch = tvm.s_tir.Schedule(func)
    bias_as_init(sch)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, y, x, o, rh, rw, rc = sch.get_loops(acc)
    xo, xi = sch.split(x, [None, tile.tw])
    oo, om, oi = sch.split(o, [None, tile.ob, block])
    co, ci = sch.split(rc, [None, 4])
    # rows outermost: one parallel region per call whatever the batch (a region per image costs
    # a thread-pool wake-up each)
    sch.reorder(y, b, xo, oo, rh, rw, co, xi, om, oi, ci)
    sch.reverse_compute_at(out, oo)
    if unpack is not None:
        ub = sch.get_sblock(unpack)
        sch.compute_at(ub, co)
        *_, half, lanes = sch.get_loops(ub)
        sch.vectorize(lanes)
        sch.unroll(half)
    sch.parallel(y)
    sch.decompose_reduction(acc, rh)
    sch.tensorize(oi, intrin)
    sch.unroll(xi)
    sch.unroll(om)
    ox = sch.get_loops(out)[-1]
    sch.vectorize(ox)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def isa_functions(block: int, in_dtype: str, intrin_name: str, w_tile=None, w_index=_plain_tile):
    """``(pack_conv_weight, conv_compute, schedule_conv)`` of an ISA module whose instruction (or
    instruction sequence, registered as ``intrin_name``) computes a ``block x 4`` dot reading
    activations as ``in_dtype``, with weight (channel c, input k) of its tile at ``w_index(c, k)``
    in a ``w_tile``-shaped tile (default the plain ``(block, 4)``)."""
    tile = tuple(w_tile or (block, 4))

    def pack(w: np.ndarray) -> np.ndarray:
        """int8 OIHW (O % block == 0, I % 4 == 0) -> [O/block, KH, KW, I/4, *tile]."""
        plain = pack_conv_weight(w, block)
        out = np.empty(plain.shape[:-2] + tile, np.int8)
        for c in range(block):
            for k in range(4):
                out[(..., *w_index(c, k))] = plain[..., c, k]
        return out

    def compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, rq_dtype="int64",
                residual=None):
        """TE definition: padded NHWC input, packed weight, per-channel epilogue (and a fused
        residual add) -> NHWC."""
        return conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, in_dtype, block,
                            w_tile, w_index, rq_dtype, residual)

    def schedule(func: tvm.tirx.PrimFunc, tile_: ConvTile) -> tvm.tirx.PrimFunc:
        """``schedule_conv`` with the dot tensorized on the ISA's intrinsic."""
        intrin.register()
        return schedule_conv(func, tile_, block, intrin_name)

    return pack, compute, schedule


def im2col_compute(n, h, w, cin, in_dtype, kh, kw, stride, dilation, pad, k_padded, offset, out_dtype):
    """Patches of a conv with few input channels, NHWC: ``P[b, y, x, (i, j, c)]`` in ``out_dtype``.

    Padding (spatial, and channels up to ``k_padded``) and the offset that takes the input into
    the kernel's dtype (+128 int8 -> uint8, -128 uint8 -> int8) happen here, in the same pass:
    out of bounds reads give ``offset``, the shifted real zero.
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
        shifted = (v.astype("int16") + tirx.const(offset, "int16")).astype(out_dtype)
        return tirx.Select(inside, shifted, tirx.const(offset, out_dtype))

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
