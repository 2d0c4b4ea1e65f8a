"""Integer conv2d / dense on AVX2 with ``vpmaddubsw``, for layers where it is exact.

``vpmaddubsw`` multiplies 32 u8 x s8 byte pairs and adds adjacent products into int16 lanes with
saturation; a ``vpmaddwd`` by ones then adds the int16 pairs into int32 (``intrin.py``). One
intrinsic call is a block of 8 output channels x 4 input channels: 32 MACs for one ``vpmaddubsw``,
one ``vpmaddwd`` and one ``vpaddd``, against two ``vpmaddwd``, two ``vpaddd`` and the byte split
of the always-exact ``x86_avx2`` kernel. It is exact when no pair sum can pass 32767, i.e.
``2 * max(activation) * max|weight| <= 32767``: 7-bit weights ([-63, 63]) against any uint8
activation, or 7-bit activations ([0, 127]) against 8-bit weights. ``BitPlan`` expresses both
(``LayerSpec(weight_bits=7)``, ``act_bits=7``); the rule checks the bound on each layer's actual
weights and input range (``hwq.cost.options``, the bound the cost model reads too) and leaves
every other layer to ``x86_avx2``.
"""

from __future__ import annotations


from hwq.lower.kernels import dot_conv, intrin
from hwq.lower.kernels.dot_conv import ConvTile

FEATURE = "avx2"
BLOCK = 8                # output channels per intrinsic call: 8 int32 lanes of a ymm register
IN_DTYPE = "uint8"       # vpmaddubsw's unsigned operand
_REGISTERS = 16          # ymm0-15
_SCRATCH = 3             # the broadcast activation, the int16 products, the ones

__all__ = ["BLOCK", "FEATURE", "IN_DTYPE", "ConvTile", "candidates", "conv_compute", "default_tile",
           "pack_conv_weight", "schedule_conv"]



pack_conv_weight, conv_compute, schedule_conv = dot_conv.isa_functions(BLOCK, IN_DTYPE, intrin.MADDUBS_8x4)


def _fits(tw: int, ob: int) -> bool:
    return tw * ob + ob + _SCRATCH <= _REGISTERS     # accumulators + weight tiles + scratch


def candidates(ow: int, cout_p: int) -> list:
    """Tiles worth trying: pixel counts dividing the output width, 1, 2 or 4 blocks of 8 channels,
    within the 16 ymm registers."""
    widths = sorted((d for d in range(1, min(ow, 14) + 1) if ow % d == 0), reverse=True)
    return [ConvTile(tw, ob) for ob in (2, 1, 4) if (cout_p // BLOCK) % ob == 0 for tw in widths if _fits(tw, ob)]


def default_tile(ow: int, cout_p: int) -> ConvTile:
    """The untuned tile: of those that fit, the most MACs per load, ``tw * ob / (tw + ob)``."""
    return max(candidates(ow, cout_p), key=lambda t: (t.tw * t.ob / (t.tw + t.ob), t.ob))
