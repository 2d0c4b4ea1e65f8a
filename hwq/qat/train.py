"""``train_constrained``: primal-dual training of a prepared model, the paper's algorithm step by step.

Each step: forward the Lagrangian's pieces (``constraints.Lagrangian``), descend on the weights
with ``loss + sum(λ (g - ε))``, and accumulate the slacks g - ε. Every ``dual_period`` steps (or at
the end of each epoch) the duals ascend on the mean slack, projected onto λ >= 0.

Under ``torchrun`` (several processes, gloo backend) the Lagrangian is wrapped in
DistributedDataParallel, each process reads its own shard of the data, the slacks are summed over
processes before every dual step (so every process holds the same λ), and only rank 0 writes
checkpoints and shows progress.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from hwq.errors import ConfigError
from hwq.models.checkpoint import load_checkpoint, save_checkpoint
from hwq.qat.config import QATConfig
from hwq.qat.constraints import Lagrangian, dual_step
from hwq.qat.report import LayerSensitivity, SensitivityReport


def train_constrained(prepared: torch.nn.Module, data, config: QATConfig = QATConfig(), *, eval_data=None,
                      checkpoint: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
                      log=print, checkpoint_steps: int = 50) -> SensitivityReport:
    """Train a model from ``quantize_(..., step="prepare")`` under per-layer quantization constraints.

    Args:
        prepared: the prepared model; trained in place.
        data: a map-style dataset of ``(input, label)`` pairs (e.g. ``TensorDataset``).
        config: the problem (ε, output constraint) and the schedule.
        eval_data: optional dataset; the report then holds the quantized model's accuracy on it.
        checkpoint: file written (atomically) at the end of every epoch and every
            ``checkpoint_steps`` steps within one (rank 0 only).
        resume: continue from ``checkpoint`` if it exists (same config required): from the step
            it was written after, with the same batches, so the result equals an uninterrupted run.
        progress: tqdm bars (rank 0) with loss, accuracy, the worst slack and the sum of the λ.
        log: where the per-epoch summary lines go.
        checkpoint_steps: steps between checkpoints within an epoch; 0 = at epoch ends only.
            Under ``torchrun`` only at epoch ends: mid-epoch, each process holds its own running
            activation ranges and partial sums, which one process's checkpoint cannot restore.

    Returns:
        The ``SensitivityReport``: per layer λ, mean slack over the last epoch, ε and bits.
    """
    world, rank, created = _init_distributed()
    try:
        if checkpoint_steps < 0:
            raise ConfigError(f"checkpoint_steps must be >= 0 (0 = at epoch ends only), got {checkpoint_steps!r}")
        trainer = _Trainer(prepared, data, config, world, rank)
        trainer.checkpoint_steps = checkpoint_steps if world == 1 else 0
        return trainer.run(
            eval_data, checkpoint, resume, progress and rank == 0, log if rank == 0 else (lambda s: None))
    finally:
        if created:
            dist.destroy_process_group()


def is_main_process() -> bool:
    """True outside ``torchrun`` and on rank 0 under it: the process that writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0      # torchrun's, after train_constrained closed its group


@torch.no_grad()
def evaluate_quantized(prepared: torch.nn.Module, data, batch_size: int = 500) -> float:
    """Top-1 accuracy (percent) of the fake-quantized model on a dataset of ``(input, label)``."""
    was_training = prepared.training
    prepared.eval()
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        correct += int((prepared(x).argmax(1) == y).sum())
        total += len(y)
    prepared.train(was_training)
    return 100.0 * correct / max(total, 1)


