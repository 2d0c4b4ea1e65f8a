import numpy as np
import pytest

from hwq.errors import QuantizationError
from hwq.fixed_point import choose_scale, common_shift, quantize_multiplier, requantize


def test_multiplier_has_31_bits_and_is_accurate(rng):
    m = np.exp(rng.uniform(np.log(1e-6), np.log(4.0), 1000))
    M, n = quantize_multiplier(m)
    assert np.all((M >= 2 ** 30) & (M < 2 ** 31))
    assert np.allclose(M * 2.0 ** -n, m, rtol=2 ** -30)


def test_requantize_rounds_half_up(rng):
    acc = rng.integers(-2 ** 20, 2 ** 20, 5000)
    M, n = quantize_multiplier(0.25)           # exact: 2^30 * 2^-32
    y = requantize(acc, M, n, -2 ** 31, 2 ** 31)
    assert np.array_equal(y, np.floor(acc * 0.25 + 0.5).astype(np.int64))
    assert requantize(np.array([2, -2, 6, -6]), M, n, -128, 127).tolist() == [1, 0, 2, -1]   # ties toward +inf


def test_requantize_clamps(rng):
    M, n = quantize_multiplier(1.0)
    assert requantize(np.array([-1000, 5, 1000]), M, n, 0, 255).tolist() == [0, 5, 255]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), 1e30, 1e-30])
def test_degenerate_multiplier_is_an_error(bad):
    with pytest.raises(QuantizationError, match="multiplier"):
        quantize_multiplier(bad)


def test_common_shift_keeps_ratio():
    M, n = common_shift([0.5, 0.1])
    assert M[0] < 2 ** 31 and M.max() >= 2 ** 30
    assert np.allclose(M * 2.0 ** -n, [0.5, 0.1], rtol=1e-8)


def test_choose_scale():
    assert choose_scale(-2.0, 1.0, -127, 127) == pytest.approx(2.0 / 127)
    assert choose_scale(0.0, 5.1, 0, 255) == pytest.approx(0.02)
    assert choose_scale(0.0, 0.0, 0, 255) > 0
