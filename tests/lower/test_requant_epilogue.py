"""The kernels' requantization epilogue equals ``hwq.fixed_point.requantize`` in both of its forms:
int64 (``M``, ``n``) and the 32-bit multiply-high one (``M``, ``n - 32``) picked when every ``n >= 33``."""

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from hwq import qgraph as qg
from hwq.fixed_point import requantize
from hwq.lower.kernels import cpu_depthwise
from hwq.lower.kernels.conv_params import requant_params
from hwq.lower.kernels.dot_conv import epilogue

HOST = tvm.target.Target({"kind": "llvm"})


def _requant(mult, shift, qmin=-128, qmax=127):
    return qg.Requant(np.asarray(mult, np.int64), np.asarray(shift, np.int64), qmin, qmax)


def test_requant_params_pick_the_32_bit_form_only_when_every_shift_allows_it():
    m, s, lo, hi = requant_params(_requant([1 << 30, 3 << 29], [33, 62]), 2, 8)
    assert m.dtype == np.int32 and s.dtype == np.int32 and (lo, hi) == (-128, 127)
    assert list(s[:2]) == [1, 30] and list(m[:2]) == [1 << 30, 3 << 29]
    m, s, _, _ = requant_params(_requant([1 << 30, 3 << 29], [32, 40]), 2, 8)
    assert m.dtype == np.int64 and list(s[:2]) == [32, 40]
    m, s, _, _ = requant_params(None, 2, 8)                      # int32 output: placeholders
    assert m.dtype == np.int64


def _edge_accumulators(rng, n):
    edges = np.array([0, 1, -1, 2 ** 31 - 1, -2 ** 31 + 1, 2 ** 30, -2 ** 30, 12345, -12345], np.int64)
    return np.concatenate([edges, rng.integers(-2 ** 31 + 1, 2 ** 31, n - edges.size)]).astype(np.int32)


@pytest.mark.parametrize("out_dtype, qmin, qmax", [("int8", -128, 127), ("uint8", 0, 255), ("int32", 0, 0)])
def test_epilogue_matches_fixed_point_over_the_int32_range(out_dtype, qmin, qmax):
    """Vectorized by 8 like the kernels (LLVM lowers the multiply-high per vector), accumulators up
    to the int32 limits, multipliers and shifts over their whole range, ties included."""
    rng = np.random.default_rng(0)
    lanes, n = 8, 4096
    acc = _edge_accumulators(rng, n)
    bias = np.zeros(n, np.int32)                                   # |acc + bias| < 2^31 is the kernels' contract
    mult = rng.integers(2 ** 30, 2 ** 31, n).astype(np.int64)
    shift = rng.integers(33, 63, n).astype(np.int64)
    mult[:lanes], shift[:lanes] = 2 ** 30, 33                      # exact halves: round-half-up ties
    for form in ("int64", "int32"):
        A = te.placeholder((n,), "int32", name="acc")
        B = te.placeholder((n,), "int32", name="bias")
        M = te.placeholder((n,), form, name="mult")
        S = te.placeholder((n,), form, name="shift")
        out = te.compute((n,), lambda i: epilogue(A[i], B[i], M[i], S[i], out_dtype, qmin, qmax), name="out")
        sch = tvm.s_tir.Schedule(te.create_prim_func([A, B, M, S, out]))
        _, inner = sch.split(sch.get_loops(sch.get_sblock("out"))[0], [None, lanes])
        sch.vectorize(inner)
        f = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), HOST)["main"]
        m_arg, s_arg = (mult, shift) if form == "int64" else (mult.astype(np.int32), (shift - 32).astype(np.int32))
        y = tvm.runtime.empty((n,), out_dtype)
        f(*[tvm.runtime.tensor(a) for a in (acc, bias, m_arg, s_arg)], y)
        if out_dtype == "int32":
            expected = acc.astype(np.int64)
        else:
            expected = requantize(acc.astype(np.int64) + bias, mult, shift, qmin, qmax)
        assert np.array_equal(y.numpy().astype(np.int64), expected), form


@pytest.mark.parametrize("pad", [0, 1], ids=["padded-input", "pads-itself"])
@pytest.mark.parametrize("shifts", [(34, 40), (20, 36)], ids=["int32-form", "int64-form"])
def test_depthwise_kernel_is_exact_with_the_bias_in_the_accumulator(shifts, pad):
    """The scheduled kernel (bias moved into the accumulator's initial value) against numpy; with
    ``pad`` it reads the unpadded input and pads it with zeros itself."""
    rng = np.random.default_rng(1)
    b, h, w, c = 2, 10, 9, 32
    x = rng.integers(0, 256, (b, h, w, c)).astype(np.uint8)
    wt = rng.integers(-128, 128, (3, 3, c)).astype(np.int8)
    bias = rng.integers(-2 ** 20, 2 ** 20, c).astype(np.int32)
    lo, hi = shifts
    rq = _requant(rng.integers(2 ** 30, 2 ** 31, c), rng.integers(lo, hi, c), 0, 255)
    mult, shift, qmin, qmax = requant_params(rq, c, c)
    assert str(mult.dtype) == ("int32" if lo >= 33 else "int64")
    args = cpu_depthwise.depthwise_compute(tirx.Var("n", "int64"), h + 2 * pad, w + 2 * pad, c, "uint8", 3, 3, (1, 2),
                                           (1, 1), "uint8", qmin, qmax, str(mult.dtype), pad=(pad, pad))
    func = cpu_depthwise.schedule_depthwise(te.create_prim_func(args), cpu_depthwise.DepthwiseTile(tw=4, cb=1, lanes=16))
    assert "bias" in func.script().split("acc_init")[1].split("acc_update")[0]   # the accumulator starts from it
    f = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), HOST)["main"]
    oh, ow = h + 2 * pad - 2, (w + 2 * pad - 3) // 2 + 1
    y = tvm.runtime.empty((b, oh, ow, c), "uint8")
    f(*[tvm.runtime.tensor(a) for a in (x, wt, bias, mult, shift)], y)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    acc = np.zeros((b, oh, ow, c), np.int64)
    for i in range(3):
        for j in range(3):
            acc += xp[:, i:i + oh, j:j + 2 * ow - 1:2, :].astype(np.int64) * wt[i, j].astype(np.int64)
    expected = requantize(acc + bias, rq.multiplier, rq.shift, qmin, qmax)
    assert np.array_equal(y.numpy().astype(np.int64), expected)
    assert 0 < (expected == 255).mean() < 1 or 0 < (expected == 0).mean() < 1
