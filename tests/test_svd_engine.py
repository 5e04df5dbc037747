"""The SVD engine (liam_gpu.rangefinder) against float64 truth, on the inputs that break estimates.

Every error here is measured: ``||A - U S Vt||_F / ||A||_F`` in float64 from
the returned factors, and the optimal rank-k error from LAPACK's full SVD.
Tolerances: the estimate must be within a factor 2 of the truth wherever the
truth is above the dtype's resolution (the engine's documented contract), and
never below the resolution; ``tol`` mode must meet ``tol`` against the truth.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import rangefinder
from liam_gpu.backends import resolve


def _with_spectrum(rng, m, n, s):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (u * s) @ v.T


def _true_error(a, lr):
    a64 = np.asarray(a, dtype=np.float64)
    approx = (np.asarray(lr.U, np.float64) * np.asarray(lr.S, np.float64)) @ np.asarray(lr.Vt, np.float64)
    return np.linalg.norm(a64 - approx) / np.linalg.norm(a64)


def _optimal_error(a, k):
    s = np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)
    return np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2))


SPECTRA = {
    "steep": lambda rng: _with_spectrum(rng, 300, 80, np.logspace(0, -7, 80)),
    "flat": lambda rng: _with_spectrum(rng, 250, 90, 1.0 + 0.01 * rng.random(90)),
    "power-law": lambda rng: _with_spectrum(rng, 400, 120, np.arange(1, 121) ** -1.0),
    "rank-5": lambda rng: _with_spectrum(rng, 200, 60, np.array([5.0, 4, 3, 2, 1])),
    "constant": lambda rng: np.full((200, 50), 3.0),
    "tiled-rows": lambda rng: np.tile(rng.standard_normal((4, 70)), (50, 1)),
    "wide-steep": lambda rng: _with_spectrum(rng, 60, 300, np.logspace(0, -5, 60)),
}


# --------------------------------------------------------------------------- the reproducers


def test_constant_matrix_in_tol_mode_is_right_and_says_so():
    a = np.full((200, 50), 3.0, np.float32)
    lr = lg.svd_compress(a, tol=1e-3, device="cpu")
    assert lr.rank == 1
    assert lr.S[0] == pytest.approx(300.0, rel=1e-6)  # the truth: 3 sqrt(200 * 50)
    true = _true_error(a, lr)
    assert true <= 1e-3
    assert lr.relative_error == rangefinder.resolution(np.float32)  # "at most the resolution"
    assert lr.relative_error >= true


def test_tol_below_resolution_drives_the_rank_to_the_cap_and_warns():
    a = SPECTRA["steep"](np.random.default_rng(0)).astype(np.float32)
    with pytest.warns(rangefinder.ResolutionWarning, match="below the float32"):
        lr = lg.svd_compress(a, tol=1e-6, device="cpu")
    assert lr.rank == 80
    assert lr.relative_error == rangefinder.resolution(np.float32)
    assert _true_error(a, lr) <= lr.relative_error


def test_from_linear_with_tol_on_a_constant_weight_is_right():
    torch = pytest.importorskip("torch")
    from liam_gpu.torch import LowRankLinear

    lin = torch.nn.Linear(50, 200, bias=False)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    low = LowRankLinear.from_linear(lin, tol=1e-3)
    x = torch.randn(8, 50)
    torch.testing.assert_close(low(x), lin(x), rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- the estimate tells the truth


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_estimate_within_factor_two_of_the_truth(name, dtype):
    a = SPECTRA[name](np.random.default_rng(3)).astype(dtype)
    res = rangefinder.resolution(dtype)
    for k in (1, 3, 10, 30, 45):
        if k > min(a.shape):
            continue
        lr = lg.svd_compress(a, k, n_iter=2, device="cpu")
        true = _true_error(a, lr)
        assert lr.relative_error >= res
        if true >= res:
            assert true / 2 <= lr.relative_error <= 2 * true, (k, true, lr.relative_error)
        else:
            assert lr.relative_error <= 2 * res


@pytest.mark.parametrize("dtype,tols", [(np.float32, (0.3, 1e-1, 1e-2, 1e-3, 1e-4)),
                                        (np.float64, (1e-1, 1e-3, 1e-6, 1e-9))])
@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_tol_mode_meets_tol_against_the_truth(name, dtype, tols):
    a = SPECTRA[name](np.random.default_rng(4)).astype(dtype)
    for tol in tols:
        with warnings.catch_warnings():
            warnings.simplefilter("error", rangefinder.ResolutionWarning)
            lr = lg.svd_compress(a, tol=tol, device="cpu")
        true = _true_error(a, lr)
        assert true <= tol, (tol, lr.rank, true)
        assert lr.relative_error <= tol
        # Near-optimal rank: one less would not have met tol (up to the estimate's slack).
        if lr.rank > 1:
            assert _optimal_error(a, lr.rank - 1) > tol / 2, (tol, lr.rank)


@pytest.mark.parametrize("name", ["steep", "power-law", "flat", "wide-steep"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_within_five_percent_of_optimal_at_two_power_iterations(name, dtype):
    a = SPECTRA[name](np.random.default_rng(5)).astype(dtype)
    for k in (5, 20, 40):
        u, s, vt = lg.randomized_svd(a, k, n_iter=2, device="cpu")
        lr = lg.LowRank(u, s, vt)
        opt = _optimal_error(a, k)
        floor = 10 * np.finfo(dtype).eps  # the factors' own rounding
        assert _true_error(a, lr) <= 1.05 * opt + floor, (k, _true_error(a, lr), opt)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_above_the_numerical_rank_gives_orthonormal_factors_and_zero_tail(dtype):
    a = SPECTRA["rank-5"](np.random.default_rng(6)).astype(dtype)
    u, s, vt = lg.randomized_svd(a, 20, device="cpu")
    eps = np.finfo(dtype).eps
    assert np.abs(u.T @ u - np.eye(20)).max() <= 50 * eps * np.sqrt(20)
    assert np.abs(vt @ vt.T - np.eye(20)).max() <= 50 * eps * np.sqrt(20)
    np.testing.assert_allclose(s[:5], [5, 4, 3, 2, 1], rtol=20 * eps)
    assert np.all(s[5:] <= 20 * eps * s[0])


# --------------------------------------------------------------------------- fixed work


class _GramCounter:
    def __init__(self, monkeypatch, backend_name="cpu"):
        self.calls = 0
        backend = resolve(backend_name)
        original = type(backend).gram

        def counted(this, y, **kw):
            self.calls += 1
            return original(this, y, **kw)

        monkeypatch.setattr(type(backend), "gram", counted)


@pytest.mark.parametrize("fused_limit", [float("inf"), 0.0], ids=["fused", "unfused"])
@pytest.mark.parametrize("name", ["steep", "flat", "power-law", "rank-5", "constant"])
def test_gram_reductions_are_a_fixed_count_whatever_the_spectrum(name, fused_limit, monkeypatch):
    monkeypatch.setattr(rangefinder, "FUSED_LIMIT", fused_limit)  # every power step fused, or none
    a = SPECTRA[name](np.random.default_rng(7)).astype(np.float32)
    counter = _GramCounter(monkeypatch)
    q = 3
    lg.randomized_svd(a, 10, n_iter=q, device="cpu")
    assert counter.calls == 2 * q + 6


# --------------------------------------------------------------------------- paths and bad input


def test_dense_switch_when_the_rank_is_a_large_share(monkeypatch):
    rng = np.random.default_rng(8)
    a = rng.standard_normal((400, 1800)).astype(np.float32)
    calls = []
    from liam_gpu.operators import DenseOperator

    original = DenseOperator.dense_svd
    monkeypatch.setattr(DenseOperator, "dense_svd", lambda self: calls.append(1) or original(self))
    lr = lg.svd_compress(a, tol=0.5, device="cpu")
    assert calls == [1]
    assert _true_error(a, lr) <= 0.5
    assert _optimal_error(a, lr.rank - 1) > 0.5  # the dense path's rank is the optimal one


@pytest.mark.parametrize("device", ["cpu", "emulator"])
def test_nan_in_a_stack_of_small_matrices_names_a(device):
    if device == "emulator":
        pytest.importorskip("liam_gpu.emulator")
    a = np.random.default_rng(9).standard_normal((3, 20, 10))
    a[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match="a contains NaN or Inf"):
        lg.svd_compress(a, 3, device=device)
    with pytest.raises(ValueError, match="a contains NaN or Inf"):
        lg.randomized_svd(a, 3, device=device)


def test_overflow_scale_input_is_refused_the_same_way_in_both_modes():
    a = 1e200 * np.random.default_rng(10).standard_normal((120, 40))
    with pytest.raises(ValueError, match="overflow"):
        lg.svd_compress(a, 5, device="cpu")
    with pytest.raises(ValueError, match="overflow"):
        lg.svd_compress(a, tol=1e-2, device="cpu")


def test_randomized_svd_of_huge_but_finite_input_scales_exactly():
    b = np.random.default_rng(11).standard_normal((120, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        _, s_big, _ = lg.randomized_svd(1e200 * b, 5, device="cpu")
    _, s, _ = lg.randomized_svd(b, 5, device="cpu")
    np.testing.assert_allclose(s_big / 1e200, s, rtol=1e-10)


# --------------------------------------------------------------------------- one engine for Dask


@pytest.mark.parametrize("chunks", [(300,), (100, 100, 100), (7, 93, 150, 50)])
def test_dask_equals_the_in_memory_call_for_any_row_chunking(chunks):
    da = pytest.importorskip("dask.array")
    import dask

    from liam_gpu import dask as ldask

    a = _with_spectrum(np.random.default_rng(12), 300, 60, np.logspace(0, -3, 60))
    ref = lg.svd_compress(a, 10, random_state=3, device="cpu")
    with dask.config.set(scheduler="synchronous"):
        lr = ldask.svd_compress(da.from_array(a, chunks=(chunks, 60)), 10, random_state=3)
        u = lr.U.compute()
    np.testing.assert_allclose(lr.S, ref.S, rtol=1e-12)
    np.testing.assert_allclose(u, ref.U, atol=1e-10)
    np.testing.assert_allclose(lr.Vt, ref.Vt, atol=1e-10)
    assert lr.relative_error == pytest.approx(ref.relative_error, rel=1e-9)


def test_more_than_one_batch_axis_equals_the_items():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((2, 3, 100, 70))  # too big for the batched kernel: the engine, item by item
    u, s, vt = lg.randomized_svd(a, 4, random_state=2, device="cpu")
    assert u.shape == (2, 3, 100, 4) and s.shape == (2, 3, 4) and vt.shape == (2, 3, 4, 70)
    for i, j in ((0, 0), (1, 2)):
        ui, si, vti = lg.randomized_svd(a[i, j], 4, random_state=2, device="cpu")
        np.testing.assert_array_equal(s[i, j], si)
        np.testing.assert_array_equal(u[i, j], ui)
        np.testing.assert_array_equal(vt[i, j], vti)


@pytest.mark.parametrize("block", [1, 7 * 5, 10**9])
def test_cpu_gram_and_triangular_apply_by_row_blocks_equal_the_float64_truth(monkeypatch, block):
    # The CPU backend widens float32 Y to float64 by row blocks (ragged last block
    # included): the Gram matrix and Y R^-1 are those of one float64 copy, to
    # float64 rounding of their sums (float32 rounding of the apply's result).
    from liam_gpu.backends import cpu

    monkeypatch.setattr(cpu, "_GRAM_BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(3)
    y = rng.standard_normal((103, 5)).astype(np.float32)
    y0 = y.copy()
    backend = resolve("cpu")
    y64 = y.astype(np.float64)
    g = backend.gram(y)
    want = y64.T @ y64
    bound = 103 * 2.0**-52 * (np.abs(y64).T @ np.abs(y64))
    assert g.dtype == np.float64 and np.all(np.abs(g - want) <= bound)
    r = np.linalg.cholesky(want).T
    q = backend.tri_apply(y, r)
    exact = y64 @ np.linalg.inv(r)
    assert q.dtype == np.float32
    assert np.all(np.abs(q - exact) <= 2.0**-23 * np.abs(exact) + 5 * 2.0**-52 * (np.abs(y64) @ np.abs(np.linalg.inv(r))))
    assert np.array_equal(y, y0)


def test_cpu_gram_of_zero_rows_is_the_zero_matrix():
    """The widened (float32 -> float64) Gram reduction by row blocks, on a block with no rows (a Dask
    chunk can have none): the exact answer, zeros, not a crash."""
    from liam_gpu.backends.cpu import CpuBackend

    for dtype in (np.float32, np.float64):
        g = CpuBackend().gram(np.zeros((0, 3), dtype))
        assert g.dtype == np.float64
        np.testing.assert_array_equal(g, np.zeros((3, 3)))
