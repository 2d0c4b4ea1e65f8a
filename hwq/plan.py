"""BitPlan: which precision each layer gets (plain data, JSON round-trip)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hwq.errors import ConfigError
from hwq.spec import QuantSpec


@dataclass(frozen=True)
class LayerSpec:
    """Weight and activation bits of one conv / linear layer (its output activation is `act_bits` wide)."""

    weight_bits: int = 8
    act_bits: int = 8

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 2 <= v <= 8:
                raise ConfigError(f"LayerSpec.{name} must be an int in 2..8, got {v!r}")

    def weight_spec(self) -> QuantSpec:
        return QuantSpec(self.weight_bits, signed=True, granularity="per_channel")

    def act_spec(self, signed: bool) -> QuantSpec:
        return QuantSpec(self.act_bits, signed=signed, granularity="per_tensor")


@dataclass(frozen=True)
class BitPlan:
    """Per-layer precision, keyed by the module's fully-qualified name (``"block1.0"``).

    ``default`` applies to every layer not named in ``layers`` and to activations that belong to
    no module (residual adds, pools, the model input).

    Example:
        >>> plan = BitPlan(layers={"fc": LayerSpec(8, 8), "block1.0": LayerSpec(4, 8)})
        >>> BitPlan.from_json(plan.to_json()) == plan
        True
    """

    default: LayerSpec = LayerSpec()
    layers: dict = field(default_factory=dict)
    version: int = 1

    def __post_init__(self):
        for k, v in self.layers.items():
            if not isinstance(k, str) or not isinstance(v, LayerSpec):
                raise ConfigError(f"BitPlan.layers must map module names to LayerSpec, got {k!r}: {v!r}")
        if self.version != 1:
            raise ConfigError(f"BitPlan.version {self.version!r} is not supported; valid: 1")

    def __hash__(self):
        return hash((self.default, tuple(sorted(self.layers.items())), self.version))

    def spec_for(self, module_name: str) -> LayerSpec:
        return self.layers.get(module_name, self.default)

    def check_names(self, valid_names) -> None:
        """Raise if the plan names a layer the model lacks (a typo would otherwise be ignored)."""
        valid = set(valid_names)
        unknown = sorted(set(self.layers) - valid)
        if unknown:
            raise ConfigError(f"BitPlan names layers {unknown} that the model does not have; "
                              f"quantizable layers: {sorted(valid)}")

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "default": vars(self.default),
                           "layers": {k: vars(v) for k, v in sorted(self.layers.items())}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "BitPlan":
        try:
            d = json.loads(text)
            return cls(default=LayerSpec(**d.get("default", {})),
                       layers={k: LayerSpec(**v) for k, v in d.get("layers", {}).items()},
                       version=d.get("version", 1))
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise ConfigError(f"not a BitPlan JSON document: {e}") from None
