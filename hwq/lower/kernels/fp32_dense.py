"""float32 dense (``x @ W.T + b``) on CPUs: FMA over output-feature vectors, fused epilogue.

Weights are packed as ``[ceil(O/block), I, block]``. The parallel loop runs over blocks of
``ob * block`` output features; inside it the reduction runs in chunks of ``kc`` inputs, and each
chunk over every batch row: the chunk's weights (``kc x ob*block`` floats, 32 KB for 64 x 128)
stay in L1 while the rows go by, and a row's ``ob`` accumulator vectors stay in registers across
the chunk (stored and reloaded once per chunk, in a buffer of ``n`` rows). The batch is symbolic,
so rows cannot be register-tiled without a tail per tile; the chunks give the weight reuse
instead. Measured single-threaded on Zen 5 (1280 -> 1024, batch 16): 190 GFLOP/s, against 100
with the whole reduction per row (the weights then stream from L2 once per row). At batch 1 a
dense layer is a matrix-vector product, bound by reading the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import te

from hwq.lower.kernels.bias_init import bias_as_init
from hwq.lower.kernels.fp32_direct import F32, epilogue, vectorize_epilogue

MAX_OB = 16


@dataclass(frozen=True)
class FloatDenseTile:
    """``ob`` vectors of ``block`` output features per row, over chunks of ``kc`` inputs."""

    ob: int = 8
    kc: int = 64


def dense_compute(n, cin: int, cout: int, block: int, act, residual: bool):
    """TE definition: ``X [n, I]``, packed weight, bias (``cout`` rounded up to ``block``),
    [residual ``[n, O]``] -> ``[n, O]``.

    Returns ``[X, W, bias, out]`` or ``[X, W, bias, R, out]``.
    """
    cout_p = -(-cout // block) * block
    X = te.placeholder((n, cin), F32, name="X")
    W = te.placeholder((cout_p // block, cin, block), F32, name="W")
    B = te.placeholder((cout_p,), F32, name="bias")
    i = te.reduce_axis((0, cin), "i")
    acc = te.compute((n, cout_p), lambda b, o: te.sum(X[b, i] * W[o // block, i, o % block], axis=i), name="acc")
    if not residual:
        return [X, W, B, te.compute((n, cout), lambda b, o: epilogue(acc[b, o] + B[o], act), name="out")]
    R = te.placeholder((n, cout), F32, name="R")
    return [X, W, B, R, te.compute((n, cout), lambda b, o: epilogue(acc[b, o] + B[o], act, R[b, o]), name="out")]


def schedule_dense(func: tvm.tirx.PrimFunc, tile: FloatDenseTile, block: int) -> tvm.tirx.PrimFunc:
    """Blocks of output features in parallel; in each, input chunks outside batch rows (the
    chunk's weights stay in L1), ``ob`` accumulator vectors per row, then the epilogue."""
    sch = tvm.s_tir.Schedule(func)
    bias_as_init(sch)
    acc, out = sch.get_sblock("acc"), sch.get_sblock("out")
    b, o, i = sch.get_loops(acc)
    oo, om, oi = sch.split(o, [None, tile.ob, block])
    io, ii = sch.split(i, [None, tile.kc])
    sch.reorder(oo, io, b, ii, om, oi)
    sch.reverse_compute_at(out, oo)
    sch.parallel(oo)
    sch.unroll(om)
    sch.vectorize(oi)
    sch.decompose_reduction(acc, io)
    vectorize_epilogue(sch, out, block)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def _fits(ob: int, registers: int) -> bool:
    return 2 * ob + 2 <= registers      # accumulators, weight vectors, two broadcasts (fp32_direct.fits)


def _chunks(cin: int) -> list:
    """Input chunks: divisors of ``I`` from 16 to 256, else the whole reduction."""
    return [d for d in range(16, min(cin, 256) + 1) if cin % d == 0] or [cin]


def candidates(blocks: int, cin: int, registers: int) -> list:
    """Tiles worth timing: 1-16 output vectors dividing the layer's (within the registers) x the
    input chunks; the default first."""
    tiles = [FloatDenseTile(ob, kc) for ob in range(1, MAX_OB + 1) if blocks % ob == 0 and _fits(ob, registers)
             for kc in _chunks(cin)]
    first = default_tile(blocks, cin, registers)
    return [first] + [t for t in tiles if t != first]


def default_tile(blocks: int, cin: int, registers: int) -> FloatDenseTile:
    """The untuned tile: the most output vectors up to 8 (independent FMA chains; 16 measured
    slower), chunks of at most 64 inputs (32-64 measured best; 128 was 1.4x slower)."""
    ob = max(d for d in range(1, 9) if blocks % d == 0 and _fits(d, registers))
    small = [kc for kc in _chunks(cin) if kc <= 64]
    return FloatDenseTile(ob, max(small) if small else min(_chunks(cin)))
