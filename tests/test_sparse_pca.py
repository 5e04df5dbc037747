"""Sparse and centred operators, pca and the public range finder, against float64 truth."""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import rangefinder

sp = pytest.importorskip("scipy.sparse")


def _decaying(rng, m, n, rate=0.15, shift=0.0):
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    return (u * np.exp(-rate * np.arange(min(m, n)))) @ v.T + shift


def _sparse(rng, m, n, density=0.05):
    a = sp.random(m, n, density=density, format="csr", random_state=int(rng.integers(1 << 31)))
    return a.multiply(np.exp(-0.01 * np.arange(n))[None, :]).tocsr() * 10  # a decaying column scale


def _true_error(x, u, s, vt):
    x = np.asarray(x, np.float64)
    return np.linalg.norm(x - (np.asarray(u, np.float64) * np.asarray(s, np.float64)) @ np.asarray(vt, np.float64)) \
        / np.linalg.norm(x)


FORMATS = ["csr", "csc", "coo", "lil", "dok", "bsr", "csr_array"]


def _as_format(a, fmt):
    return sp.csr_array(a) if fmt == "csr_array" else a.asformat(fmt)


# --------------------------------------------------------------------------- sparse


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(300, 120), (120, 300)], ids=["tall", "wide"])
def test_sparse_input_equals_the_dense_call_in_every_format(fmt, shape):
    a = _sparse(np.random.default_rng(0), *shape)
    dense = a.toarray()
    u0, s0, vt0 = lg.randomized_svd(dense, 8, n_iter=3, device="cpu")
    u, s, vt = lg.randomized_svd(_as_format(a, fmt), 8, n_iter=3)
    assert isinstance(u, np.ndarray) and u.shape == (shape[0], 8) and vt.shape == (8, shape[1])
    np.testing.assert_allclose(s, s0, rtol=1e-10)
    np.testing.assert_allclose(u, u0, atol=1e-9)
    np.testing.assert_allclose(vt, vt0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_is_never_densified_by_the_fixed_rank_call(dtype, monkeypatch):
    a = _sparse(np.random.default_rng(1), 500, 200).astype(dtype)

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse matrix was densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", refuse)
    monkeypatch.setattr(sp.csr_matrix, "todense", refuse)
    u, s, vt = lg.randomized_svd(a, 10)
    assert u.dtype == dtype and s.dtype == dtype
    lr = lg.svd_compress(a, 10)  # a large error: the energy balance, no residual pass
    assert lr.relative_error > 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_tol_mode_meets_tol_against_the_truth(dtype):
    a = _sparse(np.random.default_rng(2), 400, 150, density=0.1).astype(dtype)
    for tol in (0.8, 0.5, 0.2):
        lr = lg.svd_compress(a, tol=tol)
        true = _true_error(a.toarray(), lr.U, lr.S, lr.Vt)
        assert true <= tol and lr.relative_error <= tol
        assert true / 2 <= lr.relative_error <= 2 * true


def test_sparse_bad_input_names_a():
    a = _sparse(np.random.default_rng(3), 50, 20)
    bad = a.copy()
    bad.data[3] = np.nan
    with pytest.raises(ValueError, match="a contains NaN or Inf"):
        lg.randomized_svd(bad, 3)
    with pytest.raises(ValueError, match="a contains NaN or Inf"):  # the emulator's own SpMM finds it too
        lg.randomized_svd(bad, 3, device="emulator")
    with pytest.raises(ValueError, match="empty"):
        lg.randomized_svd(sp.csr_matrix((0, 5)), 1)
    with pytest.raises(TypeError, match="complex"):
        lg.randomized_svd(a.astype(np.complex128), 3)


# --------------------------------------------------------------------------- centring


@pytest.mark.parametrize("layout", ["C", "F", "wide", "sparse", "sparse-wide"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_center_equals_factoring_the_centred_copy(layout, dtype):
    rng = np.random.default_rng(4)
    if layout.startswith("sparse"):
        a = _sparse(rng, 300, 120) if layout == "sparse" else _sparse(rng, 120, 300)
        a = a.astype(dtype)
        dense = a.toarray()
    else:
        dense = _decaying(rng, 300, 120, shift=5.0)
        dense = dense.T.copy() if layout == "wide" else dense
        dense = np.asfortranarray(dense) if layout == "F" else dense
        dense = dense.astype(dtype)
        a = dense
    centred = np.asarray(dense, np.float64) - np.asarray(dense, np.float64).mean(axis=0)
    k = 6
    u, s, vt = lg.randomized_svd(a, k, center=True, n_iter=6, device="cpu")
    # The same algorithm and test matrix on the centred copy: equal to rounding
    # (singular values are perfectly conditioned: a perturbation E moves them by ||E||).
    _, s_copy, _ = lg.randomized_svd(centred.astype(dtype), k, n_iter=6, device="cpu")
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(s, s_copy, rtol=0, atol=1e3 * eps * s_copy[0])
    assert np.abs(u.T @ u - np.eye(k)).max() <= 100 * eps
    # The mean direction is gone: the centred matrix's columns sum to zero, so U's do too,
    # to rounding: 1^T u_j = 1^T A_c v_j / s_j, where removing the mean cancels terms
    # of the uncentred matrix's size, so the error grows as ||A||_2 / s_j (about 2e3 here;
    # a fixed 1e3 eps failed with OpenBLAS's Sandybridge kernels).
    scale = np.linalg.norm(np.asarray(dense, np.float64), 2) / np.asarray(s, np.float64)
    assert np.all(np.abs(u.sum(axis=0)) <= 8 * eps * np.sqrt(u.shape[0]) * scale)
    lr = lg.svd_compress(a, tol=0.3, center=True, device="cpu")
    true = _true_error(centred, lr.U, lr.S, lr.Vt)
    assert true <= 0.3 and true / 2 <= lr.relative_error <= 2 * max(true, rangefinder.resolution(dtype))


def test_center_with_a_given_mean_and_its_errors():
    rng = np.random.default_rng(5)
    x = _decaying(rng, 200, 50, shift=2.0)
    mu = np.full(50, 2.0)
    _, s, _ = lg.randomized_svd(x, 5, center=mu, n_iter=6, device="cpu")
    np.testing.assert_allclose(s, np.linalg.svd(x - mu, compute_uv=False)[:5], rtol=1e-10)
    with pytest.raises(ValueError, match=r"center must be True, False or 50 column means"):
        lg.randomized_svd(x, 5, center=np.zeros(49), device="cpu")
    with pytest.raises(ValueError, match="center contains NaN"):
        lg.randomized_svd(x, 5, center=np.full(50, np.nan), device="cpu")
    with pytest.raises(ValueError, match="2-D"):
        lg.randomized_svd(np.stack([x, x]), 5, center=True, device="cpu")


# --------------------------------------------------------------------------- pca


def test_pca_against_the_exact_covariance_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x = datasets.load_digits().data  # 1797 x 64, real data shipped with scikit-learn
    res = lg.pca(x, 10)
    centred = x - x.mean(axis=0)
    evals, evecs = np.linalg.eigh(centred.T @ centred / (x.shape[0] - 1))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    np.testing.assert_allclose(res.explained_variance, evals[:10], rtol=1e-6)
    np.testing.assert_allclose(res.explained_variance_ratio, evals[:10] / evals.sum(), rtol=1e-6)
    np.testing.assert_allclose(res.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.abs(res.components @ evecs[:, :10]), np.eye(10), atol=1e-5)
    # scikit-learn's sign convention: the largest-magnitude entry of each component positive.
    rows = np.arange(10)
    assert (res.components[rows, np.abs(res.components).argmax(axis=1)] > 0).all()
    np.testing.assert_allclose(res.transform(x[:5]), (x[:5] - x.mean(axis=0)) @ res.components.T, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pca_matches_scikit_learns_randomized_pca(dtype):
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = _decaying(np.random.default_rng(6), 2000, 300, rate=0.05, shift=3.0).astype(dtype)
    ours = lg.pca(x, 10)
    # Against the truth first: the exact covariance's eigenvalues (measured 4.2e-6 off in
    # float32, about 35 float32 roundoffs; 8.4e-11 in float64, the randomized method's
    # own error on this spectrum).
    exact = np.linalg.eigvalsh(np.cov(x.astype(np.float64).T))[::-1][:10]
    np.testing.assert_allclose(ours.explained_variance, exact, rtol=1e-4 if dtype == np.float32 else 1e-8)
    # Then scikit-learn's own estimate, at the PCA issue's goal (1e-3), and its sign convention.
    theirs = decomposition.PCA(10, svd_solver="randomized", random_state=0).fit(x)
    np.testing.assert_allclose(ours.explained_variance, theirs.explained_variance_, rtol=1e-3)
    np.testing.assert_allclose(ours.explained_variance_ratio, theirs.explained_variance_ratio_, rtol=1e-3)
    np.testing.assert_allclose(ours.components, theirs.components_, atol=5e-3)


def test_pca_of_sparse_input_equals_the_dense_call():
    a = _sparse(np.random.default_rng(7), 400, 100)
    ours = lg.pca(a, 5)
    dense = lg.pca(a.toarray(), 5)
    np.testing.assert_allclose(ours.explained_variance, dense.explained_variance, rtol=1e-10)
    np.testing.assert_allclose(ours.components, dense.components, atol=1e-9)


def test_pca_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        lg.pca(np.ones((1, 5)), 1)
    with pytest.raises(ValueError, match="x contains NaN"):
        lg.pca(np.array([[1.0, np.nan], [2.0, 3.0], [0.0, 1.0]]), 1)


# --------------------------------------------------------------------------- range finder and sklearn's options


@pytest.mark.parametrize("shape", [(300, 80), (80, 300)], ids=["tall", "wide"])
def test_randomized_range_finder_is_orthonormal_and_near_optimal(shape):
    rng = np.random.default_rng(8)
    a = _decaying(rng, *shape)
    q = lg.randomized_range_finder(a, size=15, n_iter=4, random_state=0)
    assert q.shape == (shape[0], 15)
    np.testing.assert_allclose(q.T @ q, np.eye(15), atol=1e-12)
    s = np.linalg.svd(a, compute_uv=False)
    residual = np.linalg.norm(a - q @ (q.T @ a))
    assert residual <= 1.05 * np.sqrt(np.sum(s[15:] ** 2))
    qs = lg.randomized_range_finder(sp.csr_matrix(a), size=15, n_iter=4, random_state=0)
    np.testing.assert_allclose(qs, q, atol=1e-10)
    with pytest.raises(ValueError, match="size"):
        lg.randomized_range_finder(a, size=shape[0] + 1, n_iter=1)


def test_sklearn_options_transpose_and_lapack_driver():
    a = _decaying(np.random.default_rng(9), 200, 60)
    ref = lg.randomized_svd(a, 5, device="cpu")
    for transpose in ("auto", True, False):
        got = lg.randomized_svd(a, 5, transpose=transpose, device="cpu")
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-12)
    gesvd = lg.randomized_svd(a, 5, svd_lapack_driver="gesvd", device="cpu")
    np.testing.assert_allclose(gesvd[1], ref[1], rtol=1e-12)
    np.testing.assert_allclose(np.abs(gesvd[0].T @ ref[0]), np.eye(5), atol=1e-10)
    with pytest.raises(ValueError, match="transpose"):
        lg.randomized_svd(a, 5, transpose="yes", device="cpu")
    with pytest.raises(ValueError, match="svd_lapack_driver"):
        lg.randomized_svd(a, 5, svd_lapack_driver="gesvj", device="cpu")


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_torch_sparse_tensors_equal_the_scipy_call_and_come_back_as_tensors(layout):
    torch = pytest.importorskip("torch")
    a = _sparse(np.random.default_rng(10), 300, 100).tocoo()
    t = torch.sparse_coo_tensor(np.vstack([a.row, a.col]), a.data, a.shape)
    t = t.to_sparse_csr() if layout == "csr" else t
    u, s, vt = lg.randomized_svd(t, 5)
    ref = lg.randomized_svd(a, 5)
    assert isinstance(u, torch.Tensor) and u.layout == torch.strided and u.dtype == torch.float64
    np.testing.assert_array_equal(s.numpy(), ref[1])
    np.testing.assert_array_equal(u.numpy(), ref[0])
    res = lg.pca(t.float(), 3)
    assert isinstance(res.components, torch.Tensor) and res.components.dtype == torch.float32
    on_emulator = lg.randomized_svd(t, 5, device="emulator")  # the emulator's kernels, torch results
    assert isinstance(on_emulator[0], torch.Tensor) and on_emulator[0].dtype == torch.float64
    tol = 1e3 * np.finfo(np.float64).eps * float(ref[1][0])
    np.testing.assert_allclose(on_emulator[1].numpy(), ref[1], rtol=0, atol=tol)


# --------------------------------------------------------------------------- randomized_eigsh


def _symmetric(rng, eigenvalues):
    v, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (v * eigenvalues) @ v.T


@pytest.mark.parametrize("selection", ["module", "value"])
def test_randomized_eigsh_against_eigh(selection):
    rng = np.random.default_rng(11)
    lam = np.concatenate([np.linspace(10, 1, 20), -np.linspace(12, 2, 15), 1e-3 * rng.standard_normal(165)])
    m = _symmetric(rng, lam)
    # 35 eigenvalues above 1 in magnitude: 'value' picks from them, so the basis gets them all.
    vals, vecs = lg.randomized_eigsh(m, 8, selection=selection, n_iter=6, n_oversamples=30)
    exact = np.sort(lam)[::-1] if selection == "value" else lam[np.argsort(-np.abs(lam))]
    np.testing.assert_allclose(vals, exact[:8], atol=1e-6 * np.abs(lam).max())
    np.testing.assert_allclose(m @ vecs, vecs * vals, atol=1e-4 * np.abs(lam).max())
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(8), atol=1e-10)
    sparse_vals, _ = lg.randomized_eigsh(sp.csr_matrix(m), 8, selection=selection, n_iter=6, n_oversamples=30)
    np.testing.assert_allclose(sparse_vals, vals, rtol=1e-10)


def test_randomized_eigsh_value_warns_when_it_cannot_vouch():
    rng = np.random.default_rng(12)
    # 30 eigenvalues of -100 fill a basis of 16 columns: no positive one is captured.
    m = _symmetric(rng, np.concatenate([np.full(30, -100.0), np.linspace(5, 1, 70)]))
    with pytest.warns(rangefinder.ResolutionWarning, match="widen n_oversamples"):
        lg.randomized_eigsh(m, 5, selection="value", n_oversamples=10, n_iter=2)


def test_randomized_eigsh_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        lg.randomized_eigsh(np.ones((4, 5)), 2)
    with pytest.raises(ValueError, match="selection"):
        lg.randomized_eigsh(np.eye(4), 2, selection="largest")


def test_pca_of_float32_data_whose_mean_dwarfs_its_spread_against_the_exact_covariance():
    # Mean 30, spread ~0.1: products of the uncentred matrix round at 300x the
    # centred scale.  Forming T^T Y from the uncentred pass would cancel at the
    # squared ratio (explained variance off by 0.21); the centred products keep
    # it at ~3e-5 (2.8e-5 measured), under 1e-4.
    x = _decaying(np.random.default_rng(6), 2000, 300, rate=0.05, shift=30.0).astype(np.float32)
    exact = np.linalg.eigvalsh(np.cov(x.astype(np.float64).T))[::-1][:10]
    np.testing.assert_allclose(lg.pca(x, 10).explained_variance, exact, rtol=1e-4)
