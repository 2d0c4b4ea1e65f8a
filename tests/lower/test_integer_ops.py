"""The integer ops real CNNs need besides conv / dense / add: zero padding, concat, elementwise multiply,
average pooling, nearest upsampling, data movement (channel shuffle, split, slice, permute) and the
mean over H and W. Each is integer in the ``QGraph`` (no float island), and TVM's build equals the
reference bit for bit in both layouts (NHWC for targets with hand kernels, NCHW for the generic one)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomize_bn
from hwq.lower import compile_model
from hwq.qat import quantize_ptq
from hwq.qat.convert_ops import avg_pool_divisors
from hwq.qat.reference import dequantize_output, quantize_input, run_reference
from hwq.target import load_target


def _conv(cin, cout, k=1, **kw):
    return nn.Sequential(nn.Conv2d(cin, cout, k, **kw), nn.ReLU())


class SamePad(nn.Module):
    """EfficientNet-Lite's TensorFlow "SAME" padding before a stride-2 conv, and a pad of a signed value."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = _conv(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        x = self.b(F.pad(self.a(x), [0, 1, 0, 1]))                 # unsigned input, one more row / column
        return torch.relu(self.c(torch.constant_pad_nd(x, [1, 1, 2, 0])))      # signed input, asymmetric


class ConcatSE(nn.Module):
    """Fire-module concat (two scales onto one), a BatchNorm after it (no conv to fold it into),
    squeeze-excitation gating, mean without keepdim."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(3, 8, 3, padding=1)
        self.e1, self.e3 = _conv(8, 8), _conv(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.r, self.x = nn.Conv2d(16, 6, 1), nn.Conv2d(6, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn(torch.cat([self.e1(x), self.e3(x)], 1)))
        s = torch.sigmoid(self.x(F.relu(self.r(x.mean((2, 3), keepdim=True)))))
        return self.fc((x * s).mean((2, 3)))


class Pools(nn.Module):
    """Average pooling as torch does it: padding with and without counting it, strides, ceil_mode; max
    pooling with ceil_mode; nearest upsampling by integer factors."""

    def __init__(self):
        super().__init__()
        self.a, self.b = _conv(3, 8, 3, padding=1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.a(x)                                                       # 9 x 9
        p = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)              # 5 x 5, divisors 4, 6, 9
        q = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)                        # 5 x 5
        r = F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False)     # 5 x 5, the last window clipped
        m = F.max_pool2d(x, 3, 2, ceil_mode=True)                           # 4 x 4 -> 5 x 5 below
        m = F.interpolate(m, size=(8, 8), mode="nearest")[:, :, :5, :5]
        return torch.relu(self.b(torch.cat([p, q, r, m], 1)))


class Shuffle(nn.Module):
    """ShuffleNetV2's split / concat / channel shuffle, MixNet's split_with_sizes, a concat of signed and
    unsigned values, a permute and slices."""

    def __init__(self):
        super().__init__()
        self.a = _conv(3, 16, 3, padding=1)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.k3, self.k5 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(10, 10, 5, padding=2)
        self.up = nn.Conv2d(18, 4, 1)
        self.fc = nn.Linear(72, 3)

    def forward(self, x):
        x = self.a(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.b(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        s3, s5 = torch.split(x, [6, 10], dim=1)
        x = torch.cat([self.k3(s3), F.relu(self.k5(s5)), s5[:, 2:4]], 1)
        y = F.interpolate(self.up(x), scale_factor=2, mode="nearest")        # 4 x 12 x 12
        y = y.permute(0, 2, 3, 1)[:, 3:9, 1:7:2]                             # N, 6, 3, 4
        return self.fc(y.reshape(n, 3, 24).reshape(n, 72))


MODELS = {"same_pad": (SamePad, 11), "concat_se": (ConcatSE, 9), "pools": (Pools, 9), "shuffle": (Shuffle, 8)}
TARGETS = ["x86-host", "x86-avx2", "generic"]


def _target(name):
    # no kernel features: the emitter's NCHW layout and Relax's generic operators
    return dataclasses.replace(load_target("x86-host"), features=()) if name == "generic" else name


@pytest.fixture(scope="module", params=sorted(MODELS))
def quantized(request):
    cls, size = MODELS[request.param]
    torch.manual_seed(0)
    model = randomize_bn(cls())
    x = torch.randn(16, 3, size, size)
    return request.param, model, quantize_ptq(model, x), x


def test_every_op_is_integer_and_close_to_float(quantized):
    name, model, graph, x = quantized
    assert not graph.float_nodes(), graph.summary()
    y = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    with torch.no_grad():
        want = model(x)
    assert float((y - want).abs().max()) <= 0.1 * float(want.abs().max()) + 1e-3, name


@pytest.mark.parametrize("target", TARGETS)
def test_bit_exact(quantized, target):
    name, _, graph, x = quantized
    xi = quantize_input(graph, x[:5] * 1.3)         # beyond the calibrated range too: the clamps matter
    ref = run_reference(graph, xi).numpy()
    out = compile_model(graph, _target(target)).run_int(xi.numpy().astype(graph.input.dtype))
    assert np.array_equal(out.astype(np.int64), ref), f"{name}: {int((out != ref).sum())} of {ref.size} differ"


def test_ops_are_the_ones_expected(quantized):
    name, _, graph, _ = quantized
    ops = [n.op for n in graph.nodes]
    expect = {"same_pad": {"move"}, "concat_se": {"concat", "channel_affine", "mul", "lut", "global_avg_pool", "flatten"},
              "pools": {"avg_pool2d", "max_pool2d", "move", "concat"}, "shuffle": {"move", "concat"}}[name]
    assert expect <= set(ops)
    if name == "concat_se":    # the widest input is on the output's scale already: copied, not requantized
        cat = next(n for n in graph.nodes if n.op == "concat")
        assert sum(rq is None for rq in cat.requants) >= 1 and sum(rq is not None for rq in cat.requants) >= 1


@pytest.mark.parametrize("h, k, s, p, ceil", [(9, 3, 2, 1, False), (9, 3, 2, 1, True), (10, 2, 2, 0, True),
                                              (7, 3, 1, 1, False), (8, 5, 3, 2, True)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_divisors_are_torchs(h, k, s, p, ceil, count_include_pad):
    ones = torch.ones(1, 1, h, h + 1, dtype=torch.float64)
    sums = F.avg_pool2d(ones, k, s, p, ceil, count_include_pad, divisor_override=1)
    means = F.avg_pool2d(ones, k, s, p, ceil, count_include_pad)
    want = (sums / means)[0, 0].round().long().numpy()
    got = avg_pool_divisors((h, h + 1), want.shape, (k, k), (s, s), (p, p), count_include_pad)
    np.testing.assert_array_equal(got, want)


def test_what_has_no_exact_integer_form_stays_a_float_island():
    """Padding with a value other than 0, nearest upsampling by 1.5, a dilated max-pool."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _conv(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            x = F.pad(self.a(x), [1, 1, 1, 1], value=0.5)
            x = F.interpolate(x, scale_factor=1.5, mode="nearest")
            return torch.relu(self.b(F.max_pool2d(x, 3, 1, dilation=2)))

    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    graph = quantize_ptq(M().eval(), x)
    assert [n.target for n, _ in graph.float_nodes()] == [
        "aten.pad.default", "aten.upsample_nearest2d.vec", "aten.max_pool2d.default"]
    assert "integer padding pads with zeros" in graph.summary()
    xi = quantize_input(graph, x)
    out = compile_model(graph, "x86-host").run_int(xi.numpy().astype(graph.input.dtype))
    assert np.abs(out.astype(np.int64) - run_reference(graph, xi).numpy()).max() <= 1
