"""Zoo models by name, for the commands that take ``MODEL`` (``hwq profile``, ``cost``, ``allocate``, ``tune``).

A profile or a cost estimate needs only the model's shapes, so ``example_graph`` quantizes a model
whose weights are random (or, for MobileNetV2, ImageNet's: 50 untrained layers deep, activations
vanish and scales degenerate) on random calibration data.
"""

from __future__ import annotations

import difflib

import torch

from hwq import qgraph as qg
from hwq.errors import ConfigError, choices
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
