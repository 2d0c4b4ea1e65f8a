"""The integer program: what a quantized model computes, op by op, as plain data.

Built from the trained model's ``torch.export`` graph (``hwq.qat.convert``), executed by the torch
integer reference (``hwq.qat.reference``) and lowered to TVM Relax (``hwq.lower``). Both consumers
read the same ``QGraph``, so a mismatch between them is a bug in one of the two, never a drift
between two descriptions of the model.

Conventions: activations are NCHW (or NC) integer tensors in an 8-bit container with zero point 0
and one scale per tensor; weights are int8 with one scale per output channel; accumulators are
int32; every requantization follows ``hwq.fixed_point``.

Float islands: a layer the plan keeps in ``fp32`` (``FloatConv2d`` / ``FloatDense``) and any operator
the integer path cannot express (``FloatOp``: an ATen operator run as it is) compute in float32 on
``float32`` tensors. ``Dequantize`` (``x * scale`` in float32) enters an island and ``Quantize``
(``clamp(round_half_even(x / scale))`` in float32, the rule of the model input) leaves it; both are
single IEEE float32 operations, so every backend rounds them identically. Inside an island a
backend may sum in another order than torch, so a ``Quantize`` after it can land 1 LSB away.

Tables: a chain of elementwise float ops whose only tensor input is one 8-bit value (hardswish,
sigmoid, SiLU, GELU, ``x * relu6(x + 3) / 6``), quantized where it ends, is a ``Lut``: one entry
per input integer, computed once by the converter. It is integer arithmetic, so exact everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

ACT_DTYPES = ("int8", "uint8")
FLOAT = "float32"


@dataclass(frozen=True)
class TensorInfo:
    """An activation: its integer range, container dtype and real-valued scale (zero point 0)."""

    name: str
    shape: tuple            # without the batch dimension
    dtype: str              # "int8" | "uint8" | "int32" (the logits of a graph's last layer) | "float32"
    scale: float            # real value = integer * scale (per tensor); for int32 logits see QGraph; 1 for float
    qmin: int               # integer range (0, 0 for a float tensor)
    qmax: int

    @property
    def is_float(self) -> bool:
        return self.dtype == FLOAT


@dataclass(frozen=True)
class Requant:
    """Per-channel (or scalar) fixed-point multiplier and shift, then a clamp to ``[qmin, qmax]``."""

    multiplier: np.ndarray  # int64 array, broadcast over the output's channel axis
    shift: np.ndarray       # int64 array, same shape
    qmin: int
    qmax: int


@dataclass(frozen=True)
class Conv2d:
    """Integer conv2d (with BN folded in), int32 bias, then requantization (ReLU as the clamp)."""

    name: str               # the torch module's qualified name
    input: str
    output: str
    weight: np.ndarray      # int8 (O, I/groups, kh, kw)
    bias: np.ndarray        # int32 (O,)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    requant: Requant | None  # None: the int32 accumulator is the graph's output
    op: str = "conv2d"


@dataclass(frozen=True)
class Dense:
    """Integer fully-connected layer: int8 weight (O, I), int32 bias, requantization."""

    name: str
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    requant: Requant | None
    op: str = "dense"


@dataclass(frozen=True)
class Add:
    """Residual add: both inputs rescaled onto the output scale with a shared shift, then clamped."""

    name: str
    inputs: tuple           # (a, b)
    output: str
    multipliers: tuple      # (M_a, M_b) python ints
    shift: int
    qmin: int
    qmax: int
    op: str = "add"


@dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over H and W: int32 sum, then requantization by ``s_in / (H*W*s_out)``; output (N, C, 1, 1)."""

    name: str
    input: str
    output: str
    requant: Requant
    op: str = "global_avg_pool"


@dataclass(frozen=True)
class MaxPool2d:
    """Max pooling on integers (exact: it commutes with a positive scale); pads with ``qmin``."""

    name: str
    input: str
    output: str
    kernel: tuple
    stride: tuple
    padding: tuple
    ceil_mode: bool = False  # torch's rule: a last window that starts inside the input (or its left padding) counts
    op: str = "max_pool2d"


@dataclass(frozen=True)
class AvgPool2d:
    """Average pooling: int32 window sums (zeros in the padding), then one requantization per output
    position, by ``s_in / (divisor * s_out)`` with torch's divisor there (the window area, clipped at
    the borders where ``count_include_pad`` is off, or ``divisor_override``). ``requant``'s arrays are
    (H_out, W_out), or scalars where every divisor is the same."""

    name: str
    input: str
    output: str
    kernel: tuple
    stride: tuple
    padding: tuple
    ceil_mode: bool
    requant: Requant
    op: str = "avg_pool2d"


