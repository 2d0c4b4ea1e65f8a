"""Lowering to Apache TVM: the only package of hwq that imports tvm."""

import os

# TVM sizes its thread pool from the physical cores it detects, which is 1 on some virtual
# machines with 2 vCPUs: every hwq kernel would then run on half the machine. Read once, when
# the pool starts; a user's own TVM_NUM_THREADS wins.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from hwq.lower.compile import CompiledModel, compile_model, load_model
from hwq.lower.float_build import compile_float

__all__ = ["CompiledModel", "compile_float", "compile_model", "load_model"]
