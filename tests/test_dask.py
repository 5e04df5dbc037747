"""liam_gpu.dask on a real cluster: two worker processes on the CPU (and dask-cuda where a GPU is present).

The distributed results are compared with the single-machine functions on the
same data and seed; the tolerances are the rounding of the two computations'
different summation orders, scaled by what the singular values and vectors
of the test matrix make of it (see :func:`_rounding_bounds`).
"""
from __future__ import annotations

import math
import operator
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)

import liam_gpu  # noqa: E402
from liam_gpu import dask as ldask  # noqa: E402
from liam_gpu.dask import tasks as dask_tasks  # noqa: E402
from liam_gpu.backends import emulator_available  # noqa: E402
from bounds import halko_bound, rounding_bounds  # noqa: E402
from liam_gpu.rangefinder import sketch_width  # noqa: E402

# Workers unpickle this module's helpers by value: they need not import the test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

M, N, K = 400, 60, 5


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, on this machine."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def _decaying(m: int, n: int, dtype=np.float64, rank: int | None = None, seed: int = 0) -> np.ndarray:
    """``U diag(0.7**j) V^T`` with Haar-random ``U``, ``V``: well separated singular values."""
    rng = np.random.default_rng(seed)
    r = n if rank is None else rank
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return ((u * 0.7 ** np.arange(r)) @ v.T).astype(dtype)


def _rounding_bounds(a: np.ndarray, k: int) -> tuple[float, float]:
    """:func:`bounds.rounding_bounds` of ``a`` factored as it is."""
    return rounding_bounds(a, np.linalg.svd(a.astype(np.float64), compute_uv=False), k, a.dtype)


def _centred_bounds(a: np.ndarray, k: int) -> tuple[float, float]:
    """:func:`bounds.rounding_bounds` of ``a - mean(a, axis=0)`` factored without forming it."""
    return rounding_bounds(a, np.linalg.svd(a - a.mean(axis=0), compute_uv=False), k, a.dtype)


def _assert_same_lowrank(lr, ref, a: np.ndarray, k: int) -> None:
    s_tol, vec_tol = _rounding_bounds(a, k)
    u = lr.U.compute()
    assert u.dtype == ref.U.dtype and lr.S.dtype == ref.S.dtype and lr.Vt.dtype == ref.Vt.dtype
    np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=s_tol)
    np.testing.assert_allclose(u, ref.U, rtol=0, atol=vec_tol)
    np.testing.assert_allclose(lr.Vt, ref.Vt, rtol=0, atol=vec_tol)
    # err = sqrt(||A||^2 - sum s^2) / ||A||: a change of sum s^2 by 2 k s_1 ds moves it by that / (2 err ||A||^2).
    norm2 = float(np.sum(a.astype(np.float64) ** 2))
    err_tol = 2 * k * float(ref.S[0]) * s_tol / (2 * ref.relative_error * norm2)
    assert abs(lr.relative_error - ref.relative_error) <= err_tol


# --------------------------------------------------------------------------- transform


def test_transform_is_lazy_and_keeps_row_chunks_and_meta(client):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((7, 12)).astype(np.float32)
    # A chunk that fails when computed: building the transform must not compute it.
    poisoned = da.from_delayed(dask.delayed(operator.truediv)(1, 0), shape=(5, 12), dtype=np.float32)
    x = da.concatenate([da.zeros((30, 12), chunks=(10, 12), dtype=np.float32), poisoned])
    y = ldask.transform_matrix(x, w, activation="relu")
    assert isinstance(y, da.Array)
    assert y.chunks == ((10, 10, 10, 5), (7,))
    assert type(y._meta) is np.ndarray and y.dtype == np.float32
    with pytest.raises(ZeroDivisionError):
        y.compute()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_transform_equals_single_machine(client, dtype):
    rng = np.random.default_rng(2)
    a = (rng.standard_normal((200, 24)) * 4).astype(dtype)
    w = rng.standard_normal((9, 24)).astype(np.float64 if dtype == np.int32 else dtype)
    b = rng.standard_normal(9).astype(w.dtype)
    x = da.from_array(a, chunks=((0, 37, 63, 100), 24))  # an empty chunk too
    y = ldask.transform_matrix(x, w, b, "gelu")
    ref = liam_gpu.transform_matrix(a, w, b, "gelu", device="cpu")
    got = y.compute()
    assert y.chunks[0] == x.chunks[0] and got.dtype == ref.dtype == y.dtype
    # Each row is the same 24 products as on one machine; only BLAS's blocking may differ.
    bound = np.abs(a).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    tol = np.finfo(ref.dtype).eps * 24 * float(np.max(bound))
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


def test_transform_of_a_3d_array_chunked_along_leading_axes_copies_the_weights(client):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 30, 8))
    w = rng.standard_normal((5, 8))
    x = da.from_array(a, chunks=(2, 15, 8))
    ref = liam_gpu.transform_matrix(a, w, activation="tanh", device="cpu")
    tol = np.finfo(np.float64).eps * 8 * float(np.max(np.abs(a) @ np.abs(w).T))  # 8 products per output
    y = ldask.transform_matrix(x, w, activation="tanh")
    w[:] = 0.0  # the lazy result holds its own copy of the weights
    assert y.chunks == ((2, 2), (15, 15), (5,))
    np.testing.assert_allclose(y.compute(), ref, rtol=0, atol=tol)


