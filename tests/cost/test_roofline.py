import pytest

from hwq.cost import estimate_layer
from hwq.errors import ConfigError, TargetError
from hwq.target import load_target


def test_compute_bound_conv_on_x86_host():
    t = load_target("x86-host")
    # 64x64 3x3 conv on 56x56: 115.6 M MACs, far right of the ridge point
    c = estimate_layer("conv", 56 * 56 * 64 * 64 * 9, 56 * 56 * 64, 64 * 64 * 9, 56 * 56 * 64, "int8", t)
    assert c.bound == "compute"
    assert c.seconds == pytest.approx(2 * 56 * 56 * 64 * 64 * 9 / t.peak_ops_per_s("int8"))
    f = estimate_layer("conv", 56 * 56 * 64 * 64 * 9, 56 * 56 * 64, 64 * 64 * 9, 56 * 56 * 64, "fp32", t)
    per_cycle = t.compute.peak_ops_per_cycle
    assert f.seconds / c.seconds == pytest.approx(per_cycle["int8"] / per_cycle["fp32"])  # 128 vs 32 ops/cycle


def test_memory_bound_dense_at_batch_1():
    t = load_target("raspberry-pi-4b")
    c = estimate_layer("fc", 4096 * 4096, 4096, 4096 * 4096, 4096, "int8", t)
    assert c.bound == "memory" and c.memory_s == pytest.approx(c.bytes / (t.memory.bandwidth_gbs * 1e9))


def test_bad_dtype_and_missing_peak():
    t = load_target("x86-host")
    with pytest.raises(ConfigError, match="int3"):
        estimate_layer("x", 1, 1, 1, 1, "int3", t)
    with pytest.raises(TargetError, match="int4"):
        estimate_layer("x", 1, 1, 1, 1, "int4", t)
