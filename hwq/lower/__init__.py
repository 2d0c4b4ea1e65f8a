"""Lowering to Apache TVM: the only package of hwq that imports tvm."""

import os

# TVM sizes its thread pool from the physical cores it detects, which is 1 on some virtual
# machines with 2 vCPUs: every hwq kernel would then run on half the machine. Read once, when
# the pool starts; a user's own TVM_NUM_THREADS wins.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from hwq.lower.compile import CompiledModel, compile_model, load_model

__all__ = ["CompiledModel", "compile_float", "compile_model", "load_model"]


def __getattr__(name):
    # compile_float builds from a torch model: torch is imported when it is first asked for, so
    # that loading and running an artifact (say, on a board) needs TVM and numpy only
    if name == "compile_float":
        from hwq.lower.float_build import compile_float
        return compile_float
    raise AttributeError(f"module 'hwq.lower' has no attribute {name!r}")
