"""``Sensitivities``: predicted loss increase per layer and precision option (plain data, JSON round-trip).

``values[layer][option]`` is how much the task loss grows when layer ``layer`` runs at ``option``
instead of the reference option (the most precise one, W8A8: its value is 0). The bit allocator
adds these up over layers as the knapsack's "value" side; ``hwq.alloc.sensitivity`` estimates them
(torch), this file only holds and compares them (pure Python + numpy / scipy), so the allocator
and the CLI read a saved table without importing torch.

Option names are ``w{weight_bits}a{act_bits}`` (``"w4a8"``), ``act_bits`` being the layer's output
activation width, as in ``hwq.plan.LayerSpec``.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from hwq.errors import ConfigError, choices
from hwq.fileio import atomic_write_text
from hwq.plan import LayerSpec

METHODS = ("duals", "hessian", "measured")
AGREEMENTS = ("pairs", "layers")


def option_name(spec: LayerSpec) -> str:
    """``LayerSpec(4, 8)`` -> ``"w4a8"``."""
    return spec.name


def parse_option(name: str) -> LayerSpec:
    """``"w4a8"`` -> ``LayerSpec(4, 8)``; raises ConfigError for anything else."""
    return LayerSpec.parse(name)


@dataclass(frozen=True)
class Sensitivities:
    """Per layer, per option: the predicted loss increase over the reference option.

    Attributes:
        values: ``{layer name: {option name: float}}``, layers in execution order.
        method: ``"duals"``, ``"hessian"`` or ``"measured"``: which estimator produced them.
        reference: the option every value is relative to (its value is 0 for every layer).
        meta: how they were obtained (images, samples, the duals' run): free-form JSON data.

    Example:
        >>> s = Sensitivities({"fc": {"w8a8": 0.0, "w4a8": 0.03}}, "measured")
        >>> s.table()["fc"][LayerSpec(4, 8)]
        0.03
        >>> Sensitivities.from_json(s.to_json()) == s
        True
    """

    values: dict
    method: str
    reference: str = "w8a8"
    meta: dict = field(default_factory=dict)
    version: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"sensitivity method {self.method!r} is not one of {choices(METHODS)}")
        if self.version != 1:
            raise ConfigError(f"Sensitivities.version {self.version!r} is not supported; valid: 1")
        parse_option(self.reference)
        if not isinstance(self.values, dict) or not self.values:
            raise ConfigError(f"Sensitivities.values must map layer names to {{option: value}}, got {self.values!r}")
        for layer, row in self.values.items():
            if not isinstance(layer, str) or not isinstance(row, dict) or not row:
                raise ConfigError(f"Sensitivities.values[{layer!r}] must be a non-empty {{option: value}} dict, "
                                  f"got {row!r}")
            for option, v in row.items():
                parse_option(option)
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"Sensitivities.values[{layer!r}][{option!r}] must be a finite number, got {v!r}")

    def __hash__(self):
        return hash((self.method, self.reference, tuple((k, tuple(sorted(v.items()))) for k, v in self.values.items())))

    @property
    def layers(self) -> list[str]:
        """The layer names, in the order the estimator visited them (execution order)."""
        return list(self.values)

    def table(self) -> dict:
        """``{layer: {LayerSpec: value}}``: what the allocator's solver takes."""
        return {layer: {parse_option(o): float(v) for o, v in row.items()} for layer, row in self.values.items()}

    def losses(self, layer: str, options) -> tuple:
        """The values of ``layer`` for ``options`` (names), in that order: a solver group's loss vector.

        Raises:
            ConfigError: a layer or an option the table does not have (with the ones it has).
        """
        if layer not in self.values:
            close = difflib.get_close_matches(str(layer), list(self.values), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"no sensitivities for layer {layer!r}{hint} (layers: {choices(self.values)})")
        row = self.values[layer]
        missing = [o for o in options if o not in row]
        if missing:
            raise ConfigError(f"no sensitivity of layer {layer!r} for options {missing}; it has {choices(row)}")
        return tuple(float(row[o]) for o in options)

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "method": self.method, "reference": self.reference,
                           "values": self.values, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Sensitivities":
        try:
            d = json.loads(text)
            return cls(values={k: {o: float(v) for o, v in row.items()} for k, row in d["values"].items()},
                       method=d["method"], reference=d.get("reference", "w8a8"), meta=d.get("meta", {}),
                       version=d.get("version", 1))
        except ConfigError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise ConfigError(f"not a Sensitivities JSON document: {e!r}") from None

    def save(self, path):
        """Write the JSON atomically; returns the path."""
        return atomic_write_text(path, self.to_json() + "\n")

    def text_table(self) -> str:
        """Layers as rows, options as columns (values printed with 3 significant digits)."""
        options = sorted({o for row in self.values.values() for o in row}, key=lambda o: _precision(parse_option(o)))
        w = max(len(k) for k in self.values)
        lines = [f"{'layer':{w}s} " + " ".join(f"{o:>10s}" for o in options)]
        for layer, row in self.values.items():
            lines.append(f"{layer:{w}s} " + " ".join(f"{row[o]:10.3g}" if o in row else f"{'-':>10s}" for o in options))
        return "\n".join(lines)


def _precision(spec: LayerSpec):
    """Sort key, most precise first: more weight bits, then more activation bits."""
    return (-spec.weight_bits, -spec.act_bits)


def rank_agreement(pred: Sensitivities, truth: Sensitivities, by: str = "pairs") -> float:
    """Spearman's rank correlation between two estimates of the same table.

    Args:
        pred, truth: the estimate and the ground truth (``"measured"``), over the same layers.
        by: ``"pairs"``: over every (layer, option) pair the two share, the reference option left
            out (its value is 0 by construction in both, and would add agreement for free);
            ``"layers"``: over layers, each scored by its largest value over the shared options
            (how the two rank the most sensitive layers).

    Returns:
        Spearman's rho in [-1, 1] (ties get average ranks); nan if either side is constant.
    """
    from scipy.stats import spearmanr

    if by not in AGREEMENTS:
        raise ConfigError(f"rank_agreement by={by!r} is not one of {choices(AGREEMENTS)}")
    missing = sorted(set(truth.values) ^ set(pred.values))
    if missing:
        raise ConfigError(f"the two tables cover different layers: {missing} are in only one of them")
    a, b = [], []
    for layer, row in truth.values.items():
        shared = [o for o in row if o in pred.values[layer] and o != truth.reference]
        if by == "pairs":
            a += [pred.values[layer][o] for o in shared]
            b += [row[o] for o in shared]
        elif shared:
            a.append(max(pred.values[layer][o] for o in shared))
            b.append(max(row[o] for o in shared))
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
