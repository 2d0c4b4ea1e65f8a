"""``hwq profile``'s measurements: locally, over a real TVM RPC server on loopback, and resumed after a kill."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hwq.cost import CostModel, LatencyTable
from hwq.cost.machine import this_cpu
from hwq.errors import ConfigError, DeviceError
from hwq.lower.profile import kernel_workloads, measure_kernels, measure_model, measure_ratio, record_model
from hwq.lower.tvm_target import resolve_features
from hwq.plan import BitPlan, LayerSpec
from hwq.target import load_target

AVX2 = "x86-avx2"    # AVX2 kernels run on every x86 machine hwq is tested on; three kernel families


def _profile(graph, device=None, path=None):
    target = resolve_features(load_target(AVX2))
    table = LatencyTable(AVX2, this_cpu(), getattr(device, "remote", None), path=path)
    measure_kernels([graph], target, table, device, batches=(1, 4), repeats=3, progress=False)
    return target, table


def test_local_profile_measures_every_kernel_of_every_option(rescnn_graph, tmp_path):
    target, table = _profile(rescnn_graph, path=tmp_path / "t.json")
    pairs = kernel_workloads([rescnn_graph], target)
    assert {k.name for _, k in pairs} == {"x86-avx2", "x86-avx2-maddubs", "x86-avx2-s4", "fp32-avx2"}
    assert len(table.kernels) == 2 * len(pairs)
    assert all(m.median_ms > 0 and m.q1_ms <= m.median_ms <= m.q3_ms and m.repeats == 3 for m in table.kernels.values())
    assert LatencyTable.load(tmp_path / "t.json").kernels == table.kernels      # saved as it went
    est = CostModel(target, table).plan(rescnn_graph, BitPlan(), batch=4)
    assert {r.estimate.source for r in est.rows} == {"measured"}
    fp32 = BitPlan(layers={r.name: LayerSpec.parse("fp32") for r in est.rows})
    rows = CostModel(target, table).plan(rescnn_graph, fp32, batch=4).rows
    assert {(r.estimate.kernel, r.estimate.source) for r in rows} == {("fp32-avx2", "measured")}
    # resuming measures nothing twice
    assert measure_kernels([rescnn_graph], target, table, batches=(1, 4), repeats=3, progress=False) == 0


def test_profile_over_loopback_rpc_gives_the_same_kind_of_table(rescnn_graph, tmp_path):
    from tvm import rpc

    from hwq.lower import compile_model
    from hwq.lower.device import RpcDevice

    server = rpc.Server(host="127.0.0.1", port=9310, port_end=9390, silent=True, timeout=120)
    try:
        device = RpcDevice("127.0.0.1", server.port, timeout_s=120)
        assert device.describe() == f"rpc 127.0.0.1:{server.port}"
        target, remote = _profile(rescnn_graph, device, tmp_path / "remote.json")
        _, local = _profile(rescnn_graph, None, tmp_path / "local.json")
        assert remote.remote == device.remote and set(remote.kernels) == set(local.kernels)
        assert all(m.median_ms > 0 for m in remote.kernels.values())
        # a whole model through the Relax VM over RPC: set_input + invoke_stateful + time_evaluator
        compiled = compile_model(rescnn_graph, target)
        timing = measure_model(compiled, device, batch=2, repeats=3)
        entry = record_model(remote, "rescnn|uniform-w8a8|b2", rescnn_graph, BitPlan(), target, 2, timing)
        assert 0 < entry["q1_ms"] <= entry["median_ms"] <= entry["q3_ms"] and entry["glue_ops"] > 0
        # a plan against a reference timed back to back (verify of "0.8x" budgets): itself is ~1x
        ratio, ms, ref_ms = measure_ratio(compiled, compiled, device, batch=2, rounds=2, repeats=2)
        assert 0.5 < ratio < 2 and ms > 0 and ref_ms > 0
        with pytest.raises(ConfigError, match="rounds.*0"):
            measure_ratio(compiled, compiled, device, rounds=0)
    finally:
        server.terminate()


def test_unreachable_board_is_a_device_error_naming_it():
    import socket

    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from hwq.lower.device import RpcDevice

    with pytest.raises(DeviceError, match=f"rpc 127.0.0.1:{port} failed to connect after 3 tries"):
        RpcDevice("127.0.0.1", port, timeout_s=5)


@pytest.mark.slow
def test_killed_profile_resumes_to_the_same_table(tmp_path):
    """SIGKILL ``hwq profile`` once its table has entries; the rerun completes it, and no partial file remains."""
    env = {**os.environ, "HWQ_CACHE": str(tmp_path / "cache"), "TVM_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hwq.cli", "profile", "rescnn", "--target", AVX2, "--batch", "1", "--repeats", "2",
           "--kernels-only", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    table_dir = tmp_path / "cache" / "measured" / AVX2
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        files = list(table_dir.glob("*.json")) if table_dir.is_dir() else []
        if files and len(LatencyTable.load(files[0]).kernels) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"profile ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(LatencyTable.load(next(table_dir.glob("*.json"))).kernels)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    assert "resuming" in out.stdout and f"{partial} kernel entries already measured" in out.stdout
    (path,) = table_dir.glob("*.json")
    done = LatencyTable.load(path)
    graph_keys = {k for k in done.kernels}
    fresh_env = {**env, "HWQ_CACHE": str(tmp_path / "fresh")}
    subprocess.run(cmd, env=fresh_env, capture_output=True, text=True, timeout=600, check=True)
    (fresh,) = (tmp_path / "fresh" / "measured" / AVX2).glob("*.json")
    assert graph_keys == set(LatencyTable.load(fresh).kernels)
    assert not [p for p in table_dir.iterdir() if p.name.endswith(".tmp")]
