"""Which nodes of an exported graph form one integer op: the pattern logic PTQ and QAT share.

``find_groups`` walks a ``torch.export`` graph once and returns one ``Group`` per integer op: a
conv / linear with its BatchNorm and ReLU, a residual add with its ReLU, an elementwise multiply, a
concat, average pools, a table (a chain of elementwise ops on one 8-bit value: hardswish, SiLU,
``x * relu6(x + 3) / 6``), and the ops that keep their input's scale (max-pool, flatten, data
movement, a standalone ReLU, identities). Every other operator (or a supported one with arguments
the integer path cannot express) is a ``"float_op"`` group, saying why: it runs in float32 (a float
island). What a group is and means lives in ``hwq.qat.groups``. The converter (``hwq.qat.convert``)
turns each group into a ``QGraph`` node; QAT prepare
(``hwq.qat.api``) puts a fake quantizer at each group that ``quantizes``. Both read the same list,
so the trained model's quantization points are the integer program's by construction.
"""

from __future__ import annotations

import operator
from dataclasses import replace

import torch

from hwq.errors import UnsupportedOpError
from hwq.qat.exported import module_name
from hwq.qat.groups import (ADD, ADD_OP, AVG_POOL, AVGPOOL, BN, BN_OP, CAT, CLAMP, CLAMP_LIKE, CONCAT, CONV, FLATTEN,
                            FLATTEN_OP, FLOAT_OP, GAP, GLOBAL_POOL, HARDTANH, IDENTITY, IDENTITY_OP, LAYER, LINEAR,
                            LUT, MAX_POOL, MAXPOOL, MOVE, MOVE_OP, MUL, MUL_OP, NONNEG_TABLE_OPS, PAD, RELU, SPLIT,
                            TABLE_OPS, UPSAMPLE, Group, aten, aten_ops, group_inputs, group_nodes, hardtanh_bounds,
                            pair, sole_user)


def find_groups(graph: torch.fx.Graph, input_nonneg: bool, user_input: str | None = None) -> list[Group]:
    """Group the call nodes of an exported graph into integer ops, in execution order.

    Args:
        graph: ``ExportedProgram.graph``.
        input_nonneg: the model input is >= 0 (decided by the data: images in [0, 1] are).
        user_input: the model input's placeholder; the others are then constants (weights), which
            an integer multiply, concat or table does not take. ``None``: every placeholder is a value.

    Raises:
        UnsupportedOpError: a graph hwq cannot take at all (a BatchNorm in training mode).
    """
    done: set = set()
    consts = {n.name for n in graph.nodes if n.op == "placeholder" and user_input is not None and n.name != user_input}
    groups = []
    for node in graph.nodes:
        if node.op != "call_function" or node.name in done or _is_shape_computation(node):
            continue
        g = _group(node, consts)
        for n in group_nodes(g):
            done.add(n.name)
        groups.append(g)
    inputs = {n.name: input_nonneg for n in graph.nodes if n.op == "placeholder" and n.name not in consts}
    return _settle_signs(_with_tables(groups, {n: i for i, n in enumerate(graph.nodes)}, consts), inputs)


def _settle_signs(groups: list, nonneg: dict) -> list:
    """Ops that keep their inputs' sign (pools, data movement, a product or concat of unsigned values)
    are unsigned when all their inputs are: set once the tables (whose signs their ops decide) are known."""
    out = []
    for g in groups:
        if g.kind in (MUL_OP, CONCAT, GLOBAL_POOL, AVG_POOL, MAX_POOL, FLATTEN_OP, MOVE_OP, IDENTITY_OP):
            g = replace(g, nonneg=all(nonneg.get(a.name, False) for a in group_inputs(g)))
        nonneg[g.output.name] = g.nonneg
        out.append(g)
    return out


# ---------------------------------------------------------------------------------------- helpers
def _is_shape_computation(node) -> bool:
    # a dynamic batch puts symbolic size arithmetic (sym_size, asserts) in the graph: not tensor ops
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):     # split / chunk: a tuple of tensors
        return not all(isinstance(v, torch.Tensor) for v in val)
    return node.target is not operator.getitem and val is not None and not isinstance(val, torch.Tensor)


def _float(node, why: str) -> Group:
    return Group(FLOAT_OP, node, node, why=why)


def _fuse_activation(cur):
    """Follow ``cur`` into a sole ReLU / hardtanh(0, hi) user; returns (last node, nonneg, clamp_hi)."""
    nxt = sole_user(cur)
    if nxt is not None and nxt.target in RELU:
        return nxt, True, None
    if nxt is not None and nxt.target in HARDTANH:
        lo, hi = hardtanh_bounds(nxt)
        if lo == 0.0:
            return nxt, True, float(hi)
    return cur, False, None


