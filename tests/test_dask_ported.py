"""dask's own tests of ``dask.array.linalg.svd_compressed``, run on ``liam_gpu.dask.svd_compress``.

Source: ``dask/array/tests/test_linalg.py`` of dask/dask, as shipped with the
dask installed here (2026.8.0; the same tests, with ``iterator`` given as a
pair, are in the repository's history): ``test_svd_compressed_compute``,
``test_svd_compressed``, ``test_svd_compressed_dtype_preservation``,
``test_svd_compressed_deterministic`` and ``test_svd_compressed_shapes``.  The
assertions are unchanged; each test says what was adapted and why.

The entry point is :func:`svd_compressed` below, a thin adapter with dask's
signature over ``liam_gpu.dask.svd_compress`` (which returns a ``LowRank``):

* ``n_power_iter`` is our ``n_iter`` (dask's default 0 kept, not our ``"auto"``);
  ``n_oversamples`` and ``seed`` (our ``random_state``) mean the same.
* ``iterator``: ``"power"`` and ``"QR"`` are both accepted and both run our
  iterations, which are
  normalized after every product -- dask's ``"QR"``; dask's unnormalized
  ``"power"`` loses all but the leading directions on steep spectra
  (``docs/distributed.md``), so it is not reproduced.
* ``compute``: ours always computes each pass over the input (the mode
  dask's ``compute=True`` selects, for data larger than memory); there is no
  lazy graph of the whole algorithm to build instead.
* ``U, S, Vt``: the factor along ``a``'s chunked axis (for a grid of chunks,
  or one chunk, along its longer side) is a Dask array in ``a``'s chunks, the
  other two are numpy arrays on the client.  dask's assertions
  (``assert_eq``, ``da.compute``, ``.compute()`` of expressions mixing them)
  accept either.

Every test runs on dask's own chunkings, grids of chunks (``(10, 10)``,
``(5, 5)``, ``(5, 10)``/``(10, 5)``) included: ours multiplies block by
block and sums over the contracted block axis, without rechunking.  (They
ran on ``x.rechunk({1: -1})`` while grids were refused.)
:func:`test_grid_chunks_give_the_whole_rows_result` (not dask's) checks that
those grids give the factors of the whole-rows chunking to rounding.

Differences by design, and what is ported of them:

* ``assert len(v.dask) < len(vv.dask)`` in ``test_svd_compressed_compute``
  compares the graph sizes of dask's ``compute=True`` and ``compute=False``
  modes; ours has only the first, and ``Vt`` is a numpy array, so only the
  other assertion, ``assert_eq(v, vv)``, applies.
* ``svd_compressed`` clamps ``k`` to ``min(m, n)``; ours refuses a larger
  ``k`` (a ``ValueError`` naming ``k``).  ``test_svd_compressed_shapes`` asks
  for ``k = 5 <= min(m, n)`` throughout, so it runs unchanged.
* dask's ``compression_level``/``compression_matrix`` (sketch width
  ``min(max(20, k + p), n)``, a Gaussian ``Omega`` from ``default_rng``) have
  no tests of their own in dask's suite; ours sketches ``k + p`` columns
  rounded up to a multiple of 8 from the Philox stream
  (``liam_gpu.rangefinder.sketch_width``), so there is nothing of them to port.
"""
from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("scipy.linalg")

import scipy.linalg  # noqa: E402
from dask.array.utils import assert_eq  # noqa: E402

from bounds import rounding_bounds  # noqa: E402
from liam_gpu import dask as ldask  # noqa: E402


def svd_compressed(a, k, iterator="power", n_power_iter=0, n_oversamples=10, seed=None, compute=False):
    """dask's ``svd_compressed`` signature over ``liam_gpu.dask.svd_compress`` (see the module notes)."""
    assert iterator in ("power", "QR")  # both: our normalized iterations (see the module notes)
    lr = ldask.svd_compress(a, k, n_iter=n_power_iter, n_oversamples=n_oversamples, random_state=seed)
    return lr.U, lr.S, lr.Vt


# --------------------------------------------------------------------------- ported


@pytest.mark.parametrize("iterator", ["power", "QR"])
def test_svd_compressed_compute(iterator):
    x = da.ones((100, 100), chunks=(10, 10))
    u, s, v = svd_compressed(x, k=2, iterator=iterator, n_power_iter=1, compute=True, seed=123)
    uu, ss, vv = svd_compressed(x, k=2, iterator=iterator, n_power_iter=1, seed=123)

    # dask: assert len(v.dask) < len(vv.dask) -- the graph sizes of its two modes; not applicable.
    assert_eq(v, vv)


