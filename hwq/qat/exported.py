"""Helpers over a ``torch.export`` program: parameter lookup, module names, a recording interpreter."""

from __future__ import annotations

import operator

import torch
from torch.export import ExportedProgram


def export_model(model: torch.nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> ExportedProgram:
    """``torch.export`` of the model in eval mode (BN uses running statistics, dropout is off).

    ``dynamic_batch`` keeps the batch dimension symbolic, so that ``ep.module()`` runs on any
    batch size (QAT trains that module); ``example`` then needs a batch of at least 2, since
    export specializes a dimension of size 1.
    """
    model.eval()
    dynamic = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic)


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
        from hwq.errors import UnsupportedOpError
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


@torch.no_grad()
def run_graph(ep: ExportedProgram, x: torch.Tensor, record=None) -> torch.Tensor:
    """Execute ``ep``'s graph node by node in float; ``record(node, value)`` sees every value.

    Each value is dropped right after its last reader (as the code ``torch.fx`` generates does), so
    memory holds the values live at one point of one batch: keeping all of them, MobileNetV2 held
    about 90 MB per 224x224 image.
    """
    env = {}
    consts = constants(ep)
    inp = user_input_name(ep)
    nodes = list(ep.graph.nodes)
    last_reader = {arg: i for i, node in enumerate(nodes) for arg in node.all_input_nodes}
    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            env[node.name] = x if node.name == inp else consts[node.name]
        elif node.op == "call_function":
            args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            env[node.name] = node.target(*args, **kwargs)
        elif node.op == "output":
            return torch.fx.node.map_arg(node.args[0], lambda n: env[n.name])[0]
        if record is not None and node.op == "call_function" and node.target is not operator.getitem:
            record(node, env[node.name])
        for arg in [*node.all_input_nodes, node]:
            if last_reader.get(arg, i) == i and arg.op == "call_function":
                env.pop(arg.name, None)
    raise RuntimeError("exported graph has no output node")
