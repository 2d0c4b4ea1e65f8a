"""ShuffleNetV2 1.0x (Ma et al., ECCV 2018) for 3x224x224 ImageNet inputs, as torchvision defines it.

Module structure and parameter names follow ``torchvision.models.shufflenetv2``; 2 278 604
parameters. Besides convs, BN and ReLU, its graph has the two ops a channel-split network needs:
``chunk`` (a stride-1 unit passes half its channels straight through) and ``cat``, then the channel
shuffle as ``view`` / ``transpose`` / ``view``.
"""

from __future__ import annotations

import torch
from torch import nn

from hwq.errors import ConfigError


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: (g, c/g) -> (c/g, g), via view/transpose/view."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(nn.Module):
    """A ShuffleNetV2 unit: split (stride 1) or duplicate (stride 2), one branch transformed, concat, shuffle."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"stride {stride!r} of a ShuffleNetV2 unit; valid: 1, 2")
        branch = oup // 2
        if stride == 1 and inp != 2 * branch:
            raise ConfigError(f"a stride-1 ShuffleNetV2 unit keeps its width: inp {inp!r} != oup {oup!r}")
        self.stride = stride
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(_depthwise(inp, stride), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(),
            _depthwise(branch, stride), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """3x3 stride-2 stem, max-pool, three stages of units, 1x1 conv5, global mean, linear.

    Args:
        stages_repeats: units per stage (stage2, stage3, stage4).
        stages_out_channels: widths of the stem, the three stages and conv5.
        num_classes: outputs of the classifier.
    """

    def __init__(self, stages_repeats: tuple[int, int, int], stages_out_channels: tuple[int, int, int, int, int],
                 num_classes: int = 1000):
        super().__init__()
        cin = stages_out_channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (repeats, cout) in enumerate(zip(stages_repeats, stages_out_channels[1:4])):
            units = [InvertedResidual(cin, cout, 2)] + [InvertedResidual(cout, cout, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            cin = cout
        cout = stages_out_channels[-1]
        self.conv5 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.fc = nn.Linear(cout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x1_0(num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (torchvision's ``shufflenet_v2_x1_0``), random weights."""
    return ShuffleNetV2((4, 8, 4), (24, 116, 232, 464, 1024), num_classes)
