"""``SensitivityReport``: the duals of a constrained QAT run, read as per-layer sensitivities.

At a solution, λ_l is the derivative of the optimal loss with respect to ε_l: how much the task
would gain if layer l were allowed more quantization error. The paper keeps the layers of largest
λ in high precision; ``top_layers(k)`` names them.

A run under a latency budget (``hwq.alloc.budget_qat``) also reports the budget's dual μ*, stored
in loss per millisecond: the price, in task loss, of one millisecond of latency on that target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hwq.errors import ConfigError
from hwq.fileio import atomic_write_text


@dataclass(frozen=True)
class LayerSensitivity:
    """One constraint at the end of training: its dual, its mean slack (g - ε) over the last epoch, ε, bits."""

    name: str
    lam: float
    slack: float
    eps: float
    weight_bits: int | None = None
    act_bits: int | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lam")     # "lambda" is a Python keyword, not a JSON one
        return d

    @classmethod
    def from_json(cls, d: dict) -> "LayerSensitivity":
        d = dict(d)
        d["lam"] = d.pop("lambda")
        return cls(**d)


@dataclass(frozen=True)
class SensitivityReport:
    """Per-layer λ, slack, ε and bits, the output constraint (or None), and the training history.

    ``latency_dual`` (loss per ms) and ``latency_budget_ms`` are set by a run under a latency
    budget and None otherwise; JSON without them (older reports) reads back with None.
    """

    layers: tuple
    output: LayerSensitivity | None = None
    config: dict = field(default_factory=dict)
    history: tuple = ()
    accuracy: float | None = None      # quantized (fake-quant) model on the evaluation data, percent
    version: int = 1
    latency_dual: float | None = None      # μ* of the latency budget, in loss per ms
    latency_budget_ms: float | None = None

    def top_layers(self, k: int) -> list[str]:
        """Names of the ``k`` layers with the largest λ (ties keep execution order)."""
        order = sorted(range(len(self.layers)), key=lambda i: -self.layers[i].lam)
        return [self.layers[i].name for i in order[:k]]

    def lambdas(self) -> dict:
        return {layer.name: layer.lam for layer in self.layers}

    def to_json(self) -> str:
        d = {"version": self.version, "layers": [layer.to_json() for layer in self.layers],
             "output": None if self.output is None else self.output.to_json(),
             "accuracy": self.accuracy, "config": self.config, "history": list(self.history)}
        # written only by budgeted runs: every other report's JSON stays as it was
        if self.latency_dual is not None or self.latency_budget_ms is not None:
            d["latency_dual"], d["latency_budget_ms"] = self.latency_dual, self.latency_budget_ms
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SensitivityReport":
        try:
            d = json.loads(text)
            return cls(layers=tuple(LayerSensitivity.from_json(x) for x in d["layers"]),
                       output=None if d.get("output") is None else LayerSensitivity.from_json(d["output"]),
                       config=d.get("config", {}), history=tuple(d.get("history", ())),
                       accuracy=d.get("accuracy"), version=d.get("version", 1),
                       latency_dual=d.get("latency_dual"), latency_budget_ms=d.get("latency_budget_ms"))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"not a SensitivityReport JSON document: {e!r}") from None

    def save(self, path) -> Path:
        """Write the JSON atomically (a temporary file renamed into place)."""
        return atomic_write_text(path, self.to_json())

    def table(self) -> str:
        """The report as a plain-text table, largest λ first."""
        rows = sorted(self.layers, key=lambda r: -r.lam) + ([self.output] if self.output else [])
        w = max(len(r.name) for r in rows)
        lines = [f"{'layer':{w}s} {'W':>2s} {'A':>2s} {'lambda':>10s} {'slack':>10s} {'eps':>8s}"]
        for r in rows:
            bits = f"{r.weight_bits or '-':>2} {r.act_bits or '-':>2}"
            lines.append(f"{r.name:{w}s} {bits} {r.lam:10.4g} {r.slack:10.4g} {r.eps:8.3g}")
        if self.latency_dual is not None and self.latency_budget_ms is not None:
            lines.append(f"latency budget {self.latency_budget_ms:.4g} ms: mu* = {self.latency_dual:.4g} loss per ms")
        return "\n".join(lines)
