"""Nonlinearities as exact integer tables (``qg.Lut``): a chain of elementwise ops on one 8-bit value,
quantized where it ends, is a 256-entry table; the reference gathers from it, and so does TVM."""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwq.lower import compile_model
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import quantize_ptq
from hwq.qat.reference import dequantize_output, quantize_input, run_reference
from hwq.target import load_target

ACTIVATIONS = {"hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid, "silu": F.silu,
               "tanh": torch.tanh, "gelu": F.gelu}


class Act(nn.Module):
    """conv -> f -> conv: ``f`` reads one int8 value and an integer conv reads its result."""

    def __init__(self, f):
        super().__init__()
        self.f, self.a, self.b = f, nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.f(self.a(x)))


def _luts(graph):
    return [n for n in graph.nodes if n.op == "lut"]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_table_equals_the_function_on_every_input(name):
    torch.manual_seed(0)
    f = ACTIVATIONS[name]
    graph = quantize_ptq(Act(f).eval(), torch.randn(8, 3, 8, 8) * 2)
    (lut,) = _luts(graph)
    assert not graph.float_nodes() and lut.table.shape == (256,)
    x, y = graph.tensors[lut.input], graph.tensors[lut.output]
    k = torch.arange(lut.input_min, lut.input_min + 256)
    real = k.float() * torch.tensor(x.scale, dtype=torch.float32)
    direct = torch.round(f(real) / torch.tensor(y.scale, dtype=torch.float32)).clamp(y.qmin, y.qmax)
    np.testing.assert_array_equal(lut.table, direct.numpy())
    # and the table is the function, rounded: within half an output step where the output range holds it
    exact = f(real.double()).numpy()
    inside = (exact >= y.qmin * y.scale) & (exact <= y.qmax * y.scale)
    assert inside.sum() > 128
    assert np.abs(lut.table * y.scale - exact)[inside].max() <= y.scale / 2 + 1e-6
    assert (y.dtype == "uint8") == (name in ("hardsigmoid", "sigmoid"))


class GeffnetChains(nn.Module):
    """The activations as geffnet spells them: hardswish ``x * relu6(x + 3) / 6``, hard-sigmoid
    ``relu6(x + 3) / 6``, swish ``x * sigmoid(x)``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        x = x * F.relu6(x + 3.0) / 6.0
        x = self.b(x)
        x = F.relu6(x + 3.0) / 6.0
        x = self.c(x)
        return x * torch.sigmoid(x)


def test_geffnet_style_chains_collapse_to_one_table_each():
    torch.manual_seed(0)
    model = GeffnetChains().eval()
    x = torch.randn(8, 3, 8, 8)
    graph = quantize_ptq(model, x)
    assert [n.op for n in graph.nodes] == ["conv2d", "lut", "conv2d", "lut", "conv2d", "lut"]
    hswish, hsigmoid, swish = _luts(graph)
    assert hswish.ops == ("aten.add.Tensor", "aten.relu6.default", "aten.mul.Tensor", "aten.div.Tensor")
    assert swish.ops == ("aten.sigmoid.default", "aten.mul.Tensor")
    # the chain's table is torch's hardswish's (torch computes x * min(max(x + 3, 0), 6) / 6 too)
    s_in, s_out = graph.tensors[hswish.input].scale, graph.tensors[hswish.output]
    real = torch.arange(-128, 128).float() * torch.tensor(s_in, dtype=torch.float32)
    ref = torch.round(F.hardswish(real) / torch.tensor(s_out.scale, dtype=torch.float32)).clamp(s_out.qmin, s_out.qmax)
    np.testing.assert_array_equal(hswish.table, ref.numpy())
    y = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    torch.testing.assert_close(y, model(x), atol=0.03, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("geffnet") is None, reason="geffnet not installed")
def test_geffnets_own_activation_modules_are_tables():
    """geffnet's MobileNetV3 with its own activation modules (not torch's): no float op is left."""
    import geffnet

    torch.manual_seed(0)
    model = geffnet.create_model("mobilenetv3_small_100", pretrained=False, no_jit=True).eval()
    graph = quantize_ptq(model, torch.randn(2, 3, 32, 32))
    assert not graph.float_nodes()
    chains = {tuple(op.replace("_.", ".") for op in n.ops) for n in _luts(graph)}     # geffnet multiplies in place
    assert chains == {("aten.add.Tensor", "aten.relu6.default", "aten.div.Tensor", "aten.mul.Tensor"),   # hardswish
                      ("aten.add.Tensor", "aten.relu6.default", "aten.div.Tensor")}                      # hard-sigmoid
    gates = [n for n in _luts(graph) if len(n.ops) == 3]
    assert gates and all(graph.tensors[n.output].dtype == "uint8" for n in gates)


def test_chains_stay_float_where_float_ops_read_them_or_their_input_is_float():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            s = torch.softmax(torch.sigmoid(self.a(x)), 1)     # read by a float op only: stays float
            return self.b(torch.tanh(s))                         # its input is float: float, quantized for b

    graph = quantize_ptq(M().eval(), torch.rand(4, 3, 6, 6))
    assert [n.op for n in graph.nodes] == ["conv2d", "dequantize", "float", "float", "float", "quantize", "conv2d"]
    assert not _luts(graph)


def test_a_value_read_inside_and_outside_a_chain_ends_one_table_and_starts_another():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            s = torch.sigmoid(self.a(x))
            return self.b(s) + self.c(s * 2.0 - 1.0)

    torch.manual_seed(0)
    model = M().eval()
    x = torch.rand(4, 3, 6, 6)
    graph = quantize_ptq(model, x)
    luts = _luts(graph)
    assert [n.ops for n in luts] == [("aten.sigmoid.default",),
                                     ("aten.sigmoid.default", "aten.mul.Tensor", "aten.sub.Tensor")]
    assert luts[0].input == luts[1].input and not graph.float_nodes()


def _exact_on(graph, x, target):
    xi = quantize_input(graph, x)
    ref = run_reference(graph, xi).numpy()
    out = compile_model(graph, target).run_int(xi.numpy().astype(graph.input.dtype))
    np.testing.assert_array_equal(out.astype(np.int64), ref)


@pytest.mark.parametrize("target", ["x86-host", "x86-avx2", "generic"])
def test_tables_compile_bit_exact(target):
    """uint8 and int8 inputs, a table on the model input, 6-bit activations: TVM gathers what the reference does."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = self.a(F.gelu(x))
            x = self.b(F.hardswish(x))
            return torch.sigmoid(self.c(torch.relu(x)) * 0.5)

    torch.manual_seed(0)
    if target == "generic":      # no kernel features: NCHW and Relax's generic operators
        target = dataclasses.replace(load_target("x86-host"), features=())
    x = torch.randn(8, 3, 10, 10)
    graph = quantize_ptq(M().eval(), x, BitPlan(default=LayerSpec(8, 6)))
    assert [n.op for n in graph.nodes].count("lut") == 3 and not graph.float_nodes()
    _exact_on(graph, torch.randn(5, 3, 10, 10) * 1.5, target)
