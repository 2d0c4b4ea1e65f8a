"""``hwq allocate`` and ``hwq pareto``: the most accurate plan of a zoo model that meets a latency budget.

Steps: the float model (Fashion-MNIST models from their cached checkpoint, trained once; MobileNetV2
with its ImageNet weights, scored against its own float predictions on natural crops, since no
ImageNet labels exist here); its W8A8 QAT preparation; per-layer, per-option sensitivities
(``hwq.alloc.sensitivity``: ``measured``, ``hessian``, or ``duals`` from a short constrained QAT run);
the target's cost model (its measured table where one exists for this CPU, else the roofline);
the knapsack (``hwq.alloc.build``) solved exactly; the plan written as a ``BitPlan`` JSON that
``quantize_``, ``hwq train --plan`` and ``compile_model`` take as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from hwq.alloc.build import budget_ms, build_allocation, parse_budget, uniform_w8a8
from hwq.alloc.sensitivities import METHODS
from hwq.errors import ConfigError, choices
from hwq.fileio import atomic_write_json, atomic_write_text

SOLVERS = ("exact", "greedy")
DUALS_IMAGES = 5000


def duals_qat(images: int):
    """The short constrained QAT run whose duals are the sensitivities, on ``images`` images: one
    epoch of at least 32 steps (batches of at most 128), so the duals take at least 6 steps of
    ascent even on MobileNetV2's few hundred crops."""
    from hwq.qat import QATConfig

    return QATConfig(epochs=1, batch_size=min(128, max(8, images // 32)), lr=1e-4, gradient_mode="fp",
                     dual_lr=10.0, dual_period=5, eps=0.02)


@dataclass(frozen=True)
class AllocateConfig:
    """Options of ``hwq allocate`` / ``hwq pareto``."""

    model: str = "rescnn"
    target: str = "x86-host"
    budget: str = "1x"
    batch: int = 1
    sensitivity: str = "measured"
    max_weight_mb: float | None = None
    ties: tuple = ()
    solver: str = "exact"
    images: int = 1000
    out: str = "hwq-out/plan.json"
    json: str | None = None
    data_dir: str | None = None
    verify: bool = False

    def __post_init__(self):
        from hwq.models.zoo import MODELS

        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; valid: {choices(MODELS)}")
        parse_budget(self.budget)
        if self.sensitivity not in METHODS:
            raise ConfigError(f"sensitivity {self.sensitivity!r} is not one of {choices(METHODS)}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver {self.solver!r} is not one of {choices(SOLVERS)}")
        if self.batch < 1 or self.images < 1:
            raise ConfigError(f"batch and images must be >= 1, got {self.batch!r}, {self.images!r}")
        if self.max_weight_mb is not None and not self.max_weight_mb > 0:
            raise ConfigError(f"max_weight_mb must be > 0, got {self.max_weight_mb!r}")


def model_and_data(config: AllocateConfig, log=print):
    """(float model, calibration images, held-out (images, labels), training (images, labels) for
    the duals' constrained QAT run) for ``config.model``."""
    import torch

    from hwq.models.zoo import FLOAT_TRAINING, zoo_model

    if config.model == "mobilenetv2":
        from hwq.data.natural_images import natural_crops

        model, _ = zoo_model("mobilenetv2")
        crops = torch.from_numpy(natural_crops(64 + min(config.images, 256), seed=0))
        with torch.no_grad():
            labels = torch.cat([model(crops[i:i + 32]).argmax(1) for i in range(64, len(crops), 32)])
        log("MobileNetV2 (ImageNet weights): no labels here, the loss is taken against its own float predictions")
        return model, crops[:64], (crops[64:], labels), (crops[64:], labels)
    from hwq.data import load_fashion_mnist
    from hwq.models import ResCNN, ResNet20, TrainConfig, load_or_train
    from hwq.models.train import to_float_input

    train, test = load_fashion_mnist("train", config.data_dir), load_fashion_mnist("test", config.data_dir)
    torch.manual_seed(0)
    cls = {"rescnn": ResCNN, "resnet20": ResNet20}[config.model]
    model, cached = load_or_train(cls(), train, TrainConfig(**FLOAT_TRAINING[config.model]), log=lambda s: log("  " + s))
    log(f"float {config.model}: {'cached' if cached else 'trained and cached'}")
    held = test.subset(config.images, seed=3)
    qat = train.subset(DUALS_IMAGES, seed=2)
    return (model, to_float_input(train.subset(512, seed=1).images),
            (to_float_input(held.images), torch.from_numpy(held.labels).long()),
            (to_float_input(qat.images), torch.from_numpy(qat.labels).long()))


def sensitivities(config: AllocateConfig, model, prepared, calib, options, data, qat_data, log=print):
    """The ``Sensitivities`` of ``config.sensitivity``. ``duals`` runs constrained QAT at W4A4 first:
    at W8A8 every layer's error is far below any useful bound, every constraint is slack and every
    dual stays 0; the duals only say something where the constraints bind."""
    from hwq.alloc.sensitivity import layer_sensitivities

    report = None
    if config.sensitivity == "duals":
        from torch.utils.data import TensorDataset

        from hwq.plan import BitPlan, LayerSpec
        from hwq.qat import quantize_, train_constrained

        prepared = quantize_(model, BitPlan(default=LayerSpec(4, 4)), step="prepare", calibration=calib)
        log(f"constrained QAT at W4A4 on {len(qat_data[1])} images (duals)")
        report = train_constrained(prepared, TensorDataset(*qat_data), duals_qat(len(qat_data[1])), progress=False,
                                   log=lambda s: None)
    return layer_sensitivities(prepared, options, data, config.sensitivity, report=report,
                               images=config.images, batch_size=min(250, config.images))


def _prepare(config: AllocateConfig, log):
    from hwq.cost import CostModel, layer_options
    from hwq.cost.workload import Workload, layer_nodes
    from hwq.qat import quantize_

    model, calib, data, qat_data = model_and_data(config, log)
    prepared = quantize_(model, step="prepare", calibration=calib)
    graph = quantize_(prepared, step="convert")
    cost = CostModel(config.target)
    if cost.note:
        log(f"note: {cost.note}")
    options = {n.name: [o.spec for o in layer_options(Workload.of(n, graph.tensors[n.input].shape), cost.target,
                                                      n.requant is not None)]
               for n in layer_nodes(graph)}
    sens = sensitivities(config, model, prepared, calib, options, data, qat_data, log)
    alloc = build_allocation(graph, cost, sens.losses, config.batch, config.ties)
    return graph, cost, sens, alloc


def run_allocate(config: AllocateConfig, log=print) -> dict:
    """Solve, write the plan, print the per-layer table; returns the JSON report."""
    from hwq.alloc.solve import solve_exact, solve_greedy

    graph, cost, sens, alloc = _prepare(config, log)
    budget = budget_ms(alloc, config.budget)
    max_bytes = config.max_weight_mb * 1e6 if config.max_weight_mb is not None else None
    solve = solve_exact if config.solver == "exact" else solve_greedy
    rounds = None
    if config.verify:
        sol, rounds = _verified(config, graph, alloc, solve, budget, max_bytes, log)
    else:
        sol = solve(alloc.problem, budget, max_bytes)
    plan = alloc.plan(sol.choice)
    atomic_write_text(config.out, plan.to_json() + "\n")
    est = cost.plan(graph, plan, config.batch)
    w = max(len(r.name) for r in est.rows)
    lines = [f"{'layer':{w}s}  option  kernel            predicted ms  sensitivity ({sens.method})"]
    for r in est.rows:
        lines.append(f"{r.name:{w}s}  {r.option:6s}  {r.estimate.kernel:17s} {r.estimate.ms:12.4f}  "
                     f"{sens.values[r.name][r.option]:+.5f}")
    lines.append(f"glue and call overhead: {est.glue_ms:.4f} ms")
    lines.append(f"predicted total {est.total_ms:.4f} ms at batch {config.batch} on {cost.target.name} "
                 f"(budget {budget:.4f} ms = {config.budget}); predicted loss increase {sol.loss:+.5f}; "
                 f"solver {sol.solver} in {sol.seconds * 1e3:.1f} ms")
    log("\n".join(lines))
    log(f"wrote {config.out}")
    report = {"config": asdict(config), "budget_ms": budget, "predicted_ms": est.total_ms, "loss": sol.loss,
              "solver": sol.solver, "solve_seconds": sol.seconds, "plan": json.loads(plan.to_json()),
              "estimate": est.to_json(), "sensitivities": json.loads(sens.to_json()),
              "verify_rounds": rounds}
    if config.json:
        atomic_write_json(config.json, report)
    return report


def device_timer(build, alloc, budget: str, batch: int, target: str, log=print):
    """``BitPlan -> its latency measured here, on the cost model's scale``, to check ``budget``.

    A budget relative to uniform W8A8 (``0.8x``) is checked as a ratio: the plan and uniform W8A8
    timed in alternation (``measure_ratio``), so the verdict does not move with the host's speed
    drifting between timings; the ratio times uniform W8A8's predicted ms puts it on the solver's
    scale. A budget in ms is checked against the plan's own latency. ``build``: ``BitPlan ->
    CompiledModel``; uniform W8A8 is built once, here."""
    from hwq.alloc.build import uniform_w8a8
    from hwq.cost.machine import runs_on_this_machine
    from hwq.lower.device import LocalDevice
    from hwq.lower.profile import measure_model, measure_ratio
    from hwq.target import load_target

    if not runs_on_this_machine(load_target(target)):
        raise ConfigError(f"verify times the plan on this machine, which cannot run target {target!r}; "
                          f"verify it on the board (hwq profile --rpc measures there)")
    w8a8 = uniform_w8a8(alloc)                  # what "1x" is measured against
    reference = build(alloc.plan(w8a8)) if parse_budget(budget)[1] == "x" else None
    w8a8_ms = alloc.problem.latency(w8a8)

    def measure(plan) -> float:
        compiled = build(plan)
        if reference is None:
            ms = measure_model(compiled, LocalDevice(), batch)[0]
            log(f"verify: measured {ms:.4f} ms")
            return ms
        ratio, ms, ref_ms = measure_ratio(compiled, reference, LocalDevice(), batch)
        log(f"verify: measured {ratio:.3f}x uniform W8A8 ({ms:.4f} ms against {ref_ms:.4f} ms)")
        return ratio * w8a8_ms                # in the model's ms

    return measure


def _verified(config: AllocateConfig, graph, alloc, solve, budget: float, max_bytes, log):
    """Solve, compile and time the plan on this machine (``device_timer``); re-solve tighter while
    it is over budget."""
    from hwq.alloc.verify import meet_measured_budget
    from hwq.lower import compile_model
    from hwq.models.zoo import example_graph

    build = lambda plan: compile_model(example_graph(config.model, plan), config.target)  # noqa: E731
    timer = device_timer(build, alloc, config.budget, config.batch, config.target, log)
    scale = alloc.problem.latency(uniform_w8a8(alloc)) if parse_budget(config.budget)[1] == "x" else 1.0

    def measure(sol):
        log(f"verify: predicted {sol.latency_ms / scale:.4g}{'x' if scale != 1.0 else ' ms'} "
            f"(budget {budget / scale:.4g}{'x' if scale != 1.0 else ' ms'})")
        return timer(alloc.plan(sol.choice))

    v = meet_measured_budget(lambda b: solve(alloc.problem, b, max_bytes), measure, budget)
    if not v.met:
        log(f"warning: no plan measured within budget + 3 % in {len(v.rounds)} rounds; kept the fastest "
            f"measured ({v.measured_ms:.4f} ms)")
    return v.solution, [list(r) for r in v.rounds]


def run_pareto(config: AllocateConfig, budgets: int = 20, log=print) -> list[dict]:
    """Sweep ``budgets`` budgets from the fastest plan to the most accurate; print and return the front."""
    from hwq.alloc.solve import pareto_front

    graph, cost, sens, alloc = _prepare(config, log)
    front = pareto_front(alloc.problem, budgets)
    rows = []
    for s in front:
        plan = alloc.plan(s.choice)
        narrow = sum(1 for spec in plan.layers.values() if (spec.weight_bits, spec.act_bits) != (8, 8))
        rows.append({"predicted_ms": s.latency_ms, "loss": s.loss, "narrow_layers": narrow,
                     "plan": json.loads(plan.to_json())})
    log(f"{'predicted ms':>12s}  {'loss increase':>13s}  layers below W8A8 (of {len(alloc.layer_group)})")
    for r in rows:
        log(f"{r['predicted_ms']:12.4f}  {r['loss']:+13.5f}  {r['narrow_layers']}")
    if config.json:
        atomic_write_json(config.json, {"config": asdict(config), "front": rows})
    return rows
