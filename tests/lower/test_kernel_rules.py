"""Which kernel rule takes which layer on which target, and what the graph must do around it."""

import numpy as np
import pytest

from conftest import calibrated_graph, zoo_models
from hwq.lower.kernels import layout_for, select_kernel
from hwq.lower.kernels.dot_conv import pack_conv_weight
from hwq.target import load_target


@pytest.fixture(scope="module")
def opsnet():
    model, shape, signed = zoo_models()["opsnet"]   # int8 input, uint8 after the first ReLU
    return calibrated_graph(model, shape, signed, n=16)[0]


def test_layout_per_target():
    assert layout_for(load_target("x86-host")) == "NHWC"
    assert layout_for(load_target("raspberry-pi-5")) == "NHWC"     # dotprod
    assert layout_for(load_target("raspberry-pi-4b")) == "NCHW"    # generic lowering
    assert layout_for(None) == "NCHW"


@pytest.mark.parametrize("target, rule, in_dtype, block", [
    ("x86-host", "x86-avx512-vnni", "uint8", 16),
    ("raspberry-pi-5", "arm-dotprod", "int8", 4),
])
def test_dot_rule_offsets_and_folds_the_bias(opsnet, target, rule, in_dtype, block):
    t = load_target(target)
    seen = set()
    for node in opsnet.nodes:
        if node.op not in ("conv2d", "dense") or node.op == "conv2d" and node.groups != 1:
            continue
        info = opsnet.tensors[node.input]
        k = select_kernel(node, info, opsnet.tensors[node.output], t)
        assert k is not None and k.name == rule and k.in_dtype == in_dtype
        # +128 takes int8 into uint8, -128 uint8 into int8; none when the dtypes agree
        expected = 0 if info.dtype == in_dtype else (128 if in_dtype == "uint8" else -128)
        assert k.input_offset == expected
        assert k.out_channels % block == 0 and k.params[0].shape[-2:] == (block, 4)
        w = node.weight.reshape(node.weight.shape[0], -1).astype(np.int64)
        bias = k.params[1][: w.shape[0]]
        assert np.array_equal(bias, node.bias - expected * w.sum(1))
        seen.add(expected)
    assert len(seen) == 2    # both an offset and a plain layer were checked


def test_pack_conv_weight_puts_one_dot_block_per_vector():
    w = np.arange(8 * 8 * 3 * 3).reshape(8, 8, 3, 3).astype(np.int8)
    p = pack_conv_weight(w, 4)            # [O/4, KH, KW, I/4, 4, 4]
    assert p.shape == (2, 3, 3, 2, 4, 4)
    assert p[1, 2, 0, 1, 3, 2] == w[1 * 4 + 3, 1 * 4 + 2, 2, 0]
