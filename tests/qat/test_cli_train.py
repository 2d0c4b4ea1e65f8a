"""`hwq train`: a model trained on Fashion-MNIST compiles through the int8 path, and TVM predicts
exactly what the converted torch model (the integer reference) predicts."""

import json

import pytest

from hwq.cli import main
from hwq.data.fashion_mnist import DEBIAN_DIR

needs_data = pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")


@needs_data
def test_hwq_train_writes_report_and_a_compiled_model_equal_to_the_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path / "cache"))       # a small float model, cached in the test's dir
    out = tmp_path / "out"
    args = ["train", "--width", "16", "--float-epochs", "1", "--float-subset", "6000", "--train-subset", "1024", "--test-subset", "2000",
            "--artifact", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tvm_equals_reference_predictions"] is True and summary["tvm_equals_reference_outputs"] is True
    # the integer program is the fake-quantized model (up to requantization ties): same test accuracy
    assert summary["integer_accuracy"] > 50 and abs(summary["integer_accuracy"] - summary["fake_quant_accuracy"]) < 0.2
    report = json.loads((out / "sensitivity.json").read_text())
    assert [r["name"] for r in report["layers"]] == ["stem.0", "down.0", "block1.0", "block2.0", "fc"]
    assert all({"lambda", "slack", "eps", "weight_bits", "act_bits"} <= set(r) for r in report["layers"])
    assert (out / "checkpoint.pt").is_file() and (out / "artifact-x86-host" / "manifest.json").is_file()
    assert "lambda" in capsys.readouterr().out


def test_hwq_train_rejects_a_bad_target_before_training(tmp_path, capsys):
    assert main(["train", "--artifact", "--target", "raspberry-pi-6", "--out", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "'raspberry-pi-6'" in capsys.readouterr().err


@needs_data
def test_hwq_train_budget_searches_a_plan_on_the_target_and_compiles_it_exactly(tmp_path, monkeypatch, capsys):
    """``--budget``: the budget-as-dual search picks a per-layer plan predicted within the budget,
    verifies it on this machine, fine-tunes it; the artifact equals the integer reference."""
    from hwq.plan import BitPlan

    monkeypatch.setenv("HWQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["train", "--budget", "0.9x", "--target", "x86-avx2", "--latency-batch", "16", "--verify",
            "--width", "16", "--float-epochs", "1", "--float-subset", "6000", "--train-subset", "1024",
            "--test-subset", "1000", "--artifact", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    b = summary["budget"]
    assert b["budget_ms"] == pytest.approx(0.9 * b["uniform_w8a8_ms"]) and b["target"] == "x86-avx2"
    assert b["predicted_ms"] <= b["budget_ms"] * (1 + 1e-9)
    assert b["measured_ms"] > 0 and b["verify_rounds"] and b["mu"] >= 0 and b["mu_history"][0] == 0.0
    plan = BitPlan.load(out / "plan.json")
    assert json.loads(plan.to_json()) == b["plan"] and set(plan.layers) == {"stem.0", "down.0", "block1.0", "block2.0", "fc"}
    assert summary["tvm_equals_reference_predictions"] is True
    if any(spec.is_float for spec in plan.layers.values()):
        # fp32 layers sum in another order than torch: last-bit differences, at most 1 LSB where a value
        # is requantized (tests/lower/test_float_islands.py checks each border), a few thousandths of
        # a logit at the output here
        assert summary["output_max_abs_difference"] < 0.05
    else:
        assert summary["tvm_equals_reference_outputs"] is True
    assert json.loads((out / "sensitivity.json").read_text())["latency_dual"] == pytest.approx(b["loss_per_ms"])
    printed = capsys.readouterr().out
    assert "budget-as-dual search" in printed and "verify: measured" in printed and "mu*" in printed


@pytest.mark.parametrize("extra, message", [
    (["--verify"], "--verify checks a latency budget: give --budget too"),
    (["--budget", "0.8q"], "'0.8q'"),
    (["--budget", "0.8x", "--plan", "p.json"], "drop --plan 'p.json'"),
    (["--budget", "0.8x", "--resume"], "--resume is not supported with --budget"),
    (["--budget", "0.8x", "--latency-batch", "0"], "latency_batch and search_epochs must be >= 1"),
])
def test_hwq_train_budget_rejects_bad_options_before_training(tmp_path, capsys, extra, message):
    assert main(["train", *extra, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "out").exists()
