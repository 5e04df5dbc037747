"""BinaryAlgebra: the LIAM engine's operations, with their original meaning, on every backend."""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg


@pytest.fixture
def algebra(backend_name):
    return lg.BinaryAlgebra(device=backend_name)


def test_seed_snippet_transform_is_data_times_weights_transposed(algebra, rng):
    data = rng.standard_normal((7, 5))
    weights = rng.standard_normal((3, 5))
    np.testing.assert_allclose(algebra.transform_matrix(data, weights), np.dot(data, weights.T), rtol=1e-12)


def test_seed_snippet_svd_compress_gives_the_rank_k_reconstruction(algebra, rng):
    u, _ = np.linalg.qr(rng.standard_normal((40, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    x = (u * [9, 7, 5, 3, 2, 1]) @ v.T
    lr = algebra.svd_compress(x, k=6)
    np.testing.assert_allclose(np.asarray(lr), x, atol=1e-10)
    lr3 = algebra.svd_compress(x, k=3)
    best = np.linalg.svd(x, compute_uv=False)[3:]
    err = np.linalg.norm(np.asarray(lr3) - x)
    assert err <= np.linalg.norm(best) * (1 + 1e-6)


def test_hadamard_kronecker_outer(algebra, rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    np.testing.assert_array_equal(algebra.hadamard_product(a, b), a * b)
    np.testing.assert_allclose(algebra.kronecker_product(a, b), np.kron(a, b))
    u, v = rng.standard_normal(4), rng.standard_normal(5)
    np.testing.assert_allclose(algebra.outer_product(u, v), np.outer(u, v))
    with pytest.raises(ValueError, match="same shape"):
        algebra.hadamard_product(a, b.T)
    with pytest.raises(ValueError, match="1-D"):
        algebra.outer_product(a, v)


def test_frobenius_norm(algebra, rng):
    a = rng.standard_normal((4, 6))
    assert float(algebra.frobenius_norm(a)) == pytest.approx(np.sqrt((a * a).sum()), rel=1e-14)


def test_spectral_decomposition_symmetric_is_real_and_orthonormal(algebra, rng):
    m = rng.standard_normal((6, 6))
    s = m + m.T
    w, v = algebra.spectral_decomposition(s)
    assert w.dtype == np.float64 and v.dtype == np.float64
    assert np.all(np.diff(w) >= 0)
    np.testing.assert_allclose(v.T @ v, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(v @ np.diag(w) @ v.T, s, atol=1e-12)


def test_spectral_decomposition_general_matches_eig(algebra):
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    w, v = algebra.spectral_decomposition(rot)
    np.testing.assert_allclose(sorted(w, key=lambda z: z.imag), [-1j, 1j], atol=1e-12)
    np.testing.assert_allclose(rot @ v, v * w, atol=1e-12)
    with pytest.raises(ValueError, match="square"):
        algebra.spectral_decomposition(np.ones((2, 3)))


def test_matrix_power(algebra, rng):
    a = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    np.testing.assert_allclose(algebra.matrix_power(a, 3), a @ a @ a, rtol=1e-12)
    np.testing.assert_allclose(algebra.matrix_power(a, 0), np.eye(4))
    np.testing.assert_allclose(algebra.matrix_power(a, -1), np.linalg.inv(a), rtol=1e-10)
    with pytest.raises(TypeError, match="n must be an integer"):
        algebra.matrix_power(a, 1.5)
    with pytest.raises(ValueError, match="singular"):
        algebra.matrix_power(np.zeros((2, 2)), -1)


def test_solve_linear_system(algebra, rng):
    a = rng.standard_normal((5, 5)) + 5 * np.eye(5)
    b = rng.standard_normal((5, 2))
    np.testing.assert_allclose(a @ algebra.solve_linear_system(a, b), b, atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        algebra.solve_linear_system(np.ones((3, 3)), np.ones(3))
    with pytest.raises(ValueError, match="rows"):
        algebra.solve_linear_system(a, np.ones(4))


def test_cosine_similarity(algebra, rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    expected = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    np.testing.assert_allclose(algebra.cosine_similarity(a, b), expected, rtol=1e-12)
    assert float(algebra.cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))) == pytest.approx(2**-0.5)
    with pytest.raises(ValueError, match="zero vector"):
        algebra.cosine_similarity(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", ["huge", "tiny"])
def test_norms_are_scaled_like_lapack_nrm2(algebra, rng, dtype, scale):
    """No overflow to Inf or underflow to 0 where the norm itself is representable.

    The issue: float32 ``frobenius_norm`` was Inf at 1e30 and 0 at 1e-30, and
    the cosine similarity of two equal rows at 1e30 was 0.0.
    """
    info = np.finfo(dtype)
    eps = float(info.eps)
    # the square of this overflows (or underflows), the norm of 12 of them does not
    value = {"huge": np.sqrt(float(info.max)) * 4, "tiny": np.sqrt(float(info.smallest_subnormal)) / 4}[scale]
    a = (rng.uniform(0.5, 1.0, (3, 4)) * value).astype(dtype)
    truth = np.sqrt(np.sum((a.astype(np.float64) / value) ** 2)) * value
    got = float(algebra.frobenius_norm(a))
    assert got == pytest.approx(truth, rel=16 * eps)
    equal = np.stack([a[0], a[0]])
    np.testing.assert_allclose(algebra.cosine_similarity(equal), np.ones((2, 2)), rtol=16 * eps)
    assert float(algebra.cosine_similarity(a[0], a[0])) == pytest.approx(1.0, rel=16 * eps)
    expected = (a / np.linalg.norm(a.astype(np.float64) / value, axis=1, keepdims=True) / value)
    expected = expected.astype(np.float64) @ expected.T.astype(np.float64)
    np.testing.assert_allclose(algebra.cosine_similarity(a), expected, rtol=64 * eps)


def test_norm_of_zeros_and_of_non_finite_values():
    algebra = lg.BinaryAlgebra(device="cpu", check_finite=False)
    assert float(algebra.frobenius_norm(np.zeros((2, 3)))) == 0.0
    assert float(algebra.frobenius_norm(np.array([1.0, np.inf]))) == np.inf
    assert np.isnan(float(algebra.frobenius_norm(np.array([1.0, np.nan]))))


def test_svd_compress_defaults_agree_with_the_library(rng):
    """``svd_compress(x, tol=...)`` works (k defaulted to 32 and the library refused k with tol)."""
    algebra = lg.BinaryAlgebra(device="cpu")
    u, _ = np.linalg.qr(rng.standard_normal((60, 5)))
    v, _ = np.linalg.qr(rng.standard_normal((50, 5)))
    x = (u * [50.0, 20, 10, 5, 2]) @ v.T + 1e-6 * rng.standard_normal((60, 50))
    low = algebra.svd_compress(x, tol=0.1)
    assert low.rank <= 5 and low.relative_error <= 0.1
    assert algebra.svd_compress(x).rank == 32  # LIAM's default rank without tol
    assert algebra.svd_compress(x[:20, :10]).rank == 10  # capped at min(m, n), as the library does


def test_covariance_rows_are_observations(algebra, rng):
    x = rng.standard_normal((50, 3))
    np.testing.assert_allclose(algebra.covariance(x), np.cov(x, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(algebra.covariance(x.T, rowvar=True), np.cov(x.T), rtol=1e-12)
    with pytest.raises(ValueError, match="observations"):
        algebra.covariance(np.ones((1, 3)))


@pytest.mark.parametrize(
    "values",
    [np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789012345]), np.array([[5.0, -3.0], [1e15, 0.0]])],
)
def test_binary_round_trip_is_exact(algebra, values):
    bits = algebra.binary_encode(values)
    assert bits.shape == values.shape + (64,) and bits.dtype == np.uint8
    assert set(np.unique(bits)) <= {0, 1}
    np.testing.assert_array_equal(algebra.binary_decode(bits), values.astype(np.int64))


def test_binary_encode_bit_order_is_most_significant_first(algebra):
    bits = algebra.binary_encode(np.array([5]))
    assert bits[0, -3:].tolist() == [1, 0, 1] and bits[0, :-3].sum() == 0
    assert algebra.binary_encode(np.array([-1])).sum() == 64


def test_binary_encode_refuses_fractions_and_out_of_range(algebra):
    with pytest.raises(ValueError, match="fractional"):
        algebra.binary_encode(np.array([1.5]))
    with pytest.raises(ValueError, match="int64 range"):
        algebra.binary_encode(np.array([1e19]))
    with pytest.raises(ValueError, match="NaN"):
        algebra.binary_encode(np.array([np.nan]))
    with pytest.raises(ValueError, match="0 and 1"):
        algebra.binary_decode(np.full((1, 64), 2))
    with pytest.raises(ValueError, match="64"):
        algebra.binary_decode(np.zeros((1, 63)))


def test_inputs_are_never_modified(algebra, rng):
    a = rng.standard_normal((4, 4))
    keep = a.copy()
    for call in (
        lambda: algebra.hadamard_product(a, a),
        lambda: algebra.spectral_decomposition(a + a.T),
        lambda: algebra.solve_linear_system(a + 4 * np.eye(4), a),
        lambda: algebra.covariance(a),
        lambda: algebra.transform_matrix(a, a),
    ):
        call()
        np.testing.assert_array_equal(a, keep)


def test_lists_become_numpy(algebra):
    y = algebra.transform_matrix([[1.0, 2.0]], [[3.0, 4.0]])
    assert isinstance(y, np.ndarray) and y.tolist() == [[11.0]]


# --- library behaviours that differ on the GPU, held to numpy's contract -------------


def test_eig_results_are_real_when_every_eigenvalue_is_real(monkeypatch):
    # cupy.linalg.eig always returns complex arrays; numpy returns real ones when it can.
    real_eig = np.linalg.eig
    monkeypatch.setattr(np.linalg, "eig", lambda a: tuple(x.astype(complex) for x in real_eig(a)))
    w, v = lg.BinaryAlgebra(device="cpu").spectral_decomposition(np.array([[2.0, 1.0], [0.0, 3.0]]))
    assert w.dtype == np.float64 and v.dtype == np.float64
    np.testing.assert_allclose(np.sort(w), [2.0, 3.0])
    w, _ = lg.BinaryAlgebra(device="cpu").spectral_decomposition(np.array([[0.0, -1.0], [1.0, 0.0]]))
    assert np.iscomplexobj(w)  # a rotation: complex eigenvalues stay complex


def test_singular_inverse_reported_as_nan_is_still_an_error(monkeypatch):
    # cuSOLVER does not raise for a singular matrix: the inverse comes back non-finite.
    monkeypatch.setattr(np.linalg, "matrix_power", lambda a, n: np.full_like(a, np.inf if n < 0 else 1.0))
    with pytest.raises(ValueError, match="a is singular, so matrix_power with n=-2"):
        lg.BinaryAlgebra(device="cpu").matrix_power(np.eye(3), -2)
    assert np.all(lg.BinaryAlgebra(device="cpu").matrix_power(np.eye(3), 2) == 1.0)


@pytest.mark.parametrize("value", [np.int64(5), 5, np.float64(-3.0), np.array(7)])
def test_zero_dimensional_input_keeps_its_shape(value):
    alg = lg.BinaryAlgebra(device="cpu")
    bits = alg.binary_encode(value)
    assert bits.shape == (64,)
    back = alg.binary_decode(bits)
    assert back.shape == () and int(back) == int(value)
