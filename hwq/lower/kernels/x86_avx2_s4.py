"""Integer conv2d / dense with 4-bit weights on AVX2: packed two per byte, unpacked in registers.

Weights quantized to 4 bits (``LayerSpec(weight_bits=4)``: [-7, 7]) are stored as nibbles, half
the bytes of int8: one ``8 x 4`` weight tile (8 output channels x 4 input channels, what one
``vpmaddubsw`` multiplies) is 16 bytes, lane ``j`` of the tile in byte ``j % 16``, low nibble for
``j < 16``, high nibble above. Right before each reduction step the kernel unpacks the step's
tiles into int8 (a shift, a mask and a sign fix ``(v ^ 8) - 8`` per 16 bytes, ``unpack`` below)
and runs the ``x86_avx2_maddubs`` dot on them: with 4-bit weights ``vpmaddubsw`` cannot saturate
(``2 * 255 * 8 < 32767``). The unpacked tile exists only inside the step (``dot_conv.schedule_conv``
computes it there), so memory holds the packed weights only: what pays on layers whose weights
do not stay in cache (large dense layers at batch 1).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from hwq.lower.kernels import dot_conv, intrin
from hwq.lower.kernels.dot_conv import ConvTile
from hwq.lower.kernels.x86_avx2_maddubs import BLOCK, FEATURE, IN_DTYPE, candidates, default_tile

WEIGHT_MAX = 7           # symmetric 4-bit weights
UNPACK = "w_unpack"      # the block that unpacks a tile, scheduled inside the reduction

__all__ = ["BLOCK", "FEATURE", "IN_DTYPE", "ConvTile", "candidates", "conv_compute", "default_tile",
           "pack_conv_weight", "schedule_conv"]



def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """int8 OIHW in [-8, 7] (O % 8 == 0, I % 4 == 0) -> uint8 [O/8, KH, KW, I/4, 16]: tile lane j
    (= channel * 4 + input) in byte ``j % 16``, the low nibble for j < 16, the high one above."""
    lanes = dot_conv.pack_conv_weight(w, BLOCK)
    lanes = lanes.reshape(*lanes.shape[:-2], 32).astype(np.uint8) & 0x0F
    return np.ascontiguousarray(lanes[..., :16] | (lanes[..., 16:] << 4))


def conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, rq_dtype="int64",
                 residual=None):
    """TE definition: packed weights, their unpacking (block ``w_unpack``), the ``x86_avx2_maddubs``
    conv on the unpacked tiles, per-channel epilogue (and a fused residual add) -> NHWC."""
    shape = (cout // BLOCK, kh, kw, cin // 4)
    W4 = te.placeholder((*shape, 16), "uint8", name="W")
    W8 = te.compute((*shape, 2, 16), lambda o, i, j, k, h, b: (
        (((W4[o, i, j, k, b].astype("int32") >> (4 * h)) & 15) ^ 8) - 8).astype("int8"), name=UNPACK)
    args = dot_conv.packed_conv_compute(
        n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, IN_DTYPE, None,
        lambda o, rh, rw, rc: (o // BLOCK, rh, rw, rc // 4, *intrin.s4_tile_index(o % BLOCK, rc % 4)), rq_dtype, weight=W8,
        residual=residual)
    return [args[0], W4, *args[2:]]


def schedule_conv(func: tvm.tirx.PrimFunc, tile: ConvTile) -> tvm.tirx.PrimFunc:
    """``dot_conv.schedule_conv`` on ``vpmaddubsw``, each step's tiles unpacked just before it."""
    intrin.register()
    return dot_conv.schedule_conv(func, tile, BLOCK, intrin.MADDUBS_8x4_S4, unpack=UNPACK)
