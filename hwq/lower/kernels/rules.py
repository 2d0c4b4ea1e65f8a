"""Kernel rules: which hand-scheduled kernel lowers a conv / dense on which target."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from hwq import qgraph as qg
from hwq.cost.options import NHWC_FEATURES, kernel_for
from hwq.cost.workload import Workload
from hwq.lower.kernels import (arm_dotprod, arm_neon, cpu_depthwise, cuda_dp4a, dot_conv, tuning, x86_avx2,
                               x86_avx2_maddubs, x86_avx2_s4, x86_vnni)
from hwq.lower.kernels.conv_params import (OPAQUE, Kernel, ResidualAdd, conv_geometry, folded_bias, requant_params,
                                              round_up)
from hwq.target import Target

_SHIFT_INTO = {"uint8": 128, "int8": -128}   # kernel dtype -> offset taking the other 8-bit dtype into it


class DotConv2d:
    """conv2d (groups == 1) and dense on a 4-byte dot product (or two-instruction emulation), NHWC, fused epilogue.

    ``isa`` is the module that describes the instruction (``x86_vnni``, ``x86_avx2``, ``arm_dotprod``): the
    target feature it needs, its output-channel block, the dtype it reads activations in, its
    compute / schedule / weight packing and its register tiles.
    """

    fuses_residual = True   # see select_kernel

    def __init__(self, name: str, isa):
        self.name, self.isa = name, isa

    def apply(self, node, in_info: qg.TensorInfo, out_info: qg.TensorInfo, target: Target,
              residual: ResidualAdd | None = None) -> Kernel | None:
        isa = self.isa
        if in_info.dtype not in _SHIFT_INTO or node.op not in ("conv2d", "dense"):
            return None
        # the one answer the cost model and the allocator read too (hwq.cost.options)
        chosen = kernel_for(Workload.of(node, in_info.shape), target, int(np.abs(node.weight.astype(np.int16)).max(initial=0)),
                            in_info.qmax - min(in_info.qmin, 0))
        if chosen.name != self.name:
            return None
        geo = conv_geometry(node, in_info)
        w, kh, kw, h, wd = geo.w, geo.kh, geo.kw, geo.h, geo.wd
        (sh, sw), (dh, dw), (ph, pw) = geo.stride, geo.dilation, geo.pad
        cout, cin = w.shape[:2]
        offset = 0 if in_info.dtype == isa.IN_DTYPE else _SHIFT_INTO[isa.IN_DTYPE]
        if chosen.pair_bound and in_info.dtype == "int8":
            # an instruction exact only on bounded products: take the input's range to start at
            # 0 (a 7-bit signed [-63, 63] becomes [0, 126], not [65, 191])
            offset = -in_info.qmin
        bias = folded_bias(node, w, offset, round_up(cout, isa.BLOCK))
        if bias is None:
            return None
        pre = None
        if cin < 4 and kh * kw > 1:
            # A tap of 1-3 channels would fill one 4-byte dot with zeros: gather the whole window
            # as channels instead (im2col), and run a 1x1 conv on ceil(kh*kw*cin/4) dots per pixel.
            _, h0, w0 = in_info.shape
            pre = dot_conv.schedule_im2col(te.create_prim_func(dot_conv.im2col_compute(
                tirx.Var("n", "int64"), h0, w0, cin, in_info.dtype, kh, kw, (sh, sw), (dh, dw), (ph, ph, pw, pw),
                round_up(kh * kw * cin, 4), offset, isa.IN_DTYPE))).with_attr("op_pattern", OPAQUE)
            ph = pw = 0
            h = (h - dh * (kh - 1) - 1) // sh + 1
            wd = (wd - dw * (kw - 1) - 1) // sw + 1
            w = w.transpose(0, 2, 3, 1).reshape(cout, kh * kw * cin, 1, 1)   # (i, j, c) patch order
            cin, kh, kw, sh, sw, dh, dw = kh * kw * cin, 1, 1, 1, 1, 1, 1
        cin_p, cout_p = round_up(cin, 4), round_up(cout, isa.BLOCK)
        wp = np.zeros((cout_p, cin_p, kh, kw), np.int8)
        wp[:cout, :cin] = w
        mult, shift, qmin, qmax = requant_params(node.requant, cout, cout_p)
        out_dtype = out_info.dtype
        if residual is not None and (cout != cout_p or node.requant is None):
            residual = None    # the other input has no padding channels; an int32 output has no add to fuse
        # A fused add leaves the workload key alone: tiles are tuned on the plain conv, whose
        # epilogue's one extra load and add per output cost the same for every tile.
        oh = (h - dh * (kh - 1) - 1) // sh + 1
        ow = (wd - dw * (kw - 1) - 1) // sw + 1
        key = tuning.conv_key(h, wd, cin_p, cout_p, kh, kw, (sh, sw), (dh, dw), out_dtype, self.name)
        tile = self.tile_for(key, target, ow, cout_p)

        def build(t):
            args = isa.conv_compute(tirx.Var("n", "int64"), h, wd, cin_p, cout_p, kh, kw, (sh, sw), (dh, dw),
                                    out_dtype, qmin, qmax, str(mult.dtype), residual=residual)
            return isa.schedule_conv(te.create_prim_func(args), t).with_attr("op_pattern", OPAQUE)

        params = (isa.pack_conv_weight(wp), bias.astype(np.int32), mult, shift)
        return Kernel(self.name, build(tile), params, (ph, ph, pw, pw), cin_p, cout_p, offset, (oh, ow, cout_p),
                      pre, tile, key, (h, wd, cin_p), build, tuple(isa.candidates(ow, cout_p)), isa.IN_DTYPE, residual)

    def tile_for(self, key, target, ow, cout_p):
        """The tuned tile of this workload on ``target``, else the ISA's heuristic one."""
        tuned = tuning.load_configs(target.name).get(key)
        if tuned is not None:
            return self.isa.ConvTile(tuned["tw"], tuned["ob"])
        return self.isa.default_tile(ow, cout_p)


