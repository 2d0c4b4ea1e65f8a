"""``quantize_(model, plan, step=...)``: quantization-aware training in two steps, prepare then convert.

``prepare`` exports the float model with ``torch.export`` (batch dimension dynamic), takes the
trainable ``ep.module()`` and rewrites it at exactly the converter's quantization points, which
``hwq.qat.patterns.find_groups`` decides for both: every conv / linear group (with its BN and
ReLU) becomes a ``QuantLayer``; the model input and the output of each residual add, product,
concat, pool and table (a chain of elementwise ops, which trains as the float ops themselves) get
an ``ActFakeQuantize``. Float islands (layers the plan keeps in fp32, ops without an integer form)
stay the float model's own ops, with an ``ActFakeQuantize`` where an integer op reads them.
Activation ranges start from min/max calibration, as in PTQ.

``convert`` reads the trained quantizers (their scales, and the integers the weight quantizers
round to) and builds the ``QGraph`` from the same exported graph, so the integer program computes
what the fake-quantized model trained on, up to the fixed-point requantization's rounding.

Example:
    >>> prepared = quantize_(model, BitPlan(default=LayerSpec(4, 4)), step="prepare", calibration=images)
    >>> report = train_constrained(prepared, train_set, QATConfig(epochs=1))
    >>> graph = quantize_(prepared, step="convert")            # -> hwq.lower.compile_model(graph, ...)
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace

import torch
from torch import nn

from hwq import qgraph as qg
from hwq.errors import ConfigError, choices
from hwq.plan import BitPlan
from hwq.qat.convert import CALIBRATION_BATCH, calibrate, convert
from hwq.qat.exported import check_calibration, constants, export_model, user_input_name
from hwq.qat.fake_quant import ActFakeQuantize
from hwq.qat.modules import QuantLayer
from hwq.qat.groups import (IDENTITY, IDENTITY_OP, LAYER, float_values, group_inputs, group_nodes, layer_names,
                            layer_weights)
from hwq.qat.patterns import find_groups
from hwq.spec import RANGE_MODES, QuantSpec

STEPS = ("prepare", "convert")
INPUT = "__input__"   # the model input's key among the quantization points (as in ``calibrate``)


def quantize_(model: nn.Module, plan: BitPlan | None = None, step: str = "prepare", *,
              calibration: torch.Tensor | None = None, range_mode: str = "calibrated", batch_size: int = CALIBRATION_BATCH):
    """Prepare a float model for quantization-aware training, or convert a trained one.

    Args:
        model: ``step="prepare"``: a float model whose ops are among ``hwq.qat.convert.SUPPORTED_OPS``;
            ``step="convert"``: the module ``prepare`` returned (trained or not).
        plan: per-layer bits (``prepare`` only; the default is W8A8). ``convert`` uses the plan
            the model was prepared with.
        step: ``"prepare"`` or ``"convert"``.
        calibration: float inputs (N, ...) for the export and the initial activation ranges (prepare).
        range_mode: ``"calibrated"`` or ``"learned"`` scales for weights and activations (the
            model input is always calibrated: it is data, not a trained feature).
        batch_size: images per calibration pass (memory grows with it, not with ``len(calibration)``).

    Returns:
        ``prepare``: a trainable ``torch.fx.GraphModule``; ``convert``: the ``QGraph``.
    """
    if step == "prepare":
        return _prepare(model, plan if plan is not None else BitPlan(), calibration, range_mode, batch_size)
    if step == "convert":
        return _convert(model, plan)
    raise ConfigError(f"quantize_ step {step!r} is not one of {choices(STEPS)}")


@contextlib.contextmanager
def float_mode(model: nn.Module):
    """Run ``model`` as the float network inside the block: every fake quantizer passes values through."""
    mods = [m for m in model.modules() if hasattr(m, "fake_quant_enabled")]
    before = [m.fake_quant_enabled for m in mods]
    for m in mods:
        m.fake_quant_enabled = False
    try:
        yield model
    finally:
        for m, b in zip(mods, before):
            m.fake_quant_enabled = b


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """The ``QuantLayer`` modules of a prepared model, in execution order."""
    return [m for m in model.modules() if isinstance(m, QuantLayer)]


def act_quantizers(model: nn.Module) -> list[ActFakeQuantize]:
    """Every activation quantizer of a prepared model (the input's, the layers' outputs, adds, pools)."""
    return [m for m in model.modules() if isinstance(m, ActFakeQuantize)]


@torch.no_grad()
def calibrate_(model: nn.Module, calibration: torch.Tensor, batch_size: int = CALIBRATION_BATCH) -> None:
    """Reset every activation range to the min/max of the float model on ``calibration``, one
    batch of ``batch_size`` images at a time (the quantizers keep running ranges only)."""
    if batch_size < 1:
        raise ConfigError(f"calibration batch_size must be >= 1, got {batch_size!r}")
    quantizers = act_quantizers(model)
    for q in quantizers:
        q.min_val.fill_(float("inf"))
        q.max_val.fill_(float("-inf"))
        q.calibrating = True
    try:
        with float_mode(model):
            for i in range(0, len(calibration), batch_size):
                model(calibration[i:i + batch_size])
    finally:
        for q in quantizers:
            q.finish_calibration()


# ------------------------------------------------------------------------------------ prepare
def _prepare(model, plan, calibration, range_mode, batch_size):
    if not isinstance(calibration, torch.Tensor) or calibration.dim() < 2 or len(calibration) == 0:
        raise ConfigError("quantize_(..., step='prepare') needs calibration=<float tensor (N, ...)> with N >= 1, "
                          f"got {type(calibration).__name__}")
    check_calibration(calibration)
    if range_mode not in RANGE_MODES:
        raise ConfigError(f"range_mode {range_mode!r} is not one of {choices(RANGE_MODES)}")
    example = calibration[:2] if len(calibration) >= 2 else calibration.repeat(2, *[1] * (calibration.dim() - 1))
    ep = export_model(model, example, dynamic_batch=True)
    plan.check_names(layer_names(ep.graph))
    input_nonneg = float(calibration.min()) >= 0
    groups = find_groups(ep.graph, input_nonneg, user_input_name(ep))
    consts = constants(ep)

    gm = ep.module()
    gm.quant = nn.ModuleDict()
    nodes = _module_nodes(ep, gm)
    in_spec = QuantSpec(8, signed=not input_nonneg)        # the converter's input: always 8-bit, calibrated
    in_name = user_input_name(ep)
    in_node = next(n for n in ep.graph.nodes if n.name == in_name)
    floats = float_values(groups, lambda m: plan.spec_for(m).is_float, in_node)
    # which quantizer's scale each value carries (ops without their own keep their input's); an
    # input only float ops read stays float (the converter does not quantize it either)
    carrier = {in_name: None if in_name in floats else
               _insert_after(gm, nodes[in_name], "input", ActFakeQuantize(in_spec, INPUT))}
    borders = _island_borders(ep, gm, nodes, groups, floats, plan, range_mode, calibration, batch_size)
    for g in groups:
        if g.output.name in floats:                 # a float island: the float model's own ops
            carrier[g.output.name] = borders.get(g.output.name)
        elif g.kind == LAYER:
            layer = _replace_layer(gm, nodes, g, consts, plan, range_mode)
            layer.set_input_quantizer(carrier.get(g.anchor.args[0].name))
            carrier[g.output.name] = layer.out_fq
        elif g.quantizes:
            spec = replace(plan.default.act_spec(signed=not g.nonneg), range_mode=range_mode)
            carrier[g.output.name] = _insert_after(gm, nodes[g.output.name], f"{g.kind}_{g.output.name}",
                                                   ActFakeQuantize(spec, g.output.name))
        else:
            carrier[g.output.name] = carrier.get(g.anchor.args[0].name)
    for n in list(gm.graph.nodes):             # the original weights and BN statistics, now unused
        if n.op == "get_attr" and not n.users:
            gm.graph.erase_node(n)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    # ep.module() forbids train()/eval() because BN and dropout have their mode baked into the
    # graph. BN is folded away now and dropout stays in inference form (off, as in the integer
    # program), so the two only switch the quantizers' range tracking: give them back.
    del gm.train, gm.eval
    # plain attributes, not state: convert reads the exported graph and the plan from here
    gm.hwq_export, gm.hwq_plan = ep, plan
    calibrate_(gm, calibration, batch_size)
    return gm.train()


def _module_nodes(ep, gm) -> dict:
    """The nodes of ``gm = ep.module()`` by their names in ``ep.graph``, which the groups carry.

    The copy does not keep every name: FX renames a node whose name would shadow a Python builtin
    (``nn.Sequential.forward(input)``: the placeholder ``input`` becomes ``input_1``). It keeps the
    order of the input and the operators, and adds only nodes of its own (``get_attr`` for the
    weights, a guard module), so each is paired with the next node of the same op and target."""
    user = set(ep.graph_signature.user_inputs)
    rest = iter(gm.graph.nodes)
    out = {}
    for n in ep.graph.nodes:
        if n.op == "call_function" or (n.op == "placeholder" and n.name in user):
            out[n.name] = next((m for m in rest if m.op == n.op and m.target == n.target), None)
            if out[n.name] is None:
                raise RuntimeError(f"ep.module() has no node for {n.format_node()!r} of the exported graph "
                                   f"after the earlier ones; torch {torch.__version__} copies graphs differently")
    return out


def _island_borders(ep, gm, nodes, groups, floats, plan, range_mode, calibration, batch_size) -> dict:
    """A fake quantizer where an integer op reads a float island's value (the converter's ``Quantize``).

    Only the integer ops see the quantized value; the island's other readers keep the float one,
    as in the integer program. Signedness comes from a calibration pass, as the converter decides it.
    """
    alias = {g.output.name: g.anchor.args[0].name for g in groups if g.kind == IDENTITY_OP}
    readers: dict = {}
    for g in groups:
        if g.kind == IDENTITY_OP or g.output.name in floats:
            continue
        for a in group_inputs(g):
            src = a.name
            while src in alias:
                src = alias[src]
            if src in floats:
                readers.setdefault(src, set()).add(g.anchor.name)
    if not readers:
        return {}
    ranges = calibrate(ep, (calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)))
    out = {}
    for src, anchors in readers.items():
        spec = replace(plan.default.act_spec(signed=ranges[src][0] < 0), range_mode=range_mode)
        anchors = {nodes[a] for a in anchors}
        out[src] = _insert_after(gm, nodes[src], f"border_{src}", ActFakeQuantize(spec, src),
                                 only=lambda user, anchors=anchors: _reaches(user, anchors))
    return out


def _reaches(user, anchors) -> bool:
    """Whether ``user`` is one of the nodes ``anchors`` or an identity chain ending in one."""
    while user not in anchors:
        users = list(user.users)
        if len(users) != 1 or user.target not in IDENTITY:
            return False
        user = users[0]
    return True


def _key(gm, name):
    base = re.sub(r"\W", "_", name) or "layer"
    key, i = base, 1
    while key in gm.quant:
        key, i = f"{base}_{i}", i + 1
    return key


def _insert_after(gm, node, name, quantizer, only=None):
    key = _key(gm, name)
    gm.quant[key] = quantizer
    with gm.graph.inserting_after(node):
        fq = gm.graph.call_module(f"quant.{key}", (node,))
    node.replace_all_uses_with(fq, delete_user_cb=lambda user: user is not fq and (only is None or only(user)))
    return quantizer


def _replace_layer(gm, nodes, g, consts, plan, range_mode):
    anchor = g.anchor
    w, b = layer_weights(g, lambda n: consts[n.name])
    spec = plan.spec_for(g.module)
    w_spec = replace(spec.weight_spec(), range_mode=range_mode)
    a_spec = None if g.int32_output else replace(spec.act_spec(signed=not g.nonneg), range_mode=range_mode)
    key = _key(gm, g.module or anchor.name)
    layer = QuantLayer(g, w, b, w_spec, a_spec)
    gm.quant[key] = layer
    gm_anchor = nodes[anchor.name]
    with gm.graph.inserting_before(gm_anchor):
        new = gm.graph.call_module(f"quant.{key}", (gm_anchor.args[0],))
    nodes[g.output.name].replace_all_uses_with(new)
    for n in reversed(group_nodes(g)):
        gm.graph.erase_node(nodes[n.name])
    return layer


# ------------------------------------------------------------------------------------ convert
def _convert(prepared, plan) -> qg.QGraph:
    ep, prepared_plan = getattr(prepared, "hwq_export", None), getattr(prepared, "hwq_plan", None)
    if ep is None:
        raise ConfigError("quantize_(..., step='convert') takes the module quantize_(..., step='prepare') returned, "
                          f"got a {type(prepared).__name__} that was not prepared")
    if plan is not None and plan != prepared_plan:
        raise ConfigError("the bits are fixed at prepare: convert uses the plan the model was prepared with; "
                          "pass plan=None (or prepare again with the new plan)")
    scales, ranges, weights = {}, {}, {}
    for q in act_quantizers(prepared):
        s = float(q.current_scale().detach())      # the float32 scale, exactly
        scales[q.node] = s
        hi = s * q.spec.qmax
        ranges[q.node] = (-hi if q.spec.signed else 0.0, hi)
    for layer in quant_layers(prepared):
        weights[layer.node] = layer.integers()
    return convert(ep, ranges, prepared_plan, scales=scales, weights=weights)
