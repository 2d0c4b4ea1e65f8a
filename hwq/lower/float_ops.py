"""Float islands in Relax: each ATen operator a ``qg.FloatOp`` may hold, as Relax operators.

One table, ``OPS``: ATen name -> ``(emit, elementwise)``. ``emit(em, out_shape, *args, **kwargs)``
returns the Relax expression of the op in NCHW semantics (as torch wrote it); ``elementwise`` ops
run in whatever layout their inputs are stored in (a permutation of all inputs commutes with
them), the others see their 4-D inputs in NCHW. ``emit`` receives ``Ref`` arguments as Relax
expressions, the batch size as the graph's symbolic batch, constants as float32 constants;
``em.shape(x)`` gives an input's shape (the batch as ``None``).

The arithmetic follows torch's kernels where the order of float operations is visible in the
result: hardswish is ``x * clamp(x + 3, 0, 6) / 6`` (torch's CPU kernel), hardsigmoid
``clamp(x + 3, 0, 6) / 6``.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from hwq.errors import UnsupportedOpError


def _f(v):
    return relax.const(np.float32(v), "float32")


def _scalar_or(x):
    return _f(x) if isinstance(x, (int, float)) else x


def _binary(op):
    def emit(em, shape, a, b, alpha=1):
        a, b = _scalar_or(a), _scalar_or(b)
        if alpha != 1:
            b = em.emit(relax.op.multiply(b, _f(alpha)))
        return op(a, b)
    return emit


def _hardsigmoid_core(em, x):
    return em.emit(relax.op.clip(em.emit(relax.op.add(x, _f(3.0))), 0.0, 6.0))


def _hardswish(em, shape, x):
    return relax.op.divide(em.emit(relax.op.multiply(x, _hardsigmoid_core(em, x))), _f(6.0))


def _hardsigmoid(em, shape, x):
    return relax.op.divide(_hardsigmoid_core(em, x), _f(6.0))


def _clip(em, shape, x, lo=None, hi=None):
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    return relax.op.clip(x, max(lo, -3.4e38), min(hi, 3.4e38))


def _reshape(em, shape, x, *_):
    return relax.op.reshape(x, relax.ShapeExpr([em.batch, *shape]))


def _mean(em, shape, x, dims, keepdim=False, dtype=None):
    return relax.op.mean(x, axis=list(dims), keepdims=bool(keepdim))


def _sum(em, shape, x, dims, keepdim=False, dtype=None):
    return relax.op.sum(x, axis=list(dims), keepdims=bool(keepdim))


def _slice(em, shape, x, dim=0, start=None, end=None, step=1):
    size = em.shape(x)[dim]
    start = 0 if start is None else start
    end = size if end is None or (size is not None and end > size) else end
    return relax.op.strided_slice(x, axes=[dim], begin=[start], end=[end], strides=[step])


def _split(em, shape, x, size, dim=0):
    n = em.shape(x)[dim]
    cuts = list(range(size, n, size))
    return relax.op.split(x, cuts, axis=dim)


def _split_sizes(em, shape, x, sizes, dim=0):
    return relax.op.split(x, list(np.cumsum(sizes[:-1]).astype(int)), axis=dim)


def _chunk(em, shape, x, chunks, dim=0):
    n = em.shape(x)[dim]
    return _split(em, shape, x, -(-n // chunks), dim)


def _pool_args(kernel, stride, padding):
    k = tuple(kernel) if isinstance(kernel, (list, tuple)) else (kernel, kernel)
    k = k * 2 if len(k) == 1 else k
    s = tuple(stride) if stride else k
    s = s * 2 if len(s) == 1 else s
    p = tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
    p = p * 2 if len(p) == 1 else p
    return k, s, p


def _avg_pool(em, shape, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor=None):
    if divisor is not None:
        raise UnsupportedOpError("avg_pool2d with divisor_override has no Relax lowering in hwq")
    k, s, p = _pool_args(kernel, stride, padding)
    return relax.op.nn.avg_pool2d(x, k, s, p, ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))


def _max_pool(em, shape, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    k, s, p = _pool_args(kernel, stride, padding)
    d = tuple(dilation) if isinstance(dilation, (list, tuple)) else (dilation, dilation)
    return relax.op.nn.max_pool2d(x, k, s, p, d * 2 if len(d) == 1 else d, ceil_mode=bool(ceil_mode))


def _upsample_nearest(em, shape, x, *_):
    # torch's "nearest": source index floor(dst * in / out) == asymmetric coordinates, floor rounding
    return relax.op.image.resize2d(x, tuple(shape[1:]), layout="NCHW", method="nearest_neighbor",
                                   coordinate_transformation_mode="asymmetric", rounding_method="floor")


def _upsample_bilinear(em, shape, x, output_size, align_corners, *_):
    mode = "align_corners" if align_corners else "half_pixel"    # torch clamps a negative source index to 0, as TVM does
    return relax.op.image.resize2d(x, tuple(shape[1:]), layout="NCHW", method="linear",
                                   coordinate_transformation_mode=mode)


def _pad(em, shape, x, pad, mode="constant", value=None):
    # torch lists (before, after) pairs from the last dimension backwards
    if mode != "constant" or min(pad) < 0:
        raise UnsupportedOpError(f"pad with mode={mode!r} and pads {list(pad)!r} has no Relax lowering in hwq; "
                                 f"constant padding without cropping has")
    ndim = len(em.shape(x))
    width = [0] * (2 * ndim)
    for i in range(len(pad) // 2):
        width[2 * (ndim - 1 - i)], width[2 * (ndim - 1 - i) + 1] = pad[2 * i], pad[2 * i + 1]
    return relax.op.nn.pad(x, width, pad_value=float(value or 0.0))


def _permute(em, shape, x, dims):
    return relax.op.permute_dims(x, list(dims))


def _transpose(em, shape, x, a, b):
    nd = len(em.shape(x))
    axes = list(range(nd))
    axes[a % nd], axes[b % nd] = axes[b % nd], axes[a % nd]
    return relax.op.permute_dims(x, axes)


def _linear(em, shape, x, w, b=None):
    y = em.emit(relax.op.matmul(x, relax.op.permute_dims(w, [1, 0])))
    return y if b is None else relax.op.add(y, b)


def _conv(em, shape, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    if isinstance(padding, str):
        raise UnsupportedOpError(f"conv2d with padding={padding!r} has no Relax lowering in hwq; use integer padding")
    y = em.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding, dilation=dilation, groups=groups))
    return y if b is None else relax.op.add(y, relax.op.reshape(b, [1, -1, 1, 1]))


def _batch_norm_core(em, x, gamma, beta, mean, var, eps):
    ch = lambda v: relax.op.reshape(v, [1, -1, 1, 1])   # noqa: E731
    y = em.emit(relax.op.divide(em.emit(relax.op.subtract(x, ch(mean))),
                                em.emit(relax.op.sqrt(em.emit(relax.op.add(ch(var), _f(eps)))))))
    if gamma is not None:
        y = em.emit(relax.op.multiply(y, ch(gamma)))
    return y if beta is None else em.emit(relax.op.add(y, ch(beta)))


def _native_bn(em, shape, x, gamma, beta, mean, var, momentum, eps):
    y = _batch_norm_core(em, x, gamma, beta, mean, var, eps)
    return relax.Tuple([y, mean, var])


def _bn(em, shape, x, gamma, beta, mean, var, training, momentum, eps, cudnn=True):
    return _batch_norm_core(em, x, gamma, beta, mean, var, eps)


def _identity(em, shape, x, *_, **__):
    return x


def _getitem(em, shape, x, i):
    return relax.TupleGetItem(x, i)


def _unary(op):
    return lambda em, shape, x: op(x)


def _gelu(em, shape, x, approximate="none"):
    return relax.op.nn.gelu_tanh(x) if approximate == "tanh" else relax.op.nn.gelu(x)


def _softmax(em, shape, x, dim, half_to_float=False):
    return relax.op.nn.softmax(x, axis=dim)


def _cat(em, shape, tensors, dim=0):
    return relax.op.concat(list(tensors), axis=dim)


def _unsqueeze(em, shape, x, dim):
    return relax.op.reshape(x, relax.ShapeExpr([em.batch, *shape]))


_ELEMENTWISE = {
    "aten.relu.default": _unary(relax.op.nn.relu),
    "aten.relu_.default": _unary(relax.op.nn.relu),
    "aten.sigmoid.default": _unary(relax.op.sigmoid),
    "aten.tanh.default": _unary(relax.op.tanh),
    "aten.exp.default": _unary(relax.op.exp),
    "aten.log.default": _unary(relax.op.log),
    "aten.sqrt.default": _unary(relax.op.sqrt),
    "aten.rsqrt.default": _unary(relax.op.rsqrt),
    "aten.abs.default": _unary(relax.op.abs),
    "aten.neg.default": _unary(relax.op.negative),
    "aten.erf.default": _unary(relax.op.erf),
    "aten.silu.default": _unary(relax.op.nn.silu),
    "aten.silu_.default": _unary(relax.op.nn.silu),
    "aten.gelu.default": _gelu,
    "aten.hardswish.default": _hardswish,
    "aten.hardswish_.default": _hardswish,
    "aten.hardsigmoid.default": _hardsigmoid,
    "aten.hardsigmoid_.default": _hardsigmoid,
    "aten.hardtanh.default": _clip,
    "aten.hardtanh_.default": _clip,
    "aten.clamp.default": _clip,
    "aten.relu6.default": lambda em, shape, x: relax.op.clip(x, 0.0, 6.0),
    "aten.add.Tensor": _binary(relax.op.add),
    "aten.add_.Tensor": _binary(relax.op.add),
    "aten.add.Scalar": _binary(relax.op.add),
    "aten.sub.Tensor": _binary(relax.op.subtract),
    "aten.sub.Scalar": _binary(relax.op.subtract),
    "aten.rsub.Scalar": lambda em, shape, a, b, alpha=1: relax.op.subtract(_f(b), a),
    "aten.mul.Tensor": _binary(relax.op.multiply),
    "aten.mul_.Tensor": _binary(relax.op.multiply),
    "aten.mul.Scalar": _binary(relax.op.multiply),
    "aten.div.Tensor": _binary(relax.op.divide),
    "aten.div.Scalar": _binary(relax.op.divide),
    "aten.dropout.default": _identity,
    "aten.contiguous.default": _identity,
    "aten.clone.default": _identity,
    "aten.detach.default": _identity,
    "aten.alias.default": _identity,
}

_NCHW = {
    "aten.mean.dim": _mean,
    "aten.sum.dim_IntList": _sum,
    "aten.adaptive_avg_pool2d.default": lambda em, shape, x, size: relax.op.nn.adaptive_avg_pool2d(x, list(size) * (2 // len(size))),
    "aten.avg_pool2d.default": _avg_pool,
    "aten.max_pool2d.default": _max_pool,
    "aten.upsample_nearest2d.vec": _upsample_nearest,
    "aten.upsample_nearest2d.default": _upsample_nearest,
    "aten.upsample_bilinear2d.vec": _upsample_bilinear,
    "aten.upsample_bilinear2d.default": _upsample_bilinear,
    "aten.constant_pad_nd.default": lambda em, shape, x, pad, value=0: _pad(em, shape, x, pad, value=value),
    "aten.pad.default": _pad,
    "aten.cat.default": _cat,
    "aten.concat.default": _cat,
    "aten.slice.Tensor": _slice,
    "aten.split.Tensor": _split,
    "aten.split_with_sizes.default": _split_sizes,
    "aten.chunk.default": _chunk,
    "getitem": _getitem,
    "aten.view.default": _reshape,
    "aten.reshape.default": _reshape,
    "aten._unsafe_view.default": _reshape,
    "aten.flatten.using_ints": _reshape,
    "aten.unsqueeze.default": _unsqueeze,
    "aten.squeeze.dims": _reshape,
    "aten.squeeze.dim": _reshape,
    "aten.permute.default": _permute,
    "aten.transpose.int": _transpose,
    "aten.t.default": lambda em, shape, x: relax.op.permute_dims(x, [1, 0]),
    "aten._softmax.default": _softmax,
    "aten.softmax.int": _softmax,
    "aten.linear.default": _linear,
    "aten.conv2d.default": _conv,
    "aten.batch_norm.default": _bn,
    "aten._native_batch_norm_legit_no_training.default": _native_bn,
}

# name -> (emit, elementwise)
OPS = {**{k: (v, True) for k, v in _ELEMENTWISE.items()}, **{k: (v, False) for k, v in _NCHW.items()}}


def lookup(node):
    """``(emit, elementwise)`` for a ``FloatOp``; an operator without a Relax lowering is an error naming it."""
    entry = OPS.get(node.target)
    if entry is None:
        where = f" in module {node.module!r}" if node.module else ""
        raise UnsupportedOpError(
            f"operator {node.target!r} (node {node.name!r}{where}) has no integer form and no float lowering in hwq; "
            f"float islands run: {', '.join(sorted(OPS))}")
    return entry