@dataclass(frozen=True)
class Lut:
    """A unary function of one 8-bit tensor, requantization included, as a table: ``y = table[x - input_min]``.

    ``table`` holds one output integer for each of the ``2^bits`` input integers from ``input_min``:
    the model's float ops (``ops``, ATen names) run in float32 on every dequantized input, then
    quantized as ``Quantize`` does. Exact and bit-identical on every backend, whatever the function.
    """

    name: str
    input: str
    output: str
    table: np.ndarray       # int64 (2^bits,), values in the output's [qmin, qmax]
    input_min: int
    ops: tuple = ()
    op: str = "lut"


@dataclass(frozen=True)
class Mul:
    """Elementwise product of two integer tensors (broadcast, e.g. a squeeze-excitation gate (N, C, 1, 1)),
    exact in int32, then requantized by ``s_a * s_b / s_out``."""

    name: str
    inputs: tuple           # (a, b)
    output: str
    requant: Requant
    op: str = "mul"


@dataclass(frozen=True)
class ChannelAffine:
    """A BatchNorm no conv absorbs (after a concat, as in MixNet): per channel ``x * weight[c] + bias[c]``
    in int32, then requantization (ReLU as the clamp). Its weights are exact: one value per channel,
    on a per-channel scale."""

    name: str
    input: str
    output: str
    weight: np.ndarray      # int8 (C,)
    bias: np.ndarray        # int32 (C,)
    requant: Requant
    op: str = "channel_affine"


@dataclass(frozen=True)
class Concat:
    """Concatenation along ``axis`` (NCHW numbering): each input requantized onto the output's scale
    (``None``: already on it), then copied."""

    name: str
    inputs: tuple
    output: str
    axis: int
    requants: tuple         # one Requant | None per input
    op: str = "concat"


@dataclass(frozen=True)
class Move:
    """An ATen data-movement operator on integer tensors, as the model wrote it: reshape, permute,
    slice, split / chunk and their ``getitem``, nearest upsampling by an integer factor, zero padding.
    Exact: the output keeps its input's scale. Arguments are spelled as in ``FloatOp``."""

    name: str
    inputs: tuple
    output: str
    target: str
    args: tuple
    kwargs: tuple = ()
    module: str = ""
    op: str = "move"


@dataclass(frozen=True)
class Clamp:
    """A standalone ReLU / hardtanh not fused into the op before it: clamp in the integer domain."""

    name: str
    input: str
    output: str
    qmin: int
    qmax: int
    op: str = "clamp"


@dataclass(frozen=True)
class Flatten:
    """(N, C, H, W) -> (N, C*H*W)."""

    name: str
    input: str
    output: str
    op: str = "flatten"


@dataclass(frozen=True)
class Quantize:
    """Float -> integer at an island's exit: ``clamp(round_half_even(x / scale), qmin, qmax)`` in float32."""

    name: str
    input: str
    output: str
    scale: float
    qmin: int
    qmax: int
    op: str = "quantize"


@dataclass(frozen=True)
class Dequantize:
    """Integer -> float at an island's entry: ``float32(x) * float32(scale of the input)``."""

    name: str
    input: str
    output: str
    op: str = "dequantize"


@dataclass(frozen=True)
class FloatConv2d:
    """A conv2d the plan keeps in float32: float weights (BN folded), bias, then ``clamp`` (ReLU / ReLU6) if any."""

    name: str
    input: str
    output: str
    weight: np.ndarray      # float32 (O, I/groups, kh, kw)
    bias: np.ndarray        # float32 (O,)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    clamp: tuple | None     # (lo, hi) in real units, hi may be inf
    op: str = "float_conv2d"


@dataclass(frozen=True)
class FloatDense:
    """A fully-connected layer the plan keeps in float32."""

    name: str
    input: str
    output: str
    weight: np.ndarray      # float32 (O, I)
    bias: np.ndarray        # float32 (O,)
    clamp: tuple | None
    op: str = "float_dense"


@dataclass(frozen=True)
class Ref:
    """A graph value inside a ``FloatOp``'s arguments."""

    name: str


@dataclass(frozen=True)
class BatchSize:
    """The batch size inside a ``FloatOp``'s shape argument (a reshape's first dimension):
    the graph is exported at one batch size and runs at any."""


@dataclass(frozen=True)
class FloatOp:
    """An ATen operator run in float32 as the model wrote it (a float island's body).

    ``target`` is the operator's name (``"aten.sigmoid.default"``); ``args`` / ``kwargs`` hold ``Ref``
    for graph values, ``BatchSize`` for the batch, float32 numpy arrays for constant tensors and
    plain Python values otherwise. ``why`` says why it is not integer; ``module`` is the model's
    module that holds it (for messages).
    """

    name: str
    inputs: tuple           # names of the graph values it reads (the Refs in args)
    output: str
    target: str
    args: tuple
    kwargs: tuple = ()      # ((key, value), ...)
    why: str = ""
    module: str = ""
    op: str = "float"


