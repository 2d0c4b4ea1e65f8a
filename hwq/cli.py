"""The ``hwq`` command line (argparse lives here and nowhere else)."""

from __future__ import annotations

import argparse
import sys

from hwq.errors import HwqError


def _write_json(path: str, data: dict) -> None:
    from hwq.fileio import atomic_write_json

    atomic_write_json(path, data, indent=2)


def _cmd_targets(args) -> int:
    from hwq.target import list_targets

    rows = [(t.name, t.kind, t.description) for t in list_targets()]
    w = max(len(r[0]) for r in rows)
    for name, kind, desc in rows:
        print(f"{name:{w}s}  {kind:4s}  {desc}")
    return 0


def _cmd_demo(args) -> int:
    from hwq.demo import DemoConfig, format_table, run_demo

    config = DemoConfig(target=args.target, epochs=args.epochs, train_subset=args.train_subset,
                        calibration_images=args.calibration_images, data_dir=args.data_dir)
    results = run_demo(config)
    print()
    print(format_table(results))
    if args.json:
        _write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return 0


def _cmd_tune(args) -> int:
    import torch

    from hwq.lower.tune import tune_model
    from hwq.models import ResCNN
    from hwq.models.mobilenet_v2 import MobileNetV2
    from hwq.qat import quantize_ptq

    zoo = {"rescnn": (ResCNN, (1, 28, 28)), "mobilenetv2": (MobileNetV2, (3, 224, 224))}
    if args.model not in zoo:
        from hwq.errors import ConfigError, choices
        raise ConfigError(f"unknown model {args.model!r}; valid: {choices(zoo)}")
    cls, shape = zoo[args.model]
    torch.manual_seed(0)
    model = cls().eval()
    if args.model == "mobilenetv2":   # 50 untrained layers deep, activations vanish and scales degenerate
        from hwq.models.mobilenet_v2 import load_imagenet_weights
        load_imagenet_weights(model)
    # tiles depend on shapes only: a model calibrated on random data has the same kernels
    from hwq.plan import BitPlan, LayerSpec
    plan = BitPlan(default=LayerSpec(weight_bits=args.weight_bits, act_bits=args.act_bits))
    graph = quantize_ptq(model, torch.rand(8, *shape), plan)
    changed = tune_model(graph, args.target, time_budget_s=args.time_budget, retune=args.retune)
    for key, cfg in changed.items():
        tile = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("ms_batch16", "trials"))
        print(f"{key:60s} {tile:12s} {cfg['ms_batch16']:.3f} ms (batch 16)")
    print(f"{len(changed)} workload(s) tuned" if changed else "every workload was already tuned (--retune to redo)")
    return 0


def _cmd_train(args) -> int:
    from hwq.qat import QATConfig
    from hwq.qat_job import TrainJobConfig, run_train

    period = args.dual_period if args.dual_period == "epoch" else int(args.dual_period)
    qat = QATConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dual_lr=args.dual_lr, eps=args.eps,
                    eps_output=args.eps_output, gradient_mode=args.gradient, dual_period=period, seed=args.seed)
    config = TrainJobConfig(qat=qat, weight_bits=args.weight_bits, act_bits=args.act_bits, plan=args.plan,
                            range_mode=args.ranges, train_subset=args.train_subset, test_subset=args.test_subset,
                            width=args.width,
                            float_epochs=args.float_epochs, float_subset=args.float_subset, out_dir=args.out, resume=args.resume,
                            checkpoint_steps=args.checkpoint_steps,
                            artifact=args.artifact, target=args.target, data_dir=args.data_dir,
                            progress=not args.no_progress, budget=args.budget, latency_batch=args.latency_batch,
                            search_epochs=args.search_epochs, verify=args.verify)
    run_train(config)
    return 0


def _cmd_profile(args) -> int:
    from hwq.profile_job import ProfileConfig, run_profile

    rpc, key = args.rpc, None
    if args.tracker is not None:
        if args.rpc is not None:
            from hwq.errors import ConfigError
            raise ConfigError("give either --rpc HOST:PORT (a server) or --tracker HOST:PORT --key KEY, not both")
        rpc, key = args.tracker, args.key
        if key is None:
            from hwq.errors import ConfigError
            raise ConfigError("--tracker needs --key KEY (the device key the board registered with)")
    config = ProfileConfig(models=tuple(args.model), target=args.target, batches=tuple(args.batch),
                           time_budget_s=args.time_budget, rpc=rpc, key=key, repeats=args.repeats,
                           whole_models=not args.kernels_only, progress=not args.no_progress)
    run_profile(config)
    return 0


def _cmd_cost(args) -> int:
    from hwq.cost import CostModel
    from hwq.models.zoo import example_graph
    from hwq.plan import BitPlan

    plan = _read_plan(args.plan) if args.plan else BitPlan()
    model = CostModel(args.target)
    est = model.plan(example_graph(args.model, plan), plan, args.batch)
    print(est.table())
    if args.json:
        _write_json(args.json, {"model": args.model, "plan": args.plan, **est.to_json()})
        print(f"\nwrote {args.json}")
    return 0


