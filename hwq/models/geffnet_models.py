"""Mobile ImageNet architectures from ``geffnet`` (Ross Wightman's gen-efficientnet-pytorch), random weights.

``geffnet`` (pinned in ``scripts/setup.sh``, installed with ``--no-deps``: it declares torchvision
but never imports it) defines MobileNetV3, EfficientNet, MnasNet, MixNet, FBNet and
Single-Path NAS. ``geffnet_model`` builds one with ``pretrained=False`` (no download is ever
attempted) and with the layers torch itself provides for its activations, so that a
``torch.export`` graph shows each as one operator (``aten.hardswish``, ``aten.hardsigmoid``,
``aten.silu``, ``aten.sigmoid``) rather than geffnet's arithmetic for it (``x * relu6(x + 3) / 6``
would otherwise look like an add, a ReLU6 and two scalings to an integer lowering), none of them
in place. The swap is exact: geffnet's formulas are the ones torch's ops compute.

Random weights leave BatchNorm's default statistics; see ``hwq.models.batch_norm``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from hwq.errors import ConfigError, DataError, choices

# the architectures hwq offers (geffnet has more); each takes 3x224x224 inputs
GEFFNET_MODELS = ("mobilenetv3_large_100", "mobilenetv3_small_100", "efficientnet_b0", "tf_efficientnet_lite0",
                  "mnasnet_100", "mixnet_s", "fbnetc_100", "spnasnet_100")


def geffnet_model(name: str, num_classes: int = 1000) -> nn.Module:
    """The ``geffnet`` architecture ``name`` with random weights, in eval mode.

    Args:
        name: one of ``GEFFNET_MODELS``.
        num_classes: outputs of the classifier.

    Raises:
        ConfigError: ``name`` is not in ``GEFFNET_MODELS``.
        DataError: geffnet is not installed.
    """
    if name not in GEFFNET_MODELS:
        raise ConfigError(f"unknown geffnet model {name!r}; valid: {choices(GEFFNET_MODELS)}")
    if importlib.util.find_spec("geffnet") is None:
        raise DataError("geffnet is not installed: 'pip install --no-deps geffnet==1.0.2' (scripts/setup.sh does; "
                        "--no-deps because it declares torchvision, which it never imports)")
    import geffnet

    # no_jit: plain modules (not geffnet's TorchScript or custom-autograd activations), and for
    # tf_* models the TensorFlow "SAME" padding computed in forward (F.pad) rather than in a
    # module that builds itself on the first call (``exportable``)
    model = geffnet.create_model(name, pretrained=False, num_classes=num_classes, no_jit=True)
    return _torch_activations(model).eval()


def _torch_activations(model: nn.Module) -> nn.Module:
    from geffnet.activations import activations as act
    from geffnet.efficientnet_builder import SqueezeExcite

    layers = {act.HardSwish: nn.Hardswish, act.HardSigmoid: nn.Hardsigmoid, act.Swish: nn.SiLU,
              act.Sigmoid: nn.Sigmoid}
    functions = {act.hard_sigmoid: F.hardsigmoid, act.sigmoid: torch.sigmoid, act.swish: F.silu,
                 act.hard_swish: F.hardswish}
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if type(child) in layers:
                setattr(parent, child_name, layers[type(child)]())
            elif getattr(child, "inplace", False) is True:
                child.inplace = False      # eval-mode export: no gain from in-place, and a graph without mutation
        if isinstance(parent, SqueezeExcite) and parent.gate_fn in functions:
            parent.gate_fn = functions[parent.gate_fn]
    return model
