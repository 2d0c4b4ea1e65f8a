"""Tuned tile configs: shipped per target, a user's tuning layered over them, used by a compile
without any search."""

import dataclasses
import json

import pytest

from conftest import calibrated_graph, zoo_models
from hwq.errors import ConfigError
from hwq.lower import compile_model
from hwq.lower.kernels import select_kernel, tuning
from hwq.lower.tune import tune_model
from hwq.lower.tvm_target import resolve_features
from hwq.target import load_target

MODELS = zoo_models()


def test_compile_uses_stored_tiles_and_never_searches(tmp_path, monkeypatch):
    graph, _ = calibrated_graph(*MODELS["reluout"])
    target = resolve_features(load_target("x86-host"))    # the kernel compile_model builds on this CPU
    node = graph.nodes[0]
    k = select_kernel(node, graph.tensors[node.input], graph.tensors[node.output], target)
    monkeypatch.setenv("HWQ_TUNED_DIR", str(tmp_path))
    tuning.save_configs("x86-host", {k.workload: {"tw": 3, "ob": 1}})

    def no_search(*a, **kw):
        raise AssertionError("a compile must not tune")

    monkeypatch.setattr(tuning, "tune_workload", no_search)
    k2 = select_kernel(node, graph.tensors[node.input], graph.tensors[node.output], target)
    assert (k2.tile.tw, k2.tile.ob) == (3, 1)
    compile_model(graph, target)


def test_tune_model_writes_winners(tmp_path, monkeypatch):
    monkeypatch.setenv("HWQ_TUNED_DIR", str(tmp_path))
    graph, _ = calibrated_graph(*MODELS["reluout"])
    changed = tune_model(graph, "x86-host", time_budget_s=2.0, progress=False)
    assert len(changed) == 1
    doc = json.loads((tmp_path / "x86-host.json").read_text())
    (key, cfg), = doc["workloads"].items()
    assert key.startswith("conv2d_nhwc:") and cfg["ms_batch16"] > 0 and cfg["trials"] >= 1
    assert tune_model(graph, "x86-host", progress=False) == {}        # already tuned: nothing to do


def test_user_tiles_go_to_the_cache_and_layer_over_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("HWQ_TUNED_DIR", raising=False)
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path))
    shipped_file = tuning.SHIPPED_DIR / "x86-host.json"
    shipped_text = shipped_file.read_text()
    shipped = json.loads(shipped_text)["workloads"]
    overridden = next(iter(shipped))
    path = tuning.save_configs("x86-host", {overridden: {"tw": 1, "ob": 1}, "conv2d_nhwc:new": {"tw": 2, "ob": 1}})
    assert path == tmp_path / "tuned" / "x86-host.json"
    assert shipped_file.read_text() == shipped_text                  # the installed package is never written
    merged = tuning.load_configs("x86-host")
    assert set(merged) == set(shipped) | {"conv2d_nhwc:new"} and merged[overridden] == {"tw": 1, "ob": 1}
    assert set(tuning.user_configs("x86-host")) == {overridden, "conv2d_nhwc:new"}


def test_tuning_a_cross_target_is_a_clear_error():
    graph, _ = calibrated_graph(*MODELS["reluout"])
    with pytest.raises(ConfigError, match="raspberry-pi-5"):
        tune_model(graph, "raspberry-pi-5", progress=False)


@pytest.mark.parametrize("features", [None, ("avx2",)], ids=["vnni", "avx2"])
def test_shipped_configs_cover_the_demo_model(features):
    from hwq.models import ResCNN
    from hwq.qat import quantize_ptq
    import torch

    graph = quantize_ptq(ResCNN().eval(), torch.rand(4, 1, 28, 28))
    target = load_target("x86-host")
    if features is not None:     # the same file on a CPU without AVX-512 (a Zen 3): the AVX2 kernels
        target = dataclasses.replace(target, features=features)
    shipped = json.loads((tuning.SHIPPED_DIR / "x86-host.json").read_text())["workloads"]
    for node in graph.nodes:
        if node.op in ("conv2d", "dense"):
            k = select_kernel(node, graph.tensors[node.input], graph.tensors[node.output], target)
            assert k.workload in shipped, k.workload