def _read_plan(path: str):
    from hwq.plan import BitPlan

    return BitPlan.load(path)


def _allocate_config(args):
    from hwq.alloc_job import AllocateConfig

    ties = tuple(tuple(t.split(",")) for t in args.tie or ())
    return AllocateConfig(model=args.model, target=args.target, budget=args.budget, batch=args.batch,
                          sensitivity=args.sensitivity, max_weight_mb=args.max_weight_mb, ties=ties,
                          solver=getattr(args, "solver", "exact"), images=args.images,
                          out=getattr(args, "out", "hwq-out/plan.json"), json=args.json, data_dir=args.data_dir,
                          verify=getattr(args, "verify", False))


def _cmd_allocate(args) -> int:
    from hwq.alloc_job import run_allocate

    run_allocate(_allocate_config(args))
    return 0


def _cmd_pareto(args) -> int:
    from hwq.alloc_job import run_pareto

    run_pareto(_allocate_config(args), budgets=args.budgets)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwq", description="hardware-aware deployment compiler for integer accelerators")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("targets", help="list the target descriptions (hwq/targets/, or $HWQ_TARGETS_DIR)")
    t.set_defaults(func=_cmd_targets)
    d = sub.add_parser("demo", help="train (or load) the Fashion-MNIST CNN, quantize to int8, compile, measure")
    d.add_argument("--target", default="x86-host", help="target name (see 'hwq targets'); default x86-host")
    d.add_argument("--epochs", type=int, default=3, help="float training epochs (cached per setting)")
    d.add_argument("--train-subset", type=int, default=0, help="train on this many images (0 = all 60000)")
    d.add_argument("--calibration-images", type=int, default=1024)
    d.add_argument("--data-dir", default=None, help="directory with the Fashion-MNIST idx .gz files")
    d.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    d.set_defaults(func=_cmd_demo)
    u = sub.add_parser("tune", help="search kernel tiles for a model on this machine; stored per target")
    u.add_argument("model", nargs="?", default="rescnn", help="zoo model (default rescnn)")
    u.add_argument("--target", default="x86-host")
    u.add_argument("--time-budget", type=float, default=20.0, help="seconds per workload (default 20)")
    u.add_argument("--retune", action="store_true", help="search again workloads already tuned")
    u.add_argument("--weight-bits", type=int, default=8,
                   help="quantize the model's weights to this many bits first (default 8; 7 selects the "
                        "vpmaddubsw kernels on AVX2)")
    u.add_argument("--act-bits", type=int, default=8, help="activation bits (default 8)")
    u.set_defaults(func=_cmd_tune)
    r = sub.add_parser("train", help="constrained QAT of the Fashion-MNIST CNN: per-layer sensitivities, integer program",
                       description="Quantization-aware training under per-layer error constraints (primal-dual); "
                                   "runs under torchrun (gloo) too. Writes OUT/checkpoint.pt, OUT/sensitivity.json, "
                                   "OUT/summary.json (OUT/plan.json with --budget, OUT/artifact-TARGET with --artifact).")
    r.add_argument("--weight-bits", type=int, default=4, help="weight bits of every layer (default 4)")
    r.add_argument("--act-bits", type=int, default=4, help="activation bits (default 4)")
    r.add_argument("--plan", default=None, metavar="JSON", help="a BitPlan JSON file (overrides the two above)")
    r.add_argument("--epochs", type=int, default=1, help="QAT epochs over the training subset (default 1)")
    r.add_argument("--train-subset", type=int, default=10000, help="QAT on this many training images (0 = all)")
    r.add_argument("--test-subset", type=int, default=0, help="evaluate on this many test images (0 = all 10000)")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-3, help="primal learning rate (Adam, cosine decay)")
    r.add_argument("--dual-lr", type=float, default=10.0, help="dual learning rate; 0 = unconstrained QAT")
    r.add_argument("--eps", type=float, default=0.02, help="per-layer bound on the relative output MSE")
    r.add_argument("--eps-output", type=float, default=None, help="bound on CE(softmax(out_fp), out_q), out_fp from a frozen copy of the float "
                        "model; at least its entropy (0.28 for the demo CNN: 0.3 works); off by default")
    r.add_argument("--gradient", default="ste", choices=["fp", "ste"],
                   help="'ste' (default): straight-through; 'fp': the paper's float-path gradients")
    r.add_argument("--dual-period", default="5", help="steps between dual updates, or 'epoch' (default 5)")
    r.add_argument("--ranges", default="learned", choices=["calibrated", "learned"], help="quantizer scales (default learned)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--width", type=int, default=32, help="ResCNN stem width (default 32, the demo's model)")
    r.add_argument("--float-epochs", type=int, default=3, help="epochs of the cached float model (default 3, the demo's)")
    r.add_argument("--float-subset", type=int, default=0, help="images of the float model's training (0 = all, the demo's)")
    r.add_argument("--out", default="hwq-out/train", help="output directory (default hwq-out/train)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (written every epoch "
                   "and every --checkpoint-steps steps): the result equals an uninterrupted run's")
    r.add_argument("--checkpoint-steps", type=int, default=50, help="steps between checkpoints within an epoch "
                   "(default 50; 0 = at epoch ends only)")
    r.add_argument("--budget", default=None, metavar="2.5ms|0.8x",
                   help="search the per-layer plan by QAT with this latency budget on --target as a dual constraint "
                        "('0.8x' = 0.8 x uniform W8A8), then fine-tune it (--epochs); writes OUT/plan.json and the "
                        "budget's price mu* (--weight-bits / --act-bits are then unused)")
    r.add_argument("--latency-batch", type=int, default=1, help="batch size the budget is for (default 1)")
    r.add_argument("--search-epochs", type=int, default=1, help="epochs of the budget search (default 1)")
    r.add_argument("--verify", action="store_true", help="with --budget: compile and time the rounded plan here; "
                   "while it is over budget + 3 %%, round again tighter")
    r.add_argument("--artifact", action="store_true", help="also compile for --target and save the artifact")
    r.add_argument("--target", default="x86-host")
    r.add_argument("--data-dir", default=None, help="directory with the Fashion-MNIST idx .gz files")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_train)
    f = sub.add_parser("profile", help="measure the cost model's kernels and models on the target (here or over RPC)",
                       description="Time every layer shape x kernel the models can run on the target, with the real "
                                   "lowering and tuned tiles, plus whole models; writes the measured table to "
                                   "$HWQ_CACHE/measured/TARGET/. Resumes an interrupted run.")
    f.add_argument("model", nargs="+", help="zoo models (rescnn, resnet20, mobilenetv2)")
    f.add_argument("--target", default="x86-host")
    f.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    f.add_argument("--time-budget", type=float, default=900.0, help="seconds (default 900); what was measured is kept")
    f.add_argument("--rpc", default=None, metavar="HOST:PORT", help="a TVM RPC server on the board")
    f.add_argument("--tracker", default=None, metavar="HOST:PORT", help="a TVM RPC tracker (with --key)")
    f.add_argument("--key", default=None, help="the board's key at the tracker")
    f.add_argument("--repeats", type=int, default=7, help="timed repeats per workload (default 7; median kept)")
    f.add_argument("--kernels-only", action="store_true", help="skip the whole-model timings (no glue fit)")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_cmd_profile)
    c = sub.add_parser("cost", help="predicted latency of a model under a plan on a target, per layer",
                       description="Per layer: ops, bytes, option, kernel, predicted ms, compute/memory bound and "
                                   "the source (measured, calibrated, roofline); then the whole-model total.")
    c.add_argument("model", help="zoo model (rescnn, resnet20, mobilenetv2)")
    c.add_argument("--target", default="x86-host")
    c.add_argument("--plan", default=None, metavar="PLAN.json", help="a BitPlan JSON file (default: W8A8 everywhere)")
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON")
    c.set_defaults(func=_cmd_cost)
    for name, helptext in (("allocate", "the most accurate per-layer plan that meets a latency budget on a target"),
                           ("pareto", "sweep latency budgets: the accuracy / latency front of a model on a target")):
        a = sub.add_parser(name, help=helptext)
        a.add_argument("model", nargs="?", default="rescnn", help="zoo model (rescnn, resnet20, mobilenetv2)")
        a.add_argument("--target", default="x86-host")
        a.add_argument("--batch", type=int, default=1)
        a.add_argument("--sensitivity", default="measured", help="duals | hessian | measured (default measured)")
        a.add_argument("--max-weight-mb", type=float, default=None, help="also bound the stored weights (MB)")
        a.add_argument("--tie", action="append", metavar="L1,L2,...", help="layers that must share one option")
        a.add_argument("--images", type=int, default=1000, help="held-out images for the sensitivities")
        a.add_argument("--json", default=None, metavar="PATH", help="also write a JSON report")
        a.add_argument("--data-dir", default=None, help="directory with the Fashion-MNIST idx .gz files")
        if name == "allocate":
            a.add_argument("--budget", default="1x", help="'2.5ms', or '0.8x' = 0.8 x uniform W8A8 on the target (default 1x: no slower than uniform W8A8)")
            a.add_argument("--solver", default="exact", help="exact (milp) or greedy")
            a.add_argument("--out", default="hwq-out/plan.json", help="the BitPlan JSON to write")
            a.add_argument("--verify", action="store_true",
                           help="compile and time the plan here; while it is over budget + 3 %%, re-solve tighter")
            a.set_defaults(func=_cmd_allocate)
        else:
            a.add_argument("--budgets", type=int, default=20, help="how many budgets (default 20)")
            a.set_defaults(func=_cmd_pareto, budget="1x")
    return p


def main(argv=None) -> int:
    import warnings

    # torch.export's pytree spec emits a FutureWarning on every export: noise for a CLI user
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HwqError as e:
        print(f"hwq: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
