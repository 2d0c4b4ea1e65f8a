"""``hwq train``: constrained QAT of the Fashion-MNIST ResCNN, from its cached float checkpoint to an
integer program (and optionally a compiled artifact).

Steps: load the data; load (or train and cache) the float model; prepare it for QAT with the bit
plan; train under the per-layer constraints; write the checkpoint and the sensitivity report;
convert to a ``QGraph``, measure its integer accuracy with the torch integer reference and, with
``artifact``, compile it with TVM, check that TVM predicts exactly what the reference predicts, and
save the artifact. Under ``torchrun`` every process trains; rank 0 alone writes and compiles.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hwq.errors import ConfigError, TargetError, choices
from hwq.fileio import atomic_write_json, atomic_write_text
from hwq.plan import BitPlan, LayerSpec
from hwq.qat.config import QATConfig
from hwq.spec import RANGE_MODES


@dataclass(frozen=True)
class TrainJobConfig:
    """Options of ``hwq train`` (the QAT problem itself is ``qat``).

    ``plan`` (a ``BitPlan`` JSON file) overrides ``weight_bits`` / ``act_bits``. The float model is
    ``load_or_train``'s checkpoint for (``width``, ``float_epochs``, ``float_subset``): the demo's by
    default, so it is trained once per machine.
    """

    qat: QATConfig = field(default_factory=QATConfig)
    weight_bits: int = 4
    act_bits: int = 4
    plan: str | None = None
    range_mode: str = "learned"
    train_subset: int = 10000
    test_subset: int = 0
    calibration_images: int = 1024
    width: int = 32
    float_epochs: int = 3
    float_subset: int = 0
    out_dir: str = "hwq-out/train"
    resume: bool = False
    checkpoint_steps: int = 50
    artifact: bool = False
    target: str = "x86-host"
    data_dir: str | None = None
    progress: bool = True
    budget: str | None = None
    latency_batch: int = 1
    search_epochs: int = 1
    verify: bool = False

    def __post_init__(self):
        LayerSpec(self.weight_bits, self.act_bits)            # validates the bits
        if self.budget is not None:
            from hwq.alloc.build import parse_budget

            parse_budget(self.budget)
            if self.plan is not None:
                raise ConfigError(f"--budget searches the plan itself; drop --plan {self.plan!r} (or drop --budget)")
            if self.resume:
                raise ConfigError("--resume is not supported with --budget: the budget search keeps no checkpoint")
        elif self.verify:
            raise ConfigError("--verify checks a latency budget: give --budget too")
        if self.latency_batch < 1 or self.search_epochs < 1:
            raise ConfigError(f"latency_batch and search_epochs must be >= 1, got {self.latency_batch!r}, "
                              f"{self.search_epochs!r}")
        if self.range_mode not in RANGE_MODES:
            raise ConfigError(f"range_mode {self.range_mode!r} is not one of {choices(RANGE_MODES)}")
        for name in ("train_subset", "test_subset", "float_subset"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = all), got {getattr(self, name)!r}")
        if self.checkpoint_steps < 0:
            raise ConfigError(f"checkpoint_steps must be >= 0 (0 = at epoch ends only), got {self.checkpoint_steps!r}")
        if self.calibration_images < 1 or self.width < 1 or self.float_epochs < 1:
            raise ConfigError(f"calibration_images, width and float_epochs must be >= 1, got "
                              f"{self.calibration_images!r}, {self.width!r}, {self.float_epochs!r}")

    def bit_plan(self) -> BitPlan:
        if self.plan is not None:
            return BitPlan.load(self.plan)
        return BitPlan(default=LayerSpec(self.weight_bits, self.act_bits))


def run_train(config: TrainJobConfig = TrainJobConfig(), log=print) -> dict | None:
    """Run ``hwq train``; returns the summary dict on rank 0 (None on other ranks)."""
    from hwq.data import load_fashion_mnist
    from hwq.models import ResCNN, TrainConfig, evaluate, load_or_train
    from hwq.models.train import to_float_input
    from hwq.qat import is_main_process, quantize_, run_reference, train_constrained
    from hwq.qat.reference import dequantize_output, quantize_input

    if config.artifact or config.budget is not None:
        from hwq.target import load_target
        load_target(config.target)            # a typo fails here, before minutes of training
    if config.budget is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--budget runs in one process (its search has no distributed form); run it without torchrun")
    plan = config.bit_plan()
    out = Path(config.out_dir)
    train, test = load_fashion_mnist("train", config.data_dir), load_fashion_mnist("test", config.data_dir)
    if config.test_subset:
        test = test.subset(config.test_subset, seed=0)
    torch.manual_seed(0)
    model, cached = load_or_train(ResCNN(width=config.width), train,
                                  TrainConfig(epochs=config.float_epochs, train_subset=config.float_subset),
                                  log=lambda s: log("  " + s))
    x_test, y_test = to_float_input(test.images), torch.from_numpy(test.labels)
    fp32_acc = evaluate(model, test)
    log(f"float model: {'cached' if cached else 'trained and cached'}, test accuracy {fp32_acc:.2f}%")

    calib = to_float_input(train.subset(config.calibration_images, seed=1).images)
    sub = train.subset(config.train_subset, seed=2) if config.train_subset else train
    data = TensorDataset(to_float_input(sub.images), torch.from_numpy(sub.labels))
    budget = None
    if config.budget is not None:
        prepared, report, budget = _budget_search(config, model, calib, data, TensorDataset(x_test, y_test), log)
        budget["plan_file"] = str(out / "plan.json")
        atomic_write_text(out / "plan.json", prepared.hwq_plan.to_json() + "\n")
        torch.save(prepared.state_dict(), out / "checkpoint.pt")
    else:
        prepared = quantize_(model, plan, step="prepare", calibration=calib, range_mode=config.range_mode)
        log(f"constrained QAT ({config.qat.gradient_mode} gradients) on {len(sub)} images, plan "
            f"W{plan.default.weight_bits}A{plan.default.act_bits}{' + per-layer overrides' if plan.layers else ''}")
        report = train_constrained(prepared, data, config.qat, eval_data=TensorDataset(x_test, y_test),
                                   checkpoint=out / "checkpoint.pt", resume=config.resume, progress=config.progress,
                                   log=log, checkpoint_steps=config.checkpoint_steps)
    if not is_main_process():
        return None
    report.save(out / "sensitivity.json")
    log(report.table())

    graph = quantize_(prepared, step="convert")
    xi = quantize_input(graph, x_test)
    ref_int = torch.cat([run_reference(graph, xi[i:i + 1000]) for i in range(0, len(xi), 1000)])
    # logits, not raw accumulators: an int32 output has one scale per channel (s_x * s_w[c])
    ref_pred = dequantize_output(graph, ref_int).argmax(1).numpy()
    int_acc = 100.0 * float((ref_pred == test.labels).mean())
    summary = {"fp32_accuracy": fp32_acc, "fake_quant_accuracy": report.accuracy, "integer_accuracy": int_acc,
               "report": str(out / "sensitivity.json"), "checkpoint": str(out / "checkpoint.pt"),
               "config": _jsonable(config), **({"budget": budget} if budget is not None else {})}
    log(f"test accuracy: fp32 {fp32_acc:.2f}%, fake-quant {report.accuracy:.2f}%, integer program {int_acc:.2f}%")
    if config.artifact:
        from hwq.lower import compile_model

        compiled = compile_model(graph, config.target)
        if _runs_here(compiled):
            xin = xi.numpy().astype(graph.input.dtype)
            tvm_int = np.concatenate([compiled.run_int(xin[i:i + 1000]) for i in range(0, len(xin), 1000)])
            tvm_pred = dequantize_output(graph, torch.from_numpy(tvm_int)).argmax(1).numpy()   # float32 if the head is fp32
            summary["tvm_equals_reference_outputs"] = bool(np.array_equal(tvm_int, ref_int.numpy()))
            summary["tvm_equals_reference_predictions"] = bool(np.array_equal(tvm_pred, ref_pred))
            diff = np.abs(tvm_int.astype(np.float64) - ref_int.numpy().astype(np.float64))
            summary["outputs_differing"] = float((diff > 0).mean())
            summary["output_max_abs_difference"] = float(diff.max())
            # an fp32 layer sums in another order than torch: its float values may differ in the last
            # bits, and a value that lands on a rounding boundary requantizes 1 LSB apart
            why = (f" (on {summary['outputs_differing']:.2%} of them, by at most "
                   f"{summary['output_max_abs_difference']:.3g}: fp32 layers sum in another order than torch)"
                   if not summary["tvm_equals_reference_outputs"] else "")
            log(f"TVM on {len(xin)} test images: outputs equal the reference's: "
                f"{summary['tvm_equals_reference_outputs']}{why}, predictions equal: "
                f"{summary['tvm_equals_reference_predictions']}")
        summary["artifact"] = str(compiled.save(out / f"artifact-{config.target}"))
        log(f"wrote {summary['artifact']}")
    atomic_write_json(out / "summary.json", summary, indent=2)
    return summary


def _budget_search(config: TrainJobConfig, model, calib, data, eval_data, log):
    """The budget-as-dual search (``hwq.alloc.budget_qat``) on ``config.target``: returns the model
    prepared, searched and fine-tuned at the plan it chose, the fine-tune's report (with the budget's
    price, ``latency_dual``), and what the summary records of the search."""
    from hwq.alloc.budget_qat import BudgetQATConfig, train_with_budget
    from hwq.alloc.build import budget_ms, build_allocation, uniform_w8a8
    from hwq.cost import CostModel
    from hwq.qat import quantize_

    # the search prices every option of every layer on the target; the knapsack's losses are not
    # needed (a broken rounding is repaired towards the search's own most probable plan)
    prepared = quantize_(model, BitPlan(default=LayerSpec(8, 8)), step="prepare", calibration=calib,
                         range_mode=config.range_mode)
    cost = CostModel(config.target)
    if cost.note:
        log(f"note: {cost.note}")
    alloc = build_allocation(quantize_(prepared, step="convert"), cost, lambda layer, opts: [0.0] * len(opts),
                             config.latency_batch)
    budget = budget_ms(alloc, config.budget)
    measure = None
    if config.verify:
        from hwq.alloc_job import device_timer
        from hwq.lower import compile_model
        from hwq.qat import quantize_ptq

        build = lambda plan: compile_model(quantize_ptq(model, calib[:256], plan), config.target)  # noqa: E731
        measure = device_timer(build, alloc, config.budget, config.latency_batch, config.target, log)
    log(f"budget-as-dual search on {len(data)} images: {config.budget} = {budget:.4g} ms at batch "
        f"{config.latency_batch} on {cost.target.name}")
    res = train_with_budget(prepared, data, alloc, budget, config.qat,
                            BudgetQATConfig(epochs=config.search_epochs, finetune_epochs=config.qat.epochs,
                                            seed=config.qat.seed),
                            eval_data=eval_data, measure=measure, progress=config.progress, log=log)
    scale, predicted = alloc.problem.latency(uniform_w8a8(alloc)), alloc.problem.latency(res.choice)
    log(f"plan: {alloc.problem.describe(res.choice)}; predicted {predicted:.4g} ms "
        f"({predicted / scale:.3f}x uniform W8A8)"
        + (f", measured {res.measured_ms / scale:.3f}x" if res.measured_ms is not None else "")
        + f"; mu* {res.mu:.4g}: one ms of budget is worth {res.loss_per_ms:.4g} loss")
    summary = {"budget": config.budget, "budget_ms": budget, "target": cost.target.name,
               "latency_batch": config.latency_batch, "predicted_ms": predicted,
               "uniform_w8a8_ms": scale, "measured_ms": res.measured_ms,
               "verify_rounds": [list(r) for r in res.verify_rounds] if res.verify_rounds else None,
               "mu": res.mu, "loss_per_ms": res.loss_per_ms, "mu_history": list(res.mu_history),
               "expected_ms": res.expected_ms, "repaired": res.repaired,
               "plan": json.loads(res.plan.to_json()), "cost_note": cost.note}
    return prepared, res.report, summary


def _runs_here(compiled) -> bool:
    try:
        compiled.vm     # noqa: B018 (builds the VM; raises TargetError for a board this host cannot run)
        return True
    except TargetError:
        return False


def _jsonable(config: TrainJobConfig) -> dict:
    d = asdict(config)
    d["qat"] = json.loads(config.qat.to_json())
    return d
