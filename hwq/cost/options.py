"""Which precision options a target offers for a layer, and which kernel runs each: one pure answer.

The kernel rules of the lowering (``hwq.lower.kernels.rules``), the cost model and the allocator all
ask this module, so the three never disagree about what a plan runs. It reads only the target
file's features and the layer's shape and integer ranges: no torch, no tvm.

An *option* is a ``LayerSpec`` the target runs at its own speed or accuracy (``w7a8``: 7-bit
weights, 8-bit output activations). Which *kernel* runs a layer depends on its own weights and on
its input's range, i.e. on its producer's option: on AVX2, ``vpmaddubsw`` is exact when
``2 * max(activation) * max|weight| <= 32767`` (7-bit weights, or an input of at most 7 bits), and
4-bit weights get the packed kernel. That coupling is why a plan's latency is not a sum of
isolated per-layer numbers (``hwq.cost.estimate.estimate_plan`` prices each layer with its real
input, and the allocator sees the coupling as pairwise terms).
"""

from __future__ import annotations

from dataclasses import dataclass

from hwq.cost.workload import Workload
from hwq.errors import ConfigError
from hwq.plan import FLOAT_BITS, BitPlan, LayerSpec
from hwq.target import Target

INT16_MAX = 32767
S4_WEIGHT_MAX = 7       # symmetric 4-bit weights


@dataclass(frozen=True)
class KernelFamily:
    """One of hwq's kernels as plain data: what it needs and how it lays data out.

    Attributes:
        name: the kernel rule's name (``hwq.lower.kernels.rules``).
        kind: target kind, ``"cpu"`` or ``"cuda"``.
        feature: the target feature it needs (``""``: any target of the kind with NHWC kernels).
        ops: workload ops it runs (``Workload.op``).
        block: output channels per instruction block (channels are padded up to it).
        in_dtype: the activation dtype it reads (a graph tensor of the other 8-bit dtype is shifted).
        weight_bits: bits per stored weight (4: packed two per byte).
        pair_bound: exact only when ``2 * act_span * weight_absmax <= pair_bound`` (``vpmaddubsw``
            adds two products into int16 with saturation); 0 means always exact.
        weight_max: exact only for ``|weight| <= weight_max`` (0: any int8 weight).
    """

    name: str
    kind: str
    feature: str
    ops: tuple
    block: int
    in_dtype: str
    weight_bits: int = 8
    pair_bound: int = 0
    weight_max: int = 0
    dtype: str = "int8"     # the arithmetic: "int8" (any integer width), or "fp32" (a float layer)

    def takes(self, workload: Workload, target: Target, weight_absmax: int, act_span: int) -> bool:
        """Whether this kernel runs ``workload`` exactly on ``target`` for these integer ranges."""
        if target.kind != self.kind or workload.op not in self.ops:
            return False
        if self.feature and self.feature not in target.features:
            return False
        if workload.op == "conv2d" and workload.groups != 1:
            return False
        if self.dtype == "fp32":
            return True
        if workload.op == "depthwise" and workload.in_channels % 16:
            return False
        if self.weight_max and weight_absmax > self.weight_max:
            return False
        if self.pair_bound:
            w = self.weight_max + 1 if self.weight_max else weight_absmax   # the s4 unpacker's range
            if 2 * act_span * w > self.pair_bound:
                return False
        return True


