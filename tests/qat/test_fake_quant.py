"""The fake quantizer is torch's fake_quantize_per_{tensor,channel}_affine, forward and backward."""

import pytest
import torch

from hwq.qat.fake_quant import ActFakeQuantize, WeightFakeQuantize, fake_quantize, integer_values
from hwq.spec import QuantSpec

RANGES = [(-127, 127), (0, 255), (-7, 7), (0, 15), (-1, 1), (0, 3)]


@pytest.mark.parametrize("qmin, qmax", RANGES)
def test_per_tensor_equals_torch(qmin, qmax):
    g = torch.Generator().manual_seed(qmax)
    x = torch.randn(4096, generator=g) * 3
    for s in (0.0123, 0.1, 1 / 255, 0.37):
        scale = torch.tensor(s, dtype=torch.float32)
        ref = torch.fake_quantize_per_tensor_affine(x, scale, torch.tensor(0, dtype=torch.int32), qmin, qmax)
        assert torch.equal(fake_quantize(x, scale, qmin, qmax), ref)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_per_channel_equals_torch_and_the_converters_rule(bits):
    spec = QuantSpec(bits, signed=True, granularity="per_channel")
    qmin, qmax = spec.qmin, spec.qmax
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 8, 3, 3, generator=g) * torch.rand(16, 1, 1, 1, generator=g)
    wfq = WeightFakeQuantize(spec, w)
    s = wfq.current_scale(w)
    assert torch.equal(s.reshape(-1), w.abs().amax(dim=(1, 2, 3)) / qmax)     # max-abs / qmax, as convert does
    ref = torch.fake_quantize_per_channel_affine(w, s.reshape(-1), torch.zeros(16, dtype=torch.int32), 0, qmin, qmax)
    out = wfq(w)
    assert torch.equal(out, ref)
    ints, scales = wfq.integers(w)
    assert torch.equal(ints.float() * scales.float().reshape(-1, 1, 1, 1), out)


def test_straight_through_gradient_equals_torch():
    x1 = (torch.randn(2000) * 2).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    grad = torch.randn(2000)
    scale = torch.tensor(0.25)
    (torch.fake_quantize_per_tensor_affine(x1, scale, torch.tensor(0, dtype=torch.int32), -7, 7) * grad).sum().backward()
    (fake_quantize(x2, scale, -7, 7) * grad).sum().backward()
    assert torch.equal(x1.grad, x2.grad) and (x2.grad == 0).any() and (x2.grad != 0).any()


@pytest.mark.parametrize("qmin, qmax", [(-7, 7), (0, 3)])
def test_learned_scale_gradient_equals_torch_lsq(qmin, qmax):
    x = torch.randn(1000) * 2
    grad = torch.randn(1000)
    s1 = torch.tensor([0.3], requires_grad=True)
    s2 = torch.tensor(0.3, requires_grad=True)
    y1 = torch._fake_quantize_learnable_per_tensor_affine(x, s1, torch.tensor([0.0]), qmin, qmax, 0.5)
    y2 = fake_quantize(x, s2, qmin, qmax, grad_factor=0.5)
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    assert torch.equal(y1, y2) and torch.allclose(s1.grad[0], s2.grad, rtol=1e-5)


def test_integer_values_match_fake_quantize():
    x = torch.randn(500)
    s = torch.tensor(0.05)
    assert torch.equal(integer_values(x, s, -7, 7).float() * s, fake_quantize(x, s, -7, 7))


def test_activation_quantizer_calibrates_then_tracks_a_moving_average():
    fq = ActFakeQuantize(QuantSpec(4, signed=False), "relu", momentum=0.5)
    fq.calibrating = True
    assert torch.equal(fq(torch.tensor([0.0, 2.0])), torch.tensor([0.0, 2.0]))      # passes through while calibrating
    fq(torch.tensor([0.0, 3.0]))
    fq.finish_calibration()
    assert float(fq.max_val) == 3.0 and float(fq.current_scale()) == pytest.approx(3.0 / 15)
    fq.train()
    fq(torch.tensor([0.0, 5.0]))
    assert float(fq.max_val) == 4.0                                                    # 3 + 0.5 * (5 - 3)
    fq.eval()
    fq(torch.tensor([0.0, 9.0]))
    assert float(fq.max_val) == 4.0                                                    # frozen in eval mode
