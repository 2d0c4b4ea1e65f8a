"""Depthwise conv2d (groups == channels) on any CPU: NHWC, channel vectors, fused epilogue.

A depthwise conv has no reduction over channels, so no dot-product instruction applies; it is a
memory-bound stencil. Channels are the contiguous axis in NHWC, so 16 of them fill one int32
vector: each tap is a widening load of input and weight, a multiply and an add, and a tile of
``tw`` pixels x ``cb`` vectors of accumulators stays in registers across the kh x kw taps.
On x86, LLVM already turns each tap's int32 multiply of a zero-extended input and a sign-extended
weight into ``vpmaddwd`` (half its lanes zero). Pairing two taps per ``vpmaddwd`` would fill the
other half; written as plain TE (a reduction over tap pairs, weights stored as int16 pairs) LLVM
did not form it and the kernels ran 2-3x slower on Zen 3, so it would take a tensor intrinsic that
interleaves two taps' bytes (not done).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import te, tirx

from hwq.lower.kernels.bias_init import bias_as_init
from hwq.lower.kernels.dot_conv import epilogue


@dataclass(frozen=True)
class DepthwiseTile:
    """``tw`` output pixels x ``cb`` vectors of ``lanes`` channels."""

    tw: int = 4
    cb: int = 2
    lanes: int = 16


PAD = "pad"        # the padding block (``depthwise_compute`` with ``pad``)
_ACC_LANES = 128   # int32 accumulators a tile may keep: 16 ymm (AVX2), a quarter of the zmm / NEON files


def _has_block(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 (TVM raises its own error type for a missing block)
        return False


def candidates(ow: int, c: int) -> list:
    """Tiles worth timing: up to 8 pixels (dividing the output width) x 1 or 2 vectors of 16 or 8
    channels, whose accumulators fit ``_ACC_LANES``; the most promising (4 x 16, measured) first."""
    widths = [d for d in range(1, min(ow, 8) + 1) if ow % d == 0]
    tiles = [DepthwiseTile(tw, cb, lanes) for lanes in (16, 8) for cb in (1, 2) if c % (cb * lanes) == 0
             for tw in widths if tw * cb * lanes <= _ACC_LANES]
    first = default_tile(ow, c)
    return [first] + [t for t in tiles if t != first]


def default_tile(ow: int, c: int) -> DepthwiseTile:
    """The untuned tile: 4 (or fewer, dividing the width) pixels x 16 channels."""
    return DepthwiseTile(tw=max(d for d in range(1, min(ow, 4) + 1) if ow % d == 0), cb=1, lanes=16)


def depthwise_compute(n, hp, wp, c, in_dtype, kh, kw, stride, dilation, out_dtype, qmin, qmax, rq_dtype="int64",
                      pad=(0, 0)):
    """TE definition: NHWC input, weight [KH, KW, C] int8, per-channel epilogue -> NHWC.

    With ``pad = (ph, pw)`` the input is ``(hp - 2 ph, wp - 2 pw)`` and the kernel pads it itself
    (block ``pad``, zeros: the real zero of a depthwise input, which has no offset), so the graph
    needs no padding pass; ``hp``, ``wp`` are the padded sizes either way.
    """
    ph, pw = pad
    oh = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    X = te.placeholder((n, hp - 2 * ph, wp - 2 * pw, c), in_dtype, name="X")
    Xp = X
    if ph or pw:
        h, w = hp - 2 * ph, wp - 2 * pw
        Xp = te.compute((n, hp, wp, c), lambda b, y, x, k: tirx.if_then_else(
            tirx.all(y >= ph, y < h + ph, x >= pw, x < w + pw), X[b, y - ph, x - pw, k], tirx.const(0, in_dtype)),
            name=PAD)
    W = te.placeholder((kh, kw, c), "int8", name="W")
    B = te.placeholder((c,), "int32", name="bias")
    M = te.placeholder((c,), rq_dtype, name="mult")
    S = te.placeholder((c,), rq_dtype, name="shift")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    acc = te.compute(
        (n, oh, ow, c),
        lambda b, y, x, k: te.sum(Xp[b, y * stride[0] + rh * dilation[0], x * stride[1] + rw * dilation[1], k].astype("int32")
                                  * W[rh, rw, k].astype("int32"), axis=[rh, rw]), name="acc")
    out = te.compute((n, oh, ow, c), lambda b, y, x, k: epilogue(acc[b, y, x, k], B[k], M[k], S[k], out_dtype, qmin, qmax),
                     name="out")
    return [X, W, B, M, S, out]


def schedule_depthwise(func: tvm.tirx.PrimFunc, tile: DepthwiseTile) -> tvm.tirx.PrimFunc:
    """Rows in parallel (one region per call), a register tile of pixels x channel vectors; the
    padding block, if any, fills the ``kh`` input rows each output row reads (per image), so the
    padded copy is a few KB in cache instead of a pass over the whole tensor in memory."""
    sch = tvm.s_tir.Schedule(func)
    bias_as_init(sch)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, y, x, k, rh, rw = sch.get_loops(acc)
    xo, xi = sch.split(x, [None, tile.tw])
    ko, km, ki = sch.split(k, [None, tile.cb, tile.lanes])
    sch.reorder(y, b, xo, ko, rh, rw, xi, km, ki)
    sch.reverse_compute_at(out, ko)
    if _has_block(sch, PAD):
        pad = sch.get_sblock(PAD)
        sch.compute_at(pad, b)
        _, lanes = sch.split(sch.get_loops(pad)[-1], [None, tile.lanes])
        sch.vectorize(lanes)
    sch.parallel(y)
    sch.unroll(xi)
    sch.unroll(km)
    sch.vectorize(ki)
    sch.decompose_reduction(acc, rh)
    ox = sch.get_loops(out)[-1]
    _, ov = sch.split(ox, [None, tile.lanes])
    sch.vectorize(ov)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)
