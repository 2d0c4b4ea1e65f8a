"""train_constrained under torchrun: two CPU processes (gloo) hold identical duals and weights, and
they are what one process computes on the same data."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from torch.utils.data import TensorDataset
    sys.path.insert(0, {tests!r})
    from test_constraints import Tiny, _task
    from hwq.plan import BitPlan, LayerSpec
    from hwq.qat import QATConfig, quantize_, train_constrained

    rank = int(os.environ.get("RANK", 0))
    torch.manual_seed(rank)                      # different initial weights: DDP must broadcast rank 0's
    x, y = _task(n=128)
    # every image holds the data's min and max: each batch's input range is the whole set's, so
    # the input quantizer tracks the same range in one process and in rank 0 of two
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0.0, 1.0
    prepared = quantize_(Tiny().eval(), BitPlan(default=LayerSpec(4, 4)), calibration=x, range_mode=sys.argv[2])
    # "mse": the mean of two half-batch constraint values is the whole batch's (not so for a ratio)
    config = QATConfig(epochs=2, batch_size=32, lr=1e-2, dual_lr=5.0, eps=0.0, dual_period=3, gradient_mode=sys.argv[3],
                       constraint_norm="mse")
    out = sys.argv[1]
    report = train_constrained(prepared, TensorDataset(x, y), config, checkpoint=os.path.join(out, "ckpt.pt"),
                               progress=False)
    state = {{k: v.tolist() for k, v in prepared.state_dict().items()}}
    with open(os.path.join(out, "rank%d.json" % rank), "w") as f:
        json.dump({{"lambdas": report.lambdas(), "history": report.history, "state": state,
                   "world": int(os.environ.get("WORLD_SIZE", 1))}}, f)
''')


def _run(tmp_path, range_mode, mode, processes):
    tmp_path.mkdir(parents=True)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parent)))
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # torchrun's standalone rendezvous now and then stalls for minutes with the work itself done in
    # seconds (seen here: 9 s of CPU in a 10-minute run): a bounded retry, not a longer timeout
    for attempt in range(3):
        try:
            done = subprocess.run([sys.executable, *launch, str(script), str(tmp_path), range_mode, mode],
                                  capture_output=True, text=True, timeout=90, env={**env, "OMP_NUM_THREADS": "1"})
            break
        except subprocess.TimeoutExpired:
            if attempt == 2:
                raise
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(processes)], done.stdout


def _close(a, b, what):
    """Equal up to the order of floating-point sums (all-reduce adds the two halves separately),
    which Adam's normalized steps and STE's rounding carry on to about 1e-4 after 8 steps; a run
    on other data, or without averaged gradients, is off by 1e-2 and more."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)) and a and isinstance(a[0], dict):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{what}[{i}]")
    else:
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-3, atol=1e-4,
                                   err_msg=what)


def test_two_processes_agree_with_each_other_and_with_one(tmp_path):
    for range_mode, mode in (("learned", "fp"), ("learned", "ste"), ("calibrated", "ste")):
        (r0, r1), stdout = _run(tmp_path / mode / range_mode / "two", range_mode, mode, 2)
        assert r0["world"] == r1["world"] == 2
        assert r0["lambdas"] == r1["lambdas"] and min(r0["lambdas"].values()) > 0
        assert r0["state"] == r1["state"] and r0["history"] == r1["history"]
        assert (tmp_path / mode / range_mode / "two" / "ckpt.pt").is_file()
        assert stdout.count("epoch 2/2") == 1                 # only rank 0 logs
        if range_mode == "calibrated":
            continue    # tracked ranges: two processes keep rank 0's half-batch ranges, one process the batch's
        (one,), _ = _run(tmp_path / mode / range_mode / "one", range_mode, mode, 1)
        assert one["world"] == 1
        _close(r0["lambdas"], one["lambdas"], f"{mode}: lambdas")
        _close(r0["state"], one["state"], f"{mode}: weights")
        _close(r0["history"], one["history"], f"{mode}: history")
