"""Conversion refuses a layer whose int32 accumulator could overflow (the kernels would wrap)."""

import numpy as np
import pytest
import torch
from torch import nn

from hwq.errors import QuantizationError
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import quantize_ptq
from hwq.qat.convert import calibrate, convert
from hwq.qat.exported import export_model


class _Wide(nn.Module):
    """One dense layer; on uint8 input its accumulator is bounded by in_features x 255 x 127 + |bias|."""

    def __init__(self, in_features):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(in_features, 2)

    def forward(self, x):
        return self.fc(x)


def test_long_reduction_is_refused_naming_the_layer_and_the_bound():
    x = torch.rand(4, 70_000)                      # 70 000 x 255 x 127 = 2.27e9 > 2^31 - 1
    with pytest.raises(QuantizationError, match=r"'fc'.*70000 \(reduction length\) x 255 .* x 127 .*2147483647"):
        quantize_ptq(_Wide(70_000).eval(), x)
    graph = quantize_ptq(_Wide(70_000).eval(), x, BitPlan(layers={"fc": LayerSpec(weight_bits=7)}))
    assert np.abs(graph.nodes[0].weight).max() == 63          # what the message advises: it fits now


def test_large_bias_is_counted_in_the_bound():
    model, x = _Wide(4).eval(), torch.rand(8, 4)
    ep = export_model(model, x[:1])
    ranges = calibrate(ep, [x])
    layer = next(n.name for n in ep.graph.nodes if n.op == "call_function" and "linear" in str(n.target))
    wq = torch.full((2, 4), 127.0)
    fits = torch.tensor([1000, -1000], dtype=torch.int64)
    convert(ep, ranges, weights={layer: (wq, torch.full((2,), 0.01), fits)})
    big = torch.tensor([1000, -(2 ** 31 - 1000)], dtype=torch.int64)     # fits int32, but not with the sum
    with pytest.raises(QuantizationError, match=r"'fc'.*output channel 1 .* 2147482648 \(\|bias\|\)"):
        convert(ep, ranges, weights={layer: (wq, torch.full((2,), 0.01), big)})
