"""The numerical oracle: a torch emulation of a ``QGraph``'s integer arithmetic, op by op.

Convolutions run in float64, which is exact for these integer operands: every product is below
2^15 and every partial sum below 2^53 (checked), so the result equals int64 arithmetic. Everything
after the accumulator (bias, requantization, clamps, residual adds) runs in int64 following
``hwq.fixed_point``. Any backend that claims to implement a ``QGraph`` must match this bit for bit. Float islands run
in float32 with torch's own operators (see ``hwq.qgraph`` for how far a backend may differ there).
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F

from hwq import qgraph as qg
from hwq.errors import ConfigError, DataError

_EXACT_LIMIT = 2 ** 53


def quantize_input(graph: qg.QGraph, x: torch.Tensor) -> torch.Tensor:
    """Float input -> integers: ``clamp(round_half_even(x / scale))`` in float32, as int64 (a graph
    whose first ops are float takes the float32 input as it is)."""
    if graph.input.is_float:
        return x.float()
    return _round_to_grid(x, graph.input.scale, graph.input.qmin, graph.input.qmax)


def _round_to_grid(x, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round_half_even(x / scale), qmin, qmax)`` in float32, as int64: the model input's
    quantization and every float island's ``Quantize``."""
    q = torch.round(x.float() / torch.tensor(scale, dtype=torch.float32))
    return q.clamp(qmin, qmax).to(torch.int64)


def dequantize_output(graph: qg.QGraph, y: torch.Tensor) -> torch.Tensor:
    """Integer output -> float32 (per channel for an int32 accumulator output); a float output as it is."""
    if graph.output_info.is_float:
        return y.float()
    if graph.output_scales is not None:
        return (y.double() * torch.from_numpy(graph.output_scales)).float()
    return (y.double() * graph.output_info.scale).float()


def _requant(acc: torch.Tensor, rq: qg.Requant, channel_axis: int) -> torch.Tensor:
    shape = [1] * acc.dim()
    if np.asarray(rq.multiplier).size > 1:
        shape[channel_axis] = -1
    M = torch.from_numpy(np.asarray(rq.multiplier, dtype=np.int64)).reshape(shape)
    n = torch.from_numpy(np.asarray(rq.shift, dtype=np.int64)).reshape(shape)
    y = (acc * M + (torch.ones_like(n) << (n - 1))) >> n
    return y.clamp(rq.qmin, rq.qmax)


def _conv(x, node: qg.Conv2d):
    w = torch.from_numpy(node.weight.astype(np.float64))
    bound = float(x.abs().max()) * float(np.abs(node.weight).max()) * np.prod(node.weight.shape[1:])
    if bound >= _EXACT_LIMIT:
        raise ConfigError(f"conv {node.name!r}: accumulator bound {bound:.3g} exceeds 2^53; float64 emulation is not exact")
    acc = F.conv2d(x.double(), w, None, node.stride, node.padding, node.dilation, node.groups)
    acc = acc.round().to(torch.int64) + torch.from_numpy(node.bias.astype(np.int64)).reshape(1, -1, 1, 1)
    return acc if node.requant is None else _requant(acc, node.requant, 1)


def _dense(x, node: qg.Dense):
    acc = (x.double() @ torch.from_numpy(node.weight.astype(np.float64)).T).round().to(torch.int64)
    acc = acc + torch.from_numpy(node.bias.astype(np.int64))
    return acc if node.requant is None else _requant(acc, node.requant, 1)


def _add(a, b, node: qg.Add):
    n = node.shift
    y = (a * node.multipliers[0] + b * node.multipliers[1] + (1 << (n - 1))) >> n
    return y.clamp(node.qmin, node.qmax)


def _global_avg_pool(x, node: qg.GlobalAvgPool):
    return _requant(x.sum(dim=(2, 3), keepdim=True), node.requant, 1)


def _max_pool(x, node: qg.MaxPool2d):
    # torch pads with -inf; every window holds an input element, so this equals padding with qmin
    return F.max_pool2d(x.double(), node.kernel, node.stride, node.padding, ceil_mode=node.ceil_mode).to(torch.int64)


def _avg_pool(x, node: qg.AvgPool2d):
    # window sums (zeros in the padding): exact in float64
    sums = F.avg_pool2d(x.double(), node.kernel, node.stride, node.padding, node.ceil_mode, True, 1)
    M = torch.from_numpy(np.asarray(node.requant.multiplier, dtype=np.int64))
    n = torch.from_numpy(np.asarray(node.requant.shift, dtype=np.int64))
    y = (sums.round().to(torch.int64) * M + (torch.ones_like(n) << (n - 1))) >> n    # M, n: (H_out, W_out) or ()
    return y.clamp(node.requant.qmin, node.requant.qmax)


def _channel_affine(x, node: qg.ChannelAffine):
    shape = [1, -1] + [1] * (x.dim() - 2)
    w = torch.from_numpy(node.weight.astype(np.int64)).reshape(shape)
    b = torch.from_numpy(node.bias.astype(np.int64)).reshape(shape)
    return _requant(x * w + b, node.requant, 1)


def _concat(xs, node: qg.Concat):
    parts = [x if rq is None else _requant(x, rq, 1) for x, rq in zip(xs, node.requants)]
    return torch.cat(parts, dim=node.axis)


