"""QuantSpec: how one tensor is quantized (plain data, JSON round-trip)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hwq.errors import ConfigError, choices

GRANULARITIES = ("per_tensor", "per_channel")
RANGE_MODES = ("calibrated", "learned")


@dataclass(frozen=True)
class QuantSpec:
    """Integer format of one tensor: ``bits`` wide, signed or not, symmetric around zero (zero point 0).

    Weights are signed and per output channel; activations are per tensor and unsigned where the
    graph guarantees they are non-negative (after a ReLU), which buys one bit of range.

    Args:
        bits: 2..8 (values are stored in an 8-bit container; narrower widths use a narrower range).
        signed: signed range ``[-(2^(b-1)-1), 2^(b-1)-1]`` (narrow, symmetric) or unsigned ``[0, 2^b-1]``.
        granularity: ``"per_tensor"`` or ``"per_channel"`` (axis 0 of a weight).
        range_mode: how quantization-aware training sets the scale: ``"calibrated"`` (max-abs of a
            weight, min/max of an activation tracked with a moving average) or ``"learned"`` (a
            trained parameter, LSQ). Post-training quantization always calibrates.
    """

    bits: int = 8
    signed: bool = True
    granularity: str = "per_tensor"
    range_mode: str = "calibrated"
    version: int = 1

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"QuantSpec.bits must be an int in 2..8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"QuantSpec.granularity {self.granularity!r} is not one of {choices(GRANULARITIES)}")
        if self.range_mode not in RANGE_MODES:
            raise ConfigError(f"QuantSpec.range_mode {self.range_mode!r} is not one of {choices(RANGE_MODES)}")
        if self.version != 1:
            raise ConfigError(f"QuantSpec.version {self.version!r} is not supported; valid: 1")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def storage_dtype(self) -> str:
        """The 8-bit container type the integer kernels read."""
        return "int8" if self.signed else "uint8"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "QuantSpec":
        unknown = set(d) - {"bits", "signed", "granularity", "range_mode", "version"}
        if unknown:
            raise ConfigError(f"unknown QuantSpec fields {sorted(unknown)}; "
                              f"valid: bits, signed, granularity, range_mode, version")
        return cls(**d)


INT8_WEIGHT = QuantSpec(8, signed=True, granularity="per_channel")
INT8_ACT = QuantSpec(8, signed=True, granularity="per_tensor")
