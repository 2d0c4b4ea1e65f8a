"""The latency budget as a dual of constrained QAT: E[latency] is the problem's latency at one-hot p,
a tight budget makes μ positive and the kept plan meets it, a loose one leaves μ at 0, a rounding
that breaks the budget is repaired with the exact solver's plan, and bad settings are refused.

The roofline of a width-8 ResCNN is bound by its activations and per-call overheads (every plan
within 1e-5 of the others), so the training tests use a synthetic table over the same layers and
options, where a plan's latency grows with its bits and the decisions are visible."""

import copy
import itertools
import random
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from hwq.alloc.budget_qat import BudgetQATConfig, train_with_budget
from hwq.alloc.build import Allocation, build_allocation
from hwq.alloc.problem import Interaction
from hwq.alloc.relaxation import BudgetRelaxation, round_choice
from hwq.alloc.solve import solve_exact
from hwq.cost.estimate import CostModel
from hwq.cost.options import Option, output_bits
from hwq.errors import ConfigError, InfeasibleBudgetError
from hwq.plan import BitPlan
from hwq.qat import LayerSensitivity, QATConfig, SensitivityReport, quant_layers, quantize_
from tests.conftest import zoo_models

QAT = QATConfig(epochs=1, batch_size=64, dual_lr=1.0, dual_period=2)
SEARCH = BudgetQATConfig(epochs=2, batch_size=32, logit_lr=0.3, dual_lr=5.0, dual_period=2, finetune_epochs=1)


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model, shape, _ = zoo_models()["rescnn"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, *shape, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    prepare = lambda: quantize_(copy.deepcopy(model), BitPlan(), calibration=x[:64])  # noqa: E731
    real = build_allocation(quantize_(prepare(), step="convert"), CostModel("x86-avx2", table=None),
                            lambda layer, options: [0.0] * len(options), batch=16)
    return prepare, TensorDataset(x, y), real, _synthetic(real)


def _synthetic(real: Allocation) -> Allocation:
    """The same groups and options, with latencies that grow with the bits: own = w*a/64 ms (fp32:
    1.5 ms, half again W8A8's), and a consumer pays 0.1 ms more for reading an 8-bit rather than a
    4-bit input (an fp32 producer's output is read at 8 bits)."""
    p = real.problem
    own = lambda o: 1.5 if o.spec.is_float else o.weight_bits * o.act_bits / 64      # noqa: E731
    groups = tuple(replace(g, latency_ms=tuple(own(o) for o in opts)) for g, opts in zip(p.groups, real.options))
    pairs = tuple(Interaction(t.a, t.b, tuple(tuple(0.1 * output_bits(po, 8) / 8 + 0.01 * min(o.weight_bits, 8)
                                                    for o in real.options[t.b])
                                              for po in real.options[t.a])) for t in p.interactions)
    return replace(real, problem=replace(p, groups=groups, interactions=pairs, base_latency_ms=0.5))


def _w8a8_ms(alloc):
    return alloc.problem.latency(tuple(opts.index(Option(8, 8)) for opts in alloc.options))


def _all_choices(alloc):
    return itertools.product(*[range(len(g.options)) for g in alloc.problem.groups])


@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_expected_latency_is_the_plans_latency_at_one_hot_logits(setup, which):
    alloc = setup[2] if which == "real" else setup[3]
    relax = BudgetRelaxation(alloc)
    rng = random.Random(0)
    for _ in range(20):
        choice = tuple(rng.randrange(len(g.options)) for g in alloc.problem.groups)
        with torch.no_grad():
            for t, c in zip(relax.logits, choice):
                t.copy_(torch.nn.functional.one_hot(torch.tensor(c), len(t)).double() * 100.0)
        assert relax.argmax() == choice
        assert float(relax.expected_latency().detach()) == pytest.approx(alloc.problem.latency(choice), rel=1e-12)


def test_expected_latency_is_the_mean_over_plans_at_uniform_logits(setup):
    alloc = setup[3]
    lats = [alloc.problem.latency(c) for c in _all_choices(alloc)]
    assert float(BudgetRelaxation(alloc).expected_latency().detach()) == pytest.approx(sum(lats) / len(lats), rel=1e-12)


@pytest.mark.parametrize("choice", [(2, 0, 1, 0, 2), (2, 4, 1, 3, 0)])
def test_mixture_is_the_option_itself_at_one_hot_logits(setup, choice):
    prepare, data, _, alloc = setup
    relax = BudgetRelaxation(alloc)
    with torch.no_grad():
        for t, c in zip(relax.logits, choice):
            t.copy_(torch.nn.functional.one_hot(torch.tensor(c), len(t)).double() * 100.0)
    x = data.tensors[0][:8]
    model = prepare().eval()
    with relax.mixed(model):
        mixed = model(x)
    assert not any("quant_forward" in vars(layer) for layer in quant_layers(model))
    from hwq.alloc.layer_bits import layer_options
    with layer_options(model, alloc.plan(choice).layers):
        fixed = model(x)
    torch.testing.assert_close(mixed, fixed)


def test_tight_budget_makes_mu_positive_and_the_plan_meets_it(setup):
    prepare, data, _, alloc = setup
    budget = 0.5 * _w8a8_ms(alloc)          # below the uniform mixture's E[latency] (0.63x)
    model = prepare()
    result = train_with_budget(model, data, alloc, budget, QAT, SEARCH, eval_data=data, log=lambda s: None)
    assert result.mu > 0 and result.mu_history[0] == 0.0 and max(result.mu_history) > 0
    assert alloc.problem.latency(result.choice) <= budget * (1 + 1e-9)
    assert result.plan == alloc.plan(result.choice) == model.hwq_plan
    for layer in quant_layers(model):           # the model runs the plan kept, no mixture
        spec = result.plan.spec_for(layer.name)
        assert layer.weight_fq.spec.bits == spec.weight_bits and "quant_forward" not in vars(layer)
    assert result.report.latency_dual == pytest.approx(result.mu / budget) == pytest.approx(result.loss_per_ms)
    assert result.report.latency_budget_ms == budget and result.accuracy is not None
    assert quantize_(model, step="convert") is not None           # the chosen plan converts


def test_measured_rounding_is_tightened_until_it_meets_the_budget(setup):
    """With ``measure``, a plan the device times over budget is rounded again, tighter, before the
    fine-tune. The device here is uniformly slower than the table, by the factor that puts the first
    rounded plan 30 % over the budget."""
    prepare, data, _, alloc = setup
    budget = 0.8 * _w8a8_ms(alloc)
    timed, slow = [], []

    def measure(plan):
        predicted = alloc.problem.latency(alloc.choice(plan))
        slow.append(slow[0] if slow else 1.3 * budget / predicted)
        timed.append(predicted * slow[0])
        return timed[-1]

    model = prepare()
    result = train_with_budget(model, data, alloc, budget, QAT, replace(SEARCH, epochs=1), measure=measure,
                               log=lambda s: None)
    assert len(timed) >= 2 and timed[0] == pytest.approx(1.3 * budget)
    assert result.measured_ms == timed[-1] <= budget * 1.03
    assert [m for _, _, m in result.verify_rounds] == timed
    assert alloc.problem.latency(result.choice) * slow[0] == pytest.approx(result.measured_ms)
    assert result.plan == model.hwq_plan == alloc.plan(result.choice)
    plain = train_with_budget(prepare(), data, alloc, budget, QAT, replace(SEARCH, epochs=1), log=lambda s: None)
    assert plain.measured_ms is None and plain.verify_rounds is None


def test_a_budget_below_the_predicted_fastest_plan_is_judged_by_the_device(setup):
    prepare, data, _, alloc = setup
    fastest = min(alloc.problem.latency(c) for c in _all_choices(alloc))
    faster_device = lambda plan: 0.8 * alloc.problem.latency(alloc.choice(plan))     # noqa: E731
    cfg = replace(SEARCH, epochs=1)
    result = train_with_budget(prepare(), data, alloc, 0.9 * fastest, QAT, cfg, measure=faster_device,
                               log=lambda s: None)
    assert alloc.problem.latency(result.choice) == pytest.approx(fastest)
    assert result.measured_ms <= 0.9 * fastest * 1.03
    with pytest.raises(InfeasibleBudgetError, match="measured here"):       # slower device: truly infeasible
        train_with_budget(prepare(), data, alloc, 0.9 * fastest, QAT, cfg, log=lambda s: None,
                          measure=lambda plan: alloc.problem.latency(alloc.choice(plan)))


def test_generous_budget_leaves_mu_at_zero(setup):
    prepare, data, _, alloc = setup
    budget = 2.0 * _w8a8_ms(alloc)
    cfg = replace(SEARCH, epochs=1)
    result = train_with_budget(prepare(), data, alloc, budget, QAT, cfg, log=lambda s: None)
    assert result.mu == 0.0 and set(result.mu_history) == {0.0} and not result.repaired
    assert result.report.latency_dual == 0.0 and result.rounded_ms <= budget


def test_rounding_that_breaks_the_budget_is_repaired_with_the_exact_plan(setup):
    alloc = setup[3]
    choices = list(_all_choices(alloc))
    slowest = max(choices, key=alloc.problem.latency)
    relax = BudgetRelaxation(alloc)
    with torch.no_grad():
        for t, c in zip(relax.logits, slowest):
            t.copy_(torch.nn.functional.one_hot(torch.tensor(c), len(t)).double() * 3.0)
    budget = 0.5 * _w8a8_ms(alloc)
    r = round_choice(relax, budget)
    exact = solve_exact(relax.likelihood_problem(), budget)
    assert r.repaired and r.rounded == slowest and r.rounded_ms > budget
    assert r.choice == exact.choice and r.exact_ms == exact.latency_ms <= budget * (1 + 1e-9)
    # the exact plan is the most probable one within the budget (brute force over every plan)
    feasible = [c for c in choices if alloc.problem.latency(c) <= budget * (1 + 1e-9)]
    best = min(feasible, key=relax.likelihood_problem().loss)
    assert relax.likelihood_problem().loss(r.choice) == pytest.approx(relax.likelihood_problem().loss(best))
    # within the budget the rounded plan is kept as it is
    kept = round_choice(relax, alloc.problem.latency(slowest))
    assert not kept.repaired and kept.choice == slowest


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("lr", 0.0), ("logit_lr", -1.0),
                                         ("dual_lr", -0.5), ("dual_period", 0), ("temperature", 0.0),
                                         ("finetune_epochs", 0), ("seed", -1), ("epochs", True),
                                         ("temperature", float("nan")), ("version", 2)])
