"""Lowering to Apache TVM: the only package of hwq that imports tvm."""

from hwq.lower.compile import CompiledModel, compile_model, load_model
from hwq.lower.float_build import compile_float

__all__ = ["CompiledModel", "compile_float", "compile_model", "load_model"]
