"""Same inputs, seed and versions give the same integer program, the same plan, the same integer
outputs and a byte-identical artifact, checked in two fresh processes with different hash seeds (so
neither dict order under ``PYTHONHASHSEED`` nor state left in one process can hide a difference)
and between two builds in one process (TVM's shape functions came out in an order that depended on
object addresses: ``hwq.lower.shape_order``)."""

import json
import os
import subprocess
import sys

import pytest

_RUN = r"""
import hashlib, json, sys
import numpy as np, torch
from hwq.alloc.build import budget_ms, build_allocation
from hwq.alloc.solve import solve_exact
from hwq.cost import CostModel
from hwq.errors import InfeasibleBudgetError
from hwq.lower import compile_model
from hwq.models import ResCNN
from hwq.qat import quantize_ptq, run_reference
from hwq.qat.reference import quantize_input

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode()); h.update(a.tobytes())
    return h.hexdigest()

torch.manual_seed(0)
model = ResCNN(width=8).eval()
calib = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
graph = quantize_ptq(model, calib)
arrays = []
for node in graph.nodes:
    for field in ("weight", "bias"):
        if hasattr(node, field):
            arrays.append(getattr(node, field))
    rq = getattr(node, "requant", None)
    if rq is not None:
        arrays += [rq.multiplier, rq.shift]
scales = [[name, t.scale, t.qmin, t.qmax] for name, t in sorted(graph.tensors.items())]
losses = lambda layer, options: [0.01 * (i + 1) * (1 + len(layer)) for i, _ in enumerate(options)]
alloc = build_allocation(graph, CostModel("x86-avx2", table=None), losses, batch=1)
try:
    solve_exact(alloc.problem, 1e-9)
except InfeasibleBudgetError as e:
    fastest = e.fastest_ms
plan = alloc.plan(solve_exact(alloc.problem, (fastest + budget_ms(alloc, "1x")) / 2).choice)
path = compile_model(graph, "x86-avx2").save(sys.argv[1])
again = compile_model(graph, "x86-avx2")
path_again = again.save(sys.argv[1] + "-again")
x = quantize_input(graph, torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2)))
out = again.run_int(x.numpy().astype(graph.input.dtype))
assert np.array_equal(out.astype(np.int64), run_reference(graph, x).numpy())
print(json.dumps({"graph": digest(*arrays), "scales": scales, "plan": plan.to_json(),
                  "library": hashlib.sha256((path / "model.so").read_bytes()).hexdigest(),
                  "library_again": hashlib.sha256((path_again / "model.so").read_bytes()).hexdigest(),
                  "manifest": hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest(),
                  "manifest_again": hashlib.sha256((path_again / "manifest.json").read_bytes()).hexdigest(),
                  "manifest_sha256": json.loads((path / "manifest.json").read_text())["sha256"],
                  "outputs": digest(out)}))
"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("repro")
    results = []
    for i, hash_seed in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HWQ_CACHE": str(tmp_path / "cache")}
        out = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path / f"artifact{i}")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-1500:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_two_processes_give_the_same_graph_plan_and_outputs(two_runs):
    a, b = two_runs
    assert a["graph"] == b["graph"] and a["scales"] == b["scales"]
    assert a["plan"] == b["plan"]
    assert a["outputs"] == b["outputs"]
    assert a["library"] == a["manifest_sha256"] and b["library"] == b["manifest_sha256"]


@pytest.mark.slow
def test_two_builds_give_byte_identical_artifacts(two_runs):
    a, b = two_runs
    for run in (a, b):      # two builds in one process
        assert run["library"] == run["library_again"] and run["manifest"] == run["manifest_again"]
    assert a["library"] == b["library"] and a["manifest"] == b["manifest"]   # and in two processes
