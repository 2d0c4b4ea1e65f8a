"""Tile configs per target and workload: shipped in the package, extended by ``hwq tune``.

A compile looks its kernels' tiles up here and never searches: the search (``tune_workload``)
runs once per (target, workload), by the project's maintainers for the shipped files
(``hwq/lower/kernels/tuned/<target>.json``, package data) or by a user through ``hwq tune``, whose
winners go to the user's own file, ``$HWQ_CACHE/tuned/<target>.json`` (``$HWQ_TUNED_DIR`` names
another directory), never into the installed package. A lookup layers the user's file over the
shipped one. A workload in neither gets the rule's heuristic tile; the compile says nothing and
stays correct. (Maintainers refresh the shipped tiles with ``HWQ_TUNED_DIR=hwq/lower/kernels/tuned``.)
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hwq.errors import DataError
from hwq.fileio import atomic_write_json, cache_dir, read_json

SHIPPED_DIR = Path(__file__).resolve().parent / "tuned"
ENV_DIR = "HWQ_TUNED_DIR"     # the user's tuned tiles: $HWQ_TUNED_DIR, else $HWQ_CACHE/tuned
FORMAT_VERSION = 1


def conv_key(h, w, cin, cout, kh, kw, stride, dilation, out_dtype, kernel) -> str:
    """Workload key of a padded-input NHWC conv kernel (channels already rounded up).

    It names the kernel: one target file (``x86-host``) may build the VNNI kernel on one machine
    and the AVX2 one on another, and a tile of one means nothing to the other.
    """
    return (f"conv2d_nhwc:{h}x{w}x{cin}->{cout}:k{kh}x{kw}:s{stride[0]}x{stride[1]}:d{dilation[0]}x{dilation[1]}:"
            f"{out_dtype}:{kernel}")


def user_dir() -> Path:
    """Where ``hwq tune`` writes: ``$HWQ_TUNED_DIR``, else ``tuned/`` in the user cache directory.
    Read per call so a test or a shell can redirect it."""
    return Path(os.environ.get(ENV_DIR) or cache_dir() / "tuned")


_CACHE: dict = {}


def _read(path: Path) -> dict:
    """The workloads of one tile file (empty if it is missing or of another format version)."""
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    configs = {}
    if stamp is not None:
        data = read_json(path, "tuned tile file")
        if data.get("version") == FORMAT_VERSION:
            configs = data.get("workloads", {})
            if not isinstance(configs, dict):
                raise DataError(f"tuned tile file {str(path)!r}: 'workloads' must be an object, got "
                                f"{type(configs).__name__}; delete the file and run 'hwq tune' again")
    _CACHE[path] = (stamp, configs)
    return configs


def user_configs(target_name: str) -> dict:
    """The tiles the user tuned for a target (``hwq tune``), without the shipped ones."""
    return _read(user_dir() / f"{target_name}.json")


def load_configs(target_name: str) -> dict:
    """``{workload key: {"tw": .., "ob": .., "ms": ..}}`` for a target: the shipped tiles with the
    user's over them (empty if none were tuned)."""
    return {**_read(SHIPPED_DIR / f"{target_name}.json"), **user_configs(target_name)}


def save_configs(target_name: str, configs: dict, meta: dict | None = None) -> Path:
    """Write the user's tuned configs of a target (atomically) to :func:`user_dir`."""
    doc = {"version": FORMAT_VERSION, "target": target_name, **(meta or {}),
           "workloads": dict(sorted(configs.items()))}
    return atomic_write_json(user_dir() / f"{target_name}.json", doc)


def tune_workload(build, candidates, make_args, time_budget_s: float = 30.0, timer=None):
    """Time each candidate tile and return ``(best_tile, best_ms, trials)``.

    Args:
        build: ``tile -> callable`` compiled kernel (``None`` when the tile does not apply).
        candidates: tiles to try, most promising first (the budget may stop the search early).
        make_args: ``() -> list`` of runtime arguments of the kernel.
        time_budget_s: wall-clock bound for the whole search of this workload.
    """
    from hwq.timing import median_ms

    timer = timer or (lambda fn: median_ms(fn, warmup=2, iters=10, min_seconds=0.1))
    args = make_args()
    start = time.perf_counter()
    trials = []
    for tile in candidates:
        if trials and time.perf_counter() - start > time_budget_s:
            break
        try:
            fn = build(tile)
        except Exception:  # noqa: BLE001 (a tile a schedule primitive rejects is just not a candidate)
            continue
        if fn is None:
            continue
        trials.append((timer(lambda: fn(*args)), tile))
    if not trials:
        return None, float("nan"), []
    ms, tile = min(trials, key=lambda t: t[0])
    return tile, ms, [(asdict(t), m) for m, t in trials]


def random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
