"""Target files: all load, their numbers are sane, and every kind of broken file is named clearly.

Pure tier: imports neither torch nor tvm.
"""

import tomllib
from pathlib import Path

import pytest

from hwq.errors import TargetError
from hwq.target import DTYPES, FEATURES, KINDS, Target, list_targets, load_target

TARGETS_DIR = Path(__file__).resolve().parent.parent / "hwq" / "targets"
NAMES = ["nvidia-h100", "nvidia-jetson-orin-nano", "nvidia-t4", "raspberry-pi-4b", "raspberry-pi-5",
         "x86-avx2", "x86-cascadelake", "x86-host"]


def test_list_targets_returns_them_sorted():
    assert [t.name for t in list_targets()] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fields_are_sane(name):
    t = load_target(name)
    assert t.source.name == f"{name}.toml" and t.kind in KINDS
    assert t.peak_ops_per_s("fp32") > 0 and t.peak_ops_per_s("int8") > t.peak_ops_per_s("fp32")
    assert set(t.compute.peak_ops_per_cycle) == set(t.compute.instruction) <= set(DTYPES)
    assert t.memory.bandwidth_gbs > 0 and t.memory.l1d_kib > 0 and t.memory.l2_kib > 0 and t.memory.l3_kib >= 0
    assert 8 in t.native_widths and set(t.features) <= FEATURES
    assert t.tvm["kind"] == KINDS[t.kind]
    assert hash(t) == hash(load_target(name)) and t == load_target(t.source)


def test_x86_host_int8_peak_is_vnni_rate():
    t = load_target("x86-host")  # AMD EPYC Zen 4: 1 vpdpbusd zmm (64 MACs) per cycle per core
    c = t.compute
    assert t.peak_ops_per_s("int8") == pytest.approx(c.units * c.clock_ghz * 1e9 * c.peak_ops_per_cycle["int8"])
    assert c.peak_ops_per_cycle["int8"] == 128 and c.units == 2
    assert t.tvm["mcpu"] == "host" and not t.is_cross and t.has_feature("avx512vnni")


def test_x86_cascadelake_is_a_fixed_description():
    t = load_target("x86-cascadelake")
    assert t.peak_ops_per_s("int8") == pytest.approx(1.28e12)  # 2 cores x 2.5 GHz x 256 ops
    assert t.tvm["mcpu"] == "cascadelake" and t.tvm["mtriple"] == "x86_64-linux-gnu"
    assert not t.is_cross and t.has_feature("avx512vnni")
    # Cascade Lake has two 512-bit vpdpbusd ports, Zen 4 one zmm per cycle: twice the int8 ops per cycle
    host = load_target("x86-host")
    assert t.compute.peak_ops_per_cycle["int8"] == 2 * host.compute.peak_ops_per_cycle["int8"]


def test_x86_avx2_is_a_fixed_description_without_avx512():
    t = load_target("x86-avx2")  # AMD EPYC Zen 3: 2 vpmaddwd ymm (16 MACs each) per cycle per core
    assert t.tvm["mcpu"] == "znver3" and not t.is_cross
    assert t.has_feature("avx2") and not t.has_feature("avx512") and not t.has_feature("avx512vnni")
    assert t.compute.peak_ops_per_cycle["int8"] == 64 == 2 * t.compute.peak_ops_per_cycle["fp32"]
    assert t.peak_ops_per_s("int8") == pytest.approx(2 * 3.1e9 * 64)


