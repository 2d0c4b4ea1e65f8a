"""BatchNorm running statistics from data, for models whose weights are random.

A randomly initialised network keeps BN's default statistics (mean 0, variance 1), which do not
describe the activations its random convs produce: through 20 to 50 layers the activations then
vanish or blow up, and quantization ranges taken from them mean nothing. Re-estimating each BN's
statistics from a few batches makes every BN output roughly zero-mean, unit-variance again, as in
a trained network.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from hwq.errors import ConfigError

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running mean and variance from ``batches``; returns ``model`` in eval mode.

    Each BN is reset and then averages the per-batch statistics over all batches equally
    (``momentum=None``). During the pass each BN normalizes with the statistics of the batch in
    hand (train mode), so the layers after it see normalized inputs; dropout and every other module
    stay in eval mode. Weights, BN's affine parameters and each BN's momentum are left as they were.

    Args:
        model: the network (changed in place).
        batches: input tensors, each a whole batch for ``model`` (batch size 2 or more).

    Example:
        >>> calibrate_batch_norm(model, [torch.randn(16, 3, 224, 224) for _ in range(2)])
    """
    bns = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for batch in batches:
            if batch.shape[0] < 2:
                raise ConfigError(f"calibrate_batch_norm needs batches of 2 or more inputs, got shape "
                                  f"{tuple(batch.shape)!r}")
            model(batch)
            seen += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    if seen == 0:
        raise ConfigError("calibrate_batch_norm got no batches; pass at least one input tensor")
    return model
