"""Run a prepared model with some layers at other bit widths, temporarily; and what the estimators share.

``layer_option(layer, LayerSpec(4, 8))`` changes one ``QuantLayer``'s weight and output quantizers
in place for the duration of a ``with`` block and puts them back afterwards. In place, not by
swapping modules: the next layer holds a reference to this layer's output quantizer (its bias is
rounded to that scale times its own weight scale) and must see the new scale too.

Scales at the new width are re-derived the way ``quantize_`` would have set them: a calibrated
weight scale is the channel's max-abs / qmax (recomputed every call anyway), a calibrated activation
scale comes from the same tracked min/max range with the new qmax; a learned weight scale restarts
at the clipping ratio of least rounding error at the new width, a learned activation scale keeps its
trained clipping range (scale * qmax) with the new number of steps.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import replace

import torch
from torch import nn

from hwq.alloc.sensitivities import parse_option
from hwq.errors import ConfigError
from hwq.plan import LayerSpec
from hwq.qat.api import quant_layers
from hwq.qat.fake_quant import WeightFakeQuantize
from hwq.qat.modules import QuantLayer


@contextlib.contextmanager
def layer_option(layer: QuantLayer, spec: LayerSpec, float_out_bits: int | None = None):
    """Run ``layer`` with ``spec.weight_bits`` weights and ``spec.act_bits`` outputs inside the block.

    A layer whose int32 accumulator is the model's output has no output quantizer: ``act_bits``
    then changes nothing. A quantizer already at the requested width is left exactly as it is.
    ``fp32`` runs the float weights and bias; an integer reader quantizes its float output at the
    plan's default activation width: ``float_out_bits`` where given (a model prepared at another
    default than the plan's, as the duals' W4A4 run is), else the width the output quantizer has.
    """
    saved = []
    if spec.is_float:
        old = layer.float_weights
        layer.float_weights = True
        try:
            ofq = layer.out_fq
            if float_out_bits is not None and ofq is not None and ofq.spec.bits != float_out_bits:
                saved.append(_swap_act(ofq, float_out_bits))
            yield layer
        finally:
            layer.float_weights = old
            _restore(saved)
        return
    try:
        wfq = layer.weight_fq
        if wfq.spec.bits != spec.weight_bits:
            saved.append(_swap_weight(wfq, layer.weight, spec.weight_bits))
        ofq = layer.out_fq
        if ofq is not None and ofq.spec.bits != spec.act_bits:
            saved.append(_swap_act(ofq, spec.act_bits))
        yield layer
    finally:
        _restore(saved)


def _restore(saved):
    for quantizer, old_spec, old_scale in reversed(saved):
        quantizer.spec = old_spec
        if old_scale is not None:
            quantizer.scale.data = old_scale


@contextlib.contextmanager
def layer_options(model: nn.Module, specs: dict):
    """``layer_option`` for several layers of ``model`` at once: ``{layer name: LayerSpec}``."""
    layers = named_layers(model, specs)
    with contextlib.ExitStack() as stack:
        for name, spec in specs.items():
            stack.enter_context(layer_option(layers[name], spec))
        yield model


def _swap_weight(wfq, weight, bits):
    old_spec, old_scale = wfq.spec, getattr(wfq, "scale", None)
    new_spec = replace(old_spec, bits=bits)
    if old_scale is not None:
        fresh = WeightFakeQuantize(new_spec, weight)      # its constructor runs the clipping search
        old_scale = old_scale.data
        wfq.scale.data = fresh.scale.data
    wfq.spec = new_spec
    return wfq, old_spec, old_scale


def _swap_act(ofq, bits):
    old_spec, old_scale = ofq.spec, getattr(ofq, "scale", None)
    new_spec = replace(old_spec, bits=bits)
    if old_scale is not None:
        old_scale = old_scale.data
        ofq.scale.data = old_scale * (old_spec.qmax / new_spec.qmax)
    ofq.spec = new_spec
    return ofq, old_spec, old_scale


def named_layers(model: nn.Module, names) -> dict:
    """``{name: QuantLayer}`` for ``names`` (all layers of ``model`` if None), in execution order.

    Raises:
        ConfigError: a name the model does not have, with the closest names it does have.
    """
    layers = {layer.name: layer for layer in quant_layers(model)}
    if not layers:
        raise ConfigError("the model has no QuantLayer: pass the module that "
                          "quantize_(model, plan, step='prepare') returned")
    if names is None:
        return layers
    for name in names:
        if name not in layers:
            close = difflib.get_close_matches(str(name), list(layers), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"layer {name!r} is not a quantizable layer of the model{hint} "
                              f"(layers: {', '.join(repr(k) for k in layers)})")
    return {k: v for k, v in layers.items() if k in set(names)}


def normalize_options(model: nn.Module, options) -> dict:
    """``{layer name: [LayerSpec, ...]}`` from a dict of names to ``LayerSpec`` or option names
    (``"w4a8"``), or from one list meaning every layer of ``model``; layers in execution order."""
    if isinstance(options, (list, tuple)):
        options = {name: options for name in named_layers(model, None)}
    if not isinstance(options, dict) or not options:
        raise ConfigError(f"options must be {{layer name: [LayerSpec, ...]}} or one list of LayerSpec, got {options!r}")
    layers = named_layers(model, list(options))
    out = {}
    for name in layers:
        specs = [parse_option(o) if isinstance(o, str) else o for o in options[name]]
        bad = [s for s in specs if not isinstance(s, LayerSpec)]
        if bad or not specs:
            raise ConfigError(f"options[{name!r}] must be a non-empty list of LayerSpec or 'w<W>a<A>' names, "
                              f"got {options[name]!r}")
        out[name] = list(dict.fromkeys(specs))          # drop repeats, keep the order
    return out


def held_out_batches(data, batch_size: int, images: int | None) -> list:
    """``[(inputs, labels), ...]`` of at most ``images`` examples, from ``(inputs, labels)`` tensors or a
    map-style dataset of pairs; the first ``images`` in order, so every estimator sees the same ones."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    else:
        try:
            pairs = [data[i] for i in range(min(len(data), images or len(data)))]
        except (TypeError, IndexError, KeyError) as e:
            raise ConfigError(f"data must be (inputs, labels) tensors or a dataset of pairs, got "
                              f"{type(data).__name__} ({e})") from None
        x, y = torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])
    n = min(len(x), images) if images else len(x)
    if n < 1 or len(y) != len(x):
        raise ConfigError(f"data has {len(x)} inputs and {len(y)} labels; need as many of each and at least one")
    return [(x[i:min(i + batch_size, n)], y[i:min(i + batch_size, n)]) for i in range(0, n, batch_size)]


@contextlib.contextmanager
def recording(layers):
    """Inside the block, ``seen[layer] = (input, output)`` of each of ``layers``' latest call."""
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.__setitem__(m, (args[0], out)))
             for layer in layers]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model.eval()`` inside the block (activation ranges stay put), its mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)