@pytest.mark.parametrize("iterator", [("power", 2), ("QR", 2)])
def test_svd_compressed(iterator):
    m, n = 100, 50
    r = 5
    a = da.random.default_rng().random((m, n), chunks=(m, n))

    # calculate approximation and true singular values
    u, s, vt = svd_compressed(a, 2 * r, iterator=iterator[0], n_power_iter=iterator[1], seed=4321)  # worst case
    s_true = scipy.linalg.svd(a.compute(), compute_uv=False)

    # compute the difference with original matrix
    norm = scipy.linalg.norm((a - (u[:, :r] * s[:r]) @ vt[:r, :]).compute(), 2)

    # ||a-a_hat||_2 <= (1+tol)s_{k+1}: based on eq. 1.10/1.11:
    # Halko, Nathan, Per-Gunnar Martinsson, and Joel A. Tropp.
    # "Finding structure with randomness: Probabilistic algorithms for constructing
    # approximate matrix decompositions." SIAM review 53.2 (2011): 217-288.
    frac = norm / s_true[r + 1] - 1
    # Tolerance determined via simulation to be slightly above max norm of difference matrix in 10k samples.
    # See https://github.com/dask/dask/pull/6799#issuecomment-726631175 for more details.
    tol = 0.4
    assert frac < tol

    assert_eq(np.eye(r, r), da.dot(u[:, :r].T, u[:, :r]))  # u must be orthonormal
    assert_eq(np.eye(r, r), da.dot(vt[:r, :], vt[:r, :].T))  # v must be orthonormal


@pytest.mark.parametrize("input_dtype, output_dtype", [(np.float32, np.float32), (np.float64, np.float64)])
def test_svd_compressed_dtype_preservation(input_dtype, output_dtype):
    x = da.random.default_rng().random((50, 50), chunks=(50, 50)).astype(input_dtype)
    u, s, vt = svd_compressed(x, 1, seed=4321)
    assert u.dtype == s.dtype == vt.dtype == output_dtype


def test_svd_compressed_deterministic():
    m, n = 30, 25
    x = da.random.default_rng(1234).random(size=(m, n), chunks=(5, 5))
    u, s, vt = svd_compressed(x, 3, seed=1234)
    u2, s2, vt2 = svd_compressed(x, 3, seed=1234)

    assert all(da.compute((u == u2).all(), (s == s2).all(), (vt == vt2).all()))


@pytest.mark.parametrize("m", [5, 10, 15, 20])
@pytest.mark.parametrize("n", [5, 10, 15, 20])
@pytest.mark.parametrize("k", [5])
@pytest.mark.parametrize("chunks", [(5, 10), (10, 5)])
def test_svd_compressed_shapes(m, n, k, chunks):
    x = da.random.default_rng().random(size=(m, n), chunks=chunks)
    u, s, v = svd_compressed(x, k, n_power_iter=1, compute=True, seed=1)
    u, s, v = da.compute(u, s, v)
    r = min(m, n, k)
    assert u.shape == (m, r)
    assert s.shape == (r,)
    assert v.shape == (r, n)


# --------------------------------------------------------------------------- where ours differs by design


@pytest.mark.parametrize("shape, chunks", [((100, 100), (10, 10)), ((30, 25), (5, 5)), ((20, 20), (5, 10)),
                                           ((15, 20), (10, 5))])
def test_grid_chunks_give_the_whole_rows_result(shape, chunks):
    # Not dask's: the grids of its tests give the factors of the same matrix in whole rows (the
    # chunking required before), to the rounding of the different summation order.
    x = da.random.default_rng(0).random(size=shape, chunks=chunks)
    assert min(x.numblocks) > 1

    def factors(y):
        return [f.compute() if isinstance(f, da.Array) else f for f in svd_compressed(y, 2, n_power_iter=1, seed=0)]

    (u, s, vt), (ur, sr, vtr) = factors(x), factors(x.rechunk({1: -1}))
    a = x.compute()
    sv = np.linalg.svd(a, compute_uv=False)
    perturbation, vec_tol = rounding_bounds(a, sv, 2, np.float64)
    np.testing.assert_allclose(s, sr, rtol=0, atol=perturbation)
    np.testing.assert_allclose(u, ur, rtol=0, atol=vec_tol)
    np.testing.assert_allclose(vt, vtr, rtol=0, atol=vec_tol)


def test_a_rank_above_min_m_n_is_refused_not_clamped():
    x = da.random.default_rng(0).random(size=(10, 5), chunks=(5, 5))
    with pytest.raises(ValueError, match="k=6"):
        svd_compressed(x, 6, seed=0)

