"""CUDA builds for the nvidia-* targets, checked without a GPU.

* every zoo model builds for each CUDA target, each hwq conv / dense kernel calls ``__dp4a``
  exactly once in the CUDA source, and nvcc turns that into ``dp4a.s32.s32`` in PTX;
* the artifact saves (x86 host and cross-linked aarch64 for the Orin);
* the kernels' arithmetic (weight packing, uint8 shift folded into the bias, padding, the
  compute itself and the fused requantization) is bit-exact: the same kernels, without their GPU
  schedule, are built for this CPU and compared with ``run_reference``. The GPU schedule only
  reorders and binds loops and replaces the 4-channel inner reduction by ``__dp4a`` through a
  tensor intrinsic whose description TVM matches against the compute;
* with a GPU (``gpu`` marker, skipped without one), the CUDA build itself against the reference.
"""

import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, te, tirx

from conftest import calibrated_graph, zoo_models
from hwq.errors import ArtifactError, ConfigError, TargetError
from hwq.lower import compile_model, load_model
from hwq.lower.kernels import cuda_dp4a, layout_for, select_kernel
from hwq.lower.pipeline import get_pipeline
from hwq.lower.relax_builder import build_relax_module
from hwq.qat import run_reference
from hwq.qat.reference import dequantize_output, quantize_input
from hwq.target import load_target

MODELS = zoo_models()
CUDA_TARGETS = ("nvidia-t4", "nvidia-jetson-orin-nano", "nvidia-h100")
HAS_GPU = tvm.cuda().exist


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if found is None and home and (Path(home) / "bin" / "nvcc").is_file():
        found = str(Path(home) / "bin" / "nvcc")
    return found


