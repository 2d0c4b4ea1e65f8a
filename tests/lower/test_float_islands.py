"""Float islands: fp32 layers and operators without an integer form, lowered through Relax.

The integer parts equal the torch reference bit for bit. Where an island's float result is
quantized, TVM and torch may sum in another order: the quantized values may then differ, by at most
1 LSB, on a small fraction of the elements (each ``Quantize`` is checked on its own).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import check_borders
from hwq.lower import compile_model
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import quantize_ptq
from hwq.qat.reference import dequantize_output, quantize_input, run_reference

FP32 = LayerSpec.parse("fp32")


class Islands(nn.Module):
    """The ops of the CNNs users bring: hardswish, squeeze-excitation, split / concat, channel shuffle,
    average pooling (all integer: tables, products, data movement), and two float islands between
    integer ops: bilinear upsampling and a softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se_reduce, self.se_expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.pw = nn.Conv2d(16, 24, 1)
        self.down = nn.Conv2d(24, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        y = F.hardswish(self.dw(x))
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        x = self.pw(y * s)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, F.relu6(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)   # channel shuffle
        x = self.down(x)
        x = x + F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="bilinear")
        return torch.softmax(self.fc(x.mean((2, 3))), dim=1)


def _model():
    torch.manual_seed(0)
    return Islands().eval()


@pytest.mark.parametrize("target", ["x86-host", "x86-avx2"])
def test_float_islands_match_the_reference(target):
    model = _model()
    x = torch.rand(6, 3, 16, 16)
    graph = quantize_ptq(model, x)
    float_ops = {n.target for n, _ in graph.float_nodes() if n.op == "float"}
    assert float_ops == {"aten.upsample_bilinear2d.vec", "aten.softmax.int"}
    assert {"lut", "mul", "concat", "move", "avg_pool2d", "quantize", "dequantize"} <= {n.op for n in graph.nodes}
    x_int = quantize_input(graph, x)
    ref = run_reference(graph, x_int)
    out = compile_model(graph, target).run_int(x_int.numpy().astype(graph.input.dtype))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.numpy(), atol=2e-2)     # a 1-LSB flip upstream moves the softmax a little
    torch.testing.assert_close(dequantize_output(graph, ref), model(x), atol=0.05, rtol=0)
    check_borders(graph, target, x_int)


def test_fp32_layers_in_a_plan_run_in_float():
    model = _model()
    x = torch.rand(4, 3, 16, 16)
    plan = BitPlan(layers={"pw": FP32, "down": FP32, "fc": FP32, "stem.0": LayerSpec(4, 8)})
    graph = quantize_ptq(model, x, plan)
    ops = {n.name: n.op for n in graph.nodes}
    assert ops["pw"] == "float_conv2d" and ops["down"] == "float_conv2d" and ops["fc"] == "float_dense"
    assert ops["stem.0"] == "conv2d" and ops["dw"] == "conv2d"
    assert "the plan keeps this layer in fp32" in graph.summary()
    x_int = quantize_input(graph, x)
    ref = run_reference(graph, x_int).numpy()
    for target in ("x86-host", "x86-avx2"):
        out = compile_model(graph, target).run_int(x_int.numpy().astype(graph.input.dtype))
        np.testing.assert_allclose(out, ref, atol=2e-2)


def test_integer_parts_stay_bit_exact_after_an_island():
    """An island between integer layers: with the quantize agreeing, everything after is exact."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Softmax2d(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.rand(8, 1, 12, 12)
    graph = quantize_ptq(model, x)
    assert [n.op for n in graph.nodes][:4] == ["conv2d", "dequantize", "float", "quantize"]
    x_int = quantize_input(graph, x)
    ref = run_reference(graph, x_int).numpy()
    out = compile_model(graph, "x86-avx2").run_int(x_int.numpy().astype(graph.input.dtype))
    q = graph.nodes[3].output
    same_border = np.array_equal(
        run_reference(graph.up_to(q), x_int).numpy(),
        compile_model(graph.up_to(q), "x86-avx2").run_int(x_int.numpy().astype(graph.input.dtype)))
    if same_border:
        np.testing.assert_array_equal(out, ref)
    else:
        assert np.abs(out - ref).max() <= 64
