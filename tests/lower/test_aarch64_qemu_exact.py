"""Raspberry Pi builds, cross-compiled and run under qemu-user, equal the integer reference bit for bit.

The Pi 5 build (cortex-a76 + dotprod) runs hwq's ``sdot`` kernels, the Pi 4B build (cortex-a72)
the generic lowering; qemu emulates each board's own CPU, so an instruction the core lacks would
fault rather than pass. Needs ``qemu-aarch64``, the aarch64 cross linker and an aarch64 user space
(CPython and TVM's aarch64 wheel) that ``scripts/aarch64_sysroot.sh`` builds once into
``~/.cache/hwq/aarch64`` (network access the first time); skipped, saying why, without them.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import aarch64_userland, calibrated_graph, zoo_models
from test_mixed_plans import mixed_plan
from test_mixed_plans import models as mixed_models
from hwq.lower import compile_model
from hwq.qat import quantize_ptq
from hwq.qat import run_reference
from hwq.qat.reference import quantize_input
from hwq.target import load_target

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("raspberry-pi-5", "raspberry-pi-4b")
MODELS = zoo_models()
BATCHES = (1, 5)


@pytest.fixture(scope="module")
def userland():
    """(qemu binary, cache directory with ``root/`` and ``site/``), or skip."""
    return aarch64_userland()


@pytest.fixture(scope="module")
def runs(userland, tmp_path_factory):
    """Build every model for every target, run all of a target's in one qemu process.

    Returns ``{target: (stderr of the run, {(model, batch): (output path, reference, dtype)})}``.
    """
    qemu, cache = userland
    work = tmp_path_factory.mktemp("aarch64")
    graphs = {name: calibrated_graph(model, shape, signed)[0] for name, (model, shape, signed) in MODELS.items()}
    for name, (model, shape) in mixed_models().items():      # float, 8-, 7- and 4-bit layers in one plan
        x = torch.rand(6, *shape)
        graphs[f"{name}-mixed"] = quantize_ptq(model, x, mixed_plan(model, x[:1], seed=1))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": str(cache / "site"), "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": "2"}
    out = {}
    for target in TARGETS:
        jobs, expected = [], {}
        for name, graph in graphs.items():
            if name.endswith("-mixed") and target != "raspberry-pi-5":
                continue
            shape, signed = (graph.input.shape, graph.input.dtype == "int8")
            art = compile_model(graph, target).save(work / target / name)
            for batch in BATCHES:
                g = torch.Generator().manual_seed(1000 + batch)
                # beyond the calibrated range too, so the clamps are exercised
                x = (torch.randn(batch, *shape, generator=g) * 1.5 if signed
                     else torch.rand(batch, *shape, generator=g) * 1.2)
                xi = quantize_input(graph, x)
                stem = work / target / f"{name}-b{batch}"
                np.save(f"{stem}.in.npy", xi.numpy().astype(graph.input.dtype))
                jobs.append({"artifact": str(art), "input": f"{stem}.in.npy", "output": f"{stem}.out.npy"})
                expected[(name, batch)] = (Path(f"{stem}.out.npy"), run_reference(graph, xi).numpy(),
                                          graph.output_info.dtype)
        (work / f"{target}.jobs.json").write_text(json.dumps(jobs))
        cpu = load_target(target).tvm["mcpu"]   # emulate the board's core, not qemu's superset "max"
        proc = subprocess.run([qemu, "-cpu", cpu, "-L", str(cache / "root"), str(cache / "root/usr/bin/python3.11"),
                               str(REPO / "scripts" / "aarch64_run_int.py"), str(work / f"{target}.jobs.json")],
                              env=env, capture_output=True, text=True, timeout=900)
        out[target] = (proc.stderr, expected)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("target", TARGETS)
def test_bit_exact_under_qemu(runs, target, name):
    _compare(runs, target, name)


@pytest.mark.parametrize("name", ["rescnn-mixed", "mobilenetv2-mixed"])
def test_mixed_plan_under_qemu(runs, name):
    """fp32 layers on NEON ``fmla`` kernels beside the integer ones: the integer output equals the
    reference, up to a float -> integer border rounding 1 LSB the other way (its effect bounded)."""
    _compare(runs, "raspberry-pi-5", name, mixed=True)


def _compare(runs, target, name, mixed=False):
    stderr, expected = runs[target]
    for batch in BATCHES:
        path, ref, dtype = expected[(name, batch)]
        assert path.is_file(), f"{target}/{name} batch {batch} did not run under qemu:\n{stderr[-3000:]}"
        y = np.load(path)
        assert y.shape == ref.shape and y.dtype == np.dtype(dtype), (y.shape, y.dtype, ref.shape, dtype)
        if mixed:
            # a border 1 LSB off moves the logits a little; most stay equal
            assert np.abs(y.astype(np.int64) - ref).max() <= 0.05 * np.abs(ref).max() + 1, f"{target}/{name} batch {batch}"
            continue
        assert np.array_equal(y.astype(np.int64), ref), \
            f"{target}/{name} batch {batch}: {int((y != ref).sum())} of {ref.size} values differ"
