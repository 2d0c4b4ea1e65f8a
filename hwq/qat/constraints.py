"""The constrained problem's functions: the task loss, each layer's constraint, the output constraint.

Layer l's constraint compares the float layer and the quantized layer on the same input, the
quantized activation z_{l-1}^q that reaches it in the quantized model:

    g_l = mean over elements of (f_l^fp(z) - f_l^q(z))^2                      ("mse")
    g_l = that / mean(f_l^fp(z)^2)                                            ("relative")

so g_l measures only the error layer l adds by quantizing its weights and its output (the input
is detached: earlier layers answer to their own constraints). The optional output constraint is
CE(softmax(out_fp), out_q) = -sum softmax(out_fp) * log_softmax(out_q), batch mean. In the STE mode
out_fp comes from a frozen copy of the float model taken when training starts: with the trained
weights on both sides, predicting one class with certainty everywhere satisfies any ε (CE = 0),
and measured on Fashion-MNIST at W4A4 training fell into that (under 40 % accuracy) whenever the
output dual grew large.

Gradient modes: ``"ste"`` differentiates the loss and every constraint through the quantized path
with straight-through rounding. ``"fp"`` (the paper's) takes the loss on the float path; the
quantized copy (weights detached, no straight-through gradient to them) only supplies constraint
values, so each g_l reaches the weights through f_l^fp, pulling the float layer toward what its
quantized copy computes; learned scales still train through f_l^q.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from hwq.qat.api import float_mode, quant_layers
from hwq.qat.config import QATConfig


def layer_constraint(layer, z: torch.Tensor, gradient_mode: str = "fp", norm: str = "relative",
                     q: torch.Tensor | None = None) -> torch.Tensor:
    """g_l of one ``QuantLayer`` on its quantized input ``z`` (a scalar tensor).

    ``q`` is f_l^q(z) if the caller already has it without a gradient (the fp mode's quantized
    pass): it is then not recomputed.
    """
    z = z.detach()
    fp = layer.float_forward(z)
    if q is None:
        q = layer.quant_forward(z, observe=False, detach_weight=gradient_mode == "fp")
    err = (fp - q).pow(2).mean()
    if norm == "relative":
        err = err / fp.detach().pow(2).mean().clamp_min(1e-12)
    return err


def output_constraint(out_fp: torch.Tensor, out_q: torch.Tensor, gradient_mode: str = "fp") -> torch.Tensor:
    """CE(softmax(out_fp), out_q), batch mean; differentiated through out_fp ("fp") or out_q ("ste")."""
    if gradient_mode == "fp":
        out_q = out_q.detach()
    else:
        out_fp = out_fp.detach()
    return -(F.softmax(out_fp, dim=1) * F.log_softmax(out_q, dim=1)).sum(dim=1).mean()


class Lagrangian(nn.Module):
    """One training step's forward pass: ``(loss, g, quantized logits)`` for a batch.

    ``g`` holds one value per ``QuantLayer`` (execution order), then the output constraint if the
    config has one. The step's objective is ``loss + sum(λ * (g - ε))``. Everything runs inside this
    one ``forward`` so that DistributedDataParallel sees one forward per backward.
    """

    def __init__(self, model: nn.Module, config: QATConfig):
        super().__init__()
        self.model = model
        self.layers = quant_layers(model)
        # layers with a trained (learned) scale: their quantized output needs a gradient in every mode
        self._learned = {layer for layer in self.layers
                         if any(p.requires_grad for fq in (layer.weight_fq, layer.out_fq) if fq is not None
                                for p in fq.parameters())}
        self.mode, self.norm = config.gradient_mode, config.constraint_norm
        self.with_output = config.eps_output is not None
        # not a submodule: DDP and state_dict must not see it; see the module docstring for why
        teacher = None
        if self.with_output and self.mode == "ste":
            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)
        # with dual_lr = 0 every λ stays 0: the constraints are only measured, no gradient needed
        self.constraint_grad = config.dual_lr > 0

    def _quantized(self, x):
        """The quantized model's logits, and each layer's input and output in that pass."""
        seen = {}
        hooks = [layer.register_forward_hook(lambda m, args, out: seen.__setitem__(m, (args[0], out)))
                 for layer in self.layers]
        try:
            return self.model(x), seen
        finally:
            for h in hooks:
                h.remove()

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        out_fp = None
        if self.mode == "ste":
            out_q, seen = self._quantized(x)
            loss = F.cross_entropy(out_q, y)
            if self.with_output:
                with torch.no_grad(), float_mode(self._teacher):
                    out_fp = self._teacher(x)
        else:
            with float_mode(self.model):
                out_fp = self.model(x)
            loss = F.cross_entropy(out_fp, y)
            with torch.no_grad():
                out_q, seen = self._quantized(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.constraint_grad):
            g = [self._layer(layer, *seen[layer]) for layer in self.layers]
        if self.with_output:
            g.append(output_constraint(out_fp, out_q, self.mode))
        # a plan with every layer in fp32 has no quantized layer: no constraints, plain training
        return loss, torch.stack(g) if g else loss.new_zeros(0), out_q.detach()

    def _layer(self, layer, z, q):
        # f_l^q(z) from the quantized pass is reused when nothing needs its gradient: always in the
        # fp mode with calibrated scales (no gradient by design), in any mode when the constraints
        # only get measured; otherwise it is recomputed on the detached input.
        reuse = not torch.is_grad_enabled() or (self.mode == "fp" and layer not in self._learned)
        return layer_constraint(layer, z, self.mode, self.norm, q.detach() if reuse else None)


def dual_step(lam: torch.Tensor, mean_slack: torch.Tensor, dual_lr: float) -> torch.Tensor:
    """Projected dual ascent: λ <- max(0, λ + η_λ · mean slack), slack = g - ε averaged over the period."""
    return torch.clamp(lam + dual_lr * mean_slack, min=0.0)
