"""Bit allocation under a latency budget, measured: accuracy against measured latency per plan.

For each model, on the target (default ``x86-avx2``, whose options differ in speed on this
machine's AVX2 units) at one batch size:

1. the cost model: ``hwq profile`` of the model (resumed from this CPU's table), so predictions
   come from kernels measured here;
2. sensitivities s[l][o] for every layer and option the target offers: (a) duals of a constrained
   QAT run at W4A4, (b) Hessian traces (HAWQ), (c) measured one-layer loss changes;
3. the uniform plans (every layer at one option, where the layer offers it) as reference points,
   and budgets spanning the fastest uniform plan to the slowest;
4. at each budget: the exact knapsack's plan under (a), (b), (c); the budget-as-dual QAT plan
   (``hwq.alloc.budget_qat``, where available); random plans at the same budget (the exact solver
   on random sensitivities, so they sit at the budget too), several seeds;
5. every plan fine-tuned with the same short QAT schedule (Fashion-MNIST models; MobileNetV2 has no
   labels here and is compared post-training, top-1 agreement with its float model on natural
   crops), compiled, its integer accuracy measured with the TVM build on images the sensitivities
   never saw (MobileNetV2: also the KL divergence from its float model), its latency **measured**;
6. every allocated plan verified: re-solved tighter while it measures over its budget.

Latency on a shared 2-core host drifts by 20-30 % over minutes, so every plan is timed as a ratio
to uniform W8A8, the two timed in alternation over many rounds (``hwq.lower.profile.measure_ratio``), and
quoted as that ratio times uniform W8A8's latency: budgets and plans on one scale, which is what a
``0.8x`` budget means.

Writes benchmarks/results/alloc_study.json (one entry per model, merged with earlier runs of other
models) and alloc_study.png.

    python benchmarks/alloc_study.py --models rescnn --budgets 5 --random 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hwq.fileio import display_path  # noqa: E402

from alloc_report import plot, rank_agreement, render, summarize  # noqa: E402  (beside this script)

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = ("fp32", "w8a8", "w7a8", "w4a8", "w8a4", "w4a4")


def uniform_plan(alloc, option: str) -> tuple:
    """Every group at ``option``; a group that lacks it at 8-bit weights and the same activation
    width, else at its first option (fp32 on the CPUs: a classifier with an int32 output offers
    no 4-bit activations, so "uniform w4a4" keeps it in fp32)."""
    choice = []
    for opts in alloc.options:
        names = [o.name for o in opts]
        alt = f"w8a{option[-1]}"
        choice.append(names.index(option) if option in names else names.index(alt) if alt in names else 0)
    return tuple(choice)


class Evaluator:
    """Fine-tune (or not), compile, measure latency and integer accuracy of plans; cached by plan."""

    def __init__(self, name, model, calib, held, train_data, target, batch, args, log, reference):
        """``held``: (images, labels, float logits or None), the evaluation set (disjoint from the
        images the sensitivities were measured on). ``reference``: the plan every latency is timed
        against (uniform W8A8); compiled and timed at the first latency asked for."""
        self.name, self.model, self.calib, self.held, self.train_data = name, model, calib, held, train_data
        self.target, self.batch, self.args, self.log = target, batch, args, log
        self.cache, self.timings = {}, {}
        self._reference_plan, self._reference, self._reference_ms = reference, None, None

    @property
    def reference(self):
        if self._reference is None:
            self._reference = self._compile(self._reference_plan)
        return self._reference

    @property
    def reference_ms(self) -> float:
        """The reference's own latency, the scale every ratio is quoted in (median of several timings)."""
        if self._reference_ms is None:
            from hwq.lower.profile import measure_model

            self._reference_ms = measure_model(self.reference, None, self.batch,
                                               max(5, self.args.rounds * self.args.repeats))[0]
        return self._reference_ms

    def _compile(self, plan):
        from hwq.lower import compile_model
        from hwq.qat import quantize_ptq

        return compile_model(quantize_ptq(self.model, self.calib[:32], plan), self.target)

    def latency(self, plan, compiled=None) -> float:
        """``plan``'s latency in ms: its ratio to the reference plan, the two timed in alternation
        (``measure_ratio``), times the reference's latency. The host's speed drifts by 20-30 % over
        minutes; the ratio far less, so plans timed minutes apart compare on one scale. Measured once
        per plan (the latency does not depend on fine-tuning: ``compiled`` may be any build of it)."""
        key = plan.to_json()
        if key not in self.timings:
            from hwq.lower.profile import measure_ratio

            ratio, ms, ref_ms = measure_ratio(compiled or self._compile(plan), self.reference, None, self.batch,
                                              self.args.rounds, self.args.repeats)
            self.timings[key] = {"measured_ms": ratio * self.reference_ms, "ratio": ratio, "raw_ms": ms,
                                 "reference_raw_ms": ref_ms}
        return self.timings[key]["measured_ms"]

    def __call__(self, plan) -> dict:
        """Latency and accuracy of ``plan`` (fine-tuned where the model has labels)."""
        key = plan.to_json()
        if key not in self.cache:
            scored, compiled = self.score(plan)
            self.latency(plan, compiled)
            self.cache[key] = {**self.timings[key], **scored}
        return self.cache[key]

    def score(self, plan) -> tuple:
        """({"accuracy", "kl" (MobileNetV2), "seconds"}, the compiled fine-tuned model) of ``plan``."""
        from torch.utils.data import TensorDataset

        from hwq.lower import compile_model
        from hwq.qat import QATConfig, quantize_, quantize_ptq, train_constrained
        from hwq.qat.reference import dequantize_output, quantize_input

        t0 = time.time()
        if self.name == "mobilenetv2":
            graph = quantize_ptq(self.model, self.calib, plan)
        else:
            prepared = quantize_(self.model, plan, step="prepare", calibration=self.calib)
            qat = QATConfig(epochs=1, batch_size=128, lr=1e-4, gradient_mode="ste", dual_lr=0.0, seed=0)
            train_constrained(prepared, TensorDataset(*self.train_data), qat, progress=False, log=lambda s: None)
            graph = quantize_(prepared, step="convert")
        compiled = compile_model(graph, self.target)
        x, y, ref = self.held
        xi = quantize_input(graph, x).numpy().astype(graph.input.dtype)
        out = np.concatenate([compiled.run_int(xi[i:i + 250]) for i in range(0, len(xi), 250)])
        # the output as it comes (int8, int32 accumulators, or float32 logits when the head is fp32:
        # an integer cast would truncate those)
        logits = dequantize_output(graph, torch.from_numpy(out)).float()
        r = {"accuracy": 100.0 * float((logits.argmax(1) == y).float().mean())}
        if ref is not None:     # KL(float || integer) of the predicted class distributions, nats per image
            r["kl"] = float(torch.nn.functional.kl_div(logits.log_softmax(1), ref.log_softmax(1), log_target=True,
                                                       reduction="batchmean"))
        return {**r, "seconds": time.time() - t0}, compiled


