"""``tune_model``: search each hwq kernel's tile on this machine and store the winners per target."""

from __future__ import annotations

import numpy as np
import tvm
from tqdm import tqdm

from hwq import qgraph as qg
from hwq.errors import ConfigError
from hwq.lower.compile import _runs_here
from hwq.lower.kernels import select_kernel, tuning
from hwq.lower.tvm_target import resolve_features, to_tvm_target
from hwq.target import Target, load_target

TUNE_BATCH = 16


def tune_model(graph: qg.QGraph, target: Target | str = "x86-host", time_budget_s: float = 20.0,
               retune: bool = False, progress: bool = True) -> dict:
    """Tune every kernel workload of ``graph`` not yet tuned for ``target``; returns what changed.

    Each workload's candidate tiles are compiled and timed at batch 16 on this machine, within
    ``time_budget_s`` per workload; the fastest is added to the user's tile file,
    ``$HWQ_CACHE/tuned/<target>.json`` (``hwq.lower.kernels.tuning.user_dir``), which compiles
    layer over the shipped tiles. The file is rewritten (atomically) after each workload, so an
    interrupted tune resumes where it stopped: tuned workloads are skipped.
    """
    if isinstance(target, str):
        target = load_target(target)
    target = resolve_features(target)
    if target.kind != "cpu":
        raise ConfigError(f"tuning searches the tiles of hwq's CPU kernels; target {target.name!r} is a "
                          f"{target.kind!r} target, whose kernels use modelled tiles (no tile search for them yet)")
    if not _runs_here(target):
        raise ConfigError(f"tuning times kernels on the machine itself, and target {target.name!r} does not "
                          f"run here; tune on the device (remote tuning is not implemented yet)")
    tvm_target = to_tvm_target(target)
    configs = tuning.load_configs(target.name)            # shipped and user's: what a compile finds
    mine = dict(tuning.user_configs(target.name))         # what is written back: the user's only
    work = {}
    for node in graph.nodes:
        if node.op in ("conv2d", "dense"):
            k = select_kernel(node, graph.tensors[node.input], graph.tensors[node.output], target)
            if k is not None and k.rebuild is not None and (retune or k.workload not in configs):
                work.setdefault(k.workload, (k, graph.tensors[node.output].dtype))
    changed = {}
    rng = np.random.default_rng(0)
    for key, (k, out_dtype) in tqdm(work.items(), desc=f"tuning for {target.name}", disable=not progress):
        in_shape = k.in_shape

        def make_args():
            lo, hi = (-128, 128) if k.in_dtype == "int8" else (0, 256)
            x = rng.integers(lo, hi, (TUNE_BATCH, *in_shape)).astype(k.in_dtype)
            out = tvm.runtime.empty((TUNE_BATCH, *k.out_shape), out_dtype)
            return [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(p) for p in k.params] + [out]

        def build(tile):
            func = k.rebuild(tile).with_attr("global_symbol", "main")
            return tvm.compile(tvm.IRModule({"main": func}), tvm_target)["main"]

        tile, ms, trials = tuning.tune_workload(build, k.candidates, make_args, time_budget_s)
        if tile is not None:
            mine[key] = changed[key] = {**vars(tile), "ms_batch16": round(ms, 4), "trials": len(trials)}
            # after every workload: a killed tune keeps what it found and resumes after it
            tuning.save_configs(target.name, mine)
    return changed

