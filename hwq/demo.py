"""The main job on the defaults: Fashion-MNIST -> float training -> int8 PTQ -> TVM build -> measure.

Prints a table of accuracy and latency and returns the same numbers as a dict (``--json`` writes it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from hwq.data import load_fashion_mnist
from hwq.errors import ConfigError
from hwq.memory import PeakMemory
from hwq.models import ResCNN, TrainConfig, evaluate, load_or_train
from hwq.models.train import to_float_input
from hwq.timing import environment, median_ms


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``hwq demo``."""

    target: str = "x86-host"
    epochs: int = 3
    train_subset: int = 0
    calibration_images: int = 1024
    batch_sizes: tuple = (1, 16)
    data_dir: str | None = None

    def __post_init__(self):
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be >= 1, got {self.calibration_images!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch_sizes must be positive ints, got {self.batch_sizes!r}")


def run_demo(config: DemoConfig = DemoConfig(), log=print) -> dict:
    """Run the whole pipeline on the host and return the results (see ``format_table``)."""
    import tvm  # noqa: F401  (imported here so `environment()` records its version)

    from hwq.lower import compile_model
    from hwq.plan import BitPlan, LayerSpec
    from hwq.qat import quantize_ptq, run_reference
    from hwq.qat.reference import dequantize_output, quantize_input

    from hwq.target import load_target

    target = load_target(config.target)       # a typo fails here, before minutes of training
    torch.manual_seed(0)
    log("[1/5] data: Fashion-MNIST")
    train, test = load_fashion_mnist("train", config.data_dir), load_fashion_mnist("test", config.data_dir)
    log(f"      train {len(train)}, test {len(test)} images")
    log("[2/5] float32 model: ResCNN")
    model, cached = load_or_train(ResCNN(), train, TrainConfig(epochs=config.epochs, train_subset=config.train_subset),
                                  log=lambda s: log("     " + s))
    log(f"      {'loaded from cache' if cached else 'trained and cached'}")
    fp32_acc = evaluate(model, test)

    log(f"[3/5] int8 post-training quantization ({config.calibration_images} calibration images)")
    calib = to_float_input(train.subset(config.calibration_images, seed=1).images)
    with PeakMemory() as calibration_memory:
        graph = quantize_ptq(model, calib)
    log("      " + graph.summary().replace("\n", "\n      "))

    x_test = to_float_input(test.images)
    # torch is timed before TVM runs anything in this process: TVM's thread pool pins and spins
    # its threads after a call, which halves torch's speed measured afterwards
    latency = {}
    for bs in config.batch_sizes:
        x = x_test[:bs]
        with torch.no_grad():
            latency.setdefault("torch fp32 (eager)", {})[bs] = median_ms(lambda: model(x))

    log(f"[4/5] compile for {config.target!r} with TVM")
    with PeakMemory() as compile_memory:
        qmodel = compile_model(graph, target)
    x_int = quantize_input(graph, x_test)
    xin = x_int.numpy().astype(graph.input.dtype)
    tvm_int = np.concatenate([qmodel.run_int(xin[i:i + 500]) for i in range(0, len(xin), 500)])
    ref = run_reference(graph, x_int).numpy()
    exact = int(np.all(ref == tvm_int, axis=1).sum())
    # predictions from the logits, not the raw integers: an int32 output holds the last layer's
    # accumulators, whose scales s_x * s_w[c] differ per class, so their argmax is another class
    preds = dequantize_output(graph, torch.from_numpy(tvm_int)).argmax(1).numpy()   # float32 if the head is fp32
    int8_acc = 100.0 * float((preds == test.labels).mean())
    with torch.no_grad():
        fp32_preds = np.concatenate([model(x_test[i:i + 500]).argmax(1).numpy() for i in range(0, len(x_test), 500)])
    agree = 100.0 * float((fp32_preds == preds).mean())

    log("[5/5] latency (median ms)")
    # the float baseline on the same compiler: every layer at the fp32 option, hwq's FMA kernels
    # (TVM's own untuned fp32 build of this model was 20-40x slower than torch)
    fp32_plan = BitPlan(layers={n.name: LayerSpec.parse("fp32") for n in graph.nodes if n.op in ("conv2d", "dense")})
    f32 = compile_model(quantize_ptq(model, calib[:64], fp32_plan), target)
    for bs in config.batch_sizes:
        xn = x_test[:bs].numpy()
        latency.setdefault("hwq fp32 (FMA kernels)", {})[bs] = median_ms(lambda: f32(xn))
        latency.setdefault("TVM int8 (hwq)", {})[bs] = median_ms(lambda: qmodel(xn))
    return {
        "config": asdict(config), "environment": environment(),
        "model": {"name": "ResCNN", "macs_per_image": graph.macs(), "from_cache": cached},
        "accuracy": {"fp32_torch": fp32_acc, "int8_tvm": int8_acc, "delta_points": int8_acc - fp32_acc,
                     "int8_top1_agreement_with_fp32": agree},
        "bit_exact": {"images": len(test), "identical_int_logits": exact},
        "peak_memory": {"calibration": calibration_memory.as_dict(), "compile": compile_memory.as_dict()},
        "latency_ms": {engine: {str(bs): v for bs, v in d.items()} for engine, d in latency.items()},
    }


def format_table(r: dict) -> str:
    """The demo's results as a plain-text table."""
    acc, bx = r["accuracy"], r["bit_exact"]
    bss = list(next(iter(r["latency_ms"].values())).keys())
    lines = [f"ResCNN on Fashion-MNIST ({r['model']['macs_per_image'] / 1e6:.1f} M MACs/image), target {r['config']['target']}",
             "", f"{'accuracy (test set, 10k)':34s} {'top-1 %':>8s}",
             f"{'fp32 (torch)':34s} {acc['fp32_torch']:8.2f}",
             f"{'int8 (TVM, integer arithmetic)':34s} {acc['int8_tvm']:8.2f}   ({acc['delta_points']:+.2f} points)",
             f"int8 top-1 agreement with fp32: {acc['int8_top1_agreement_with_fp32']:.2f} %; "
             f"TVM == torch integer reference: {bx['identical_int_logits']}/{bx['images']} images bit-exact",
             "", f"{'latency, median ms':34s}" + "".join(f"{'batch ' + b:>10s}" for b in bss)]
    for engine, d in r["latency_ms"].items():
        lines.append(f"{engine:34s}" + "".join(f"{d[b]:10.3f}" for b in bss))
    base = r["latency_ms"]["torch fp32 (eager)"]
    lines.append(f"{'speedup int8 vs torch fp32':34s}" + "".join(
        f"{base[b] / r['latency_ms']['TVM int8 (hwq)'][b]:9.2f}x" for b in bss))
    f32 = r["latency_ms"].get("hwq fp32 (FMA kernels)")
    if f32 is not None:
        lines.append(f"{'speedup int8 vs hwq fp32':34s}" + "".join(
            f"{f32[b] / r['latency_ms']['TVM int8 (hwq)'][b]:9.2f}x" for b in bss))
    mem = r["peak_memory"]
    lines += ["", f"peak resident memory: calibration {mem['calibration']['peak_rss_mib']:.0f} MiB, "
                  f"compile {mem['compile']['peak_rss_mib']:.0f} MiB (since {mem['compile']['since']})"]
    return "\n".join(lines)
