"""The layers of STYLE.md, checked by importing modules in fresh interpreters (not by reading text).

* the pure layers (plain data, planning, cost) load neither torch nor tvm;
* only ``hwq.lower`` imports tvm: every other module imports with tvm made unimportable;
* ``hwq.lower`` itself needs no torch (loading and running an artifact needs TVM and numpy only;
  ``compile_float`` imports torch when asked for). tvm_ffi imports torch whenever it is
  installed, so this is checked with torch made unimportable, not through ``sys.modules``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HWQ = Path(__file__).resolve().parent.parent / "hwq"
PURE = ["hwq", "hwq.errors", "hwq.spec", "hwq.plan", "hwq.fixed_point", "hwq.qgraph", "hwq.target",
        "hwq.data", "hwq.timing", "hwq.cost", "hwq.fileio", "hwq.memory"]

# Makes the named top-level packages unimportable in the interpreter that runs it.
_BLOCK = '''
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"{{name}} is blocked by the layering test", name=name)
sys.meta_path.insert(0, _Blocked())
'''


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=HWQ.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("module", PURE)
def test_pure_module_loads_neither_torch_nor_tvm(module):
    out = _python(f"import sys, {module}\n"
                  "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm', 'tvm_ffi'))))")
    assert out.strip() == "", f"{module} pulled in: {out.strip()}"


def test_only_lower_imports_tvm():
    modules = sorted(".".join(p.relative_to(HWQ.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in HWQ.rglob("*.py"))
    others = [m for m in modules if m != "hwq.lower" and not m.startswith("hwq.lower.")]
    assert "hwq.demo" in others and "hwq.qat" in others and len(others) > 20
    code = _BLOCK.format(blocked={"tvm", "tvm_ffi"}) + f'''
import importlib, json
offenders = {{}}
for m in {others!r}:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("tvm", "tvm_ffi"):
            offenders[m] = str(e)
        else:
            raise
print(json.dumps(offenders))
'''
    offenders = json.loads(_python(code).splitlines()[-1])
    assert offenders == {}, f"modules outside hwq.lower that import tvm when imported: {sorted(offenders)}"


def test_lower_imports_without_torch():
    code = _BLOCK.format(blocked={"torch"}) + '''
import hwq.lower, hwq.lower.compile, hwq.lower.artifact, hwq.lower.cpu_check, hwq.lower.kernels
print("ok")
'''
    assert _python(code).strip().endswith("ok")


def test_top_level_verbs_load_their_stage_on_first_use():
    code = ("import sys, hwq; assert 'torch' not in sys.modules and 'tvm' not in sys.modules; "
            "from hwq.qat import quantize_; assert hwq.quantize_ is quantize_; "
            "from hwq.lower import compile_model; assert hwq.compile_model is compile_model")
    import subprocess
    import sys
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
