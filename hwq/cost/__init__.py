"""Latency cost model (pure Python + numpy: no torch, no tvm)."""

from hwq.cost.roofline import LayerCost, estimate_graph, estimate_layer

__all__ = ["LayerCost", "estimate_graph", "estimate_layer"]
