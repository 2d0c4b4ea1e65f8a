"""Float32 training of zoo models, with a checkpoint cache so the demo trains once per machine."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from hwq.data import FashionMNIST
from hwq.errors import ConfigError
from hwq.fileio import cache_dir
from hwq.models.checkpoint import load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """How to train the float model. ``train_subset`` 0 means the whole training split."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 5e-3
    train_subset: int = 0
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.train_subset < 0:
            raise ConfigError(f"TrainConfig.train_subset must be >= 0 (0 = all), got {self.train_subset!r}")


def to_float_input(images: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 tensor in [0, 1], the input convention of the zoo models."""
    return torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)


def train_float(model: nn.Module, data: FashionMNIST, config: TrainConfig = TrainConfig(),
                log=print) -> nn.Module:
    """Train ``model`` in float32 with Adam and a one-cycle schedule; returns it in eval mode."""
    torch.manual_seed(config.seed)
    if config.train_subset:
        data = data.subset(config.train_subset, seed=config.seed)
    x_all, y_all = to_float_input(data.images), torch.from_numpy(data.labels)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * ((len(data) + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(config.epochs):
        t0, total, correct, loss_sum = time.time(), 0, 0, 0.0
        perm = torch.randperm(len(data))
        for i in range(0, len(data), config.batch_size):
            idx = perm[i:i + config.batch_size]
            x, y = x_all[idx], y_all[idx]
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == y).sum())
            total += len(idx)
        log(f"  epoch {epoch + 1}/{config.epochs}: loss {loss_sum / total:.4f}, "
            f"train acc {100 * correct / total:.2f}%, {time.time() - t0:.1f}s")
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: FashionMNIST, batch_size: int = 500) -> float:
    """Top-1 accuracy (percent) of a float model on ``data``."""
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        out = model(to_float_input(data.images[i:i + batch_size]))
        correct += int((out.argmax(1).numpy() == data.labels[i:i + batch_size]).sum())
    return 100.0 * correct / len(data)


def load_or_train(model: nn.Module, data: FashionMNIST, config: TrainConfig = TrainConfig(),
                  log=print) -> tuple[nn.Module, bool]:
    """Load the cached checkpoint for (architecture, config), or train and cache it.

    Returns the model in eval mode and whether it came from the cache. The cache key hashes the
    model's class, its parameter shapes and the config, so a changed model never loads a stale file.
    """
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    key = hashlib.sha256(json.dumps([type(model).__name__, shapes, asdict(config)], sort_keys=True)
                         .encode()).hexdigest()[:16]
    path = cache_dir() / f"{type(model).__name__.lower()}-{key}.pt"
    if path.is_file():
        model.load_state_dict(load_checkpoint(path, "cached float checkpoint"))
        return model.eval(), True
    train_float(model, data, config, log=log)
    save_checkpoint(model.state_dict(), path)
    return model, False
