"""Tensor intrinsics hwq registers with TVM (idempotently: registering twice is an error in TVM).

All compute ``C[block] (int32) += A[4] (broadcast) . B[block, 4] (int8)``:

``hwq_dot_16x4_u8s8s32_vnni``: A uint8, one ``vpdpbusd zmm``. The TVM wheel ships such an
intrinsic, but it passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512`` while LLVM 22
declares ``<64 x i8>``, so the LLVM verifier rejects it; this copy reinterprets the operands to
the declared types.

``hwq_dot_4x4_s8s8s32_sdot``: A int8, one Armv8.2 ``sdot v.4s, v.16b, v.16b`` (each int32 lane i
adds the dot of bytes 4i..4i+3 of both operands, so A's 4 bytes are broadcast to all four lanes).

``hwq_dot_8x4_u8s8s32_avx2``: A uint8, AVX2 without VNNI: two ``vpmaddwd ymm`` and two
``vpaddd``. ``vpmaddwd`` multiplies int16 lanes and adds adjacent pairs into int32, exactly: a
zero-extended u8 times a sign-extended s8 is at most 255 * 128 in magnitude, a pair sum 65280.
(``vpmaddubsw`` would read the bytes directly, but it adds its pairs into int16 with saturation,
and 2 * 255 * 127 > 32767: not exact.) A's 4 bytes, broadcast as int32 lanes, are split into
int16 pairs by masks, ``(A0, A2)`` and ``(A1, A3)``, so each ``vpmaddwd`` fills all 8 lanes with
one pixel's partial sums of 8 channels and no horizontal add is needed. The tile is therefore
stored as ``B[k % 2, c, k // 2]`` (``avx2_tile_index``): the weights meeting ``(A0, A2)`` in one
16-byte half, those meeting ``(A1, A3)`` in the other, each sign-extended to int16 on load.

``hwq_dot_8x4_u8s8s32_avx2_maddubs``: A uint8, AVX2, for layers whose int16 pair sums cannot
saturate (``2 * max(A) * max|B| <= 32767``: 7-bit weights, or 7-bit activations): one
``vpmaddubsw`` (u8 x s8, adjacent pairs into int16), one ``vpmaddwd`` by ones (pairs into int32),
one ``vpaddd``, with no byte splitting: half the multiply-port work of the exact 8-bit form.
This is the instruction sequence onnxruntime's MLAS uses on AVX2 for every layer; hwq only uses it
where it is exact (``hwq.cost.options.KERNELS``).

``hwq_dot_8x4_s8s8s32_neon``: A int8, Armv8.0 NEON without the dot product (Cortex-A72): four
``smull v.8h, v.8b, v.8b`` and four ``sadalp v.4s, v.8h`` (written as an add of ``saddlp``, which
LLVM selects as ``sadalp``; LLVM has no ``sadalp`` intrinsic). ``smull`` multiplies 8 int8 pairs into
exact int16 products (``|-128 * -128| = 16384``), ``sadalp`` adds adjacent int16 pairs into the int32
accumulator lanes: like ``vpmaddwd``, a pair of inputs per lane. A's pairs ``(A0, A1)`` and
``(A2, A3)`` are broadcast as int16 lanes; the tile is stored as ``B[k // 2, c, k % 2]``
(``neon_tile_index``), 8 bytes per ``smull``: 4 channels x one input pair. Summing two products in
int16 before ``sadalp`` would overflow (2 x 16384 > 32767), so each product vector is accumulated.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

# Not imported from tvm.s_tir.tensor_intrin: that package builds every backend's intrinsics on
# import (its CUDA ones alone take about a minute of CPU time).
VNNI_16x4 = "hwq_dot_16x4_u8s8s32_vnni"
SDOT_4x4 = "hwq_dot_4x4_s8s8s32_sdot"
AVX2_8x4 = "hwq_dot_8x4_u8s8s32_avx2"
AVX2_TILE = (2, 8, 2)   # the AVX2 intrinsic's weight tile, see avx2_tile_index
MADDUBS_8x4 = "hwq_dot_8x4_u8s8s32_avx2_maddubs"
MADDUBS_8x4_S4 = "hwq_dot_8x4_u8s8s32_avx2_maddubs_t2x16"   # the same on a tile laid out [j // 16, j % 16]
NEON_8x4 = "hwq_dot_8x4_s8s8s32_neon"
NEON_TILE = (2, 8, 2)   # the NEON intrinsic's weight tile, see neon_tile_index


def avx2_tile_index(c, k):
    """Where weight (channel ``c``, input ``k``) sits in the AVX2 tile ``[2, 8, 2]``."""
    return k % 2, c, k // 2


def neon_tile_index(c, k):
    """Where weight (channel ``c``, input ``k``) sits in the NEON tile ``[2, 8, 2]``."""
    return k // 2, c, k % 2


def _dot_desc(block: int, a_dtype: str, tile=None, index=lambda c, k: (c, k)):
    """What the instruction computes: C[i] += sum_k int32(A[k]) * int32(B[index(i, k)])."""
    tile = tile or (block, 4)
    whole = tuple(slice(0, d) for d in tile)

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer(tile, "int8", offset_factor=1),
             C: T.Buffer((block,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:block], A[0:4], B[whole])
            T.writes(C[0:block])
            for i, k in T.grid(block, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[index(vi, vk)], "int32")

    return desc


@T.prim_func(s_tir=True)
def _vnni_16x4_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                    C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), a_u8x64, B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


@T.prim_func(s_tir=True)
def _sdot_4x4_impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4, 4), "int8", offset_factor=1),
                   C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a_s8x16 = T.reinterpret(T.broadcast(a_i32, 4), dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"), B.vload([0, 0], dtype="int8x16"), a_s8x16, dtype="int32x4")


@T.prim_func(s_tir=True)
def _avx2_8x4_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((2, 8, 2), "int8", offset_factor=1),
                   C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:2, 0:8, 0:2])
        T.writes(C[0:8])
        a = T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8)   # A0 A1 A2 A3 per lane
        low = T.broadcast(T.int32(0x00FF00FF), 8)
        a02 = T.reinterpret(a & low, dtype="int16x16")                                # int16 pairs (A0, A2)
        a13 = T.reinterpret((a >> T.broadcast(T.int32(8), 8)) & low, dtype="int16x16")  # (A1, A3)
        w02 = B.vload([0, 0, 0], "int8x16").astype("int16x16")                        # vpmovsxbw
        w13 = B.vload([1, 0, 0], "int8x16").astype("int16x16")
        p02 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a02, w02, dtype="int32x8")
        p13 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a13, w13, dtype="int32x8")
        # the two products first: one vpaddd per step on the accumulator's dependency chain
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + (p02 + p13)


def _maddubs_impl(tile):
    """One ``vpmaddubsw`` + ``vpmaddwd`` by ones + ``vpaddd``; the 32 weight bytes are contiguous in
    either tile shape, ``(8, 4)`` or ``(2, 16)``."""
    whole = tuple(slice(0, d) for d in tile)
    origin = [0] * len(tile)

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer(tile, "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[whole])
            T.writes(C[0:8])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8), dtype="uint8x32")
            p16 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a,
                                          B.vload(origin, "int8x32"), dtype="int16x16")
            p32 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), p16,
                                          T.broadcast(T.int16(1), 16), dtype="int32x8")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + p32

    return impl


def s4_tile_index(c, k):
    """Where lane ``j = c * 4 + k`` of an unpacked 4-bit tile sits: ``[j // 16, j % 16]``."""
    return (c * 4 + k) // 16, (c * 4 + k) % 16


@T.prim_func(s_tir=True)
def _neon_8x4_impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((2, 8, 2), "int8", offset_factor=1),
                   C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:2, 0:8, 0:2])
        T.writes(C[0:8])
        a01 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x2"), dtype="int16"), 4), dtype="int8x8")
        a23 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([2], "int8x2"), dtype="int16"), 4), dtype="int8x8")
        # channels 0-3 and 4-7, inputs (0, 1) then (2, 3)
        p0 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), B.vload([0, 0, 0], "int8x8"), a01, dtype="int16x8")
        p1 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), B.vload([0, 4, 0], "int8x8"), a01, dtype="int16x8")
        p2 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), B.vload([1, 0, 0], "int8x8"), a23, dtype="int16x8")
        p3 = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), B.vload([1, 4, 0], "int8x8"), a23, dtype="int16x8")
        # accumulator + saddlp (pairwise widening add) is what LLVM selects as sadalp
        C[T.ramp(T.int32(0), 1, 4)] = (C.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), p0, dtype="int32x4")) + \
            T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), p2, dtype="int32x4")
        C[T.ramp(T.int32(4), 1, 4)] = (C.vload([4], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), p1, dtype="int32x4")) + \
            T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), p3, dtype="int32x4")


# name -> (description factory, implementation factory): built at registration only
_INTRINSICS = {VNNI_16x4: (lambda: _dot_desc(16, "uint8"), lambda: _vnni_16x4_impl),
               SDOT_4x4: (lambda: _dot_desc(4, "int8"), lambda: _sdot_4x4_impl),
               AVX2_8x4: (lambda: _dot_desc(8, "uint8", AVX2_TILE, avx2_tile_index), lambda: _avx2_8x4_impl),
               MADDUBS_8x4: (lambda: _dot_desc(8, "uint8"), lambda: _maddubs_impl((8, 4))),
               MADDUBS_8x4_S4: (lambda: _dot_desc(8, "uint8", (2, 16), s4_tile_index), lambda: _maddubs_impl((2, 16))),
               NEON_8x4: (lambda: _dot_desc(8, "int8", NEON_TILE, neon_tile_index), lambda: _neon_8x4_impl)}


def register() -> None:
    """Register hwq's intrinsics once per process."""
    for name, (desc, impl) in _INTRINSICS.items():
        try:
            TensorIntrin.get(name)
        except Exception:  # TVM raises a ValueError/TVMError for an unknown name, depending on the build
            TensorIntrin.register(name, desc(), impl())
