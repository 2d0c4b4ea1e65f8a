"""Emit a ``QGraph`` as a Relax module whose conv / dense / add run in integer arithmetic.

Two functions are emitted:
  * ``forward_int(x: uint8|int8[n, ...]) -> integer output``: the integer program, no float at all;
  * ``main(x: float32[n, ...]) -> float32``: quantize the input, call ``forward_int``, dequantize.
The batch dimension ``n`` is symbolic, so one build serves every batch size.

Requantization follows ``hwq.fixed_point`` exactly: int64 product with the per-channel int32
multiplier, add ``2^(shift-1)``, arithmetic right shift, clamp, cast to the 8-bit container.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from hwq import qgraph as qg
from hwq.errors import ConfigError
from hwq.lower import float_ops
from hwq.lower.int_ops import IntegerOps
from hwq.lower.kernels import Kernel, layout_for, select_kernel
from hwq.lower.kernels.conv_params import ResidualAdd
from hwq.lower.kernels.fp32_conv import float_conv_kernel, float_dense_kernel


def _const(a, dtype):
    return relax.const(np.asarray(a).astype(dtype), dtype)


class _Emitter(IntegerOps):
    def __init__(self, bb: relax.BlockBuilder, graph: qg.QGraph, batch, target=None):
        self.bb, self.graph, self.batch, self.target = bb, graph, batch, target
        self.layout = layout_for(target)
        self.kernels_used: list = []
        self.env: dict = {}
        self.fusable = qg.fusable_adds(graph) if self.layout == "NHWC" else {}
        self.fused: set = set()   # names of the add nodes a conv kernel took into its epilogue
        self.nchw: set = set()    # 4-D values a float island left in NCHW while the emitter's layout is NHWC

    def emit(self, expr):
        return self.bb.emit(expr)

    def channel(self, a, ndim, dtype):
        """A per-channel constant broadcast over the channel axis of an ``ndim`` tensor (or a scalar)."""
        a = np.asarray(a)
        if a.size == 1:
            return _const(a.reshape(()), dtype)
        if self.layout == "NHWC" or ndim == 2:
            return _const(a.reshape(-1), dtype)       # channels are the last axis
        return _const(a.reshape([1, -1] + [1] * (ndim - 2)), dtype)

    def requant(self, acc, rq: qg.Requant, ndim: int, dtype: str):
        a64 = self.emit(relax.op.astype(acc, "int64"))
        shift = np.asarray(rq.shift, dtype=np.int64)
        prod = self.emit(relax.op.multiply(a64, self.channel(rq.multiplier, ndim, "int64")))
        rounded = self.emit(relax.op.add(prod, self.channel(np.left_shift(1, shift - 1), ndim, "int64")))
        shifted = self.emit(relax.op.right_shift(rounded, self.channel(shift, ndim, "int64")))
        return self.cast_clip(shifted, rq.qmin, rq.qmax, dtype)

    def call_kernel(self, x, node, kernel: Kernel, in_channels: int, true_channels: int):
        """Offset, pad (or gather patches), call the scheduled PrimFunc, drop padded output channels."""
        if kernel.pre is not None:
            name = f"hwq_im2col_{len(self.kernels_used)}"
            gv = self.bb.add_func(kernel.pre.with_attr("global_symbol", name), name)
            ty = relax.TensorType([self.batch, *kernel.out_shape[:2], kernel.in_channels], kernel.in_dtype)
            x = self.emit(relax.call_tir(gv, [x], ty))
        else:
            if kernel.input_offset:
                # int8 <-> uint8 by +-128: exact in int16, and in range of the kernel's dtype after it
                x16 = self.emit(relax.op.add(self.emit(relax.op.astype(x, "int16")), _const(kernel.input_offset, "int16")))
                x = self.emit(relax.op.astype(x16, kernel.in_dtype))
            pt, pb, pl, pr = kernel.pad
            extra_c = kernel.in_channels - in_channels
            if pt or pb or pl or pr or extra_c:
                # padding holds the real value 0, which is `input_offset` after the shift
                x = self.emit(relax.op.nn.pad(x, [0, 0, pt, pb, pl, pr, 0, extra_c], pad_value=float(kernel.input_offset)))
        name = f"hwq_{node.op}_{len(self.kernels_used)}"
        gv = self.bb.add_func(kernel.func.with_attr("global_symbol", name), name)
        self.kernels_used.append((node.name, kernel.name))
        params = [_const(p, str(p.dtype)) for p in kernel.params]   # relax.const narrows int64 otherwise
        if kernel.residual is not None:
            add, other = self.fusable[node.output]
            params.append(self.env[other])
            self.fused.add(add.name)
            out_ty = relax.TensorType([self.batch, *kernel.out_shape], self.dtype(add.output))
        else:
            out_ty = relax.TensorType([self.batch, *kernel.out_shape], self.dtype(node.output))
        y = self.emit(relax.call_tir(gv, [x, *params], out_ty))
        if kernel.out_channels != true_channels:
            y = self.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[true_channels]))
        return y

    def cast_clip(self, x, qmin, qmax, dtype):
        return self.emit(relax.op.astype(self.emit(relax.op.clip(x, qmin, qmax)), dtype))

    def _kernel(self, node):
        residual = None
        if node.output in self.fusable:
            add, other = self.fusable[node.output]
            mine = add.inputs.index(node.output)
            residual = ResidualAdd(self.dtype(other), add.multipliers[mine], add.multipliers[1 - mine], add.shift,
                                   add.qmin, add.qmax, self.dtype(add.output))
        return select_kernel(node, self.graph.tensors[node.input], self.graph.tensors[node.output], self.target,
                             residual=residual)

    def conv2d(self, x, node: qg.Conv2d):
        kernel = self._kernel(node)
        if kernel is not None:
            return self.call_kernel(x, node, kernel, self.graph.tensors[node.input].shape[0], node.weight.shape[0])
        w, kl = (node.weight, "OIHW") if self.layout == "NCHW" else (node.weight.transpose(2, 3, 1, 0), "HWIO")
        acc = self.emit(relax.op.nn.conv2d(
            x, _const(w, "int8"), strides=node.stride, padding=node.padding, dilation=node.dilation,
            groups=node.groups, data_layout=self.layout, kernel_layout=kl, out_dtype="int32"))
        acc = self.emit(relax.op.add(acc, self.channel(node.bias, 4, "int32")))
        return acc if node.requant is None else self.requant(acc, node.requant, 4, self.dtype(node.output))

    def dense(self, x, node: qg.Dense):
        kernel = self._kernel(node)
        if kernel is not None:
            x4 = self.emit(relax.op.reshape(x, relax.ShapeExpr([self.batch, 1, 1, node.weight.shape[1]])))
            y = self.call_kernel(x4, node, kernel, node.weight.shape[1], node.weight.shape[0])
            return self.emit(relax.op.reshape(y, relax.ShapeExpr([self.batch, node.weight.shape[0]])))
        acc = self.emit(relax.op.matmul(x, _const(node.weight.T, "int8"), out_dtype="int32"))
        acc = self.emit(relax.op.add(acc, _const(node.bias, "int32")))
        return acc if node.requant is None else self.requant(acc, node.requant, 2, self.dtype(node.output))

    def add(self, a, b, node: qg.Add):
        a64 = self.emit(relax.op.astype(a, "int64"))
        b64 = self.emit(relax.op.astype(b, "int64"))
        s = self.emit(relax.op.add(self.emit(relax.op.multiply(a64, _const(node.multipliers[0], "int64"))),
                                   self.emit(relax.op.multiply(b64, _const(node.multipliers[1], "int64")))))
        s = self.emit(relax.op.add(s, _const(1 << (node.shift - 1), "int64")))
        s = self.emit(relax.op.right_shift(s, _const(node.shift, "int64")))
        return self.cast_clip(s, node.qmin, node.qmax, self.dtype(node.output))

    def global_avg_pool(self, x, node: qg.GlobalAvgPool):
        axes = [2, 3] if self.layout == "NCHW" else [1, 2]
        total = self.emit(relax.op.sum(self.emit(relax.op.astype(x, "int32")), axis=axes, keepdims=True))
        return self.requant(total, node.requant, 4, self.dtype(node.output))

    def max_pool2d(self, x, node: qg.MaxPool2d):
        # TVM pads with the dtype's minimum; every window holds a real element (padding < kernel),
        # so the result equals padding with the tensor's qmin as the reference does.
        y = self.emit(relax.op.nn.max_pool2d(x, node.kernel, node.stride, node.padding, ceil_mode=node.ceil_mode,
                                             layout=self.layout))
        # with ceil_mode TVM keeps a last window that starts in the right padding; torch drops it
        _, oh, ow = self.graph.tensors[node.output].shape
        axes = [2, 3] if self.layout == "NCHW" else [1, 2]
        got = [int(y.ty.shape[a]) for a in axes]
        if got != [oh, ow]:
            y = self.emit(relax.op.strided_slice(y, axes=axes, begin=[0, 0], end=[oh, ow]))
        return y

    def flatten(self, x, node: qg.Flatten):
        features = int(np.prod(self.graph.tensors[node.output].shape))
        c, h, w = self.graph.tensors[node.input].shape
        if self.layout == "NHWC" and h * w > 1:   # torch flattens in NCHW order
            x = self.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
        return self.emit(relax.op.reshape(x, relax.ShapeExpr([self.batch, features])))

    def dtype(self, name):
        return self.graph.tensors[name].dtype

    def get(self, name, layout=None):
        """Value ``name`` in ``layout`` (the emitter's by default), permuting a 4-D tensor if needed."""
        layout = layout or self.layout
        x = self.env[name]
        stored = "NCHW" if name in self.nchw else self.layout
        if stored == layout or len(self.graph.tensors[name].shape) != 3:
            return x
        return self.emit(relax.op.permute_dims(x, [0, 3, 1, 2] if layout == "NCHW" else [0, 2, 3, 1]))

    def put(self, name, expr, layout=None):
        self.env[name] = expr
        if (layout or self.layout) != self.layout:
            self.nchw.add(name)
        else:
            self.nchw.discard(name)

    def stored_layout(self, name):
        return "NCHW" if name in self.nchw else self.layout

    # ---------------------------------------------------------------- float islands
    def dequantize(self, node: qg.Dequantize):
        lay = self.stored_layout(node.input)
        xf = self.emit(relax.op.astype(self.get(node.input, lay), "float32"))
        scale = _const(np.float32(self.graph.tensors[node.input].scale), "float32")
        self.put(node.output, self.emit(relax.op.multiply(xf, scale)), lay)

    def quantize(self, node: qg.Quantize):
        lay = self.stored_layout(node.input)
        self.put(node.output, self.round_to_grid(self.get(node.input, lay), node.scale, node.qmin, node.qmax,
                                                 self.dtype(node.output)), lay)

    def round_to_grid(self, x, scale: float, qmin: int, qmax: int, dtype: str):
        """``clamp(round_half_even(x / scale))`` in float32, cast to ``dtype``: the model input's
        quantization and every ``Quantize`` (one IEEE division, so torch rounds the same)."""
        q = self.emit(relax.op.round(self.emit(relax.op.divide(x, _const(np.float32(scale), "float32")))))
        return self.cast_clip(q, qmin, qmax, dtype)

    def float_conv2d(self, x, node: qg.FloatConv2d):
        kernel = None
        if self.layout == "NHWC":
            kernel = float_conv_kernel(self.graph.tensors[node.input].shape[1:] + self.graph.tensors[node.input].shape[:1],
                                       node.weight, node.bias, node.stride, node.padding, node.dilation, node.groups,
                                       node.clamp, False, self.target)
        if kernel is not None:
            return self.call_float_kernel(x, node, kernel)
        w, kl = (node.weight, "OIHW") if self.layout == "NCHW" else (node.weight.transpose(2, 3, 1, 0), "HWIO")
        y = self.emit(relax.op.nn.conv2d(x, _const(w, "float32"), strides=node.stride, padding=node.padding,
                                         dilation=node.dilation, groups=node.groups, data_layout=self.layout,
                                         kernel_layout=kl, out_dtype="float32"))
        y = self.emit(relax.op.add(y, self.channel(node.bias, 4, "float32")))
        return y if node.clamp is None else self._float_clamp(y, node.clamp)

    def float_dense(self, x, node: qg.FloatDense):
        kernel = None
        if self.layout == "NHWC":
            kernel = float_dense_kernel(node.weight.shape[1], node.weight, node.bias, node.clamp, False, self.target)
        if kernel is not None:
            return self.call_float_kernel(x, node, kernel)
        y = self.emit(relax.op.matmul(x, _const(node.weight.T, "float32"), out_dtype="float32"))
        y = self.emit(relax.op.add(y, _const(node.bias, "float32")))
        return y if node.clamp is None else self._float_clamp(y, node.clamp)

    def call_float_kernel(self, x, node, kernel):
        name = f"hwq_{node.op}_{len(self.kernels_used)}"
        gv = self.bb.add_func(kernel.func.with_attr("global_symbol", name), name)
        self.kernels_used.append((node.name, kernel.name))
        params = [_const(p, str(p.dtype)) for p in kernel.params]
        return self.emit(relax.call_tir(gv, [x, *params], relax.TensorType([self.batch, *kernel.out_shape], "float32")))

    def _float_clamp(self, y, clamp):
        return self.emit(relax.op.clip(y, float(clamp[0]), min(float(clamp[1]), 3.4e38)))

    def shape(self, expr) -> tuple:
        """The NCHW shape of a float op's tensor argument (batch ``None``)."""
        return self._shapes[id(expr)]

    def float_op(self, node: qg.FloatOp):
        emit, elementwise = float_ops.lookup(node)
        refs = [r for r in node.inputs if r in self.env]
        four_d = [r for r in refs if len(self.graph.tensors[r].shape) == 3]
        # elementwise on 4-D (or scalar-shaped) tensors only: then a permutation commutes with it
        layout = "NCHW"
        if elementwise and len(four_d) == len([r for r in refs if self.graph.tensors[r].shape != ()]) \
                and not any(isinstance(a, np.ndarray) and a.ndim > 1 for a in node.args) and four_d:
            layout = self.stored_layout(four_d[0])

        self._shapes = {}

        def value(a):
            if isinstance(a, qg.Ref):
                v = self.get(a.name, layout)
                self._shapes[id(v)] = (None, *self.graph.tensors[a.name].shape)
                return v
            if isinstance(a, qg.BatchSize):
                return self.batch
            if isinstance(a, np.ndarray):
                return _const(a.astype(np.float32) if a.dtype.kind == "f" else a, "float32" if a.dtype.kind == "f" else str(a.dtype))
            if isinstance(a, tuple):
                return [value(v) for v in a]
            return a

        out_shape = self.graph.tensors[node.output].shape
        y = emit(self, out_shape, *[value(a) for a in node.args], **{k: value(v) for k, v in node.kwargs})
        y = self.emit(y) if not isinstance(y, relax.Var) else y
        self.put(node.output, y, layout if out_shape and len(out_shape) == 3 else self.layout)

    def body(self, x):
        if self.layout == "NHWC" and len(self.graph.input.shape) == 3:    # an (N, features) input has no layout
            x = self.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
        env = self.env
        env[self.graph.input.name] = x
        for node in self.graph.nodes:
            if node.op == "add":
                if node.name not in self.fused:             # else the conv that produced an input wrote it
                    env[node.output] = self.add(self.get(node.inputs[0]), self.get(node.inputs[1]), node)
            elif node.op == "clamp":
                env[node.output] = self.cast_clip(self.get(node.input), node.qmin, node.qmax, self.dtype(node.output))
            elif node.op in ("dequantize", "quantize"):
                getattr(self, node.op)(node)
            elif node.op in ("float", "move"):       # an ATen op as it is: float, or data movement on integers
                getattr(self, "float_op" if node.op == "float" else "move")(node)
            elif node.op in ("mul", "concat"):
                env[node.output] = getattr(self, node.op)([self.get(i) for i in node.inputs], node)
            elif hasattr(self, node.op):
                env[node.output] = getattr(self, node.op)(self.get(node.input), node)
                fused = self.fusable.get(node.output)
                if fused is not None and fused[0].name in self.fused:
                    env[fused[0].output] = env.pop(node.output)   # the kernel's output is the add's
            else:
                raise ConfigError(f"QGraph node {node.name!r} has op {node.op!r} that the Relax lowering lacks")
        out = self.get(self.graph.output, "NCHW")
        return out


def build_relax_module(graph: qg.QGraph, target=None) -> tvm.IRModule:
    """The Relax ``IRModule`` (functions ``forward_int`` and ``main``) of an integer program.

    With a ``target`` for which hwq has kernels, activations are NHWC inside ``forward_int`` and
    conv / dense call hand-scheduled kernels; without one, Relax's generic NCHW operators.
    Both entry points take and return the graph's own layout (NCHW) either way.
    """
    bb = relax.BlockBuilder()
    n = tirx.Var("n", "int64")
    in_shape = [n, *graph.input.shape]
    xi = relax.Var("x", relax.TensorType(in_shape, graph.input.dtype))
    with bb.function("forward_int", [xi]):
        with bb.dataflow():
            out = bb.emit_output(_Emitter(bb, graph, n, target).body(xi))
        fwd = bb.emit_func_output(out)
    xf = relax.Var("x", relax.TensorType(in_shape, "float32"))
    with bb.function("main", [xf]):
        with bb.dataflow():
            e = _Emitter(bb, graph, n)
            if graph.input.is_float:      # the first ops are float: the input goes in as it is
                q = xf
            else:
                q = e.round_to_grid(xf, graph.input.scale, graph.input.qmin, graph.input.qmax, graph.input.dtype)
            y = e.emit(relax.Call(bb.get().get_global_var("forward_int"), [q]))
            if graph.output_info.is_float:     # a float island ends the graph: nothing to dequantize
                out = bb.emit_output(relax.op.astype(y, "float32"))
            else:
                # dequantize in float64 then round once to float32, as the reference does
                out_ndim = 1 + len(graph.output_info.shape)
                scales = graph.output_scales if graph.output_scales is not None else graph.output_info.scale
                e.layout = "NCHW"   # main sees forward_int's NCHW output
                yf = e.emit(relax.op.multiply(e.emit(relax.op.astype(y, "float64")),
                                              e.channel(scales, out_ndim, "float64")))
                out = bb.emit_output(relax.op.astype(yf, "float32"))
        bb.emit_func_output(out)
    del fwd
    return bb.get()
