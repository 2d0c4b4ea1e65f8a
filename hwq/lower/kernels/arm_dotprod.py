"""Integer conv2d / dense for the Armv8.2 dot product (Cortex-A76 and later): ``dot_conv`` on ``sdot``.

``sdot v.4s, v.16b, v.16b`` multiplies signed bytes only: a 4 x 4 block (4 output channels x 4
input channels, 16 MACs) per instruction. Activations are read as int8, so a uint8 input is
shifted by -128 (the mirror of the x86 kernel's +128) and ``128 * sum(w)`` is folded into the bias.
``usdot`` (u8 x s8) would avoid the shift but belongs to FEAT_I8MM, which the Cortex-A76 (Pi 5)
lacks; ``udot`` would need unsigned weights.

The block is 4 channels where VNNI's is 16, so layers with few channels pad less; a register
tile of ``tw`` pixels x ``ob`` blocks keeps ``tw * ob`` accumulators, ``ob`` weight blocks and
one broadcast pixel in the 32 128-bit NEON registers.
"""

from __future__ import annotations


from hwq.lower.kernels import dot_conv, intrin
from hwq.lower.kernels.dot_conv import ConvTile

FEATURE = "dotprod"      # the target feature (hwq/targets/*.toml [integer] features) the kernel needs
BLOCK = 4                # output channels per instruction: 4 int32 lanes of a q register
IN_DTYPE = "int8"        # what sdot reads activations as
_REGISTERS = 32          # v0-v31

__all__ = ["BLOCK", "FEATURE", "IN_DTYPE", "ConvTile", "candidates", "conv_compute", "default_tile",
           "pack_conv_weight", "schedule_conv"]


pack_conv_weight, conv_compute, schedule_conv = dot_conv.isa_functions(BLOCK, IN_DTYPE, intrin.SDOT_4x4)


def _fits(tw: int, ob: int) -> bool:
    return tw * ob + ob + 1 <= _REGISTERS     # accumulators + weight blocks + one broadcast


def candidates(ow: int, cout_p: int) -> list:
    """Tiles worth trying: pixel counts dividing the output width, 1-8 blocks of 4 channels."""
    out = []
    for ob in (4, 2, 8, 1):
        if (cout_p // BLOCK) % ob:
            continue
        for tw in sorted((d for d in range(1, min(ow, 14) + 1) if ow % d == 0), reverse=True):
            if _fits(tw, ob):
                out.append(ConvTile(tw, ob))
    return out


def default_tile(ow: int, cout_p: int) -> ConvTile:
    """The untuned tile (modelled, not measured on a Pi): the one that fits the registers with the
    most sdots per load, ``tw * ob / (tw + ob)`` (each reduction step loads ``ob`` weight blocks and
    ``tw`` pixels), up to 8 pixels; ties go to more channels."""
    tiles = [t for t in candidates(ow, cout_p) if t.tw <= 8]
    return max(tiles, key=lambda t: (t.tw * t.ob / (t.tw + t.ob), t.ob))
