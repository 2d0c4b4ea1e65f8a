"""Int8 against fp32 on the zoo's ImageNet models with real weights: top-1 agreement on natural crops.

No ImageNet labels can be shipped here, so the measure is how often the int8 program (quantized
post-training on the defaults, compiled for the host, run through TVM) picks the float model's
top-1 class, and the mean KL divergence of its softmax from the float one, on random crops of
scikit-image's photographs (``hwq.data.natural_images``). Also: which ops ran in float and why.

Writes benchmarks/results/zoo_accuracy.json with the machine, versions and date.

    python benchmarks/zoo_accuracy.py --images 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenetv2", "efficientnet_lite0")


def _model(name):
    """(float model, input transform from ImageNet-normalized crops)."""
    from hwq.data.natural_images import MEAN, STD

    if name == "mobilenetv2":
        from hwq.models.mobilenet_v2 import MobileNetV2, load_imagenet_weights

        return load_imagenet_weights(MobileNetV2()).eval(), lambda x: x
    from hwq.models.efficientnet_lite import normalize_input
    from hwq.models.zoo import zoo_architecture

    model, _ = zoo_architecture(name)
    mean, std = torch.from_numpy(MEAN).reshape(1, 3, 1, 1), torch.from_numpy(STD).reshape(1, 3, 1, 1)
    return model, lambda x: normalize_input(x * std + mean)      # back to [0, 1], then TF's normalization


def measure(name: str, images: int, calib_images: int, log=print) -> dict:
    from hwq.data.natural_images import natural_crops
    from hwq.lower import compile_model
    from hwq.qat import quantize_ptq

    model, prep = _model(name)
    calib = prep(torch.from_numpy(natural_crops(calib_images, seed=1)))
    x = prep(torch.from_numpy(natural_crops(images, seed=2)))
    t0 = time.time()
    graph = quantize_ptq(model, calib)
    compiled = compile_model(graph, "x86-host")
    build_s = time.time() - t0
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)])
    out = torch.from_numpy(np.concatenate([compiled(x[i:i + 50].numpy()) for i in range(0, len(x), 50)]))
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    kl = float(torch.nn.functional.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True,
                                          reduction="batchmean"))
    counts = {}
    for node in graph.nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    floats = sorted({f"{getattr(n, 'target', n.op)}: {why}" for n, why in graph.float_nodes()})
    log(f"{name:20s} top-1 agreement {100 * agree:6.2f}%  KL {kl:.4f}  float ops {len(graph.float_nodes())}  "
        f"(build {build_s:.0f} s)")
    return {"model": name, "images": images, "calibration_images": calib_images, "top1_agreement": agree,
            "kl_divergence": kl, "node_counts": counts, "float_ops": floats, "build_seconds": build_s}


def main():
    from hwq.fileio import atomic_write_text
    from hwq.timing import environment

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--out", default=str(RESULTS / "zoo_accuracy.json"))
    args = ap.parse_args()
    rows = [measure(m, args.images, args.calibration) for m in args.models.split(",")]
    atomic_write_text(Path(args.out), json.dumps({"environment": environment(), "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
