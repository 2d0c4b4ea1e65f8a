"""The relaxed plan of budget-constrained QAT: a distribution over each group's precision options.

Group g of an ``Allocation`` holds logits θ_g; p_g = softmax(θ_g / T). Two things read p:

- the model: inside ``relaxation.mixed(prepared)`` each ``QuantLayer``'s quantized forward is the
  p-weighted mixture of its outputs under each option of its group (DNAS / FBNet). The layer runs
  once per option with its quantizers re-derived at that option in place by ``layer_option`` (the
  rules the sensitivities use, so a calibrated range is shared by every width and a learned
  activation keeps its clipping range), and the outputs are summed with weights p_g[k]: the
  gradient reaches θ through the weights. A mixture lies on no single grid; a consumer rounds its
  int32 bias at its producer's most probable width, so that at one-hot p the mixture is the plan.
- the cost: ``expected_latency()`` = base + Σ_g p_g·own_g + Σ_(a,b) p_a^T T_ab p_b, the exact
  expectation of ``Problem.latency`` when the groups choose independently with probabilities p
  (a pairwise term is bilinear, and the expectation of a product of independent choices is the
  product of their expectations); with one-hot p it is the plan's latency.

``round_choice`` turns p into one plan within the budget: the most probable plan (argmax per group)
if it meets the budget, else the exact solver's most probable plan under it (loss -log p_g).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from hwq.alloc.build import Allocation
from hwq.alloc.layer_bits import layer_option, named_layers
from hwq.alloc.problem import Problem
from hwq.alloc.solve import feasibility_tolerance, solve_exact
from hwq.cost.options import output_bits
from hwq.plan import BitPlan, LayerSpec
from hwq.qat.modules import QuantLayer


class BudgetRelaxation(nn.Module):
    """Logits over each group's options, the mixture they induce and the plan's expected latency.

    Args:
        allocation: the model's knapsack on the target (groups, options, latency tables).
        temperature: T of p_g = softmax(θ_g / T); smaller is closer to a hard choice.

    Attributes:
        logits: one float64 parameter per group, shape (options,), starting at 0 (uniform p).
    """

    def __init__(self, allocation: Allocation, temperature: float = 1.0):
        super().__init__()
        self.allocation, self.temperature = allocation, float(temperature)
        problem = allocation.problem
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(len(g.options), dtype=torch.float64))
                                       for g in problem.groups)
        # plain tensors, not buffers: the latency tables are the allocation's, not trained state
        self._own = [torch.tensor(g.latency_ms, dtype=torch.float64) for g in problem.groups]
        self._pairs = [(t.a, t.b, torch.tensor(t.latency_ms, dtype=torch.float64)) for t in problem.interactions]
        self._specs = [tuple(LayerSpec(o.weight_bits, o.act_bits) for o in opts) for opts in allocation.options]

    def probs(self, g: int) -> torch.Tensor:
        """p_g, the distribution of group ``g`` over its options."""
        return torch.softmax(self.logits[g] / self.temperature, dim=0)

    def expected_latency(self) -> torch.Tensor:
        """E[latency] in ms under independent choices p (a differentiable 0-dim float64 tensor)."""
        p = [self.probs(g) for g in range(len(self._own))]
        total = torch.tensor(self.allocation.problem.base_latency_ms, dtype=torch.float64)
        for pg, own in zip(p, self._own):
            total = total + pg @ own
        for a, b, table in self._pairs:
            total = total + p[a] @ table @ p[b]
        return total

    @torch.no_grad()
    def argmax(self) -> tuple:
        """The most probable plan: each group's most probable option (ties: the first, most precise)."""
        return tuple(int(t.argmax()) for t in self.logits)

    @torch.no_grad()
    def likelihood_problem(self) -> Problem:
        """The allocation problem with each group's loss -log p_g: its least-loss plan under a budget is
        the most probable plan that meets it."""
        groups = tuple(replace(g, loss=tuple((-torch.log_softmax(self.logits[i] / self.temperature, 0)).tolist()))
                       for i, g in enumerate(self.allocation.problem.groups))
        return replace(self.allocation.problem, groups=groups)

    @contextlib.contextmanager
    def mixed(self, prepared: nn.Module):
        """Inside the block every layer of ``prepared`` in the allocation computes the p-mixture of its
        options; outside, the layers are as they were (the override is an instance attribute)."""
        layers = named_layers(prepared, list(self.allocation.layer_group))
        # a layer's input quantizer is its producer's output quantizer (QuantLayer.set_input_quantizer)
        producer = {id(layer.out_fq): layer for layer in layers.values() if layer.out_fq is not None}
        try:
            for name, layer in layers.items():
                src = producer.get(id(getattr(layer, "_input_quantizer", None)))
                layer.quant_forward = self._mixture(layer, self.allocation.layer_group[name], src)
            yield prepared
        finally:
            for layer in layers.values():
                layer.__dict__.pop("quant_forward", None)

    def _mixture(self, layer: QuantLayer, g: int, src: QuantLayer | None):
        specs, src_group = self._specs[g], self.allocation.layer_group.get(getattr(src, "name", None))

        def quant_forward(x, observe: bool = True, detach_weight: bool = False):
            p = self.probs(g)
            out = 0.0
            with contextlib.ExitStack() as stack:
                if src_group is not None:     # the producer's weights are at their width already: untouched
                    width = output_bits(self._specs[src_group][int(self.logits[src_group].argmax())],
                                        self.allocation.default.act_bits)
                    stack.enter_context(layer_option(src, LayerSpec(src.weight_fq.spec.bits, width)))
                for k, spec in enumerate(specs):
                    with layer_option(layer, spec):
                        # a calibrated range tracks the float output, the same at every width: observe once
                        y = QuantLayer.quant_forward(layer, x, observe=observe and k == 0, detach_weight=detach_weight)
                    out = out + p[k].to(y.dtype) * y
            return out

        return quant_forward


