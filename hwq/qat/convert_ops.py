"""The converter's ops other than conv / linear: one method per ``hwq.qat.groups`` group kind.

Each method turns one group of the exported graph into ``QGraph`` nodes. Integer ops read their
inputs through ``int_input`` (a float value is quantized once, at the island's border); float ops
through ``float_input`` (an integer value is dequantized once).
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from hwq import qgraph as qg
from hwq.errors import QuantizationError, UnsupportedOpError
from hwq.fixed_point import common_shift, quantize_multiplier
from hwq.qat.exported import BATCHED_SHAPE, module_name
from hwq.qat.groups import FLOAT_OP, HARDTANH, IDENTITY, Group, fold_batch_norm, hardtanh_bounds, pair

_INT32_MAX = int(np.iinfo(np.int32).max)


def lut_table(nodes, source: str, x: qg.TensorInfo, out: qg.TensorInfo) -> tuple[np.ndarray, int]:
    """The table of a chain of elementwise ops (fx ``nodes``, reading value ``source``): one entry per
    integer of ``x``'s 8-bit container, from its minimum (returned second).

    Each entry is what the float island would compute: the input dequantized as ``Dequantize`` does
    (``float32(k) * float32(scale)``), the chain's own ATen ops in float32, then quantized as
    ``Quantize`` does (``clamp(round_half_even(y / scale))``). A NaN (``sqrt`` of a negative) maps to 0.
    """
    lo, hi = (-128, 127) if x.dtype == "int8" else (0, 255)
    env = {source: torch.arange(lo, hi + 1).float() * torch.tensor(x.scale, dtype=torch.float32)}
    for n in nodes:       # copies: an in-place op (geffnet's ``x.mul_(...)``) must not change a value read again
        args = torch.fx.node.map_arg(n.args, lambda a: env[a.name].clone())
        kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: env[a.name].clone())
        env[n.name] = n.target(*args, **kwargs)
    y = env[nodes[-1].name].float()
    q = torch.nan_to_num(torch.round(y / torch.tensor(out.scale, dtype=torch.float32)), nan=0.0)
    return q.clamp(out.qmin, out.qmax).to(torch.int64).numpy(), lo


def avg_pool_divisors(in_hw, out_hw, kernel, stride, padding, count_include_pad, divisor_override=None) -> np.ndarray:
    """torch's divisor at each output position of ``avg_pool2d`` (its CPU kernel's rule): the window
    clipped to the padded input, then to the input itself unless ``count_include_pad``."""
    if divisor_override:
        return np.full(out_hw, int(divisor_override), np.int64)
    sizes = []
    for n, o, k, s, p in zip(in_hw, out_hw, kernel, stride, padding):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        size = end - start
        if not count_include_pad:
            size = np.minimum(end, n) - np.maximum(start, 0)
        sizes.append(size)
    return np.outer(sizes[0], sizes[1]).astype(np.int64)


class IntegerOps:
    """Mixed into the converter: needs ``value``, ``int_input``, ``float_input``, ``new_value``,
    ``float_value``, ``in_island``, ``nodes``, ``tensors``, ``alias``, ``consts``, ``plan``, ``export_batch``."""

    # ------------------------------------------------------------------ ATen ops as they are
    def _aten_args(self, node, tensor):
        """``node``'s args and kwargs as ``FloatOp`` / ``Move`` spell them, graph values through ``tensor``."""
        refs: list = []

        def plain(a):
            if isinstance(a, torch.fx.Node):
                if a.target is torch.ops.aten.sym_size.int and a.args[1] == 0:
                    return qg.BatchSize()          # a dynamic-batch export's size arithmetic
                if not isinstance(a.meta.get("val"), (torch.Tensor, list, tuple)):
                    raise UnsupportedOpError(f"op {node.name!r} (module {module_name(node)!r}) takes the computed "
                                             f"value {a.name!r}; float islands take tensors, constants and the batch size")
                if a.name in self.consts:
                    return self.consts[a.name].detach().numpy()
                name = tensor(a)
                refs.append(name)
                return qg.Ref(name)
            if isinstance(a, (list, tuple)):
                return tuple(plain(v) for v in a)
            return a

        args = plain(node.args)
        if node.target in BATCHED_SHAPE and len(args) > 1 and args[1] and args[1][0] == self.export_batch:
            args = (args[0], (qg.BatchSize(), *args[1][1:]), *args[2:])
        kwargs = tuple((k, plain(v)) for k, v in node.kwargs.items())
        target = "getitem" if node.target is operator.getitem else str(node.target)
        return target, args, kwargs, tuple(dict.fromkeys(refs))

    def float_op(self, group, why=None):
        """Any operator as it is, in float32 (``qg.FloatOp``): its tensor inputs dequantized."""
        node = group.anchor
        target, args, kwargs, refs = self._aten_args(node, self.float_input)
        out = self.float_value(node)
        self.nodes.append(qg.FloatOp(node.name, refs, out.name, target, args, kwargs, why or group.why,
                                     module_name(node)))

    def move(self, group):
        """Data movement on integers (``qg.Move``): the output keeps the input's scale."""
        node = group.anchor
        target, args, kwargs, refs = self._aten_args(node, lambda a: self.int_input(a).name)
        x = self.int_input(node.args[0])
        val = node.meta.get("val")
        shape = tuple(val.shape[1:]) if isinstance(val, torch.Tensor) else ()      # () for a split's tuple
        self.tensors[node.name] = qg.TensorInfo(node.name, shape, x.dtype, x.scale, x.qmin, x.qmax)
        self.nodes.append(qg.Move(node.name, refs, node.name, target, args, kwargs, module_name(node)))

    # ------------------------------------------------------------------ tables
    def lut(self, group):
        """A chain of elementwise ops on one integer value: one table (``qg.Lut``), or float ops where
        its input is float or only float ops read it."""
        if self.in_island(group) or group.source.name in self.consts:
            why = "its input is float" if self.value_is_float(group.source) else "only float ops read it"
            for n in group.nodes:
                if n.target in IDENTITY:
                    self.alias[n.name] = self.alias.get(n.args[0].name, n.args[0].name)
                elif n.name not in self.tensors:
                    self.float_op(Group(FLOAT_OP, n, n), why)
            return
        x = self.int_input(group.source)
        out = self.new_value(group.output, self.plan.default.act_bits, group.nonneg)
        table, lo = lut_table(group.nodes, group.source.name, x, out)
        ops = tuple(str(n.target) for n in group.nodes if n.target not in IDENTITY)
        self.nodes.append(qg.Lut(group.output.name, x.name, out.name, table, lo, ops))

    def value_is_float(self, node) -> bool:
        name = self.alias.get(node.name, node.name)
        return name in self.tensors and self.tensors[name].is_float

    # ------------------------------------------------------------------ arithmetic
    def add(self, group):
        node, cur = group.anchor, group.output
        ia, ib = self.int_input(node.args[0]), self.int_input(node.args[1])
        out = self.new_value(cur, self.plan.default.act_bits, group.nonneg, group.clamp_hi)
        M, n = common_shift([ia.scale / out.scale, ib.scale / out.scale])
        self.nodes.append(qg.Add(node.name, (ia.name, ib.name), out.name, (int(M[0]), int(M[1])), n, out.qmin, out.qmax))
        self.alias[cur.name] = out.name

    def mul(self, group):
        node = group.anchor
        ia, ib = self.int_input(node.args[0]), self.int_input(node.args[1])
        out = self.new_value(node, self.plan.default.act_bits, group.nonneg)
        M, n = quantize_multiplier(ia.scale * ib.scale / out.scale)
        self.nodes.append(qg.Mul(node.name, (ia.name, ib.name), out.name, qg.Requant(M, n, out.qmin, out.qmax)))

    def concat(self, group):
        node = group.anchor
        ins = [self.int_input(a) for a in node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = self.new_value(node, self.plan.default.act_bits, group.nonneg)
        requants = []
        for t in ins:          # one on the output's scale and range already is copied as it is
            if (t.scale, t.qmin, t.qmax, t.dtype) == (out.scale, out.qmin, out.qmax, out.dtype):
                requants.append(None)
            else:
                M, n = quantize_multiplier(t.scale / out.scale)
                requants.append(qg.Requant(M, n, out.qmin, out.qmax))
        self.nodes.append(qg.Concat(node.name, tuple(t.name for t in ins), out.name, dim % (len(out.shape) + 1),
                                    tuple(requants)))

    def batch_norm(self, group):
        """A BatchNorm no conv absorbs: per channel, an exact int8 weight (one value on its own scale), an
        int32 bias and a requantization (``qg.ChannelAffine``)."""
        node, cur = group.anchor, group.output
        x = self.int_input(node.args[0])
        c = x.shape[0]
        k, b = fold_batch_norm(group.bn, torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64),
                               lambda n: self.consts[n.name])
        wq_max = 2 ** (self.plan.default.weight_bits - 1) - 1
        s_w = torch.where(k != 0, k.abs() / wq_max, torch.ones_like(k))
        s_w = torch.maximum(s_w, b.abs() / (x.scale * 2.0 ** 30))        # the bias fits int32 (see ``layer``)
        wq = torch.clamp(torch.round(k / s_w), -wq_max, wq_max)
        acc_scale = x.scale * s_w
        out = self.new_value(cur, self.plan.default.act_bits, group.nonneg, group.clamp_hi)
        M, n = quantize_multiplier((acc_scale / out.scale).numpy())
        self.nodes.append(qg.ChannelAffine(node.name, x.name, out.name, wq.numpy().astype(np.int8),
                                           torch.round(b / acc_scale).numpy().astype(np.int32),
                                           qg.Requant(M, n, out.qmin, out.qmax)))
        self.alias[cur.name] = out.name

    # ------------------------------------------------------------------ pooling
    def global_pool(self, group):
        node = group.anchor
        ix = self.int_input(node.args[0])
        keepdim = node.target is torch.ops.aten.adaptive_avg_pool2d.default or bool(
            node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
        out = self.new_value(node, self.plan.default.act_bits, group.nonneg)
        hw = ix.shape[1] * ix.shape[2]
        self._check_sum(node, hw, ix)
        M, n = quantize_multiplier(ix.scale / (hw * out.scale))
        rq = qg.Requant(M, n, out.qmin, out.qmax)
        if keepdim:
            self.nodes.append(qg.GlobalAvgPool(node.name, ix.name, out.name, rq))
            return
        # mean over (2, 3) without keepdim: pool to (C, 1, 1), then flatten to (C,)
        pooled = qg.TensorInfo(f"{node.name}_pool", (ix.shape[0], 1, 1), out.dtype, out.scale, out.qmin, out.qmax)
        self.tensors[pooled.name] = pooled
        self.nodes.append(qg.GlobalAvgPool(node.name, ix.name, pooled.name, rq))
        self.nodes.append(qg.Flatten(f"{node.name}_flatten", pooled.name, out.name))

    def avg_pool(self, group):
        node = group.anchor
        args, kernel, stride, padding = _pool_window(node)
        ceil_mode = bool(args[4])
        count_include_pad = True if args[5] is None else bool(args[5])
        ix = self.int_input(node.args[0])
        out = self.new_value(node, self.plan.default.act_bits, group.nonneg)
        self._check_sum(node, kernel[0] * kernel[1], ix)
        divisors = avg_pool_divisors(ix.shape[1:], out.shape[1:], kernel, stride, padding, count_include_pad, args[6])
        if np.all(divisors == divisors.flat[0]):
            divisors = divisors.flat[0]
        M, n = quantize_multiplier(ix.scale / (divisors * out.scale))
        self.nodes.append(qg.AvgPool2d(node.name, ix.name, out.name, kernel, stride, padding, ceil_mode,
                                       qg.Requant(M, n, out.qmin, out.qmax)))

    def _check_sum(self, node, count, ix):
        if count * max(abs(ix.qmin), abs(ix.qmax)) > _INT32_MAX:     # the pool's int32 sum
            raise QuantizationError(f"pool {node.name!r} can overflow its int32 sum: {count} pixels x "
                                    f"{max(abs(ix.qmin), abs(ix.qmax))} > 2^31-1 = {_INT32_MAX}")

    def max_pool(self, group):
        node = group.anchor
        args, kernel, stride, padding = _pool_window(node)
        ix = self.int_input(node.args[0])
        self._same_scale(node, ix, tuple(node.meta["val"].shape[1:]))
        self.nodes.append(qg.MaxPool2d(node.name, ix.name, node.name, kernel, stride, padding, bool(args[5])))

    # ------------------------------------------------------------------ same scale
    def flatten(self, group):
        node = group.anchor
        ix = self.int_input(node.args[0])
        self._same_scale(node, ix, tuple(node.meta["val"].shape[1:]))
        self.nodes.append(qg.Flatten(node.name, ix.name, node.name))

    def clamp(self, group):
        node = group.anchor
        ix = self.int_input(node.args[0])
        hi = ix.qmax
        if node.target in HARDTANH:
            hi = min(hi, int(np.floor(hardtanh_bounds(node)[1] / ix.scale + 0.5)))
        t = qg.TensorInfo(node.name, ix.shape, ix.dtype, ix.scale, max(ix.qmin, 0), hi)
        self.tensors[t.name] = t
        self.nodes.append(qg.Clamp(node.name, ix.name, node.name, t.qmin, t.qmax))

    def identity(self, group):
        node = group.anchor
        self.alias[node.name] = self.alias.get(node.args[0].name, node.args[0].name)

    def _same_scale(self, node, ix, shape):
        self.tensors[node.name] = qg.TensorInfo(node.name, shape, ix.dtype, ix.scale, ix.qmin, ix.qmax)


def _pool_window(node) -> tuple:
    """``(arguments padded with None to 7, kernel, stride, padding)`` of a max / avg pool node
    (stride defaults to the kernel, padding to 0, as in torch)."""
    args = list(node.args) + [None] * (7 - len(node.args))
    kernel = pair(args[1])
    return args, kernel, pair(args[2]) if args[2] else kernel, pair(args[3] if args[3] is not None else 0)
