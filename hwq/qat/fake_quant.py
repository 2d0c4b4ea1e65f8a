"""Fake quantization: float tensors rounded onto the integer grid that the integer program uses.

``fake_quantize(x, scale, qmin, qmax)`` is ``clamp(round(x * (1/scale)), qmin, qmax) * scale``
with ``round`` half to even and zero point 0: the formula of torch's
``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` (which multiply by the
float32 reciprocal of the scale), so the two agree bit for bit. Its gradient is the clipped
straight-through estimate (1 inside the range, 0 outside) and, for a learned scale, LSQ's
(Esser et al., ICLR 2020).

Two modules carry a ``QuantSpec``: ``WeightFakeQuantize`` (per output channel, signed) and
``ActFakeQuantize`` (per tensor). A calibrated weight scale is the channel's max-abs / qmax, the
converter's rule; a calibrated activation scale comes from a min/max range, measured on
calibration data and then tracked with a moving average during training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hwq.errors import QuantizationError
from hwq.fixed_point import choose_scale
from hwq.spec import QuantSpec

# candidate clipping ratios of the MSE search that initializes a learned scale
_CLIP_RATIOS = torch.linspace(0.3, 1.0, 15)
_SAMPLE = 1 << 16          # values an activation quantizer keeps from calibration for that search


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, grad_factor):
        v = torch.round(x * (1.0 / scale))
        inside = (v >= qmin) & (v <= qmax)
        q = v.clamp(qmin, qmax)
        if ctx.needs_input_grad[1]:
            # LSQ: d(q * s)/ds = q - x/s inside the range, the clamp bound (q) outside it
            ctx.save_for_backward(inside, torch.where(inside, q - x * (1.0 / scale), q))
        else:
            ctx.save_for_backward(inside)
        ctx.scale_shape, ctx.grad_factor = scale.shape, grad_factor
        return q * scale

    @staticmethod
    def backward(ctx, grad):
        inside = ctx.saved_tensors[0]
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = (grad * ctx.saved_tensors[1]).sum_to_size(ctx.scale_shape) * ctx.grad_factor
        return grad_x, grad_s, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, grad_factor: float = 1.0) -> torch.Tensor:
    """Round ``x`` onto the grid ``scale * [qmin, qmax]`` (zero point 0), differentiably.

    Args:
        x: any float tensor.
        scale: float32, broadcastable against ``x`` (a scalar, or shape (C, 1, ...) per channel).
        qmin, qmax: the integer range.
        grad_factor: multiplies the scale's gradient (LSQ's 1/sqrt(numel * qmax)).
    """
    return _FakeQuantize.apply(x, scale, qmin, qmax, grad_factor)


def integer_values(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The integers ``fake_quantize`` puts ``x`` on (same rounding), as int64."""
    return torch.round(x * (1.0 / scale)).clamp(qmin, qmax).to(torch.int64)


def _mse_best_scale(x: torch.Tensor, base: torch.Tensor, qmin: int, qmax: int, dims) -> torch.Tensor:
    """Among ``ratio * base`` for the candidate ratios, the scale of least squared rounding error."""
    errors = torch.stack([(fake_quantize(x, base * r, qmin, qmax) - x).pow(2).sum(dim=dims) for r in _CLIP_RATIOS])
    best = _CLIP_RATIOS[errors.argmin(dim=0)]
    return base * best.reshape(base.shape)