def test_board_capabilities():
    pi4, pi5 = load_target("raspberry-pi-4b"), load_target("raspberry-pi-5")
    assert pi4.is_cross and pi5.is_cross
    assert not pi4.has_feature("dotprod") and pi5.has_feature("dotprod")
    t4, h100, orin = load_target("nvidia-t4"), load_target("nvidia-h100"), load_target("nvidia-jetson-orin-nano")
    assert t4.native_widths == (4, 8) and t4.has_feature("tensorcore_int4")
    assert h100.native_widths == (8,) and not h100.has_feature("tensorcore_int4")
    assert (t4.tvm["arch"], h100.tvm["arch"], orin.tvm["arch"]) == ("sm_75", "sm_90", "sm_87")
    assert orin.is_cross and orin.tvm["host"]["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(TargetError, match=r"'int4'.*'fp16', 'fp32', 'int8'"):
        h100.peak_ops_per_s("int4")


def test_has_feature_rejects_unknown_names():
    with pytest.raises(TargetError, match=r"'vnni'.*'avx512vnni'"):
        load_target("x86-host").has_feature("vnni")


def test_tvm_dict_is_a_copy():
    t = load_target("nvidia-t4")
    d = t.tvm_dict()
    d["host"]["mcpu"] = "changed"
    assert t.tvm["host"]["mcpu"] == "x86-64-v3"


def test_load_by_path_and_env_dir(tmp_path, monkeypatch):
    src = TARGETS_DIR / "raspberry-pi-5.toml"
    assert load_target(src) == load_target(str(src)) == load_target("raspberry-pi-5")
    (tmp_path / "raspberry-pi-5.toml").write_text(src.read_text())
    monkeypatch.setenv("HWQ_TARGETS_DIR", str(tmp_path))
    assert [t.name for t in list_targets()] == ["raspberry-pi-5"]
    assert load_target("raspberry-pi-5").source == tmp_path / "raspberry-pi-5.toml"


def _broken(tmp_path, old, new, name="raspberry-pi-5", stem=None):
    """A copy of target ``name`` with ``old`` replaced by ``new``, written as ``<stem>.toml``."""
    text = (TARGETS_DIR / f"{name}.toml").read_text()
    assert old in text, f"test bug: {old!r} not in {name}.toml"
    path = tmp_path / f"{stem or name}.toml"
    path.write_text(text.replace(old, new, 1))
    return path


# (old text, new text, fragments the message must contain: file name is checked separately)
BROKEN = {
    "typo field": ("clock_ghz = 2.4", "clock_ghzz = 2.4",
                   ["unknown field 'compute.clock_ghzz'", "did you mean 'clock_ghz'", "'units'"]),
    "missing field": ("bandwidth_gbs = 17.0\n", "",
                      ["missing field 'memory.bandwidth_gbs'", "'l1d_kib'"]),
    "bad feature": ('features = ["neon", "dotprod"]', 'features = ["neon", "dotprodd"]',
                    ["'integer.features'", "'dotprodd'", "did you mean 'dotprod'", "'i8mm'"]),
    "bad dtype key": ("int8 = 64", "int8 = 64\nint16 = 128",
                      ["'compute.peak_ops_per_cycle.int16'", "'fp16', 'fp32', 'int4', 'int8'"]),
    "wrong type": ("units = 4", 'units = "4"', ["'compute.units'", "an integer", "'4'"]),
    "non-positive": ("clock_ghz = 2.4", "clock_ghz = 0", ["'compute.clock_ghz'", "> 0", "got 0"]),
    "bad kind": ('kind = "cpu"', 'kind = "gpu"', ["'kind'", "'gpu'", "'cpu', 'cuda'"]),
    "bad tvm kind": ('kind = "llvm"', 'kind = "cuda"', ["'tvm.kind'", "'llvm'", "'cuda'"]),
    "num-cores disagrees": ("num-cores = 4", "num-cores = 2", ["'tvm.num-cores'", "compute.units"]),
    "toml syntax": ("clock_ghz = 2.4", "clock_ghz = = 2.4", ["not a valid TOML file", "line"]),
    "schema version": ("schema_version = 1", "schema_version = 2", ["'schema_version'", "2"]),
    "instruction keys": ('fp16 = "fmla v.8h', 'fp8 = "fmla v.8h', ["'compute.instruction.fp8'", "'fp16'"]),
    "instruction missing": ('fp16 = "fmla v.8h (2 per cycle, V0 and V1)"\n', "",
                            ["'compute.instruction'", "'fp32', 'int8'", "'fp16', 'fp32', 'int8'"]),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_names_file_field_and_choices(tmp_path, case):
    old, new, fragments = BROKEN[case]
    path = _broken(tmp_path, old, new)
    with pytest.raises(TargetError) as e:
        load_target(path)
    message = str(e.value)
    assert "raspberry-pi-5.toml" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_name_must_equal_file_stem(tmp_path):
    path = _broken(tmp_path, 'name = "raspberry-pi-5"', 'name = "raspberry-pi-5"', stem="my-board")
    with pytest.raises(TargetError, match=r"my-board\.toml.*'name'.*'raspberry-pi-5'.*'my-board'"):
        load_target(path)


@pytest.mark.parametrize("drop, fragments", [("arch", ["'tvm.arch'", "'sm_87'"]),
                                              ("host", ["[tvm.host]", "kind = 'llvm'"])])
def test_cuda_target_needs_arch_and_host(drop, fragments):
    path = TARGETS_DIR / "nvidia-t4.toml"
    data = tomllib.loads(path.read_text())
    del data["tvm"][drop]
    with pytest.raises(TargetError) as e:
        Target.from_dict(data, source=path)
    assert all(f in str(e.value) for f in ["nvidia-t4.toml", *fragments]), str(e.value)


def test_unknown_target_name_lists_valid_ones():
    with pytest.raises(TargetError) as e:
        load_target("raspberry-pi-6")
    message = str(e.value)
    assert "'raspberry-pi-6'" in message and "did you mean 'raspberry-pi-5'" in message
    assert all(repr(n) in message for n in NAMES)


def test_missing_file_path():
    with pytest.raises(TargetError, match="no target file at"):
        load_target("does/not/exist.toml")
