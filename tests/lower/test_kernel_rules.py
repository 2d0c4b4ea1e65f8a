"""Which kernel rule takes which layer on which target, and what the graph must do around it."""

import dataclasses

import numpy as np
import pytest

from conftest import calibrated_graph, zoo_models
from hwq.lower.kernels import layout_for, select_kernel, x86_avx2
from hwq.lower.kernels.dot_conv import pack_conv_weight
from hwq.plan import BitPlan, LayerSpec
from hwq.target import load_target


@pytest.fixture(scope="module")
def opsnet():
    model, shape, signed = zoo_models()["opsnet"]   # int8 input, uint8 after the first ReLU
    return calibrated_graph(model, shape, signed, n=16)[0]


def test_layout_per_target():
    assert layout_for(load_target("x86-host")) == "NHWC"
    assert layout_for(load_target("x86-avx2")) == "NHWC"           # vpmaddwd
    assert layout_for(load_target("raspberry-pi-5")) == "NHWC"     # dotprod
    assert layout_for(load_target("raspberry-pi-4b")) == "NHWC"    # smull + sadalp
    assert layout_for(load_target("nvidia-t4")) == "NHWC"          # dp4a
    assert layout_for(None) == "NCHW"


@pytest.mark.parametrize("target, rule, in_dtype, block", [
    ("x86-host", "x86-avx512-vnni", "uint8", 16),
    ("x86-avx2", "x86-avx2", "uint8", 8),
    ("raspberry-pi-5", "arm-dotprod", "int8", 4),
    ("raspberry-pi-4b", "arm-neon", "int8", 8),
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
        w_packed = k.params[0]              # [O/block, KH, KW, I/4, one instruction's block x 4 weights]
        assert k.out_channels % block == 0 and w_packed.shape[0] * block == k.out_channels
        assert np.prod(w_packed.shape[4:]) == block * 4
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


def test_vnni_outranks_avx2_and_each_kernel_has_its_own_tiles(opsnet):
    node = next(n for n in opsnet.nodes if n.op == "conv2d" and n.groups == 1)
    args = opsnet.tensors[node.input], opsnet.tensors[node.output]
    host = load_target("x86-host")                      # declares AVX2 and AVX-512 VNNI
    vnni = select_kernel(node, *args, host)
    assert vnni.name == select_kernel(node, *args, load_target("x86-cascadelake")).name == "x86-avx512-vnni"
    # the same file on a CPU without AVX-512 (what resolve_features makes of it on a Zen 3)
    avx2 = select_kernel(node, *args, dataclasses.replace(host, features=("avx2",)))
    assert avx2.name == "x86-avx2"
    assert vnni.workload != avx2.workload and vnni.workload.endswith(":x86-avx512-vnni")


@pytest.mark.parametrize("weight_bits, act_bits, fast", [(8, 8, "none"), (7, 8, "all"), (8, 7, "some"), (6, 6, "all")])
def test_maddubs_only_where_it_cannot_saturate(weight_bits, act_bits, fast):
    """vpmaddubsw adds two u8 x s8 products into int16 with saturation: the rule takes a layer only
    when 2 * max(activation) * max|weight| <= 32767, every other one stays on the exact vpmaddwd."""
    model, shape, signed = zoo_models()["opsnet"]
    graph = calibrated_graph(model, shape, signed, n=16, plan=BitPlan(default=LayerSpec(weight_bits, act_bits)))[0]
    t = load_target("x86-avx2")
    names = []
    for node in graph.nodes:
        if node.op == "dense" or node.op == "conv2d" and node.groups == 1:
            info = graph.tensors[node.input]
            k = select_kernel(node, info, graph.tensors[node.output], t)
            names.append(k.name)
            # inputs start at 0 after the offset (a signed 7-bit input is shifted by 63, not 128)
            span = info.qmax - info.qmin if info.dtype == "int8" else info.qmax
            exact = 2 * span * int(np.abs(node.weight.astype(np.int16)).max()) <= 32767
            assert (k.name in ("x86-avx2-maddubs", "x86-avx2-s4")) == exact, (node.name, info)
            if exact:
                assert info.qmin + k.input_offset == (0 if info.dtype == "int8" else info.qmin)
    fast_ones = sum(n in ("x86-avx2-maddubs", "x86-avx2-s4") for n in names)
    # with 8-bit weights and 7-bit activations, the model's 8-bit input layer stays on vpmaddwd
    assert {"none": fast_ones == 0, "all": fast_ones == len(names), "some": 0 < fast_ones < len(names)}[fast]


def test_4_bit_weights_are_packed_two_per_byte():
    model, shape, signed = zoo_models()["opsnet"]
    graph = calibrated_graph(model, shape, signed, n=16, plan=BitPlan(default=LayerSpec(weight_bits=4)))[0]
    t = load_target("x86-avx2")
    node = next(n for n in graph.nodes if n.op == "conv2d" and n.groups == 1 and n.weight.shape[1] >= 4)  # no im2col
    k = select_kernel(node, graph.tensors[node.input], graph.tensors[node.output], t)
    assert k.name == "x86-avx2-s4" and k.params[0].dtype == np.uint8
    w = np.zeros((k.out_channels, k.in_channels, *node.weight.shape[2:]), np.int8)
    w[:node.weight.shape[0], :node.weight.shape[1]] = node.weight
    assert k.params[0].nbytes * 2 == w.size                          # half the bytes of int8
    packed = k.params[0]                                             # [O/8, KH, KW, I/4, 16]
    lanes = np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.int16)
    lanes = np.where(lanes > 7, lanes - 16, lanes)                   # tile lane j = channel * 4 + input
    o, i = 8 + 3, 4 + 2                                              # block 1, channel 3; step 1, input 2
    assert lanes[1, 0, 0, 1, 3 * 4 + 2] == w[o, i, 0, 0]


def test_avx2_tile_pairs_inputs_0_2_and_1_3():
    w = np.arange(16 * 8).reshape(16, 8, 1, 1).astype(np.int8)
    p = x86_avx2.pack_conv_weight(w)      # [O/8, 1, 1, I/4, 2, 8, 2]: weight (c, k) at [k % 2, c, k // 2]
    assert p.shape == (2, 1, 1, 2, 2, 8, 2)
    for c, k in [(0, 0), (3, 1), (5, 2), (7, 3)]:
        assert p[1, 0, 0, 1, k % 2, c, k // 2] == w[8 + c, 4 + k, 0, 0]
    # each vpmaddwd reads 16 contiguous bytes: channel by channel, the pair (k, k + 2)
    assert list(p[0, 0, 0, 0, 1].ravel()[:4]) == [w[0, 1, 0, 0], w[0, 3, 0, 0], w[1, 1, 0, 0], w[1, 3, 0, 0]]
