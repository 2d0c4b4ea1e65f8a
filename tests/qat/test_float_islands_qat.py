"""QAT with float islands: the islands train as the float model's own ops, a fake quantizer sits
where an integer layer reads them, and convert gives the integer program the prepared model computes."""

import sys
from pathlib import Path

import torch

from hwq.plan import BitPlan, LayerSpec
from hwq.qat import quantize_
from hwq.qat.reference import dequantize_output, quantize_input, run_reference

sys.path.insert(0, str(Path(__file__).parents[1] / "lower"))
from test_float_islands import _model  # noqa: E402


def test_prepared_model_computes_what_the_converted_graph_does():
    model = _model()
    x = torch.rand(8, 3, 16, 16)
    prepared = quantize_(model, BitPlan(layers={"pw": LayerSpec.parse("fp32")}), calibration=x)
    borders = [k for k in prepared.quant.keys() if k.startswith("border_")]
    assert borders and "pw" not in prepared.quant            # the fp32 layer stays the model's own conv
    prepared.eval()
    with torch.no_grad():
        fake = prepared(x)
    graph = quantize_(prepared, step="convert")
    assert next(n for n in graph.nodes if n.name == "pw").op == "float_conv2d"
    y = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    torch.testing.assert_close(y, fake, atol=2e-3, rtol=0)


def test_fp32_layer_weights_train():
    model = _model()
    x = torch.rand(8, 3, 16, 16)
    w0 = model.pw.weight.detach().clone()
    prepared = quantize_(model, BitPlan(layers={"pw": LayerSpec.parse("fp32")}), calibration=x)
    with torch.no_grad():
        prepared.pw.weight.mul_(0.5)                         # what an optimizer step does, in place
    graph = quantize_(prepared, step="convert")
    node = next(n for n in graph.nodes if n.name == "pw")
    torch.testing.assert_close(torch.from_numpy(node.weight), w0 * 0.5, atol=0, rtol=0)
