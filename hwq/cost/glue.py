"""The work around the kernels: what the lowering emits between them, as the cost model counts it.

This mirrors ``hwq.lower.relax_builder`` op for op (it reads the same kernel choice from
``hwq.cost.options`` and the same residual-add fusion from ``hwq.qgraph.fusable_adds``): the
layout moves at the ends, a pass that shifts a tensor into a kernel's byte type and pads it, a
slice dropping padded output channels, unfused residual adds, pooling, the input quantize and the
output dequantize. Each is memory traffic plus one operator launch; ``hwq.cost.calibrate`` fits the
launch cost and the effective bandwidth of these passes to whole-model measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq import qgraph as qg
from hwq.cost.options import has_kernels, plan_layers
from hwq.plan import BitPlan
from hwq.target import Target


@dataclass(frozen=True)
class GlueOp:
    """One operator between kernels: ``bytes_per_image`` read plus written, one launch per call."""

    name: str
    kind: str
    bytes_per_image: float


def _elems(shape) -> int:
    return int(np.prod(shape))


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def layer_ops(graph: qg.QGraph, node, kernel, workload, nhwc: bool) -> list[GlueOp]:
    """The glue a conv / dense layer brings with ``kernel``: the shift and pad of its input, the
    slice of padded output channels, an fp32 layer's dequantize / quantize borders, and the residual
    add that reads its output when its kernel cannot take that add into its epilogue."""
    t = graph.tensors
    k, wl = kernel, workload
    ops = []
    n_in = _elems(t[node.input].shape)
    if k.dtype == "fp32":
        # float32 <-> byte at the island's borders: 5 bytes per element each; the kernel pads inside
        ops.append(GlueOp(node.name, "dequantize", 5.0 * n_in))
        if node.requant is not None:
            ops.append(GlueOp(node.name, "quantize", 5.0 * _elems(t[node.output].shape)))
    elif k.name not in ("cpu-depthwise", "generic") and not (     # those pad themselves / are priced whole
            wl.op == "conv2d" and wl.in_channels < 4 and wl.kernel[0] * wl.kernel[1] > 1):   # im2col: timed with it
        if t[node.input].dtype != k.in_dtype or (k.pair_bound and t[node.input].dtype == "int8"):
            ops.append(GlueOp(node.name, "shift", 2.0 * n_in))
        ph, pw = wl.padding if wl.op == "conv2d" else (0, 0)
        cin_p = _round_up(wl.in_channels, 4)
        if ph or pw or cin_p != wl.in_channels:
            _, h, w = wl.in_shape if wl.op == "conv2d" else (wl.in_channels, 1, 1)
            ops.append(GlueOp(node.name, "pad", n_in + (h + 2 * ph) * (w + 2 * pw) * cin_p))
        cout = wl.out_channels
        if cout % k.block:
            oh, ow = wl.out_hw
            ops.append(GlueOp(node.name, "slice", oh * ow * (cout + _round_up(cout, k.block))))
    fusable = qg.fusable_adds(graph) if nhwc else {}
    if node.output in fusable:
        fuses = k.dtype != "fp32" and k.name not in ("cpu-depthwise", "generic") and node.weight.shape[0] % k.block == 0
        if not fuses:
            add = fusable[node.output][0]
            ops.append(GlueOp(add.name, "add", 3.0 * _elems(t[add.output].shape)))
    return ops


# the other ops of a graph, priced as memory passes (hwq's tables, products, concats, moves, pools,
# float islands and their borders)
_ELEMENTWISE_PASSES = ("lut", "mul", "concat", "move", "avg_pool2d", "channel_affine", "quantize", "dequantize",
                       "float", "float_conv2d", "float_dense")


def graph_ops(graph: qg.QGraph, target: Target) -> list[GlueOp]:
    """The glue that does not depend on any layer's option: input quantize, layout moves, pools,
    the adds no conv could fuse, the output dequantize."""
    nhwc = has_kernels(target)
    t = graph.tensors
    attributed = {add.name for add, _ in (qg.fusable_adds(graph) if nhwc else {}).values()}
    ops = [GlueOp("input", "quantize", 5.0 * _elems(graph.input.shape))]     # float32 read, byte written
    if nhwc:
        ops.append(GlueOp("input", "layout", 2.0 * _elems(graph.input.shape)))
    for node in graph.nodes:
        if node.op == "add":
            if node.name not in attributed:                 # else the conv's layer_ops count it
                ops.append(GlueOp(node.name, "add", 3.0 * _elems(t[node.output].shape)))
        elif node.op in ("global_avg_pool", "max_pool2d", "clamp"):
            ops.append(GlueOp(node.name, node.op, _elems(t[node.input].shape) + _elems(t[node.output].shape)))
        elif node.op == "flatten" and nhwc and _elems(t[node.input].shape[1:]) > 1:
            ops.append(GlueOp(node.name, "layout", 2.0 * _elems(t[node.input].shape)))
        elif node.op in _ELEMENTWISE_PASSES:
            # one pass over inputs and output (float values at 4 bytes per element)
            ins = node.inputs if hasattr(node, "inputs") else (node.input,)
            size = lambda name: _elems(t[name].shape) * (4 if t[name].is_float else 1)   # noqa: E731
            ops.append(GlueOp(node.name, node.op, sum(size(i) for i in ins if i in t) + size(node.output)))
    out = graph.output_info
    width = 4 if out.dtype == "int32" else 1
    ops.append(GlueOp(graph.output, "dequantize", (width + 4.0) * _elems(out.shape)))
    if nhwc and len(out.shape) == 3:
        ops.append(GlueOp(graph.output, "layout", 2.0 * width * _elems(out.shape)))
    return ops


def glue_ops(graph: qg.QGraph, plan: BitPlan, target: Target) -> list[GlueOp]:
    """The glue operators of ``graph`` lowered with ``plan`` for ``target`` (features resolved):
    ``graph_ops`` plus each layer's ``layer_ops`` with the kernel the plan gives it."""
    nhwc = has_kernels(target)
    choices = {c.name: c for c in plan_layers(graph, plan, target)}
    ops = graph_ops(graph, target)
    for node in graph.nodes:
        if node.op in ("conv2d", "dense"):
            c = choices[node.name]
            ops += layer_ops(graph, node, c.kernel, c.workload, nhwc)
    return ops
