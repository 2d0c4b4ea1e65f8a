"""The hand float32 kernels (``hwq.lower.kernels.fp32_conv``) equal torch's conv2d / linear.

Each case builds one kernel for this machine (``x86-host``: AVX-512 where the CPU has it, else
AVX2), runs it at batch 1 and 3 from one build (the batch is symbolic) and compares with
``torch.nn.functional`` in float32. ``x86-avx2`` (Zen 3) builds the 8-lane, 16-register variant,
which runs here too. One Raspberry Pi 5 build (NEON, 4 lanes) is cross-compiled and run under
qemu-user, as ``test_aarch64_qemu_exact.py`` does; skipped, saying why, without the tools.
"""

import os
import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

from conftest import aarch64_userland
from hwq.errors import DataError
from hwq.lower.kernels.fp32_conv import FloatKernel, float_conv_kernel, float_dense_kernel, vector_block
from hwq.lower.tvm_target import cross_fcompile, resolve_features, to_tvm_target
from hwq.target import load_target

INF = float("inf")
RELU, RELU6 = (0.0, INF), (0.0, 6.0)
BATCHES = (1, 3)


def _build(k: FloatKernel, target):
    mod = tvm.IRModule({"main": k.func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, to_tvm_target(resolve_features(target)))


def _run(lib, k: FloatKernel, x: np.ndarray, r: np.ndarray | None) -> np.ndarray:
    out = tvm.runtime.empty((x.shape[0], *k.out_shape), "float32")
    args = [x, *k.params] + ([] if r is None else [r])
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args), out)
    return out.numpy()


def _clamp(y: torch.Tensor, act) -> torch.Tensor:
    return y if act is None else y.clamp(act[0], act[1])


def _conv_case(seed, hwc, cout, k, stride=1, padding=0, dilation=1, groups=1, act=None, residual=False, bias=True):
    """``(float_conv_kernel args, [(x, residual or None, reference) per batch])`` of one case, NHWC."""
    g = torch.Generator().manual_seed(seed)
    h, w, c = hwc
    weight = torch.randn(cout, c // groups, k, k, generator=g) / (c // groups * k * k) ** 0.5
    b = torch.randn(cout, generator=g) if bias else None
    cases = []
    for n in BATCHES:
        x = torch.randn(n, c, h, w, generator=g) * 2
        if isinstance(padding, tuple) and len(padding) == 4:    # (top, bottom, left, right): torch pads evenly
            top, bottom, left, right = padding
            y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, b, stride, 0, dilation, groups)
        else:
            y = F.conv2d(x, weight, b, stride, padding, dilation, groups)
        r = torch.randn(y.shape, generator=g) if residual else None
        ref = _clamp(y if r is None else y + r, act).permute(0, 2, 3, 1).numpy()
        cases.append((x.permute(0, 2, 3, 1).numpy(), None if r is None else r.permute(0, 2, 3, 1).numpy(), ref))
    args = (hwc, weight.numpy(), None if b is None else b.numpy(), stride, padding, dilation, groups, act, residual)
    return args, cases


CONVS = {
    "3x3-pad1-relu": dict(hwc=(9, 10, 16), cout=32, k=3, padding=1, act=RELU),
    "3x3-stride2-pad1": dict(hwc=(11, 12, 8), cout=16, k=3, stride=2, padding=1),
    "3x3-dilation2-pad2-relu6": dict(hwc=(10, 9, 8), cout=16, k=3, padding=2, dilation=2, act=RELU6),
    "1x1-relu6": dict(hwc=(7, 7, 24), cout=48, k=1, act=RELU6),
    "1x1-residual": dict(hwc=(6, 8, 32), cout=16, k=1, residual=True),
    "3x3-residual-relu": dict(hwc=(8, 8, 16), cout=16, k=3, padding=1, act=RELU, residual=True),
    "stem-3x3-s2-3ch-relu6": dict(hwc=(16, 15, 3), cout=32, k=3, stride=2, padding=1, act=RELU6),
    "stem-7x7-s2-3ch": dict(hwc=(20, 20, 3), cout=16, k=7, stride=2, padding=3, act=RELU),
    "odd-cout-24": dict(hwc=(8, 8, 8), cout=24, k=3, padding=1, act=RELU6),
    "odd-cout-10-residual": dict(hwc=(7, 9, 12), cout=10, k=3, padding=1, residual=True, bias=False),
    "asymmetric-padding": dict(hwc=(8, 7, 8), cout=16, k=3, stride=2, padding=(0, 1, 1, 0)),
    "depthwise-3x3-relu6": dict(hwc=(10, 10, 32), cout=32, k=3, padding=1, groups=32, act=RELU6),
    "depthwise-3x3-s2": dict(hwc=(11, 11, 48), cout=48, k=3, stride=2, padding=1, groups=48),
    "depthwise-5x5-d2-residual": dict(hwc=(12, 12, 24), cout=24, k=5, padding=4, dilation=2, groups=24,
                                      residual=True, act=RELU),
}