def _group(node, consts) -> Group:
    t = node.target
    _is_tensor = lambda a: _is_value(a, consts)   # noqa: E731
    if t in LINEAR and len(node.args[0].meta["val"].shape) != 2:
        return _float(node, "integer dense takes (N, features) inputs")
    if t in CONV or t in LINEAR:
        return _layer(node)
    if t in BN:
        return _batch_norm(node)
    if t in ADD:
        a, b = node.args[0], node.args[1]
        if not (_is_tensor(a) and _is_tensor(b)) or node.kwargs.get("alpha", 1) != 1:
            return _float(node, "integer add is tensor + tensor (alpha=1)")
        if tuple(a.meta["val"].shape) != tuple(b.meta["val"].shape):
            return _float(node, "integer add takes two tensors of one shape (no broadcasting)")
        out, nn_, hi = _fuse_activation(node)
        return Group(ADD_OP, node, out, nonneg=nn_, clamp_hi=hi)
    if t in MUL:
        a, b = node.args[0], node.args[1]
        if not (_is_tensor(a) and _is_tensor(b)) or a.meta["val"].dim() != b.meta["val"].dim():
            return _float(node, "integer multiply is tensor x tensor of one rank")
        return Group(MUL_OP, node, node)
    if t in CAT:
        if not all(_is_tensor(a) for a in node.args[0]):
            return _float(node, "integer concat takes tensors")
        return Group(CONCAT, node, node)
    if t in GAP:
        if not _is_global_pool(node):
            return _float(node, "integer pooling is global average pooling to 1x1")
        return Group(GLOBAL_POOL, node, node)
    if t in AVGPOOL:
        if node.args[0].meta["val"].dim() != 4:
            return _float(node, "integer average pooling takes (N, C, H, W) inputs")
        return Group(AVG_POOL, node, node)
    if t in MAXPOOL:
        args = list(node.args) + [None] * 6
        if pair(args[4] if args[4] is not None else 1) != (1, 1):
            return _float(node, "integer max-pool has no dilation")
        return Group(MAX_POOL, node, node)
    if t in FLATTEN and len(node.meta["val"].shape) == 2 and node.args[0].meta["val"].dim() in (2, 4):
        return Group(FLATTEN_OP, node, node)
    if t in MOVE:
        why = _not_a_move(node)
        return _float(node, why) if why else Group(MOVE_OP, node, node)
    if t in RELU or t in HARDTANH:
        if t in HARDTANH and hardtanh_bounds(node)[0] != 0.0:
            return _float(node, f"integer hardtanh has min 0 (ReLU6-like), this one {hardtanh_bounds(node)[0]!r}")
        return Group(CLAMP, node, node, nonneg=True)
    if t in IDENTITY:
        return Group(IDENTITY_OP, node, node)
    if t in TABLE_OPS:
        return _float(node, "an elementwise op is a table only on one integer value")
    return _float(node, "no integer form")


def _is_value(a, consts=()) -> bool:
    """A tensor the graph computes (or its input), not a constant."""
    return isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor) and a.name not in consts


def _not_a_move(node) -> str:
    """Why ``node`` (a data-movement op) cannot run on integers, or ``""``."""
    t, args = node.target, list(node.args)
    if t is operator.getitem:
        return "" if args[0].target in SPLIT else "integer getitem reads a split or chunk"
    if t in UPSAMPLE:
        (h, w), (oh, ow) = args[0].meta["val"].shape[2:], node.meta["val"].shape[2:]
        return "" if oh % h == 0 and ow % w == 0 else "integer nearest upsampling is by an integer factor"
    if t in PAD:
        pads = args[1]
        mode = args[2] if len(args) > 2 else node.kwargs.get("mode", "constant")
        value = args[3] if t is aten.pad.default and len(args) > 3 else (
            args[2] if t is aten.constant_pad_nd.default and len(args) > 2 else node.kwargs.get("value"))
        if mode != "constant" or value not in (None, 0) or min(pads) < 0:
            return "integer padding pads with zeros (constant mode, value 0, no cropping)"
    return ""