def test_bad_config_values_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=f"{field}.*{repr(value)}"):
        BudgetQATConfig(**{field: value})


def test_bad_budgets_and_mismatched_models_are_refused_before_training(setup):
    prepare, data, _, alloc = setup
    prepared = prepare()
    for bad in (-1.0, 0, float("inf"), "2ms"):
        with pytest.raises(ConfigError, match=repr(bad).replace("(", r"\(")):
            train_with_budget(prepared, data, alloc, bad, QAT, SEARCH, log=lambda s: None)
    with pytest.raises(InfeasibleBudgetError):
        train_with_budget(prepared, data, alloc, 0.01, QAT, SEARCH, log=lambda s: None)
    other = replace(alloc, layer_group={**{k: v for k, v in alloc.layer_group.items() if k != "fc"}, "head": 4})
    with pytest.raises(ConfigError, match="head"):
        train_with_budget(prepared, data, other, 10.0, QAT, SEARCH, log=lambda s: None)


def test_report_round_trips_the_latency_dual_and_reads_old_json():
    rows = (LayerSensitivity("fc", 0.5, 0.0, 0.02, 8, None),)
    budgeted = SensitivityReport(rows, latency_dual=0.25, latency_budget_ms=1.5)
    assert SensitivityReport.from_json(budgeted.to_json()) == budgeted
    assert "mu* = 0.25 loss per ms" in budgeted.table()
    plain = SensitivityReport(rows)
    assert "latency_dual" not in plain.to_json()            # other reports' JSON is unchanged
    back = SensitivityReport.from_json(plain.to_json())
    assert back == plain and back.latency_dual is None and back.latency_budget_ms is None
