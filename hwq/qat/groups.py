"""What one integer op of an exported graph is: the ATen op sets hwq knows, the group kinds,
``Group``, and what the converter and QAT read from a group (its inputs, its nodes, a layer's
folded weights and conv arguments, which values are float).

``hwq.qat.patterns.find_groups`` builds the groups; this module says what they mean, so the
converter (``hwq.qat.convert``, ``convert_ops``), QAT prepare (``hwq.qat.api``) and the modules
read one definition.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from hwq.qat.exported import module_name

aten = torch.ops.aten
CONV = {aten.conv2d.default}
LINEAR = {aten.linear.default}
BN = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
RELU = {aten.relu.default, aten.relu_.default}
HARDTANH = {aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default}   # relu6 = hardtanh(0, 6)
ADD = {aten.add.Tensor, aten.add_.Tensor}
MUL = {aten.mul.Tensor, aten.mul_.Tensor}
CAT = {aten.cat.default, aten.concat.default}
GAP = {aten.adaptive_avg_pool2d.default, aten.mean.dim}
MAXPOOL = {aten.max_pool2d.default}
AVGPOOL = {aten.avg_pool2d.default}
FLATTEN = {aten.flatten.using_ints, aten.view.default, aten.reshape.default}
IDENTITY = {aten.dropout.default, aten.contiguous.default, aten.clone.default, aten.detach.default}
SPLIT = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default}
UPSAMPLE = {aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default}
PAD = {aten.constant_pad_nd.default, aten.pad.default}
# pure data movement: exact on integers, the output keeps its input's scale
MOVE = FLATTEN | SPLIT | UPSAMPLE | PAD | {
    aten._unsafe_view.default, aten.permute.default, aten.transpose.int, aten.slice.Tensor, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, operator.getitem}


def aten_ops(*names) -> set:
    """The ATen overloads named (``"mul.Tensor"``, ``"relu"`` for ``.default``) that this torch has."""
    out = set()
    for name in names:                  # a name this torch lacks is simply not a table op here
        base, _, overload = name.partition(".")
        packet = getattr(aten, base, None)
        if packet is not None and hasattr(packet, overload or "default"):
            out.add(getattr(packet, overload or "default"))
    return out


# elementwise float ops a table can hold: a chain of them on one 8-bit value is one unary function
NONNEG_TABLE_OPS = aten_ops("relu", "relu_", "relu6", "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp",
                        "exp_", "abs", "abs_", "sqrt", "sqrt_", "softplus")
_TABLE_NAMES = ("tanh", "log", "rsqrt", "neg", "erf", "silu", "gelu", "hardswish", "mish", "elu", "leaky_relu",
                "reciprocal", "square", "clamp", "clamp_min", "clamp_max", "pow.Tensor_Scalar", "add.Tensor",
                "add.Scalar", "sub.Tensor", "sub.Scalar", "mul.Tensor", "mul.Scalar", "div.Tensor", "div.Scalar")
TABLE_OPS = NONNEG_TABLE_OPS | HARDTANH | IDENTITY | aten_ops(
    "rsub.Scalar", "alias", "log_sigmoid", *_TABLE_NAMES,
    *(n.replace(".", "_.") if "." in n else n + "_" for n in _TABLE_NAMES))      # the in-place spellings
CLAMP_LIKE = RELU | HARDTANH | IDENTITY       # alone they are integer clamps, not tables

SUPPORTED_OPS = sorted(str(op) for op in CONV | LINEAR | BN | RELU | HARDTANH | ADD | MUL | CAT | GAP | MAXPOOL
                       | AVGPOOL | IDENTITY | MOVE | TABLE_OPS if op is not operator.getitem)

# Group kinds, named after the converter method that lowers them.
LAYER, ADD_OP, GLOBAL_POOL, MAX_POOL, FLATTEN_OP, CLAMP, IDENTITY_OP, FLOAT_OP = (
    "layer", "add", "global_pool", "max_pool", "flatten", "clamp", "identity", "float_op")
LUT, MUL_OP, CONCAT, AVG_POOL, MOVE_OP, BN_OP = "lut", "mul", "concat", "avg_pool", "move", "batch_norm"
# ops with an integer form that stay in a float island when every value they read is float (an
# add between two fp32 layers, the pool after them: leaving the island only to come back costs
# a quantize and a dequantize, and precision)
FOLLOW_FLOAT = (ADD_OP, MUL_OP, CONCAT, GLOBAL_POOL, AVG_POOL, MAX_POOL, FLATTEN_OP, CLAMP, MOVE_OP, BN_OP)


@dataclass(frozen=True)
class Group:
    """One integer op: the fx nodes it absorbs and what its output is.

    Attributes:
        kind: ``"layer"`` (conv / linear), ``"add"``, ``"mul"``, ``"concat"``, ``"global_pool"``,
            ``"avg_pool"``, ``"max_pool"``, ``"flatten"``, ``"move"`` (data movement), ``"clamp"`` (a
            standalone ReLU / hardtanh), ``"batch_norm"`` (one no conv absorbs, with its ReLU),
            ``"identity"`` (dropout, clone, ...), ``"lut"`` (a chain of
            elementwise ops on one value: a table) or ``"float_op"`` (any other operator: float32).
        anchor: the op's own node (the conv, the add, ...).
        output: the last node fused into it; later nodes read this value.
        bn: a conv's BatchNorm node, folded into its weights.
        nonneg: the output is >= 0 (after a ReLU), so it is stored unsigned.
        clamp_hi: upper bound of a fused hardtanh(0, hi) (ReLU6), else None.
        module: qualified name of the conv / linear module (the ``BitPlan`` key); ``""`` otherwise.
        int32_output: a layer whose int32 accumulator is the graph's output (no requantization).
        why: for a ``"float_op"``, why the integer path cannot run it.
        nodes: a ``"lut"``'s ops, in execution order (the anchor first, the output last).
        source: a ``"lut"``'s one tensor input.
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
    nodes: tuple = ()
    source: torch.fx.Node | None = None

    @property
    def quantizes(self) -> bool:
        """Whether the output is a new activation quantization point (an integer tensor with its own scale)."""
        return (self.kind in (LAYER, ADD_OP, MUL_OP, CONCAT, GLOBAL_POOL, AVG_POOL, LUT, BN_OP)
                and not self.int32_output)


