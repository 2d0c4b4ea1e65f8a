"""An artifact records the CPU it was built for and the TVM that built it; loading refuses a CPU
without the instruction-set extensions its code may use, and another TVM version."""

import json
import platform
import shutil

import numpy as np
import pytest

from conftest import calibrated_graph, zoo_models
from hwq.errors import ArtifactError
from hwq.lower import compile_model, load_model
from hwq.lower import cpu_check

MODELS = zoo_models()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    graph, x = calibrated_graph(*MODELS["reluout"])
    cm = compile_model(graph, "x86-host")
    return cm.save(tmp_path_factory.mktemp("art") / "x86"), cm, x


def _edit(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))     # the sha256 covers the library only


def test_manifest_records_the_build_cpu_and_loads_here(saved):
    path, cm, x = saved
    cpu = json.loads((path / "manifest.json").read_text())["cpu"]
    assert cpu["triple"].startswith(platform.machine()) and cpu["mcpu"] not in ("", "host")
    # x86-host builds for this machine's CPU: what its code may use, this CPU has
    assert cpu["isa_features"] and set(cpu["isa_features"]) <= cpu_check.host_features("x86_64")
    assert np.array_equal(load_model(path)(x[:2].numpy()), cm(x[:2].numpy()))


def test_a_cpu_without_the_features_is_refused_by_name(saved, tmp_path, monkeypatch):
    path = shutil.copytree(saved[0], tmp_path / "copy")
    # a feature no CPU here reports (not even known to this hwq): the manifest says the code uses it
    _edit(path, lambda m: m["cpu"].update(isa_features=[*m["cpu"]["isa_features"], "amx-int8"]))
    with pytest.raises(ArtifactError, match=r"uses \['amx-int8'\], which this machine's CPU .* lacks"):
        load_model(path)
    # the manifest as written, on a CPU without one of its extensions (a Zen 3 loading a Zen 4 build)
    recorded = json.loads((saved[0] / "manifest.json").read_text())["cpu"]["isa_features"]
    host = cpu_check.host_features("x86_64")
    monkeypatch.setattr(cpu_check, "host_features", lambda arch: host - {recorded[-1]})
    with pytest.raises(ArtifactError, match=rf"uses \['{recorded[-1]}'\].*illegal instruction"):
        load_model(saved[0])


def test_host_features_come_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    monkeypatch.setattr(cpu_check, "CPUINFO", info)
    assert cpu_check.host_features("x86_64") == {"sse4.2", "avx", "avx2", "fma"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_check.host_features("aarch64") == {"neon", "dotprod"}


def test_another_tvm_version_is_refused(saved, tmp_path):
    path = shutil.copytree(saved[0], tmp_path / "copy")
    _edit(path, lambda m: m.update(tvm_version="0.19.0"))
    with pytest.raises(ArtifactError, match=r"TVM '0\.19\.0' and this is TVM '0\.27"):
        load_model(path)


def test_an_old_manifest_without_the_cpu_is_refused(saved, tmp_path):
    path = shutil.copytree(saved[0], tmp_path / "copy")
    _edit(path, lambda m: m.update(version=1))
    with pytest.raises(ArtifactError, match="format version 1.*compile and save"):
        load_model(path)
