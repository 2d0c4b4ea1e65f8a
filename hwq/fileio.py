"""Files hwq writes: always whole or not at all, and user data under one cache directory.

Plain Python (no torch, no tvm): the pure layers (``hwq.cost``, ``hwq.alloc.solve``) use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from hwq.errors import DataError


def cache_dir() -> Path:
    """Where hwq keeps what a user makes (trained checkpoints, tuned tiles, measured tables):
    ``$HWQ_CACHE`` or ``~/.cache/hwq``. Read per call so a test or a shell can redirect it."""
    return Path(os.environ.get("HWQ_CACHE") or Path.home() / ".cache" / "hwq")


def display_path(path) -> str:
    """``path`` with the user's cache directory written as ``$HWQ_CACHE``: results and messages that
    are shared then name no machine's home directory."""
    path = Path(path)
    try:
        return "$HWQ_CACHE/" + path.relative_to(cache_dir()).as_posix()
    except ValueError:
        return str(path)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place: a reader (or a
    process killed mid-write) sees the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path):
    """Fill a temporary sibling directory in the ``with`` block, then rename it onto ``path``
    (replacing a directory already there): a reader sees the old directory or the new one, and an
    exception or a kill inside the block leaves ``path`` as it was.

    Example::

        >>> with atomic_directory("out/model") as tmp:
        ...     (tmp / "manifest.json").write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())     # mkdtemp makes 0700
        yield tmp
        old = None
        if path.exists():
            # two renames: a directory cannot replace a non-empty one in one step
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, data, indent: int | None = 1) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(data)``."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path, what: str) -> dict:
    """Read a JSON object written by hwq; a missing, truncated or corrupt file is a ``DataError``
    that names the file and ``what`` it should have been (e.g. ``"measured latency table"``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {what} at {str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {str(path)!r} is corrupt or truncated ({e}); delete it and "
                        f"write it again") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} {str(path)!r} is not a JSON object (got {type(data).__name__})")
    return data
