"""Helpers over a ``torch.export`` program: parameter lookup, module names, a recording interpreter."""

from __future__ import annotations

import re

import torch
from torch.export import ExportedProgram

from hwq.errors import DataError, UnsupportedOpError


def export_model(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> ExportedProgram:
    """``torch.export`` of the model in eval mode (BN uses running statistics, dropout is off).

    ``dynamic_batch`` keeps the batch dimension symbolic, so that ``ep.module()`` runs on any
    batch size (QAT trains that module); ``example`` then needs a batch of at least 2, since
    export specializes a dimension of size 1.

    Raises:
        DataError: the model has NaN or Inf weights, or cannot run on ``example`` at all (e.g. an
            input of the wrong shape).
        UnsupportedOpError: the model runs but ``torch.export`` cannot trace it (data-dependent
            control flow, an untraceable op); the message names the innermost module it was in.
    """
    model.eval()
    check_finite_weights(model)
    dynamic = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
    stack: list = []
    hooks = _track_modules(model, stack)
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes=dynamic)
    except Exception as e:  # noqa: BLE001 (torch.export raises many unrelated types; each is classified below)
        where = stack[-1] if stack else ""
        stack.clear()
        try:
            with torch.no_grad():
                model(example)
        except Exception as eager:  # noqa: BLE001 (the model itself fails: the input is wrong, not the export)
            raise DataError(f"the model cannot run on an input of shape {tuple(example.shape)} and dtype "
                            f"{example.dtype} (in module {stack[-1] if stack else ''!r}): {_first_line(eager)}") from None
        code = re.findall(r"# File: .*?(\w+\.py:\d+) in \w+, code: (.*)", str(e))
        at = f" at {code[-1][0]}: {code[-1][1].strip()!r}" if code else ""
        raise UnsupportedOpError(f"torch.export cannot trace the model in module {where!r}{at}: "
                                 f"{type(e).__name__}: {_first_line(e)}; hwq lowers models that torch.export "
                                 f"captures as one graph (no data-dependent control flow)") from None
    finally:
        for h in hooks:
            h.remove()


def check_finite_weights(model: torch.nn.Module) -> None:
    """Raise ``DataError`` naming every parameter or buffer of ``model`` holding NaN or Inf."""
    bad = [name for name, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(f"the model's weights hold NaN or Inf in {bad[:8]!r}{' ...' if len(bad) > 8 else ''}; "
                        f"quantization needs finite weights (was training diverged?)")


def check_calibration(calibration: torch.Tensor) -> None:
    """Raise ``DataError`` unless ``calibration`` is a finite float tensor (N, ...) with N >= 1."""
    if not isinstance(calibration, torch.Tensor) or calibration.dim() < 2 or len(calibration) == 0:
        raise DataError(f"calibration data must be a float tensor (N, ...) with N >= 1, got "
                        f"{type(calibration).__name__}{tuple(getattr(calibration, 'shape', ()))}")
    if not calibration.is_floating_point():
        raise DataError(f"calibration data must be float (the model's input), got dtype {calibration.dtype}; "
                        f"convert it as the model expects (e.g. uint8 images: x.float() / 255)")
    finite = torch.isfinite(calibration)
    if not bool(finite.all()):
        first = tuple(int(i) for i in (~finite).nonzero()[0])
        raise DataError(f"calibration data holds {int((~finite).sum())} NaN or Inf values (the first at "
                        f"index {first}); ranges computed from them would be meaningless")


def _track_modules(model: torch.nn.Module, stack: list) -> list:
    """Hooks keeping ``stack`` at the qualified names of the modules being run (innermost last), so
    an export failure can say in which module it happened."""
    def leave(module, args, out):      # returns None: a forward hook's return value replaces the output
        stack.pop()

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: stack.append(name) and None))
        hooks.append(module.register_forward_hook(leave))
    return hooks


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def constants(ep: ExportedProgram) -> dict:
    """Placeholder name -> tensor, for every parameter, buffer and lifted constant of ``ep``."""
    sig = ep.graph_signature
    out = {}
    for mapping in (sig.inputs_to_parameters, sig.inputs_to_buffers):
        for ph, key in mapping.items():
            out[ph] = ep.state_dict[key] if key in ep.state_dict else ep.constants[key]
    for ph, key in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items():
        out[ph] = ep.constants[key]
    return out


def user_input_name(ep: ExportedProgram) -> str:
    names = ep.graph_signature.user_inputs
    if len(names) != 1:
        raise UnsupportedOpError(f"hwq lowers models with exactly one tensor input, this one has {list(names)!r}")
    return names[0]


def module_name(node: torch.fx.Node) -> str:
    """Qualified name of the innermost module that created ``node`` (``""`` at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    # export spells nested names like "L['self'].block1.0" in some versions; keep the module path only
    return path.split("L['self'].")[-1].replace("L__self___", "")


# ops whose shape argument holds the batch size (a graph exported at one batch, run at another)
BATCHED_SHAPE = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default,
                 torch.ops.aten.expand.default}


@torch.no_grad()
def run_graph(ep: ExportedProgram, x: torch.Tensor, record=None) -> torch.Tensor:
    """Execute ``ep``'s graph node by node in float; ``record(node, value)`` sees every value.

    ``x`` may have another batch size than the export's example: a reshape's leading dimension
    follows it. Each value is dropped right after its last reader (as the code ``torch.fx`` generates does), so
    memory holds the values live at one point of one batch: keeping all of them, MobileNetV2 held
    about 90 MB per 224x224 image.
    """
    env = {}
    consts = constants(ep)
    inp = user_input_name(ep)
    nodes = list(ep.graph.nodes)
    last_reader = {arg: i for i, node in enumerate(nodes) for arg in node.all_input_nodes}
    in_val = next(n for n in nodes if n.name == inp).meta.get("val")
    export_batch = int(in_val.shape[0]) if isinstance(in_val, torch.Tensor) else None
    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            env[node.name] = x if node.name == inp else consts[node.name]
        elif node.op == "call_function":
            args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            if node.target in BATCHED_SHAPE and len(x) != export_batch and args[1] and args[1][0] == export_batch:
                args = (args[0], [len(x), *args[1][1:]], *args[2:])
            env[node.name] = node.target(*args, **kwargs)
        elif node.op == "output":
            return torch.fx.node.map_arg(node.args[0], lambda n: env[n.name])[0]
        if record is not None and node.op == "call_function":
            record(node, env[node.name])
        for arg in [*node.all_input_nodes, node]:
            if last_reader.get(arg, i) == i and arg.op == "call_function":
                env.pop(arg.name, None)
    raise RuntimeError("exported graph has no output node")
