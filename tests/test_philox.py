"""The Philox4x32-10 generator: published answers, kernel == numpy reference, normal statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from liam_gpu import philox
from liam_gpu.backends import emulator_available

# Random123's known-answer vectors (kat_vectors, "philox4x32 10"): counter, key, result.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

needs_emulator = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers_of_philox4x32_10(counter, key, expected):
    out = philox.philox4x32(counter, key)
    assert out.dtype == np.uint32
    assert tuple(int(w) for w in out[:, 0]) == expected


def test_vectorised_calls_equal_one_at_a_time_calls():
    counters = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 0xFFFFFFFF], [0, 9, 10]], dtype=np.uint32)
    together = philox.philox4x32(counters, (11, 12))
    for i in range(3):
        alone = philox.philox4x32(counters[:, i], (11, 12))
        np.testing.assert_array_equal(together[:, i], alone[:, 0])


def test_omega_element_depends_only_on_seed_row_and_column():
    whole = philox.omega(5, 40, 23, np.float64)
    block = philox.omega(5, 7, 9, np.float64, row0=30, col0=12)
    np.testing.assert_array_equal(block, whole[30:37, 12:21])
    # a wider sketch keeps its first columns
    np.testing.assert_array_equal(philox.omega(5, 40, 30, np.float64)[:, :23], whole)
    assert not np.array_equal(philox.omega(6, 40, 23, np.float64), whole)


def test_rows_past_two_to_the_32_use_the_high_counter_word():
    low = philox.omega_bits(3, 1, 2, row0=5)
    high = philox.omega_bits(3, 1, 2, row0=5 + 2**32)
    assert not np.array_equal(low, high)
    direct = philox.philox4x32((np.array([0, 1]), 5, 1, 0), philox.seed_key(3))
    np.testing.assert_array_equal(high[0], direct.T)


def test_seed_splits_into_two_key_words():
    assert philox.seed_key(0x0123456789ABCDEF) == (0x89ABCDEF, 0x01234567)
    with pytest.raises(ValueError, match="seed"):
        philox.seed_key(-1)
    with pytest.raises(ValueError, match="seed"):
        philox.seed_key(2**64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniforms_are_exact_and_never_zero_or_one(dtype):
    extremes = np.array([0, 1, 0xFFFFFFFF, 0x80000000], dtype=np.uint32)
    u = philox.uniform(extremes, dtype)
    assert u.dtype == dtype
    assert (u > 0).all() and (u < 1).all()
    if dtype == np.float32:
        expected = [2.0**-24, 2.0**-24, 1 - 2.0**-24, 0.5 + 2.0**-24]
    else:
        expected = [2.0**-33, 3 * 2.0**-33, 1 - 2.0**-33, 0.5 + 2.0**-33]
    np.testing.assert_array_equal(u, np.array(expected, dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sincospi_matches_sin_and_cos_of_pi_x(dtype):
    x = np.linspace(0, 2, 1001, dtype=dtype)[1:-1]
    s, c = philox.sincospi(x)
    eps = np.finfo(dtype).eps
    # Reference in float64 (and ~ulp for the float64 case): the error is a few ulp of 1.
    np.testing.assert_allclose(s, np.sin(np.pi * x.astype(np.float64)), rtol=0, atol=8 * eps)
    np.testing.assert_allclose(c, np.cos(np.pi * x.astype(np.float64)), rtol=0, atol=8 * eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal_moments(dtype):
    n = 400_000
    z = philox.omega(123, n // 40, 40, dtype).astype(np.float64).ravel()
    # Standard errors of the sample moments of N(0, 1): sqrt(var / n); 5 sigma bounds.
    se = 5 / math.sqrt(n)
    assert abs(z.mean()) < se * 1.0
    assert abs(z.var() - 1) < se * math.sqrt(2)
    assert abs(np.mean(z**3)) < se * math.sqrt(15)
    assert abs(np.mean(z**4) - 3) < se * math.sqrt(96)
    # Both Box-Muller outputs are normal and uncorrelated with each other.
    pairs = z.reshape(-1, 2)
    assert abs(np.mean(pairs[:, 0] * pairs[:, 1])) < se * math.sqrt(2)


@needs_emulator
def test_kernel_words_equal_reference_bit_for_bit():
    from liam_gpu.launch import sketch
    from liam_gpu.launch.runtime import emulator_runtime

    seed = 0xFEDCBA9876543210
    got = sketch.omega_words(emulator_runtime(), seed, 19, 6, row0=2**32 - 7, group0=3)
    np.testing.assert_array_equal(got, philox.omega_bits(seed, 19, 6, row0=2**32 - 7, group0=3))


@needs_emulator
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_normals_equal_reference_to_a_few_ulp(dtype):
    from liam_gpu.launch import sketch
    from liam_gpu.launch.runtime import emulator_runtime

    got = sketch.omega(emulator_runtime(), 77, 31, 23, dtype, row0=9, col0=4)
    ref = philox.omega(77, 31, 23, dtype, row0=9, col0=4)
    # |z| <= 6.8 and each of log, sqrt, sin/cos is within a couple of ulp.
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * 6.8 * np.finfo(dtype).eps)
