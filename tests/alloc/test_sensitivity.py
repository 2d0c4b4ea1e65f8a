"""Per-layer, per-option sensitivities: the three estimators on a small ResCNN, each checked against
its definition (duals: λ·Δg by hand; Hessian: Hutchinson against an exact trace; measured: a layer
at 2 bits costs more than at 8), the JSON table, rank agreement, and errors that say what to do."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hwq.alloc.hessian import hutchinson_traces
from hwq.alloc.layer_bits import layer_option, layer_options
from hwq.alloc.sensitivities import Sensitivities, option_name, parse_option, rank_agreement
from hwq.alloc.sensitivity import layer_sensitivities
from hwq.errors import ConfigError
from hwq.models import ResCNN
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import LayerSensitivity, SensitivityReport, quant_layers, quantize_
from tests.conftest import randomize_bn

OPTIONS = [LayerSpec(8, 8), LayerSpec(7, 8), LayerSpec(4, 8), LayerSpec(4, 4), LayerSpec(2, 2)]
LAYERS = ["stem.0", "down.0", "block1.0", "block2.0", "fc"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(192, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (192,), generator=g)
    prepared = quantize_(randomize_bn(ResCNN(width=8)), BitPlan(), calibration=x[:128])
    return prepared.eval(), (x[128:], y[128:])


def _report(lams):
    return SensitivityReport(tuple(LayerSensitivity(n, lam, 0.0, 0.01, 8, 8) for n, lam in zip(LAYERS, lams)))


@pytest.mark.parametrize("method", ["duals", "hessian", "measured"])
def test_every_layer_and_option_finite_and_zero_at_the_reference(setup, method):
    prepared, data = setup
    before = prepared(data[0][:8])
    s = layer_sensitivities(prepared, OPTIONS, data, method, report=_report([0.5, 1.0, 2.0, 3.0, 4.0]),
                            batch_size=32, samples=2)
    assert s.method == method and s.layers == LAYERS
    for row in s.values.values():
        assert list(row) == [option_name(o) for o in OPTIONS]
        assert all(math.isfinite(v) for v in row.values())
        assert row["w8a8"] == 0.0
    assert torch.equal(prepared(data[0][:8]), before)        # every quantizer is back as it was


def test_duals_is_lambda_times_the_constraint_change(setup):
    prepared, (x, y) = setup
    lam = 1.7
    s = layer_sensitivities(prepared, {"block1.0": [LayerSpec(8, 8), LayerSpec(4, 4)]}, (x, y), "duals",
                            report=_report([0.0, 0.0, lam, 0.0, 0.0]), batch_size=len(x))
    layer = next(m for m in quant_layers(prepared) if m.name == "block1.0")
    seen = {}
    hook = layer.register_forward_hook(lambda m, args, out: seen.setdefault("z", args[0]))
    with torch.no_grad():
        prepared(x)
    hook.remove()

    def relative_mse(bits):
        wfq, ofq = layer.weight_fq, layer.out_fq
        old = wfq.spec, ofq.spec
        wfq.spec, ofq.spec = replace(wfq.spec, bits=bits), replace(ofq.spec, bits=bits)
        try:
            with torch.no_grad():
                fp = layer.float_forward(seen["z"])
                q = layer.quant_forward(seen["z"], observe=False)
            return float((fp - q).pow(2).mean() / fp.pow(2).mean())
        finally:
            wfq.spec, ofq.spec = old

    assert s.values["block1.0"]["w4a4"] == pytest.approx(lam * (relative_mse(4) - relative_mse(8)), rel=1e-9)
    assert s.values["block1.0"]["w4a4"] > 0
    assert s.meta["lambda"] == {"block1.0": lam}


def test_duals_price_an_fp32_layer_at_the_plans_activation_width_not_the_runs():
    """The duals come from a run prepared at W4A4, the plans default to W8A8: an fp32 layer's output
    is read at 8 bits there, so its constraint change is at most W8A8's (exact weights), never the
    4-bit output error of the run (which once made fp32 look like W8A4 to the knapsack)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    w4a4 = quantize_(randomize_bn(ResCNN(width=8)), BitPlan(default=LayerSpec(4, 4)), calibration=x[:64]).eval()
    before = w4a4(x[:8])
    s = layer_sensitivities(w4a4, ["w8a8", "fp32", "w8a4"], (x[64:], y[64:]), "duals",
                            report=_report([1.0] * 5), batch_size=32)
    for name in LAYERS[:-1]:                    # fc: its int32 output has no output quantizer
        row = s.values[name]
        assert row["fp32"] <= 1e-12 and row["w8a4"] > 1e-6 > row["fp32"], (name, row)
    assert torch.equal(w4a4(x[:8]), before)     # the 4-bit output quantizers are back


