"""``QuantLayer``: one integer conv2d / linear op in trainable form.

It holds the layer's float weight and bias with the BatchNorm already folded in (using the running
statistics, exactly what the integer program runs: BN is not re-estimated during QAT), the fused
ReLU / ReLU6, a per-channel weight fake quantizer and, unless its int32 accumulator is the
model's output, a fake quantizer on its output. Two forward functions give the two sides of the
layer's constraint: ``float_forward`` (f_l^fp: float weights, no output rounding) and
``quant_forward`` (f_l^q).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwq.qat.fake_quant import ActFakeQuantize, WeightFakeQuantize, fake_quantize, integer_values
from hwq.qat.groups import CONV, Group, pair
from hwq.spec import QuantSpec

_INT32_MAX = 2 ** 31 - 1


class QuantLayer(nn.Module):
    """A conv2d or linear layer with folded BN, fused activation and fake quantizers.

    Attributes:
        name: the torch module's qualified name (the ``BitPlan`` key, e.g. ``"block1.0"``).
        node: the conv / linear node's name in the exported graph (``convert``'s key).
        weight_fq: ``WeightFakeQuantize``; out_fq: ``ActFakeQuantize`` or None (int32 output).
        fake_quant_enabled: False runs the float layer (``hwq.qat.api.float_mode``).
    """

    def __init__(self, group: Group, weight: torch.Tensor, bias: torch.Tensor, weight_spec: QuantSpec,
                 act_spec: QuantSpec | None):
        super().__init__()
        node = group.anchor
        self.name, self.node = group.module or node.name, node.name
        self.is_conv = node.target in CONV
        if self.is_conv:
            args = list(node.args[3:7]) + [1, 0, 1, 1][len(node.args[3:7]):]
            self.stride, self.padding, self.dilation = (pair(a) for a in args[:3])
            self.groups = int(args[3])
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone())
        self.nonneg, self.clamp_hi = group.nonneg, group.clamp_hi
        self.weight_fq = WeightFakeQuantize(weight_spec, self.weight)
        self.out_fq = ActFakeQuantize(act_spec, group.output.name) if act_spec is not None else None
        self.fake_quant_enabled = True
        self.float_weights = False      # the fp32 option (hwq.alloc.layer_bits): float weights and bias
        self.set_input_quantizer(None)

    def set_input_quantizer(self, quantizer: ActFakeQuantize | None) -> None:
        """The quantizer whose scale s_x the layer's input carries: the bias is rounded to s_x * s_w.

        Kept as a plain reference, not a submodule: the quantizer belongs to the op that produces
        the value (registering it twice would duplicate it in ``state_dict``).
        """
        object.__setattr__(self, "_input_quantizer", quantizer)

    def _op(self, x, w, b):
        if self.is_conv:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, b)

    def _activation(self, y):
        if not self.nonneg:
            return y
        return torch.relu(y) if self.clamp_hi is None else torch.clamp(y, 0.0, self.clamp_hi)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """f_l^fp(x): the float layer (float weights, activation, no output rounding)."""
        return self._activation(self._op(x, self.weight, self.bias))

    def quant_forward(self, x: torch.Tensor, observe: bool = True, detach_weight: bool = False) -> torch.Tensor:
        """f_l^q(x): quantized weights, activation, quantized output.

        Args:
            observe: let a calibrated output range follow this batch (only the model's own
                forward does; recomputations for the constraints must not move it twice).
            detach_weight: the weight and bias get no gradient (the paper's gradient mode: the
                quantized copy only provides constraint values; learned scales still train).
        """
        w, b = (self.weight.detach(), self.bias.detach()) if detach_weight else (self.weight, self.bias)
        if self.float_weights:
            y = self._activation(self._op(x, w, b))
        else:
            y = self._activation(self._op(x, self.weight_fq(w), self._quantized_bias(b, w)))
        return self.out_fq(y, observe=observe) if self.out_fq is not None else y

    def _bias_scale(self, w):
        return (self._input_quantizer.current_scale() * self.weight_fq.current_scale(w).reshape(-1)).detach()

    def _quantized_bias(self, b, w):
        # the integer program adds the bias as an int32 at the accumulator's scale s_x * s_w; with
        # few activation bits that rounding is a visible fraction of an output step, so train with it
        if self._input_quantizer is None:
            return b
        return fake_quantize(b, self._bias_scale(w), -_INT32_MAX, _INT32_MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fake_quant_enabled:
            return self.quant_forward(x)
        y = self.float_forward(x)
        # in float mode the output quantizer passes values through (recording them while calibrating)
        return self.out_fq(y) if self.out_fq is not None else y

    @torch.no_grad()
    def integers(self) -> tuple:
        """(int weights, float64 per-channel scales, int bias): what ``convert`` builds the op from."""
        wq, s_w = self.weight_fq.integers(self.weight)
        bq = integer_values(self.bias, self._bias_scale(self.weight), -_INT32_MAX, _INT32_MAX)
        return wq.numpy(), s_w.numpy(), bq

    def extra_repr(self) -> str:
        kind = "conv2d" if self.is_conv else "linear"
        return f"name={self.name!r}, {kind}, weight={tuple(self.weight.shape)}, relu={self.nonneg}"