def _check_conv(target_name, case):
    target = load_target(target_name)
    args, cases = _conv_case(sorted(CONVS).index(case), **CONVS[case])
    k = float_conv_kernel(*args, target=target)
    assert k is not None and k.name.startswith("fp32_depthwise" if args[6] > 1 else "fp32_conv")
    lib = _build(k, target)
    for x, r, ref in cases:
        y = _run(lib, k, x, r)
        assert y.shape == ref.shape, (y.shape, ref.shape)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_equals_torch(case):
    _check_conv("x86-host", case)


@pytest.mark.parametrize("case", ["3x3-pad1-relu", "odd-cout-24", "depthwise-3x3-s2", "stem-3x3-s2-3ch-relu6"])
def test_avx2_build_equals_torch(case):
    _check_conv("x86-avx2", case)


@pytest.mark.parametrize("cout, act, residual", [(32, RELU, False), (10, None, True), (40, RELU6, False)])
def test_dense_equals_torch(cout, act, residual):
    g = torch.Generator().manual_seed(cout)
    cin = 48
    weight, b = torch.randn(cout, cin, generator=g) / cin ** 0.5, torch.randn(cout, generator=g)
    target = load_target("x86-host")
    k = float_dense_kernel(cin, weight.numpy(), b.numpy(), act, residual, target)
    assert k.out_shape == (cout,) and k.name.startswith("fp32_dense")
    lib = _build(k, target)
    for n in BATCHES:
        x = torch.randn(n, cin, generator=g)
        y = F.linear(x, weight, b)
        r = torch.randn(y.shape, generator=g) if residual else None
        ref = _clamp(y if r is None else y + r, act).numpy()
        np.testing.assert_allclose(_run(lib, k, x.numpy(), None if r is None else r.numpy()), ref, rtol=1e-4, atol=1e-4)


def test_no_kernel_where_none_applies():
    w = np.ones((16, 16, 3, 3), np.float32)
    host = load_target("x86-host")
    assert float_conv_kernel((8, 8, 16), w, None, 1, 1, 1, 1, RELU, False, load_target("nvidia-t4")) is None
    assert float_dense_kernel(16, w[:, :, 0, 0], None, None, False, load_target("nvidia-t4")) is None
    # grouped (not depthwise) convs, and depthwise convs whose channels fill no 4-lane vector
    assert float_conv_kernel((8, 8, 16), w[:, :8], None, 1, 1, 1, 2, None, False, host) is None
    assert float_conv_kernel((8, 8, 6), w[:6, :1], None, 1, 1, 1, 6, None, False, host) is None


def test_bad_shapes_are_named():
    host = load_target("x86-host")
    w = np.ones((16, 8, 3, 3), np.float32)
    with pytest.raises(DataError, match="8 channels|input of 4"):
        float_conv_kernel((8, 8, 4), w, None, 1, 1, 1, 1, None, False, host)
    with pytest.raises(DataError, match="bias"):
        float_conv_kernel((8, 8, 8), w, np.ones(15, np.float32), 1, 1, 1, 1, None, False, host)
    with pytest.raises(DataError, match="clamp"):
        float_conv_kernel((8, 8, 8), w, None, 1, 1, 1, 1, (6.0, 0.0), False, host)
    with pytest.raises(DataError, match="padding"):
        float_conv_kernel((8, 8, 8), w, None, 1, "same", 1, 1, None, False, host)


def test_tuned_tiles_are_used(tmp_path, monkeypatch):
    """A tile in the user's tuned-tile file (``hwq tune`` writes it) wins over the heuristic one."""
    from hwq.lower.kernels import tuning

    host = load_target("x86-host")
    w = np.ones((32, 16, 3, 3), np.float32)
    k = float_conv_kernel((14, 14, 16), w, None, 1, 1, 1, 1, RELU, False, host)
    assert k.tile in k.candidates and k.workload.endswith(k.name)
    other = next(t for t in k.candidates if t != k.tile)
    monkeypatch.setenv("HWQ_TUNED_DIR", str(tmp_path))
    tuning.save_configs(host.name, {k.workload: {**vars(other), "ms_batch16": 1.0}})
    assert float_conv_kernel((14, 14, 16), w, None, 1, 1, 1, 1, RELU, False, host).tile == other


