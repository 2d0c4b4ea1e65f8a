"""hwq: a hardware-aware deployment compiler for integer accelerators."""

__version__ = "0.1.0"
