"""``hwq tune`` killed (SIGKILL) mid-run keeps every workload it finished, and a rerun tunes only the
rest: the file ends with the workloads an uninterrupted run tunes, and no partial file remains."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

TARGET = "x86-avx2"     # no shipped tiles for ResCNN's workloads: all five are tuned


def _cmd(budget):
    return [sys.executable, "-m", "hwq.cli", "tune", "rescnn", "--target", TARGET, "--time-budget", str(budget)]


def _workloads(path):
    return json.loads(path.read_text())["workloads"] if path.is_file() else {}


@pytest.mark.slow
def test_killed_tune_resumes_where_it_stopped(tmp_path):
    env = {**os.environ, "HWQ_CACHE": str(tmp_path / "cache"), "TVM_NUM_THREADS": "1"}
    tiles = tmp_path / "cache" / "tuned" / f"{TARGET}.json"
    proc = subprocess.Popen(_cmd(2.0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _workloads(tiles):
        time.sleep(0.05)
    assert proc.poll() is None, f"tune ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _workloads(tiles)
    assert 1 <= len(before) < 5

    out = subprocess.run(_cmd(0.1), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    assert f"{5 - len(before)} workload(s) tuned" in out.stdout
    after = _workloads(tiles)
    assert all(after[k] == v for k, v in before.items())           # kept, not searched again
    fresh_env = {**env, "HWQ_CACHE": str(tmp_path / "fresh")}
    subprocess.run(_cmd(0.1), env=fresh_env, capture_output=True, text=True, timeout=600, check=True)
    assert set(after) == set(_workloads(tmp_path / "fresh" / "tuned" / f"{TARGET}.json"))
    assert [p.name for p in tiles.parent.iterdir()] == [tiles.name]
