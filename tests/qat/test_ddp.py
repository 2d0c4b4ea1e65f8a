"""train_constrained under torchrun: two CPU processes (gloo) hold identical duals and weights."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from torch.utils.data import TensorDataset
    sys.path.insert(0, {tests!r})
    from test_constraints import Tiny, _task
    from hwq.plan import BitPlan, LayerSpec
    from hwq.qat import QATConfig, quantize_, train_constrained

    torch.manual_seed(int(os.environ["RANK"]))        # different initial weights: DDP must broadcast rank 0's
    x, y = _task(n=128)
    prepared = quantize_(Tiny().eval(), BitPlan(default=LayerSpec(4, 4)), calibration=x, range_mode=sys.argv[2])
    config = QATConfig(epochs=2, batch_size=32, lr=1e-2, dual_lr=5.0, eps=0.0, dual_period=3, gradient_mode=sys.argv[3])
    out = sys.argv[1]
    report = train_constrained(prepared, TensorDataset(x, y), config, checkpoint=os.path.join(out, "ckpt.pt"),
                               progress=False)
    state = {{k: v.tolist() for k, v in prepared.state_dict().items()}}
    with open(os.path.join(out, "rank%s.json" % os.environ["RANK"]), "w") as f:
        json.dump({{"lambdas": report.lambdas(), "history": report.history, "state": state,
                   "world": int(os.environ["WORLD_SIZE"])}}, f)
''')


def _run(tmp_path, range_mode, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).resolve().parent)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path), range_mode, mode]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)], done.stdout


def test_two_processes_agree_on_duals_and_weights(tmp_path):
    for range_mode, mode in (("learned", "fp"), ("calibrated", "ste")):
        (tmp_path / mode).mkdir()
        (r0, r1), stdout = _run(tmp_path / mode, range_mode, mode)
        assert r0["world"] == r1["world"] == 2
        assert r0["lambdas"] == r1["lambdas"] and min(r0["lambdas"].values()) > 0
        assert r0["state"] == r1["state"] and r0["history"] == r1["history"]
        assert (tmp_path / mode / "ckpt.pt").is_file()
        assert stdout.count("epoch 2/2") == 1                 # only rank 0 logs
