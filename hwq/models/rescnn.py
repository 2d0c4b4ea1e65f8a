"""A small residual CNN for 1x28x28 inputs (Fashion-MNIST).

stem conv 1->32 (28x28) -> conv 32->64 stride 2 (14x14) -> residual block of two 64->64 convs
-> global average pool -> linear 64->10; every conv is conv-BN-ReLU. 18.3 M MACs per image.
Input is the image in [0, 1] (uint8 / 255): no normalization layer, BN after the stem absorbs it,
and the integer pipeline then quantizes the input losslessly with scale 1/255.
"""

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class ResCNN(nn.Module):
    """Residual CNN: conv-BN-ReLU, a residual add, global average pooling and a linear classifier.

    Args:
        num_classes: outputs of the classifier.
        width: channels of the stem; later stages use twice as many.
    """

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = _conv_bn(1, width)
        self.down = _conv_bn(width, 2 * width, stride=2)
        self.block1 = _conv_bn(2 * width, 2 * width)
        self.block2 = _conv_bn(2 * width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x))
        y = torch.relu(self.block1(x))
        x = torch.relu(self.block2(y) + x)
        return self.fc(torch.flatten(self.pool(x), 1))