def test_transform_of_rows_of_unknown_count(client):
    # Filtering leaves row chunks of unknown sizes: a lazy map does not need them.
    rng = np.random.default_rng(4)
    a = rng.standard_normal((90, 6))
    w = rng.standard_normal((4, 6))
    x = da.from_array(a, chunks=(30, 6))
    kept = x[x[:, 0] > 0]
    y = ldask.transform_matrix(kept, w, activation="sigmoid")
    assert math.isnan(y.shape[0]) and y.chunks[1] == (4,)
    ref = liam_gpu.transform_matrix(a[a[:, 0] > 0], w, activation="sigmoid", device="cpu")
    tol = np.finfo(np.float64).eps * 6 * float(np.max(np.abs(a) @ np.abs(w).T))
    np.testing.assert_allclose(y.compute(), ref, rtol=0, atol=tol)


def test_transform_bad_input_is_refused_with_a_clear_error():
    w = np.ones((3, 6))
    x = da.ones((20, 6), chunks=(5, 3))
    with pytest.raises(ValueError, match=r"chunked along its last axis.*rechunk\(\{1: -1\}\)"):
        ldask.transform_matrix(x, w)
    with pytest.raises(TypeError, match="dask.array.Array"):
        ldask.transform_matrix(np.ones((20, 6)), w)
    with pytest.raises(TypeError, match="complex"):
        ldask.transform_matrix(da.ones((20, 6), chunks=(5, 6), dtype=np.complex128), w)
    with pytest.raises(ValueError, match="d_in=6"):
        ldask.transform_matrix(da.ones((20, 5), chunks=(5, 5)), w)
    with pytest.raises(ValueError, match="batched weights"):
        ldask.transform_matrix(da.ones((20, 6), chunks=(5, 6)), np.ones((2, 3, 6)))
    with pytest.raises(ValueError, match="activation"):
        ldask.transform_matrix(da.ones((20, 6), chunks=(5, 6)), w, activation="swish2")
    with pytest.raises(ValueError, match="device"):
        ldask.transform_matrix(da.ones((20, 6), chunks=(5, 6)), w, device="tpu")


# --------------------------------------------------------------------------- svd_compress

CHUNKINGS = [
    pytest.param((M,), id="one-chunk"),
    pytest.param((100,) * 4, id="regular"),
    pytest.param((3, 97, 0, 150, 150), id="irregular-small-and-empty"),
]


@pytest.mark.parametrize("rows", CHUNKINGS)
def test_svd_compress_equals_single_machine(client, rows):
    a = _decaying(M, N)
    x = da.from_array(a, chunks=(rows, N))
    lr = ldask.svd_compress(x, K, random_state=7)
    ref = liam_gpu.svd_compress(a, K, random_state=7, device="cpu")
    assert isinstance(lr, liam_gpu.LowRank) and isinstance(lr.U, da.Array)
    assert lr.U.chunks == (tuple(r for r in rows if r > 0), (K,))
    assert type(lr.U._meta) is np.ndarray and isinstance(lr.S, np.ndarray) and isinstance(lr.Vt, np.ndarray)
    _assert_same_lowrank(lr, ref, a, K)
    np.testing.assert_allclose(np.asarray(lr), ref.to_dense(), rtol=0, atol=_rounding_bounds(a, K)[1])


def test_svd_compress_float32_equals_single_machine(client):
    a = _decaying(M, N, np.float32)
    x = da.from_array(a, chunks=((50, 150, 200), N))
    lr = ldask.svd_compress(x, K, n_iter=3, random_state=3)
    ref = liam_gpu.svd_compress(a, K, n_iter=3, random_state=3, device="cpu")
    _assert_same_lowrank(lr, ref, a, K)


def test_svd_compress_rank_deficient_sketch_takes_tsqr(client, monkeypatch):
    # A = u v^T with every u_i a signed power of two: each row of Y = A Omega is
    # then an exact multiple of one row (scaling by 2^e is exact), so Y has rank
    # 1 in floating point.  The power step's shifted CholeskyQR pass still gives
    # a basis (its shift keeps G + sI definite); the final basis must be
    # orthonormal, which no CholeskyQR pass can make of a rank-1 Y: the
    # third Gram matrix shows it, and Householder QR takes over, here a TSQR
    # across the blocks -- once.
    calls = []
    original = ldask.DaskOperator.householder_qr

    def spy(self, y):
        calls.append(tuple(y.shape))
        return original(self, y)

    monkeypatch.setattr(ldask.DaskOperator, "householder_qr", spy)
    rng = np.random.default_rng(5)
    u = np.ldexp(rng.choice([-1.0, 1.0], M), rng.integers(-3, 4, M))
    a = np.outer(u, rng.standard_normal(N))
    x = da.from_array(a, chunks=((10, 190, 200), N))
    lr = ldask.svd_compress(x, 1, n_iter=1, random_state=5)
    ref = liam_gpu.svd_compress(a, 1, n_iter=1, random_state=5, device="cpu")
    # k + p = 11 columns, rounded up to 16 (rangefinder.sketch_width)
    assert calls == [(M, 16)], "the final basis of the rank-1 sketch (only) should take the TSQR fallback"
    s_tol, vec_tol = _rounding_bounds(a, 1)
    np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=s_tol)
    # |u_i| ties exactly (powers of two), so which entry is "largest" -- and with
    # it svd_flip's sign -- is decided by rounding: compare up to one sign.
    got_u = lr.U.compute()
    sign = np.sign(got_u[0, 0] * ref.U[0, 0])
    np.testing.assert_allclose(sign * got_u, ref.U, rtol=0, atol=vec_tol)
    np.testing.assert_allclose(sign * lr.Vt, ref.Vt, rtol=0, atol=vec_tol)
    np.testing.assert_allclose(np.abs(got_u[:, 0]), np.abs(u) / np.linalg.norm(u), rtol=0, atol=vec_tol)


def _log_read(block: np.ndarray, path: str, block_info=None) -> np.ndarray:
    """Record which row block was read (appends of a line are atomic across processes)."""
    with open(path, "a") as f:
        f.write(f"{block_info[0]['array-location'][0][0]}\n")
    return block


