"""The trainer: checkpoint and resume reproduce an uninterrupted run, progress bars, config and report JSON."""

import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import QATConfig, SensitivityReport, quantize_, train_constrained
from hwq.qat import train as train_module
from test_constraints import Tiny, _task

CONFIG = QATConfig(epochs=2, batch_size=32, lr=1e-2, dual_lr=5.0, eps=0.0, dual_period=2)  # ε = 0: λ grows; 3 steps per epoch: a dual period spans the checkpoint


def _fresh():
    torch.manual_seed(0)
    x, y = _task(n=96)
    return quantize_(Tiny().eval(), BitPlan(default=LayerSpec(4, 4)), calibration=x, range_mode="learned"), x, y


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    model, x, y = _fresh()
    straight = train_constrained(model, TensorDataset(x, y), CONFIG, progress=False, log=lambda s: None)

    interrupted, x, y = _fresh()
    real_epoch = train_module._Trainer._train_epoch

    def crash_in_second_epoch(self, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch, *args)

    monkeypatch.setattr(train_module._Trainer, "_train_epoch", crash_in_second_epoch)
    ckpt = tmp_path / "qat.pt"
    with pytest.raises(KeyboardInterrupt):
        train_constrained(interrupted, TensorDataset(x, y), CONFIG, checkpoint=ckpt, progress=False, log=lambda s: None)
    monkeypatch.setattr(train_module._Trainer, "_train_epoch", real_epoch)
    resumed_model, x, y = _fresh()
    lines = []
    resumed = train_constrained(resumed_model, TensorDataset(x, y), CONFIG, checkpoint=ckpt, resume=True,
                                progress=False, log=lines.append)
    assert "resumed" in lines[0] and "after epoch 1" in lines[0]
    assert resumed.lambdas() == straight.lambdas() and resumed.history == straight.history
    assert min(straight.lambdas().values()) > 0
    for a, b in zip(resumed_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="another QATConfig"):
        train_constrained(_fresh()[0], TensorDataset(x, y), QATConfig(epochs=2, dual_lr=1.0), checkpoint=ckpt, resume=True,
                          progress=False, log=lambda s: None)


def test_progress_bar_shows_loss_accuracy_slack_and_lambda(capsys):
    model, x, y = _fresh()
    train_constrained(model, TensorDataset(x, y), QATConfig(epochs=1, batch_size=32), progress=True, log=print)
    captured = capsys.readouterr()
    assert all(k in captured.err for k in ("loss=", "acc=", "max_slack=", "sum_lambda="))
    assert "epoch 1/1: loss" in captured.out


def test_report_json_round_trip_and_top_layers(tmp_path):
    model, x, y = _fresh()
    report = train_constrained(model, TensorDataset(x, y), QATConfig(epochs=1, batch_size=32, eps_output=0.9),
                               eval_data=TensorDataset(x, y), progress=False, log=lambda s: None)
    path = report.save(tmp_path / "r" / "sensitivity.json")
    again = SensitivityReport.from_json(path.read_text())
    assert again == report and 0 <= report.accuracy <= 100
    assert [r.name for r in report.layers] == ["c", "fc"] and report.output.name == "output"
    assert (report.layers[0].weight_bits, report.layers[0].act_bits, report.layers[1].act_bits) == (4, 4, None)
    assert '"lambda"' in path.read_text()
    lams = report.lambdas()
    assert report.top_layers(2) == sorted(lams, key=lambda n: -lams[n]) and report.top_layers(1) == report.top_layers(2)[:1]
    # ranked by lambda, not execution order: either order comes out, and ties keep execution order
    ranked = {(0.5, 2.0): ["fc"], (3.0, 2.0): ["c"], (1.0, 1.0): ["c"]}
    for (lam_c, lam_fc), top in ranked.items():
        crafted = dataclasses.replace(report, layers=(dataclasses.replace(report.layers[0], lam=lam_c),
                                                      dataclasses.replace(report.layers[1], lam=lam_fc)))
        assert crafted.top_layers(1) == top and crafted.top_layers(2) == top + [n for n in ("c", "fc") if n not in top]
        assert SensitivityReport.from_json(crafted.to_json()).top_layers(1) == top
    with pytest.raises(ConfigError):
        SensitivityReport.from_json("{}")


def test_qat_config_validates_and_round_trips():
    c = QATConfig(eps_layers={"fc": 0.1}, dual_period="epoch", eps_output=0.4, gradient_mode="ste")
    assert QATConfig.from_json(c.to_json()) == c and c.eps_for("fc") == 0.1 and c.eps_for("c") == c.eps
    for kwargs, word in [({"gradient_mode": "paper"}, "'fp', 'ste'"), ({"dual_period": 0}, "dual_period"),
                         ({"eps": -1.0}, "eps"), ({"epochs": 0}, "epochs"), ({"optimizer": "lamb"}, "'adam'"),
                         ({"constraint_norm": "l1"}, "'mse', 'relative'"), ({"dual_lr": -1.0}, "dual_lr")]:
        with pytest.raises(ConfigError, match=word):
            QATConfig(**kwargs)
    with pytest.raises(ConfigError, match="unknown QATConfig fields"):
        QATConfig.from_json('{"epoch": 3}')