def rescore(name, entry, args, log) -> dict:
    """Score again, in place, the accuracy of ``entry``'s plans that end in an fp32 head (a float32
    output): the study's first version cast that output to integers, which truncated the logits.
    Their timings stand (the output's dtype does not change the build); the summary is recomputed."""
    from hwq.alloc_job import AllocateConfig, model_and_data
    from hwq.plan import BitPlan
    from hwq.qat import quantize_ptq

    model, calib, _, qat_data = model_and_data(AllocateConfig(model=name, images=args.images), log)
    train_data = (qat_data[0][:args.finetune_images], qat_data[1][:args.finetune_images])
    ev = Evaluator(name, model, calib, eval_set(name, model, args), train_data, entry["target"], entry["batch"],
                   args, log, None)
    done = {}
    for row in [*entry["uniform"].values(), *entry["plans"]]:
        plan = BitPlan.from_json(json.dumps(row["plan"]))
        key = plan.to_json()
        if key not in done:
            float_head = quantize_ptq(model, calib[:32], plan).output_info.is_float
            done[key] = ev.score(plan)[0] if float_head else None
            if done[key] is not None:
                log(f"  rescored {row.get('method', 'uniform')}: {row['accuracy']:.2f}% -> {done[key]['accuracy']:.2f}%")
        if done[key] is not None:
            row.update(done[key], rescored=True)
    methods = entry["methods"] + (["budget-dual"] if any(r["method"] == "budget-dual" for r in entry["plans"]) else [])
    entry.update(summarize(entry["plans"], entry["uniform"], methods))
    return entry