def test_svd_compress_reads_each_block_once_per_pass(client, tmp_path):
    a = _decaying(M, N, seed=4)
    log = tmp_path / "reads.txt"
    x = da.from_array(a, chunks=(100, N)).map_blocks(_log_read, str(log), dtype=a.dtype)
    q = 2
    ldask.svd_compress(x, K, n_iter=q)
    reads = log.read_text().split()
    # Y = A Omega with V = A^T Y; q - 1 passes Y = A W with V = A^T Y; the last Y = A W; then A^T Q:
    # q + 2 passes (the fused power iterations of the single-machine code), each block once per pass.
    assert sorted(set(reads)) == ["0", "100", "200", "300"]
    assert all(reads.count(start) == q + 2 for start in set(reads))


@pytest.mark.filterwarnings("ignore:Running on a single-machine scheduler:UserWarning")
def test_svd_compress_runs_on_the_local_schedulers_too(client):
    a = _decaying(M, N, seed=6)
    x = da.from_array(a, chunks=(120, N))
    on_cluster = ldask.svd_compress(x, K, n_iter=2, random_state=11)
    with dask.config.set(scheduler="synchronous"):
        local = ldask.svd_compress(x, K, n_iter=2, random_state=11)
        assert isinstance(local.U, da.Array)
        u_local = local.U.compute()
    # Same blocks and reduction tree; only BLAS's threading differs (one thread per worker process).
    _assert_same_lowrank(on_cluster, liam_gpu.LowRank(u_local, local.S, local.Vt,
                                                      relative_error=local.relative_error), a, K)


def test_svd_compress_bad_input_is_refused_with_a_clear_error(client):
    x = da.from_array(_decaying(M, N), chunks=(100, N))
    with pytest.raises(TypeError, match="complex"):
        ldask.svd_compress(x.astype(np.complex128), K)
    with pytest.raises(ValueError, match="2-D"):
        ldask.svd_compress(x[:, 0], K)
    with pytest.raises(ValueError, match="k=61"):
        ldask.svd_compress(x, N + 1)
    with pytest.raises(TypeError, match="dask.array.Array"):
        ldask.svd_compress(np.ones((10, 3)), 2)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        ldask.svd_compress(x[x[:, 0] > -np.inf], K)
    with pytest.raises(TypeError, match="device"):
        ldask.svd_compress(x, K, device=0)
    nan = da.where(da.arange(M, chunks=100)[:, None] == 217, np.nan, x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ldask.svd_compress(nan, K, n_iter=0)
    # The same in a grid of chunks, and an Inf in one block of a wide grid (the operator is x.T there).
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        ldask.svd_compress(nan.rechunk((100, 20)), K, n_iter=1)
    inf = da.where((da.arange(M, chunks=100)[:, None] == 5) & (da.arange(N, chunks=20)[None, :] == 44), np.inf, x)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        ldask.svd_compress(inf.T, K, n_iter=2)


@pytest.mark.parametrize("bad, expected", [
    (dict(k=0, random_state="bad"), (ValueError, "k=0")),
    (dict(k=0, check_finite=1), (ValueError, "k=0")),
    (dict(n_oversamples=-1, random_state=-5), (ValueError, "n_oversamples")),
    (dict(n_iter="bad", random_state=2**70), (ValueError, "n_iter")),
    (dict(random_state=-5, check_finite=1), (ValueError, "random_state")),
])
def test_svd_compress_reports_the_first_bad_argument_in_the_signatures_order(bad, expected):
    """Several bad arguments at once: k, n_oversamples, n_iter, random_state, check_finite, in that order."""
    x = da.ones((20, 5), chunks=(7, 5))
    kwargs = {"k": 2, **bad}
    error, match = expected
    with pytest.raises(error, match=match):
        ldask.svd_compress(x, **kwargs)


@pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")
def test_svd_compress_with_our_kernels_on_the_workers_equals_cpu(client):
    # device="emulator": every block's Philox sketch, Gram matrix and triangular
    # apply run through our CUDA kernels (on the CPU emulator) on the workers.
    a = _decaying(M, N, seed=10)
    liam_gpu.svd_compress(a[:N], 2, device="emulator")  # builds the kernels once, here, for the workers' cache
    x = da.from_array(a, chunks=((150, 250), N))
    lr = ldask.svd_compress(x, K, n_iter=1, random_state=4, device="emulator")
    ref = liam_gpu.svd_compress(a, K, n_iter=1, random_state=4, device="cpu")
    _assert_same_lowrank(lr, ref, a, K)
    # A grid of chunks: the per-block products and their sums run on the emulator's arrays too.
    lr = ldask.svd_compress(da.from_array(a, chunks=((150, 250), (20, 40))), K, n_iter=1, random_state=4,
                            device="emulator")
    _assert_same_lowrank(lr, ref, a, K)
    # Centred, in row chunks, column chunks and a grid: the centring runs on the emulator's arrays too.
    ref = liam_gpu.svd_compress(a, K, n_iter=1, random_state=4, center=True, device="cpu")
    s_tol, vec_tol = _centred_bounds(a, K)
    for chunks in [((150, 250), N), (M, (20, 40)), ((150, 250), (20, 40))]:
        lr = ldask.svd_compress(da.from_array(a, chunks=chunks), K, n_iter=1, random_state=4, center=True,
                                device="emulator")
        np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=s_tol)
        np.testing.assert_allclose(np.asarray(lr.U), ref.U, rtol=0, atol=vec_tol)
        np.testing.assert_allclose(np.asarray(lr.Vt), ref.Vt, rtol=0, atol=vec_tol)


# --------------------------------------------------------------------------- GPU workers


