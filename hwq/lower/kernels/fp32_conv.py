"""Hand-scheduled float32 kernels for CPUs: conv2d (groups 1 or depthwise) and dense, NHWC.

The float layers of a mixed-precision model would otherwise lower to TVM's generic, untuned
conv (20-40x slower than torch). Each kernel here is one PrimFunc in destination-passing style
(``relax.call_tir``): it reads the raw, unpadded NHWC input (padding happens inside), the packed
weight and the bias, optionally a residual input of the output's shape, and writes
``clamp(conv + bias [+ residual], lo, hi)``. The batch is a symbolic int64 ``n``: one build
serves every batch.

Vector width from the target's features: AVX-512 16 lanes (32 registers), AVX2 8 (16), NEON 4
(32). Output channels that are not a multiple of the width use the narrower vector that needs
the fewest instructions (24 channels on AVX-512: two 16-lane vectors, the weights padded).
Tiles come from the tuned-tile files (``tuning.load_configs``: shipped, then ``hwq tune``'s),
else from a heuristic per register file. ``benchmarks/fp32_kernels.py`` times them against torch.

Example::

    k = float_conv_kernel((56, 56, 24), w, b, 1, 0, 1, 1, (0.0, 6.0), False, load_target("x86-host"))
    # relax: call_tir(k.func, [x, *map(relax.const, k.params)], out_sinfo=[n, *k.out_shape] float32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import tvm
from tvm import te, tirx

from hwq.errors import DataError
from hwq.lower.kernels import fp32_dense, fp32_depthwise, fp32_direct, tuning
from hwq.lower.kernels.conv_params import OPAQUE
from hwq.lower.tvm_target import resolve_features
from hwq.target import Target


@dataclass(frozen=True)
class FloatIsa:
    """A CPU vector ISA as the float kernels see it: its feature name, fp32 lanes, vector registers."""

    feature: str
    lanes: int
    registers: int


# Best first: a CPU with AVX-512 also has AVX2. AVX2 CPUs (Haswell, Zen and later) have FMA3, and
# LLVM contracts the kernels' multiply-adds into it (test_fp32_kernels checks the machine code).
ISAS = (FloatIsa("avx512", 16, 32), FloatIsa("avx2", 8, 16), FloatIsa("neon", 4, 32))


@dataclass(frozen=True)
class FloatKernel:
    """A scheduled float32 PrimFunc and its constant inputs.

    ``func`` takes ``(x, *params, [residual], out)``: ``x`` NHWC ``[n, H, W, C]`` (dense: ``[n, I]``)
    float32, unpadded; ``residual`` (when built with ``residual=True``) and ``out`` are
    ``[n, *out_shape]`` float32. ``params`` are numpy float32 arrays: the packed weight, the bias.
    """

    name: str                  # e.g. "fp32_conv_avx512"
    func: tvm.tirx.PrimFunc
    params: tuple              # (packed weight, bias), numpy float32, in argument order
    out_shape: tuple           # (OH, OW, O); dense: (O,)
    workload: str = ""         # tuned-tile key (``tuning.load_configs``)
    tile: object = None
    rebuild: Callable | None = None   # tile -> PrimFunc of the same workload, for a tile search
    candidates: tuple = ()     # tiles a search may try, the default first
    in_shape: tuple = ()       # (H, W, C); dense: (I,)


def float_isa(target: Target) -> FloatIsa | None:
    """The vector ISA the float kernels use on ``target`` (its features as this machine resolves
    them for ``mcpu = "host"``), or None where there is no hand kernel (a CUDA target, a CPU
    without AVX2 or NEON)."""
    if target.kind != "cpu":
        return None
    target = resolve_features(target)
    return next((isa for isa in ISAS if target.has_feature(isa.feature)), None)


def vector_block(channels: int, lanes: int) -> int:
    """Output channels per vector: of ``lanes``, ``lanes / 2``, ... (at least 4), the one that
    needs the fewest vectors for ``channels`` (zmm FMAs cost no more than ymm ones per
    instruction); among those the narrowest, which pads the fewest channels."""
    widths = [lanes >> s for s in range(3) if lanes >> s >= 4] or [lanes]
    return min(widths, key=lambda b: (-(-channels // b), b))


def _pair(v, what: str) -> tuple:
    out = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(out) != 2 or any(int(e) < 1 for e in out):
        raise DataError(f"conv {what} {v!r} must be a positive int or a pair of them")
    return int(out[0]), int(out[1])


def _padding(p) -> tuple:
    """(top, bottom, left, right) from an int, (rows, columns) as torch takes it, or four ints."""
    if isinstance(p, str):
        raise DataError(f"conv padding {p!r}: give the pixels, not a mode (an int, (rows, columns) or "
                        f"(top, bottom, left, right))")
    out = (p,) * 4 if isinstance(p, (int, np.integer)) else tuple(p)
    if len(out) == 2:
        out = (out[0], out[0], out[1], out[1])
    if len(out) != 4 or any(int(e) < 0 for e in out):
        raise DataError(f"conv padding {p!r} must be a non-negative int, (rows, columns) or "
                        f"(top, bottom, left, right)")
    return tuple(int(e) for e in out)


def _check_act(act):
    if act is not None and not (len(act) == 2 and act[0] <= act[1] and not any(math.isnan(v) for v in act)):
        raise DataError(f"activation clamp {act!r} must be None or (lo, hi) with lo <= hi "
                        f"(ReLU: (0, inf), ReLU6: (0, 6))")
    return None if act is None else (float(act[0]), float(act[1]))


def _check_bias(bias, cout: int):
    if bias is not None and np.shape(bias) != (cout,):
        raise DataError(f"bias of shape {np.shape(bias)} for {cout} output channels; expected ({cout},) or None")


def _tile(cls, key: str, target: Target, default):
    """The tuned tile of ``key`` on ``target`` (user's over shipped), else ``default``."""
    cfg = tuning.load_configs(target.name).get(key)
    if cfg is None:
        return default
    return cls(**{f.name: int(cfg[f.name]) for f in fields(cls) if f.name in cfg})


def _kernel(name, build, tile, params, out_shape, key, cands, in_shape) -> FloatKernel:
    def rebuild(t):
        return build(t).with_attr("op_pattern", OPAQUE)   # relax's FuseOps must not merge into it
    return FloatKernel(name, rebuild(tile), tuple(params), tuple(out_shape), key, tile, rebuild, tuple(cands),
                       tuple(in_shape))


def float_conv_kernel(in_shape_hwc: tuple, weight: np.ndarray, bias: np.ndarray | None, stride, padding, dilation,
                      groups: int, act: tuple | None, residual: bool, target: Target) -> FloatKernel | None:
    """The hand float32 kernel of a conv2d on ``target``, or None (no kernel for the target or the
    case: the caller lowers it with Relax's generic ops).

    Args:
        in_shape_hwc: the input's ``(H, W, C)``, unpadded (batch excluded: symbolic).
        weight: float32 OIHW, ``(O, C / groups, KH, KW)``.
        bias: ``(O,)`` or None.
        stride, dilation: int or ``(rows, columns)``.
        padding: int, ``(rows, columns)`` (both sides, as torch) or ``(top, bottom, left, right)``.
        groups: 1, or C for a depthwise conv with O == C (other groups: None).
        act: ``(lo, hi)`` clamp after the bias and residual (ReLU ``(0, inf)``, ReLU6 ``(0, 6)``) or None.
        residual: the kernel takes one more input of the output's shape and adds it before the clamp.
        target: the hwq target (its features pick the vector width).

    Returns:
        A :class:`FloatKernel`; its params are ``(weight packed [ceil(O/b), KH, KW, C, b], bias)``
        (depthwise: ``(weight [KH, KW, C], bias)``).

    Raises:
        DataError: shapes that do not fit together, or a malformed stride / padding / clamp.
    """
    isa = float_isa(target)
    if isa is None:
        return None
    h, w, c = (int(v) for v in in_shape_hwc)
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4 or weight.shape[1] * groups != c:
        raise DataError(f"conv weight of shape {weight.shape} with groups={groups!r} does not take an input "
                        f"of {c} channels (OIHW: O, C / groups, KH, KW)")
    cout, _, kh, kw = weight.shape
    _check_bias(bias, cout)
    stride, dilation, pad = _pair(stride, "stride"), _pair(dilation, "dilation"), _padding(padding)
    act = _check_act(act)
    oh = fp32_direct.out_size(h, kh, stride[0], dilation[0], pad[0], pad[1])
    ow = fp32_direct.out_size(w, kw, stride[1], dilation[1], pad[2], pad[3])
    if oh < 1 or ow < 1:
        raise DataError(f"conv of a {h}x{w} input with kernel {kh}x{kw}, {stride=}, {dilation=}, padding={pad} "
                        f"has no output pixels")
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    geo = (stride, dilation, pad)
    if groups == 1:
        block = vector_block(cout, isa.lanes)
        cout_p = -(-cout // block) * block
        name = f"fp32_conv_{isa.feature}"
        key = tuning.conv_key(hp, wp, c, cout_p, kh, kw, stride, dilation, "float32", name)
        default = fp32_direct.default_tile(ow, cout_p // block, isa.registers)

        def build(t):
            args = fp32_direct.conv_compute(tirx.Var("n", "int64"), h, w, c, cout, kh, kw, *geo, block, act, residual)
            return fp32_direct.schedule_conv(te.create_prim_func(args), t, block, tile_parallel=not any(pad))

        params = (fp32_direct.pack_weight(weight, block), fp32_direct.pad_bias(bias, cout, cout_p))
        return _kernel(name, build, _tile(fp32_direct.FloatConvTile, key, target, default), params, (oh, ow, cout),
                       key, fp32_direct.candidates(ow, cout_p // block, isa.registers), (h, w, c))
    # depthwise with one output per channel; its input has no padding channels, so the vector
    # must divide C (C % 4 != 0 has no kernel)
    if groups != c or cout != c or c % 4:
        return None
    block = max(b for b in (isa.lanes, isa.lanes // 2, 4) if b >= 4 and c % b == 0)
    name = f"fp32_depthwise_{isa.feature}"
    key = (f"depthwise_nhwc:{hp}x{wp}x{c}:k{kh}x{kw}:s{stride[0]}x{stride[1]}:d{dilation[0]}x{dilation[1]}:"
           f"float32->float32:{name}")
    default = fp32_depthwise.default_tile(ow, c // block, isa.registers)

    def build_dw(t):
        args = fp32_depthwise.depthwise_compute(tirx.Var("n", "int64"), h, w, c, kh, kw, *geo, act, residual)
        return fp32_depthwise.schedule_depthwise(te.create_prim_func(args), t, block)

    params = (fp32_depthwise.pack_weight(weight), fp32_direct.pad_bias(bias, c, c))
    return _kernel(name, build_dw, _tile(fp32_depthwise.FloatDepthwiseTile, key, target, default), params,
                   (oh, ow, c), key, fp32_depthwise.candidates(ow, c // block, isa.registers), (h, w, c))


def float_dense_kernel(in_features: int, weight: np.ndarray, bias: np.ndarray | None, act: tuple | None,
                       residual: bool, target: Target) -> FloatKernel | None:
    """The hand float32 kernel of a dense layer ``x [n, I] -> clamp(x @ W.T + b [+ residual]) [n, O]``
    on ``target``, or None (no kernel for the target).

    Args:
        in_features: ``I``.
        weight: float32 ``(O, I)``.
        bias: ``(O,)`` or None.
        act, residual, target: as :func:`float_conv_kernel`.

    Returns:
        A :class:`FloatKernel` with params ``(weight packed [ceil(O/b), I, b], bias)`` and ``out_shape`` ``(O,)``.
    """
    isa = float_isa(target)
    if isa is None:
        return None
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 2 or weight.shape[1] != in_features:
        raise DataError(f"dense weight of shape {weight.shape} does not take {in_features!r} input features "
                        f"(expected (O, {in_features}))")
    act = _check_act(act)
    cout, cin = weight.shape
    _check_bias(bias, cout)
    block = vector_block(cout, isa.lanes)
    cout_p = -(-cout // block) * block
    name = f"fp32_dense_{isa.feature}"
    key = tuning.conv_key(1, 1, cin, cout_p, 1, 1, (1, 1), (1, 1), "float32", name)
    default = fp32_dense.default_tile(cout_p // block, cin, isa.registers)

    def build(t):
        args = fp32_dense.dense_compute(tirx.Var("n", "int64"), cin, cout, block, act, residual)
        return fp32_dense.schedule_dense(te.create_prim_func(args), t, block)

    packed = fp32_direct.pack_weight(weight[:, :, None, None], block)[:, 0, 0]    # [O/b, I, b]
    params = (np.ascontiguousarray(packed), fp32_direct.pad_bias(bias, cout, cout_p))
    return _kernel(name, build, _tile(fp32_dense.FloatDenseTile, key, target, default), params, (cout,), key,
                   fp32_dense.candidates(cout_p // block, cin, isa.registers), (cin,))
