"""float32 NHWC conv2d (groups == 1) on CPUs: FMA over output-channel vectors, fused epilogue.

The int kernels' layout (``dot_conv``) without the dot product: a float MAC is one FMA lane, so a
reduction step broadcasts one input value of each of ``tw`` output pixels and multiplies it into
``ob`` vectors of ``block`` output channels (``vfmadd231ps`` on a ``vbroadcastss`` on x86, ``fmla``
on NEON). The ``tw x ob`` accumulators stay in registers across the whole reduction (kh x kw x C);
the bias is their initial value, and the epilogue (residual add, clamp) runs on the tile right
after it. The stem's 3 input channels need no im2col: a broadcast reads one float whatever the
channel count, so a 3x3x3 stem is just a 27-step reduction.

Weights are packed ahead of time as ``[ceil(O/block), KH, KW, C, block]``: the ``block`` weights
one FMA reads are one vector load. Output channels are padded up to a multiple of ``block`` in the
weights and the bias only; the kernel writes the real ``O`` channels.

Padding happens inside the kernel, as a bounds test on the reads (``padded_input``): the graph
needs no padding pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from hwq.lower.kernels.bias_init import bias_as_init

F32 = "float32"
MAX_TW = 16          # output pixels per register tile


@dataclass(frozen=True)
class FloatConvTile:
    """Register tile: ``tw`` output pixels of a row x ``ob`` vectors of ``block`` output channels."""

    tw: int = 8
    ob: int = 2


def pack_weight(w: np.ndarray, block: int) -> np.ndarray:
    """float32 OIHW -> ``[ceil(O/block), KH, KW, I, block]``, the padding channels zero."""
    o, i, kh, kw = w.shape
    op = -(-o // block) * block
    wp = np.zeros((op, i, kh, kw), np.float32)
    wp[:o] = w
    return np.ascontiguousarray(wp.reshape(op // block, block, i, kh, kw).transpose(0, 3, 4, 2, 1))


def pad_bias(bias: np.ndarray | None, cout: int, cout_p: int) -> np.ndarray:
    """float32 bias of ``cout_p`` channels (zeros past ``cout``, and for a conv without bias)."""
    out = np.zeros(cout_p, np.float32)
    if bias is not None:
        out[:cout] = bias
    return out


def epilogue(v, act, r=None):
    """``clamp(v + r, lo, hi)``: ``act`` is ``(lo, hi)`` (an infinite bound clamps nothing) or None."""
    if r is not None:
        v = v + r
    if act is not None:
        lo, hi = act
        if math.isfinite(lo):
            v = tirx.max(v, tirx.const(lo, F32))
        if math.isfinite(hi):
            v = tirx.min(v, tirx.const(hi, F32))
    return v


def out_size(size: int, k: int, stride: int, dilation: int, before: int, after: int) -> int:
    """Output extent of a conv along one axis."""
    return (size + before + after - dilation * (k - 1) - 1) // stride + 1


def padded_input(X, h: int, w: int, pad):
    """``(b, y, x, k) -> X`` zero-padded by ``pad = (top, bottom, left, right)``, for reading inside a reduction.

    The padding is a bounds test on each read, not a padded copy: TVM emits it as a branch that
    LLVM hoists out of the loops where it is invariant (a whole channel reduction, or all taps
    of an interior pixel). Measured on Zen 5 against a copy of the ``kh`` padded input rows
    made per output row: depthwise 3x3 convs 1.3-1.9x faster, the 224x224 stem about 10%.
    """
    pt, _, pl, _ = pad
    if not any(pad):
        return lambda b, y, x, k: X[b, y, x, k]
    return lambda b, y, x, k: tirx.if_then_else(
        tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl), X[b, y - pt, x - pl, k], tirx.const(0.0, F32))


def with_epilogue(acc, B, n, oh, ow, cout, act, residual: bool):
    """The ``out`` stage of ``cout`` channels: ``clamp(acc + bias [+ R])``; returns ``(extra inputs, out)``."""
    if not residual:
        return [], te.compute((n, oh, ow, cout), lambda b, y, x, o: epilogue(acc[b, y, x, o] + B[o], act), name="out")
    R = te.placeholder((n, oh, ow, cout), F32, name="R")
    return [R], te.compute((n, oh, ow, cout), lambda b, y, x, o: epilogue(acc[b, y, x, o] + B[o], act, R[b, y, x, o]),
                           name="out")


def conv_compute(n, h, w, cin, cout, kh, kw, stride, dilation, pad, block, act, residual: bool):
    """TE definition: raw NHWC input, packed weight, bias (``cout`` rounded up to ``block``), [residual] -> NHWC.

    Returns ``[X, W, bias, out]`` or ``[X, W, bias, R, out]``; ``out`` is ``(n, OH, OW, cout)``.
    """
    oh = out_size(h, kh, stride[0], dilation[0], pad[0], pad[1])
    ow = out_size(w, kw, stride[1], dilation[1], pad[2], pad[3])
    cout_p = -(-cout // block) * block
    X = te.placeholder((n, h, w, cin), F32, name="X")
    Xp = padded_input(X, h, w, pad)
    W = te.placeholder((cout_p // block, kh, kw, cin, block), F32, name="W")
    B = te.placeholder((cout_p,), F32, name="bias")
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cin), "rc")
    acc = te.compute(
        (n, oh, ow, cout_p),
        lambda b, y, x, o: te.sum(Xp(b, y * stride[0] + rh * dilation[0], x * stride[1] + rw * dilation[1], rc)
                                  * W[o // block, rh, rw, rc, o % block], axis=[rh, rw, rc]), name="acc")
    extra, out = with_epilogue(acc, B, n, oh, ow, cout, act, residual)
    return [X, W, B, *extra, out]


def schedule_conv(func: tvm.tirx.PrimFunc, tile: FloatConvTile, block: int,
                  tile_parallel: bool = False) -> tvm.tirx.PrimFunc:
    """Rows (``tile_parallel``: tiles) in parallel, each tile a ``tw x ob*block`` register tile
    accumulated over (kh, kw, C), the epilogue on the tile right after its reduction.
    ``tile_parallel`` is for a conv without padding."""
    sch = tvm.s_tir.Schedule(func)
    bias_as_init(sch)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, y, x, o, rh, rw, rc = sch.get_loops(acc)
    xo, xi = sch.split(x, [None, tile.tw])
    oo, om, oi = sch.split(o, [None, tile.ob, block])
    sch.reorder(y, b, xo, oo, rh, rw, rc, xi, om, oi)
    sch.reverse_compute_at(out, oo)
    # one parallel loop (one parallel region per call, whatever the batch). Without padding it
    # runs over every tile, so a 7x7 layer splits evenly over the cores at batch 1 too, which its
    # 7 rows alone would not; with padding, over rows only: the pixel tile's coordinate out of
    # the fused index hid the bounds tests' invariance from LLVM (2.5x slower on a 3x3 conv).
    sch.parallel(sch.fuse(y, b, xo, oo) if tile_parallel else sch.fuse(y, b))
    sch.unroll(xi)
    sch.unroll(om)
    sch.vectorize(oi)
    sch.decompose_reduction(acc, rh)
    vectorize_epilogue(sch, out, block)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def vectorize_epilogue(sch, out, block: int) -> None:
    """Vectorize the epilogue's channel loop in vectors that never straddle the last real channel.

    With channels padded (24 real of 2 x 16), the tile's channel loop carries the predicate
    ``c < 24``; a 16-lane vector would straddle it and TVM would scalarize the whole loop (LLVM
    then emits gathers and scatters). In ``gcd(channels, block)``-lane vectors (8 here) the
    predicate holds or fails for whole vectors, and the simplifier reduces it to a test on the
    vector index.
    """
    channels = int(sch.get(out).writes[0].source.shape[-1])
    ox = sch.get_loops(out)[-1]
    sch.vectorize(sch.split(ox, [None, math.gcd(channels, block)])[1])


def fits(tw: int, ob: int, registers: int) -> bool:
    """Accumulators, the step's weight vectors and two broadcasts fit the vector registers: LLVM
    loads the next broadcast before the last FMA of the current one (with one, 14 x 1 on the 16
    AVX2 registers spilled and ran 4x slower than 7 x 1)."""
    return tw * ob + ob + 2 <= registers


def _tiles(ow: int, blocks: int, registers: int) -> list:
    widths = [d for d in range(1, min(ow, MAX_TW) + 1) if ow % d == 0]
    return [FloatConvTile(tw, ob) for ob in range(1, 5) if blocks % ob == 0 for tw in widths if fits(tw, ob, registers)]


def candidates(ow: int, blocks: int, registers: int) -> list:
    """Tiles worth timing: pixel counts dividing the output width, 1-4 channel vectors dividing
    the layer's, within the registers; the default first."""
    first = default_tile(ow, blocks, registers)
    return [first] + [t for t in _tiles(ow, blocks, registers) if t != first]


def default_tile(ow: int, blocks: int, registers: int) -> FloatConvTile:
    """The untuned tile: of those that fit, the most FMAs per load (``tw * ob / (tw + ob)``: a
    step loads ``ob`` weight vectors and broadcasts ``tw`` inputs); ties go to more accumulators."""
    return max(_tiles(ow, blocks, registers), key=lambda t: (t.tw * t.ob / (t.tw + t.ob), t.tw * t.ob))