def _check_cupy_chunks_on(cluster) -> None:
    """Transform and svd_compress of CuPy-chunked arrays on ``cluster`` equal the single-GPU calls."""
    cupy = pytest.importorskip("cupy")
    a = _decaying(2000, 64, seed=8)
    w = np.random.default_rng(9).standard_normal((16, 64))
    with distributed.Client(cluster):
        x = da.from_array(cupy.asarray(a), chunks=(500, 64), asarray=False)
        y = ldask.transform_matrix(x, w, activation="relu")
        assert isinstance(y._meta, cupy.ndarray)
        got = y.compute()
        assert isinstance(got, cupy.ndarray)
        ref = liam_gpu.transform_matrix(cupy.asarray(a), cupy.asarray(w), activation="relu")
        tol = np.finfo(np.float64).eps * 64 * float(np.max(np.abs(a) @ np.abs(w).T))
        cupy.testing.assert_allclose(got, ref, rtol=0, atol=tol)

        lr = ldask.svd_compress(x, 6, random_state=2)
        assert isinstance(lr.U._meta, cupy.ndarray)
        ref_lr = liam_gpu.svd_compress(cupy.asarray(a), 6, random_state=2)
        s_tol, vec_tol = _rounding_bounds(a, 6)
        np.testing.assert_allclose(lr.S, cupy.asnumpy(ref_lr.S), rtol=0, atol=s_tol)
        np.testing.assert_allclose(cupy.asnumpy(lr.U.compute()), cupy.asnumpy(ref_lr.U), rtol=0, atol=vec_tol)
        np.testing.assert_allclose(lr.Vt, cupy.asnumpy(ref_lr.Vt), rtol=0, atol=vec_tol)

        # A grid of CuPy chunks: block products summed over the column blocks, U in x's row chunks.
        xg = da.from_array(cupy.asarray(a), chunks=(500, 16), asarray=False)
        lr = ldask.svd_compress(xg, 6, random_state=2)
        assert isinstance(lr.U._meta, cupy.ndarray) and lr.U.chunks[0] == xg.chunks[0]
        np.testing.assert_allclose(lr.S, cupy.asnumpy(ref_lr.S), rtol=0, atol=s_tol)
        np.testing.assert_allclose(cupy.asnumpy(lr.U.compute()), cupy.asnumpy(ref_lr.U), rtol=0, atol=vec_tol)
        np.testing.assert_allclose(lr.Vt, cupy.asnumpy(ref_lr.Vt), rtol=0, atol=vec_tol)

        # Centred, in row chunks, column chunks (the long bases then on the client) and a grid.
        ref_c = liam_gpu.svd_compress(cupy.asarray(a), 6, random_state=2, center=True)
        s_tol, vec_tol = _centred_bounds(a, 6)
        for xc in [x, da.from_array(cupy.asarray(a), chunks=(2000, 16), asarray=False), xg]:
            lr = ldask.svd_compress(xc, 6, random_state=2, center=True)
            u, vt = (f.compute() if isinstance(f, da.Array) else f for f in (lr.U, lr.Vt))
            np.testing.assert_allclose(lr.S, cupy.asnumpy(ref_c.S), rtol=0, atol=s_tol)
            np.testing.assert_allclose(cupy.asnumpy(u), cupy.asnumpy(ref_c.U), rtol=0, atol=vec_tol)
            np.testing.assert_allclose(cupy.asnumpy(vt), cupy.asnumpy(ref_c.Vt), rtol=0, atol=vec_tol)


@pytest.mark.gpu
def test_dask_cuda_cluster_with_cupy_chunks_matches_single_gpu():
    dask_cuda = pytest.importorskip("dask_cuda")
    with dask_cuda.LocalCUDACluster(n_workers=1, dashboard_address=None) as cluster:
        _check_cupy_chunks_on(cluster)


@pytest.mark.gpu
def test_plain_cluster_with_cupy_chunks_matches_single_gpu():
    # Without dask-cuda: one worker process that sees the GPU, CuPy chunks shipped to it.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        _check_cupy_chunks_on(cluster)


@pytest.mark.parametrize("layout", ["wide, column chunks", "wide, row chunks", "tall, column chunks", "tall, grid",
                                    "wide, grid"])
def test_svd_compress_of_wide_or_column_chunked_arrays_equals_the_in_memory_call(client, layout):
    a = _decaying(M, N, seed=21)
    a = a if layout.startswith("tall") else a.T.copy()
    chunks = {"wide, column chunks": (N, (50, 150, 200)), "wide, row chunks": ((20, 40), M),
              "tall, column chunks": (M, (25, 35)), "tall, grid": ((50, 150, 200), (25, 35)),
              "wide, grid": ((25, 35), (50, 150, 200))}[layout]
    lr = ldask.svd_compress(da.from_array(a, chunks=chunks), K, random_state=6)
    ref = liam_gpu.svd_compress(a, K, random_state=6, device="cpu")
    u = lr.U.compute() if isinstance(lr.U, da.Array) else lr.U
    vt = lr.Vt.compute() if isinstance(lr.Vt, da.Array) else lr.Vt
    s_tol, vec_tol = _rounding_bounds(a, K)
    np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=s_tol)
    np.testing.assert_allclose(u, ref.U, rtol=0, atol=vec_tol)
    np.testing.assert_allclose(vt, ref.Vt, rtol=0, atol=vec_tol)
    assert lr.relative_error == pytest.approx(ref.relative_error, rel=1e-9)
    # The long side stays on the workers: U for row chunks, Vt for column chunks, the longer side's
    # factor for a grid, in x's chunks along that axis.
    if "grid" in layout:
        if layout.startswith("tall"):
            assert isinstance(lr.U, da.Array) and lr.U.chunks == (chunks[0], (K,))
        else:
            assert isinstance(lr.Vt, da.Array) and lr.Vt.chunks == ((K,), chunks[1])
    else:
        assert isinstance(lr.Vt if "column" in layout else lr.U, da.Array)


