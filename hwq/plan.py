"""BitPlan: which precision each layer gets (plain data, JSON round-trip)."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hwq.errors import ConfigError, choices
from hwq.spec import QuantSpec


FLOAT_BITS = 32


@dataclass(frozen=True)
class LayerSpec:
    """Weight and activation bits of one conv / linear layer (its output activation is `act_bits` wide).

    Integer layers take 2..8 bits for each. ``LayerSpec(32, 32)`` (``LayerSpec.parse("fp32")``) keeps
    the layer in float32: float weights (BatchNorm folded), a float output, and a quantize only where
    an integer op reads that output (at the plan's default activation bits).
    """

    weight_bits: int = 8
    act_bits: int = 8

    def __post_init__(self):
        if (self.weight_bits, self.act_bits) == (FLOAT_BITS, FLOAT_BITS):
            return
        for name in ("weight_bits", "act_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 8:
                raise ConfigError(f"LayerSpec.{name} must be an int in 2..8, got {v!r} (or both bits 32: "
                                  f"the float option 'fp32')")

    @property
    def is_float(self) -> bool:
        """The layer runs in float32 (``fp32``)."""
        return self.weight_bits == FLOAT_BITS

    @property
    def name(self) -> str:
        """The option name: ``"w{weight_bits}a{act_bits}"`` (``LayerSpec(4, 8).name == "w4a8"``) or ``"fp32"``."""
        return "fp32" if self.is_float else f"w{self.weight_bits}a{self.act_bits}"

    @classmethod
    def parse(cls, name: str) -> "LayerSpec":
        """``"w4a8"`` -> ``LayerSpec(4, 8)``, ``"fp32"`` -> ``LayerSpec(32, 32)``; anything else is a ``ConfigError``."""
        if name == "fp32":
            return cls(FLOAT_BITS, FLOAT_BITS)
        m = re.fullmatch(r"w([0-9]+)a([0-9]+)", name) if isinstance(name, str) else None
        if m is None:
            raise ConfigError(f"option name {name!r} is not 'fp32' nor of the form 'w<weight bits>a<act bits>', "
                              f"e.g. 'w4a8'")
        return cls(int(m.group(1)), int(m.group(2)))

    def weight_spec(self) -> QuantSpec:
        if self.is_float:
            raise ConfigError("an fp32 layer has no integer weight format")
        return QuantSpec(self.weight_bits, signed=True, granularity="per_channel")

    def act_spec(self, signed: bool) -> QuantSpec:
        if self.is_float:
            raise ConfigError("an fp32 layer has no integer output format")
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
        if self.default.is_float:
            raise ConfigError("BitPlan.default must be an integer option (it also sets the bits of the adds, pools "
                              "and float-to-integer borders); name the layers to keep in float in BitPlan.layers")
        if self.version != 1:
            raise ConfigError(f"BitPlan.version {self.version!r} is not supported; valid: 1")

    def __hash__(self):
        return hash((self.default, tuple(sorted(self.layers.items())), self.version))

    def spec_for(self, module_name: str) -> LayerSpec:
        return self.layers.get(module_name, self.default)

    def check_names(self, valid_names) -> None:
        """Raise if the plan names a layer the model lacks (a typo would otherwise be ignored)."""
        valid = sorted(set(valid_names))
        unknown = sorted(set(self.layers) - set(valid))
        if unknown:
            hints = [f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
                     for name in unknown for close in [difflib.get_close_matches(name, valid, n=1)]]
            raise ConfigError(f"BitPlan names layers the model does not have: {', '.join(hints)}; "
                              f"quantizable layers: {choices(valid)}")

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "default": vars(self.default),
                           "layers": {k: vars(v) for k, v in sorted(self.layers.items())}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "BitPlan":
        """Parse :meth:`to_json`'s document; anything else (corrupt, truncated, unknown or
        mistyped fields) is a ``ConfigError`` naming the field and the valid ones."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not a BitPlan JSON document (corrupt or truncated: {e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"a BitPlan JSON document is an object with fields {choices(_PLAN_FIELDS)}, "
                              f"got a {type(d).__name__}")
        _check_fields(d, _PLAN_FIELDS, "the top level")
        layers = d.get("layers", {})
        if not isinstance(layers, dict):
            raise ConfigError(f"BitPlan field 'layers' must map module names to "
                              f"{{'weight_bits': .., 'act_bits': ..}}, got {layers!r}")
        return cls(default=_layer_spec(d.get("default", {}), "default"),
                   layers={k: _layer_spec(v, f"layers[{k!r}]") for k, v in layers.items()},
                   version=d.get("version", 1))

    @classmethod
    def load(cls, path) -> "BitPlan":
        """Read a plan file (:meth:`from_json`); every error names the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read plan file {str(path)!r}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"plan file {str(path)!r} is not text (UTF-8 JSON)") from None
        try:
            return cls.from_json(text)
        except ConfigError as e:
            raise ConfigError(f"plan file {str(path)!r}: {e}") from None


_PLAN_FIELDS = ("version", "default", "layers")
_SPEC_FIELDS = ("weight_bits", "act_bits")


def _check_fields(d: dict, valid, where: str) -> None:
    unknown = sorted(set(d) - set(valid), key=str)
    if unknown:
        raise ConfigError(f"unknown BitPlan field {unknown[0]!r} in {where}; valid: {choices(valid)}")


def _layer_spec(d, where: str) -> LayerSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"BitPlan field {where} must be an object with fields {choices(_SPEC_FIELDS)}, got {d!r}")
    _check_fields(d, _SPEC_FIELDS, where)
    try:
        return LayerSpec(**d)
    except ConfigError as e:
        raise ConfigError(f"BitPlan field {where}: {e}") from None
