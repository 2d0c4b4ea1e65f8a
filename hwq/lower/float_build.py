"""The float32 baseline: the same trained model through TVM's own torch frontend, no quantization."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from hwq.lower.tvm_target import to_tvm_target
from hwq.target import Target, load_target


def compile_float(model: torch.nn.Module, example: torch.Tensor, target: Target | str = "x86-host"):
    """Build ``model`` in float32 for a fixed input shape; returns ``f(x: np.ndarray) -> np.ndarray``."""
    if isinstance(target, str):
        target = load_target(target)
    model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (example,))
    mod = from_exported_program(ep, keep_params_as_input=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target=to_tvm_target(target)), tvm.cpu())

    def run(x: np.ndarray) -> np.ndarray:
        out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    return run
