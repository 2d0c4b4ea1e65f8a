"""The latency budget as a dual constraint of constrained QAT (issue 11): search, round, fine-tune.

    minimize  E[loss]  subject to  g_l <= ε_l  (every layer, as in ``train_constrained``)
                                   E_p[latency] <= budget

Each group's option is relaxed to p_g = softmax(θ_g / T) (``hwq.alloc.relaxation``): the model
computes the p-mixture of its options and E_p[latency] is a differentiable function of θ. Each
step descends on the weights and θ with

    loss + Σ λ_l (g_l - ε_l) + μ (E[latency] - budget) / budget

and the duals ascend on their slacks averaged over a period, projected onto >= 0:
λ_l as in ``train_constrained`` (if ``qat.dual_lr > 0``), and μ <- max(0, μ + dual_lr · mean
relative slack). The relative slack makes μ unit-free; μ / budget is then the price of one ms in
loss, which the report stores (``SensitivityReport.latency_dual``). At the end p is rounded (argmax
per group), checked against the exact solver, repaired with its plan if the rounding broke the
budget, fixed in the model, and fine-tuned with ``train_constrained``. Given ``measure`` (a plan ->
measured ms on the device), the rounding is verified before the fine-tune: while the rounded plan
measures over the budget, p is rounded again at a tighter budget (``hwq.alloc.verify``), so the
plan kept meets the budget when measured, not only as predicted.

The search phase trains through the quantized path (straight-through rounding, the ``"ste"`` mode)
whatever ``qat.gradient_mode`` says: in the ``"fp"`` mode the task loss never sees quantization, so
θ would hear only the latency. The fine-tune uses ``qat`` as given.

Example:
    >>> alloc = build_allocation(quantize_(prepared, step="convert"), CostModel("x86-avx2"), losses, batch=16)
    >>> result = train_with_budget(prepared, train_set, alloc, budget_ms(alloc, "0.8x"), QATConfig(epochs=1))
    >>> result.plan, result.report.latency_dual        # the plan, and the loss price of one ms
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.data import DataLoader, RandomSampler

from hwq.alloc.build import Allocation
from hwq.alloc.layer_bits import named_layers
from hwq.alloc.relaxation import BudgetRelaxation, round_choice, set_plan_
from hwq.alloc.problem import Solution
from hwq.alloc.solve import solve_exact
from hwq.alloc.verify import meet_measured_budget
from hwq.errors import ConfigError, InfeasibleBudgetError
from hwq.plan import BitPlan
from hwq.qat.config import QATConfig
from hwq.qat.constraints import Lagrangian, dual_step
from hwq.qat.report import SensitivityReport
from hwq.qat.train import train_constrained


@dataclass(frozen=True)
class BudgetQATConfig:
    """The schedule of the budget search (the fine-tune follows ``QATConfig``).

    Args:
        epochs: passes over the data while searching (weights, θ and the duals together).
        batch_size: images per search step.
        lr: Adam learning rate of the weights (and learned scales) while searching.
        logit_lr: Adam learning rate of the logits θ.
        dual_lr: step of μ on the mean relative slack (E[latency] - budget) / budget; 0 keeps μ at 0.
        dual_period: search steps between updates of μ (the slack is averaged over them).
        temperature: T of p_g = softmax(θ_g / T).
        finetune_epochs: epochs of ``train_constrained`` at the chosen plan.
        seed: data order of the search (the fine-tune uses ``QATConfig.seed``).
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4
    logit_lr: float = 0.05
    dual_lr: float = 1.0
    dual_period: int = 10
    temperature: float = 1.0
    finetune_epochs: int = 1
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        for name, low in (("epochs", 1), ("batch_size", 1), ("dual_period", 1), ("finetune_epochs", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"BudgetQATConfig.{name} must be an int >= {low}, got {v!r}")
        for name, positive in (("lr", True), ("logit_lr", True), ("temperature", True), ("dual_lr", False)):
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            if not ok or not (v > 0 if positive else v >= 0):
                raise ConfigError(f"BudgetQATConfig.{name} must be a finite number {'>' if positive else '>='} 0, "
                                  f"got {v!r}")
        if self.version != 1:
            raise ConfigError(f"BudgetQATConfig.version {self.version!r} is not supported; valid: 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass(frozen=True)
class BudgetResult:
    """What ``train_with_budget`` found.

    Attributes:
        choice, plan: the plan kept (one option index per group; the ``BitPlan`` it stands for).
        budget_ms: the budget.
        mu: μ* as trained, per unit of relative slack; ``loss_per_ms`` is μ* / budget.
        mu_history: μ after each of its updates, starting at 0.
        expected_ms: E_p[latency] at the end of the search.
        rounded, rounded_ms: the argmax plan and its latency.
        repaired: the argmax broke the budget and the exact solver's plan was kept.
        exact_ms: latency of the exact solver's most probable plan within the budget.
        report: the fine-tune's ``SensitivityReport``, with ``latency_dual`` = ``loss_per_ms``.
        accuracy: the fine-tuned model's accuracy on ``eval_data`` (percent), or None.
        measured_ms: the kept plan's measured latency (None without ``measure``).
        verify_rounds: ``(solver budget, predicted ms, measured ms)`` of every rounding measured.
    """

    choice: tuple
    plan: BitPlan
    budget_ms: float
    mu: float
    mu_history: tuple
    expected_ms: float
    rounded: tuple
    rounded_ms: float
    repaired: bool
    exact_ms: float
    report: SensitivityReport
    accuracy: float | None
    measured_ms: float | None = None
    verify_rounds: tuple | None = None

    @property
    def loss_per_ms(self) -> float:
        """μ* / budget: how much task loss one more millisecond of budget would save."""
        return self.mu / self.budget_ms


def train_with_budget(prepared: torch.nn.Module, data, allocation: Allocation, budget_ms: float,
                      qat: QATConfig = QATConfig(), config: BudgetQATConfig = BudgetQATConfig(), *,
                      eval_data=None, measure=None, tolerance: float = 0.03, progress: bool = False,
                      log=print) -> BudgetResult:
    """Search a plan within ``budget_ms`` by constrained QAT with the budget as a dual, then fine-tune it.

    Args:
        prepared: from ``quantize_(..., step="prepare")`` with the allocation's default spec; trained
            in place, and left at the chosen plan (``quantize_(prepared, step="convert")`` builds it).
        data: map-style dataset of ``(input, label)``.
        allocation: ``build_allocation`` of this model on the target (its layers are the model's).
        budget_ms: the latency budget in ms (``hwq.alloc.build.budget_ms`` reads ``"0.8x"``).
        qat: the layer constraints (search and fine-tune) and the fine-tune's schedule.
        config: the search's schedule and the number of fine-tune epochs.
        eval_data: optional dataset for the final accuracy.
        measure: optional ``BitPlan -> measured ms`` (compile and time on the device): the rounded
            plan is re-rounded at a tighter budget while it measures over ``budget_ms * (1 + tolerance)``.
        tolerance: the timing noise ``measure`` may use, as a fraction of the budget.
        progress: tqdm bars in the fine-tune.
        log: where the per-epoch summary lines go.

    Raises:
        ConfigError: a budget that is not a positive number, a model whose layers or default spec
            differ from the allocation's.
        InfeasibleBudgetError: no plan meets the budget (raised before any training; with
            ``measure``, a budget below the fastest plan as predicted searches towards that plan
            and fails only if it measures over the budget too).
    """
    search_ms = _check(prepared, allocation, budget_ms, measured=measure is not None)
    relaxation = BudgetRelaxation(allocation, config.temperature)
    mu, mu_history, expected_ms = _search(prepared, data, relaxation, search_ms, qat, config, log)
    r, measured, rounds = _rounded(relaxation, budget_ms, measure, tolerance, log)
    plan = set_plan_(prepared, allocation, r.choice)
    report = train_constrained(prepared, data, replace(qat, epochs=config.finetune_epochs), eval_data=eval_data,
                               progress=progress, log=log)
    report = replace(report, latency_dual=mu / budget_ms, latency_budget_ms=float(budget_ms))
    return BudgetResult(r.choice, plan, float(budget_ms), mu, mu_history, expected_ms, r.rounded, r.rounded_ms,
                        r.repaired, r.exact_ms, report, report.accuracy, measured, rounds)


def _rounded(relaxation: BudgetRelaxation, budget_ms: float, measure, tolerance: float, log):
    """Round p within the budget; with ``measure``, re-round tighter while the plan measures over it.
    Returns (Rounding, measured ms or None, verify rounds or None)."""
    allocation = relaxation.allocation
    problem = allocation.problem

    def rounding(b):
        r = round_choice(relaxation, b)
        log(f"rounded {problem.describe(r.rounded)}: {r.rounded_ms:.4g} ms (solver budget {b:.4g} ms)"
            + (f"; over it, repaired to {problem.describe(r.choice)}: {r.exact_ms:.4g} ms" if r.repaired else ""))
        return r

    if measure is None:
        return rounding(budget_ms), None, None
    tried = {}                                    # choice -> its Rounding (verify works on Solutions)

    def solve(b):
        r = rounding(b)
        tried[r.choice] = r
        return Solution.of(problem, r.choice, "budget-dual", 0.0)

    def timed(sol):
        ms = float(measure(allocation.plan(sol.choice)))
        log(f"measured {ms:.4g} ms (predicted {sol.latency_ms:.4g}, budget {budget_ms:.4g})")
        return ms

    v = meet_measured_budget(solve, timed, budget_ms, tolerance=tolerance)
    return tried[v.solution.choice], v.measured_ms, v.rounds


def _check(prepared, allocation: Allocation, budget_ms, measured: bool = False) -> float:
    """Refuse what cannot be trained; returns the budget the search aims at: ``budget_ms``, or, for
    a budget below the fastest plan as predicted that the device will judge (``measured``), the
    fastest plan's latency (verify then measures that plan)."""
    ok = not isinstance(budget_ms, bool) and isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms)
    if not ok or budget_ms <= 0:
        raise ConfigError(f"budget_ms must be a finite number of milliseconds > 0, got {budget_ms!r}")
    layers = named_layers(prepared, None)
    if set(layers) != set(allocation.layer_group):
        raise ConfigError(f"the allocation's layers {sorted(allocation.layer_group)} are not the model's "
                          f"{sorted(layers)}: build it from quantize_(prepared, step='convert')")
    default = getattr(getattr(prepared, "hwq_plan", None), "default", None)
    if default != allocation.default:
        raise ConfigError(f"the model was prepared with default {default!r} but the allocation's plans use "
                          f"{allocation.default!r} (adds and pools): prepare with BitPlan(default={allocation.default!r})")
    try:
        solve_exact(allocation.problem, budget_ms)     # an infeasible budget fails here, before training
    except InfeasibleBudgetError as e:
        if not measured or e.fastest_ms is None:
            raise
        return e.fastest_ms * (1 + 1e-9)
    return float(budget_ms)


class _Ascent:
    """Projected dual ascent on slacks averaged over ``period`` steps (or until ``flush``)."""

    def __init__(self, value: torch.Tensor, lr: float, period):
        self.value, self.lr, self.period = value, lr, period
        self.sum, self.n = torch.zeros_like(value), 0

    def add(self, slack: torch.Tensor) -> bool:
        """Accumulate one step's slack; True when this completed a period and the dual moved."""
        self.sum, self.n = self.sum + slack, self.n + 1
        return self.n == self.period and self.flush()

    def flush(self) -> bool:
        if not self.n:
            return False
        self.value = dual_step(self.value, self.sum / self.n, self.lr)
        self.sum, self.n = torch.zeros_like(self.value), 0
        return True


def _search(prepared, data, relaxation: BudgetRelaxation, budget_ms: float, qat: QATConfig,
            config: BudgetQATConfig, log):
    """The primal-dual search over weights, θ, λ and μ; returns (μ*, μ history, final E[latency]).

    Its own loop rather than ``train_constrained``'s: each step adds the latency term, a second
    optimizer for θ and μ's ascent, for which that loop has no hook; the per-step pieces (the
    Lagrangian's forward, the projected dual step) are the same functions.
    """
    torch.manual_seed(config.seed)
    lagrangian = Lagrangian(prepared, replace(qat, gradient_mode="ste"))
    eps = torch.tensor([qat.eps_for(layer.name) for layer in lagrangian.layers]
                       + ([qat.eps_output] if qat.eps_output is not None else []), dtype=torch.float64)
    lam = _Ascent(torch.zeros_like(eps), qat.dual_lr, qat.dual_period)
    mu = _Ascent(torch.tensor(0.0, dtype=torch.float64), config.dual_lr, config.dual_period)
    history = [0.0]
    opt_w = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=config.lr)
    opt_theta = torch.optim.Adam(relaxation.parameters(), lr=config.logit_lr)
    prepared.train()
    with relaxation.mixed(prepared):
        for epoch in range(config.epochs):
            sampler = RandomSampler(data, generator=torch.Generator().manual_seed(config.seed + epoch))
            loss_sum = seen = 0.0
            for x, y in DataLoader(data, batch_size=config.batch_size, sampler=sampler):
                loss, g, _ = lagrangian(x, y)
                rel_slack = (relaxation.expected_latency() - budget_ms) / budget_ms
                objective = (loss + (lam.value.to(g.dtype) * (g - eps.to(g.dtype))).sum()
                             + mu.value * rel_slack.to(loss.dtype))
                opt_w.zero_grad(set_to_none=True)
                opt_theta.zero_grad(set_to_none=True)
                objective.backward()
                opt_w.step()
                opt_theta.step()
                lam.add(g.detach().double() - eps)       # a period of "epoch" only accumulates
                if mu.add(rel_slack.detach()):
                    history.append(float(mu.value))
                loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            if qat.dual_period == "epoch":
                lam.flush()
            with torch.no_grad():
                expected = float(relaxation.expected_latency())
            log(f"search epoch {epoch + 1}/{config.epochs}: loss {loss_sum / max(seen, 1):.4f}, "
                f"E[latency] {expected:.4g} ms (budget {budget_ms:.4g}), mu {float(mu.value):.4g}, "
                f"sum lambda {float(lam.value.sum()):.4g}")
    if mu.flush():          # the steps since the last update count too: μ* has seen every step
        history.append(float(mu.value))
    return float(mu.value), tuple(history), expected