class StridedConvs(nn.Module):
    """Shapes the zoo lacks: non-square stride / padding / dilation, 5 input and 6 output channels
    (both padded), a 1x1 conv, and a dense whose inputs are not a multiple of 4."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(5, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))   # 9x7 -> 5x9
        self.b = nn.Conv2d(6, 11, 1)
        self.fc = nn.Linear(11 * 5 * 9, 7)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.flatten(x, 1))


CASES = {**MODELS, "strided": (StridedConvs().eval(), (5, 9, 7), True)}


@pytest.fixture(scope="module")
def graphs():
    return {name: calibrated_graph(model, shape, signed, n=16)[0] for name, (model, shape, signed) in CASES.items()}


_BUILDS = {}


def _build(graphs, name, target):
    if (name, target) not in _BUILDS:
        _BUILDS[name, target] = compile_model(graphs[name], target)
    return _BUILDS[name, target]


def _cuda_source(cm) -> str:
    out, stack = [], [cm.executable.mod]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            out.append(m.inspect_source())
        stack.extend(m.imports)
    return "".join(out)


def _kernel_bodies(src: str) -> dict:
    """``{kernel name: body}`` of every ``__global__`` function defined in ``src``."""
    heads = list(re.finditer(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{', src))
    ends = [h.start() for h in heads[1:]] + [len(src)]
    return {h.group(1): src[h.end():end] for h, end in zip(heads, ends)}


def _dp4a_nodes(graph) -> list:
    return [n for n in graph.nodes if n.op == "dense" or n.op == "conv2d" and n.groups == 1]


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_conv_and_dense_kernel_calls_dp4a_once(graphs, name, target):
    graph = graphs[name]
    cm = _build(graphs, name, target)
    bodies = _kernel_bodies(_cuda_source(cm))
    ours = {k: v for k, v in bodies.items() if re.fullmatch(r"hwq_(conv2d|dense)_\d+_kernel", k)}
    assert len(ours) == len(_dp4a_nodes(graph)) > 0, sorted(bodies)
    for kernel, body in ours.items():
        assert len(re.findall(r"\b__dp4a\(", body)) == 1, kernel
    others = [k for k in bodies if k not in ours]
    assert others and not any("__dp4a(" in bodies[k] for k in others)   # glue is plain CUDA too


def test_kernel_rule_on_cuda_targets(graphs):
    """dp4a takes every groups == 1 conv and dense; depthwise / grouped convs stay generic; a uint8
    input is shifted by -128 and 128 * sum(w) is added to the bias; NHWC only with dp4a."""
    graph = graphs["opsnet"]                      # int8 input, uint8 after the first ReLU
    t4 = load_target("nvidia-t4")
    assert layout_for(t4) == "NHWC"
    assert layout_for(dataclasses.replace(t4, features=())) == "NCHW"
    offsets = set()
    for node in graph.nodes:
        if node.op not in ("conv2d", "dense"):
            continue
        info = graph.tensors[node.input]
        k = select_kernel(node, info, graph.tensors[node.output], t4)
        if node.op == "conv2d" and node.groups != 1:
            assert k is None
            continue
        assert k.name == "cuda-dp4a" and k.in_dtype == "int8" and k.in_channels % 4 == 0
        expected = -128 if info.dtype == "uint8" else 0
        assert k.input_offset == expected
        w = node.weight.reshape(node.weight.shape[0], -1).astype(np.int64)
        assert np.array_equal(k.params[1][: w.shape[0]], node.bias - expected * w.sum(1))
        offsets.add(expected)
    assert offsets == {0, -128}
    assert select_kernel(graph.nodes[0], graph.tensors[graph.input.name], graph.tensors[graph.nodes[0].output],
                         dataclasses.replace(t4, features=())) is None


def test_pack_conv_weight_gives_one_word_per_channel_and_4_inputs():
    w = np.arange(6 * 8 * 3 * 2).reshape(6, 8, 3, 2).astype(np.int8)
    p = cuda_dp4a.pack_conv_weight(w)            # [KH, KW, I/4, O, 4]
    assert p.shape == (3, 2, 2, 6, 4)
    o, c, i, j = 5, 6, 2, 1
    assert p[i, j, c // 4, o, c % 4] == w[o, c, i, j]


def test_default_tiles_divide_the_output_and_a_bad_tile_is_refused():
    for oh, ow, cout in [(28, 28, 8), (10, 10, 24), (7, 7, 1280), (5, 9, 12), (1, 1, 1000)]:
        t = cuda_dp4a.default_tile(oh, ow, cout)
        assert cout % (t.tc * t.co) == 0 and t.tc * t.tp * t.ty <= 256
        if oh * ow > 1:
            assert ow % (t.tp * t.px) == 0 and oh % t.ty == 0
    func = te.create_prim_func(cuda_dp4a.conv_compute(tirx.Var("n", "int64"), 8, 8, 4, 8, 3, 3, (1, 1), (1, 1),
                                                      "int8", -128, 127))      # 6 x 6 x 8 out
    with pytest.raises(ConfigError, match=r"tile .* does not divide .*\(6, 6, 8\)"):
        cuda_dp4a.schedule_conv(func, cuda_dp4a.CudaConvTile(px=4, co=4, tp=1, tc=2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_arithmetic_is_bit_exact_on_the_host(graphs, name, monkeypatch):
    """The CUDA lowering with the kernels' GPU schedule left out, built for this CPU."""
    monkeypatch.setattr(cuda_dp4a, "schedule_conv", lambda func, tile: func)
    graph = graphs[name]
    t4 = load_target("nvidia-t4")
    assert all(select_kernel(n, graph.tensors[n.input], graph.tensors[n.output], t4).name == "cuda-dp4a"
               for n in _dp4a_nodes(graph))
    host = tvm.target.Target({"kind": "llvm"})
    ex = tvm.compile(build_relax_module(graph, t4), target=host, relax_pipeline=get_pipeline("cpu", host))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    _, shape, signed = CASES[name]
    g = torch.Generator().manual_seed(11)
    # beyond the calibrated range too, so the clamps are exercised
    x = (torch.randn(3, *shape, generator=g) * 1.5) if signed else torch.rand(3, *shape, generator=g) * 1.2
    xi = quantize_input(graph, x)
    ref = run_reference(graph, xi).numpy()
    out = vm["forward_int"](tvm.runtime.tensor(xi.numpy().astype(graph.input.dtype))).numpy()
    assert np.array_equal(out.astype(np.int64), ref), f"{name}: {int((out != ref).sum())} of {ref.size} differ"


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("name, target", [(m, "nvidia-t4") for m in sorted(MODELS)]
                         + [("opsnet", "nvidia-jetson-orin-nano"), ("opsnet", "nvidia-h100")])
