"""Tensor intrinsics hwq registers with TVM (idempotently: registering twice is an error in TVM).

``dot_16x4_u8s8s32_vnni``: C[16] (int32) += A[4] (uint8, broadcast) . B[16, 4] (int8), one
``vpdpbusd zmm``. The TVM wheel ships such an intrinsic, but it passes ``<16 x i32>`` operands to
``llvm.x86.avx512.vpdpbusd.512`` while LLVM 22 declares ``<64 x i8>``, so the LLVM verifier rejects
it; this copy reinterprets the operands to the declared types.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

# Not imported from tvm.s_tir.tensor_intrin: that package builds every backend's intrinsics on
# import (its CUDA ones alone take about a minute of CPU time).
VNNI_16x4 = "hwq_dot_16x4_u8s8s32_vnni"


@T.prim_func(s_tir=True)
def _dot_16x4_desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                   C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    """What the instruction computes: C[i] += sum_k int32(A[k]) * int32(B[i, k])."""
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i, k in T.grid(16, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


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


def register() -> None:
    """Register hwq's intrinsics once per process."""
    try:
        TensorIntrin.get(VNNI_16x4)
    except Exception:  # TVM raises a ValueError/TVMError for an unknown name, depending on the build
        TensorIntrin.register(VNNI_16x4, _dot_16x4_desc, _vnni_16x4_impl)
