"""The Relax module hwq emits: residual adds fused into the epilogue of the conv that feeds them."""

import numpy as np
import pytest

from conftest import calibrated_graph, zoo_models
from hwq.lower import compile_model
from hwq.lower.relax_builder import build_relax_module
from hwq.qgraph import fusable_adds
from hwq.lower.tvm_target import resolve_features
from hwq.qat import run_reference
from hwq.qat.reference import quantize_input
from hwq.target import load_target


def _fused_kernels(mod) -> int:
    """Kernel PrimFuncs that read a residual input (``R``) besides their data and parameters."""
    fused = [func for gv, func in mod.functions.items()
             if gv.name_hint.startswith("hwq_conv2d") and any(p.name == "R" for p in func.params)]
    for func in fused:   # the bias still starts the accumulator (bias_init), under the longer epilogue
        assert "bias" in func.script().split("acc_init")[1].split("acc_update")[0]
    return len(fused)


@pytest.mark.parametrize("target, fused", [("x86-avx2", 1), ("raspberry-pi-5", 1), ("raspberry-pi-4b", 1),
                                           ("x86-cascadelake", 1), ("cpu-generic", 0)])
def test_residual_add_fused_into_conv(target, fused):
    model, shape, signed = zoo_models()["rescnn"]
    graph = calibrated_graph(model, shape, signed)[0]
    assert len(fusable_adds(graph)) == 1
    mod = build_relax_module(graph, resolve_features(load_target(target)) if target != "cpu-generic" else None)
    assert _fused_kernels(mod) == fused
    if fused:
        # the add rescales both inputs (two multiplies); only the pooling's requantization is left
        assert mod["forward_int"].script().count("R.multiply(") == 1


def test_add_is_not_fused_when_its_input_has_another_reader():
    """A conv output read by the add and by something else must still be written on its own."""
    model, shape, signed = zoo_models()["rescnn"]
    graph = calibrated_graph(model, shape, signed)[0]
    (conv_out, (add, other)), = fusable_adds(graph).items()
    extra = type(add)(name="extra", inputs=(conv_out, other), output=add.output + "_2",
                      multipliers=add.multipliers, shift=add.shift, qmin=add.qmin, qmax=add.qmax)
    nodes = list(graph.nodes)
    nodes.insert(nodes.index(add) + 1, extra)
    g2 = type(graph)(**{**vars(graph), "nodes": tuple(nodes),
                        "tensors": {**graph.tensors, extra.output: graph.tensors[add.output]}})
    assert conv_out not in fusable_adds(g2)


def test_fused_residual_add_is_bit_exact_on_x86():
    model, shape, signed = zoo_models()["rescnn"]
    graph, x = calibrated_graph(model, shape, signed)
    cm = compile_model(graph, "x86-host")
    xi = quantize_input(graph, x[:8])
    assert np.array_equal(cm.run_int(xi.numpy().astype(graph.input.dtype)), run_reference(graph, xi).numpy())
