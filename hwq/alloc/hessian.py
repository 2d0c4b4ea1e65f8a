"""Hessian traces by Hutchinson's method, and HAWQ's second-order sensitivity built on them.

Hutchinson (1990): for a symmetric H and a Rademacher vector v (entries ±1), E[vᵀHv] = Tr(H).
Hv is a Hessian-vector product, the gradient of (∇L · v), which autograd gives by differentiating
the gradient a second time (``create_graph=True``) without ever forming H. One v covers every
block at once: vᵀ_i (Hv)_i estimates block i's trace, the other blocks' vectors entering only
through terms of mean zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hwq.alloc.layer_bits import layer_option, named_layers, recording
from hwq.alloc.sensitivities import option_name
from hwq.qat.api import float_mode


def hutchinson_traces(closure, samples: int, generator: torch.Generator) -> list[float]:
    """Estimate the trace of the Hessian of a loss with respect to each of several tensors.

    Args:
        closure: ``() -> (loss, [tensor, ...])``, run once per sample (a new batch each time, or the
            same); the tensors may be parameters or intermediate values of the loss's graph.
        samples: Rademacher vectors drawn (the estimate's standard error falls as 1/sqrt(samples)).
        generator: seeds the vectors.

    Returns:
        One trace estimate per tensor: the mean of vᵀHv over the samples.
    """
    sums = None
    for _ in range(samples):
        loss, tensors = closure()
        grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
        # a tensor the loss is linear in (or does not reach) has a zero Hessian block
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        est = [0.0] * len(tensors)
        if live:
            vs = [torch.randint(0, 2, tensors[i].shape, generator=generator).to(tensors[i].dtype) * 2 - 1 for i in live]
            hvs = torch.autograd.grad([grads[i] for i in live], [tensors[i] for i in live], grad_outputs=vs,
                                      allow_unused=True)
            for i, v, hv in zip(live, vs, hvs):
                est[i] = 0.0 if hv is None else float((v * hv).double().sum())
        sums = est if sums is None else [a + b for a, b in zip(sums, est)]
    return [s / samples for s in sums]


def layer_traces(model, layers: dict, batches: list, samples: int, seed: int) -> dict:
    """``{name: (Tr H_W, Tr H_a or None)}`` of the float model's cross-entropy, per layer.

    H_W is with respect to the layer's (BN-folded) weight, H_a with respect to its output
    activation (after the fused ReLU, where the integer program rounds it); a layer whose int32
    accumulator is the model's output has no rounded activation (None). Sample k uses batch
    k mod len(batches), so the estimate averages over the data as well as over the vectors.
    """
    order = list(layers.values())
    acts = [layer for layer in order if layer.out_fq is not None]
    state = {"k": 0}

    def closure():
        x, y = batches[state["k"] % len(batches)]
        state["k"] += 1
        with recording(acts) as seen:
            loss = F.cross_entropy(model(x), y)
        return loss, [layer.weight for layer in order] + [seen[layer][1] for layer in acts]

    with float_mode(model):
        traces = hutchinson_traces(closure, samples, torch.Generator().manual_seed(seed))
    t_act = dict(zip(acts, traces[len(order):]))
    return {name: (traces[i], t_act.get(layer)) for i, (name, layer) in enumerate(layers.items())}


@torch.no_grad()
def _perturbations(model, layers: dict, options: dict, batches: list) -> dict:
    """``{name: {option name: (‖Q(W) - W‖², mean over elements of (Q(a) - a)²)}}``, a on the float model."""
    out = {name: {} for name in layers}
    for name, layer in layers.items():
        for o in options[name]:
            with layer_option(layer, o):
                dw = 0.0 if o.is_float else float((layer.weight_fq(layer.weight) - layer.weight).double().pow(2).sum())
            out[name][option_name(o)] = [dw, 0.0]
    acts = [layer for layer in layers.values() if layer.out_fq is not None]
    with recording(acts) as seen:
        for x, _ in batches:
            with float_mode(model):
                model(x)
            for name, layer in layers.items():
                if layer.out_fq is None:
                    continue
                a = seen[layer][1]
                for o in options[name]:
                    with layer_option(layer, o):
                        da = layer.out_fq(a, observe=False) - a
                    out[name][option_name(o)][1] += float(da.double().pow(2).mean()) / len(batches)
    return out


def hessian_sensitivities(model, options: dict, batches: list, reference, *, samples: int, seed: int, meta: dict,
                          **_) -> dict:
    """HAWQ's s[l][o] = ½ Tr(H_W)/n_W ‖ΔW_o‖² + ½ Tr(H_a) mean(Δa_o²), minus the same at ``reference``.

    ``Tr(H_a) · mean(Δa²)`` is ``Tr(H_a)/n_a · ‖Δa‖²`` on one batch: the loss is the batch mean,
    so H_a's trace over the batch's activations does not grow with the batch size. A trace that
    comes out negative (the loss is not convex in a layer; or Monte-Carlo noise on a flat one)
    is kept as it is: a second-order model, not a bound.
    """
    layers = named_layers(model, list(options))
    with_ref = {name: [reference] + [o for o in opts if o != reference] for name, opts in options.items()}
    traces = layer_traces(model, layers, batches, samples, seed)
    pert = _perturbations(model, layers, with_ref, batches)
    ref = option_name(reference)

    def omega(name, key):
        (t_w, t_a), (dw, da) = traces[name], pert[name][key]
        return 0.5 * t_w / layers[name].weight.numel() * dw + (0.5 * t_a * da if t_a is not None else 0.0)

    meta.update({"samples": samples, "seed": seed,
                 "trace_weight": {name: t[0] for name, t in traces.items()},
                 "trace_act": {name: t[1] for name, t in traces.items()}})
    return {name: {option_name(o): 0.0 if o == reference else omega(name, option_name(o)) - omega(name, ref)
                   for o in opts} for name, opts in options.items()}
