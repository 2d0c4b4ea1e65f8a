"""Roofline latency of integer layers from a target description.

Time of a layer = max(compute time at the target's peak for the operand dtype, DRAM traffic time
at its bandwidth). A roofline is an optimistic bound: real kernels reach a fraction of it, which
per-layer timings measured on the device will calibrate (every estimate says where it came from).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq import qgraph as qg
from hwq.errors import ConfigError, choices
from hwq.target import Target

_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class LayerCost:
    """The estimated latency of one layer and its parts; ``source`` says how it was obtained."""

    name: str
    ops: float
    bytes: float
    compute_s: float
    memory_s: float
    source: str = "roofline"

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def estimate_layer(name: str, macs: int, in_elems: int, weight_elems: int, out_elems: int,
                   dtype: str, target: Target) -> LayerCost:
    """Roofline cost of a layer doing ``macs`` multiply-accumulates with operands of ``dtype``.

    Activations are read and written at ``dtype`` width (int8 containers hold int4 activations),
    weights at ``dtype`` width; ``in_elems``/``out_elems`` include the batch.
    """
    if dtype not in _BYTES:
        raise ConfigError(f"unknown operand dtype {dtype!r}; valid: {choices(_BYTES)}")
    ops = 2.0 * macs
    act_bytes = 1.0 if dtype == "int4" else _BYTES[dtype]
    nbytes = (in_elems + out_elems) * act_bytes + weight_elems * _BYTES[dtype]
    return LayerCost(name, ops, nbytes, ops / target.peak_ops_per_s(dtype),
                     nbytes / (target.memory.bandwidth_gbs * 1e9))


def estimate_graph(graph: qg.QGraph, target: Target, batch: int = 1, dtype: str = "int8") -> list[LayerCost]:
    """Roofline cost of each conv / dense layer of ``graph`` at ``batch``."""
    out = []
    for node in graph.nodes:
        if node.op not in ("conv2d", "dense"):
            continue
        in_elems = batch * int(np.prod(graph.tensors[node.input].shape))
        out_elems = batch * int(np.prod(graph.tensors[node.output].shape))
        per_out = int(np.prod(node.weight.shape[1:]))
        out.append(estimate_layer(node.name, out_elems * per_out, in_elems, node.weight.size, out_elems, dtype, target))
    return out