def group_inputs(g: Group) -> list:
    """The tensor values (fx nodes) group ``g`` reads."""
    a = g.anchor
    if g.kind == LUT:
        return [g.source]
    if g.kind in (ADD_OP, MUL_OP):
        return [a.args[0], a.args[1]]
    if g.kind == CONCAT:
        return list(a.args[0])
    if g.kind == FLOAT_OP:
        return list(a.all_input_nodes)
    return [a.args[0]]


def float_values(groups: list, is_float_layer, model_input: torch.fx.Node | None = None) -> set:
    """Names of the values computed in float32: the float islands (PTQ's converter and QAT agree on them).

    A value is float when a ``"float_op"`` group or a layer the plan keeps in fp32
    (``is_float_layer(module name)``) computes it; identities follow their input; a table
    (``"lut"``) is float when its input is, or when only float ops read its result (it then stays
    in the island rather than leave it and come back). Every other op reads a float value through
    a quantize (the island's border), unless every value it reads is float (``FOLLOW_FLOAT``: it
    then stays in the island). ``model_input`` (its placeholder) is float itself when only
    float ops read it: a model whose first layers run in float takes its float input as it is.
    """
    readers: dict = {}
    for g in groups:
        for a in group_inputs(g):
            readers.setdefault(a.name, []).append(g)

    def float_reader(g) -> bool:
        if g.kind == IDENTITY_OP:
            return only_float_readers(g.output)
        return g.kind == FLOAT_OP or (g.kind == LAYER and is_float_layer(g.module))

    def only_float_readers(node) -> bool:
        rs = readers.get(node.name, [])
        return bool(rs) and not any(u.op == "output" for u in node.users) and all(float_reader(g) for g in rs)

    floats: set = set()
    if model_input is not None and only_float_readers(model_input):
        floats.add(model_input.name)
    for g in groups:
        if g.kind == FLOAT_OP or (g.kind == LAYER and is_float_layer(g.module)):
            floats.add(g.output.name)
        elif g.kind == IDENTITY_OP and g.anchor.args[0].name in floats:
            floats.add(g.output.name)
        elif g.kind in FOLLOW_FLOAT and group_inputs(g) and all(a.name in floats for a in group_inputs(g)):
            floats.add(g.output.name)
        elif g.kind == LUT and (g.source.name in floats or only_float_readers(g.output)):
            floats.add(g.output.name)
    return floats


def group_nodes(g: Group) -> list:
    """Every node of the group, from its anchor to its output."""
    if g.nodes:
        return list(g.nodes)
    nodes, cur = [g.anchor], g.anchor
    while cur is not g.output:
        cur = sole_user(cur)
        nodes.append(cur)
    return nodes


def layer_names(graph: torch.fx.Graph) -> list[str]:
    """Module names of every conv / linear in the graph (the names a ``BitPlan`` may use)."""
    return [module_name(n) for n in graph.nodes if n.op == "call_function" and n.target in CONV | LINEAR]


def layer_weights(group: Group, tensor_of) -> tuple:
    """The float64 weight and bias of a conv / linear group, its BatchNorm folded in (a layer
    without a bias gets zeros). ``tensor_of(node)`` returns the constant behind a parameter node."""
    node = group.anchor
    w = tensor_of(node.args[1]).detach().double()
    b_node = node.args[2] if len(node.args) > 2 else None
    b = tensor_of(b_node).detach().double() if b_node is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if group.bn is not None:
        w, b = fold_batch_norm(group.bn, w, b, tensor_of)
    return w, b


def conv_arguments(node: torch.fx.Node) -> dict:
    """``stride``, ``padding``, ``dilation`` (pairs) and ``groups`` of an ``aten.conv2d`` node, with torch's defaults."""
    stride, padding, dilation = (pair(a) for a in (list(node.args[3:6]) + [1, 0, 1][len(node.args[3:6]):]))
    return {"stride": stride, "padding": padding, "dilation": dilation,
            "groups": int(node.args[6]) if len(node.args) > 6 else 1}


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


def sole_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None