_DOT = ("conv2d", "dense")
# First match wins, as in the lowering: a CPU with VNNI also has AVX2 and must get VNNI; a layer
# on which vpmaddubsw is exact gets it before the general AVX2 kernel; sdot before plain NEON.
KERNELS = (
    KernelFamily("x86-avx512-vnni", "cpu", "avx512vnni", _DOT, 16, "uint8"),
    KernelFamily("x86-avx2-s4", "cpu", "avx2", _DOT, 8, "uint8", weight_bits=4, pair_bound=INT16_MAX,
                 weight_max=S4_WEIGHT_MAX),
    KernelFamily("x86-avx2-maddubs", "cpu", "avx2", _DOT, 8, "uint8", pair_bound=INT16_MAX),
    KernelFamily("x86-avx2", "cpu", "avx2", _DOT, 8, "uint8"),
    KernelFamily("arm-dotprod", "cpu", "dotprod", _DOT, 4, "int8"),
    KernelFamily("arm-neon", "cpu", "neon", _DOT, 8, "int8"),
    KernelFamily("cpu-depthwise", "cpu", "", ("depthwise",), 1, "any"),
    KernelFamily("cuda-dp4a", "cuda", "dp4a", _DOT, 4, "int8"),
)
GENERIC = KernelFamily("generic", "any", "", ("conv2d", "depthwise", "dense"), 1, "any")
_ALL_OPS = ("conv2d", "depthwise", "dense")
# hwq.lower.kernels.fp32_conv: FMA over output-channel vectors of the widest ISA the CPU has
FLOAT_KERNELS = (
    KernelFamily("fp32-avx512", "cpu", "avx512", _ALL_OPS, 16, "float32", weight_bits=32, dtype="fp32"),
    KernelFamily("fp32-avx2", "cpu", "avx2", _ALL_OPS, 8, "float32", weight_bits=32, dtype="fp32"),
    KernelFamily("fp32-neon", "cpu", "neon", _ALL_OPS, 4, "float32", weight_bits=32, dtype="fp32"),
)
GENERIC_FP32 = KernelFamily("generic-fp32", "any", "", _ALL_OPS, 1, "float32", weight_bits=32, dtype="fp32")
_BY_NAME = {k.name: k for k in (*KERNELS, GENERIC, *FLOAT_KERNELS, GENERIC_FP32)}
# per target kind, the features for which hwq has NHWC kernels (without one: generic NCHW operators)
NHWC_FEATURES = {"cpu": ("avx512vnni", "avx2", "dotprod", "neon"), "cuda": ("dp4a",)}


def family(name: str) -> KernelFamily:
    """The kernel family called ``name``."""
    if name not in _BY_NAME:
        raise ConfigError(f"unknown kernel {name!r}; valid: {', '.join(map(repr, sorted(_BY_NAME)))}")
    return _BY_NAME[name]


def has_kernels(target: Target) -> bool:
    """Whether hwq has hand-scheduled (NHWC) kernels for ``target`` at all."""
    return any(f in target.features for f in NHWC_FEATURES.get(target.kind, ()))


def act_span(bits: int, signed: bool) -> int:
    """Largest activation a kernel reading unsigned bytes sees for a ``bits``-wide tensor: a
    signed narrow range ``[-q, q]`` is shifted by ``q`` to ``[0, 2q]``."""
    return 2 * (2 ** (bits - 1) - 1) if signed else 2 ** bits - 1


def kernel_for(workload: Workload, target: Target, weight_absmax: int, act_max: int) -> KernelFamily:
    """The kernel that runs ``workload`` on ``target`` (features already resolved for the machine)
    when its weights are within ``±weight_absmax`` and its input, taken to start at 0, is at most
    ``act_max``; :data:`GENERIC` where hwq has no kernel for it."""
    if has_kernels(target):
        for k in KERNELS:
            if k.takes(workload, target, weight_absmax, act_max):
                return k
    return GENERIC


def float_kernel_for(workload: Workload, target: Target) -> KernelFamily:
    """The kernel that runs ``workload`` in float32 on ``target`` (an ``fp32`` layer):
    :data:`GENERIC_FP32` where hwq has no float kernel for it."""
    if has_kernels(target):
        for k in FLOAT_KERNELS:
            if k.takes(workload, target, 0, 0):
                return k
    return GENERIC_FP32


def option_kernel(workload: Workload, target: Target, option, input_bits: int = 8,
                  input_signed: bool = False) -> KernelFamily:
    """The kernel a layer runs at ``option`` (an ``Option`` or ``LayerSpec``) when its input is
    ``input_bits`` wide (its producer's output): the one question the cost model, the allocator
    and the profiler ask."""
    if option.weight_bits == FLOAT_BITS:
        return float_kernel_for(workload, target)
    return kernel_for(workload, target, 2 ** (option.weight_bits - 1) - 1, act_span(input_bits, input_signed))


def output_bits(option, default_act_bits: int) -> int:
    """The width of a layer's output as the layers reading it see it: an fp32 layer's float output
    is quantized at the plan's default activation width where an integer layer reads it."""
    return default_act_bits if option.weight_bits == FLOAT_BITS else option.act_bits


@dataclass(frozen=True)
class Option:
    """A precision option of one layer: its ``LayerSpec`` under a short name (``"w7a8"``)."""

    weight_bits: int
    act_bits: int

    def __post_init__(self):
        LayerSpec(self.weight_bits, self.act_bits)   # validates the widths

    @property
    def spec(self) -> LayerSpec:
        return LayerSpec(self.weight_bits, self.act_bits)

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def parse(cls, name: str) -> "Option":
        """``"w4a8"`` -> ``Option(4, 8)``."""
        spec = LayerSpec.parse(name)
        return cls(spec.weight_bits, spec.act_bits)


