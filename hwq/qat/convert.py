"""Convert a float model's ``torch.export`` graph into hwq's integer program (``QGraph``).

The exported graph is the one source of truth: its conv / linear / add / pool nodes become
integer ops, a conv's BatchNorm and ReLU are fused into it (BN folded into the weights, ReLU into
the requantization clamp), a chain of elementwise ops on one integer value becomes a table, and
the scales come from calibration ranges (or, after QAT, from the trained quantizers). Layers the
plan keeps in ``fp32`` and every operator without an integer form become float islands: a
``Dequantize`` where an island reads an integer value, a ``Quantize`` (at the plan's default
activation bits, unsigned when the calibrated range is) where an integer op reads a float one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.export import ExportedProgram

from hwq import qgraph as qg
from hwq.errors import ConfigError, QuantizationError, UnsupportedOpError
from hwq.fixed_point import choose_scale, quantize_multiplier
from hwq.plan import BitPlan
from hwq.qat.convert_ops import IntegerOps
from hwq.qat.exported import check_calibration, constants, export_model, run_graph, user_input_name
from hwq.qat.groups import (CONV, FLOAT_OP, FOLLOW_FLOAT, IDENTITY, SUPPORTED_OPS, Group, conv_arguments,
                            float_values, group_nodes, layer_names, layer_weights)
from hwq.qat.patterns import find_groups

__all__ = ["CALIBRATION_BATCH", "SUPPORTED_OPS", "calibrate", "convert", "export_model", "quantize_ptq"]

_INT32 = np.iinfo(np.int32)

# Images per calibration forward pass. Only running (min, max) pairs outlive a batch, so memory is
# this many images' live activations whatever the calibration set's size (MobileNetV2 at 224x224:
# about 0.55 GB above the model and the images, for 64 images as for 256).
CALIBRATION_BATCH = 32


def calibrate(ep: ExportedProgram, batches) -> dict:
    """Run float batches through ``ep`` and return ``{node name: (min, max)}`` of every value.

    Only the running ranges are kept between batches: the memory it takes is that of one batch.
    """
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
                 batch_size: int = CALIBRATION_BATCH) -> qg.QGraph:
    """Post-training quantization: export, calibrate min/max on ``calibration``, convert.

    Args:
        model: a float model whose ops are among ``SUPPORTED_OPS``.
        calibration: float inputs (N, C, H, W) drawn from the training distribution.
        plan: per-layer bits; the default is int8 weights (per channel) and int8 activations.
        batch_size: images per calibration pass; peak memory grows with it, not with ``len(calibration)``.

    Returns:
        The integer program, ready for ``hwq.lower.compile_model`` or ``run_reference``.
    """
    if batch_size < 1:
        raise ConfigError(f"calibration batch_size must be >= 1, got {batch_size!r}")
    check_calibration(calibration)
    ep = export_model(model, calibration[:1])
    ranges = calibrate(ep, (calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)))
    return convert(ep, ranges, plan)


def convert(ep: ExportedProgram, ranges: dict, plan: BitPlan = BitPlan(), *,
            scales: dict | None = None, weights: dict | None = None) -> qg.QGraph:
    """Build the ``QGraph`` of ``ep`` from activation ranges (``calibrate``'s output).

    Args:
        ep: the exported float model.
        ranges: ``{value name: (min, max)}``; ``"__input__"`` is the model input.
        plan: per-layer bits.
        scales: exact activation scales by value name (``"__input__"`` for the input), overriding
            the ones ``ranges`` would give: QAT passes its trained quantizers' scales here.
        weights: ``{conv / linear node name: (int weights, per-channel scales, bias)}``,
            overriding ``ep``'s float weights, BatchNorm folding and weight rounding; an integer
            bias is taken as the int32 bias itself. QAT passes the integers its fake quantizers
            computed, so both sides round identically.
    """
    return _Converter(ep, ranges, plan, scales or {}, weights or {}).run()




def _check_accumulator(name: str, x_info: qg.TensorInfo, wq: torch.Tensor, bq: torch.Tensor) -> None:
    """Refuse a conv / dense whose int32 accumulator could overflow on some input.

    The reference accumulates in int64 and would stay right; the kernels accumulate in int32 and
    would wrap. Per output channel the accumulator is at most reduction length x max |input| x
    max |weight| + |bias| (computed in float64, exact far beyond 2^31).
    """
    reduction = int(np.prod(wq.shape[1:]))          # in_channels / groups x kh x kw, or in_features
    x_max = max(abs(x_info.qmin), abs(x_info.qmax))
    w_max = wq.abs().reshape(wq.shape[0], -1).amax(dim=1).double()
    bound = reduction * x_max * w_max + bq.double().abs()
    c = int(bound.argmax())
    if bound[c] > _INT32.max:
        raise QuantizationError(
            f"layer {name!r} can overflow its int32 accumulator: output channel {c} is bounded by "
            f"{reduction} (reduction length) x {x_max} (max |input|) x {int(w_max[c])} (max |weight|) + "
            f"{int(abs(bq[c]))} (|bias|) = {int(bound[c])} > 2^31-1 = {int(_INT32.max)}; give it fewer "
            f"weight or activation bits in the BitPlan, or split its reduction over several layers")


class _Converter(IntegerOps):
    def __init__(self, ep, ranges, plan, scales, weights):
        self.ep, self.ranges, self.plan, self.scales, self.weights = ep, ranges, plan, scales, weights
        self.consts = constants(ep)
        self.tensors: dict = {}
        self.nodes: list = []
        self.alias: dict = {}          # fx node name -> QGraph value name
        self.crossed: dict = {}        # value name -> its Quantize / Dequantize output (one per value)
        self._pending_out_scales = None
        plan.check_names(layer_names(ep.graph))
        in_node = next(n for n in ep.graph.nodes if n.name == user_input_name(ep))
        self.export_batch = int(in_node.meta["val"].shape[0])

    # ------------------------------------------------------------------ values and scales
    def value(self, node) -> qg.TensorInfo:
        return self.tensors[self.alias.get(node.name, node.name)]

    def int_input(self, node) -> qg.TensorInfo:
        """The value of ``node`` as an integer tensor: a float one is quantized (once) at the border."""
        t = self.value(node)
        if not t.is_float:
            return t
        if t.name not in self.crossed:
            lo, hi = self._range(t.name)
            bits = self.plan.default.act_bits
            signed = lo < 0
            qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
            qmin = -qmax if signed else 0
            q = qg.TensorInfo(f"{t.name}_q", t.shape, "int8" if signed else "uint8",
                              self._scale(t.name, lo, hi, qmin, qmax), qmin, qmax)
            self.tensors[q.name] = q
            self.nodes.append(qg.Quantize(q.name, t.name, q.name, q.scale, qmin, qmax))
            self.crossed[t.name] = q.name
        return self.tensors[self.crossed[t.name]]

    def float_input(self, node) -> str:
        """The name of ``node``'s value as a float tensor: an integer one is dequantized (once)."""
        t = self.value(node)
        if t.is_float:
            return t.name
        if t.dtype == "int32":
            raise UnsupportedOpError(f"value {t.name!r} is an int32 accumulator with per-channel scales; "
                                     f"a float op cannot read it")
        if t.name not in self.crossed:
            f = qg.TensorInfo(f"{t.name}_f", t.shape, qg.FLOAT, 1.0, 0, 0)
            self.tensors[f.name] = f
            self.nodes.append(qg.Dequantize(f.name, t.name, f.name))
            self.crossed[t.name] = f.name
        return self.crossed[t.name]

    def in_island(self, group) -> bool:
        return group.output.name in self.floats

    def _in_float(self, group):
        """An op with an integer form whose inputs are all float: its nodes as float ops, in the island."""
        for n in group_nodes(group):
            if n.target in IDENTITY:
                self.alias[n.name] = self.alias.get(n.args[0].name, n.args[0].name)
            elif n.name not in self.tensors:
                self.float_op(Group(FLOAT_OP, n, n), "every value it reads is float")
        if group.output.name not in self.tensors and group.output.name not in self.alias:
            self.alias[group.output.name] = group.output.name

    def float_value(self, fx_node) -> qg.TensorInfo:
        val = fx_node.meta.get("val")
        shape = tuple(val.shape[1:]) if isinstance(val, torch.Tensor) else ()
        t = qg.TensorInfo(fx_node.name, shape, qg.FLOAT, 1.0, 0, 0)
        self.tensors[t.name] = t
        return t

    def _range(self, name):
        if name not in self.ranges:
            raise QuantizationError(f"no calibration range for value {name!r}; calibrate the same exported program")
        return self.ranges[name]

    def _scale(self, name, lo, hi, qmin, qmax) -> float:
        return float(self.scales[name]) if name in self.scales else choose_scale(lo, hi, qmin, qmax)

    def new_value(self, fx_node, bits, nonneg, clamp_hi=None) -> qg.TensorInfo:
        spec_signed = not nonneg
        qmax = 2 ** (bits - 1) - 1 if spec_signed else 2 ** bits - 1
        qmin = -qmax if spec_signed else 0
        lo, hi = self._range(fx_node.name)
        if clamp_hi is not None:
            hi = min(hi, clamp_hi)
        scale = self._scale(fx_node.name, lo, hi, qmin, qmax)
        shape = tuple(fx_node.meta["val"].shape[1:])
        t = qg.TensorInfo(fx_node.name, shape, "int8" if spec_signed else "uint8", scale, qmin, qmax)
        self.tensors[t.name] = t
        return t

    # ------------------------------------------------------------------ walk
    def run(self) -> qg.QGraph:
        inp = user_input_name(self.ep)
        in_node = next(n for n in self.ep.graph.nodes if n.name == inp)
        shape = tuple(in_node.meta["val"].shape[1:])
        lo, hi = self.ranges.get("__input__", (-1.0, 1.0))    # QAT has no input range when only floats read it
        nonneg = lo >= 0
        groups = find_groups(self.ep.graph, input_nonneg=nonneg, user_input=inp)
        self.floats = float_values(groups, lambda m: self.plan.spec_for(m).is_float, in_node)
        if inp in self.floats:          # only float ops read the input: it stays float, unquantized
            self.input = qg.TensorInfo(inp, shape, qg.FLOAT, 1.0, 0, 0)
        else:
            lo, hi = self._range("__input__")
            qmax = 255 if nonneg else 127
            self.input = qg.TensorInfo(inp, shape, "uint8" if nonneg else "int8",
                                       self._scale("__input__", lo, hi, 0 if nonneg else -qmax, qmax),
                                       0 if nonneg else -qmax, qmax)
        self.tensors[inp] = self.input
        for group in groups:
            if group.kind in FOLLOW_FLOAT and self.in_island(group):
                self._in_float(group)
            else:
                getattr(self, group.kind)(group)
        outs = next(n for n in self.ep.graph.nodes if n.op == "output").args[0]
        if len(outs) != 1:
            raise UnsupportedOpError(f"hwq lowers models with one output, this one has {len(outs)}")
        output = self.alias.get(outs[0].name, outs[0].name)
        out_scales = None
        last = self.nodes[-1]
        if getattr(last, "requant", "x") is None:
            out_scales = self._pending_out_scales
        return qg.QGraph(self.input, tuple(self.nodes), output, dict(self.tensors), out_scales)

    # ------------------------------------------------------------------ conv / linear (+BN, +ReLU)
    def _layer_weights(self, group, x_scale: float):
        """Integer weights, per-channel scales and float bias of a layer (BN folded).

        A channel's weight scale is at least ``|bias| / (x_scale * 2^30)``, so that its int32 bias
        fits with room for the sum: a channel whose weights all but vanish next to its bias (one of
        EfficientNet-Lite0's ImageNet stem channels: BN scaled it to ~1e-11) gets weights of 0 and
        the bias it computes, rather than a bias beyond int32.
        """
        node = group.anchor
        if node.name in self.weights:
            wq, s_w, b = self.weights[node.name]
            return torch.as_tensor(wq).double(), torch.as_tensor(s_w).double(), torch.as_tensor(b)
        w, b = layer_weights(group, lambda n: self.consts[n.name])
        # weights: symmetric, per output channel, narrow range [-qmax, qmax]
        wq_max = 2 ** (self.plan.spec_for(group.module).weight_bits - 1) - 1
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        s_w = torch.where(amax > 0, amax / wq_max, torch.ones_like(amax))
        s_w = torch.maximum(s_w, b.abs() / (x_scale * 2.0 ** 30))
        wq = torch.clamp(torch.round(w / s_w.reshape(-1, *[1] * (w.dim() - 1))), -wq_max, wq_max)
        return wq, s_w, b

    def layer(self, group):
        node, cur, name = group.anchor, group.output, group.module
        spec = self.plan.spec_for(name)
        if spec.is_float:
            return self.float_layer(group)
        x_info = self.int_input(node.args[0])
        wq, s_w, b = self._layer_weights(group, x_info.scale)
        acc_scale = x_info.scale * s_w
        bq = torch.round(b / acc_scale) if b.is_floating_point() else b
        if bq.abs().max() > _INT32.max:
            raise QuantizationError(f"layer {name!r}: bias does not fit int32 at scale {float(acc_scale.min())!r}")
        _check_accumulator(name or node.name, x_info, wq, bq)
        if group.int32_output:
            out = qg.TensorInfo(cur.name, tuple(cur.meta["val"].shape[1:]), "int32", 1.0, int(_INT32.min), int(_INT32.max))
            self.tensors[out.name] = out
            requant = None
            self._pending_out_scales = acc_scale.numpy()
        else:
            out = self.new_value(cur, spec.act_bits, group.nonneg, group.clamp_hi)
            M, n = quantize_multiplier((acc_scale / out.scale).numpy())
            requant = qg.Requant(M, n, out.qmin, out.qmax)
        common = dict(name=name or node.name, input=x_info.name, output=out.name,
                      weight=wq.numpy().astype(np.int8), bias=bq.numpy().astype(np.int32), requant=requant)
        if node.target in CONV:
            self.nodes.append(qg.Conv2d(**conv_arguments(node), **common))
        else:
            self.nodes.append(qg.Dense(**common))
        self.alias[cur.name] = out.name

    def float_layer(self, group):
        """A conv / linear the plan keeps in fp32: BN folded in float64, then stored as float32."""
        node, cur = group.anchor, group.output
        x = self.float_input(node.args[0])
        w, b = layer_weights(group, lambda n: self.consts[n.name])
        clamp = (0.0, float("inf") if group.clamp_hi is None else group.clamp_hi) if group.nonneg else None
        out = self.float_value(cur)
        common = dict(name=group.module or node.name, input=x, output=out.name, weight=w.float().numpy(),
                      bias=b.float().numpy(), clamp=clamp)
        if node.target in CONV:
            self.nodes.append(qg.FloatConv2d(**conv_arguments(node), **common))
        else:
            self.nodes.append(qg.FloatDense(**common))
        self.alias[cur.name] = out.name
