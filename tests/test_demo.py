"""The demo's figures: int8 accuracy and agreement come from the dequantized logits.

The data, the trained model and the timings are replaced by small stand-ins; quantization, the
TVM build and the accuracy computation are the demo's own.
"""

import numpy as np
import pytest
import torch
from torch import nn

import hwq.demo as demo
from hwq.data import FashionMNIST
from hwq.models.train import to_float_input


class _SkewedClassifier(nn.Module):
    """A classifier whose last layer's rows differ in scale by 10^4: the int32 accumulators of
    class c are then about logit_c / row_scale_c, and their argmax is mostly the wrong class."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 13 * 13, 10, bias=False)
        with torch.no_grad():
            self.fc.weight.mul_(torch.logspace(-2, 2, 10).reshape(10, 1))

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_demo_accuracy_uses_dequantized_logits(monkeypatch):
    model = _SkewedClassifier().eval()
    images = np.random.default_rng(0).integers(0, 256, (600, 1, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        labels = model(to_float_input(images)).argmax(1).numpy()    # fp32 is right on every image
    data = FashionMNIST(images, labels)
    monkeypatch.setattr(demo, "load_fashion_mnist", lambda split, data_dir=None: data)
    monkeypatch.setattr(demo, "load_or_train", lambda m, d, c, log=print: (model, True))
    monkeypatch.setattr(demo, "median_ms", lambda fn, **kw: (fn(), 1.0)[1])

    r = demo.run_demo(demo.DemoConfig(calibration_images=200, batch_sizes=(1,)), log=lambda s: None)
    acc = r["accuracy"]
    assert acc["fp32_torch"] == 100.0
    assert r["bit_exact"]["identical_int_logits"] == len(data)
    # int8 of a model that fp32 gets fully right: only a few borderline images may flip
    assert r["peak_memory"]["calibration"]["peak_rss_mib"] > 0 and r["peak_memory"]["compile"]["peak_rss_mib"] > 0
    assert "peak resident memory" in demo.format_table(r)
    assert acc["int8_tvm"] == pytest.approx(acc["int8_top1_agreement_with_fp32"]) and acc["int8_tvm"] > 90
