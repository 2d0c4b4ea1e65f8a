"""Speed of hwq int8 against what users would pick instead, on this machine.

Engines (each timed in its own process: TVM's thread pool keeps spinning after a call and would
steal the cores from whatever runs next in the same process):
  torch-fp32-eager, torch-fp32-script (frozen TorchScript + optimize_for_inference),
  ort-fp32, ort-int8 (onnxruntime static QDQ, per-channel, uint8 activations / int8 weights,
  its own MinMax calibration on the same images hwq calibrates on), tvm-fp32 (TVM's torch
  frontend, default schedules), hwq-int8, and hwq-w7a8: 7-bit weights (``LayerSpec(weight_bits=7)``),
  on which AVX2's ``vpmaddubsw`` cannot saturate (the instruction onnxruntime uses for every
  layer; hwq uses it only where it is exact, so it is a precision choice, shown as its own row),
  and hwq-w4a8: 4-bit weights stored two per byte and unpacked in the kernels (post-training
  quantized like the others: its agreement shows what 4 bits cost without QAT).
For each engine: median latency at batch 1 and 16, top-1 agreement with torch fp32 on test
images, and for hwq the per-layer kernel GOP/s against the target's int8 peak and the peak
resident memory of calibration and of compile.

The machine this runs on may be shared: ``--rounds R`` (default 3) runs every engine but
tvm-fp32 (minutes per round) R times, interleaved (a round runs each engine once, in a new
process), and reports each engine's median over the rounds; the JSON keeps every round.

    .venv/bin/python benchmarks/speedup.py            # table + benchmarks/results/speedup.json (+ .png)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ENGINES = ["torch-fp32-eager", "torch-fp32-script", "ort-fp32", "ort-int8", "tvm-fp32", "hwq-fp32", "hwq-int8",
           "hwq-w7a8", "hwq-w4a8"]
HWQ_WEIGHT_BITS = {"hwq-int8": 8, "hwq-w7a8": 7, "hwq-w4a8": 4}
HWQ_ENGINES = tuple(HWQ_WEIGHT_BITS)
ONE_ROUND = ("tvm-fp32",)   # minutes per run at batch 16 and far behind: timed once
BATCHES = (1, 16)
MODELS = ("rescnn", "mobilenetv2")
AGREE_IMAGES = {"rescnn": 2000, "mobilenetv2": 300}
CALIB_IMAGES = {"rescnn": 1024, "mobilenetv2": 256}


def _data(model_name):
    """(calibration inputs, agreement inputs, labels or None): Fashion-MNIST, or natural crops."""
    import torch

    if model_name == "mobilenetv2":
        from hwq.data.natural_images import natural_crops

        calib = torch.from_numpy(natural_crops(CALIB_IMAGES[model_name], seed=1))
        return calib, torch.from_numpy(natural_crops(AGREE_IMAGES[model_name], seed=2)), None
    from hwq.data import load_fashion_mnist
    from hwq.models.train import to_float_input

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    calib = to_float_input(train.subset(CALIB_IMAGES[model_name], seed=1).images)
    n = AGREE_IMAGES[model_name]
    return calib, to_float_input(test.images[:n]), test.labels[:n]


def _model(model_name):
    if model_name == "mobilenetv2":
        from hwq.models.mobilenet_v2 import MobileNetV2, load_imagenet_weights

        return load_imagenet_weights(MobileNetV2())
    if model_name != "rescnn":
        raise SystemExit(f"unknown model {model_name!r}; valid: {MODELS}")
    from hwq.data import load_fashion_mnist
    from hwq.demo import DemoConfig
    from hwq.models import ResCNN, TrainConfig, load_or_train

    cfg = DemoConfig()
    model, _ = load_or_train(ResCNN(), load_fashion_mnist("train"), TrainConfig(epochs=cfg.epochs))
    return model.eval()


def _onnx(model, path, example):
    import torch

    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)


def _build(engine, model, calib, workdir):
    """Return ``run(x: torch.Tensor) -> np.ndarray`` for one engine."""
    import torch

    if engine == "torch-fp32-eager":
        def run(x):
            with torch.no_grad():
                return model(x).numpy()
        return run, {}
    if engine == "torch-fp32-script":
        with torch.no_grad():
            sm = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, calib[:1]).eval()))

        def run(x):
            with torch.no_grad():
                return sm(x).numpy()
        return run, {}
    if engine in ("ort-fp32", "ort-int8"):
        import onnxruntime as ort

        fp32 = Path(workdir) / "model.onnx"
        _onnx(model, fp32, calib[:1])
        path = fp32
        if engine == "ort-int8":
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter([{"x": calib[i:i + 64].numpy()} for i in range(0, len(calib), 64)])

                def get_next(self):
                    return next(self.it, None)

            pre = Path(workdir) / "model.pre.onnx"
            quant_pre_process(str(fp32), str(pre))
            path = Path(workdir) / "model.int8.onnx"
            quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return (lambda x: sess.run(None, {"x": x.numpy()})[0]), {}
    if engine == "tvm-fp32":
        from hwq.lower import compile_float

        built = {}

        def run(x):
            b = x.shape[0]
            if b not in built:   # the float build has static shapes: one build per batch size
                built[b] = compile_float(model, x, "x86-host")
            return built[b](x.numpy())
        return run, {}
    if engine == "hwq-fp32":
        # every conv / linear in float32 on hwq's hand fp32 kernels (the same compiler, plan "fp32")
        from hwq.lower import compile_model
        from hwq.plan import BitPlan, LayerSpec
        from hwq.qat import quantize_ptq
        from hwq.qat.exported import export_model
        from hwq.qat.groups import layer_names

        names = layer_names(export_model(model, calib[:1]).graph)
        graph = quantize_ptq(model, calib[:32], BitPlan(layers={n: LayerSpec.parse("fp32") for n in names}))
        cm = compile_model(graph, "x86-host")
        return (lambda x: cm(x.numpy())), {"input": graph.input.dtype}
    if engine in HWQ_ENGINES:
        from hwq.lower import compile_model
        from hwq.plan import BitPlan, LayerSpec
        from hwq.qat import quantize_ptq

        from hwq.memory import PeakMemory

        plan = BitPlan(default=LayerSpec(weight_bits=HWQ_WEIGHT_BITS[engine]))
        with PeakMemory() as calibration:
            graph = quantize_ptq(model, calib, plan)
        with PeakMemory() as build:
            cm = compile_model(graph, "x86-host")
        extra = {"peak_memory": {"calibration": calibration.as_dict(), "compile": build.as_dict()}}
        if not os.environ.get("HWQ_BENCH_NO_LAYERS"):
            extra["layers"] = _layer_rates(graph)
        return (lambda x: cm(x.numpy())), extra
    raise SystemExit(f"unknown engine {engine!r}; valid: {ENGINES}")


def _layer_rates(graph):
    """Each conv / dense kernel timed alone at batch 16: GOP/s and fraction of the int8 peak."""
    import tvm

    from hwq.lower.kernels import select_kernel
    from hwq.lower.tvm_target import resolve_features, to_tvm_target
    from hwq.target import load_target
    from hwq.timing import median_ms

    target = resolve_features(load_target("x86-host"))   # the kernels compile_model builds on this CPU
    peak_target = _describing_target()
    peak = peak_target.peak_ops_per_s("int8")
    rows = []
    rng = np.random.default_rng(0)
    for node in graph.nodes:
        if node.op not in ("conv2d", "dense"):
            continue
        k = select_kernel(node, graph.tensors[node.input], graph.tensors[node.output], target)
        if k is None:
            rows.append({"layer": node.name, "kernel": "generic relax"})
            continue
        lib = tvm.compile(tvm.IRModule({"main": k.func.with_attr("global_symbol", "main")}), to_tvm_target(target))
        b = 16
        in_dtype = k.in_dtype
        x = rng.integers(-128 if in_dtype == "int8" else 0, 128 if in_dtype == "int8" else 256, (b, *k.in_shape)).astype(in_dtype)
        out = tvm.runtime.empty((b, *k.out_shape), graph.tensors[node.output].dtype)
        args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(p) for p in k.params] + [out]
        ms = median_ms(lambda: lib["main"](*args), warmup=3, iters=30, min_seconds=0.3)
        true_macs = b * int(np.prod(graph.tensors[node.output].shape)) * int(np.prod(node.weight.shape[1:]))
        ops = 2 * true_macs
        rows.append({"layer": node.name, "kernel": k.name, "batch": b, "ms": ms, "gops": ops / ms / 1e6,
                     "fraction_of_peak": ops / (ms * 1e-3) / peak, "peak_from": peak_target.name})
    return rows


def _describing_target():
    """The target file that describes this CPU, for its int8 peak: the one whose fixed mcpu is the
    detected CPU (x86-avx2 on a Zen 3), else x86-host (the measured Zen 4)."""
    from tvm.target import codegen

    from hwq.target import list_targets, load_target

    cpu = codegen.llvm_get_system_cpu()
    return next((t for t in list_targets() if t.kind == "cpu" and t.tvm.get("mcpu") == cpu), load_target("x86-host"))


def run_engine(engine, model_name, out_path):
    """Child process: build one engine, time it, write its JSON."""
    import torch

    from hwq.timing import environment, median_ms

    torch.set_num_threads(os.cpu_count())
    model = _model(model_name)
    calib, xs, labels = _data(model_name)
    with tempfile.TemporaryDirectory() as wd:
        run, extra = _build(engine, model, calib, wd)
        with torch.no_grad():
            ref = model(xs).numpy().argmax(1)
        if engine == "tvm-fp32":   # TVM's untuned float build is slow: agreement on fewer images
            xs, ref = xs[:64], ref[:64]
            labels = None if labels is None else labels[:64]
        preds = np.concatenate([run(xs[i:i + 16]).argmax(1) for i in range(0, len(xs), 16)])
        lat = {str(b): median_ms(lambda: run(xs[:b]), warmup=10, iters=50, min_seconds=1.0, max_seconds=20.0)
               for b in BATCHES}
    res = {"engine": engine, "model": model_name, "latency_ms": lat,
           "top1_agreement_with_fp32": float((preds == ref).mean()),
           "top1_accuracy": None if labels is None else float((preds == labels).mean()),
           "images": len(xs), "environment": environment(), **extra}
    Path(out_path).write_text(json.dumps(res, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per engine (median reported)")
    ap.add_argument("--name", default="speedup", help="results/NAME.json and NAME.png (default speedup)")
    args = ap.parse_args()
    if args.engine:
        return run_engine(args.engine, args.models, args.out)
    from hwq.timing import environment

    results = {"environment": environment(), "rounds": args.rounds, "models": {}}
    engines = args.engines.split(",")
    for model_name in args.models.split(","):
        runs = {e: [] for e in engines}
        for r in range(args.rounds):
            for engine in engines:
                if r and engine in ONE_ROUND:
                    continue
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    out = f.name
                print(f"[{model_name}] round {r + 1}/{args.rounds}: {engine} ...", flush=True)
                # per-layer kernel rates once (first round): they take longer than the latencies
                env = {**os.environ, "PYTHONWARNINGS": "ignore", **({"HWQ_BENCH_NO_LAYERS": "1"} if r else {})}
                subprocess.run([sys.executable, __file__, "--engine", engine, "--models", model_name, "--out", out],
                               check=True, env=env)
                runs[engine].append(json.loads(Path(out).read_text()))
                os.unlink(out)
        results["models"][model_name] = {e: _merge_rounds(rs) for e, rs in runs.items()}
    print(format_table(results))
    RESULTS.mkdir(exist_ok=True)
    tmp = RESULTS / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(RESULTS / f"{args.name}.json")
    _plot(results, RESULTS / f"{args.name}.png")
    return 0


def _merge_rounds(rounds: list) -> dict:
    """One engine's result: the first round's fields, latency = the median over the rounds."""
    merged = dict(rounds[0])
    merged["latency_ms_rounds"] = {b: [r["latency_ms"][b] for r in rounds] for b in rounds[0]["latency_ms"]}
    merged["latency_ms"] = {b: float(np.median(v)) for b, v in merged["latency_ms_rounds"].items()}
    return merged


def format_table(results) -> str:
    lines = []
    for model_name, rows in results["models"].items():
        base = rows.get("torch-fp32-eager")
        ort8 = rows.get("ort-int8")
        lines.append(f"\n{model_name}: median latency ms (speedup vs torch fp32 eager; vs onnxruntime int8)")
        lines.append(f"{'engine':20s}" + "".join(f"{'batch ' + str(b):>28s}" for b in BATCHES) + f"{'top-1 agree':>13s}")
        for engine, r in rows.items():
            cells = ""
            for b in map(str, BATCHES):
                ms = r["latency_ms"][b]
                vs_t = base["latency_ms"][b] / ms if base else float("nan")
                vs_o = ort8["latency_ms"][b] / ms if ort8 else float("nan")
                cells += f"{ms:10.3f} ({vs_t:5.2f}x; {vs_o:5.2f}x)"
            lines.append(f"{engine:20s}{cells}{100 * r['top1_agreement_with_fp32']:12.2f}%")
        for engine in HWQ_ENGINES:
            layers = rows.get(engine, {}).get("layers", [])
            if layers:
                lines.append(f"\n{engine} kernels alone, batch 16: {'layer':22s} {'kernel':18s} {'ms':>8s} {'GOP/s':>8s} "
                             f"{'% of int8 peak':>15s}")
                for l in layers:
                    if "ms" in l:
                        lines.append(f"{'':34s}{l['layer']:22s} {l['kernel']:18s} {l['ms']:8.3f} {l['gops']:8.1f} "
                                     f"{100 * l['fraction_of_peak']:14.1f}%")
    return "\n".join(lines)


def _plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models) * len(BATCHES), figsize=(5 * len(models) * len(BATCHES), 4), squeeze=False)
    for i, (m, b) in enumerate((m, b) for m in models for b in BATCHES):
        rows = results["models"][m]
        names = list(rows)
        ax = axes[0][i]
        ax.barh(names, [rows[n]["latency_ms"][str(b)] for n in names], color=["C3" if n in HWQ_ENGINES else "C0" for n in names])
        ax.set_xscale("log")
        ax.set_xlabel("median latency, ms (log)")
        ax.set_title(f"{m}, batch {b}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
