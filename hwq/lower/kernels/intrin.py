"""Tensor intrinsics hwq registers with TVM (idempotently: registering twice is an error in TVM).

Both compute ``C[block] (int32) += A[4] (broadcast) . B[block, 4] (int8)``:

``hwq_dot_16x4_u8s8s32_vnni``: A uint8, one ``vpdpbusd zmm``. The TVM wheel ships such an
intrinsic, but it passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512`` while LLVM 22
declares ``<64 x i8>``, so the LLVM verifier rejects it; this copy reinterprets the operands to
the declared types.

``hwq_dot_4x4_s8s8s32_sdot``: A int8, one Armv8.2 ``sdot v.4s, v.16b, v.16b`` (each int32 lane i
adds the dot of bytes 4i..4i+3 of both operands, so A's 4 bytes are broadcast to all four lanes).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

# Not imported from tvm.s_tir.tensor_intrin: that package builds every backend's intrinsics on
# import (its CUDA ones alone take about a minute of CPU time).
VNNI_16x4 = "hwq_dot_16x4_u8s8s32_vnni"
SDOT_4x4 = "hwq_dot_4x4_s8s8s32_sdot"


def _dot_desc(block: int, a_dtype: str):
    """What the instruction computes: C[i] += sum_k int32(A[k]) * int32(B[i, k])."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((block, 4), "int8", offset_factor=1),
             C: T.Buffer((block,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:block], A[0:4], B[0:block, 0:4])
            T.writes(C[0:block])
            for i, k in T.grid(block, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

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


_INTRINSICS = {VNNI_16x4: (lambda: _dot_desc(16, "uint8"), _vnni_16x4_impl),
               SDOT_4x4: (lambda: _dot_desc(4, "int8"), _sdot_4x4_impl)}


def register() -> None:
    """Register hwq's intrinsics once per process."""
    for name, (desc, impl) in _INTRINSICS.items():
        try:
            TensorIntrin.get(name)
        except Exception:  # TVM raises a ValueError/TVMError for an unknown name, depending on the build
            TensorIntrin.register(name, desc(), impl)