# --------------------------------------------------------------------------- centring, sparse chunks, any chunking

sp = pytest.importorskip("scipy.sparse")

MC, NC, KC = 240, 72, 5


def _slow_spectrum(m: int, n: int, dtype=np.float64, shift: float = 0.0, seed: int = 30) -> np.ndarray:
    """``U diag(1 / (1 + 0.3 j)) V^T + shift``: a slow decay, so a different sketch gives a visibly
    different answer at ``n_iter=1``; the gaps among the leading singular values stay ~0.02."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return ((u / (1.0 + 0.3 * np.arange(r))) @ v.T + shift).astype(dtype)


def _sparse(m: int, n: int, seed: int = 31) -> "sp.csr_matrix":
    """Density 0.1, a decaying column scale (a TF-IDF-like, slowly decaying spectrum)."""
    a = sp.random(m, n, density=0.1, format="csr", random_state=seed)
    return a.multiply(np.exp(-0.01 * np.arange(n))[None, :]).tocsr() * 10


def _centred_truth(dense: np.ndarray, center) -> np.ndarray:
    a = np.asarray(dense, dtype=np.float64)
    if center is True:
        return a - a.mean(axis=0)
    return a if center is False else a - np.asarray(center, dtype=np.float64)


def _as_dense(x):
    return x.compute() if isinstance(x, da.Array) else np.asarray(x)


def _chunkings(m: int, n: int) -> list:
    """Rows (one chunk, regular, irregular with a small and an empty chunk), columns (regular, irregular,
    one row block of 8 column blocks) and grids (regular; irregular with small and empty chunks on both
    axes; 8 row blocks by 2 column blocks; 2 row blocks by 8 column blocks)."""
    return [
        (m, n),
        (m // 4, n),
        ((3, m // 2 - 3, 0, m - m // 2), n),
        (m, -(-n // 3)),
        (m, (1, n // 2 - 1, n - n // 2)),
        (m, -(-n // 8)),
        (m // 4, -(-n // 3)),
        ((3, m // 2 - 3, 0, m - m // 2), (1, n // 2 - 1, 0, n - n // 2)),
        (-(-m // 8), -(-n // 2)),
        ((m // 2, m - m // 2), -(-n // 8)),
    ]


def _dask_factor(lr, x, tall: bool):
    """The factor that comes back as a Dask array, and the chunks of ``x`` (empty ones left out) along its axis.

    Along ``x``'s chunked axis; for a grid of chunks (or one chunk) along its longer side.
    """
    rows, cols = (tuple(c for c in axis if c > 0) for axis in x.chunks)
    grid = len(rows) > 1 and len(cols) > 1
    along_rows = tall if grid or (len(rows) == 1 and len(cols) == 1) else len(rows) > 1
    return (lr.U, rows) if along_rows else (lr.Vt, cols)


CASES = [
    pytest.param(kind, center, tall, id=f"{kind}-{'tall' if tall else 'wide'}-center={center_id}")
    for kind in ("dense", "sparse")
    for center, center_id in ((False, "no"), (True, "yes"), ("given", "given"))
    for tall in (True, False)
]


@pytest.mark.parametrize("kind, center, tall", CASES)
def test_svd_compress_is_independent_of_the_chunking_and_near_optimal(client, kind, center, tall):
    m, n = (MC, NC) if tall else (NC, MC)
    if kind == "dense":
        a = _slow_spectrum(m, n, shift=3.0)
        dense = a
    else:
        a = _sparse(m, n)
        dense = a.toarray()
    mean = np.random.default_rng(32).uniform(0.5, 1.5, n) if center == "given" else center
    truth = _centred_truth(dense, mean)
    s_true = np.linalg.svd(truth, compute_uv=False)
    q = 1
    ref = liam_gpu.svd_compress(a, KC, n_iter=q, random_state=9, center=mean, device="cpu")
    # Products of the uncentred matrix round at its own scale: the perturbation is eps sqrt(mn) ||A||_2,
    # and singular vectors move by that over the smallest gap of the centred spectrum (Wedin).
    perturbation, vec_tol = rounding_bounds(dense, s_true, KC, np.float64)
    l = 16  # k + p = 15, rounded up to a multiple of 8 (rangefinder.sketch_width)
    bound = halko_bound(s_true, KC, l, q) + perturbation
    for chunks in _chunkings(m, n):
        x = da.from_array(a, chunks=chunks)
        lr = liam_gpu.dask.svd_compress(x, KC, n_iter=q, random_state=9, center=mean)
        u, vt = _as_dense(lr.U), _as_dense(lr.Vt)
        # The factor along x's chunked axis (the long one for a single chunk or a grid) is a Dask
        # array in x's chunks along that axis.
        factor, along = _dask_factor(lr, x, tall)
        assert isinstance(factor, da.Array), chunks
        assert along in factor.chunks, (chunks, factor.chunks)
        assert u.dtype == vt.dtype == lr.S.dtype == np.float64
        # Same factors as in memory (so as for every other chunking), to rounding.
        np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=perturbation, err_msg=str(chunks))
        np.testing.assert_allclose(u, ref.U, rtol=0, atol=vec_tol, err_msg=str(chunks))
        np.testing.assert_allclose(vt, ref.Vt, rtol=0, atol=vec_tol, err_msg=str(chunks))
        # Against the float64 truth: within the algorithm's error bound, singular values below
        # the true ones (Cauchy interlacing: U^T A_c V is a compression of A_c) and orthonormal factors.
        err = np.linalg.norm(truth - (u * lr.S) @ vt, 2)
        assert err <= bound, (chunks, err, bound, s_true[KC])
        assert np.all(lr.S <= s_true[:KC] + perturbation)
        assert np.abs(u.T @ u - np.eye(KC)).max() <= 100 * np.finfo(np.float64).eps * math.sqrt(m)
        # The error estimate: within a factor 2 of the truth (the engine's contract).
        true_rel = np.linalg.norm(truth - (u * lr.S) @ vt) / np.linalg.norm(truth)
        assert true_rel / 2 <= lr.relative_error <= 2 * true_rel


def test_centred_float32_is_independent_of_the_chunking(client):
    a = _slow_spectrum(MC, NC, np.float32, shift=3.0, seed=33)
    ref = liam_gpu.svd_compress(a, KC, n_iter=2, random_state=1, center=True, device="cpu")
    s_true = np.linalg.svd(_centred_truth(a, True), compute_uv=False)
    perturbation, vec_tol = rounding_bounds(a, s_true, KC, np.float32)
    for chunks in [(60, NC), (MC, 24), (60, 24), ((7, 233), (40, 32))]:
        lr = ldask.svd_compress(da.from_array(a, chunks=chunks), KC, n_iter=2, random_state=1, center=True)
        assert lr.S.dtype == np.float32
        np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=perturbation)
        np.testing.assert_allclose(_as_dense(lr.U), ref.U, rtol=0, atol=vec_tol)
        np.testing.assert_allclose(_as_dense(lr.Vt), ref.Vt, rtol=0, atol=vec_tol)


def test_center_removes_the_mean_direction_and_matches_the_centred_copy(client):
    # Without centring the first right singular vector is the mean direction; with it the
    # factors are those of the centred copy, and U's columns sum to zero (to rounding).
    a = _slow_spectrum(MC, NC, shift=3.0, seed=34)
    x = da.from_array(a, chunks=(50, NC))
    centred = a - a.mean(axis=0)
    s_true = np.linalg.svd(centred, compute_uv=False)
    plain = ldask.svd_compress(x, KC, n_iter=4)
    mean_dir = a.mean(axis=0) / np.linalg.norm(a.mean(axis=0))
    assert abs(plain.Vt[0] @ mean_dir) > 0.99
    lr = ldask.svd_compress(x, KC, n_iter=4, center=True)
    copy = ldask.svd_compress(da.from_array(centred, chunks=(50, NC)), KC, n_iter=4)
    eps = np.finfo(np.float64).eps
    perturbation = eps * math.sqrt(a.size) * np.linalg.norm(a, 2)
    np.testing.assert_allclose(lr.S, copy.S, rtol=0, atol=perturbation)
    # S of Q^T A lies within ||(I - Q Q^T) A||_2 below the truth (Weyl): Halko et al.'s bound on it is
    # halko_bound minus its truncation term s_(k+1).
    l = sketch_width(KC, 10, NC)
    basis_error = halko_bound(s_true, KC, l, 4) - s_true[KC]
    np.testing.assert_allclose(lr.S, s_true[:KC], rtol=0, atol=perturbation + basis_error)
    u = lr.U.compute()
    assert np.all(np.abs(u.sum(axis=0)) <= 8 * eps * math.sqrt(MC) * np.linalg.norm(a, 2) / lr.S)


def test_centring_a_matrix_of_equal_rows_gives_zero_to_rounding(client):
    # The centred matrix is exactly zero; what comes back is the rounding of the uncentred one.
    a = np.tile(np.random.default_rng(35).standard_normal(40), (200, 1))
    scale = np.finfo(np.float64).eps * math.sqrt(a.size) * np.linalg.norm(a, 2)
    for chunks in [(50, 40), (200, 10), (50, 10)]:
        lr = ldask.svd_compress(da.from_array(a, chunks=chunks), 3, center=True)
        u = _as_dense(lr.U)
        assert np.all(lr.S <= scale)
        assert np.abs(u.T @ u - np.eye(3)).max() <= 100 * np.finfo(np.float64).eps * math.sqrt(200)


def test_sparse_chunks_from_map_blocks_and_of_every_layout_equal_the_scipy_call(client):
    a = _sparse(MC, NC, seed=36)
    ref = liam_gpu.svd_compress(a, KC, n_iter=3, random_state=2)
    dense_x = da.from_array(a.toarray(), chunks=(70, NC))
    for x in [dense_x.map_blocks(sp.csr_matrix), da.from_array(sp.csr_array(a), chunks=(MC, 30)),
              da.from_array(a.tocoo().tocsc(), chunks=(100, NC))]:
        assert sp.issparse(x._meta)
        lr = ldask.svd_compress(x, KC, n_iter=3, random_state=2)
        s_true = np.linalg.svd(a.toarray(), compute_uv=False)
        perturbation, vec_tol = rounding_bounds(a.toarray(), s_true, KC, np.float64)
        np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=perturbation)
        np.testing.assert_allclose(_as_dense(lr.U), ref.U, rtol=0, atol=vec_tol)
        np.testing.assert_allclose(_as_dense(lr.Vt), ref.Vt, rtol=0, atol=vec_tol)
        if isinstance(lr.U, da.Array):
            assert type(lr.U._meta) is np.ndarray  # dense factors from sparse chunks


@pytest.mark.filterwarnings("ignore:Running on a single-machine scheduler:UserWarning")
def test_sparse_chunks_are_never_densified_nor_modified(monkeypatch):
    # In this process (the synchronous scheduler), so that the refusal reaches every task.
    a = _sparse(400, 90, seed=37)
    # Duplicate entries (not canonical): summed on a copy, the caller's matrix kept as it is.
    coo = a.tocoo()
    dup = sp.csr_matrix((np.concatenate([coo.data, [1.0, 2.0]]),
                         (np.concatenate([coo.row, [5, 5]]), np.concatenate([coo.col, [7, 7]]))), shape=a.shape)
    dup.has_canonical_format = False
    before = (dup.data.copy(), dup.indices.copy(), dup.indptr.copy())
    truth = dup.toarray()

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse chunk was densified")

    for cls in (sp.csr_matrix, sp.csc_matrix):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    with dask.config.set(scheduler="synchronous"):
        for chunks in [(400, 90), (100, 90), (400, 30), (100, 30)]:
            for center in (False, True):
                lr = ldask.svd_compress(da.from_array(dup, chunks=chunks), 4, n_iter=2, center=center)
                u, vt = _as_dense(lr.U), _as_dense(lr.Vt)
                centred = _centred_truth(truth, center)
                assert lr.relative_error > 0.5  # a large error: the energy balance, no residual pass
                true_rel = np.linalg.norm(centred - (u * lr.S) @ vt) / np.linalg.norm(centred)
                assert true_rel / 2 <= lr.relative_error <= 2 * true_rel
    for got, want in zip((dup.data, dup.indices, dup.indptr), before):
        np.testing.assert_array_equal(got, want)


def test_low_rank_sparse_takes_the_residual_pass_and_is_exact(client):
    # Rank 3 (plus its mean): the energy balance cancels, the residual is measured, row piece by
    # row piece of each sparse block; the answer is exact to rounding.
    rng = np.random.default_rng(38)
    rows = sp.random(300, 3, density=0.3, random_state=1, format="csr")
    a = (rows @ sp.csr_matrix(rng.standard_normal((3, 50)))).tocsr()
    for chunks in [(75, 50), (300, 20), (75, 20)]:
        lr = ldask.svd_compress(da.from_array(a, chunks=chunks), 4, n_iter=1, center=True)
        truth = _centred_truth(a.toarray(), True)
        s_true = np.linalg.svd(truth, compute_uv=False)
        scale = np.finfo(np.float64).eps * math.sqrt(a.shape[0] * a.shape[1]) * np.linalg.norm(a.toarray(), 2)
        np.testing.assert_allclose(lr.S, s_true[:4], rtol=0, atol=scale)
        u, vt = _as_dense(lr.U), _as_dense(lr.Vt)
        assert np.linalg.norm(truth - (u * lr.S) @ vt) <= 10 * scale
        assert lr.relative_error <= 10 * scale / np.linalg.norm(truth) + 1e-13


def test_centred_and_sparse_bad_input_is_refused_naming_the_argument(client):
    a = _slow_spectrum(MC, NC, seed=39)
    x = da.from_array(a, chunks=(60, NC))
    with pytest.raises(ValueError, match=rf"center must be True, False or {NC} column means .*got shape \(71,\)"):
        ldask.svd_compress(x, KC, center=np.zeros(NC - 1))
    with pytest.raises(ValueError, match=rf"center must be True, False or {NC} column means"):
        ldask.svd_compress(x, KC, center=np.zeros((1, NC)))
    with pytest.raises(ValueError, match="center contains NaN or Inf"):
        ldask.svd_compress(x, KC, center=np.full(NC, np.inf))
    with pytest.raises(TypeError, match="center is complex"):
        ldask.svd_compress(x, KC, center=np.zeros(NC, dtype=np.complex128))
    with pytest.raises(TypeError, match="center has dtype"):
        ldask.svd_compress(x, KC, center=["a"] * NC)
    with pytest.raises(ValueError, match="center applies to a 2-D x"):
        ldask.svd_compress(da.ones((4, 5, 6), chunks=2), 2, center=True)
    with pytest.raises(ValueError, match="center applies to a 2-D x"):
        ldask.svd_compress(x[:, 0], 1, center=np.zeros(1))
    # The means of a matrix holding NaN are NaN: the input's own error, not a wrong answer.
    nan = da.where(da.arange(MC, chunks=60)[:, None] == 100, np.nan, x)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        ldask.svd_compress(nan, KC, center=True)
    for chunks in [(MC, 24), (60, 24)]:
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            ldask.svd_compress(nan.rechunk(chunks), KC, center=True)
    # Finite values whose column sums overflow float64: said so, not NaN means.
    for chunks in [(60, NC), (60, 24)]:
        with pytest.raises(ValueError, match="x's column sums are not finite"):
            ldask.svd_compress(da.full((MC, NC), 1e308, chunks=chunks), KC, center=True)
    # Wide (x.T: the means are the operator's row means) in a grid: the same error.
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        ldask.svd_compress(nan.rechunk((60, 24)).T, KC, center=True)
    s = _sparse(MC, NC, seed=40)
    bad = s.copy()
    bad.data[17] = np.nan
    for chunks in [(60, NC), (MC, 24), (60, 24)]:
        for center in (False, True):  # found in the sketch, or in the means
            with pytest.raises(ValueError, match="x contains NaN or Inf"):
                ldask.svd_compress(da.from_array(bad, chunks=chunks), KC, center=center)
    for chunks in [(60, NC), (60, 24)]:
        with pytest.raises(ValueError, match="scipy.sparse chunks.*device='cpu' only"):
            ldask.svd_compress(da.from_array(s, chunks=chunks), KC, device="emulator")
    # A given mean with NaN, on a sparse grid too.
    with pytest.raises(ValueError, match="center contains NaN or Inf"):
        ldask.svd_compress(da.from_array(s, chunks=(60, 24)), KC, center=np.full(NC, np.nan))
    # A mean given as a Dask array is computed once; the same answer as the numpy one.
    mu = a.mean(axis=0)
    by_dask = ldask.svd_compress(x, KC, center=da.from_array(mu, chunks=20))
    by_numpy = ldask.svd_compress(x, KC, center=mu)
    np.testing.assert_array_equal(by_dask.S, by_numpy.S)


def _log_column_read(block: np.ndarray, path: str, block_info=None) -> np.ndarray:
    """Record which column block was read."""
    with open(path, "a") as f:
        f.write(f"{block_info[0]['array-location'][1][0]}\n")
    return block


@pytest.mark.parametrize("center", [False, True])
def test_column_chunks_of_a_tall_matrix_are_read_twice_per_power_step(client, tmp_path, center):
    # T = x (tall) in column blocks: T W must be summed before T^T (T W) can start, so
    # the sketch pass (with ||T||^2), its T^T Y, 2 passes per power step but the last,
    # and T^T Q: 2 q + 2 passes, each block once per pass (one more for center=True's means).
    a = _decaying(M, N, seed=41)
    log = tmp_path / "reads.txt"
    x = da.from_array(a, chunks=(M, 20)).map_blocks(_log_column_read, str(log), dtype=a.dtype)
    q = 2
    ldask.svd_compress(x, K, n_iter=q, center=center)
    reads = log.read_text().split()
    assert sorted(set(reads), key=int) == ["0", "20", "40"]
    assert all(reads.count(start) == 2 * q + 2 + int(center) for start in set(reads))


def _log_block_read(block: np.ndarray, path: str, block_info=None) -> np.ndarray:
    """Record which block (its first row and column) was read."""
    location = block_info[0]["array-location"]
    with open(path, "a") as f:
        f.write(f"{location[0][0]},{location[1][0]}\n")
    return block


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("tall", [True, False])
def test_grid_chunks_are_read_twice_per_power_step_and_never_rechunked(client, tmp_path, monkeypatch, tall, center):
    # A grid: T W must be summed over a row's column blocks before T^T (T W) can start, so each power
    # step but the last reads x twice: the sketch pass (with ||T||^2), its T^T Y, and T^T Q -- 2 q + 2
    # passes, each block once per pass (one more for center=True's means).  And no Dask graph built
    # for it rechunks x or x.T (the graphs are built here, in the client's process; a wide x's svd_flip
    # signs, a k x 1 numpy array, are rechunked when Dask multiplies Vt by them).
    rechunked = []
    original = da.Array.rechunk

    def spy(self, *args, **kwargs):
        rechunked.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(da.Array, "rechunk", spy)
    a = _decaying(M, N, seed=42)
    a = a if tall else a.T.copy()
    log = tmp_path / "reads.txt"
    x = da.from_array(a, chunks=(100, 20) if tall else (20, 100)).map_blocks(_log_block_read, str(log),
                                                                             dtype=a.dtype)
    q = 2
    lr = ldask.svd_compress(x, K, n_iter=q, center=center)
    assert not {a.shape, a.T.shape} & set(rechunked), rechunked
    reads = log.read_text().split()
    assert len(set(reads)) == 12
    assert all(reads.count(block) == 2 * q + 2 + int(center) for block in set(reads)), sorted(reads)
    ref = liam_gpu.svd_compress(a, K, n_iter=q, center=center, device="cpu")
    s_tol, vec_tol = (_centred_bounds if center else _rounding_bounds)(a, K)
    np.testing.assert_allclose(lr.S, ref.S, rtol=0, atol=s_tol)
    np.testing.assert_allclose(_as_dense(lr.U), ref.U, rtol=0, atol=vec_tol)
    np.testing.assert_allclose(_as_dense(lr.Vt), ref.Vt, rtol=0, atol=vec_tol)


def test_sparse_centring_sums_do_not_cancel_in_float32():
    # Column (and row) sums of float32 sparse chunks are float64 sums of the
    # values, as in memory: scipy's sum(dtype=float64) accumulates float32 in
    # float32 (1e8 - 1e8 + 1999 ones gave 1998 or 2002 instead of 1999).
    m = 2001
    dense = np.ones((m, 3), np.float32)
    dense[0, 0], dense[1, 0], dense[0, 1], dense[2, 1] = 1e8, -1e8, 1e8, -1e8
    x = sp.csr_matrix(dense)
    truth = dense.astype(np.float64).sum(axis=0)
    f32 = np.dtype(np.float32)
    np.testing.assert_array_equal(dask_tasks.column_sums_part(x, f32, None).ravel(), truth)
    np.testing.assert_array_equal(dask_tasks.row_sums_block(x.T.tocsr(), f32, None).ravel(), truth)
    np.testing.assert_allclose(dask_tasks.row_means_block(x.T.tocsr(), f32, None) * m, truth, rtol=4 * 2.0**-52)


@pytest.mark.parametrize("row_chunks", [(2, 2, 2), (1, 5), (6,)])
def test_left_factor_signs_follow_the_in_memory_convention_across_blocks(row_chunks):
    # Each column's sign makes its largest-magnitude entry positive, a tie going to the first
    # row, as in memory (operators.largest_entry_signs): a tie split across row blocks goes to
    # the earlier block; an all-zero column keeps +1.
    from liam_gpu.operators import largest_entry_signs

    u = np.array([[-3.0, 1.0, 0.25, 0.0],
                  [1.0, 2.0, -0.5, 0.0],
                  [3.0, -2.0, 0.25, 0.0],
                  [0.0, 0.0, 0.0, 0.0],
                  [2.0, 1.0, 0.5, 0.0],
                  [-1.0, -2.0, 0.1, 0.0]])
    q = da.from_array(u, chunks=(row_chunks, 4))
    with dask.config.set(scheduler="synchronous"):
        op = ldask.DaskOperator(q, np.dtype(np.float64), None)
        flipped, signs = op.left_factor(q, np.eye(4))
        flipped = flipped.compute()
    want = largest_entry_signs(np, u, axis=0)[0]
    np.testing.assert_array_equal(want, [-1.0, 1.0, -1.0, 1.0])  # the convention the blocks must reproduce
    np.testing.assert_array_equal(signs, want)
    np.testing.assert_array_equal(flipped, u * want)
