"""Integer conv2d / dense for x86 with AVX2 but no AVX-512 VNNI (Zen 3, Haswell, Skylake): ``vpmaddwd``.

AVX2 has no 4-byte dot product. ``vpmaddwd ymm`` multiplies 16 int16 lanes and adds adjacent
pairs into 8 int32 lanes; with activations zero-extended from uint8 and weights sign-extended from
int8 it is exact (see ``intrin.py``, which also says why ``vpmaddubsw`` is not). One intrinsic
call is a block of 8 output channels x 4 input channels: two ``vpmaddwd`` (inputs (0, 2), then
(1, 3)) and two ``vpaddd``, 32 MACs, into one ymm accumulator per 8 channels.

Activations are read as uint8 like VNNI's (+128 on a signed input, folded into the bias); the
weight tile is stored in the pair order the instruction wants (``intrin.avx2_tile_index``).
Measured on Zen 3 (64 -> 64 3x3 conv, 14x14): int16 weights packed ahead of time were no faster
than sign-extending int8 ones in the kernel, and int16 activations (no byte split) only about 8%
faster inside the kernel, at twice the activation bytes and a widening pass before every conv.
Both at once (int16 activation pairs broadcast from memory, int16 weights as ``vpmaddwd``'s memory
operand, so that all 16 registers but 4 hold accumulators; llvm-mca for znver3 predicts 1.7x) ran
ResCNN's 3x3 convs 1.00-1.11x faster alone (7 interleaved rounds, batch 16) and MobileNetV2's
1x1 convs 0.86-1.21x, and the whole ResCNN no faster once the widening pass was in: not kept.
Nor a loop order with channel blocks outermost (weights kept in L1 while every pixel streams
past): slower on every MobileNetV2 conv but the classifier, at batch 1 and 16. What bounds this
kernel is the vector ALU ops per MAC (about 24 per 128 MACs against 16 for ``vpmaddwd`` +
``vpaddd`` alone): the byte split and the weight extension share the four pipes.
"""

from __future__ import annotations


from hwq.lower.kernels import dot_conv, intrin
from hwq.lower.kernels.dot_conv import ConvTile

FEATURE = "avx2"         # the target feature (hwq/targets/*.toml [integer] features) the kernel needs
BLOCK = 8                # output channels per intrinsic call: 8 int32 lanes of a ymm register
IN_DTYPE = "uint8"       # zero-extended to int16 inside the intrinsic
_REGISTERS = 16          # ymm0-15
_SCRATCH = 5             # two activation halves, their mask, two vpmaddwd products

__all__ = ["BLOCK", "FEATURE", "IN_DTYPE", "ConvTile", "candidates", "conv_compute", "default_tile",
           "pack_conv_weight", "schedule_conv"]


# weight (c, k) of a block at [k % 2, c, k // 2]: each vpmaddwd reads one contiguous 16-byte half
pack_conv_weight, conv_compute, schedule_conv = dot_conv.isa_functions(
    BLOCK, IN_DTYPE, intrin.AVX2_8x4, intrin.AVX2_TILE, intrin.avx2_tile_index)


def _fits(tw: int, ob: int) -> bool:
    return tw * ob + 2 * ob + _SCRATCH <= _REGISTERS     # accumulators + weight halves + scratch


def _macs_per_op(t: ConvTile) -> float:
    """MACs per vector ALU op of one reduction step: each pixel costs ``ob`` x (2 vpmaddwd +
    2 vpaddd) plus 2 ops splitting its bytes, each block 2 ``vpmovsxbw`` of its weights."""
    return 32 * t.tw * t.ob / (t.tw * (4 * t.ob + 2) + 2 * t.ob)


def candidates(ow: int, cout_p: int) -> list:
    """Tiles worth trying: pixel counts dividing the output width, 1, 2 or 4 blocks of 8 channels.

    Those that fit the 16 ymm registers come first; then 4 blocks x up to 2 pixels, whose weights
    do not fit and are re-read from L1 (measured on Zen 3 about as fast as 2 x 2 on 64 channels)."""
    widths = sorted((d for d in range(1, min(ow, 14) + 1) if ow % d == 0), reverse=True)
    out = [ConvTile(tw, ob) for ob in (1, 2) if (cout_p // BLOCK) % ob == 0 for tw in widths if _fits(tw, ob)]
    if (cout_p // BLOCK) % 4 == 0:
        out += [ConvTile(tw, 4) for tw in widths if tw <= 2]
    return out


def default_tile(ow: int, cout_p: int) -> ConvTile:
    """The untuned tile: of those that fit the registers, the most MACs per ALU op."""
    return max((t for t in candidates(ow, cout_p) if _fits(t.tw, t.ob)), key=_macs_per_op)
