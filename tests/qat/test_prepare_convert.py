"""QAT prepare puts fake quantizers at exactly the converter's quantization points, and convert of
the (trained) prepared model is the integer program the fake-quantized model trained on."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import zoo_models
from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import QATConfig, float_mode, quant_layers, quantize_, quantize_ptq, run_reference, train_constrained
from hwq.qat.api import act_quantizers
from hwq.qat.reference import dequantize_output, quantize_input

MODELS = zoo_models()


def _data(shape, signed, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g) if signed else torch.rand(n, *shape, generator=g)


def _quantization_points(graph):
    own_scale = {"conv2d", "dense", "add", "global_avg_pool"}
    return {n.output for n in graph.nodes if n.op in own_scale and getattr(n, "requant", True) is not None}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quantizers_sit_at_the_converters_points_and_untrained_convert_is_ptq(name):
    model, shape, signed = MODELS[name]
    x = _data(shape, signed)
    prepared = quantize_(model, step="prepare", calibration=x)
    ptq = quantize_ptq(model, x)
    assert {q.node for q in act_quantizers(prepared)} == _quantization_points(ptq) | {"__input__"}
    graph = quantize_(prepared, step="convert")
    assert [n.op for n in graph.nodes] == [n.op for n in ptq.nodes]
    for a, b in zip(graph.tensors.values(), ptq.tensors.values()):
        assert (a.name, a.dtype, a.qmin, a.qmax) == (b.name, b.dtype, b.qmin, b.qmax)
        assert a.scale == pytest.approx(b.scale, rel=1e-6)     # float32 scales vs float64 ones
    with torch.no_grad(), float_mode(prepared):                # BN folding is exact
        assert torch.allclose(prepared(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("bits, range_mode", [(8, "calibrated"), (4, "learned")])
def test_converted_graph_computes_what_the_trained_fake_quant_model_computes(name, bits, range_mode):
    model, shape, signed = MODELS[name]
    x = _data(shape, signed)
    prepared = quantize_(model, BitPlan(default=LayerSpec(bits, bits)), calibration=x, range_mode=range_mode)
    with torch.no_grad():
        y0 = prepared(x)
    if y0.dim() == 2:      # a few STE steps, so the weights and scales are no longer the float model's
        labels = y0.argmax(1)
        train_constrained(prepared, TensorDataset(x, labels), QATConfig(epochs=1, batch_size=16, lr=1e-2, gradient_mode="ste"),
                          progress=False, log=lambda s: None)
    prepared.eval()
    with torch.no_grad():
        y_fq = prepared(x)
    graph = quantize_(prepared, step="convert")
    y_int = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    # same integers everywhere: what differs is float32 arithmetic on the dequantized values (and,
    # in principle, a requantization landing exactly on a tie: half up there, half to even here)
    assert torch.allclose(y_fq, y_int, rtol=0, atol=1e-5 * float(y_fq.abs().max()))
    assert torch.equal(y_fq.flatten(1).argmax(1), y_int.flatten(1).argmax(1))


@pytest.mark.parametrize("plan", [BitPlan(layers={"3": LayerSpec(4, 8)}), BitPlan(layers={"0": LayerSpec.parse("fp32")})],
                         ids=["int", "float-island"])
def test_a_plain_sequential_prepares_and_converts(plan):
    # nn.Sequential.forward takes `input`, a Python builtin's name: ep.module() renames that
    # placeholder `input_1`, and prepare looked its nodes up by the exported graph's names
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 10))
    x = _data((3, 8, 8), signed=False)
    prepared = quantize_(model, plan, step="prepare", calibration=x)
    assert [layer.name for layer in quant_layers(prepared)] == [m for m in ("0", "3") if not plan.spec_for(m).is_float]
    prepared.eval()
    with torch.no_grad():
        y_fq = prepared(x)
    graph = quantize_(prepared, step="convert")
    y_int = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    assert torch.allclose(y_fq, y_int, rtol=0, atol=1e-5 * float(y_fq.abs().max()))


def test_trained_model_compiles_and_tvm_equals_the_reference():
    from hwq.lower import compile_model

    model, shape, signed = MODELS["rescnn"]
    x = _data(shape, signed, n=96)
    prepared = quantize_(model, BitPlan(default=LayerSpec(4, 4), layers={"fc": LayerSpec(8, 8)}), calibration=x,
                         range_mode="learned")
    with torch.no_grad():
        labels = prepared(x).argmax(1)
    train_constrained(prepared, TensorDataset(x, labels), QATConfig(epochs=1, batch_size=32, dual_period=1),
                      progress=False, log=lambda s: None)
    graph = quantize_(prepared, step="convert")
    xi = quantize_input(graph, x)
    ref = run_reference(graph, xi).numpy()
    out = compile_model(graph, "x86-host").run_int(xi.numpy().astype(graph.input.dtype))
    assert np.array_equal(out.astype(np.int64), ref)
    assert {layer.name: layer.weight_fq.spec.bits for layer in quant_layers(prepared)}["fc"] == 8
    assert np.abs(next(n for n in graph.nodes if n.name == "block1.0").weight).max() <= 7


def test_errors_name_the_bad_value():
    model, shape, signed = MODELS["rescnn"]
    x = _data(shape, signed, n=8)
    with pytest.raises(ConfigError, match="'train'.*'convert', 'prepare'"):
        quantize_(model, step="train", calibration=x)
    with pytest.raises(ConfigError, match="calibration"):
        quantize_(model, step="prepare")
    with pytest.raises(ConfigError, match="blok1.0"):
        quantize_(model, BitPlan(layers={"blok1.0": LayerSpec()}), calibration=x)
    with pytest.raises(ConfigError, match="range_mode 'lsq'"):
        quantize_(model, calibration=x, range_mode="lsq")
    with pytest.raises(ConfigError, match="not prepared"):
        quantize_(model, step="convert")
    prepared = quantize_(model, calibration=x)
    with pytest.raises(ConfigError, match="fixed at prepare"):
        quantize_(prepared, BitPlan(default=LayerSpec(4, 4)), step="convert")

    with pytest.raises(ConfigError, match="BitPlan.default must be an integer option"):
        quantize_(model, BitPlan(default=LayerSpec.parse("fp32")), calibration=x)
