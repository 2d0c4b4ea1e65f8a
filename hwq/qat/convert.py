"""Convert a float model's ``torch.export`` graph into hwq's integer program (``QGraph``).

The exported graph is the one source of truth: its conv / linear / add / pool nodes become
integer ops, a conv's BatchNorm and ReLU are fused into it (BN folded into the weights, ReLU into
the requantization clamp), and the scales come from calibration ranges (or, after QAT, from the
trained quantizers). Anything else is rejected with the list of what is supported.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch.export import ExportedProgram

from hwq import qgraph as qg
from hwq.errors import QuantizationError, UnsupportedOpError, choices
from hwq.fixed_point import choose_scale, common_shift, quantize_multiplier
from hwq.plan import BitPlan
from hwq.qat.exported import constants, export_model, module_name, run_graph, user_input_name

aten = torch.ops.aten
_CONV = {aten.conv2d.default}
_LINEAR = {aten.linear.default}
_BN = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_RELU = {aten.relu.default, aten.relu_.default}
_HARDTANH = {aten.hardtanh.default, aten.hardtanh_.default}
_ADD = {aten.add.Tensor, aten.add_.Tensor}
_GAP = {aten.adaptive_avg_pool2d.default, aten.mean.dim}
_MAXPOOL = {aten.max_pool2d.default}
_FLATTEN = {aten.flatten.using_ints, aten.view.default, aten.reshape.default}
_IDENTITY = {aten.dropout.default, aten.contiguous.default, aten.clone.default, aten.detach.default}
SUPPORTED_OPS = sorted(str(op) for op in
                       _CONV | _LINEAR | _BN | _RELU | _HARDTANH | _ADD | _GAP | _MAXPOOL | _FLATTEN | _IDENTITY)
_INT32 = np.iinfo(np.int32)


def calibrate(ep: ExportedProgram, batches) -> dict:
    """Run float batches through ``ep`` and return ``{node name: (min, max)}`` of every value."""
    ranges = {}

    def record(node, value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            lo, hi = float(value.min()), float(value.max())
            old = ranges.get(node.name)
            ranges[node.name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    seen = False
    for x in batches:
        seen = True
        run_graph(ep, x, record)
        ranges["__input__"] = _merge(ranges.get("__input__"), (float(x.min()), float(x.max())))
    if not seen:
        raise QuantizationError("calibration needs at least one batch, got none")
    return ranges


def _merge(old, new):
    return new if old is None else (min(old[0], new[0]), max(old[1], new[1]))


def quantize_ptq(model: torch.nn.Module, calibration: torch.Tensor, plan: BitPlan = BitPlan(),
                 batch_size: int = 256) -> qg.QGraph:
    """Post-training quantization: export, calibrate min/max on ``calibration``, convert.

    Args:
        model: a float model whose ops are among ``SUPPORTED_OPS``.
        calibration: float inputs (N, C, H, W) drawn from the training distribution.
        plan: per-layer bits; the default is int8 weights (per channel) and int8 activations.

    Returns:
        The integer program, ready for ``hwq.lower.compile_model`` or ``run_reference``.
    """
    ep = export_model(model, calibration[:1])
    ranges = calibrate(ep, (calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)))
    return convert(ep, ranges, plan)


def convert(ep: ExportedProgram, ranges: dict, plan: BitPlan = BitPlan()) -> qg.QGraph:
    """Build the ``QGraph`` of ``ep`` from activation ranges (``calibrate``'s output)."""
    return _Converter(ep, ranges, plan).run()


def _sole_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _pair(v, n=2):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


class _Converter:
    def __init__(self, ep, ranges, plan):
        self.ep, self.ranges, self.plan = ep, ranges, plan
        self.consts = constants(ep)
        self.tensors: dict = {}
        self.nodes: list = []
        self.alias: dict = {}          # fx node name -> QGraph value name
        self.done: set = set()
        layer_names = [module_name(n) for n in ep.graph.nodes if n.op == "call_function" and n.target in _CONV | _LINEAR]
        plan.check_names(layer_names)

    # ------------------------------------------------------------------ values and scales
    def value(self, node) -> qg.TensorInfo:
        return self.tensors[self.alias.get(node.name, node.name)]

    def _range(self, name):
        if name not in self.ranges:
            raise QuantizationError(f"no calibration range for value {name!r}; calibrate the same exported program")
        return self.ranges[name]

    def new_value(self, fx_node, bits, nonneg, clamp_hi=None) -> qg.TensorInfo:
        spec_signed = not nonneg
        qmax = 2 ** (bits - 1) - 1 if spec_signed else 2 ** bits - 1
        qmin = -qmax if spec_signed else 0
        lo, hi = self._range(fx_node.name)
        if clamp_hi is not None:
            hi = min(hi, clamp_hi)
        scale = choose_scale(lo, hi, qmin, qmax)
        shape = tuple(fx_node.meta["val"].shape[1:])
        t = qg.TensorInfo(fx_node.name, shape, "int8" if spec_signed else "uint8", scale, qmin, qmax)
        self.tensors[t.name] = t
        return t

    # ------------------------------------------------------------------ walk
    def run(self) -> qg.QGraph:
        inp = user_input_name(self.ep)
        lo, hi = self._range("__input__")
        nonneg = lo >= 0
        qmax = 255 if nonneg else 127
        in_node = next(n for n in self.ep.graph.nodes if n.name == inp)
        self.input = qg.TensorInfo(inp, tuple(in_node.meta["val"].shape[1:]), "uint8" if nonneg else "int8",
                                   choose_scale(lo, hi, 0 if nonneg else -qmax, qmax), 0 if nonneg else -qmax, qmax)
        self.tensors[inp] = self.input
        output = None
        for node in self.ep.graph.nodes:
            if node.op == "output":
                outs = node.args[0]
                if len(outs) != 1:
                    raise UnsupportedOpError(f"hwq lowers models with one output, this one has {len(outs)}")
                output = self.alias.get(outs[0].name, outs[0].name)
            elif node.op == "call_function" and node.name not in self.done:
                self.visit(node)
        out_scales = None
        last = self.nodes[-1]
        if getattr(last, "requant", "x") is None:
            out_scales = self._pending_out_scales
        return qg.QGraph(self.input, tuple(self.nodes), output, dict(self.tensors), out_scales)

    def visit(self, node):
        t = node.target
        if t in _CONV or t in _LINEAR:
            return self.layer(node)
        if t in _ADD:
            return self.add(node)
        if t in _GAP:
            return self.global_pool(node)
        if t in _MAXPOOL:
            return self.max_pool(node)
        if t in _FLATTEN:
            return self.flatten(node)
        if t in _RELU or t in _HARDTANH:
            return self.clamp(node)
        if t in _IDENTITY:
            self.alias[node.name] = self.alias.get(node.args[0].name, node.args[0].name)
            return None
        raise UnsupportedOpError(
            f"operator {str(t)!r} (node {node.name!r}, module {module_name(node)!r}) is not supported by the "
            f"integer lowering; supported: {choices(SUPPORTED_OPS)}")

    def _fuse_activation(self, cur):
        """Follow ``cur`` into a sole ReLU / hardtanh user; returns (last node, nonneg, clamp_hi)."""
        nxt = _sole_user(cur)
        if nxt is not None and nxt.target in _RELU:
            self.done.add(nxt.name)
            return nxt, True, None
        if nxt is not None and nxt.target in _HARDTANH:
            lo, hi = (list(nxt.args[1:3]) + [-1.0, 1.0][len(nxt.args) - 1:])[:2]
            if lo == 0.0:
                self.done.add(nxt.name)
                return nxt, True, float(hi)
        return cur, False, None

    # ------------------------------------------------------------------ conv / linear (+BN, +ReLU)
    def layer(self, node):
        is_conv = node.target in _CONV
        x, w_node = node.args[0], node.args[1]
        b_node = node.args[2] if len(node.args) > 2 else None
        w = self.consts[w_node.name].detach().double()
        b = self.consts[b_node.name].detach().double() if b_node is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        cur = node
        bn = _sole_user(cur)
        if is_conv and bn is not None and bn.target in _BN:
            w, b = self._fold_bn(bn, w, b)
            self.done.add(bn.name)
            cur = bn
            if bn.target is aten._native_batch_norm_legit_no_training.default:
                cur = _sole_user(bn)
                if cur is None or cur.target is not operator.getitem or cur.args[1] != 0:
                    raise UnsupportedOpError(f"BatchNorm {bn.name!r} whose statistics outputs are used is not supported")
                self.done.add(cur.name)
        cur, nonneg, clamp_hi = self._fuse_activation(cur)
        name = module_name(node)
        spec = self.plan.spec_for(name)
        x_info = self.value(x)
        # weights: symmetric, per output channel, narrow range [-qmax, qmax]
        wq_max = 2 ** (spec.weight_bits - 1) - 1
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        s_w = torch.where(amax > 0, amax / wq_max, torch.ones_like(amax))
        wq = torch.clamp(torch.round(w / s_w.reshape(-1, *[1] * (w.dim() - 1))), -wq_max, wq_max)
        acc_scale = x_info.scale * s_w
        bq = torch.round(b / acc_scale)
        if bq.abs().max() > _INT32.max:
            raise QuantizationError(f"layer {name!r}: bias does not fit int32 at scale {float(acc_scale.min())!r}")
        is_output = any(u.op == "output" for u in cur.users) and not nonneg
        if is_output:
            out = qg.TensorInfo(cur.name, tuple(cur.meta["val"].shape[1:]), "int32", 1.0, int(_INT32.min), int(_INT32.max))
            self.tensors[out.name] = out
            requant = None
            self._pending_out_scales = acc_scale.numpy()
        else:
            out = self.new_value(cur, spec.act_bits, nonneg, clamp_hi)
            M, n = quantize_multiplier((acc_scale / out.scale).numpy())
            requant = qg.Requant(M, n, out.qmin, out.qmax)
        common = dict(name=name or node.name, input=x_info.name, output=out.name,
                      weight=wq.numpy().astype(np.int8), bias=bq.numpy().astype(np.int32), requant=requant)
        if is_conv:
            stride, padding, dilation = (_pair(a) for a in (list(node.args[3:6]) + [1, 0, 1][len(node.args[3:6]):]))
            groups = int(node.args[6]) if len(node.args) > 6 else 1
            if isinstance(node.args[4] if len(node.args) > 4 else 0, str):
                raise UnsupportedOpError(f"conv {name!r}: string padding {node.args[4]!r}; use integer padding")
            self.nodes.append(qg.Conv2d(stride=stride, padding=padding, dilation=dilation, groups=groups, **common))
        else:
            self.nodes.append(qg.Dense(**common))
        self.alias[cur.name] = out.name

    def _fold_bn(self, bn, w, b):
        if bn.target is aten.batch_norm.default:
            _, gamma, beta, mean, var, training, _mom, eps = bn.args[:8]
            if training:
                raise UnsupportedOpError(f"BatchNorm {bn.name!r} is in training mode; call model.eval() first")
        else:
            _, gamma, beta, mean, var, _mom, eps = bn.args[:7]
        get = lambda n, d: self.consts[n.name].detach().double() if n is not None else d  # noqa: E731
        mean, var = get(mean, None), get(var, None)
        gamma = get(gamma, torch.ones_like(mean))
        beta = get(beta, torch.zeros_like(mean))
        k = gamma / torch.sqrt(var + eps)
        return w * k.reshape(-1, 1, 1, 1), (b - mean) * k + beta

    # ------------------------------------------------------------------ other ops
    def add(self, node):
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or node.kwargs.get("alpha", 1) != 1:
            raise UnsupportedOpError(f"add {node.name!r}: only tensor + tensor (alpha=1) is supported, got {node.args!r}")
        cur, nonneg, clamp_hi = self._fuse_activation(node)
        ia, ib = self.value(a), self.value(b)
        out = self.new_value(cur, self.plan.default.act_bits, nonneg, clamp_hi)
        M, n = common_shift([ia.scale / out.scale, ib.scale / out.scale])
        self.nodes.append(qg.Add(node.name, (ia.name, ib.name), out.name, (int(M[0]), int(M[1])), n, out.qmin, out.qmax))
        self.alias[cur.name] = out.name

    def global_pool(self, node):
        x = node.args[0]
        if node.target is aten.adaptive_avg_pool2d.default:
            ok = tuple(_pair(node.args[1])) == (1, 1)
        else:
            dims = sorted(d % 4 for d in node.args[1])
            ok = dims == [2, 3] and (node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
        if not ok:
            raise UnsupportedOpError(f"pooling {node.name!r} with arguments {node.args[1:]!r}: only global average "
                                     f"pooling to 1x1 (adaptive_avg_pool2d(x, 1) or mean over H, W with keepdim) is supported")
        ix = self.value(x)
        out = self.new_value(node, self.plan.default.act_bits, ix.qmin >= 0)
        hw = ix.shape[1] * ix.shape[2]
        M, n = quantize_multiplier(ix.scale / (hw * out.scale))
        self.nodes.append(qg.GlobalAvgPool(node.name, ix.name, out.name, qg.Requant(M, n, out.qmin, out.qmax)))

    def max_pool(self, node):
        args = list(node.args) + [None] * 6
        kernel = _pair(args[1])
        stride = _pair(args[2]) if args[2] else kernel
        padding = _pair(args[3] if args[3] is not None else 0)
        if _pair(args[4] if args[4] is not None else 1) != (1, 1) or args[5]:
            raise UnsupportedOpError(f"max_pool2d {node.name!r}: dilation and ceil_mode are not supported")
        ix = self.value(node.args[0])
        shape = tuple(node.meta["val"].shape[1:])
        self._same_scale(node, ix, shape)
        self.nodes.append(qg.MaxPool2d(node.name, ix.name, node.name, kernel, stride, padding))

    def flatten(self, node):
        ix = self.value(node.args[0])
        shape = tuple(node.meta["val"].shape[1:])
        if len(shape) != 1:
            raise UnsupportedOpError(f"reshape {node.name!r} to {shape!r}: only flattening to (N, features) is supported")
        self._same_scale(node, ix, shape)
        self.nodes.append(qg.Flatten(node.name, ix.name, node.name))

    def clamp(self, node):
        ix = self.value(node.args[0])
        hi = ix.qmax
        if node.target in _HARDTANH:
            lo_f, hi_f = (list(node.args[1:3]) + [-1.0, 1.0][len(node.args) - 1:])[:2]
            if lo_f != 0.0:
                raise UnsupportedOpError(f"hardtanh {node.name!r} with min {lo_f!r}: only min 0 (ReLU6-like) is supported")
            hi = min(hi, int(np.floor(hi_f / ix.scale + 0.5)))
        t = qg.TensorInfo(node.name, ix.shape, ix.dtype, ix.scale, max(ix.qmin, 0), hi)
        self.tensors[t.name] = t
        self.nodes.append(qg.Clamp(node.name, ix.name, node.name, t.qmin, t.qmax))

    def _same_scale(self, node, ix, shape):
        self.tensors[node.name] = qg.TensorInfo(node.name, shape, ix.dtype, ix.scale, ix.qmin, ix.qmax)
