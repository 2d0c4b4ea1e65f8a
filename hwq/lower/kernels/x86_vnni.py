"""Integer conv2d / dense for AVX-512 VNNI: the ``dot_conv`` kernel on ``vpdpbusd``.

``vpdpbusd zmm`` multiplies unsigned by signed bytes (u8 x s8 -> s32, 64 MACs per instruction):
activations are read as uint8 (a signed input is shifted by +128 and the shift is folded into the
bias), weights int8 in blocks of 16 output channels x 4 input channels, one zmm load each.
"""

from __future__ import annotations


from hwq.lower.kernels import dot_conv, intrin
from hwq.lower.kernels.dot_conv import ConvTile

FEATURE = "avx512vnni"   # the target feature (hwq/targets/*.toml [integer] features) the kernel needs
BLOCK = 16               # output channels per instruction: 16 int32 lanes of a zmm register
IN_DTYPE = "uint8"       # what vpdpbusd reads activations as
_REGISTERS = 32          # zmm0-31

__all__ = ["BLOCK", "FEATURE", "IN_DTYPE", "ConvTile", "candidates", "conv_compute", "default_tile",
           "pack_conv_weight", "schedule_conv"]


pack_conv_weight, conv_compute, schedule_conv = dot_conv.isa_functions(BLOCK, IN_DTYPE, intrin.VNNI_16x4)


def candidates(ow: int, cout_p: int) -> list:
    """Tiles worth trying: pixel counts dividing the output width, 1-4 channel blocks, within
    the 32 zmm registers (accumulators + weights + one broadcast)."""
    out = []
    for ob in (2, 1, 4):
        if (cout_p // BLOCK) % ob:
            continue
        for tw in sorted((d for d in range(1, min(ow, 14) + 1) if ow % d == 0), reverse=True):
            if tw * ob + ob + 1 <= _REGISTERS:
                out.append(ConvTile(tw, ob))
    return out


def default_tile(ow: int, cout_p: int) -> ConvTile:
    """The untuned tile: up to 8 pixels x 32 channels (16 + 2 + 1 registers)."""
    return ConvTile(tw=max(d for d in range(1, min(ow, 8) + 1) if ow % d == 0), ob=2 if cout_p % 32 == 0 else 1)
