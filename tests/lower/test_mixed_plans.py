"""A random mixed plan (fp32, 8-, 7- and 4-bit layers) over ResCNN and MobileNetV2 compiles for the
host and the AVX2 target and runs what the reference runs.

The integer parts are bit-exact: every float -> integer border is compared on its own (equal, or
1 LSB away on at most 1 % of its elements: TVM's fp32 kernels sum in another order than torch),
and where every border agrees, the whole output equals the reference bit for bit.
"""

import random

import numpy as np
import pytest
import torch

from conftest import check_borders
from hwq.lower import compile_model
from hwq.models import ResCNN
from hwq.models.batch_norm import calibrate_batch_norm
from hwq.models.mobilenet_v2 import MobileNetV2
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import quantize_ptq
from hwq.qat.exported import export_model
from hwq.qat.groups import layer_names
from hwq.qat.reference import quantize_input, run_reference

OPTIONS = ("fp32", "w8a8", "w7a8", "w4a8", "w8a4", "w4a4")


def mixed_plan(model, example, seed: int) -> BitPlan:
    """Every option at least once (fp32, 8-, 7-, 4-bit), the rest drawn at random."""
    names = layer_names(export_model(model, example).graph)
    rng = random.Random(seed)
    picks = list(OPTIONS[:4]) + [rng.choice(OPTIONS) for _ in range(len(names) - 4)]
    rng.shuffle(picks)
    return BitPlan(layers={n: LayerSpec.parse(o) for n, o in zip(names, picks)})


def models():
    torch.manual_seed(0)
    # random weights: BatchNorm statistics from data, else the activations vanish layer by layer
    mbv2 = calibrate_batch_norm(MobileNetV2(), [torch.rand(8, 3, 32, 32) for _ in range(2)])
    return {"rescnn": (ResCNN().eval(), (1, 28, 28)), "mobilenetv2": (mbv2, (3, 32, 32))}


def check_against_reference(graph, compiled_for, x_int):
    """Each border alone, then the whole program (exact where the borders agree)."""
    borders_agree = check_borders(graph, compiled_for, x_int)
    ref = run_reference(graph, x_int).numpy()
    out = compile_model(graph, compiled_for).run_int(x_int.numpy().astype(graph.input.dtype))
    if graph.output_info.is_float:
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 if borders_agree else 0.1)
    elif borders_agree:
        np.testing.assert_array_equal(out.astype(np.int64), ref)
    return borders_agree


@pytest.mark.parametrize("name", ["rescnn", pytest.param("mobilenetv2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("target", ["x86-host", "x86-avx2"])
def test_random_mixed_plan_matches_the_reference(name, target):
    model, shape = models()[name]
    x = torch.rand(6, *shape)
    plan = mixed_plan(model, x[:1], seed=1)
    assert {s.name for s in plan.layers.values()} >= {"fp32", "w8a8", "w7a8", "w4a8"}
    graph = quantize_ptq(model, x, plan)
    kinds = {n.op for n in graph.nodes}
    assert {"float_conv2d", "conv2d", "quantize", "dequantize"} <= kinds
    check_against_reference(graph, target, quantize_input(graph, x))


def test_every_layer_fp32_is_the_float_model():
    """A plan with every layer in fp32: a float input, float adds and pools between the layers (no
    quantize anywhere), and the float model's outputs up to float32 summation order."""
    model, shape = models()["mobilenetv2"]
    x = torch.randn(4, *shape)
    names = layer_names(export_model(model, x[:1]).graph)
    graph = quantize_ptq(model, x, BitPlan(layers={n: LayerSpec.parse("fp32") for n in names}))
    assert graph.input.is_float and not {"quantize", "dequantize", "conv2d", "add"} & {n.op for n in graph.nodes}
    out = compile_model(graph, "x86-host")(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-3, atol=1e-3)