def _init_distributed():
    """(world size, rank, whether this call created the process group); torchrun sets WORLD_SIZE."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
        return dist.get_world_size(), dist.get_rank(), True
    return 1, 0, False


def _all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _Trainer:
    def __init__(self, prepared, data, config: QATConfig, world: int, rank: int):
        if config.batch_size % world:
            raise ConfigError(f"QATConfig.batch_size {config.batch_size!r} must divide evenly over {world} processes")
        self.model, self.data, self.config, self.world, self.rank = prepared, data, config, world, rank
        torch.manual_seed(config.seed)
        self.lagrangian = Lagrangian(prepared, config)
        layers = self.lagrangian.layers
        self.names = [layer.name for layer in layers] + (["output"] if config.eps_output is not None else [])
        self.eps = torch.tensor([config.eps_for(layer.name) for layer in layers]
                                + ([config.eps_output] if config.eps_output is not None else []), dtype=torch.float64)
        self.lam = torch.zeros_like(self.eps)
        self.period_sum, self.period_n = torch.zeros_like(self.eps), 0
        params = [p for p in prepared.parameters() if p.requires_grad]
        self.opt = (torch.optim.Adam(params, lr=config.lr) if config.optimizer == "adam"
                    else torch.optim.SGD(params, lr=config.lr, momentum=0.9))
        self.steps_per_epoch = math.ceil(len(data) / config.batch_size)
        total = config.epochs * self.steps_per_epoch
        cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine if config.lr_schedule == "cosine" else (lambda s: 1.0))
        self.epoch, self.history = 0, []
        self.step, self.checkpoint_steps = 0, 0     # steps done in the current epoch
        self._new_epoch_sums()
        self.last_epoch_slack = torch.full_like(self.eps, float("nan"))
        self.module = self.lagrangian
        if world > 1:
            # the fp mode's quantized copy leaves learned input / add / pool scales without a gradient
            self.module = torch.nn.parallel.DistributedDataParallel(
                self.lagrangian, find_unused_parameters=config.gradient_mode == "fp")

    # ---------------------------------------------------------------------------- the loop
    def run(self, eval_data, checkpoint, resume, progress, log) -> SensitivityReport:
        if resume and checkpoint is not None and Path(checkpoint).is_file():
            self._load(checkpoint)
            where = f"in epoch {self.epoch + 1} after step {self.step}" if self.step else f"after epoch {self.epoch}"
            log(f"resumed from {str(checkpoint)!r} {where}")
        for epoch in range(self.epoch, self.config.epochs):
            self._train_epoch(epoch, progress, log, checkpoint)
            self.epoch, self.step = epoch + 1, 0
            if checkpoint is not None and self.rank == 0:
                self._save(checkpoint)
        accuracy = evaluate_quantized(self.model, eval_data) if eval_data is not None else None
        return self._report(accuracy)

    def _loader(self, epoch, skip: int):
        """The epoch's batches after the first ``skip`` ones."""
        per_rank = self.config.batch_size // self.world
        if self.world > 1:
            sampler = DistributedSampler(self.data, self.world, self.rank, shuffle=True, seed=self.config.seed)
            sampler.set_epoch(epoch)
        else:   # the order depends on (seed, epoch) only, so a resumed run sees the same batches
            sampler = RandomSampler(self.data, generator=torch.Generator().manual_seed(self.config.seed + epoch))
        # its own generator: creating the iterator then draws nothing from torch's global one
        return DataLoader(self.data, batch_size=per_rank, sampler=list(sampler)[skip * per_rank:],
                          generator=torch.Generator())

    def _new_epoch_sums(self):
        self.epoch_sum, self.epoch_n, self.epoch_totals = torch.zeros_like(self.eps), 0, [0.0, 0.0, 0.0]

    def _train_epoch(self, epoch, progress, log, checkpoint):
        self.model.train()
        if self.step == 0:
            self._new_epoch_sums()
        epoch_sum, totals = self.epoch_sum, self.epoch_totals    # updated in place: a checkpoint saves them
        bar = tqdm(self._loader(epoch, self.step), desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True, initial=self.step, total=self.steps_per_epoch)
        for x, y in bar:
            loss, g, out_q = self.module(x, y)
            slack = g.detach().double() - self.eps
            objective = loss + (self.lam.to(g.dtype) * (g - self.eps.to(g.dtype))).sum()
            self.opt.zero_grad(set_to_none=True)
            objective.backward()
            self.opt.step()
            self.sched.step()
            self.period_sum += slack
            self.period_n += 1
            epoch_sum += slack
            self.epoch_n += 1
            if self.config.dual_period != "epoch" and self.period_n == self.config.dual_period:
                self._dual_update()
            totals[0] += loss.item() * len(y)
            totals[1] += float((out_q.argmax(1) == y).sum())
            totals[2] += len(y)
            self.step += 1
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{100 * totals[1] / totals[2]:.2f}",
                            max_slack=f"{_max(epoch_sum / self.epoch_n):.4f}", sum_lambda=f"{float(self.lam.sum()):.4g}")
            if (checkpoint is not None and self.rank == 0 and self.checkpoint_steps
                    and self.step % self.checkpoint_steps == 0 and self.step < self.steps_per_epoch):
                self._save(checkpoint)
        if self.config.dual_period == "epoch" and self.period_n:
            self._dual_update()
        if self.world > 1:
            # DDP hands rank 0's buffers (the tracked activation ranges) to every process at the start
            # of each forward; after the last one each process moved its own copy: rank 0's wins again
            for b in self.model.buffers():
                dist.broadcast(b, src=0)
        totals = _all_sum(torch.tensor(totals, dtype=torch.float64), self.world)
        self.last_epoch_slack = _all_sum(epoch_sum, self.world) / _all_sum(torch.tensor(float(self.epoch_n)), self.world)
        row = {"epoch": epoch + 1, "loss": float(totals[0] / totals[2]), "train_accuracy": float(100 * totals[1] / totals[2]),
               "max_slack": _max(self.last_epoch_slack), "sum_lambda": float(self.lam.sum())}
        self.history.append(row)
        log(f"epoch {row['epoch']}/{self.config.epochs}: loss {row['loss']:.4f}, quantized train acc "
            f"{row['train_accuracy']:.2f}%, max slack {row['max_slack']:+.4g}, sum lambda {row['sum_lambda']:.4g}")

    def _dual_update(self):
        n = _all_sum(torch.tensor(float(self.period_n), dtype=torch.float64), self.world)
        mean_slack = _all_sum(self.period_sum, self.world) / n
        self.lam = dual_step(self.lam, mean_slack, self.config.dual_lr)
        self.period_sum, self.period_n = torch.zeros_like(self.eps), 0

    # ---------------------------------------------------------------------------- state
    def _state(self):
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "lam": self.lam, "period_sum": self.period_sum, "period_n": self.period_n, "epoch": self.epoch,
                "history": self.history, "last_epoch_slack": self.last_epoch_slack, "config": self.config.to_json(),
                # mid-epoch: where in the epoch, its partial sums, and torch's RNG
                "step": self.step, "epoch_sum": self.epoch_sum, "epoch_n": self.epoch_n,
                "epoch_totals": torch.tensor(self.epoch_totals, dtype=torch.float64), "rng": torch.get_rng_state()}

    def _save(self, path):
        save_checkpoint(self._state(), path)

    def _load(self, path):
        state = load_checkpoint(path, "QAT checkpoint")
        if QATConfig.from_json(state["config"]) != self.config:
            raise ConfigError(f"checkpoint {str(path)!r} was written with another QATConfig; resume needs the same "
                              f"config (its config: {state['config']})")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.lam, self.period_sum, self.period_n = state["lam"], state["period_sum"], state["period_n"]
        self.epoch, self.history, self.last_epoch_slack = state["epoch"], state["history"], state["last_epoch_slack"]
        if "step" in state:      # checkpoints before mid-epoch saving hold epoch ends only
            self.step, self.epoch_sum, self.epoch_n = state["step"], state["epoch_sum"], state["epoch_n"]
            self.epoch_totals = state["epoch_totals"].tolist()
            torch.set_rng_state(state["rng"])

    def _report(self, accuracy) -> SensitivityReport:
        rows = []
        for i, name in enumerate(self.names):
            layer = self.lagrangian.layers[i] if i < len(self.lagrangian.layers) else None
            rows.append(LayerSensitivity(
                name, float(self.lam[i]), float(self.last_epoch_slack[i]), float(self.eps[i]),
                layer.weight_fq.spec.bits if layer else None,
                layer.out_fq.spec.bits if layer is not None and layer.out_fq is not None else None))
        output = rows.pop() if self.config.eps_output is not None else None
        return SensitivityReport(tuple(rows), output, config=json.loads(self.config.to_json()), history=tuple(self.history),
                                 accuracy=accuracy)


def _max(t: torch.Tensor) -> float:
    """The largest slack (0 when no layer is constrained: every layer of the plan in fp32)."""
    return float(t.max()) if t.numel() else 0.0
