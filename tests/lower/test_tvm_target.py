"""Every target file converts to a ``tvm.target.Target`` that says what the file means (llvm tier)."""

import dataclasses

import pytest

tvm = pytest.importorskip("tvm")

from hwq.errors import TargetError  # noqa: E402
from hwq.lower.tvm_target import to_tvm_target  # noqa: E402
from hwq.target import list_targets, load_target  # noqa: E402

AARCH64 = {"raspberry-pi-4b": ("cortex-a72", False), "raspberry-pi-5": ("cortex-a76", True)}


@pytest.mark.parametrize("target", list_targets(), ids=lambda t: t.name)
def test_every_target_converts(target):
    tt = to_tvm_target(target)
    assert tt.kind.name == target.tvm["kind"]
    if target.kind == "cuda":
        assert tt.attrs["arch"] == target.tvm["arch"]
        assert tt.host is not None and tt.host.kind.name == "llvm"
        assert tt.host.attrs["mcpu"] == target.tvm["host"]["mcpu"]


def test_x86_host_detects_the_build_cpu():
    mcpu = to_tvm_target(load_target("x86-host")).attrs["mcpu"]
    assert mcpu == tvm.target.codegen.llvm_get_system_cpu()
    assert mcpu not in ("host", "generic", "native")


@pytest.mark.parametrize("name", AARCH64)
def test_aarch64_boards(name):
    mcpu, dotprod = AARCH64[name]
    tt = to_tvm_target(load_target(name))
    assert tt.attrs["mtriple"] == "aarch64-linux-gnu" and tt.attrs["mcpu"] == mcpu
    assert ("+dotprod" in list(tt.attrs["mattr"])) == dotprod
    assert bool(tt.attrs["feature.has_dotprod"]) == dotprod  # what TVM's own ARM rules key on


def test_orin_host_is_cortex_a78ae_with_dotprod():
    host = to_tvm_target(load_target("nvidia-jetson-orin-nano")).host
    assert host.attrs["mtriple"] == "aarch64-linux-gnu" and host.attrs["mcpu"] == "cortex-a78ae"
    assert bool(host.attrs["feature.has_dotprod"])


def _with_tvm(name, **changes):
    t = load_target(name)
    spec = t.tvm_dict()
    spec.update(changes)
    return dataclasses.replace(t, tvm=spec)


def test_unknown_mcpu_is_named_with_suggestions():
    with pytest.raises(TargetError, match=r"raspberry-pi-5\.toml.*'tvm.mcpu'.*'cortex-a67'.*'cortex-a76'"):
        to_tvm_target(_with_tvm("raspberry-pi-5", mcpu="cortex-a67"))


def test_detect_cpu_is_refused_for_cross_targets():
    with pytest.raises(TargetError, match=r"'tvm.mcpu' is 'host'.*cross-compiled"):
        to_tvm_target(_with_tvm("raspberry-pi-5", mcpu="host"))


def test_option_tvm_rejects_names_the_file():
    with pytest.raises(TargetError, match=r"x86-host\.toml.*TVM rejected.*num-core"):
        to_tvm_target(_with_tvm("x86-host", **{"num-core": 2}))
