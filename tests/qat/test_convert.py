import numpy as np
import pytest
import torch

from conftest import calibrated_graph, zoo_models
from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import quantize_ptq, run_reference
from hwq.qat.reference import dequantize_output, quantize_input

MODELS = zoo_models()


def test_rescnn_graph_structure():
    graph, _ = calibrated_graph(*MODELS["rescnn"])
    assert [n.op for n in graph.nodes] == ["conv2d"] * 4 + ["add", "global_avg_pool", "flatten", "dense"]
    assert [n.name for n in graph.nodes if n.op == "conv2d"] == ["stem.0", "down.0", "block1.0", "block2.0"]
    # post-ReLU activations are unsigned, the un-activated conv before the add is signed
    dtypes = {n.name: graph.tensors[n.output].dtype for n in graph.nodes}
    assert dtypes["stem.0"] == "uint8" and dtypes["block2.0"] == "int8" and dtypes["fc"] == "int32"
    assert graph.input.dtype == "uint8" and graph.output_scales.shape == (10,)
    assert graph.macs() == 28 * 28 * 8 * 9 + 14 * 14 * 16 * 8 * 9 + 2 * 14 * 14 * 16 * 16 * 9 + 16 * 10


@pytest.mark.parametrize("name", sorted(MODELS))
def test_integer_model_tracks_float_model(name):
    model, shape, signed = MODELS[name]
    graph, x = calibrated_graph(model, shape, signed)
    y = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    with torch.no_grad():
        ref = model(x)
    err = (y - ref).abs().max() / ref.abs().max()
    assert err < 0.08, f"relative error {err:.3f} of the int8 model against float"


def test_weights_are_int8_per_channel_and_bias_int32():
    graph, _ = calibrated_graph(*MODELS["opsnet"])
    for node in graph.nodes:
        if node.op in ("conv2d", "dense"):
            assert node.weight.dtype == np.int8 and node.bias.dtype == np.int32
            per_channel_max = np.abs(node.weight.reshape(len(node.weight), -1)).max(axis=1)
            assert np.all(per_channel_max == 127)   # each channel uses its full range


def test_lower_bit_plan_narrows_ranges():
    model, shape, signed = MODELS["rescnn"]
    x = torch.rand(16, *shape)
    graph = quantize_ptq(model, x, BitPlan(layers={"block1.0": LayerSpec(weight_bits=4, act_bits=4)}))
    node = next(n for n in graph.nodes if n.name == "block1.0")
    assert np.abs(node.weight).max() == 7 and graph.tensors[node.output].qmax == 15


def test_op_without_integer_form_becomes_a_float_island():
    class Soft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.softmax(self.c(x), 1)

    graph = quantize_ptq(Soft().eval(), torch.rand(4, 1, 8, 8))
    assert [n.op for n in graph.nodes] == ["conv2d", "dequantize", "float"]
    assert graph.output_info.is_float and "softmax" in graph.summary() and "no integer form" in graph.summary()
    assert [n.name for n, _ in graph.float_nodes()] == ["softmax"]


def test_plan_with_unknown_layer_is_rejected():
    model, shape, _ = MODELS["rescnn"]
    with pytest.raises(ConfigError, match="blok1.0"):
        quantize_ptq(model, torch.rand(4, *shape), BitPlan(layers={"blok1.0": LayerSpec()}))


def test_reference_rejects_float_input():
    graph, x = calibrated_graph(*MODELS["reluout"])
    with pytest.raises(ConfigError, match="quantize_input"):
        run_reference(graph, x)


def test_channel_with_vanishing_weights_keeps_its_bias():
    """A channel whose weights all but vanish beside its bias (EfficientNet-Lite0's ImageNet stem has one):
    its weight scale grows until the int32 bias fits, its weights round to 0, its output is the bias."""
    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[2] = 1e-12
        conv.bias[2] = 0.7
    model = torch.nn.Sequential(conv, torch.nn.ReLU()).eval()
    x = torch.rand(8, 3, 6, 6)
    graph = quantize_ptq(model, x)
    assert np.all(graph.nodes[0].weight[2] == 0) and np.any(graph.nodes[0].weight[0] != 0)
    y = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    torch.testing.assert_close(y, model(x), atol=0.01, rtol=0)
