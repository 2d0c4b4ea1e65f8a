"""ResNet-20 (He et al., CVPR 2016, the CIFAR variant of section 4.2) for 1x28x28 inputs (Fashion-MNIST).

stem conv 1->16 (28x28), then three stages of three basic blocks (widths 16, 32, 64; the first
block of stages 2 and 3 halves the resolution: 28 -> 14 -> 7), global average pooling and a linear
classifier. A basic block is conv-BN-ReLU, conv-BN, the residual add, ReLU; where the shape
changes, the shortcut is a 1x1 stride-2 conv with BN (the paper's option B) rather than option A's
zero padding, which the integer lowering has no op for. 22 quantizable layers (19 3x3 convs, two
1x1 shortcuts, the linear), 0.27 M parameters, 31.0 M MACs per image at width 16.
Input is the image in [0, 1], as for ``ResCNN``: the stem's BN absorbs any normalization.
"""

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, + shortcut, ReLU; the shortcut is a 1x1 conv-BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride=stride)
        self.conv2 = _conv_bn(cout, cout)
        self.shortcut = _conv_bn(cin, cout, kernel=1, stride=stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + skip)


class ResNet20(nn.Module):
    """ResNet-20: a 3x3 stem, 3 stages of ``blocks`` basic blocks, global average pool, linear.

    Args:
        num_classes: outputs of the classifier.
        width: channels of the first stage; stages 2 and 3 use 2x and 4x as many.
        blocks: basic blocks per stage (3 gives ResNet-20: 6 * 3 + 2 weight layers).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 3):
        super().__init__()
        self.stem = _conv_bn(1, width)
        stages, cin = [], width
        for i in range(3):
            cout = width * 2 ** i
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, 2 if i > 0 and j == 0 else 1)
                                          for j in range(blocks)]))
            cin = cout
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
