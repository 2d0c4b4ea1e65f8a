"""Errors hwq raises for bad input.

Every error names the bad value (with ``repr``) and, where there is a finite set of valid
choices, lists them, so a user can fix the input without reading hwq's source.
"""


class HwqError(Exception):
    """Base class of every error hwq raises on purpose."""


class ConfigError(HwqError, ValueError):
    """A config value (a spec, a plan, a CLI option) is out of its valid range."""


class TargetError(HwqError, ValueError):
    """A target description file is missing, malformed, or names an unknown target."""


class DataError(HwqError, ValueError):
    """Input data is missing, corrupt, or not of the shape and dtype a model takes."""


class UnsupportedOpError(HwqError, ValueError):
    """The model contains an operator the integer lowering does not support."""


class QuantizationError(HwqError, ValueError):
    """A value cannot be represented in the requested integer format (e.g. an int32 bias overflow)."""


class ArtifactError(HwqError, RuntimeError):
    """A compiled artifact is missing, corrupt, or was built for another target."""


class DeviceError(HwqError, RuntimeError):
    """A device (a board over TVM RPC) cannot be reached, or dropped while hwq was measuring on it."""


def choices(valid) -> str:
    """Format a collection of valid choices for an error message: ``'a', 'b', 'c'``."""
    return ", ".join(repr(v) for v in sorted(valid))


class InfeasibleBudgetError(ConfigError):
    """No plan meets a latency budget (or a weight bound).

    The message states the best the target allows and the plan that reaches it. Attributes:
    ``fastest_ms`` and ``fastest_choice`` (``{group: option}``) for a latency budget below the
    fastest plan; ``lightest_bytes`` and ``lightest_choice`` for a weight bound below the lightest.
    """

    def __init__(self, message: str, fastest_ms: float | None = None, fastest_choice: dict | None = None,
                 lightest_bytes: float | None = None, lightest_choice: dict | None = None):
        super().__init__(message)
        self.fastest_ms = fastest_ms
        self.fastest_choice = fastest_choice
        self.lightest_bytes = lightest_bytes
        self.lightest_choice = lightest_choice
