"""Property tests of the integer kernels: random conv / dense layers (shapes, strides, paddings,
dilations, groups, weight and activation widths) with requantization multipliers and shifts at the
edges of ``hwq.fixed_point``'s ranges, built for the host's kernels (``x86-host``: VNNI where the
CPU has it), the AVX2 kernels and the generic fallback (a target without kernel features), each
bit-exact against the torch integer reference.

Every example builds three TVM modules, so the example counts are small; ``derandomize`` keeps CI
runs the same; ``pytest --hypothesis-seed=N`` with ``derandomize`` off explores others.
"""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwq import qgraph as qg
from hwq.fixed_point import MAX_SHIFT, MIN_SHIFT
from hwq.lower import compile_model
from hwq.qat import run_reference
from hwq.target import load_target

M_LO, M_HI = 2 ** 30, 2 ** 31 - 1            # quantize_multiplier's mantissas: [2^30, 2^31)
# M = 2^30 with a shift of 31 or 32 makes every odd (or 2 mod 4) accumulator a rounding tie;
# 32/33 is where the kernels switch between the int64 and the 32-bit multiply-high epilogue
EDGE_MULTIPLIERS = (M_LO, M_LO + 1, M_HI - 1, M_HI)
EDGE_SHIFTS = (MIN_SHIFT, 30, 31, 32, 33, 34, MAX_SHIFT - 1, MAX_SHIFT)

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _targets():
    avx2 = load_target("x86-avx2")
    # no instruction features: every layer takes TVM's generic NCHW operators
    return {"x86-host": load_target("x86-host"), "x86-avx2": avx2, "generic": dataclasses.replace(avx2, features=())}


def _act_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


@st.composite
def _requant(draw, channels: int, out_bits: int, out_signed: bool):
    """Per-channel (M, n): edge values mixed with values that keep outputs off the clamp."""
    mult = draw(st.lists(st.one_of(st.sampled_from(EDGE_MULTIPLIERS), st.integers(M_LO, M_HI)),
                         min_size=channels, max_size=channels))
    shift = draw(st.lists(st.one_of(st.sampled_from(EDGE_SHIFTS), st.integers(36, 46)),
                          min_size=channels, max_size=channels))
    lo, hi = _act_range(out_bits, out_signed)
    return qg.Requant(np.array(mult, np.int64), np.array(shift, np.int64), lo, hi)


@st.composite
def _layer(draw, op: str):
    """A one-layer QGraph, its random integer input (batch 2) and a description for failures."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    in_signed, in_bits = draw(st.booleans()), draw(st.integers(2, 8))
    w_bits = draw(st.integers(2, 8))
    if op == "conv2d":
        groups_kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
        groups = {"dense": 1, "grouped": draw(st.integers(2, 3)), "depthwise": draw(st.integers(2, 16))}[groups_kind]
        cin = groups * (1 if groups_kind == "depthwise" else draw(st.integers(1, 6)))
        cout = groups * (1 if groups_kind == "depthwise" else draw(st.integers(1, 6)))
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
        h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 9))
        w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 9))
        weight_shape = (cout, cin // groups, kh, kw)
        oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        in_shape, out_shape = (cin, h, w), (cout, oh, ow)
    else:
        cin, cout = draw(st.integers(1, 40)), draw(st.integers(1, 20))
        weight_shape, in_shape, out_shape = (cout, cin), (cin,), (cout,)
    w_max = 2 ** (w_bits - 1) - 1
    weight = rng.integers(-w_max, w_max + 1, weight_shape).astype(np.int8)
    weight.flat[0] = w_max                          # the full width is used: it picks the kernel
    bias = rng.integers(-2 ** 15, 2 ** 15, cout).astype(np.int32)
    int32_out = draw(st.integers(0, 5)) == 0
    out_signed, out_bits = draw(st.booleans()), draw(st.integers(2, 8))
    requant = None if int32_out else draw(_requant(cout, out_bits, out_signed))
    lo, hi = _act_range(in_bits, in_signed)
    x_info = qg.TensorInfo("x", in_shape, "int8" if in_signed else "uint8", 1.0, lo, hi)
    if int32_out:
        y_info = qg.TensorInfo("y", out_shape, "int32", 1.0, -2 ** 31, 2 ** 31 - 1)
    else:
        y_info = qg.TensorInfo("y", out_shape, "int8" if out_signed else "uint8", 1.0, requant.qmin, requant.qmax)
    if op == "conv2d":
        node = qg.Conv2d("layer", "x", "y", weight, bias, stride, padding, dilation, groups, requant)
    else:
        node = qg.Dense("layer", "x", "y", weight, bias, requant)
    graph = qg.QGraph(x_info, (node,), "y", {"x": x_info, "y": y_info},
                      output_scales=np.ones(cout) if int32_out else None)
    x = rng.integers(lo, hi + 1, (2, *in_shape)).astype(x_info.dtype)
    return graph, x


def _check_all_targets(graph, x):
    expected = run_reference(graph, torch.from_numpy(x.astype(np.int64))).numpy()
    for name, target in _targets().items():
        got = compile_model(graph, target).run_int(x)
        assert np.array_equal(got.astype(np.int64), expected), (name, graph.nodes[0])


@pytest.mark.slow
@SETTINGS
@given(_layer("conv2d"))
def test_conv_kernels_equal_the_reference(case):
    _check_all_targets(*case)


@pytest.mark.slow
@settings(SETTINGS, max_examples=10)
@given(_layer("dense"))
def test_dense_kernels_equal_the_reference(case):
    _check_all_targets(*case)
