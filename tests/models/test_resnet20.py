"""ResNet-20 from the zoo: 22 quantizable layers, its int8 program follows the float model, and it
trains and caches through ``load_or_train``."""

import numpy as np
import torch

from hwq.data import FashionMNIST
from hwq.models import ResNet20, TrainConfig, load_or_train
from hwq.plan import BitPlan
from hwq.qat import quant_layers, quantize_, quantize_ptq, run_reference
from hwq.qat.reference import dequantize_output, quantize_input
from tests.conftest import randomize_bn


def test_layout_is_resnet20():
    model = ResNet20()
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 22                        # 19 3x3 convs, two 1x1 shortcuts, the classifier
    assert sum(p.numel() for p in model.parameters()) == 272_186
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_int8_program_follows_the_float_model():
    torch.manual_seed(0)
    model = randomize_bn(ResNet20())
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    graph = quantize_ptq(model, x)
    ops = [n.op for n in graph.nodes]
    assert ops.count("conv2d") == 21 and ops.count("add") == 9 and ops.count("dense") == 1
    out = dequantize_output(graph, run_reference(graph, quantize_input(graph, x)))
    with torch.no_grad():
        ref = model(x)
    assert float((out - ref).norm() / ref.norm()) < 0.05     # int8 rounding through 20 layers


def test_prepare_names_every_layer():
    model = randomize_bn(ResNet20())
    prepared = quantize_(model, BitPlan(), calibration=torch.rand(8, 1, 28, 28))
    names = [layer.name for layer in quant_layers(prepared)]
    assert len(names) == 22 and names[0] == "stem.0" and names[-1] == "fc"
    assert "stage2.0.shortcut.0" in names


def test_trains_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    data = FashionMNIST(rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64))
    config = TrainConfig(epochs=1, batch_size=32)
    torch.manual_seed(0)
    trained, cached = load_or_train(ResNet20(), data, config, log=lambda s: None)
    assert not cached and len(list(tmp_path.glob("resnet20-*.pt"))) == 1
    loaded, cached = load_or_train(ResNet20(), data, config, log=lambda s: None)
    assert cached
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
