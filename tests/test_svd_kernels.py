"""The SVD kernels (sketch.cu, gram.cu) on the emulator against float64 numpy references.

Sizes are ragged on purpose (not multiples of the 128/64/16 tiles) and small,
because the emulator runs every GPU thread as a fiber.  Tolerances are the
standard dot-product error bound ``gamma_n = n u / (1 - n u)`` times the sums
of absolute values, for the dtype that accumulates.
"""
from __future__ import annotations

import numpy as np
import pytest

from liam_gpu import philox
from liam_gpu.backends import emulator_available
from liam_gpu.launch import gram, sketch
from liam_gpu.launch.runtime import emulator_runtime

pytestmark = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

DTYPES = [np.float32, np.float64]


def _gamma(n: int, dtype) -> float:
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


@pytest.fixture(scope="module")
def rt():
    return emulator_runtime()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True], ids=["A", "A^T"])
@pytest.mark.parametrize("m,n,l,col0", [(131, 37, 70, 0), (5, 19, 3, 8), (129, 1, 66, 4)])
def test_sketch_matches_product_with_reference_omega(rt, dtype, trans, m, n, l, col0, rng):
    a = rng.standard_normal((n, m) if trans else (m, n)).astype(dtype)
    out = np.full((m, l), np.nan, dtype=dtype)
    sketch.sketch(rt, a, 2024, l, out, trans=trans, col0=col0)
    op = (a.T if trans else a).astype(np.float64)
    omega = philox.omega(2024, n, l, dtype, col0=col0).astype(np.float64)
    ref = op @ omega
    # gamma_n |A| |Omega| bounds the product's rounding; the kernel's normals
    # differ from numpy's by the few-ulp absolute error of log/sqrt/sincospi
    # (|z| <= 6.8, see test_philox), which |A| times that error bounds.
    normal_error = 8 * 6.8 * np.finfo(dtype).eps
    bound = _gamma(n, dtype) * (np.abs(op) @ np.abs(omega)) + normal_error * np.abs(op).sum(axis=1)[:, None]
    assert np.all(np.abs(out - ref) <= bound)


def test_sketch_is_deterministic_and_needs_whole_philox_groups(rt, rng):
    a = rng.standard_normal((70, 33)).astype(np.float32)
    y1, y2 = np.empty((70, 9), np.float32), np.empty((70, 9), np.float32)
    sketch.sketch(rt, a, 1, 9, y1)
    sketch.sketch(rt, a, 1, 9, y2)
    np.testing.assert_array_equal(y1, y2)
    with pytest.raises(ValueError, match="multiple of 4"):
        sketch.sketch(rt, a, 1, 9, y1, col0=2)
    with pytest.raises(ValueError, match="shape"):
        sketch.sketch(rt, a, 1, 9, np.empty((70, 8), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        sketch.sketch(rt, a.astype(np.int32), 1, 9, y1)


@pytest.mark.parametrize("dtype,acc", [(np.float32, np.float64), (np.float32, np.float32), (np.float64, np.float64)])
@pytest.mark.parametrize("m,l", [(300, 70), (17, 5), (1, 1), (530, 3)])
def test_gram_matches_float64_reference_and_is_symmetric(rt, dtype, acc, m, l, rng):
    y = rng.standard_normal((m, l)).astype(dtype)
    g = gram.gram(rt, y, accumulate=acc)
    assert g.dtype == acc and g.shape == (l, l)
    y64 = y.astype(np.float64)
    ref = y64.T @ y64
    bound = _gamma(m, acc) * (np.abs(y64).T @ np.abs(y64))
    assert np.all(np.abs(g - ref) <= bound)
    np.testing.assert_array_equal(g, g.T)  # bitwise


def test_gram_is_bitwise_reproducible_over_many_chunks(rt, rng):
    # 2100 rows make several row chunks, reduced in a fixed order.
    y = rng.standard_normal((2100, 6)).astype(np.float32)
    assert gram.chunk_rows(2100, 6) < 2100
    first = gram.gram(rt, y, accumulate=np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(gram.gram(rt, y, accumulate=np.float32), first)


@pytest.mark.parametrize("dtype,acc", [(np.float32, np.float64), (np.float32, np.float32), (np.float64, np.float64)])
@pytest.mark.parametrize("m,l", [(150, 70), (9, 4), (65, 130)])
def test_tri_apply_multiplies_by_the_upper_triangle(rt, dtype, acc, m, l, rng):
    y = rng.standard_normal((m, l)).astype(dtype)
    rinv = np.triu(rng.standard_normal((l, l))).astype(acc)
    out = np.empty_like(y)
    gram.tri_apply(rt, y, rinv, out)
    y64, r64 = y.astype(np.float64), rinv.astype(np.float64)
    ref = y64 @ r64
    # accumulation error plus the final rounding to the output dtype
    bound = _gamma(l, acc) * (np.abs(y64) @ np.abs(r64)) + np.finfo(dtype).eps / 2 * np.abs(ref)
    assert np.all(np.abs(out - ref) <= bound + np.finfo(dtype).tiny)


def test_tri_apply_refuses_aliasing_and_wrong_shapes(rt, rng):
    y = rng.standard_normal((10, 4))
    r = np.eye(4)
    with pytest.raises(ValueError, match="must not be y"):
        gram.tri_apply(rt, y, r, y)
    with pytest.raises(ValueError, match="rinv"):
        gram.tri_apply(rt, y, np.eye(3), np.empty_like(y))
    with pytest.raises(ValueError, match="accumulate"):
        gram.tri_apply(rt, y, r.astype(np.float32), np.empty_like(y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares_is_float64_accurate(rt, dtype, rng):
    a = (rng.standard_normal((333, 421)) * 1e3).astype(dtype)
    got = gram.sum_squares(rt, a)
    exact = float(np.sum(a.astype(np.float64) ** 2))
    assert abs(got - exact) <= _gamma(a.size, np.float64) * exact
    assert gram.sum_squares(rt, a) == got  # deterministic
