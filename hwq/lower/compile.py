"""``compile_model``: the one public verb of the lowering, ``QGraph`` + target -> runnable/deployable model."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from hwq import qgraph as qg
from hwq.errors import ArtifactError, TargetError
from hwq.lower.artifact import LIBRARY, read_manifest, save_artifact
from hwq.lower.pipeline import get_pipeline
from hwq.lower.relax_builder import build_relax_module
from hwq.lower.tvm_target import resolve_features, to_tvm_target
from hwq.target import Target, load_target

_HOST_ARCH = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def _device(target: Target):
    """The TVM device a model built for ``target`` runs on in this process, or None if it cannot."""
    triple = target.host_triple
    host = _HOST_ARCH.get(platform.machine(), platform.machine())
    if triple and not triple.startswith(host):
        return None
    if target.kind == "cpu":
        return tvm.cpu()
    if target.kind == "cuda" and tvm.cuda().exist:
        return tvm.cuda()
    return None


def _runs_here(target: Target) -> bool:
    return _device(target) is not None


def _where_it_runs(target: Target) -> str:
    if target.kind == "cuda":
        return f"an NVIDIA GPU ({target.tvm.get('arch')}) with a {target.host_triple or 'matching'} host"
    return target.host_triple or target.kind


class CompiledModel:
    """A compiled integer model: call it on float inputs, or run the integer program directly.

    Attributes:
        target: the ``hwq.target.Target`` it was built for.
        executable: TVM's Relax VM executable.
    """

    def __init__(self, executable, target: Target, graph_json: str, graph: qg.QGraph | None = None):
        self.executable, self.target, self.graph_json, self.graph = executable, target, graph_json, graph
        self._vm = self._dev = None

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            dev = _device(self.target)
            if dev is None:
                raise TargetError(f"model built for target {self.target.name!r} needs {_where_it_runs(self.target)} "
                                  f"and cannot run on this {platform.machine()} host; save() it and run it on the device")
            self._vm, self._dev = relax.VirtualMachine(self.executable, dev), dev
        return self._vm

    def _input(self, x: np.ndarray):
        vm = self.vm                      # first: it picks the device (or says why there is none)
        return vm, tvm.runtime.tensor(np.ascontiguousarray(x), device=self._dev)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 input (N, ...) -> float32 output (the dequantized logits)."""
        vm, x = self._input(np.asarray(x, dtype=np.float32))
        return vm["main"](x).numpy()

    def run_int(self, x_int: np.ndarray) -> np.ndarray:
        """Integer input in the graph's input dtype -> integer output: the integer program alone."""
        vm, x = self._input(x_int)
        return vm["forward_int"](x).numpy()

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
        target: a ``Target`` or the name of a file in ``targets/``: a CPU (llvm) or a CUDA target.
            A CUDA build embeds the kernels' CUDA source in the library and runs where TVM sees
            a GPU (``tvm.cuda().exist``) on a host of the target's triple.

    Example:
        >>> model = compile_model(graph, "x86-host")
        >>> logits = model(images_float)
        >>> model.save("out/rescnn-x86")
    """
    if isinstance(target, str):
        target = load_target(target)
    mod = build_relax_module(graph, resolve_features(target))
    tvm_target = to_tvm_target(target)
    executable = tvm.compile(mod, target=tvm_target, relax_pipeline=get_pipeline(target.kind, tvm_target))
    return CompiledModel(executable, target, graph.describe_json(), graph)


def load_model(path) -> CompiledModel:
    """Load an artifact directory written by ``CompiledModel.save`` (checks manifest and hash)."""
    manifest = read_manifest(path)
    target = load_target(manifest["target"])
    if not _runs_here(target):
        raise ArtifactError(f"artifact {str(path)!r} was built for {target.name!r}, which needs "
                            f"{_where_it_runs(target)}; run it on that device")
    try:
        executable = tvm.runtime.load_module(str(Path(path) / manifest.get("library", LIBRARY)))
    except Exception as e:  # TVM raises its own error types for a library it cannot load
        raise ArtifactError(f"cannot load the library of artifact {str(path)!r}: {e}") from None
    import json
    return CompiledModel(executable, target, json.dumps(manifest["graph"]))
