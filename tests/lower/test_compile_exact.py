"""TVM's integer build equals the torch integer reference bit for bit."""

import dataclasses
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm

from conftest import calibrated_graph, zoo_models
from hwq.errors import ArtifactError, DataError, TargetError
from hwq.lower import compile_model, load_model
from hwq.lower.kernels import layout_for
from hwq.plan import BitPlan, LayerSpec
from hwq.qat import run_reference
from hwq.qat.reference import dequantize_output, quantize_input
from hwq.target import load_target

MODELS = zoo_models()


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    model, shape, signed = MODELS[request.param]
    graph, _ = calibrated_graph(model, shape, signed)
    return request.param, graph, compile_model(graph, "x86-host"), shape, signed


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_int_program_is_bit_exact(built, batch):
    name, graph, cm, shape, signed = built
    g = torch.Generator().manual_seed(100 + batch)
    # inputs beyond the calibrated range too, so the clamps are exercised
    x = (torch.randn(batch, *shape, generator=g) * 1.5) if signed else torch.rand(batch, *shape, generator=g) * 1.2
    xi = quantize_input(graph, x)
    assert xi.abs().sum() > 0
    ref = run_reference(graph, xi).numpy()
    out = cm.run_int(xi.numpy().astype(graph.input.dtype))
    assert out.dtype == np.dtype(graph.output_info.dtype)
    assert np.array_equal(out.astype(np.int64), ref), f"{name}: {int((out != ref).sum())} of {ref.size} differ"


def _host_has(feature: str) -> bool:
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return feature in {str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not _host_has("avx2"), reason="needs an AVX2 host")
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("weight_bits, act_bits", [(8, 8), (7, 8), (8, 7), (4, 8)])
def test_avx2_build_is_bit_exact(name, weight_bits, act_bits):
    """The AVX2 kernels on any AVX2 host, whatever x86-host builds here: vpmaddwd for int8, and
    vpmaddubsw where it cannot saturate (7-bit weights or activations; 4-bit weights packed two
    per byte and unpacked in the kernel)."""
    model, shape, signed = MODELS[name]
    graph, _ = calibrated_graph(model, shape, signed, plan=BitPlan(default=LayerSpec(weight_bits, act_bits)))
    cm = compile_model(graph, "x86-avx2")
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(16, *shape, generator=g) * 1.5) if signed else torch.rand(16, *shape, generator=g) * 1.2
    xi = quantize_input(graph, x)
    ref = run_reference(graph, xi).numpy()
    for batch in (1, 16):
        out = cm.run_int(xi[:batch].numpy().astype(graph.input.dtype))
        assert np.array_equal(out.astype(np.int64), ref[:batch]), f"{name}: {int((out != ref[:batch]).sum())} differ"


def test_generic_fallback_is_bit_exact():
    """A CPU target with none of the kernels' features: TVM's generic NCHW operators, still exact."""
    model, shape, signed = MODELS["opsnet"]
    graph, _ = calibrated_graph(model, shape, signed)
    plain = dataclasses.replace(load_target("x86-host"), features=())
    assert layout_for(plain) == "NCHW"
    cm = compile_model(graph, plain)
    g = torch.Generator().manual_seed(5)
    xi = quantize_input(graph, torch.randn(3, *shape, generator=g) * 1.5)
    out = cm.run_int(xi.numpy().astype(graph.input.dtype))
    assert np.array_equal(out.astype(np.int64), run_reference(graph, xi).numpy())


def test_float_entry_point_matches_reference(built):
    name, graph, cm, shape, signed = built
    x = torch.randn(5, *shape) if signed else torch.rand(5, *shape)
    expected = dequantize_output(graph, run_reference(graph, quantize_input(graph, x))).numpy()
    assert np.array_equal(cm(x.numpy()), expected)



def test_calls_reuse_no_memory_the_caller_holds(built):
    """The input is staged in a buffer kept per shape: results of earlier calls must not change, a
    strided or unaligned input gives what its contiguous copy gives, and a wrong dtype is refused."""
    name, graph, cm, shape, signed = built
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(6, *shape, generator=g) if signed else torch.rand(6, *shape, generator=g)).numpy()
    first = cm(x[:3])
    kept = first.copy()
    second = cm(x[3:])
    assert np.array_equal(first, kept)                     # not overwritten by the second call
    assert not np.array_equal(first, second)
    assert np.array_equal(cm(x[::2]), cm(np.ascontiguousarray(x[::2])))
    raw = np.empty(x[:2].nbytes + 1, np.uint8)[1:].view(np.float32).reshape(x[:2].shape)   # unaligned
    raw[...] = x[:2]
    assert np.array_equal(cm(raw), cm(x[:2]))
    xi = quantize_input(graph, torch.from_numpy(x[:2])).numpy()
    with pytest.raises(DataError, match=rf"dtype int64; this model takes \(N, .*\) {graph.input.dtype}"):
        cm.run_int(xi.astype(np.int64))
    with pytest.raises(DataError, match=r"shape \(2, 5\)"):
        cm(np.zeros((2, 5), np.float32))

def test_artifact_round_trip_and_corruption(tmp_path):
    model, shape, signed = MODELS["rescnn"]
    graph, x = calibrated_graph(model, shape, signed)
    cm = compile_model(graph, "x86-host")
    path = cm.save(tmp_path / "art")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]          # no temporary left behind
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"] == "x86-host" and manifest["graph"]["macs"] == graph.macs()
    loaded = load_model(path)
    assert np.array_equal(loaded(x[:4].numpy()), cm(x[:4].numpy()))
    # a flipped byte in the library is caught by the manifest's hash (corrupt a copy: writing into
    # the file of a loaded library would corrupt this process's own mapping of it)
    path = Path(shutil.copytree(path, tmp_path / "copy"))
    lib = path / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_model(path)
    (path / "manifest.json").write_text("{oops")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_model(path)
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_model(tmp_path / "nowhere")


def test_cross_compiled_aarch64_artifact(tmp_path):
    model, shape, signed = MODELS["rescnn"]
    graph, _ = calibrated_graph(model, shape, signed)
    cm = compile_model(graph, "raspberry-pi-5")
    with pytest.raises(TargetError, match="raspberry-pi-5"):
        cm(np.zeros((1, *shape), np.float32))
    path = cm.save(tmp_path / "pi5")
    elf = (path / "model.so").read_bytes()
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183   # e_machine = EM_AARCH64
    with pytest.raises(ArtifactError, match="raspberry-pi-5"):
        load_model(path)