@dataclass(frozen=True)
class Rounding:
    """The relaxation rounded to one plan within the budget.

    Attributes:
        choice: the plan kept (the rounded one, or the exact solver's if the rounding broke the budget).
        rounded: the most probable plan (argmax per group); rounded_ms its latency.
        exact: the most probable plan within the budget (``solve_exact`` on -log p); exact_ms its latency.
        repaired: True when ``rounded`` broke the budget and ``exact`` was kept instead.
    """

    choice: tuple
    rounded: tuple
    rounded_ms: float
    exact: tuple
    exact_ms: float
    repaired: bool


def round_choice(relaxation: BudgetRelaxation, budget_ms: float) -> Rounding:
    """Round p to one plan: argmax per group, checked against the exact solver and repaired with its
    plan if the argmax breaks ``budget_ms``.

    Raises:
        InfeasibleBudgetError: no plan of the allocation meets the budget.
    """
    problem = relaxation.allocation.problem
    rounded = relaxation.argmax()
    rounded_ms = problem.latency(rounded)
    exact = solve_exact(relaxation.likelihood_problem(), budget_ms)
    repaired = rounded_ms > budget_ms + feasibility_tolerance(budget_ms)
    return Rounding(exact.choice if repaired else rounded, rounded, rounded_ms, exact.choice, exact.latency_ms, repaired)


@torch.no_grad()
def set_plan_(prepared: nn.Module, allocation: Allocation, choice) -> BitPlan:
    """Put every layer of ``prepared`` at its option in ``choice`` for good (no mixture) and make the
    resulting ``BitPlan`` the one ``quantize_(prepared, step="convert")`` uses; returns that plan.

    The quantizers are re-derived by ``layer_option`` (the rules the relaxation trained with), then
    kept: their spec and scale are read inside its block and set again after it restored them.
    """
    plan = allocation.plan(allocation.problem.check_choice(choice))
    for name, layer in named_layers(prepared, list(allocation.layer_group)).items():
        with layer_option(layer, plan.spec_for(name)):
            kept = [(fq, fq.spec, fq.scale.detach().clone() if hasattr(fq, "scale") else None)
                    for fq in (layer.weight_fq, layer.out_fq) if fq is not None]
        for fq, spec, scale in kept:
            fq.spec = spec
            if scale is not None:
                fq.scale.data = scale
    prepared.hwq_plan = plan
    return plan