def test_vector_block_pads_least():
    assert vector_block(64, 16) == 16 and vector_block(24, 16) == 16 and vector_block(4, 16) == 4
    assert vector_block(24, 8) == 8 and vector_block(12, 8) == 8 and vector_block(4, 8) == 4
    assert vector_block(10, 4) == 4


def test_lanes_follow_the_target():
    w = np.ones((32, 8, 3, 3), np.float32)
    for target, name, block in [("x86-avx2", "fp32_conv_avx2", 8), ("raspberry-pi-5", "fp32_conv_neon", 4),
                                ("raspberry-pi-4b", "fp32_conv_neon", 4)]:
        k = float_conv_kernel((8, 8, 8), w, None, 1, 1, 1, 1, None, False, load_target(target))
        assert k.name == name and k.params[0].shape == (32 // block, 3, 3, 8, block)


@pytest.mark.parametrize("target, fma, absent", [
    ("x86-cascadelake", r"vfmadd\d+ps\s.*%zmm", None),      # named CPUs: the same on any build machine
    ("x86-avx2", r"vfmadd\d+ps\s.*%ymm", r"%zmm"),
    ("raspberry-pi-5", r"fmla\s+v\d+\.4s", None),
])
def test_fma_reaches_the_machine_code(target, fma, absent):
    """Every kernel kind is an unrolled tile of vector FMAs in the ISA's widest registers."""
    t = load_target(target)
    w = np.ones((64, 16, 3, 3), np.float32)
    kernels = [float_conv_kernel((14, 14, 16), w, None, 1, 1, 1, 1, RELU, False, t),
               float_conv_kernel((14, 14, 64), w[:, :1], None, 1, 1, 1, 64, RELU6, False, t),
               float_dense_kernel(16, w[:, :, 0, 0], None, None, False, t)]
    for k in kernels:
        lib = tvm.compile(tvm.IRModule({"main": k.func.with_attr("global_symbol", "main")}), to_tvm_target(t))
        asm = "".join(m.inspect_source("asm") or "" for m in [lib.mod, *lib.mod.imports] if m.kind == "llvm")
        assert len(re.findall(fma, asm)) >= 8, (target, k.name)
        assert absent is None or not re.search(absent, asm), (target, k.name)


# --- aarch64: one NEON build run under qemu-user (the runner needs numpy and TVM's runtime only)
_RUNNER = """
import sys, numpy as np, tvm
lib = tvm.runtime.load_module(sys.argv[1])
for stem in sys.argv[2:]:
    d = np.load(stem + ".npz")
    args = [tvm.runtime.tensor(d[f"a{i}"]) for i in range(len(d.files) - 1)]
    out = tvm.runtime.empty(d["out_shape"].tolist(), "float32")
    lib[stem.rsplit("/", 1)[-1]](*args, out)
    np.save(stem + ".out.npy", out.numpy())
"""


@pytest.mark.slow
def test_neon_build_under_qemu(tmp_path):
    qemu, cache = aarch64_userland()
    target = load_target("raspberry-pi-5")
    funcs, expected = {}, {}
    for case in ("3x3-residual-relu", "stem-3x3-s2-3ch-relu6", "depthwise-3x3-s2", "odd-cout-10-residual"):
        args, cases = _conv_case(sorted(CONVS).index(case), **CONVS[case])
        k = float_conv_kernel(*args, target=target)
        assert k.name.endswith("_neon")
        fname = case.replace("-", "_")
        funcs[fname] = k.func.with_attr("global_symbol", fname)
        x, r, ref = cases[1]                                    # batch 3
        inputs = [x, *k.params] + ([] if r is None else [r])
        np.savez(tmp_path / f"{fname}.npz", **{f"a{i}": a for i, a in enumerate(inputs)},
                 out_shape=np.array(ref.shape))
        expected[fname] = ref
    lib = tvm.compile(tvm.IRModule(funcs), to_tvm_target(target))
    so = tmp_path / "kernels.so"
    lib.export_library(str(so), fcompile=cross_fcompile(target))
    (tmp_path / "run.py").write_text(_RUNNER)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": str(cache / "site"), "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": "2"}
    proc = subprocess.run([qemu, "-cpu", target.tvm["mcpu"], "-L", str(cache / "root"),
                           str(cache / "root/usr/bin/python3.11"), str(tmp_path / "run.py"), str(so),
                           *(str(tmp_path / f) for f in funcs)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fname, ref in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{fname}.out.npy"), ref, rtol=1e-4, atol=1e-4, err_msg=fname)