def eval_set(name, model, args):
    """(images, labels, float logits or None) to score plans on, disjoint from the held-out images
    of the sensitivities: Fashion-MNIST's test images the sensitivities did not see (up to
    ``--eval-images``); for MobileNetV2, ``--eval-images`` natural crops of another seed, labelled
    by the float model's top-1, with its logits for the KL divergence."""
    if name == "mobilenetv2":
        from hwq.data.natural_images import natural_crops

        x = torch.from_numpy(natural_crops(args.eval_images, seed=1))
        with torch.no_grad():
            ref = torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)]).float()
        return x, ref.argmax(1), ref
    from hwq.data import load_fashion_mnist
    from hwq.models.train import to_float_input

    _, rest = load_fashion_mnist("test").split(args.images, seed=3)     # the held-out set is the first part
    rest = rest.subset(args.eval_images, seed=4)
    return to_float_input(rest.images), torch.from_numpy(rest.labels).long(), None


def study(name, args, log) -> dict:
    from hwq.alloc.build import build_allocation
    from hwq.alloc.sensitivity import layer_sensitivities
    from hwq.alloc.solve import solve_exact, solve_greedy
    from hwq.errors import InfeasibleBudgetError
    from hwq.alloc_job import AllocateConfig, duals_qat, model_and_data
    from hwq.cost import CostModel, Workload, layer_options
    from hwq.cost.workload import layer_nodes
    from hwq.plan import BitPlan, LayerSpec
    from hwq.profile_job import ProfileConfig, run_profile
    from hwq.qat import quantize_, train_constrained

    t_start = time.time()
    table = run_profile(ProfileConfig(models=(name,), target=args.target, batches=(args.batch,),
                                      time_budget_s=1200, progress=False), log=lambda s: None)
    cost = CostModel(args.target, table)
    target = cost.target
    model, calib, held, qat_data = model_and_data(AllocateConfig(model=name, images=args.images), log)
    prepared = quantize_(model, step="prepare", calibration=calib)
    graph = quantize_(prepared, step="convert")
    options = {n.name: [o.spec for o in layer_options(Workload.of(n, graph.tensors[n.input].shape), target,
                                                      n.requant is not None)] for n in layer_nodes(graph)}
    sens, seconds = {}, {}
    methods = ["measured", "hessian", "duals"]
    plan_methods = methods + (["budget-dual"] if name != "mobilenetv2" else [])
    stored = _stored_sensitivities(name, args)
    for m in methods:
        t = time.time()
        if m in stored:             # --reuse-sensitivities: as computed by an earlier run, same settings
            sens[m], seconds[m] = stored[m]
            log(f"  {m} sensitivities: reused ({seconds[m]:.0f} s when computed)")
            continue
        report, model_m = None, prepared
        if m == "duals":
            model_m = quantize_(model, BitPlan(default=LayerSpec(4, 4)), step="prepare", calibration=calib)
            from torch.utils.data import TensorDataset
            report = train_constrained(model_m, TensorDataset(*qat_data), duals_qat(len(qat_data[1])), progress=False,
                                       log=lambda s: None)
        n_sens = args.sens_images or args.images
        sens[m] = layer_sensitivities(model_m, options, held, m, report=report, images=n_sens,
                                      batch_size=min(250, n_sens), samples=16)
        seconds[m] = time.time() - t
        log(f"  {m} sensitivities: {seconds[m]:.0f} s")
    allocs = {m: build_allocation(graph, cost, s.losses, args.batch) for m, s in sens.items()}
    ref = allocs["measured"]
    p = ref.problem
    train_data = (qat_data[0][:args.finetune_images], qat_data[1][:args.finetune_images])
    evaluate = Evaluator(name, model, calib, eval_set(name, model, args), train_data, args.target, args.batch,
                         args, log, ref.plan(uniform_plan(ref, "w8a8")))
    # the solver works in the cost model's ms; a measured ms is worth to_model of them (uniform
    # W8A8's prediction over its measurement): a budget in measured ms is then an "x" budget of
    # uniform W8A8, and the solver's first plan is already placed on this machine's speed
    evaluate.to_model = p.latency(uniform_plan(ref, "w8a8")) / evaluate.reference_ms

    uniform = {}
    for o in OPTIONS:
        c = uniform_plan(ref, o)
        uniform[o] = {"choice": c, "predicted_ms": p.latency(c), "plan": json.loads(ref.plan(c).to_json()),
                      **evaluate(ref.plan(c))}
        log(f"  uniform {o}: predicted {uniform[o]['predicted_ms']:.3f} ms, measured {uniform[o]['measured_ms']:.3f} ms, "
            f"accuracy {uniform[o]['accuracy']:.2f}%")
    # budgets in measured milliseconds (on the reference's scale), from the fastest uniform plan as
    # measured here to the slowest; every allocated plan is verified against them
    lo = min(u["measured_ms"] for u in uniform.values())
    hi = max(u["measured_ms"] for u in uniform.values())
    budgets = [lo + (hi - lo) * (i + 1) / (args.budgets + 1) for i in range(args.budgets)]
    rows, solver = [], []
    for b in budgets:
        for m, alloc in allocs.items():
            try:
                sol = solve_exact(alloc.problem, b * evaluate.to_model)
                g = solve_greedy(alloc.problem, b * evaluate.to_model)
                solver.append({"budget_ms": b, "method": m, "exact_loss": sol.loss, "greedy_loss": g.loss,
                               "exact_s": sol.seconds, "greedy_s": g.seconds})
            except InfeasibleBudgetError:   # below the fastest plan as predicted: verify measures that plan
                pass
            rows.append(_row(b, m, 0, alloc, *_verified(alloc, b, evaluate, args), evaluate, log))
        if name != "mobilenetv2":
            rows.append(_budget_dual(model, calib, train_data, ref, b, evaluate, args, log))
        for seed in range(args.random):
            rng = np.random.default_rng(seed)
            noise = {layer: dict(zip([o for o in sens["measured"].values[layer]],
                                     rng.random(len(sens["measured"].values[layer])))) for layer in sens["measured"].values}
            ralloc = build_allocation(graph, cost, lambda layer, opts: [noise[layer][o] for o in opts], args.batch)
            rows.append(_row(b, "random", seed, ralloc, *_verified(ralloc, b, evaluate, args), evaluate, log))
    return {"target": target.name, "batch": args.batch, "table": display_path(table.path), "methods": methods,
            "latency": {"reference": "uniform w8a8", "reference_ms": evaluate.reference_ms,
                        "model_ms_per_measured_ms": evaluate.to_model, "rounds": args.rounds, "repeats": args.repeats,
                        "how": "measured_ms = ratio to the reference, timed in alternation, x reference_ms"},
            "sensitivity_seconds": seconds, "sensitivities_reused": sorted(stored), "uniform": uniform,
            "budgets": budgets, "plans": rows, "solver": solver,
            "sensitivities": {m: json.loads(s.to_json()) for m, s in sens.items()},
            "rank_agreement": rank_agreement({m: json.loads(s.to_json()) for m, s in sens.items()}),
            "seconds": time.time() - t_start, **summarize(rows, uniform, plan_methods)}