def test_nvcc_emits_dp4a_instructions(graphs, name, target, tmp_path):
    graph = graphs[name]
    src = tmp_path / "kernels.cu"
    src.write_text(_cuda_source(_build(graphs, name, target)))
    arch = load_target(target).tvm["arch"]
    subprocess.run([_nvcc(), "--ptx", f"-arch={arch}", str(src), "-o", str(tmp_path / "k.ptx")],
                   check=True, capture_output=True, text=True)
    ptx = (tmp_path / "k.ptx").read_text()
    entries = re.split(r"^\.visible \.entry ", ptx, flags=re.M)[1:]
    ours = [e for e in entries if re.match(r"hwq_(conv2d|dense)_\d+_kernel\(", e)]
    assert len(ours) == len(_dp4a_nodes(graph))
    assert all("dp4a.s32.s32" in e for e in ours)


def test_cuda_artifacts_save(graphs, tmp_path):
    for target, e_machine in (("nvidia-t4", 62), ("nvidia-jetson-orin-nano", 183)):   # EM_X86_64, EM_AARCH64
        cxx = load_target(target).cross_compiler
        # not a skip: scripts/setup.sh installs g++-aarch64-linux-gnu, and without it Orin goes untested
        assert not cxx or shutil.which(cxx), f"{cxx!r} is missing: run scripts/setup.sh (g++-aarch64-linux-gnu)"
        path = _build(graphs, "rescnn", target).save(tmp_path / target)
        lib = (path / "model.so").read_bytes()
        assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == e_machine
        assert b"__dp4a" in lib                   # the CUDA source travels in the library
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["target_kind"] == "cuda" and manifest["target_triple"] == load_target(target).tvm["host"]["mtriple"]
        assert manifest["cpu"]["triple"] == manifest["target_triple"]     # the host CPU's code is what runs on a CPU
        if not HAS_GPU:
            with pytest.raises(ArtifactError, match=target):
                load_model(path)


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible: the model runs")
def test_cuda_model_says_where_it_runs(graphs):
    cm = _build(graphs, "reluout", "nvidia-t4")
    with pytest.raises(TargetError, match=r"nvidia-t4.*NVIDIA GPU \(sm_75\)"):
        cm(np.zeros((1, 2, 9, 9), np.float32))
    with pytest.raises(TargetError, match="nvidia-t4"):
        cm.run_int(np.zeros((1, 2, 9, 9), np.int8))


def test_tuning_refuses_cuda_targets(graphs):
    from hwq.lower.tune import tune_model

    with pytest.raises(ConfigError, match="nvidia-t4.*modelled tiles"):
        tune_model(graphs["reluout"], "nvidia-t4", progress=False)


def _target_for_this_gpu():
    """The nvidia-* target for this host's CPU, with ``arch`` set to the visible GPU's."""
    arch = "sm_" + tvm.cuda().compute_version.replace(".", "")
    name = "nvidia-jetson-orin-nano" if platform.machine() in ("aarch64", "arm64") else "nvidia-t4"
    t = load_target(name)
    return dataclasses.replace(t, tvm={**t.tvm_dict(), "arch": arch})


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU visible to TVM")
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_build_is_bit_exact_on_the_gpu(graphs, name):
    graph = graphs[name]
    cm = compile_model(graph, _target_for_this_gpu())
    _, shape, signed = CASES[name]
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(16, *shape, generator=g) * 1.5) if signed else torch.rand(16, *shape, generator=g) * 1.2
    xi = quantize_input(graph, x)
    ref = run_reference(graph, xi).numpy()
    for batch in (1, 3, 16):
        out = cm.run_int(xi[:batch].numpy().astype(graph.input.dtype))
        assert np.array_equal(out.astype(np.int64), ref[:batch]), f"{name}: {int((out != ref[:batch]).sum())} differ"
    assert np.array_equal(cm(x[:5].numpy()), dequantize_output(graph, torch.from_numpy(ref[:5])).numpy())
