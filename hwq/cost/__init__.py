"""The latency cost model (pure: no torch, no tvm).

``options`` says which precision options a target offers for a layer and which kernel runs each;
``roofline`` prices a kernel from the target file; ``table`` holds what ``hwq profile`` measured on
a device; ``calibrate`` fits efficiency factors to it; ``estimate`` answers per layer and per plan,
preferring measured over calibrated over roofline, and says which it used.
"""

from hwq.cost.estimate import AUTO, CostModel, PlanEstimate, estimate, estimate_plan
from hwq.cost.options import Option, kernel_for, layer_options, plan_layers
from hwq.cost.roofline import Estimate, roofline
from hwq.cost.table import LatencyTable, Measurement, find_table
from hwq.cost.workload import Workload

__all__ = ["AUTO", "CostModel", "Estimate", "LatencyTable", "Measurement", "Option", "PlanEstimate", "Workload",
           "estimate", "estimate_plan", "find_table", "kernel_for", "layer_options", "plan_layers", "roofline"]