@dataclass(frozen=True)
class QGraph:
    """A whole integer program with its float boundary.

    ``input`` is quantized from float as ``clamp(round_half_even(x / scale))``; the output is
    either an int8/uint8 tensor (dequantized with its scale) or, when the last layer keeps its int32
    accumulator, dequantized per channel with ``output_scales``.
    """

    input: TensorInfo
    nodes: tuple
    output: str
    tensors: dict = field(default_factory=dict)   # name -> TensorInfo, every value in the graph
    output_scales: np.ndarray | None = None       # float64 (C,), for an int32 output

    def __hash__(self):
        return id(self)

    @property
    def output_info(self) -> TensorInfo:
        return self.tensors[self.output]

    def macs(self) -> int:
        """Multiply-accumulates per example (conv and dense)."""
        total = 0
        for node in self.nodes:
            if node.op == "conv2d":
                out = self.tensors[node.output].shape
                total += int(np.prod(out)) * int(np.prod(node.weight.shape[1:]))
            elif node.op == "dense":
                total += int(np.prod(node.weight.shape))
            elif node.op == "float_conv2d":
                out = self.tensors[node.output].shape
                total += int(np.prod(out)) * int(np.prod(node.weight.shape[1:]))
            elif node.op == "float_dense":
                total += int(np.prod(node.weight.shape))
        return total

    def float_nodes(self) -> list:
        """``(node, why)`` for every node computing in float32 (the float islands)."""
        out = []
        for node in self.nodes:
            if node.op == "float":
                out.append((node, node.why))
            elif node.op in ("float_conv2d", "float_dense"):
                out.append((node, "the plan keeps this layer in fp32"))
        return out

    def up_to(self, value: str) -> "QGraph":
        """The program that stops at ``value`` (an 8-bit or float tensor): its nodes up to the one
        producing it, ``value`` as the output. Compares backends at an inner point (a float island's
        ``Quantize``, say)."""
        info = self.tensors.get(value)
        if info is None or info.dtype == "int32":
            raise KeyError(f"{value!r} is not an 8-bit or float value of this graph")
        end = next(i for i, n in enumerate(self.nodes) if n.output == value)
        return QGraph(self.input, self.nodes[:end + 1], value, self.tensors)

    def summary(self) -> str:
        """One line per node: op, name, output shape and dtype; float ops say why they are float."""
        lines = [f"input {self.input.name}: {self.input.dtype}{list(self.input.shape)} scale={self.input.scale:.3g}"]
        why = {id(n): w for n, w in self.float_nodes()}
        for node in self.nodes:
            t = self.tensors[node.output]
            what = _short(node.target) if node.op in ("float", "move") else node.op
            if node.op == "lut":
                what = "lut(" + ",".join(_short(o).split(".")[0] for o in node.ops) + ")"
            tail = f"float: {why[id(node)]}" if id(node) in why else f"scale={t.scale:.3g}"
            lines.append(f"{what:16s} {node.name:24s} -> {t.dtype}{list(t.shape)} {tail}")
        return "\n".join(lines)

    def describe_json(self) -> str:
        """Metadata of the graph (no weights), for an artifact's manifest."""
        return json.dumps({
            "input": {"name": self.input.name, "shape": list(self.input.shape), "dtype": self.input.dtype,
                      "scale": self.input.scale, "qmin": self.input.qmin, "qmax": self.input.qmax},
            "output": {"name": self.output, "shape": list(self.output_info.shape), "dtype": self.output_info.dtype,
                       "scale": self.output_info.scale,
                       "scales": None if self.output_scales is None else self.output_scales.tolist()},
            "nodes": [{"op": n.op, "name": n.name, "output": n.output} for n in self.nodes],
            "float_ops": [{"name": n.name, "why": why} for n, why in self.float_nodes()],
            "macs": self.macs(),
        }, indent=2)


def _short(target: str) -> str:
    return target.replace("aten.", "").replace(".default", "")


def fusable_adds(graph: QGraph) -> dict:
    """``{conv output: (add node, the add's other input)}`` for each add whose input comes from a
    conv2d that nothing else reads and whose other input exists before that conv runs:
    the conv's kernel may then do the add in its epilogue (one pass and one call fewer)."""
    readers: dict = {}
    for node in graph.nodes:
        for name in getattr(node, "inputs", None) or (node.input,):
            readers[name] = readers.get(name, 0) + 1
    readers[graph.output] = readers.get(graph.output, 0) + 1
    producer = {node.output: i for i, node in enumerate(graph.nodes)}
    out = {}
    for node in graph.nodes:
        if node.op != "add":
            continue
        # one reader: this add, once (``add(x, x)`` counts x twice)
        for mine, other in (node.inputs, node.inputs[::-1]):
            conv = producer.get(mine)
            if (conv is not None and graph.nodes[conv].op == "conv2d" and readers[mine] == 1
                    and producer.get(other, -1) < conv):
                out[mine] = (node, other)
                break
    return out