def _stored_sensitivities(name, args) -> dict:
    """``{method: (Sensitivities, seconds)}`` from ``--out`` for the methods ``--reuse-sensitivities``
    names (else empty): sensitivities do not depend on timing, so a rerun that changes only how plans
    are timed, or one method, need not recompute the others (MobileNetV2's measured: about 18 min)."""
    from hwq.alloc.sensitivities import Sensitivities

    wanted = [m for m in args.reuse_sensitivities.split(",") if m]
    if not wanted:
        return {}
    out = Path(args.out)
    entry = json.loads(out.read_text())["models"].get(name) if out.is_file() else None
    if entry is None or any(m not in entry["sensitivities"] for m in wanted):
        raise SystemExit(f"--reuse-sensitivities {args.reuse_sensitivities}: {display_path(out)} has no such "
                         f"sensitivities for {name!r}")
    return {m: (Sensitivities.from_json(json.dumps(entry["sensitivities"][m])), entry["sensitivity_seconds"][m])
            for m in wanted}


def _verified(alloc, budget, evaluate, args):
    """The exact plan at ``budget`` (measured ms), re-solved at a tighter budget while it measures
    over it (``hwq allocate --verify``); returns the Solution and the verify rounds in the cost
    model's ms (None unverified)."""
    from hwq.alloc.solve import solve_exact
    from hwq.alloc.verify import meet_measured_budget

    scale = evaluate.to_model
    if not args.verify:
        return solve_exact(alloc.problem, budget * scale), None
    v = meet_measured_budget(lambda b: solve_exact(alloc.problem, b),
                             lambda s: evaluate.latency(alloc.plan(s.choice)) * scale,
                             budget * scale, tolerance=0.0, max_rounds=5)
    return v.solution, v.rounds


