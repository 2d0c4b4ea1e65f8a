"""``compile_model``: the one public verb of the lowering, ``QGraph`` + target -> runnable/deployable model."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from hwq import qgraph as qg
from hwq.errors import ArtifactError, ConfigError, TargetError
from hwq.lower.artifact import LIBRARY, read_manifest, save_artifact
from hwq.lower.pipeline import get_pipeline
from hwq.lower.relax_builder import build_relax_module
from hwq.lower.tvm_target import resolve_features, to_tvm_target
from hwq.target import Target, load_target

_HOST_ARCH = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def _runs_here(target: Target) -> bool:
    if target.kind != "cpu":
        return False
    triple = target.tvm.get("mtriple", "")
    host = _HOST_ARCH.get(platform.machine(), platform.machine())
    return triple == "" or triple.startswith(host)


class CompiledModel:
    """A compiled integer model: call it on float inputs, or run the integer program directly.

    Attributes:
        target: the ``hwq.target.Target`` it was built for.
        executable: TVM's Relax VM executable.
    """

    def __init__(self, executable, target: Target, graph_json: str, graph: qg.QGraph | None = None):
        self.executable, self.target, self.graph_json, self.graph = executable, target, graph_json, graph
        self._vm = None

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            if not _runs_here(self.target):
                raise TargetError(f"model built for target {self.target.name!r} ({self.target.tvm.get('mtriple', self.target.kind)}) "
                                  f"cannot run on this {platform.machine()} host; save() it and run it on the device")
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        return self._vm

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 input (N, ...) -> float32 output (the dequantized logits)."""
        return self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def run_int(self, x_int: np.ndarray) -> np.ndarray:
        """Integer input in the graph's input dtype -> integer output: the integer program alone."""
        return self.vm["forward_int"](tvm.runtime.tensor(np.ascontiguousarray(x_int))).numpy()

    def save(self, path) -> Path:
        """Write the deployable artifact directory (cross-linked for the target's triple)."""
        fcompile = None
        if self.target.is_cross:
            from tvm.support import cc
            fcompile = cc.cross_compiler(self.target.cross_compiler)
        return save_artifact(self.executable, path, self.target, self.graph_json, fcompile)


def compile_model(graph: qg.QGraph, target: Target | str = "x86-host") -> CompiledModel:
    """Lower an integer program to TVM Relax and build it for ``target``.

    Args:
        graph: from ``hwq.qat.quantize_ptq`` (or QAT's convert).
        target: a ``Target`` or the name of a file in ``targets/``.

    Example:
        >>> model = compile_model(graph, "x86-host")
        >>> logits = model(images_float)
        >>> model.save("out/rescnn-x86")
    """
    if isinstance(target, str):
        target = load_target(target)
    if target.kind != "cpu":
        raise ConfigError(f"target {target.name!r} is a {target.kind!r} target; the integer lowering builds CPU "
                          f"(llvm) targets so far: x86 and aarch64. CUDA integer kernels are not implemented yet")
    mod = build_relax_module(graph, resolve_features(target))
    tvm_target = to_tvm_target(target)
    executable = tvm.compile(mod, target=tvm_target, relax_pipeline=get_pipeline(target.kind, tvm_target))
    return CompiledModel(executable, target, graph.describe_json(), graph)


def load_model(path) -> CompiledModel:
    """Load an artifact directory written by ``CompiledModel.save`` (checks manifest and hash)."""
    manifest = read_manifest(path)
    target = load_target(manifest["target"])
    if not _runs_here(target):
        raise ArtifactError(f"artifact {str(path)!r} was built for {target.name!r} "
                            f"({manifest.get('target_triple') or target.kind}); run it on that device")
    try:
        executable = tvm.runtime.load_module(str(Path(path) / manifest.get("library", LIBRARY)))
    except Exception as e:  # TVM raises its own error types for a library it cannot load
        raise ArtifactError(f"cannot load the library of artifact {str(path)!r}: {e}") from None
    import json
    return CompiledModel(executable, target, json.dumps(manifest["graph"]))
