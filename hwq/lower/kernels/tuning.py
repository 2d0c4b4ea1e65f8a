"""Tile configs per target and workload: shipped in the project, extended by ``hwq tune``.

A compile looks its kernels' tiles up here and never searches: the search (``tune_workload``)
runs once per (target, workload), by the project's maintainers for the shipped files or by a user
through ``hwq tune``, and its winners are written to ``tuned/<target>.json``. A workload not in
the file gets the rule's heuristic tile; the compile says nothing and stays correct.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

TUNED_DIR = Path(__file__).resolve().parent / "tuned"
FORMAT_VERSION = 1


def conv_key(h, w, cin, cout, kh, kw, stride, dilation, out_dtype, kernel) -> str:
    """Workload key of a padded-input NHWC conv kernel (channels already rounded up).

    It names the kernel: one target file (``x86-host``) may build the VNNI kernel on one machine
    and the AVX2 one on another, and a tile of one means nothing to the other.
    """
    return (f"conv2d_nhwc:{h}x{w}x{cin}->{cout}:k{kh}x{kw}:s{stride[0]}x{stride[1]}:d{dilation[0]}x{dilation[1]}:"
            f"{out_dtype}:{kernel}")


def _path(target_name: str) -> Path:
    return Path(os.environ.get("HWQ_TUNED_DIR", TUNED_DIR)) / f"{target_name}.json"


_CACHE: dict = {}


def load_configs(target_name: str) -> dict:
    """``{workload key: {"tw": .., "ob": .., "ms": ..}}`` for a target (empty if none were tuned)."""
    path = _path(target_name)
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    configs = {}
    if stamp is not None:
        data = json.loads(path.read_text())
        if data.get("version") == FORMAT_VERSION:
            configs = data.get("workloads", {})
    _CACHE[path] = (stamp, configs)
    return configs


def save_configs(target_name: str, configs: dict, meta: dict | None = None) -> Path:
    """Write the tuned configs of a target atomically (temporary file renamed into place)."""
    path = _path(target_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": FORMAT_VERSION, "target": target_name, **(meta or {}),
           "workloads": dict(sorted(configs.items()))}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(doc, f, indent=1)
    os.replace(f.name, path)
    return path


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
