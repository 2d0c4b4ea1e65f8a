"""Which nodes of an exported graph form one integer op: the pattern logic PTQ and QAT share.

``find_groups`` walks a ``torch.export`` graph once and returns one ``Group`` per integer op: a
conv / linear with its BatchNorm and ReLU, a residual add with its ReLU, a global average pool, and
the ops that keep their input's scale (max-pool, flatten, a standalone ReLU, identities). Every
other operator (or a supported one with arguments the integer path cannot express) is a
``"float_op"`` group, saying why: it runs in float32 (a float island). The
converter (``hwq.qat.convert``) turns each group into a ``QGraph`` node; QAT prepare
(``hwq.qat.api``) puts a fake quantizer at each group that ``quantizes``. Both read the same list,
so the trained model's quantization points are the integer program's by construction.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from hwq.errors import UnsupportedOpError
from hwq.qat.exported import module_name

aten = torch.ops.aten
CONV = {aten.conv2d.default}
LINEAR = {aten.linear.default}
BN = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
RELU = {aten.relu.default, aten.relu_.default}
HARDTANH = {aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default}   # relu6 = hardtanh(0, 6)
ADD = {aten.add.Tensor, aten.add_.Tensor}
GAP = {aten.adaptive_avg_pool2d.default, aten.mean.dim}
MAXPOOL = {aten.max_pool2d.default}
FLATTEN = {aten.flatten.using_ints, aten.view.default, aten.reshape.default}
IDENTITY = {aten.dropout.default, aten.contiguous.default, aten.clone.default, aten.detach.default}
SUPPORTED_OPS = sorted(str(op) for op in CONV | LINEAR | BN | RELU | HARDTANH | ADD | GAP | MAXPOOL | FLATTEN | IDENTITY)

# Group kinds, named after the converter method that lowers them.
LAYER, ADD_OP, GLOBAL_POOL, MAX_POOL, FLATTEN_OP, CLAMP, IDENTITY_OP, FLOAT_OP = (
    "layer", "add", "global_pool", "max_pool", "flatten", "clamp", "identity", "float_op")


@dataclass(frozen=True)
class Group:
    """One integer op: the fx nodes it absorbs and what its output is.

    Attributes:
        kind: ``"layer"`` (conv / linear), ``"add"``, ``"global_pool"``, ``"max_pool"``,
            ``"flatten"``, ``"clamp"`` (a standalone ReLU / hardtanh), ``"identity"`` (dropout, clone, ...)
            or ``"float_op"`` (any other operator: run in float32).
        anchor: the op's own node (the conv, the add, ...).
        output: the last node fused into it; later nodes read this value.
        bn: a conv's BatchNorm node, folded into its weights.
        nonneg: the output is >= 0 (after a ReLU), so it is stored unsigned.
        clamp_hi: upper bound of a fused hardtanh(0, hi) (ReLU6), else None.
        module: qualified name of the conv / linear module (the ``BitPlan`` key); ``""`` otherwise.
        int32_output: a layer whose int32 accumulator is the graph's output (no requantization).
        why: for a ``"float_op"``, why the integer path cannot run it.
    """

    kind: str
    anchor: torch.fx.Node
    output: torch.fx.Node
    bn: torch.fx.Node | None = None
    nonneg: bool = False
    clamp_hi: float | None = None
    module: str = ""
    int32_output: bool = False
    why: str = ""

    @property
    def quantizes(self) -> bool:
        """Whether the output is a new activation quantization point (an integer tensor with its own scale)."""
        return self.kind in (LAYER, ADD_OP, GLOBAL_POOL) and not self.int32_output


def find_groups(graph: torch.fx.Graph, input_nonneg: bool) -> list[Group]:
    """Group the call nodes of an exported graph into integer ops, in execution order.

    Args:
        graph: ``ExportedProgram.graph``.
        input_nonneg: the model input is >= 0 (decided by the data: images in [0, 1] are).

    Raises:
        UnsupportedOpError: a graph hwq cannot take at all (a BatchNorm in training mode).
    """
    done: set = set()
    nonneg = {}                    # fx node name -> whether that value is >= 0
    groups = []
    for node in graph.nodes:
        if node.op == "placeholder":
            nonneg[node.name] = input_nonneg
        if node.op != "call_function" or node.name in done or _is_shape_computation(node):
            continue
        g = _group(node, nonneg)
        for n in group_nodes(g):
            done.add(n.name)
        nonneg[g.output.name] = g.nonneg
        groups.append(g)
    return groups


def float_values(groups: list, is_float_layer) -> set:
    """Names of the values computed in float32: the float islands (PTQ's converter and QAT agree on them).

    A value is float when a ``"float_op"`` group or a layer the plan keeps in fp32
    (``is_float_layer(module name)``) computes it, or when an op that has an integer form reads a
    float value (an add, a pool, a max-pool, a flatten, a clamp: they stay in the island rather
    than quantize to leave it). Identities follow their input. Only integer layers read float
    values through a quantize (the island's border).
    """
    floats: set = set()
    for g in groups:
        ins = [a.name for a in g.anchor.all_input_nodes]
        if g.kind == FLOAT_OP or (g.kind == LAYER and is_float_layer(g.module)):
            floats.add(g.output.name)
        elif g.kind in (ADD_OP, GLOBAL_POOL, MAX_POOL, FLATTEN_OP, CLAMP, IDENTITY_OP) and any(i in floats for i in ins):
            floats.add(g.output.name)
    return floats


def group_nodes(g: Group) -> list:
    """Every node of the group, from its anchor to its output."""
    nodes, cur = [g.anchor], g.anchor
    while cur is not g.output:
        cur = _sole_user(cur)
        nodes.append(cur)
    return nodes


def layer_names(graph: torch.fx.Graph) -> list[str]:
    """Module names of every conv / linear in the graph (the names a ``BitPlan`` may use)."""
    return [module_name(n) for n in graph.nodes if n.op == "call_function" and n.target in CONV | LINEAR]


def fold_batch_norm(bn: torch.fx.Node, w: torch.Tensor, b: torch.Tensor, tensor_of) -> tuple:
    """Fold an inference-mode BatchNorm into the preceding conv's weight and bias (float64).

    ``tensor_of(node)`` returns the constant tensor behind a parameter / buffer node.
    """
    if bn.target is aten.batch_norm.default:
        _, gamma, beta, mean, var, _training, _mom, eps = bn.args[:8]
    else:
        _, gamma, beta, mean, var, _mom, eps = bn.args[:7]
    get = lambda n, d: tensor_of(n).detach().double() if n is not None else d  # noqa: E731
    mean, var = get(mean, None), get(var, None)
    gamma = get(gamma, torch.ones_like(mean))
    beta = get(beta, torch.zeros_like(mean))
    k = gamma / torch.sqrt(var + eps)
    return w * k.reshape(-1, *[1] * (w.dim() - 1)), (b - mean) * k + beta


def hardtanh_bounds(node: torch.fx.Node) -> tuple:
    """(min, max) of a hardtanh node, with torch's defaults (-1, 1); (0, 6) for relu6."""
    if node.target is aten.relu6.default:
        return (0.0, 6.0)
    return tuple((list(node.args[1:3]) + [-1.0, 1.0][len(node.args) - 1:])[:2])


def pair(v, n=2) -> tuple:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


# ---------------------------------------------------------------------------------------- helpers
def _is_shape_computation(node) -> bool:
    # a dynamic batch puts symbolic size arithmetic (sym_size, asserts) in the graph: not tensor ops
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):     # split / chunk: a tuple of tensors
        return not all(isinstance(v, torch.Tensor) for v in val)
    return node.target is not operator.getitem and val is not None and not isinstance(val, torch.Tensor)


def _float(node, why: str) -> Group:
    return Group(FLOAT_OP, node, node, why=why)


def _sole_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fuse_activation(cur):
    """Follow ``cur`` into a sole ReLU / hardtanh(0, hi) user; returns (last node, nonneg, clamp_hi)."""
    nxt = _sole_user(cur)
    if nxt is not None and nxt.target in RELU:
        return nxt, True, None
    if nxt is not None and nxt.target in HARDTANH:
        lo, hi = hardtanh_bounds(nxt)
        if lo == 0.0:
            return nxt, True, float(hi)
    return cur, False, None


def _group(node, nonneg) -> Group:
    t = node.target
    if t in LINEAR and len(node.args[0].meta["val"].shape) != 2:
        return _float(node, "integer dense takes (N, features) inputs")
    if t in CONV or t in LINEAR:
        return _layer(node)
    if t in ADD:
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or node.kwargs.get("alpha", 1) != 1:
            return _float(node, "integer add is tensor + tensor (alpha=1)")
        if tuple(a.meta["val"].shape) != tuple(b.meta["val"].shape):
            return _float(node, "integer add takes two tensors of one shape (no broadcasting)")
        out, nn_, hi = _fuse_activation(node)
        return Group(ADD_OP, node, out, nonneg=nn_, clamp_hi=hi)
    if t in GAP:
        if not _is_global_pool(node):
            return _float(node, "integer pooling is global average pooling to 1x1")
        return Group(GLOBAL_POOL, node, node, nonneg=nonneg[node.args[0].name])
    if t in MAXPOOL:
        args = list(node.args) + [None] * 6
        if pair(args[4] if args[4] is not None else 1) != (1, 1) or args[5]:
            return _float(node, "integer max-pool has no dilation or ceil_mode")
        return Group(MAX_POOL, node, node, nonneg=nonneg[node.args[0].name])
    if t in FLATTEN:
        shape = tuple(node.meta["val"].shape[1:])
        if len(shape) != 1:
            return _float(node, f"integer reshape only flattens to (N, features), this one gives {shape!r}")
        return Group(FLATTEN_OP, node, node, nonneg=nonneg[node.args[0].name])
    if t in RELU or t in HARDTANH:
        if t in HARDTANH and hardtanh_bounds(node)[0] != 0.0:
            return _float(node, f"integer hardtanh has min 0 (ReLU6-like), this one {hardtanh_bounds(node)[0]!r}")
        return Group(CLAMP, node, node, nonneg=True)
    if t in IDENTITY:
        return Group(IDENTITY_OP, node, node, nonneg=nonneg[node.args[0].name])
    return _float(node, "no integer form")


def _layer(node) -> Group:
    name = module_name(node)
    cur, bn = node, None
    nxt = _sole_user(node)
    if node.target in CONV and nxt is not None and nxt.target in BN:
        bn = cur = nxt
        if bn.target is aten.batch_norm.default and bn.args[5]:
            raise UnsupportedOpError(f"BatchNorm {bn.name!r} is in training mode; call model.eval() first")
        if bn.target is aten._native_batch_norm_legit_no_training.default:
            cur = _sole_user(bn)
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
    return dims == [2, 3] and bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
