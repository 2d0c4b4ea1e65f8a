"""Fixed-point requantization: the one rounding rule every integer backend of hwq implements.

A real multiplier ``m > 0`` (e.g. ``s_in * s_w / s_out``) is represented as an int32 ``M`` in
``[2^30, 2^31)`` and a right shift ``n`` so that ``m ~= M * 2^-n`` (31 significant bits). An int32
accumulator ``acc`` is rescaled as

    y = (acc * M + 2^(n-1)) >> n          (int64 product, arithmetic shift)

i.e. ``floor(acc * m + 1/2)``: round to nearest, ties toward +infinity. ``|acc| < 2^31`` and
``M < 2^31`` keep the product inside int64. The result is then clamped to the output's range.
"""

from __future__ import annotations

import math

import numpy as np

from hwq.errors import QuantizationError

MIN_SHIFT, MAX_SHIFT = 1, 62


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """Split real multipliers (scalar or array, all > 0) into int32 mantissas and right shifts.

    Returns:
        ``(M, n)`` as int64 arrays of the input's shape, ``2^30 <= M < 2^31``.
    """
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise QuantizationError(f"requantization multipliers must be finite and > 0, got {m.ravel()[:8]!r}")
    mant, exp = np.frexp(m)                       # m = mant * 2^exp, mant in [0.5, 1)
    M = np.round(mant * 2.0 ** 31).astype(np.int64)
    n = (31 - exp).astype(np.int64)
    carry = M == 2 ** 31                          # mant rounded up to 1.0
    M = np.where(carry, 2 ** 30, M)
    n = np.where(carry, n - 1, n)
    if np.any(n < MIN_SHIFT) or np.any(n > MAX_SHIFT):
        bad = m.ravel()[np.argmax(((n < MIN_SHIFT) | (n > MAX_SHIFT)).ravel())]
        raise QuantizationError(f"requantization multiplier {bad!r} is outside the representable range "
                                f"[2^{31 - MAX_SHIFT - 1}, 2^{31 - MIN_SHIFT - 1}); a scale is degenerate "
                                f"(e.g. a layer whose calibrated range is zero)")
    return M, n


def requantize(acc: np.ndarray, M: np.ndarray, n: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """numpy version of the rounding rule above (``M``/``n`` broadcast against ``acc``)."""
    acc = np.asarray(acc, dtype=np.int64)
    y = (acc * M + (np.int64(1) << (n - 1))) >> n
    return np.clip(y, qmin, qmax)


def common_shift(multipliers) -> tuple[np.ndarray, int]:
    """Several multipliers sharing one shift (the residual add): the largest gets 31 bits.

    Returns ``(M, n)`` with ``M`` an int64 array, one entry per multiplier, and the common shift.
    """
    m = np.asarray(multipliers, dtype=np.float64)
    _, n = quantize_multiplier(m.max())
    M = np.round(m * 2.0 ** int(n)).astype(np.int64)
    if M.max() >= 2 ** 31:
        n = n - 1
        M = np.round(m * 2.0 ** int(n)).astype(np.int64)
    return M, int(n)


def choose_scale(lo: float, hi: float, qmin: int, qmax: int) -> float:
    """Symmetric scale covering ``[lo, hi]`` on the integer range ``[qmin, qmax]`` (zero point 0)."""
    if qmin < 0:
        amax = max(abs(lo), abs(hi))
        s = amax / qmax
    else:
        s = max(hi, 0.0) / qmax
    # a tensor that was constant zero during calibration still needs a usable scale
    return s if s > 0 and math.isfinite(s) else 1.0 / qmax