def test_duals_of_a_slack_layer_are_zero(setup):
    prepared, data = setup
    s = layer_sensitivities(prepared, ["w8a8", "w2a2"], data, "duals", report=_report([0.0, 1.0, 0.0, 0.0, 0.0]))
    assert s.values["stem.0"]["w2a2"] == 0.0 and s.values["down.0"]["w2a2"] > 0


def test_hutchinson_matches_the_exact_trace_of_least_squares():
    # L(W) = 1/N sum_i ||W x_i - y_i||^2 with W (k x d): H = (2/N) X^T X (x) I_k, Tr H = 2k/N ||X||_F^2
    g = torch.Generator().manual_seed(0)
    n, d, k = 64, 5, 3
    X, Y = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, k, generator=g, dtype=torch.float64)
    W = torch.randn(k, d, generator=g, dtype=torch.float64, requires_grad=True)
    samples = 400
    (trace,) = hutchinson_traces(lambda: ((X @ W.T - Y).pow(2).sum(1).mean(), [W]), samples, g)
    exact = 2 * k / n * float(X.pow(2).sum())
    # Var(v^T H v) = 2 * sum of the squared off-diagonal entries of H; allow 4 standard errors
    H = torch.kron(2 / n * X.T @ X, torch.eye(k, dtype=torch.float64))
    stderr = math.sqrt(2 * float(H.pow(2).sum() - H.diagonal().pow(2).sum()) / samples)
    assert abs(trace - exact) < 4 * stderr
    assert stderr < 0.1 * exact


def test_a_loss_linear_in_a_tensor_has_zero_trace():
    w, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    traces = hutchinson_traces(lambda: ((w * w).sum() + b.sum(), [w, b]), 3, torch.Generator().manual_seed(0))
    assert traces == [6.0, 0.0]


def test_layer_option_changes_bits_and_learned_scales_then_restores_them():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    prepared = quantize_(randomize_bn(ResCNN(width=8)), BitPlan(), calibration=x, range_mode="learned")
    layer = quant_layers(prepared)[1]
    w_scale, a_scale = layer.weight_fq.scale.detach().clone(), layer.out_fq.scale.detach().clone()
    with layer_option(layer, LayerSpec(4, 4)):
        assert layer.weight_fq.spec.bits == 4 and layer.out_fq.spec.bits == 4
        assert not torch.equal(layer.weight_fq.scale, w_scale)
        # the trained clipping range kept, with 15 steps instead of 255
        assert float(layer.out_fq.scale.detach()) == pytest.approx(float(a_scale) * 255 / 15)
    assert layer.weight_fq.spec.bits == 8 and layer.out_fq.spec.bits == 8
    assert torch.equal(layer.weight_fq.scale, w_scale) and torch.equal(layer.out_fq.scale, a_scale)
    with layer_options(prepared, {"fc": LayerSpec(3, 5)}):
        assert quant_layers(prepared)[-1].weight_fq.spec.bits == 3


