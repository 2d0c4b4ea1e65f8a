"""``layer_sensitivities``: per layer and precision option, the predicted loss increase over the reference.

Three estimators of s[l][o], the task loss added when layer l runs at option o instead of the
reference option (W8A8), every other layer unchanged:

``"duals"`` (Hounie, Elenter, Ribeiro, ICASSP 2023): a constrained QAT run's dual λ_l is the
derivative of the optimal loss with respect to the bound on layer l's constraint g_l (the relative
error the layer adds on its quantized input). To first order in the change of g_l,

    s[l][o] = λ_l · (g_l(o) - g_l(reference)),

with g_l evaluated on held-out batches, the layer's quantizers at o's widths. A layer whose
constraint was slack at the end of training has λ_l = 0: the run says it could take more error for
free, and this estimator says 0 for every option; that is its known blind spot.

``"hessian"`` (HAWQ-V2, Dong et al., NeurIPS 2020; HAWQ-V3): second order around the float model,

    s[l][o] = ½ Tr(H_W)/n_W ‖Q_o(W) - W‖² + ½ Tr(H_a)/n_a ‖Q_o(a) - a‖² - (the same at the reference),

with Hutchinson estimates of the Hessian traces of the loss with respect to the layer's weights W
and its output activation a (``hwq.alloc.hessian``). Dividing the trace by the number of elements
and multiplying by the squared perturbation assumes the rounding noise is spread evenly and
uncorrelated with the Hessian's off-diagonal part, the HAWQ approximation.

``"measured"``: the ground truth the other two predict. The mean cross-entropy on held-out data with
layer l at o minus the same with every layer at the reference, in the fake-quantized model.

Example:
    >>> s = layer_sensitivities(prepared, {"fc": [LayerSpec(8, 8), LayerSpec(4, 8)]}, (x, y), "measured")
    >>> s.values["fc"]["w4a8"]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwq.alloc.hessian import hessian_sensitivities
from hwq.alloc.layer_bits import (evaluating, held_out_batches, layer_option, layer_options, named_layers,
                                  normalize_options, recording)
from hwq.alloc.sensitivities import METHODS, Sensitivities, option_name, rank_agreement
from hwq.errors import ConfigError, choices
from hwq.plan import LayerSpec
from hwq.qat.constraints import layer_constraint
from hwq.qat.report import SensitivityReport

__all__ = ["METHODS", "Sensitivities", "constraint_values", "layer_sensitivities", "rank_agreement"]


def layer_sensitivities(model: nn.Module, options, data, method: str = "measured", *,
                        report: SensitivityReport | None = None, reference: LayerSpec = LayerSpec(8, 8),
                        batch_size: int = 250, images: int | None = 1000, samples: int = 32,
                        seed: int = 0) -> Sensitivities:
    """Estimate s[l][o] for every layer and option of ``options``.

    Args:
        model: the module ``quantize_(model, plan, step="prepare")`` returned (for ``"duals"``, the
            one ``train_constrained`` trained and ``report`` describes). Left as it was.
        options: ``{layer name: [LayerSpec or "w<W>a<A>", ...]}`` (layers left out are not
            estimated), or one list for every layer.
        data: held-out ``(inputs, labels)`` tensors, or a map-style dataset of pairs.
        method: ``"duals"``, ``"hessian"`` or ``"measured"``.
        report: the ``SensitivityReport`` of the constrained QAT run (``"duals"`` only).
        reference: the option every value is relative to; its value is 0 by definition.
        batch_size: images per forward pass.
        images: how many of ``data``'s examples to use (the first ones; None: all).
        samples: Hutchinson samples (Rademacher vectors, one batch each; ``"hessian"`` only).
        seed: the Rademacher vectors' seed.

    Returns:
        ``Sensitivities`` with one row per layer of ``options``, in execution order.
    """
    if method not in _ESTIMATORS:
        raise ConfigError(f"sensitivity method {method!r} is not one of {choices(METHODS)}")
    if method == "duals" and not isinstance(report, SensitivityReport):
        raise ConfigError(f"method 'duals' needs report=<the SensitivityReport train_constrained returned>, "
                          f"got {type(report).__name__}")
    if not isinstance(reference, LayerSpec):
        raise ConfigError(f"reference must be a LayerSpec, got {reference!r}")
    if batch_size < 1 or samples < 1 or (images is not None and images < 1):
        raise ConfigError(f"batch_size, samples and images must be >= 1, got {batch_size!r}, {samples!r}, {images!r}")
    opts = normalize_options(model, options)
    batches = held_out_batches(data, batch_size, images)
    meta = {"images": sum(len(y) for _, y in batches), "batch_size": batch_size}
    with evaluating(model):
        values = _ESTIMATORS[method](model, opts, batches, reference, report=report, samples=samples, seed=seed,
                                     meta=meta)
    return Sensitivities(values, method, option_name(reference), meta)


# ------------------------------------------------------------------------------------ duals
def constraint_values(model: nn.Module, options: dict, batches: list, norm: str = "relative",
                      float_out_bits: int | None = None) -> dict:
    """g_l at each option: ``{layer: {option name: mean over batches of g_l}}``.

    The layer's input z is what reaches it in the model as it stands (the trained bits): g_l only
    measures the error the layer itself adds on that input, as during constrained training. An
    ``fp32`` option's output is quantized at ``float_out_bits`` (the plan's default activation
    width; ``layer_option``), not at the width the trained model's default gave it.
    """
    layers = named_layers(model, list(options))
    sums = {name: {option_name(o): 0.0 for o in opts} for name, opts in options.items()}
    with torch.no_grad(), recording(list(layers.values())) as seen:
        for x, _ in batches:
            model(x)
            for name, layer in layers.items():
                z = seen[layer][0]
                for o in options[name]:
                    with layer_option(layer, o, float_out_bits):
                        sums[name][option_name(o)] += float(layer_constraint(layer, z, norm=norm))
    return {name: {k: v / len(batches) for k, v in row.items()} for name, row in sums.items()}


def _duals(model, options, batches, reference, *, report, meta, **_):
    lam = report.lambdas()
    missing = [name for name in options if name not in lam]
    if missing:
        raise ConfigError(f"the SensitivityReport has no dual for layers {missing}; it covers {sorted(lam)}: "
                          "pass the report of the run that trained this model")
    norm = report.config.get("constraint_norm", "relative")
    with_ref = {name: [reference] + [o for o in opts if o != reference] for name, opts in options.items()}
    # the run trained at W4A4, the plans default to the reference's widths: an fp32 layer's output
    # is read at the reference's activation width, not at the 4 bits of the run
    g = constraint_values(model, with_ref, batches, norm, float_out_bits=reference.act_bits)
    ref = option_name(reference)
    meta.update({"lambda": {name: lam[name] for name in options}, "g": g, "constraint_norm": norm})
    return {name: {option_name(o): 0.0 if o == reference else lam[name] * (g[name][option_name(o)] - g[name][ref])
                   for o in opts} for name, opts in options.items()}


# ------------------------------------------------------------------------------------ measured
@torch.no_grad()
def mean_loss(model: nn.Module, batches: list) -> float:
    """Mean cross-entropy of ``model``'s logits over ``batches`` (float64 accumulation)."""
    total = n = 0
    for x, y in batches:
        total += float(F.cross_entropy(model(x).double(), y, reduction="sum"))
        n += len(y)
    return total / n


def _measured(model, options, batches, reference, *, meta, **_):
    layers = named_layers(model, None)
    values = {}
    with layer_options(model, {name: reference for name in layers}):
        base = mean_loss(model, batches)
        for name, opts in options.items():
            values[name] = {}
            for o in opts:
                if o == reference:
                    values[name][option_name(o)] = 0.0
                    continue
                with layer_option(layers[name], o):
                    values[name][option_name(o)] = mean_loss(model, batches) - base
    meta["reference_loss"] = base
    return values


_ESTIMATORS = {"duals": _duals, "hessian": hessian_sensitivities, "measured": _measured}
