"""``hwq train`` killed (SIGKILL) mid-epoch resumes from its last checkpointed step with ``--resume``
and ends exactly where an uninterrupted run ends; no partial file is left behind."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from hwq.data.fashion_mnist import DEBIAN_DIR

needs_data = pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")

# a tiny run: 32 steps per epoch, a checkpoint every 2 of them
ARGS = ["train", "--width", "8", "--float-epochs", "1", "--float-subset", "500", "--train-subset", "2048",
        "--test-subset", "500", "--epochs", "2", "--batch-size", "64", "--checkpoint-steps", "2", "--no-progress"]


def _cmd(out):
    return [sys.executable, "-m", "hwq.cli", *ARGS, "--out", str(out)]


def _position(path):
    """(epoch, step) of a checkpoint, or None while there is none."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["epoch"], state["step"]


def _results(out):
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("config")                      # holds --resume and the output directory
    for key in ("report", "checkpoint"):
        summary.pop(key)
    return state, json.loads((out / "sensitivity.json").read_text()), summary


@pytest.mark.slow
@needs_data
def test_killed_train_resumes_to_the_same_model(tmp_path):
    env = {**os.environ, "HWQ_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cmd(whole), env=env, capture_output=True, text=True, timeout=600, check=True)

    proc = subprocess.Popen(_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        pos = _position(killed / "checkpoint.pt")
        if pos is not None and pos[0] == 0 and pos[1] >= 4:       # mid-way through the first epoch
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"train ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    at = _position(killed / "checkpoint.pt")
    assert at[0] == 0 and at[1] > 0

    out = subprocess.run(_cmd(killed) + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    assert f"in epoch 1 after step {at[1]}" in out.stdout
    state_a, report_a, summary_a = _results(whole)
    state_b, report_b, summary_b = _results(killed)
    assert state_a["model"].keys() == state_b["model"].keys()
    for key, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][key]), key
    assert torch.equal(state_a["lam"], state_b["lam"])
    assert report_a == report_b and summary_a == summary_b
    assert sorted(p.name for p in killed.iterdir()) == ["checkpoint.pt", "sensitivity.json", "summary.json"]
