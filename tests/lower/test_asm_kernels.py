"""The dot-product kernels reach the machine code: ``vpdpbusd`` on x86 VNNI, ``vpmaddwd`` on x86
with AVX2 only (``vpmaddubsw`` where it is exact), ``sdot`` on the Pi 5, ``smull`` + ``sadalp`` on the Pi 4.

Cross builds are inspected, not run (``test_aarch64_qemu_exact.py`` runs them under qemu).
"""

import re

import pytest

from conftest import calibrated_graph, zoo_models
from hwq.lower import compile_model
from hwq.plan import BitPlan, LayerSpec


def _asm(compiled) -> str:
    """The assembly of every LLVM module of the executable (the kernels live in an imported one)."""
    mod = compiled.executable.mod
    return "".join(m.inspect_source("asm") or "" for m in [mod, *mod.imports] if m.kind == "llvm")


def _count(asm: str, instruction: str) -> int:
    return len(re.findall(rf"^\s*{instruction}\b", asm, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def graph():
    model, shape, signed = zoo_models()["rescnn"]   # im2col stem, 3x3 convs, strided conv, dense
    return calibrated_graph(model, shape, signed, n=16)[0]


@pytest.mark.parametrize("target, present, absent", [
    ("x86-cascadelake", "vpdpbusd", "sdot"),   # named CPU: the same on any build machine
    ("x86-avx2", "vpmaddwd", "vpdpbusd"),      # Zen 3: no VNNI, the exact int16 pair products
    ("raspberry-pi-5", "sdot", "vpdpbusd"),
    ("raspberry-pi-4b", "smull", "sdot"),      # Cortex-A72: no dot product, int16 pair products
    ("raspberry-pi-4b", "sadalp", "sdot"),
])
def test_dot_product_instruction_in_asm(graph, target, present, absent):
    _check_asm(graph, target, present, absent)


@pytest.mark.parametrize("weight_bits", [7, 4])
def test_avx2_maddubs_in_asm_for_narrow_weights(weight_bits):
    model, shape, signed = zoo_models()["rescnn"]
    graph = calibrated_graph(model, shape, signed, n=16, plan=BitPlan(default=LayerSpec(weight_bits=weight_bits)))[0]
    _check_asm(graph, "x86-avx2", "vpmaddubsw", "vpdpbusd")


def _check_asm(graph, target, present, absent):
    asm = _asm(compile_model(graph, target))
    # one kernel per conv / dense, each unrolled: many instances, not a stray one
    assert _count(asm, present) >= 5 * sum(n.op in ("conv2d", "dense") for n in graph.nodes), target
    assert _count(asm, absent) == 0, target
