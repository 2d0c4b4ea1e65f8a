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
