"""Integer conv2d / dense for NVIDIA GPUs (sm_61 and later) on ``__dp4a``, NHWC, fused epilogue.

``__dp4a(a, b, c)`` adds to the int32 ``c`` the dot product of the four signed bytes packed in the
int32 ``a`` with those of ``b``: one instruction, 4 MACs. So activations are read as int8 (a uint8
input is shifted by -128 and ``128 * sum(w)`` folded into the bias, as ``arm_dotprod`` does) and
4 input channels of one pixel are one aligned 4-byte load: NHWC with the channels padded to a
multiple of 4. Weights are packed ``[KH, KW, I/4, O, 4]`` at compile time: the 4 input channels
one thread multiplies are one 4-byte load, and threads of neighbouring output channels read
neighbouring words (coalesced).

Schedule (``CudaConvTile``): blocks over (image, output rows, pixel tiles x channel tiles);
a block has ``ty`` rows x ``tp`` pixel threads x ``tc`` channel threads, and each thread keeps
a ``px x co`` register tile of int32 accumulators (neighbouring pixels of a row x neighbouring
channels) across the whole reduction ``(kh, kw, cin / 4)``, one ``__dp4a`` per step and
accumulator; then it runs the epilogue (bias, ``hwq.fixed_point`` requantization, clamp, cast:
``dot_conv.epilogue``) on the tile and writes NHWC. threadIdx.x runs over output channels: a
warp's weight loads and output stores fall in a few neighbouring cache lines, and the threads
of a warp read the same activation word (a broadcast). Inputs and weights are read from global
memory through L1; there is no shared-memory staging yet. A dense layer (1 x 1 pixels) is one
block per image and channel tile. The tile is modelled, not measured: no GPU was at hand.

The compute is plain integer TE (``conv_compute``); the schedule only reorders, binds and
replaces each 4-channel inner reduction by ``__dp4a`` through a tensor intrinsic whose
description TVM checks against the compute. The compute built for the host CPU is therefore
the kernel's arithmetic, and tests check it bit-exact there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from hwq import qgraph as qg
from hwq.cost.options import kernel_for
from hwq.cost.workload import Workload
from hwq.errors import ConfigError
from hwq.lower.kernels.bias_init import bias_as_init
from hwq.lower.kernels.conv_params import (OPAQUE, Kernel, conv_geometry, folded_bias, largest_divisor,
                                           requant_params, round_up)
from hwq.lower.kernels.dot_conv import packed_conv_compute
from hwq.target import Target

FEATURE = "dp4a"         # the target feature (hwq/targets/*.toml [integer] features) the kernel needs
IN_DTYPE = "int8"        # __dp4a's signed-by-signed form
CHANNEL_ALIGN = 4        # output channels are padded to a multiple of this
DP4A = "hwq_dp4a_s8s8s32_cuda"
_MAX_THREADS = 256       # per block: leaves registers for the tile at full occupancy on sm_61-sm_90


@dataclass(frozen=True)
class CudaConvTile:
    """Work split of the CUDA conv kernel.

    Each thread computes ``px`` neighbouring output pixels of a row x ``co`` output channels; a
    block has ``ty`` rows x ``tp`` threads over pixels x ``tc`` threads over channels.
    """

    px: int = 2
    co: int = 4
    tp: int = 8
    tc: int = 16
    ty: int = 1


def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """int8 OIHW (I % 4 == 0) -> ``[KH, KW, I/4, O, 4]``: one int32 word per (output channel, 4 inputs)."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o, i // 4, 4, kh, kw).transpose(3, 4, 1, 0, 2))


def conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, rq_dtype="int64"):
    """TE definition: padded NHWC int8 input, packed weight, per-channel epilogue -> NHWC.

    Returns ``[X, W, bias, mult, shift, out]``; ``out`` is ``(n, OH, OW, cout)`` in ``out_dtype``
    (the int32 accumulator plus bias when ``out_dtype`` is ``'int32'``).
    """
    return packed_conv_compute(n, hp, wp, cin, cout, kh, kw, stride, dilation, out_dtype, qmin, qmax, IN_DTYPE,
                               (kh, kw, cin // 4, cout, 4), lambda o, rh, rw, rc: (rh, rw, rc // 4, o, rc % 4),
                               rq_dtype)


@T.prim_func(s_tir=True)
def _dp4a_desc(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
               C: T.Buffer((1,), "int32", offset_factor=1, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        for k in range(4):
            with T.sblock("update"):
                vk = T.axis.remap("R", [k])
                C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")


@T.prim_func(s_tir=True)
def _dp4a_impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
               C: T.Buffer((1,), "int32", offset_factor=1, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        C[0] = T.call_pure_extern("int32", "__dp4a", T.reinterpret(A.vload([0], "int8x4"), dtype="int32"),
                                  T.reinterpret(B.vload([0], "int8x4"), dtype="int32"), C[0])


def _register() -> None:
    try:
        TensorIntrin.get(DP4A)
    except Exception:  # TVM raises a ValueError/TVMError for an unknown name, depending on the build
        TensorIntrin.register(DP4A, _dp4a_desc, _dp4a_impl)


def schedule_conv(func: tvm.tirx.PrimFunc, tile: CudaConvTile) -> tvm.tirx.PrimFunc:
    """Bind the conv to blocks and threads, keep a register tile per thread, ``__dp4a`` inside."""
    _register()
    sch = tvm.s_tir.Schedule(func)
    bias_as_init(sch)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, y, x, o, rh, rw, rc = sch.get_loops(acc)
    oh, ow, cout = (int(sch.get(loop).extent) for loop in (y, x, o))
    dense = oh == ow == 1
    # a split that leaves a remainder puts a bounds predicate on the block, and tensorize cannot
    # blockize under one (TVM 0.27 fails with "rhs_buffer_map_.count(desc)")
    if cout % (tile.tc * tile.co) or not dense and (ow % (tile.tp * tile.px) or oh % tile.ty):
        raise ConfigError(f"CUDA conv tile {tile} does not divide the output (OH, OW, C) = {(oh, ow, cout)}: "
                          f"ty must divide OH, tp * px OW and tc * co C")
    if dense:
        return _schedule_dense(sch, acc, out, tile)
    y_out, y_thr = sch.split(y, [None, tile.ty])
    p_out, p_thr, p_reg = sch.split(x, [None, tile.tp, tile.px])
    c_out, c_thr, c_reg = sch.split(o, [None, tile.tc, tile.co])
    c4, ci = sch.split(rc, [None, 4])
    sch.reorder(b, y_out, p_out, c_out, y_thr, p_thr, c_thr, rh, rw, c4, p_reg, c_reg, ci)
    # The batch (int64, symbolic) is not fused with an int32 loop: the cast that would put in the
    # block bindings stops tensorize from blockizing. blockIdx.x takes it (limit 2^31 - 1).
    sch.bind(b, "blockIdx.x")
    sch.bind(sch.fuse(p_out, c_out), "blockIdx.y")
    sch.bind(y_out, "blockIdx.z")
    sch.bind(sch.fuse(y_thr, p_thr), "threadIdx.y")
    sch.bind(c_thr, "threadIdx.x")
    _accumulate_in_registers(sch, acc, out, c_thr, rh, ci)
    _unroll_in_nvcc(sch, p_reg)
    return _scheduled(sch)


def _accumulate_in_registers(sch, acc, out, thread_loop, reduction, dot4) -> None:
    """Per-thread int32 accumulators (zeroed above the ``reduction`` loops), the epilogue right
    after them, the 4-channel ``dot4`` loop replaced by ``__dp4a``."""
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, thread_loop)
    init = sch.decompose_reduction(acc, reduction)
    sch.tensorize(dot4, DP4A)
    for block in (init, out):     # the zeroing and the epilogue loop over the same register tile
        loops = sch.get_loops(block)
        below = [i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(thread_loop))][0] + 1
        if below < len(loops):
            _unroll_in_nvcc(sch, loops[below])


def _unroll_in_nvcc(sch, loop) -> None:
    """Unroll the register tile loops at and under ``loop`` with ``#pragma unroll`` (nvcc then keeps
    the accumulators in registers), not in TIR: the CUDA source keeps one ``__dp4a`` per kernel."""
    sch.annotate(loop, "pragma_auto_unroll_max_step", 64)
    sch.annotate(loop, "pragma_unroll_explicit", 0)


def _scheduled(sch) -> tvm.tirx.PrimFunc:
    # hwq's CPU glue pass reads the first attribute, TVM's DLight the second: neither reschedules it
    return sch.mod["main"].with_attr("tir.is_scheduled", True).with_attr("tirx.is_scheduled", True)


def _schedule_dense(sch, acc, out, tile: CudaConvTile) -> tvm.tirx.PrimFunc:
    """A 1x1 conv on 1x1 pixels: a block per image and channel tile, threads over channels.

    The batch is symbolic, and splitting it (threads over images) would leave a bounds predicate
    on the block, so each image is its own block and ``tile.tp`` / ``tile.px`` are unused.
    """
    b, y, x, o, rh, rw, rc = sch.get_loops(acc)
    c_out, c_thr, c_reg = sch.split(o, [None, tile.tc, tile.co])
    c4, ci = sch.split(rc, [None, 4])
    sch.reorder(b, y, x, c_out, c_thr, rh, rw, c4, c_reg, ci)
    sch.bind(b, "blockIdx.x")
    sch.bind(c_out, "blockIdx.y")
    sch.bind(sch.fuse(y, x), "blockIdx.z")
    sch.bind(c_thr, "threadIdx.x")
    _accumulate_in_registers(sch, acc, out, c_thr, rh, ci)
    _unroll_in_nvcc(sch, c_reg)
    return _scheduled(sch)


def default_tile(oh: int, ow: int, cout_p: int) -> CudaConvTile:
    """The untuned tile (modelled, not measured on a GPU): 4 channels x up to 4 pixels per
    thread; up to 32 threads along the channels (a warp reads 32 neighbouring weight words), then
    pixel threads along the row and rows, up to 256 threads per block. Every split divides its
    extent, so no thread is masked off."""
    co = 4 if cout_p % 4 == 0 else 1
    if oh == ow == 1:     # dense: one image per block (see _schedule_dense), the channels in threads
        return CudaConvTile(px=1, co=co, tp=1, tc=largest_divisor(cout_p // co, _MAX_THREADS))
    tc = largest_divisor(cout_p // co, 32)
    px = largest_divisor(ow, 4)
    tp = largest_divisor(ow // px, max(1, _MAX_THREADS // tc))
    ty = largest_divisor(oh, max(1, _MAX_THREADS // (tc * tp)))
    return CudaConvTile(px=px, co=co, tp=tp, tc=tc, ty=ty)


class CudaDp4aConv2d:
    """conv2d (groups == 1) and dense on ``__dp4a`` for CUDA targets with the ``dp4a`` feature."""

    name = "cuda-dp4a"

    def apply(self, node, in_info: qg.TensorInfo, out_info: qg.TensorInfo, target: Target):
        if in_info.dtype not in ("int8", "uint8") or node.op not in ("conv2d", "dense"):
            return None
        if kernel_for(Workload.of(node, in_info.shape), target, 127, 255).name != self.name:
            return None
        geo = conv_geometry(node, in_info)
        if geo is None:
            return None
        w, kh, kw, h, wd = geo.w, geo.kh, geo.kw, geo.h, geo.wd
        (sh, sw), (dh, dw), (ph, pw) = geo.stride, geo.dilation, geo.pad
        cout, cin = w.shape[:2]
        cin_p, cout_p = round_up(cin, 4), round_up(cout, CHANNEL_ALIGN)
        offset = 0 if in_info.dtype == IN_DTYPE else -128
        bias = folded_bias(node, w, offset, cout_p)
        if bias is None:
            return None
        wp = np.zeros((cout_p, cin_p, kh, kw), np.int8)
        wp[:cout, :cin] = w
        mult, shift, qmin, qmax = requant_params(node.requant, cout, cout_p)
        oh, ow = geo.out_hw
        tile = default_tile(oh, ow, cout_p)
        args = conv_compute(tirx.Var("n", "int64"), h, wd, cin_p, cout_p, kh, kw, (sh, sw), (dh, dw),
                            out_info.dtype, qmin, qmax, str(mult.dtype))
        func = schedule_conv(te.create_prim_func(args), tile).with_attr("op_pattern", OPAQUE)
        params = (pack_conv_weight(wp), bias.astype(np.int32), mult, shift)
        key = (f"cuda_conv_nhwc:{h}x{wd}x{cin_p}->{cout_p}:k{kh}x{kw}:s{sh}x{sw}:d{dh}x{dw}:"
               f"{in_info.dtype}->{out_info.dtype}")
        return Kernel(self.name, func, params, (ph, ph, pw, pw), cin_p, cout_p, offset, (oh, ow, cout_p),
                      tile=tile, workload=key, in_shape=(h, wd, cin_p), in_dtype=IN_DTYPE)
