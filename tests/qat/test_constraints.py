"""The constraint values equal a direct computation with torch's fake quantizers; the dual step is
the projected ascent formula; on a tiny problem the primal-dual iteration reaches feasibility."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from hwq.plan import BitPlan, LayerSpec
from hwq.qat import QATConfig, float_mode, quantize_, train_constrained
from hwq.qat.api import act_quantizers
from hwq.qat.constraints import Lagrangian, dual_step

ZERO = torch.tensor(0, dtype=torch.int32)


class Tiny(nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.c = nn.Conv2d(1, channels, 3, padding=1)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        x = torch.relu(self.c(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _task(n=256, seed=0):
    """Three classes of noise images, told apart by their mean brightness."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.6 + 0.2 * y.float().view(-1, 1, 1, 1)
    return x, y


def _prepared(bits=(4, 4), seed=0):
    torch.manual_seed(seed)
    x, y = _task()
    return quantize_(Tiny().eval(), BitPlan(default=LayerSpec(*bits)), calibration=x), x, y


def _direct(prepared, model, x, norm):
    """g of both layers with torch's own fake-quantize ops, following the definitions by hand."""
    scales = {q.node: q.current_scale() for q in act_quantizers(prepared)}
    z = torch.fake_quantize_per_tensor_affine(x, scales["__input__"], ZERO, 0, 255)
    g = []

    def constraint(fp, q):
        err = (fp - q).pow(2).mean()
        return err / fp.pow(2).mean() if norm == "relative" else err

    def per_channel(t, s, qmax):
        return torch.fake_quantize_per_channel_affine(t, s, torch.zeros(len(t), dtype=torch.int32), 0, -qmax, qmax)

    def quantized(w, b, s_in):
        """4-bit weights (max-abs per channel) and the bias on the int32 grid s_in * s_w."""
        s_w = w.abs().reshape(len(w), -1).amax(1) / 7
        return per_channel(w, s_w, 7), per_channel(b, s_in * s_w, 2 ** 31 - 1)

    w, b = model.c.weight, model.c.bias
    fp = torch.relu(F.conv2d(z, w, b, padding=1))
    q = torch.relu(F.conv2d(z, *quantized(w, b, scales["__input__"]), padding=1))
    q = torch.fake_quantize_per_tensor_affine(q, scales["relu"], ZERO, 0, 15)
    g.append(constraint(fp, q))
    pooled = torch.fake_quantize_per_tensor_affine(q.mean(dim=(2, 3), keepdim=True), scales["adaptive_avg_pool2d"], ZERO, 0, 15)
    z = pooled.flatten(1)
    w, b = model.fc.weight, model.fc.bias
    g.append(constraint(F.linear(z, w, b), F.linear(z, *quantized(w, b, scales["adaptive_avg_pool2d"]))))
    return torch.stack(g)


@pytest.mark.parametrize("norm", ["relative", "mse"])
@pytest.mark.parametrize("mode", ["fp", "ste"])
def test_constraint_values_equal_a_direct_computation(mode, norm):
    torch.manual_seed(0)
    model = Tiny().eval()
    x, y = _task()
    prepared = quantize_(model, BitPlan(default=LayerSpec(4, 4)), calibration=x).eval()
    config = QATConfig(gradient_mode=mode, constraint_norm=norm, eps_output=0.5)
    with torch.no_grad():
        loss, g, out_q = Lagrangian(prepared, config)(x, y)
        expected = _direct(prepared, model, x, norm)
        out_fp = model(x)
    assert torch.allclose(g[:2], expected, rtol=1e-5, atol=1e-9) and (expected > 0).all()
    assert torch.allclose(g[2], -(F.softmax(out_fp, 1) * F.log_softmax(out_q, 1)).sum(1).mean(), rtol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(out_fp if mode == "fp" else out_q, y), rtol=1e-6)


def test_fp_mode_weights_get_float_path_gradients_only():
    prepared, x, y = _prepared()
    lag = Lagrangian(prepared, QATConfig(gradient_mode="fp"))
    loss, g, _ = lag(x, y)
    weight = lag.layers[0].weight
    (grad_loss,) = torch.autograd.grad(loss, weight, retain_graph=True)
    with float_mode(prepared):
        (grad_float,) = torch.autograd.grad(F.cross_entropy(prepared(x), y), weight)
    assert torch.allclose(grad_loss, grad_float)           # the loss runs through the float path
    (grad_g,) = torch.autograd.grad(g[0], weight)
    assert grad_g.abs().sum() > 0                          # the constraint reaches the weights (through f_fp)


def test_dual_step_is_projected_ascent():
    lam = torch.tensor([0.0, 1.0, 2.0, 0.5])
    slack = torch.tensor([-1.0, 0.5, -3.0, 0.0])
    assert torch.equal(dual_step(lam, slack, 0.5), torch.tensor([0.0, 1.25, 0.5, 0.5]))


def test_trainer_dual_update_follows_the_formula():
    prepared, x, y = _prepared()
    config = QATConfig(epochs=1, batch_size=len(x), dual_period=1, dual_lr=3.0, eps=0.001, eps_output=0.01)
    report = train_constrained(prepared, TensorDataset(x, y), config, progress=False, log=lambda s: None)
    for row in report.layers + (report.output,):     # one step: λ = max(0, 0 + η · slack of that step)
        assert row.lam == pytest.approx(max(0.0, 3.0 * row.slack), rel=1e-9)
    assert any(row.lam > 0 for row in report.layers)


def test_training_reaches_feasibility_while_the_loss_falls():
    prepared, x, y = _prepared(bits=(2, 8))
    config = QATConfig(epochs=10, batch_size=32, lr=1e-2, dual_lr=20.0, eps=0.05, dual_period=2, gradient_mode="fp",
                       constraint_norm="relative")
    with torch.no_grad():
        _, g0, _ = Lagrangian(prepared.eval(), config)(x, y)
    assert float((g0 - 0.05).max()) > 0.02                 # 2-bit weights: the layers start outside the bound
    report = train_constrained(prepared, TensorDataset(x, y), config, progress=False, log=lambda s: None)
    assert report.history[-1]["max_slack"] <= 0
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    assert max(row.lam for row in report.layers) > 0       # the duals did the work


def test_ste_output_constraint_compares_with_a_frozen_float_model():
    # with the trained weights on both sides, one confident class everywhere would satisfy any bound
    torch.manual_seed(0)
    model = Tiny().eval()
    x, y = _task()
    prepared = quantize_(model, BitPlan(default=LayerSpec(4, 4)), calibration=x).eval()
    lag = Lagrangian(prepared, QATConfig(gradient_mode="ste", eps_output=0.5))
    with torch.no_grad():
        for layer in lag.layers:
            layer.weight.mul_(0.5)                 # training moved the weights
        _, g, out_q = lag(x, y)
        out_fp = model(x)                          # the float model training started from
    assert torch.allclose(g[-1], -(F.softmax(out_fp, 1) * F.log_softmax(out_q, 1)).sum(1).mean(), rtol=1e-5)
    assert list(lag.state_dict()) == [f"model.{k}" for k in prepared.state_dict()]   # no copy in checkpoints
