"""The pure layers (plain data, planning, cost) import neither torch nor tvm."""

import subprocess
import sys

PURE = ["hwq", "hwq.errors", "hwq.spec", "hwq.plan", "hwq.fixed_point", "hwq.qgraph", "hwq.target",
        "hwq.data", "hwq.timing", "hwq.cost"]


def test_pure_layers_load_neither_torch_nor_tvm():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PURE) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pure layers pulled in: {out.stdout.strip()}"


def test_only_lower_imports_tvm():
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent / "hwq"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "import tvm" in p.read_text() or "from tvm" in p.read_text()]
    assert offenders and all(o.startswith("lower/") or o == "demo.py" for o in offenders), offenders
