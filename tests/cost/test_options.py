"""Which options a target offers and which kernel runs each: the answer the rules, the cost model and
the allocator share."""

import pytest

from hwq.cost import Workload, kernel_for, layer_options, plan_layers
from hwq.cost.options import Option, act_span, option_kernel, output_bits
from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec
from hwq.target import load_target

CONV = Workload("conv2d", (32, 14, 14), 64, (3, 3), (1, 1), (1, 1))
DW = Workload("depthwise", (32, 14, 14), 32, (3, 3), (1, 1), (1, 1), groups=32)


def names(opts):
    return [o.name for o in opts]


def test_options_per_target():
    avx2 = load_target("x86-avx2")
    assert names(layer_options(CONV, avx2)) == ["fp32", "w8a8", "w7a8", "w4a8", "w8a4", "w4a4"]
    assert names(layer_options(DW, avx2)) == ["fp32", "w8a8", "w8a4"]
    assert names(layer_options(CONV, avx2, output_quantized=False)) == ["fp32", "w8a8", "w7a8", "w4a8"]
    for t in ("x86-cascadelake", "raspberry-pi-5", "raspberry-pi-4b"):     # every CPU: float or the one int8 kernel
        assert names(layer_options(CONV, load_target(t))) == ["fp32", "w8a8"], t
    assert names(layer_options(CONV, load_target("nvidia-t4"))) == ["w8a8"]   # no hwq float kernel on CUDA


def test_float_option_runs_the_float_kernel_of_the_widest_isa():
    fp32 = Option.parse("fp32")
    assert fp32 == Option(32, 32) and fp32.spec.is_float
    assert option_kernel(CONV, load_target("x86-avx2"), fp32).name == "fp32-avx2"
    assert option_kernel(CONV, load_target("x86-cascadelake"), fp32).name == "fp32-avx512"
    assert option_kernel(DW, load_target("raspberry-pi-5"), fp32).name == "fp32-neon"
    assert option_kernel(CONV, load_target("nvidia-t4"), fp32).name == "generic-fp32"
    grouped = Workload("conv2d", (32, 14, 14), 64, (1, 1), groups=4)
    assert option_kernel(grouped, load_target("x86-avx2"), fp32).name == "generic-fp32"
    # an fp32 producer's output reaches its integer readers at the plan's default width
    assert output_bits(fp32, 4) == 4 and output_bits(Option(8, 4), 8) == 4


@pytest.mark.parametrize("wmax, amax, kernel", [
    (127, 255, "x86-avx2"),            # 2 * 255 * 127 > 32767: vpmaddubsw would saturate
    (63, 255, "x86-avx2-maddubs"),     # 7-bit weights
    (7, 255, "x86-avx2-s4"),           # 4-bit weights, packed
    (127, 15, "x86-avx2-maddubs"),     # a 4-bit input
    (127, act_span(7, True), "x86-avx2-maddubs"),   # 7-bit signed [-63, 63] -> [0, 126]
    (127, act_span(8, True), "x86-avx2"),
    (63, act_span(8, True), "x86-avx2-maddubs"),    # 2 * 254 * 63 = 32004
])
def test_avx2_kernel_follows_the_exactness_bound(wmax, amax, kernel):
    assert kernel_for(CONV, load_target("x86-avx2"), wmax, amax).name == kernel


def test_kernels_on_other_targets():
    assert kernel_for(CONV, load_target("x86-cascadelake"), 7, 15).name == "x86-avx512-vnni"
    assert kernel_for(CONV, load_target("raspberry-pi-5"), 127, 255).name == "arm-dotprod"
    assert kernel_for(CONV, load_target("raspberry-pi-4b"), 127, 255).name == "arm-neon"
    assert kernel_for(DW, load_target("raspberry-pi-4b"), 127, 255).name == "cpu-depthwise"
    assert kernel_for(CONV, load_target("nvidia-t4"), 127, 255).name == "cuda-dp4a"
    grouped = Workload("conv2d", (32, 14, 14), 64, (1, 1), groups=4)
    assert kernel_for(grouped, load_target("x86-avx2"), 127, 255).name == "generic"
    odd = Workload("depthwise", (24, 14, 14), 24, (3, 3), padding=(1, 1), groups=24)
    assert kernel_for(odd, load_target("x86-avx2"), 127, 255).name == "generic"   # 24 % 16


def test_option_names():
    assert Option.parse("w4a8") == Option(4, 8) and Option(7, 8).name == "w7a8"
    assert Option(4, 4).spec == LayerSpec(4, 4)
    with pytest.raises(ConfigError, match="option name 'int8' is not 'fp32' nor of the form"):
        Option.parse("int8")
    with pytest.raises(ConfigError, match="weight_bits"):
        Option(9, 8)


def test_a_layer_kernel_depends_on_its_producer(rescnn_graph):
    avx2 = load_target("x86-avx2")
    base = {c.name: c for c in plan_layers(rescnn_graph, BitPlan(), avx2)}
    assert base["block2.0"].kernel.name == "x86-avx2" and base["block2.0"].input_bits == 8
    # block1.0 writes 4-bit activations: block2.0 reads them and can use vpmaddubsw with 8-bit weights
    narrow = {c.name: c for c in plan_layers(rescnn_graph, BitPlan(layers={"block1.0": LayerSpec(8, 4)}), avx2)}
    assert narrow["block2.0"].input_bits == 4 and narrow["block2.0"].kernel.name == "x86-avx2-maddubs"
    assert narrow["block1.0"].kernel.name == "x86-avx2"