def _brightness_task(n=512, seed=0):
    """Three classes of noise images told apart by their mean brightness, and a ResCNN that learned them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.6 + 0.2 * y.float().view(-1, 1, 1, 1)
    torch.manual_seed(seed)
    model = ResCNN(num_classes=3, width=8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, n - 128, 32):
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[-128:], y[-128:]


def test_measured_two_bits_cost_more_than_eight_on_a_trained_model():
    model, x, y = _brightness_task()
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) > 0.9
    prepared = quantize_(model, BitPlan(), calibration=x)
    s = layer_sensitivities(prepared, ["w8a8", "w2a8"], (x, y), "measured", batch_size=128)
    # the stem at 2 bits blurs the brightness the classes differ by
    assert s.values["stem.0"]["w2a8"] > 0.1 > s.values["stem.0"]["w8a8"] == 0.0
    assert s.meta["images"] == 128 and 0 < s.meta["reference_loss"] < 0.1


def test_json_round_trip_and_table_for_the_solver():
    s = Sensitivities({"stem.0": {"w8a8": 0.0, "w4a4": 0.25}, "fc": {"w8a8": 0.0, "w7a8": 1e-5}}, "hessian",
                      meta={"samples": 8})
    back = Sensitivities.from_json(s.to_json())
    assert back == s and back.meta == {"samples": 8} and back.layers == ["stem.0", "fc"]
    assert s.table() == {"stem.0": {LayerSpec(8, 8): 0.0, LayerSpec(4, 4): 0.25},
                         "fc": {LayerSpec(8, 8): 0.0, LayerSpec(7, 8): 1e-5}}
    assert s.losses("stem.0", ["w4a4", "w8a8"]) == (0.25, 0.0)
    assert "w4a4" in s.text_table()
    with pytest.raises(ConfigError, match=r"no sensitivities for layer 'stem'; did you mean 'stem.0'"):
        s.losses("stem", ["w8a8"])
    with pytest.raises(ConfigError, match=r"no sensitivity of layer 'fc' for options \['w4a4'\]; "
                                          r"it has 'w7a8', 'w8a8'"):
        s.losses("fc", ["w8a8", "w4a4"])
    assert parse_option("w7a8") == LayerSpec(7, 8) and option_name(LayerSpec(2, 6)) == "w2a6"


def test_rank_agreement():
    truth = Sensitivities({"a": {"w8a8": 0.0, "w4a8": 1.0, "w2a2": 3.0}, "b": {"w8a8": 0.0, "w4a8": 0.5, "w2a2": 2.0}},
                          "measured")
    same_order = Sensitivities({k: {o: 10 * v for o, v in row.items()} for k, row in truth.values.items()}, "hessian")
    reversed_ = Sensitivities({k: {o: -v for o, v in row.items()} for k, row in truth.values.items()}, "duals")
    assert rank_agreement(same_order, truth) == pytest.approx(1.0)
    assert rank_agreement(reversed_, truth) == pytest.approx(-1.0)
    assert rank_agreement(same_order, truth, by="layers") == pytest.approx(1.0)


def test_bad_input_names_the_value_and_the_choices(setup):
    prepared, data = setup
    with pytest.raises(ConfigError, match=r"layer 'block1' is not a quantizable layer of the model; "
                                          r"did you mean 'block1.0'"):
        layer_sensitivities(prepared, {"block1": OPTIONS}, data, "measured")
    with pytest.raises(ConfigError, match=r"method 'hutchinson' is not one of 'duals', 'hessian', 'measured'"):
        layer_sensitivities(prepared, OPTIONS, data, "hutchinson")
    with pytest.raises(ConfigError, match=r"method 'duals' needs report="):
        layer_sensitivities(prepared, OPTIONS, data, "duals")
    with pytest.raises(ConfigError, match=r"option name 'int4' is not 'fp32' nor of the form"):
        layer_sensitivities(prepared, ["w8a8", "int4"], data, "measured")
    with pytest.raises(ConfigError, match=r"no dual for layers \['fc'\]"):
        layer_sensitivities(prepared, OPTIONS, data, "duals", report=_report([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match=r"by='spearman' is not one of 'layers', 'pairs'"):
        rank_agreement(Sensitivities({"a": {"w8a8": 0.0}}, "duals"), Sensitivities({"a": {"w8a8": 0.0}}, "duals"),
                       by="spearman")
    with pytest.raises(ConfigError, match=r"values\['fc'\]\['w4a4'\] must be a finite number, got nan"):
        Sensitivities({"fc": {"w4a4": float("nan")}}, "measured")
    with pytest.raises(ConfigError, match=r"not a Sensitivities JSON document"):
        Sensitivities.from_json('{"values": {}}')