def _row(budget, method, seed, alloc, sol, rounds, evaluate, log) -> dict:
    plan = alloc.plan(sol.choice)
    r = {"budget_ms": budget, "budget_x": budget / evaluate.reference_ms, "method": method, "seed": seed,
         "predicted_ms": sol.latency_ms, "loss": sol.loss,
         "plan": json.loads(plan.to_json()), "verify_rounds": rounds, **evaluate(plan)}
    log(f"  budget {budget:8.3f} ms {method:9s} {seed}: predicted {sol.latency_ms:8.3f}, measured {r['measured_ms']:8.3f} ms "
        f"({r['measured_ms'] / budget - 1:+6.1%} of budget), accuracy {r['accuracy']:.2f}%")
    return r


# the budget search's schedule per model: Fashion-MNIST, one epoch of 2000 images in batches of 64
# (31 steps); MobileNetV2's 256 crops in batches of 32 for two epochs (16 steps, mu updated every 4)
SEARCH = {"mobilenetv2": {"epochs": 2, "batch_size": 32, "dual_period": 4}}


def _budget_dual(model, calib, train_data, alloc, budget, evaluate, args, log) -> dict:
    """The plan the budget-as-dual QAT run settles on, its rounding verified on this machine like
    every allocated plan (then the same fine-tune as every plan; MobileNetV2's plans are scored
    post-training, like its other plans: the search chooses the plan, the float weights run it)."""
    from torch.utils.data import TensorDataset

    from hwq.alloc.budget_qat import BudgetQATConfig, train_with_budget
    from hwq.alloc.problem import Solution
    from hwq.qat import QATConfig, quantize_

    t0 = time.time()
    prepared = quantize_(model, step="prepare", calibration=calib)
    qat = QATConfig(epochs=1, batch_size=128, lr=1e-4, gradient_mode="ste", dual_lr=0.0, seed=0)
    scale = evaluate.to_model
    res = train_with_budget(prepared, TensorDataset(*train_data), alloc, budget * scale, qat,
                            BudgetQATConfig(finetune_epochs=1, **SEARCH.get(evaluate.name, {})), log=lambda s: None,
                            measure=(lambda plan: evaluate.latency(plan) * scale) if args.verify else None,
                            tolerance=0.0)
    search_s = time.time() - t0
    sol = Solution.of(alloc.problem, res.choice, "budget-dual", 0.0)
    r = _row(budget, "budget-dual", 0, alloc, sol, res.verify_rounds, evaluate, log)
    r.update({"mu": res.mu, "loss_per_ms": res.loss_per_ms, "repaired": res.repaired, "expected_ms": res.expected_ms,
              "mu_history": list(res.mu_history), "search_seconds": search_s})
    log(f"    mu* {res.mu:.4g} (history {', '.join(f'{m:.3g}' for m in res.mu_history)}), search {search_s:.0f} s")
    return r