class WeightFakeQuantize(nn.Module):
    """Per-output-channel, signed, symmetric fake quantization of a weight (axis 0).

    A calibrated scale is ``max|w_c| / qmax`` of the current weight (recomputed every call, no
    gradient), exactly the converter's rule; a learned one starts at the clipping ratio of least
    rounding error and is then trained (LSQ).
    """

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__()
        if not spec.signed or spec.granularity != "per_channel":
            raise QuantizationError(f"weights are quantized signed and per channel, got {spec!r}")
        self.spec = spec
        self.shape = (-1,) + (1,) * (weight.dim() - 1)
        if spec.range_mode == "learned":
            with torch.no_grad():
                w = weight.detach().float()
                init = _mse_best_scale(w, self._max_abs_scale(w), spec.qmin, spec.qmax, tuple(range(1, w.dim())))
            self.scale = nn.Parameter(init.reshape(-1))

    def _max_abs_scale(self, w):
        amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
        return torch.where(amax > 0, amax / self.spec.qmax, torch.ones_like(amax)).reshape(self.shape)

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel float32 scales, shape (C, 1, ...)."""
        if self.spec.range_mode == "learned":
            # a scale driven through zero by its gradient would divide by zero: keep it positive
            return self.scale.abs().clamp_min(1e-8).reshape(self.shape)
        return self._max_abs_scale(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        factor = 1.0 / math.sqrt(w[0].numel() * self.spec.qmax)
        return fake_quantize(w, self.current_scale(w), self.spec.qmin, self.spec.qmax, factor)

    def integers(self, w: torch.Tensor) -> tuple:
        """(int weights, float64 per-channel scales) exactly as ``forward`` rounds them, for the converter."""
        with torch.no_grad():
            s = self.current_scale(w)
            return integer_values(w, s, self.spec.qmin, self.spec.qmax), s.reshape(-1).double()

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, range_mode={self.spec.range_mode!r}"


class ActFakeQuantize(nn.Module):
    """Per-tensor fake quantization of an activation (signed, or unsigned after a ReLU).

    Life cycle: ``calibrating`` (fake quantization off, min/max recorded) until
    ``finish_calibration()``; then, in training mode, a calibrated range follows each batch's
    min/max with a moving average (``momentum``), a learned scale is a trained parameter.

    Attributes:
        node: name of the value in the exported graph (``"__input__"`` for the model input): the
            key under which ``convert`` looks up this scale.
        fake_quant_enabled: False runs the float model (``hwq.qat.api.float_mode``).
    """

    def __init__(self, spec: QuantSpec, node: str, momentum: float = 0.01):
        super().__init__()
        if spec.granularity != "per_tensor":
            raise QuantizationError(f"activations are quantized per tensor, got {spec!r}")
        self.spec, self.node, self.momentum = spec, node, momentum
        self.fake_quant_enabled = True
        self.calibrating = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self._sample = None
        if spec.range_mode == "learned":
            self.scale = nn.Parameter(torch.tensor(1.0))

    def current_scale(self) -> torch.Tensor:
        """The float32 scale this quantizer rounds with now (a 0-dim tensor)."""
        if self.spec.range_mode == "learned":
            return self.scale.abs().clamp_min(1e-8)
        return self._range_scale()

    def _range_scale(self) -> torch.Tensor:
        # the converter's rule (choose_scale) on the tracked range, rounded once to float32
        lo, hi = float(self.min_val), float(self.max_val)
        if not lo <= hi:
            raise QuantizationError(f"activation quantizer {self.node!r} has no range yet; calibrate it first")
        return torch.tensor(choose_scale(lo, hi, self.spec.qmin, self.spec.qmax), dtype=torch.float32)

    @torch.no_grad()
    def _observe(self, x):
        lo, hi = x.min().float(), x.max().float()
        if self.calibrating:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
            if self.spec.range_mode == "learned":
                self._keep_sample(x)
        else:
            self.min_val.add_(self.momentum * (lo - self.min_val))
            self.max_val.add_(self.momentum * (hi - self.max_val))

    def _keep_sample(self, x):
        # the first _SAMPLE values, over as many batches as it takes: the same sample whatever
        # the calibration batch size (batches are split along dim 0, the slowest in flatten)
        have = 0 if self._sample is None else len(self._sample)
        if have < _SAMPLE:
            new = x.detach().flatten()[:_SAMPLE - have].float().clone()
            self._sample = new if self._sample is None else torch.cat([self._sample, new])

    @torch.no_grad()
    def finish_calibration(self):
        """End calibration; a learned scale starts at the clipping ratio of least rounding error."""
        self.calibrating = False
        if self.spec.range_mode == "learned":
            sample = self._sample if self._sample is not None else torch.zeros(1)
            self.scale.copy_(_mse_best_scale(sample, self._range_scale(), self.spec.qmin, self.spec.qmax, (0,)))
            self._sample = None

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        if self.calibrating:
            self._observe(x)
            return x
        if not self.fake_quant_enabled:
            return x
        if observe and self.training and self.spec.range_mode == "calibrated":
            self._observe(x)
        factor = 1.0 / math.sqrt(x[0].numel() * self.spec.qmax)
        return fake_quantize(x, self.current_scale(), self.spec.qmin, self.spec.qmax, factor)

    def extra_repr(self) -> str:
        sign = "signed" if self.spec.signed else "unsigned"
        return f"node={self.node!r}, bits={self.spec.bits}, {sign}, range_mode={self.spec.range_mode!r}"