class CpuDepthwise:
    """Depthwise conv2d (groups == in == out channels, a multiple of 16) on any CPU, NHWC."""

    name = "cpu-depthwise"

    def apply(self, node, in_info: qg.TensorInfo, out_info: qg.TensorInfo, target: Target) -> Kernel | None:
        if node.op != "conv2d" or kernel_for(Workload.of(node, in_info.shape), target, 127, 255).name != self.name:
            return None
        c, per_group, kh, kw = node.weight.shape
        (sh, sw), (dh, dw), (ph, pw) = node.stride, node.dilation, node.padding
        h, wd = in_info.shape[1] + 2 * ph, in_info.shape[2] + 2 * pw
        oh = (h - dh * (kh - 1) - 1) // sh + 1
        ow = (wd - dw * (kw - 1) - 1) // sw + 1
        mult, shift, qmin, qmax = requant_params(node.requant, c, c)
        key = f"depthwise_nhwc:{h}x{wd}x{c}:k{kh}x{kw}:s{sh}x{sw}:d{dh}x{dw}:{in_info.dtype}->{out_info.dtype}"
        tuned = tuning.load_configs(target.name).get(key)
        tile = (cpu_depthwise.DepthwiseTile(tuned["tw"], tuned["cb"], tuned.get("lanes", 16)) if tuned is not None else
                cpu_depthwise.default_tile(ow, c))

        def build(t):
            # the kernel pads its input itself (the key keeps the padded size: the same workload)
            args = cpu_depthwise.depthwise_compute(tirx.Var("n", "int64"), h, wd, c, in_info.dtype, kh, kw, (sh, sw),
                                                   (dh, dw), out_info.dtype, qmin, qmax, str(mult.dtype), pad=(ph, pw))
            return cpu_depthwise.schedule_depthwise(te.create_prim_func(args), t).with_attr("op_pattern", OPAQUE)

        w = np.ascontiguousarray(node.weight[:, 0].transpose(1, 2, 0))        # [KH, KW, C]
        params = (w, node.bias.astype(np.int32), mult, shift)
        return Kernel(self.name, build(tile), params, (0, 0, 0, 0), c, c, 0, (oh, ow, c), None, tile, key,
                      (in_info.shape[1], in_info.shape[2], c), build, tuple(cpu_depthwise.candidates(ow, c)), in_info.dtype)


# Order matters: a CPU with VNNI also has AVX2 and must get the VNNI kernel; a layer on which
# vpmaddubsw is exact gets it before the general AVX2 kernel; a CPU with the dot product also has
# NEON and must get sdot.
RULES = (DotConv2d("x86-avx512-vnni", x86_vnni), DotConv2d("x86-avx2-s4", x86_avx2_s4),
         DotConv2d("x86-avx2-maddubs", x86_avx2_maddubs),
         DotConv2d("x86-avx2", x86_avx2), DotConv2d("arm-dotprod", arm_dotprod),
         DotConv2d("arm-neon", arm_neon), CpuDepthwise(), cuda_dp4a.CudaDp4aConv2d())


def select_kernel(node, in_info, out_info, target: Target | None, rules=RULES,
                  residual: ResidualAdd | None = None) -> Kernel | None:
    """The first rule's kernel for ``node`` on ``target``, or None (generic Relax lowering).

    ``residual``: a residual add the caller would like fused into the kernel's epilogue; rules
    with ``fuses_residual`` may take it (the kernel's ``residual`` says whether it did).
    """
    if target is None or layout_for(target) != "NHWC":   # every hwq kernel reads and writes NHWC
        return None
    for rule in rules:
        extra = {"residual": residual} if residual is not None and getattr(rule, "fuses_residual", False) else {}
        kernel = rule.apply(node, in_info, out_info, target, **extra)
        if kernel is not None:
            return kernel
    return None


def layout_for(target: Target | None) -> str:
    """Activation layout of the whole graph: NHWC where hwq has kernels for the target, else NCHW."""
    if target is not None and any(target.has_feature(f) for f in NHWC_FEATURES.get(target.kind, ())):
        return "NHWC"
    return "NCHW"
