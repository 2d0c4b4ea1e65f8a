"""Integer conv2d / dense for Armv8.0 NEON without the dot product (Cortex-A72, Raspberry Pi 4).

No 4-byte dot product before Armv8.2: ``smull`` multiplies 8 int8 pairs into int16 and ``sadalp``
adds adjacent int16 pairs into int32 lanes (``intrin.py``). One intrinsic call is a block of 8
output channels x 4 input channels, 4 ``smull`` + 4 ``sadalp``, 32 MACs, into two q-register
accumulators. Activations are int8 like ``sdot``'s (-128 on a uint8 input, folded into the bias);
the weight tile is stored pair by pair (``intrin.neon_tile_index``). The A72 issues one ``smull``
per cycle on its F0 pipe: 8 MACs per cycle at best, a quarter of what ``sdot`` does on the A76.
Tiles are modelled on the register file, not measured on a Pi (none at hand).
"""

from __future__ import annotations


from hwq.lower.kernels import dot_conv, intrin
from hwq.lower.kernels.dot_conv import ConvTile

FEATURE = "neon"         # the target feature (hwq/targets/*.toml [integer] features) the kernel needs
BLOCK = 8                # output channels per intrinsic call: two int32x4 accumulators
IN_DTYPE = "int8"        # smull's signed form
_REGISTERS = 32          # v0-v31
_SCRATCH = 6             # two broadcast activation pairs, four products (reused in turn)

__all__ = ["BLOCK", "FEATURE", "IN_DTYPE", "ConvTile", "candidates", "conv_compute", "default_tile",
           "pack_conv_weight", "schedule_conv"]


# weight (c, k) of a block at [k // 2, c, k % 2]: each smull reads 8 contiguous bytes
pack_conv_weight, conv_compute, schedule_conv = dot_conv.isa_functions(
    BLOCK, IN_DTYPE, intrin.NEON_8x4, intrin.NEON_TILE, intrin.neon_tile_index)


def _fits(tw: int, ob: int) -> bool:
    return 2 * tw * ob + 2 * ob + _SCRATCH <= _REGISTERS   # accumulators + weight tiles + scratch


def candidates(ow: int, cout_p: int) -> list:
    """Tiles worth trying: pixel counts dividing the output width, 1, 2 or 4 blocks of 8 channels,
    within the 32 q registers."""
    widths = sorted((d for d in range(1, min(ow, 14) + 1) if ow % d == 0), reverse=True)
    return [ConvTile(tw, ob) for ob in (2, 1, 4) if (cout_p // BLOCK) % ob == 0 for tw in widths if _fits(tw, ob)]


def default_tile(ow: int, cout_p: int) -> ConvTile:
    """The untuned tile: of those that fit, the most MACs per load, ``tw * ob / (tw + ob)`` (a
    reduction step loads ``ob`` weight tiles and ``tw`` activation words); ties go to more channels."""
    return max(candidates(ow, cout_p), key=lambda t: (t.tw * t.ob / (t.tw + t.ob), t.ob))