W8A8 = Option(8, 8)
FP32 = Option(FLOAT_BITS, FLOAT_BITS)


def layer_options(workload: Workload, target: Target, output_quantized: bool = True) -> tuple[Option, ...]:
    """The options ``target`` offers for a layer of this shape, the most precise first.

    Every CPU with hwq's float kernels (AVX2, AVX-512, NEON) offers ``fp32`` (float weights and
    output: exact, and slower). Otherwise only options that change speed somewhere are offered: on a CPU with VNNI, ``sdot`` or NEON
    (and on CUDA's dp4a) every width runs the same 8-bit kernel, so narrower widths would only
    lose accuracy. On AVX2 without VNNI: ``w7a8`` (``vpmaddubsw``, exact for 7-bit weights),
    ``w4a8`` (packed 4-bit weights, half the weight bytes), ``w8a4`` (a 4-bit output lets the
    layers that read it use ``vpmaddubsw`` with 8-bit weights) and ``w4a4``. A layer whose output
    is the graph's int32 logits (``output_quantized=False``) has no output width to choose, and a
    depthwise layer's kernel does not depend on its weights' width.
    """
    floats = (FP32,) if float_kernel_for(workload, target) is not GENERIC_FP32 else ()
    if not (target.kind == "cpu" and "avx2" in target.features and "avx512vnni" not in target.features):
        return (FP32, W8A8) if floats else (W8A8,)
    if workload.op == "depthwise":
        opts = (W8A8, Option(8, 4))
    elif workload.op == "conv2d" and workload.groups != 1:
        opts = (W8A8, Option(8, 4))       # grouped: the generic operator, whatever the weights
    else:
        opts = (W8A8, Option(7, 8), Option(4, 8), Option(8, 4), Option(4, 4))
    if not output_quantized:
        opts = tuple(dict.fromkeys(Option(o.weight_bits, 8) for o in opts))
    return floats + opts


def tensor_bits(graph, plan: BitPlan) -> dict:
    """``{tensor name: bits}`` of every activation of ``graph`` when quantized with ``plan``: a
    conv / dense output has its layer's ``act_bits``; tables, products, concats, average pools the
    plan's default (an fp32 layer's is quantized at the plan's
    default where an integer layer reads it), an add's or a pool's the plan's default, the model
    input 8; max-pool, clamp and flatten keep their input's width."""
    bits = {graph.input.name: 8}
    for node in graph.nodes:
        if node.op in ("conv2d", "dense"):
            spec = plan.spec_for(node.name)
            bits[node.output] = plan.default.act_bits if spec.is_float else spec.act_bits
        elif node.op in _NEW_SCALE:
            bits[node.output] = plan.default.act_bits
        else:     # same scale: a max-pool, clamp, flatten, data movement (first input's width)
            first = node.inputs[0] if hasattr(node, "inputs") else node.input
            bits[node.output] = bits.get(first, plan.default.act_bits)
    return bits


# ops whose output is a new activation quantized at the plan's default width (or float)
_NEW_SCALE = ("add", "global_avg_pool", "avg_pool2d", "lut", "mul", "concat", "channel_affine", "quantize",
              "dequantize", "float", "float_conv2d", "float_dense")


@dataclass(frozen=True)
class LayerChoice:
    """What ``plan`` runs for one layer of a graph on a target."""

    name: str
    workload: Workload
    option: Option
    input_bits: int
    input_signed: bool
    kernel: KernelFamily


def plan_layers(graph, plan: BitPlan, target: Target) -> list[LayerChoice]:
    """Each conv / dense layer of ``graph`` under ``plan`` on ``target``: its option, its input's
    width (its producer's option) and the kernel the lowering will select for it."""
    bits = tensor_bits(graph, plan)
    out = []
    for node in graph.nodes:
        if node.op not in ("conv2d", "dense"):
            continue
        spec = plan.spec_for(node.name)
        wl = Workload.of(node, graph.tensors[node.input].shape)
        signed = graph.tensors[node.input].dtype == "int8"
        in_bits = bits[node.input]
        kernel = option_kernel(wl, target, spec, in_bits, signed)
        out.append(LayerChoice(node.name, wl, Option(spec.weight_bits, spec.act_bits), in_bits, signed, kernel))
    return out
