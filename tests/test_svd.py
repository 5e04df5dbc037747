"""randomized_svd and svd_compress: accuracy against scikit-learn and the truth, backends, input checks.

Matrices are built as ``U diag(s) V^T`` with known singular values ``s`` (a
float64 construction), so errors are measured against the exact spectrum:

* spectral error ratio ``||A - U S Vt||_2 / sigma_{k+1}`` (1 is optimal);
* top-k error ``max_i |S_i - sigma_i| / sigma_1``.

Tolerances come from scikit-learn's own spread over seeds, or from the unit
roundoff of the dtype.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import rangefinder
from liam_gpu import svd as svd_module

sklearn_extmath = pytest.importorskip("sklearn.utils.extmath")
threadpoolctl = pytest.importorskip("threadpoolctl")

SEEDS = range(5)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # These are accuracy tests on small matrices.  With two BLAS threads per
    # pool (numpy's and scipy's OpenBLAS, which scikit-learn also calls) on a
    # busy 2-core CI machine, the waiting threads spin and the small calls run
    # tens of times slower; one thread keeps the module fast.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


# --------------------------------------------------------------------------- matrices


def _orthonormal(rng, rows, cols):
    return np.linalg.qr(rng.standard_normal((rows, cols)))[0]


def _with_spectrum(rng, m, n, s):
    r = len(s)
    return (_orthonormal(rng, m, r) * s) @ _orthonormal(rng, n, r).T


def _family(name, rng):
    """(matrix float64, exact singular values, k) of one test family."""
    m, n, k = 240, 120, 10
    i = np.arange(n, dtype=np.float64)
    if name == "low_rank_plus_noise":
        s = np.concatenate([np.linspace(10, 5, k), np.zeros(n - k)])
        a = _with_spectrum(rng, m, n, s) + 0.05 * rng.standard_normal((m, n))
        return a, np.linalg.svd(a, compute_uv=False), k
    if name == "fast_decay":
        s = np.exp(-i / 3)
    elif name == "slow_decay":
        s = 1 / (1 + i) ** 0.5
    elif name == "reference_family":  # the shape of peers.md's matrix: exp(-i/20) + 1e-3, at k/20 scale
        s = np.exp(-i / 4) + 1e-3
    elif name == "ill_conditioned":  # singular values down to 1e-7 relative
        s = np.logspace(0, -7, n)
    elif name == "exact_rank_below_k":
        s = np.concatenate([np.linspace(3, 1, 6), np.zeros(n - 6)])
    elif name == "wide":
        s = np.exp(-i / 5)
        return _with_spectrum(rng, n, m, s), s, k
    else:
        raise KeyError(name)
    return _with_spectrum(rng, m, n, s), s, k


FAMILIES = ["low_rank_plus_noise", "fast_decay", "slow_decay", "reference_family", "ill_conditioned",
            "exact_rank_below_k", "wide"]


def _errors(a64, s_true, k, u, s, vt):
    residual = a64 - (u.astype(np.float64) * s.astype(np.float64)) @ vt.astype(np.float64)
    spectral = np.linalg.norm(residual, 2)
    floor = s_true[k] if s_true[k] > 0 else s_true[0]
    return spectral / floor, np.max(np.abs(s.astype(np.float64) - s_true[:k])) / s_true[0]


# --------------------------------------------------------------------------- accuracy vs scikit-learn


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_iter", [1, 2])
def test_no_worse_than_sklearn_over_seeds(family, n_iter):
    a, s_true, k = _family(family, np.random.default_rng(7))
    ours, theirs = [], []
    for seed in SEEDS:
        ours.append(_errors(a, s_true, k, *lg.randomized_svd(a, k, n_iter=n_iter, random_state=seed, device="cpu")))
        theirs.append(_errors(a, s_true, k, *sklearn_extmath.randomized_svd(a, k, n_iter=n_iter, random_state=seed)))
    ours, theirs = np.array(ours), np.array(theirs)
    spread = theirs.max(axis=0) - theirs.min(axis=0)
    # Median over seeds no worse than scikit-learn's median plus its own seed spread
    # (and plus float64 rounding, which is all the spread is for exact-rank matrices).
    slack = spread + 1e3 * np.finfo(np.float64).eps
    assert np.all(np.median(ours, axis=0) <= np.median(theirs, axis=0) + slack), (ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_as_good_as_float64_until_rounding(family):
    a, s_true, k = _family(family, np.random.default_rng(11))
    e64 = _errors(a, s_true, k, *lg.randomized_svd(a, k, n_iter=2, device="cpu"))
    u, s, vt = lg.randomized_svd(a.astype(np.float32), k, n_iter=2, device="cpu")
    assert u.dtype == s.dtype == vt.dtype == np.float32
    e32 = _errors(a, s_true, k, u, s, vt)
    # float32 can only be asked to match float64 down to ~1e-6 of sigma_1:
    # 16 unit roundoffs of the data (itself rounded to float32) and the result.
    floor = 16 * np.finfo(np.float32).eps / 2
    spectral_floor = floor * s_true[0] / (s_true[k] if s_true[k] > 0 else s_true[0])
    assert e32[0] <= max(e64[0] * 1.01, 1 + spectral_floor), (e32, e64)
    assert e32[1] <= max(e64[1] * 1.01, floor), (e32, e64)


def _reflected(rng, x, reflectors=4, side="left"):
    """``H_1 ... H_r x`` (or ``x H_r ... H_1``) for random Householder reflectors: a cheap orthogonal factor."""
    for _ in range(reflectors):
        w = rng.standard_normal(x.shape[0] if side == "left" else x.shape[1])
        w /= np.linalg.norm(w)
        if side == "left":
            x = x - 2 * np.outer(w, w @ x)
        else:
            x = x - 2 * np.outer(x @ w, w)
    return x


def test_reference_matrix_of_peers_md():
    """peers.md's 8000 x 2000 float32 benchmark spectrum, k = 32, p = 10, q = 2.

    The singular values are exactly peers.md's (exp(-i/20) + 1e-3); the
    singular vectors come from products of Householder reflectors instead of
    two large QR factorizations.  A Gaussian sketch sees the spectrum only
    (``A Omega`` has the distribution of ``U S (V^T Omega)`` with ``V^T Omega``
    Gaussian again), so the expected accuracy is the same as on peers.md's
    matrix, which bench/bench_svd.py uses.
    """
    from scipy.sparse.linalg import LinearOperator, svds

    rng = np.random.default_rng(12345)
    m, n, k = 8000, 2000, 32
    s_true = np.exp(-np.arange(n) / 20) + 1e-3
    a64 = np.zeros((m, n))
    a64[:n] = _reflected(rng, np.diag(s_true), side="right")
    a64 = _reflected(rng, a64, side="left")
    a = a64.astype(np.float32)
    for seed in range(2):
        u, s, vt = lg.randomized_svd(a, k, n_oversamples=10, n_iter=2, random_state=seed, device="cpu")
        us, vs = u.astype(np.float64) * s, vt.astype(np.float64)
        op = LinearOperator((m, n), dtype=np.float64,
                            matvec=lambda x: a64 @ x - us @ (vs @ x),
                            rmatvec=lambda y: a64.T @ y - vs.T @ (us.T @ y))
        spectral = svds(op, k=1, return_singular_vectors=False, tol=1e-5)[0]
        # peers.md, q = 2: torch 1.000014, scikit-learn 1.000023, fbpca 1.000208
        # (seed noise); top-k errors 7.2e-4 .. 5.4e-3 relative.
        assert spectral / s_true[k] <= 1.001
        assert np.max(np.abs(s - s_true[:k]) / s_true[:k]) <= 1e-2


# --------------------------------------------------------------------------- exactness and shapes


@pytest.mark.parametrize("m,n,k", [(40, 12, 5), (12, 40, 5), (30, 30, 25)])
def test_tiny_matrices_are_factored_exactly(m, n, k, rng):
    # min(m, n) <= k + p: the sketch spans the whole range.
    a = rng.standard_normal((m, n))
    u, s, vt = lg.randomized_svd(a, k, device="cpu")
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False)[:k], rtol=0,
                               atol=100 * np.finfo(np.float64).eps * np.linalg.norm(a, 2))
    assert u.shape == (m, k) and vt.shape == (k, n)


def test_exact_rank_below_k_gives_orthonormal_factors(rng):
    a = _with_spectrum(rng, 200, 90, np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    for dtype in (np.float64, np.float32):
        u, s, vt = lg.randomized_svd(a.astype(dtype), 12, device="cpu")
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(s[:5], [5, 4, 3, 2, 1], rtol=100 * eps)
        assert np.all(np.abs(s[5:]) <= 100 * eps * 5)
        np.testing.assert_allclose(u.T @ u, np.eye(12), atol=100 * eps)
        np.testing.assert_allclose(vt @ vt.T, np.eye(12), atol=100 * eps)


def test_zero_matrix(rng):
    u, s, vt = lg.randomized_svd(np.zeros((50, 20)), 3, device="cpu")
    assert np.all(s == 0)
    np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-12)


def test_sign_convention_is_sklearns(rng):
    a, _, k = _family("fast_decay", rng)
    u, s, vt = lg.randomized_svd(a, k, device="cpu")
    rows = np.argmax(np.abs(u), axis=0)
    assert np.all(u[rows, np.arange(k)] > 0)
    us, ss, vts = sklearn_extmath.randomized_svd(a, k, random_state=0)
    # well-separated spectrum: the same vectors, with the same signs
    np.testing.assert_allclose(u[:, :5], us[:, :5], atol=1e-8)
    np.testing.assert_allclose(vt[:5], vts[:5], atol=1e-8)
    # without flipping, reconstruction is the same
    u2, s2, vt2 = lg.randomized_svd(a, k, device="cpu", flip_sign=False)
    np.testing.assert_allclose((u2 * s2) @ vt2, (u * s) @ vt, atol=1e-12)


@pytest.mark.parametrize("normalizer", ["auto", "QR", "LU", "none"])
def test_power_iteration_normalizers(normalizer):
    a, s_true, k = _family("reference_family", np.random.default_rng(3))
    ratio, top = _errors(a, s_true, k, *lg.randomized_svd(a, k, n_iter=3, power_iteration_normalizer=normalizer,
                                                           device="cpu"))
    theirs = _errors(a, s_true, k, *sklearn_extmath.randomized_svd(a, k, n_iter=3, random_state=0,
                                                                  power_iteration_normalizer=normalizer))
    assert ratio <= max(theirs[0], 1.0) * 1.01


def test_n_iter_auto_rule_is_sklearns():
    assert svd_module._n_iter("auto", 9, 100) == 7
    assert svd_module._n_iter("auto", 10, 100) == 4
    assert svd_module._n_iter(3, 10, 100) == 3


def test_stack_equals_items_bitwise(rng):
    stack = np.stack([_family("fast_decay", np.random.default_rng(i))[0][:150, :80] for i in range(3)])
    u, s, vt = lg.randomized_svd(stack, 6, device="cpu")
    assert u.shape == (3, 150, 6) and s.shape == (3, 6) and vt.shape == (3, 6, 80)
    for i in range(3):
        ui, si, vti = lg.randomized_svd(stack[i], 6, device="cpu")
        np.testing.assert_array_equal(u[i], ui)
        np.testing.assert_array_equal(s[i], si)
        np.testing.assert_array_equal(vt[i], vti)


def test_stack_of_small_matrices_gets_the_exact_svd(rng):
    stack = rng.standard_normal((7, 30, 12)).astype(np.float32)
    u, s, vt = lg.randomized_svd(stack, 4, device="cpu")
    ref = np.linalg.svd(stack.astype(np.float64), compute_uv=False)[:, :4]
    assert np.all(np.abs(s - ref) <= 50 * np.finfo(np.float32).eps * ref[:, :1])
    assert np.all(u[np.arange(7)[:, None], np.argmax(np.abs(u), axis=1), np.arange(4)] > 0)


def test_f_contiguous_input_is_read_in_place(rng):
    a, _, k = _family("fast_decay", rng)
    fortran = np.asfortranarray(a)
    u, s, vt = lg.randomized_svd(fortran, k, device="cpu")
    u2, s2, vt2 = lg.randomized_svd(np.ascontiguousarray(a), k, device="cpu")
    np.testing.assert_allclose(s, s2, rtol=1e-12)
    np.testing.assert_allclose((u * s) @ vt, (u2 * s2) @ vt2, atol=1e-12)


def test_no_copy_of_a(rng):
    a = rng.standard_normal((4000, 600)).astype(np.float32)  # 9.6 MB
    lg.randomized_svd(a, 10, n_iter=2, device="cpu")  # warm up imports and caches
    tracemalloc.start()
    try:
        lg.randomized_svd(a, 10, n_iter=2, device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # O((m + n) l) work memory (a few float64 m x l blocks), far below one copy of A.
    assert peak < a.nbytes / 4, peak


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    a, s_true, k = _family("fast_decay", np.random.default_rng(5))
    t = torch.from_numpy(a.astype(np.float32))
    u, s, vt = lg.randomized_svd(t, k, device="cpu")
    assert all(isinstance(x, torch.Tensor) for x in (u, s, vt))
    assert u.dtype == torch.float32
    np.testing.assert_allclose(s.numpy(), s_true[:k], rtol=1e-4, atol=1e-5)
    lr = lg.svd_compress(t, 5, device="cpu")
    assert isinstance(lr.U, torch.Tensor)


# --------------------------------------------------------------------------- reproducibility and backends


def test_same_seed_is_bitwise_identical_and_seeds_differ(backend_name, rng):
    a = rng.standard_normal((90, 40))
    first = lg.randomized_svd(a, 4, n_oversamples=4, n_iter=1, random_state=17, device=backend_name)
    again = lg.randomized_svd(a, 4, n_oversamples=4, n_iter=1, random_state=17, device=backend_name)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    other = lg.randomized_svd(a, 4, n_oversamples=4, n_iter=1, random_state=18, device=backend_name)
    assert not np.array_equal(first[0], other[0])


def test_random_state_kinds():
    a = np.random.default_rng(0).standard_normal((60, 30))
    by_int = lg.randomized_svd(a, 3, random_state=5, device="cpu")
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(lg.randomized_svd(a, 3, random_state=g1, device="cpu")[0],
                                  lg.randomized_svd(a, 3, random_state=g2, device="cpu")[0])
    np.random.seed(3)
    first = lg.randomized_svd(a, 3, random_state=None, device="cpu")
    np.random.seed(3)
    np.testing.assert_array_equal(first[0], lg.randomized_svd(a, 3, random_state=None, device="cpu")[0])
    assert by_int[0].shape == (60, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(160, 60), (50, 130)], ids=["tall", "wide"])
def test_backends_agree_with_cpu(backend_name, dtype, shape):
    if backend_name == "cpu":
        pytest.skip("the reference itself")
    m, n = shape
    i = np.arange(min(m, n))
    a = _with_spectrum(np.random.default_rng(2), m, n, np.exp(-i / 4)).astype(dtype)
    got = lg.randomized_svd(a, 6, n_oversamples=6, n_iter=2, device=backend_name)
    ref = lg.randomized_svd(a, 6, n_oversamples=6, n_iter=2, device="cpu")
    # Same Omega up to a few ulp, same algorithm: results agree to rounding,
    # amplified at most by the gaps of this well-separated spectrum.
    tol = 1e3 * np.finfo(dtype).eps
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=tol)
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=tol)
    np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=tol)


def test_backends_agree_on_small_stacks_and_tol(backend_name):
    rng = np.random.default_rng(4)
    stack = rng.standard_normal((3, 20, 8))
    u, s, vt = lg.randomized_svd(stack, 3, device=backend_name)
    ref = np.linalg.svd(stack, compute_uv=False)[:, :3]
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    i = np.arange(40)
    a = _with_spectrum(rng, 90, 40, np.exp(-i / 3))
    lr = lg.svd_compress(a, tol=1e-3, device=backend_name)
    ref_lr = lg.svd_compress(a, tol=1e-3, device="cpu")
    assert lr.rank == ref_lr.rank
    np.testing.assert_allclose(lr.relative_error, ref_lr.relative_error, rtol=1e-6)


# --------------------------------------------------------------------------- fused power pass


@pytest.mark.parametrize("trans", [False, True], ids=["A", "A^T"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_power_pass_equals_the_two_products(backend_name, trans, dtype, monkeypatch):
    from liam_gpu.backends import cpu, resolve

    # Small blocks, so that the CPU's blocked loop runs over several (ragged) blocks.
    monkeypatch.setattr(cpu, "_PASS_BLOCK_BYTES", 64 * 40 * np.dtype(dtype).itemsize)
    backend = resolve(backend_name)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 203) if trans else (203, 40)).astype(dtype)
    z = rng.standard_normal((40, 7)).astype(dtype)
    y, v = backend.power_pass(backend.asarray(a), backend.asarray(z), trans=trans)
    op = (a.T if trans else a).astype(np.float64)
    y_ref = op @ z.astype(np.float64)
    v_ref = op.T @ y_ref
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(backend.to_host(y), y_ref, rtol=0, atol=50 * eps * np.abs(y_ref).max())
    np.testing.assert_allclose(backend.to_host(v), v_ref, rtol=0, atol=500 * eps * np.abs(v_ref).max())


def test_fused_and_unfused_power_iterations_agree(monkeypatch):
    a, s_true, k = _family("reference_family", np.random.default_rng(9))
    fused = lg.randomized_svd(a, k, n_iter=3, device="cpu")
    monkeypatch.setattr(rangefinder, "FUSED_LIMIT", 0.0)  # every step the unfused way
    unfused = lg.randomized_svd(a, k, n_iter=3, device="cpu")
    np.testing.assert_allclose(fused[1], unfused[1], rtol=1e-10)
    np.testing.assert_allclose((fused[0] * fused[1]) @ fused[2], (unfused[0] * unfused[1]) @ unfused[2],
                               atol=1e-10 * s_true[0])


# --------------------------------------------------------------------------- CholeskyQR and its fallbacks


def _graded(rng, m, l, cond, dtype):
    """An m x l matrix with singular values from 1 down to 1/cond."""
    return _with_spectrum(rng, m, l, np.logspace(0, -np.log10(cond), l)).astype(dtype)


@pytest.mark.parametrize("dtype,cond", [(np.float32, 10.0), (np.float32, 1e6), (np.float64, 1e3), (np.float64, 1e12)])
def test_cholesky_qr_orthonormal_to_working_precision(backend_name, dtype, cond):
    from liam_gpu.backends import resolve
    from liam_gpu.cholqr import orthonormalize as cholesky_qr

    backend = resolve(backend_name)
    y = _graded(np.random.default_rng(1), 300, 24, cond, dtype)
    q, r = cholesky_qr(backend, backend.asarray(y))
    q = backend.to_host(q).astype(np.float64)
    eps = np.finfo(dtype).eps
    # Orthonormal to a few eps times sqrt(l); Y = QR to a few eps of ||Y||.
    assert np.abs(q.T @ q - np.eye(24)).max() <= 10 * np.sqrt(24) * eps
    assert np.abs(q @ r - y).max() <= 10 * np.sqrt(24) * eps * np.abs(y).max()
    assert np.allclose(r, np.triu(r))


@pytest.mark.parametrize("make", [
    lambda rng: np.zeros((50, 6)),
    lambda rng: np.repeat(rng.standard_normal((50, 1)), 6, axis=1),
    lambda rng: _with_spectrum(rng, 50, 6, np.array([1.0, 1.0, 0, 0, 0, 0])),
], ids=["zero", "repeated-column", "rank-2"])
def test_cholesky_qr_of_rank_deficient_blocks_is_still_orthonormal(backend_name, make):
    from liam_gpu.backends import resolve
    from liam_gpu.cholqr import orthonormalize as cholesky_qr

    backend = resolve(backend_name)
    y = make(np.random.default_rng(2))
    q, r = cholesky_qr(backend, backend.asarray(y))
    q = backend.to_host(q)
    assert np.abs(q.T @ q - np.eye(6)).max() <= 1e-12
    assert np.abs(q @ r - y).max() <= 1e-12 * max(1.0, np.abs(y).max())


# --------------------------------------------------------------------------- svd_compress


def test_compress_fixed_rank_and_its_error_estimate(rng):
    a, s_true, _ = _family("reference_family", rng)
    lr = lg.svd_compress(a, 12, device="cpu")
    assert isinstance(lr, lg.LowRank) and lr.rank == 12 and lr.shape == a.shape
    true = np.linalg.norm(a - np.asarray(lr)) / np.linalg.norm(a)
    assert lr.relative_error == pytest.approx(true, rel=1e-6)
    default = lg.svd_compress(a[:40, :20], device="cpu")
    assert default.rank == 20  # min(32, min(m, n))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tol", [0.3, 3e-2, 3e-3])
def test_compress_to_tolerance_finds_a_near_optimal_rank(dtype, tol):
    rng = np.random.default_rng(8)
    a = _with_spectrum(rng, 240, 120, np.exp(-np.arange(120) / 8)).astype(dtype)  # optimal ranks ~5, 14, 23
    lr = lg.svd_compress(a, tol=tol, device="cpu")
    a64 = a.astype(np.float64)
    true = np.linalg.norm(a64 - np.asarray(lr)) / np.linalg.norm(a64)
    s = np.linalg.svd(a64, compute_uv=False)
    tails = np.sqrt(np.maximum(np.sum(s**2) - np.cumsum(s**2), 0) / np.sum(s**2))
    optimal = int(np.argmax(tails <= tol)) + 1
    assert true <= tol * (1 + 1e-3)
    assert lr.relative_error <= tol
    assert lr.relative_error == pytest.approx(true, rel=1e-2)
    assert optimal <= lr.rank <= optimal + max(2, optimal // 10)


def test_compress_max_rank_and_stacks(rng):
    i = np.arange(60)
    stack = np.stack([_with_spectrum(rng, 300, 60, np.exp(-i / d)) for d in (2.0, 6.0)])
    lr = lg.svd_compress(stack, tol=1e-2, device="cpu")
    ranks = [lg.svd_compress(stack[j], tol=1e-2, device="cpu").rank for j in range(2)]
    assert lr.rank == max(ranks) and lr.relative_error.shape == (2,)
    assert np.all(lr.relative_error <= 1e-2)
    with pytest.warns(rangefinder.ResolutionWarning, match="not reached within the rank cap 8"):
        capped = lg.svd_compress(stack[1], tol=1e-6, max_rank=8, device="cpu")
    assert capped.rank == 8 and capped.relative_error > 1e-6


def test_scheduler_device_delegates(rng):
    from liam_gpu import Scheduler

    stack = rng.standard_normal((4, 30, 10))
    got = lg.svd_compress(stack, 3, device=Scheduler(["cpu"]))
    ref = lg.svd_compress(stack, 3, device="cpu")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,exc,match", [
    (lambda a: lg.randomized_svd(a, 0), ValueError, "n_components"),
    (lambda a: lg.randomized_svd(a, 21), ValueError, "n_components"),
    (lambda a: lg.randomized_svd(a, 2.5), TypeError, "n_components"),
    (lambda a: lg.randomized_svd(a, 2, n_oversamples=-1), ValueError, "n_oversamples"),
    (lambda a: lg.randomized_svd(a, 2, n_iter="many"), ValueError, "n_iter"),
    (lambda a: lg.randomized_svd(a, 2, n_iter=-1), ValueError, "n_iter"),
    (lambda a: lg.randomized_svd(a, 2, power_iteration_normalizer="qr"), ValueError, "power_iteration_normalizer"),
    (lambda a: lg.randomized_svd(a, 2, random_state=-3), ValueError, "random_state"),
    (lambda a: lg.randomized_svd(a, 2, random_state="x"), TypeError, "random_state"),
    (lambda a: lg.svd_compress(a, 0), ValueError, "k=0"),
    (lambda a: lg.svd_compress(a, 21), ValueError, "k=21"),
    (lambda a: lg.svd_compress(a, tol=0.0), ValueError, "tol"),
    (lambda a: lg.svd_compress(a, tol=1.0), ValueError, "tol"),
    (lambda a: lg.svd_compress(a, tol="small"), TypeError, "tol"),
    (lambda a: lg.svd_compress(a, 3, tol=0.1), ValueError, "not both"),
    (lambda a: lg.svd_compress(a, 3, max_rank=5), ValueError, "max_rank"),
    (lambda a: lg.svd_compress(a, tol=0.1, max_rank=0), ValueError, "max_rank"),
])
def test_bad_arguments(call, exc, match):
    a = np.random.default_rng(0).standard_normal((30, 20))
    with pytest.raises(exc, match=match):
        call(a)


@pytest.mark.parametrize("fn", [lambda a: lg.randomized_svd(a, 1, device="cpu"),
                                lambda a: lg.svd_compress(a, 1, device="cpu")])
def test_bad_matrices(fn):
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(np.array([[1.0, np.inf], [0.0, 1.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        fn(np.ones(5))
    with pytest.raises(TypeError, match="complex"):
        fn(np.ones((3, 3), dtype=complex))
