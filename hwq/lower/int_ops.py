"""Relax lowering of the integer ops beside conv / dense: tables, products, concat, pooling, data movement.

Mixed into ``relax_builder._Emitter``; each method but ``move`` takes its input(s) in the emitter's
layout (NCHW, or NHWC for targets with hand kernels) and returns the output in that layout. All of
it is integer arithmetic following ``hwq.fixed_point``, so it equals the reference bit for bit.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te

from hwq import qgraph as qg

# NCHW axis -> NHWC axis of a 4-D tensor
_NHWC_AXIS = (0, 3, 1, 2)


def _const(a, dtype):
    return relax.const(np.asarray(a).astype(dtype), dtype)


class IntegerOps:
    """Needs ``bb``, ``emit``, ``layout``, ``channel``, ``requant``, ``cast_clip``, ``dtype``, ``graph``, ``env``,
    ``put``, ``stored_layout`` and ``float_op`` of the emitter."""

    def move(self, node: qg.Move):
        """Data movement. Splits, slices, zero padding and nearest upsampling of a 4-D value run in
        the layout it is stored in (NHWC beside hand kernels: no permutation to NCHW and back); the
        other ops (reshapes, permutes) run in NCHW through the float ops' table, which is dtype-blind."""
        src = node.inputs[0]
        layout = self.stored_layout(src)
        x, info = self.env[src], self.graph.tensors[src]
        if node.target == "getitem":                       # an element of a split: stored as the split was
            self.put(node.output, self.emit(relax.TupleGetItem(x, node.args[1])), layout)
            return
        emit = _MOVES.get(node.target)
        if emit is None or len(info.shape) != 3:
            self.float_op(node)
            return
        axis = (lambda d: _NHWC_AXIS[d % 4]) if layout == "NHWC" else (lambda d: d % 4)
        kwargs = dict(node.kwargs)
        y = emit(self, x, (None, *info.shape), self.graph.tensors[node.output].shape, axis, *node.args[1:], **kwargs)
        self.put(node.output, self.emit(y) if not isinstance(y, relax.Var) else y, layout)

    def lut(self, x, node: qg.Lut):
        """``table[x - input_min]``: one load from a 256-entry constant per element. Written in TE
        rather than as ``relax.op.take``: no bounds clamp (every 8-bit integer has its entry), and
        fused with its neighbours like any elementwise op (EfficientNet-B0 at 224x224, batch 8 on
        x86-host: 26.1 ms with ``take``'s clip mode, 23.2 ms so)."""
        lo = int(node.input_min)

        def gather(x, table):
            return te.compute(x.shape, lambda *i: table[x(*i).astype("int32") - lo], name="lut")

        return self.bb.emit_te(gather, x, _const(node.table, self.dtype(node.output)))

    def channel_affine(self, x, node: qg.ChannelAffine):
        ndim = 1 + len(self.graph.tensors[node.input].shape)
        x32 = self.emit(relax.op.astype(x, "int32"))
        acc = self.emit(relax.op.multiply(x32, self.channel(node.weight, ndim, "int32")))
        acc = self.emit(relax.op.add(acc, self.channel(node.bias, ndim, "int32")))
        return self.requant(acc, node.requant, ndim, self.dtype(node.output))

    def mul(self, xs, node: qg.Mul):
        a, b = (self.emit(relax.op.astype(x, "int32")) for x in xs)     # |a * b| <= 2^16: exact in int32
        prod = self.emit(relax.op.multiply(a, b))
        return self.requant(prod, node.requant, 1 + len(self.graph.tensors[node.output].shape), self.dtype(node.output))

    def concat(self, xs, node: qg.Concat):
        ndim = 1 + len(self.graph.tensors[node.output].shape)
        parts = [x if rq is None else self.requant(x, rq, ndim, self.dtype(node.output))
                 for x, rq in zip(xs, node.requants)]
        axis = _NHWC_AXIS[node.axis] if self.layout == "NHWC" and ndim == 4 else node.axis
        return self.emit(relax.op.concat(parts, axis=axis))

    def avg_pool2d(self, x, node: qg.AvgPool2d):
        """Window sums as a depthwise conv with a kernel of ones (int32, zeros in the padding), then
        one requantization per output position."""
        c, h, w = self.graph.tensors[node.input].shape
        _, oh, ow = self.graph.tensors[node.output].shape
        (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
        # ceil_mode's last window may reach past the right padding: pad more there (zeros add nothing)
        extra_h = max(0, (oh - 1) * sh + kh - (h + 2 * ph))
        extra_w = max(0, (ow - 1) * sw + kw - (w + 2 * pw))
        ones = np.ones((c, 1, kh, kw), np.int8)
        w_, kl = (ones, "OIHW") if self.layout == "NCHW" else (ones.transpose(2, 3, 1, 0), "HWIO")
        sums = self.emit(relax.op.nn.conv2d(
            x, _const(w_, "int8"), strides=node.stride, padding=(ph, pw, ph + extra_h, pw + extra_w), groups=c,
            data_layout=self.layout, kernel_layout=kl, out_dtype="int32"))
        rq = node.requant
        shape = (1, 1, oh, ow) if self.layout == "NCHW" else (1, oh, ow, 1)

        def spatial(a):
            a = np.asarray(a, dtype=np.int64)
            return _const(a, "int64") if a.ndim == 0 else _const(a.reshape(shape), "int64")

        s64 = self.emit(relax.op.astype(sums, "int64"))
        prod = self.emit(relax.op.multiply(s64, spatial(rq.multiplier)))
        rounded = self.emit(relax.op.add(prod, spatial(np.left_shift(1, np.asarray(rq.shift, np.int64) - 1))))
        shifted = self.emit(relax.op.right_shift(rounded, spatial(rq.shift)))
        return self.cast_clip(shifted, rq.qmin, rq.qmax, self.dtype(node.output))


# ----------------------------------------------------------------------------- moves in any layout
# emit(em, x, NCHW shape of x (batch None), NCHW output shape (no batch), axis(NCHW dim) -> stored axis, *args)
def _split(em, x, shape, out, axis, size, dim=0):
    return relax.op.split(x, list(range(size, shape[dim % 4], size)), axis=axis(dim))


def _split_sizes(em, x, shape, out, axis, sizes, dim=0):
    return relax.op.split(x, [int(v) for v in np.cumsum(sizes[:-1])], axis=axis(dim))


def _chunk(em, x, shape, out, axis, chunks, dim=0):
    return _split(em, x, shape, out, axis, -(-shape[dim % 4] // chunks), dim)


def _slice(em, x, shape, out, axis, dim=0, start=None, end=None, step=1):
    size = shape[dim % 4]
    start = 0 if start is None else start
    end = size if end is None or end > size else end
    return relax.op.strided_slice(x, axes=[axis(dim)], begin=[start], end=[end], strides=[step])


def _pad(em, x, shape, out, axis, pad, *_):
    # zeros (the converter took only value 0); torch lists (before, after) from the last dimension back
    width = [0] * 8
    for i in range(len(pad) // 2):
        a = axis(3 - i)
        width[2 * a], width[2 * a + 1] = pad[2 * i], pad[2 * i + 1]
    return relax.op.nn.pad(x, width, pad_value=0.0)


def _upsample_nearest(em, x, shape, out, axis, *_):
    # by integer factors (the converter took only those): each row and column repeated
    for dim, (n, m) in ((2, (shape[2], out[1])), (3, (shape[3], out[2]))):
        if m != n:
            x = em.emit(relax.op.repeat(x, m // n, axis=axis(dim)))
    return x


_MOVES = {"aten.split.Tensor": _split, "aten.split_with_sizes.default": _split_sizes, "aten.chunk.default": _chunk,
          "aten.slice.Tensor": _slice, "aten.constant_pad_nd.default": _pad, "aten.pad.default": _pad,
          "aten.upsample_nearest2d.vec": _upsample_nearest,
          "aten.upsample_nearest2d.default": _upsample_nearest}
