"""A deployable artifact: a directory with the compiled library and a manifest.

    model.so        the Relax VM executable (cross-compiled for the target's triple)
    manifest.json   format, versions, target, the CPU it was built for (triple, mcpu, mattr and the
                    instruction-set extensions its code may use), the library's sha256, the graph's
                    I/O description

Writing goes to a temporary sibling directory that is renamed into place, so an interrupted save
never leaves a half-written artifact; loading checks the manifest and the library's hash first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import tvm

import hwq
from hwq.errors import ArtifactError
from hwq.fileio import atomic_directory

FORMAT, FORMAT_VERSION = "hwq-artifact", 2   # 2: the build CPU is recorded
LIBRARY, MANIFEST = "model.so", "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(executable, path, target, graph_json: str, cpu: dict, fcompile=None) -> Path:
    """Export ``executable`` and its manifest to the directory ``path`` (replaced if it exists).

    ``cpu`` is ``hwq.lower.cpu_check.build_cpu`` of the (host) LLVM target it was compiled for."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        lib = tmp / LIBRARY
        if fcompile is None:
            executable.export_library(str(lib))
        else:
            executable.export_library(str(lib), fcompile=fcompile)
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION,
            # no build time: the same graph, target and versions give the same artifact, byte for
            # byte (tests/test_reproducible.py); the files' times say when it was written
            "hwq_version": hwq.__version__, "tvm_version": tvm.__version__,
            # a CUDA target's triple is its host CPU's
            "target": target.name, "target_kind": target.kind, "target_triple": target.host_triple,
            "cpu": cpu,
            "library": LIBRARY, "sha256": _sha256(lib),
            "graph": json.loads(graph_json),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def read_manifest(path) -> dict:
    """The validated manifest of the artifact directory ``path``."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{str(path)!r} is not an hwq artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{str(mf)!r} is corrupt: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{str(mf)!r} has format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                            f"expected {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise ArtifactError(f"{str(mf)!r} has format version {manifest.get('version')!r}; this hwq reads {FORMAT_VERSION}: "
                            f"compile and save the model again")
    for key in ("library", "sha256", "target", "graph", "tvm_version", "cpu"):
        if key not in manifest:
            raise ArtifactError(f"{str(mf)!r} lacks the field {key!r}")
    lib = path / manifest["library"]
    if not lib.is_file():
        raise ArtifactError(f"{str(path)!r}: the library {manifest['library']!r} is missing")
    digest = _sha256(lib)
    if digest != manifest["sha256"]:
        raise ArtifactError(f"{str(lib)!r} is corrupt: sha256 {digest[:16]}... != manifest's {manifest['sha256'][:16]}...")
    return manifest