def _move(env, node: qg.Move, batch: int):
    # data movement is exact in float64 (some of torch's kernels, nearest upsampling, take no int64)
    def as_float(v):
        return tuple(as_float(u) for u in v) if isinstance(v, (tuple, list)) else v.double()

    def as_int(v):
        return tuple(as_int(u) for u in v) if isinstance(v, (tuple, list)) else v.round().to(torch.int64)

    return as_int(_float_op({k: as_float(env[k]) for k in node.inputs}, node, batch))


def _clamp(y, clamp):
    return y if clamp is None else y.clamp(clamp[0], clamp[1])


def _float_conv(x, node: qg.FloatConv2d):
    y = F.conv2d(x, torch.from_numpy(node.weight), torch.from_numpy(node.bias), node.stride, node.padding,
                 node.dilation, node.groups)
    return _clamp(y, node.clamp)


def _float_dense(x, node: qg.FloatDense):
    return _clamp(F.linear(x, torch.from_numpy(node.weight), torch.from_numpy(node.bias)), node.clamp)


def aten_op(target: str):
    """The callable behind a ``FloatOp.target`` (``"aten.sigmoid.default"``, or ``"getitem"``)."""
    if target == "getitem":
        return operator.getitem
    parts = target.split(".")
    op = torch.ops
    try:
        for p in parts:
            op = getattr(op, p)
    except AttributeError:
        raise ConfigError(f"FloatOp target {target!r} is not an operator of this torch") from None
    # an in-place spelling (``mul_``) runs as its functional twin: a value read again must not change
    if len(parts) == 3 and parts[1].endswith("_"):
        twin = getattr(getattr(torch.ops.aten, parts[1][:-1], None), parts[2], None)
        op = twin if twin is not None else op
    return op


def _float_op(env, node, batch: int):
    def value(a):
        if isinstance(a, qg.Ref):
            return env[a.name]
        if isinstance(a, qg.BatchSize):
            return batch
        if isinstance(a, np.ndarray):
            return torch.from_numpy(a)
        if isinstance(a, tuple):
            return [value(v) for v in a]
        return a
    # a view may read a permuted tensor whose ``contiguous`` the graph dropped as an identity
    target = "aten.reshape.default" if node.target in ("aten.view.default", "aten._unsafe_view.default") else node.target
    return aten_op(target)(*[value(a) for a in node.args], **{k: value(v) for k, v in node.kwargs})


@torch.no_grad()
def run_reference(graph: qg.QGraph, x_int: torch.Tensor) -> torch.Tensor:
    """Run the integer program on an integer input (N, ...) and return the integer output (int64).

    Example:
        >>> y = run_reference(graph, quantize_input(graph, images))
        >>> logits = dequantize_output(graph, y)
    """
    if x_int.is_floating_point() != graph.input.is_float:
        raise ConfigError("run_reference takes the integer input; call quantize_input(graph, x) first")
    if x_int.dim() != 1 + len(graph.input.shape) or tuple(x_int.shape[1:]) != tuple(graph.input.shape):
        raise DataError(f"integer input has shape {tuple(x_int.shape)}; this graph takes "
                        f"(N, {', '.join(map(str, graph.input.shape))})")
    env = {graph.input.name: x_int.float() if graph.input.is_float else x_int.to(torch.int64)}
    for node in graph.nodes:
        if node.op == "conv2d":
            y = _conv(env[node.input], node)
        elif node.op == "dense":
            y = _dense(env[node.input], node)
        elif node.op == "add":
            y = _add(env[node.inputs[0]], env[node.inputs[1]], node)
        elif node.op == "global_avg_pool":
            y = _global_avg_pool(env[node.input], node)
        elif node.op == "max_pool2d":
            y = _max_pool(env[node.input], node)
        elif node.op == "avg_pool2d":
            y = _avg_pool(env[node.input], node)
        elif node.op == "lut":
            y = torch.from_numpy(node.table.astype(np.int64))[env[node.input] - node.input_min]
        elif node.op == "channel_affine":
            y = _channel_affine(env[node.input], node)
        elif node.op == "mul":
            y = _requant(env[node.inputs[0]] * env[node.inputs[1]], node.requant, 1)
        elif node.op == "concat":
            y = _concat([env[i] for i in node.inputs], node)
        elif node.op == "move":
            y = _move(env, node, len(x_int))
        elif node.op == "clamp":
            y = env[node.input].clamp(node.qmin, node.qmax)
        elif node.op == "flatten":
            y = env[node.input].flatten(1)
        elif node.op == "dequantize":
            y = env[node.input].float() * torch.tensor(graph.tensors[node.input].scale, dtype=torch.float32)
        elif node.op == "quantize":
            y = _round_to_grid(env[node.input], node.scale, node.qmin, node.qmax)
        elif node.op == "float_conv2d":
            y = _float_conv(env[node.input], node)
        elif node.op == "float_dense":
            y = _float_dense(env[node.input], node)
        elif node.op == "float":
            y = _float_op(env, node, len(x_int))
        else:
            raise ConfigError(f"QGraph node {node.name!r} has unknown op {node.op!r}")
        env[node.output] = y
    return env[graph.output]