def _with_tables(groups: list, order: dict, consts) -> list:
    """Replace each maximal chain of elementwise ops on one value by one ``"lut"`` group.

    A chain's members are single-node groups of ``TABLE_OPS`` whose tensor arguments all come
    from one value (its source), either directly or through other members (``x * relu6(x + 3) / 6``
    reads ``x`` twice). A member read by anything outside the chain ends one (a table each); a
    chain of clamps and identities alone stays integer clamps.
    """
    single = [g.anchor for g in groups if g.anchor is g.output and _table_op(g.anchor, consts)]
    root: dict = {}
    for node in single:
        srcs = {root.get(a, a) for a in node.all_input_nodes}
        if len(srcs) == 1:
            root[node] = srcs.pop()
    tables, keep = {}, set()
    for node, src in root.items():
        if node.users and all(root.get(u) is src for u in node.users):
            continue                                   # inside a chain: only its members read it
        members, todo = set(), [node]
        while todo:
            m = todo.pop()
            if m not in members and root.get(m) is src:
                members.add(m)
                todo.extend(m.all_input_nodes)
        members = sorted(members, key=order.__getitem__)
        if all(m.target in CLAMP_LIKE for m in members):
            keep.update(members)
        else:
            tables[node] = members
    inside = {m for ms in tables.values() for m in ms} - set(tables) - keep
    out = []
    for g in groups:
        if g.output in tables:
            ms = tables[g.output]
            out.append(Group(LUT, ms[0], g.output, nonneg=_nonneg_result(g.output), nodes=tuple(ms),
                             source=root[g.output]))
        elif g.anchor not in inside:
            out.append(g)
    return out


def _table_op(node, consts) -> bool:
    """An elementwise op on tensors of its own shape and Python scalars (no constants, no broadcasting)."""
    val = node.meta.get("val")
    if node.target not in TABLE_OPS or not isinstance(val, torch.Tensor) or not val.is_floating_point():
        return False
    for a in [*node.args, *node.kwargs.values()]:
        if isinstance(a, torch.fx.Node):
            if not _is_value(a, consts) or tuple(a.meta["val"].shape) != tuple(val.shape):
                return False
        elif not isinstance(a, (int, float, bool, str, type(None))):
            return False
    return True


def _nonneg_result(node) -> bool:
    """Whether a table's result is >= 0 by its ops (then it is stored unsigned): a nonnegative op
    (ReLU, sigmoid, ...), or a positive scaling, shift or product of nonnegative values."""
    t, args = node.target, node.args
    if t in IDENTITY:
        return isinstance(args[0], torch.fx.Node) and _nonneg_result(args[0])
    if t in HARDTANH or t in aten_ops("clamp", "clamp_"):
        lo = hardtanh_bounds(node)[0] if t in HARDTANH else (list(args) + [None])[1]
        return lo is not None and lo >= 0
    if t in NONNEG_TABLE_OPS:
        return True
    if t in aten_ops("mul.Tensor", "mul_.Tensor", "mul.Scalar", "div.Tensor", "div_.Tensor", "div.Scalar",
                 "add.Tensor", "add_.Tensor", "add.Scalar"):
        return all(_nonneg_result(a) if isinstance(a, torch.fx.Node) else (isinstance(a, (int, float)) and a > 0)
                   for a in args[:2])
    return False


def _batch_norm(node) -> Group:
    """A BatchNorm that follows no conv (a concat's, in MixNet), with the ReLU after it."""
    if node.args[0].meta["val"].dim() not in (2, 4):
        return _float(node, "integer batch norm takes (N, C) or (N, C, H, W) inputs")
    if node.target is aten.batch_norm.default and node.args[5]:
        raise UnsupportedOpError(f"BatchNorm {node.name!r} is in training mode; call model.eval() first")
    cur = node
    if node.target is aten._native_batch_norm_legit_no_training.default:
        cur = sole_user(node)
        if cur is None or cur.target is not operator.getitem or cur.args[1] != 0:
            return _float(node, "integer batch norm does not give its statistics")
    cur, nonneg, clamp_hi = _fuse_activation(cur)
    return Group(BN_OP, node, cur, bn=node, nonneg=nonneg, clamp_hi=clamp_hi)


def _layer(node) -> Group:
    name = module_name(node)
    cur, bn = node, None
    nxt = sole_user(node)
    if node.target in CONV and nxt is not None and nxt.target in BN:
        bn = cur = nxt
        if bn.target is aten.batch_norm.default and bn.args[5]:
            raise UnsupportedOpError(f"BatchNorm {bn.name!r} is in training mode; call model.eval() first")
        if bn.target is aten._native_batch_norm_legit_no_training.default:
            cur = sole_user(bn)
            if cur is None or cur.target is not operator.getitem or cur.args[1] != 0:
                raise UnsupportedOpError(f"BatchNorm {bn.name!r} whose statistics outputs are used is not supported")
    cur, nonneg, clamp_hi = _fuse_activation(cur)
    is_output = any(u.op == "output" for u in cur.users) and not nonneg
    return Group(LAYER, node, cur, bn=bn, nonneg=nonneg, clamp_hi=clamp_hi, module=name, int32_output=is_output)


def _is_global_pool(node) -> bool:
    if len(node.args[0].meta["val"].shape) != 4:
        return False
    if node.target is aten.adaptive_avg_pool2d.default:
        return tuple(pair(node.args[1])) == (1, 1)
    dims = sorted(d % 4 for d in node.args[1])
    return dims == [2, 3]
