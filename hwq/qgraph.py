"""The integer program: what a quantized model computes, op by op, as plain data.

Built from the trained model's ``torch.export`` graph (``hwq.qat.convert``), executed by the torch
integer reference (``hwq.qat.reference``) and lowered to TVM Relax (``hwq.lower``). Both consumers
read the same ``QGraph``, so a mismatch between them is a bug in one of the two, never a drift
between two descriptions of the model.

Conventions: activations are NCHW (or NC) integer tensors in an 8-bit container with zero point 0
and one scale per tensor; weights are int8 with one scale per output channel; accumulators are
int32; every requantization follows ``hwq.fixed_point``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

ACT_DTYPES = ("int8", "uint8")


@dataclass(frozen=True)
class TensorInfo:
    """An activation: its integer range, container dtype and real-valued scale (zero point 0)."""

    name: str
    shape: tuple            # without the batch dimension
    dtype: str              # "int8" | "uint8" | "int32" (the logits of a graph's last layer)
    scale: float            # real value = integer * scale (per tensor); for int32 logits see QGraph
    qmin: int
    qmax: int


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
    op: str = "max_pool2d"


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
        return total

    def summary(self) -> str:
        """One line per node: op, name, output shape and dtype."""
        lines = [f"input {self.input.name}: {self.input.dtype}{list(self.input.shape)} scale={self.input.scale:.3g}"]
        for node in self.nodes:
            t = self.tensors[node.output]
            lines.append(f"{node.op:16s} {node.name:24s} -> {t.dtype}{list(t.shape)} scale={t.scale:.3g}")
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
            "macs": self.macs(),
        }, indent=2)


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
