"""Run the integer program (``forward_int``) of hwq artifacts with TVM's runtime alone.

Meant for the aarch64 CPython of ``scripts/aarch64_sysroot.sh`` under qemu-user, where neither
hwq nor TVM's compiler is importable (``TVM_USE_RUNTIME_LIB=1`` loads the runtime library only):
it needs numpy and ``tvm.runtime``, nothing else.

Usage: python aarch64_run_int.py JOBS.json
    JOBS.json: a list of {"artifact": dir, "input": x.npy, "output": y.npy}; each artifact is
    loaded once, each input run, each output written. A failure is reported per job (the exit
    status is 1 if any failed), so one crashing model does not hide the others' results.
"""

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine


def main(jobs_path: str) -> int:
    jobs = json.loads(Path(jobs_path).read_text())
    vms, failed = {}, 0
    for job in jobs:
        try:
            art = Path(job["artifact"])
            if art not in vms:
                manifest = json.loads((art / "manifest.json").read_text())
                vms[art] = VirtualMachine(tvm.runtime.load_module(str(art / manifest["library"])), tvm.cpu())
            x = np.load(job["input"])
            y = vms[art]["forward_int"](tvm.runtime.tensor(x))
            np.save(job["output"], y.numpy())
        except Exception:  # noqa: BLE001 (report and go on with the next job)
            failed += 1
            print(f"FAILED {job}:\n{traceback.format_exc()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
