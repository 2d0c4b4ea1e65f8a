"""The knapsack of one model on one target: groups, options, latencies from the cost model, losses.

Pure (no torch, no tvm). One group per conv / dense layer, or per set of layers the user ties;
each group's options are what the target offers (``hwq.cost.options.layer_options``, the same
answer the kernel rules act on). A layer's latency depends on its own option *and* on its
producer's (the input width decides the kernel on AVX2), so the layer's cost is not a group
latency but an ``Interaction`` table over (producer option, consumer option); a layer fed by a
non-layer (the model input, an add, a pool) reads the plan's default width and has a plain group
latency. The glue between kernels is the base latency every plan pays (a kernel's extra cost inside
a model, the glue fit's cold-cache term, goes with the kernel: ``CostModel.in_model_ms``). ``plan_latency`` of a
choice therefore equals ``CostModel.plan(...).total_ms`` of the plan it stands for (a test holds
the two together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwq import qgraph as qg
from hwq.alloc.problem import Group, Interaction, Problem
from hwq.cost.estimate import CostModel
from hwq.cost.glue import graph_ops, layer_ops
from hwq.cost.options import has_kernels
from hwq.cost.options import Option, layer_options, option_kernel, output_bits
from hwq.cost.workload import Workload
from hwq.errors import ConfigError
from hwq.plan import BitPlan, LayerSpec


@dataclass(frozen=True)
class Allocation:
    """The problem of one model on one target, and how its choices map back to a ``BitPlan``."""

    problem: Problem
    layer_group: dict          # layer name -> group index
    options: tuple             # per group: tuple of Option
    default: LayerSpec

    def plan(self, choice) -> BitPlan:
        """The ``BitPlan`` a choice (one option index per group) stands for."""
        layers = {}
        for layer, g in self.layer_group.items():
            o = self.options[g][choice[g]]
            layers[layer] = LayerSpec(o.weight_bits, o.act_bits)
        return BitPlan(default=self.default, layers=layers)

    def choice(self, plan: BitPlan) -> tuple:
        """The choice that stands for ``plan`` (every layer's spec must be one of its group's options)."""
        out = []
        for g, opts in enumerate(self.options):
            members = [layer for layer, gi in self.layer_group.items() if gi == g]
            specs = {plan.spec_for(layer) for layer in members}
            names = [o.name for o in opts]
            if len(specs) != 1:
                raise ConfigError(f"plan gives tied layers {members} different options {sorted(map(str, specs))}")
            (spec,) = specs
            o = Option(spec.weight_bits, spec.act_bits)
            if o not in opts:
                raise ConfigError(f"plan gives layer {members[0]!r} option {o.name!r}; the target offers {names}")
            out.append(opts.index(o))
        return tuple(out)


def _producer_layer(graph: qg.QGraph) -> dict:
    """``{layer name: the layer whose output it reads}`` through max-pool, clamp and flatten (which
    keep their input's width); layers fed by the input, an add or a pool are absent."""
    made_by = {n.output: n for n in graph.nodes}
    out = {}
    for node in graph.nodes:
        if node.op not in ("conv2d", "dense"):
            continue
        src = made_by.get(node.input)
        while src is not None and src.op in ("max_pool2d", "clamp", "flatten"):
            src = made_by.get(src.input)
        if src is not None and src.op in ("conv2d", "dense"):
            out[node.name] = src.name
    return out


def build_allocation(graph: qg.QGraph, model: CostModel, losses, batch: int = 1, ties=(),
                     default: LayerSpec = LayerSpec(8, 8)) -> Allocation:
    """The knapsack of ``graph`` on ``model``'s target at ``batch``.

    Args:
        graph: the integer program (its shapes and signedness; its bits do not matter).
        model: the target's cost model.
        losses: ``(layer, option names) -> tuple of predicted loss increases`` (e.g.
            ``Sensitivities.losses``); called once per group member, summed over a tied group.
        ties: groups of layer names that must share one option.
        default: the plan's default spec (adds, pools; what non-layer producers write).
    """
    target = model.target
    nodes = [n for n in graph.nodes if n.op in ("conv2d", "dense")]
    names = [n.name for n in nodes]
    info = {n.name: (n, Workload.of(n, graph.tensors[n.input].shape)) for n in nodes}
    layer_group, groups_layers = {}, []
    for tie in ties:
        unknown = [t for t in tie if t not in info]
        if unknown:
            import difflib
            close = sorted({c for t in unknown for c in difflib.get_close_matches(t, names, n=3)})
            raise ConfigError(f"tie names layers {unknown} the model lacks; close matches: {close or 'none'}; "
                              f"layers: {names}")
        taken = [t for t in tie if t in layer_group]
        if taken:
            raise ConfigError(f"layers {taken} are tied twice")
        for t in tie:
            layer_group[t] = len(groups_layers)
        groups_layers.append(list(tie))
    for name in names:
        if name not in layer_group:
            layer_group[name] = len(groups_layers)
            groups_layers.append([name])
    # a group's options: those every member is offered (in the first member's order)
    output_quantized = {n.name: n.requant is not None for n in nodes}
    options = []
    for members in groups_layers:
        offered = [layer_options(info[m][1], target, output_quantized[m]) for m in members]
        common = tuple(o for o in offered[0] if all(o in rest for rest in offered[1:]))
        if not common:
            raise ConfigError(f"tied layers {members} have no option in common on {target.name!r}")
        options.append(common)
    producer = _producer_layer(graph)
    nhwc = has_kernels(target)
    own = [np.zeros(len(o)) for o in options]
    pair: dict = {}
    for name in names:
        node, wl = info[name]
        g = layer_group[name]
        signed = graph.tensors[node.input].dtype == "int8"

        def cost(option, in_bits, node=node, wl=wl, signed=signed):
            # the kernel in the model, and the glue it brings (pads, shifts, float borders, an unfused add)
            k = option_kernel(wl, target, option, in_bits, signed)
            return model.in_model_ms(wl, k, batch) + model.extra_glue_ms(layer_ops(graph, node, k, wl, nhwc), batch)

        p = producer.get(name)
        if p is None:
            own[g] += [cost(o, default.act_bits) for o in options[g]]
        elif layer_group[p] == g:     # tied to its producer: both pick the same option
            own[g] += [cost(o, output_bits(o, default.act_bits)) for o in options[g]]
        else:
            pg = layer_group[p]
            table = np.array([[cost(o, output_bits(po, default.act_bits)) for o in options[g]] for po in options[pg]])
            pair[(pg, g)] = pair.get((pg, g), 0) + table
    groups = []
    for g, members in enumerate(groups_layers):
        loss = np.zeros(len(options[g]))
        for m in members:
            loss += np.asarray(losses(m, [o.name for o in options[g]]), dtype=float)
        weight = [sum(_weight_bytes(info[m][1], target, o) for m in members) for o in options[g]]
        groups.append(Group(members[0] if len(members) == 1 else "+".join(members), tuple(o.name for o in options[g]),
                            tuple(own[g]), tuple(loss), tuple(weight), tuple(members)))
    interactions = tuple(Interaction(a, b, tuple(map(tuple, t))) for (a, b), t in sorted(pair.items()))
    base, _ = model.glue(graph_ops(graph, target), batch)
    return Allocation(Problem(tuple(groups), interactions, base), layer_group, tuple(options), default)


def _weight_bytes(wl: Workload, target, option: Option) -> float:
    """Stored weight bytes of a layer at ``option``: 4-bit weights are packed where a kernel packs them."""
    k = option_kernel(wl, target, option)
    return wl.weight_elems() * k.weight_bits / 8


def parse_budget(text: str) -> tuple[float, str]:
    """``"2.5ms"`` -> ``(2.5, "ms")``; ``"0.8x"`` -> ``(0.8, "x")`` (times uniform W8A8's latency)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|x)\s*", str(text))
    if m is None or not float(m.group(1)) > 0:
        raise ConfigError(f"budget {text!r} is not a positive latency: write milliseconds ('2.5ms') or a "
                          f"fraction of uniform W8A8's latency on the target ('0.8x')")
    return float(m.group(1)), m.group(2)


def uniform_w8a8(allocation: Allocation) -> tuple:
    """The choice with every group at W8A8: what an ``x`` budget is a multiple of."""
    return tuple(opts.index(Option(8, 8)) for opts in allocation.options)


def budget_ms(allocation: Allocation, text: str) -> float:
    """The budget ``text`` in milliseconds for ``allocation`` (``"0.8x"``: 0.8 x uniform W8A8)."""
    value, unit = parse_budget(text)
    if unit == "ms":
        return value
    return value * allocation.problem.latency(uniform_w8a8(allocation))