def add_budget_dual(name, entry, args, log, save) -> dict:
    """Run the budget-as-dual search at each of ``entry``'s budgets and add its plans to ``entry``
    (replacing earlier ones), on the scale the entry's plans were timed on: its reference latency
    and model-ms per measured ms are kept, so every plan's ``measured_ms`` stays comparable.
    ``save(entry)`` is called after each budget."""
    from hwq.alloc.build import build_allocation
    from hwq.alloc.sensitivities import Sensitivities
    from hwq.alloc_job import AllocateConfig, model_and_data
    from hwq.cost import CostModel
    from hwq.qat import quantize_

    model, calib, _, qat_data = model_and_data(AllocateConfig(model=name, images=args.images), log)
    graph = quantize_(quantize_(model, step="prepare", calibration=calib), step="convert")
    cost = CostModel(entry["target"])
    sens = Sensitivities.from_json(json.dumps(entry["sensitivities"]["measured"]))
    alloc = build_allocation(graph, cost, sens.losses, entry["batch"])
    train_data = (qat_data[0][:args.finetune_images], qat_data[1][:args.finetune_images])
    evaluate = Evaluator(name, model, calib, eval_set(name, model, args), train_data, entry["target"], entry["batch"],
                         args, log, alloc.plan(uniform_plan(alloc, "w8a8")))
    evaluate._reference_ms = entry["latency"]["reference_ms"]
    evaluate.to_model = entry["latency"]["model_ms_per_measured_ms"]
    entry["plans"] = [q for q in entry["plans"] if q["method"] != "budget-dual"]
    for b in entry["budgets"]:
        entry["plans"].append(_budget_dual(model, calib, train_data, alloc, b, evaluate, args, log))
        done = sorted({q["budget_ms"] for q in entry["plans"] if q["method"] == "budget-dual"})
        # the summary covers the budgets the search has reached so far
        rows = [q for q in entry["plans"] if q["budget_ms"] in done]
        entry.update(summarize(rows, entry["uniform"], entry["methods"] + ["budget-dual"]),
                     budget_dual_added=True)
        save(entry)
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="rescnn")
    p.add_argument("--target", default="x86-avx2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--budgets", type=int, default=5)
    p.add_argument("--random", type=int, default=5)
    p.add_argument("--images", type=int, default=1000, help="held-out images (sensitivities and accuracy)")
    p.add_argument("--sens-images", type=int, default=0,
                   help="held-out images for the sensitivities (default: all of --images)")
    p.add_argument("--eval-images", type=int, default=9000,
                   help="images to score plans on (Fashion-MNIST: test images outside --images; MobileNetV2: crops)")
    p.add_argument("--finetune-images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=1, help="timings per side and round (each over >= 50 ms)")
    p.add_argument("--rounds", type=int, default=25, help="rounds of plan and reference, in alternation, per ratio")
    p.add_argument("--verify", type=int, default=1, help="1: re-solve plans measured over budget + 3 %% (hwq allocate --verify)")
    p.add_argument("--out", default=str(RESULTS / "alloc_study.json"))
    p.add_argument("--reuse-sensitivities", default="", metavar="METHODS",
                   help="e.g. 'measured,hessian': take these sensitivities from --out (an earlier run with the same "
                        "settings) instead of computing them again")
    p.add_argument("--add-budget-dual", action="store_true",
                   help="run only the budget-as-dual search at the budgets of --models' entries in --out and add its "
                        "plans there (timed on the entry's scale)")
    p.add_argument("--rescore", action="store_true",
                   help="score again the plans of --models in --out that end in an fp32 head (no timing)")
    args = p.parse_args(argv)
    from hwq.fileio import atomic_write_json
    from hwq.timing import environment

    log = lambda s: print(s, flush=True)  # noqa: E731
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.is_file() else {"models": {}}
    for name in args.models.split(","):
        log(f"{name}:")
        if args.rescore:
            result["models"][name] = rescore(name, result["models"][name], args, log)
        elif args.add_budget_dual:
            def save(entry, name=name):
                result["models"][name] = entry
                atomic_write_json(out_path, result)
            result["models"][name] = add_budget_dual(name, result["models"][name], args, log, save)
        else:
            result["models"][name] = {**study(name, args, log), "environment": environment()}
        atomic_write_json(out_path, result)
    for entry in result["models"].values():     # derived figures an earlier version did not store
        entry.setdefault("rank_agreement", rank_agreement(entry["sensitivities"]))
    atomic_write_json(out_path, result)
    print(render(result))
    plot(result, out_path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
