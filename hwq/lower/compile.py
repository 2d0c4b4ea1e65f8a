"""``compile_model``: the one public verb of the lowering, ``QGraph`` + target -> runnable/deployable model."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from hwq import qgraph as qg
from hwq.errors import ArtifactError, DataError, TargetError
from hwq.lower.artifact import LIBRARY, read_manifest, save_artifact
from hwq.lower.cpu_check import build_cpu, check_runs_on_this_cpu
from hwq.lower.pipeline import get_pipeline
from hwq.lower.relax_builder import build_relax_module
from hwq.lower.tvm_target import cross_fcompile, resolve_features, to_tvm_target
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


def _aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on an ``alignment``-byte boundary
    (TVM's kernels assume it, and ``from_dlpack`` refuses anything less)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + alignment, np.uint8)
    start = -buf.ctypes.data % alignment
    return buf[start:start + nbytes].view(dtype).reshape(shape)


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
        self._on_cpu = False
        self._entry: dict = {}
        spec = json.loads(graph_json)["input"]
        self._in_shape, self._in_dtype = tuple(spec["shape"]), spec["dtype"]
        self._staging: dict = {}   # (shape, dtype) -> aligned input buffer and its TVM view

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            dev = _device(self.target)
            if dev is None:
                raise TargetError(f"model built for target {self.target.name!r} needs {_where_it_runs(self.target)} "
                                  f"and cannot run on this {platform.machine()} host; save() it and run it on the device")
            self._vm, self._dev = relax.VirtualMachine(self.executable, dev), dev
            self._on_cpu = dev.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        return self._vm

    def _check(self, x: np.ndarray, dtype: str, what: str) -> np.ndarray:
        if x.ndim != 1 + len(self._in_shape) or x.shape[1:] != self._in_shape or x.dtype != np.dtype(dtype):
            raise DataError(f"{what} input has shape {x.shape} and dtype {x.dtype}; this model takes "
                             f"(N, {', '.join(map(str, self._in_shape))}) {dtype}")
        return x

    def _call(self, entry: str, x: np.ndarray) -> np.ndarray:
        """Run a VM function on one array. This is the per-call path a batch-1 latency pays for,
        so it does no more than it must. On a CPU the input is copied into a 64-byte aligned
        buffer kept per input shape, which TVM reads in place (``tvm.runtime.tensor`` costs about
        50 us, a fresh buffer each call about 30 us, more than the model's glue operators), and the
        output goes to numpy without a copy. Like the VM itself, not for concurrent calls."""
        fn = self._entry.get(entry)
        if fn is None:
            fn = self._entry[entry] = self.vm[entry]   # first: it picks the device (or says why there is none)
        if not self._on_cpu:
            return fn(tvm.runtime.tensor(np.ascontiguousarray(x), device=self._dev)).numpy()
        key = (x.shape, x.dtype.str)
        staged = self._staging.get(key)
        if staged is None:
            buf = _aligned_empty(x.shape, x.dtype)
            staged = self._staging[key] = (buf, tvm.runtime.from_dlpack(buf))
        np.copyto(staged[0], x)
        return np.from_dlpack(fn(staged[1]))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 input (N, ...) -> float32 output (the dequantized logits)."""
        return self._call("main", self._check(np.asarray(x, dtype=np.float32), "float32", "float"))

    def run_int(self, x_int: np.ndarray) -> np.ndarray:
        """Integer input in the graph's input dtype -> integer output: the integer program alone."""
        return self._call("forward_int", self._check(np.asarray(x_int), self._in_dtype, "integer"))

    def save(self, path) -> Path:
        """Write the deployable artifact directory (cross-linked for the target's triple)."""
        fcompile = cross_fcompile(self.target) if self.target.is_cross else None
        llvm = to_tvm_target(self.target)
        cpu = build_cpu(llvm if self.target.kind == "cpu" else llvm.host)
        return save_artifact(self.executable, path, self.target, self.graph_json, cpu, fcompile)


def compile_model(graph: qg.QGraph, target: Target | str = "x86-host") -> CompiledModel:
    """Lower an integer program to TVM Relax and build it for ``target``.

    Args:
        graph: from ``hwq.qat.quantize_ptq`` (or QAT's convert).
        target: a ``Target`` or a target name (``hwq targets``): a CPU (llvm) or a CUDA target.
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
    """Load an artifact directory written by ``CompiledModel.save``.

    Checks the manifest and the library's hash, then, before TVM loads any code: the TVM version
    it was built with, and that this machine's CPU has every instruction-set extension the code
    may use (else it would die with an illegal instruction).
    """
    manifest = read_manifest(path)
    if manifest["tvm_version"] != tvm.__version__:
        raise ArtifactError(f"artifact {str(path)!r} was built with TVM {manifest['tvm_version']!r} and this is "
                            f"TVM {tvm.__version__!r}; compile and save it again with this TVM (hwq pins "
                            f"apache-tvm), or load it where that TVM is installed")
    target = load_target(manifest["target"])
    if not _runs_here(target):
        raise ArtifactError(f"artifact {str(path)!r} was built for {target.name!r}, which needs "
                            f"{_where_it_runs(target)}; run it on that device")
    check_runs_on_this_cpu(manifest["cpu"], str(path))
    try:
        executable = tvm.runtime.load_module(str(Path(path) / manifest.get("library", LIBRARY)))
    except Exception as e:  # TVM raises its own error types for a library it cannot load
        raise ArtifactError(f"cannot load the library of artifact {str(path)!r}: {e}") from None
    return CompiledModel(executable, target, json.dumps(manifest["graph"]))
