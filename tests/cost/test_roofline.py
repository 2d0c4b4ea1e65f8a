"""The roofline on hand-computed cases (pure: no torch, no tvm)."""

import dataclasses

import pytest

from hwq.cost import Workload, roofline
from hwq.cost.roofline import parallel_share
from hwq.cost.options import family
from hwq.errors import ConfigError
from hwq.target import load_target


def test_compute_bound_conv_counts_padded_channels():
    t = load_target("x86-cascadelake")            # 1.28 TOP/s int8
    wl = Workload("conv2d", (64, 56, 56), 64, (3, 3), (1, 1), (1, 1))
    e = roofline(wl, family("x86-avx512-vnni"), t, batch=1)
    macs = 56 * 56 * 64 * 64 * 9                  # 64 channels: no padding on a 16-wide block
    assert e.ops == 2 * macs
    assert e.compute_ms == pytest.approx(2 * macs / 1.28e12 * 1e3)
    assert e.bytes == 64 * 56 * 56 + 64 * 64 * 9 + 56 * 56 * 64
    assert e.bound == "compute" and e.ms == e.compute_ms and e.source == "roofline"
    # 24 output channels are rounded up to 32 by the 16-wide VNNI block, to 24 by... 8-wide AVX2
    wl24 = dataclasses.replace(wl, out_channels=24)
    assert roofline(wl24, family("x86-avx512-vnni"), t).ops == 2 * 56 * 56 * 32 * 64 * 9
    assert roofline(wl24, family("x86-avx2"), t).ops == 2 * 56 * 56 * 24 * 64 * 9


def test_memory_bound_dense_and_packed_weights():
    t = load_target("x86-cascadelake")              # 2 cores
    wl = Workload("dense", (4096,), 4096)
    e8 = roofline(wl, family("x86-avx512-vnni"), t, batch=1)
    assert e8.bound == "memory"
    assert e8.bytes == 4096 * 4096 + 4096 + 4096
    assert e8.memory_ms == pytest.approx(e8.bytes / (t.memory.bandwidth_gbs * 1e9) * 1e3)
    # a dense layer is one output row: hwq's row-parallel kernels run it on one core of the two
    assert e8.compute_ms == pytest.approx(e8.ops / (t.peak_ops_per_s("int8") / 2) * 1e3)
    pi4 = load_target("raspberry-pi-4b")             # 4 cores: one busy
    assert roofline(wl, family("arm-neon"), pi4).compute_ms == pytest.approx(e8.ops / (pi4.peak_ops_per_s("int8") / 4) * 1e3)
    seven = Workload("conv2d", (64, 7, 7), 64, (3, 3), padding=(1, 1))    # 7 rows on 2 cores: 7/8 busy
    assert parallel_share(seven, family("x86-avx512-vnni"), t) == pytest.approx(7 / 8)
    # 4-bit packed weights move half the weight bytes
    e4 = roofline(wl, family("x86-avx2-s4"), load_target("x86-avx2"))
    assert e4.bytes == 4096 * 4096 / 2 + 4096 + 4096


def test_im2col_and_depthwise_reductions():
    t = load_target("x86-avx2")
    stem = Workload("conv2d", (3, 224, 224), 32, (3, 3), (2, 2), (1, 1))
    # 3 channels x 9 taps = 27, gathered into 28-byte patches
    assert roofline(stem, family("x86-avx2"), t).ops == 2 * 112 * 112 * 32 * 28
    dw = Workload("depthwise", (96, 112, 112), 96, (3, 3), (2, 2), (1, 1), groups=96)
    assert dw.out_hw == (56, 56) and dw.reduction == 9
    assert roofline(dw, family("cpu-depthwise"), t).ops == 2 * 56 * 56 * 96 * 9


def test_workload_key_round_trip_and_errors():
    wl = Workload("depthwise", (96, 112, 112), 96, (3, 3), (2, 2), (1, 1), groups=96)
    assert Workload.from_key(wl.key) == wl
    assert Workload.from_key("dense:1280->1000") == Workload("dense", (1280,), 1000)
    with pytest.raises(ConfigError, match="not a workload key: 'conv2d:oops'"):
        Workload.from_key("conv2d:oops")
    with pytest.raises(ConfigError, match="'pool'"):
        Workload("pool", (3, 4, 4), 3)
    with pytest.raises(ConfigError, match="unknown kernel 'x86-sse'"):
        family("x86-sse")
