"""``QATConfig``: the constrained QAT problem and its primal-dual schedule (plain data, JSON round-trip)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from hwq.errors import ConfigError, choices

GRADIENT_MODES = ("fp", "ste")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
CONSTRAINT_NORMS = ("relative", "mse")


@dataclass(frozen=True)
class QATConfig:
    """Constrained quantization-aware training (Hounie, Elenter, Ribeiro, ICASSP 2023).

    minimize  E[loss]  subject to  g_l(θ) <= eps_l  for every conv / linear layer l
    (and  CE(softmax(out_fp), out_q) <= eps_output  if set), solved by gradient descent on θ and
    projected ascent on the duals: λ_l <- max(0, λ_l + dual_lr * mean slack_l), every
    ``dual_period`` steps (or once per epoch).

    Args:
        epochs: passes over the training data.
        batch_size: global batch (split evenly across ``torchrun`` processes).
        lr: primal learning rate; ``lr_schedule`` ``"cosine"`` decays it to 0 over the run.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        dual_lr: η_λ. 0 keeps every λ at 0: plain QAT with the constraints only measured.
        eps: ε_l of every layer; ``eps_layers`` overrides it by module name (``{"fc": 0.05}``).
        eps_output: ε of the output constraint, or None for no output constraint. The
            cross-entropy is at least the float model's entropy, so ε must exceed it.
        gradient_mode: ``"fp"`` (the paper's: the loss runs through the float path, the weights
            get no straight-through gradient, the quantized copy only gives constraint values) or
            ``"ste"`` (loss and constraints through the quantized path, straight-through rounding).
        dual_period: steps between dual updates (slacks are averaged over them), or ``"epoch"``.
        constraint_norm: ``"relative"`` (layer MSE divided by the mean square of its float
            output, so one ε means the same signal-to-noise ratio in every layer and the λ are
            comparable) or ``"mse"`` (the plain per-element mean squared error).
        seed: data order and initialization of the run.
    """

    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-4
    optimizer: str = "adam"
    lr_schedule: str = "cosine"
    dual_lr: float = 1.0
    eps: float = 0.02
    eps_layers: dict = field(default_factory=dict)
    eps_output: float | None = None
    gradient_mode: str = "fp"
    dual_period: int | str = 20
    constraint_norm: str = "relative"
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"QATConfig.{name} must be an int >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"QATConfig.lr must be > 0, got {self.lr!r}")
        if not (isinstance(self.dual_lr, (int, float)) and self.dual_lr >= 0):
            raise ConfigError(f"QATConfig.dual_lr must be >= 0, got {self.dual_lr!r}")
        for name, valid in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES),
                            ("gradient_mode", GRADIENT_MODES), ("constraint_norm", CONSTRAINT_NORMS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"QATConfig.{name} {getattr(self, name)!r} is not one of {choices(valid)}")
        eps_all = {"eps": self.eps, **{f"eps_layers[{k!r}]": v for k, v in self.eps_layers.items()}}
        if self.eps_output is not None:
            eps_all["eps_output"] = self.eps_output
        for name, v in eps_all.items():
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"QATConfig.{name} must be a number >= 0, got {v!r}")
        if not all(isinstance(k, str) for k in self.eps_layers):
            raise ConfigError(f"QATConfig.eps_layers must map module names to numbers, got {self.eps_layers!r}")
        if not (self.dual_period == "epoch" or (isinstance(self.dual_period, int) and self.dual_period >= 1)):
            raise ConfigError(f"QATConfig.dual_period must be an int >= 1 or 'epoch', got {self.dual_period!r}")
        if self.version != 1:
            raise ConfigError(f"QATConfig.version {self.version!r} is not supported; valid: 1")

    def eps_for(self, name: str) -> float:
        """ε of the layer with module name ``name``."""
        return float(self.eps_layers.get(name, self.eps))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "QATConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not a QATConfig JSON document: {e}") from None
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ConfigError(f"unknown QATConfig fields {unknown}; valid: {choices(valid)}")
        return cls(**d)
