"""Out-of-core randomized SVD on a Dask cluster: ``liam_gpu.dask.svd_compress`` against
``dask.array.linalg.svd_compressed``.

A tall float64 matrix several times larger than one worker's memory limit
(and than the whole cluster's) is factored by two worker processes with the
same rank ``k``, oversampling ``p`` and power iterations ``q`` (so the same
sketch width ``l = k + p``; Dask reads ``A`` ``2 q + 2`` times, ours ``q + 2``
times, its power steps forming ``A^T A W`` in one pass).  The
matrix is never stored: each chunk is generated when a pass reads it, as
``A_i = G_i diag(sigma) V^T`` with ``G`` Gaussian (``m x r``, Dask's
per-chunk seeded generator, so every pass sees the same ``A``), ``V``
orthonormal and ``sigma_j = 1 / j``.  The exact singular values of ``A`` come
from the small ``G^T G`` (one cheap pass over ``G``), which gives the optimal
rank-``k`` error to compare with.

A second, small benchmark (in memory, ``sigma_j = exp(-j / 2)``, float64 and
float32, ``q = 4``) measures accuracy where it differs: on a steep spectrum
power iterations without normalisation (Dask's default ``iterator="power"``)
lose every direction but the leading ones.

Each implementation of the out-of-core benchmark gets a fresh cluster; its workers' peak resident memory
is reset (``/proc/self/clear_refs``) after a small untimed warm-up call, then
read (``VmHWM``) after the timed call.  One round: a call is tens of seconds.
Recorded in ``extra_info``: ``peak_worker_mb`` (the larger worker's peak),
``baseline_worker_mb`` (its resident memory before the call),
``worker_limit_mb``, ``matrix_mb``, ``relative_error``
(``||A - U S Vt||_F / ||A||_F``, one more untimed pass), ``optimal_error``
and ``max_singular_value_error`` (the largest relative error of the ``k``
singular values).  Run::

    python -m pytest bench/bench_dask.py -s --benchmark-columns=median
    LIAM_BENCH_QUICK=1 python -m pytest bench/bench_dask.py -s   # a smoke test, about 15 s

With ``LIAM_BENCH_QUICK=1`` the sizes shrink (an 8000 x 500 matrix of 32 MB, no
longer out of core: a smoke test of the same comparison; the steep spectrum at
2000 x 300 in 4 blocks) and every benchmark of this file shares one cluster,
started and warmed up for all three implementations once (starting a cluster
takes seconds on a small machine), so the steep-spectrum calls need no warm-up
round of their own.  The peak memory is still reset after the warm-up, so
``peak_worker_mb`` counts the timed call.  The cluster then stays up, idle,
until the quick run ends (the files take turns), at about a tenth of a core.

``docs/distributed.md`` holds the numbers measured so.
"""
from __future__ import annotations

import contextlib
import math
import os
import resource

import numpy as np
import pytest

QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"

#: The matrix: rows, columns, rows per chunk, and the rank ``r`` of its generator.
ROWS, COLS, CHUNK_ROWS, LATENT = (8_000, 500, 2_000, 100) if QUICK else (400_000, 500, 4_000, 100)
#: The factorization asked of both implementations.
RANK, OVERSAMPLES, POWER_ITERS = 20, 10, 2
#: The cluster: worker processes, one thread each, and each worker's memory limit.
WORKERS, WORKER_LIMIT = 2, 300 * 2**20
SEED = 2026

IMPLS = ["liam_gpu.dask", "dask svd_compressed (power)", "dask svd_compressed (QR)"]


def _mix() -> tuple[np.ndarray, np.ndarray]:
    """``diag(sigma) V^T`` (r x n) and ``sigma``."""
    rng = np.random.default_rng(SEED)
    v, _ = np.linalg.qr(rng.standard_normal((COLS, LATENT)))
    sigma = 1.0 / np.arange(1, LATENT + 1)
    return sigma[:, None] * v.T, sigma


def _generator(da, delayed):
    """The lazy Gaussian factor ``G`` and the lazy matrix ``A = G diag(sigma) V^T``."""
    mix, _ = _mix()
    g = da.random.default_rng(SEED).standard_normal((ROWS, LATENT), chunks=(CHUNK_ROWS, LATENT))
    a = g.map_blocks(np.matmul, delayed(mix), chunks=(g.chunks[0], (COLS,)), dtype=np.float64)
    return g, a


def _passes(impl: str) -> int:
    """Reads of ``A``: ours fuses ``A W`` and ``A^T (A W)`` into one pass per power step."""
    return POWER_ITERS + 2 if impl == "liam_gpu.dask" else 2 * POWER_ITERS + 2


def _rss() -> tuple[int, int]:
    """This process's resident and peak resident memory in bytes (``VmRSS``, ``VmHWM``)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    if "VmHWM" in fields:
        return int(fields["VmRSS"][0]) * 1024, int(fields["VmHWM"][0]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak, peak


def _reset_peak() -> tuple[int, int]:
    """Reset the peak resident memory of this process (Linux >= 4.0) and return ``_rss()``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss()


def _run(impl: str, x, da, dask):
    """Factor ``x`` and return ``(U, S, Vt)``: ``U`` persisted on the workers, ``S`` and ``Vt`` on the client."""
    if impl == "liam_gpu.dask":
        from liam_gpu import dask as ldask

        lr = ldask.svd_compress(x, RANK, n_oversamples=OVERSAMPLES, n_iter=POWER_ITERS, random_state=SEED)
        return lr.U, lr.S, lr.Vt
    iterator = "QR" if impl.endswith("(QR)") else "power"
    u, s, vt = da.linalg.svd_compressed(x, RANK, iterator=iterator, n_power_iter=POWER_ITERS,
                                        n_oversamples=OVERSAMPLES, seed=SEED, compute=True)
    u, s, vt = dask.persist(u, s, vt)
    s, vt = dask.compute(s, vt)
    return u, s, vt


@contextlib.contextmanager
def _cluster(distributed, memory_limit):
    """``WORKERS`` worker processes of one thread each, and a client on them."""
    with (
        distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                 memory_limit=memory_limit, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _warm_up(impl: str, da, dask) -> None:
    """Imports and first-call costs of ``impl`` on the workers, paid on a small matrix outside timing."""
    _run(impl, da.random.default_rng(0).standard_normal((2 * COLS, COLS), chunks=(COLS, COLS)), da, dask)


def _cluster_scope(fixture_name: str, config) -> str:
    """Quick: one cluster for the whole run (the files take turns, so a module scope would restart it)."""
    return "session" if QUICK else "module"


@pytest.fixture(scope=_cluster_scope)
def dask_cluster():
    """The client of the steep-spectrum benchmark's cluster (default memory limit, not warmed up).

    With ``LIAM_BENCH_QUICK=1`` the out-of-core benchmark uses it too: it then has
    the out-of-core ``WORKER_LIMIT`` and is warmed up for every implementation.
    Request it through ``request.getfixturevalue`` after ``peer("distributed")``,
    so that a missing peer is reported as such.
    """
    import dask
    import dask.array as da
    import distributed

    with _cluster(distributed, WORKER_LIMIT if QUICK else "auto") as client:
        if QUICK:
            for impl in IMPLS:
                _warm_up(impl, da, dask)
        yield client


def _residual_block(a: np.ndarray, u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> np.ndarray:
    """``[[||A_i - U_i diag(S) Vt||_F^2]]`` with one block-sized temporary."""
    r = np.matmul(u * s, vt)
    np.subtract(a, r, out=r)
    flat = r.reshape(-1)
    return np.array([[[float(np.dot(flat, flat))]]])


def _residual_squares(da, x, u, s, vt):
    """``||A - U diag(S) Vt||_F^2``: one pass over ``A``, block by block."""
    u = u.rechunk({0: x.chunks[0], 1: -1})
    parts = da.blockwise(_residual_block, "iab", x, "ia", u, "ib", np.asarray(s), None, np.asarray(vt), None,
                         adjust_chunks={"i": 1, "a": 1, "b": 1}, dtype=np.float64, meta=np.empty((0, 0, 0)))
    return parts.sum()


def _timed_out_of_core(benchmark, client, impl: str, g, x, da, dask):
    """The timed call on a warmed-up cluster: ``S``, the workers' peak and baseline memory, the error terms."""
    before = client.run(_reset_peak)
    u, s, vt = benchmark.pedantic(_run, args=(impl, x, da, dask), rounds=1, iterations=1)
    after = client.run(_rss)
    peak = max(hwm for _, hwm in after.values())
    baseline = max(rss for rss, _ in before.values())
    residual2, norm2 = dask.compute(_residual_squares(da, x, u, s, vt), (x**2).sum())
    gtg = (g.T @ g).compute()
    return s, peak, baseline, residual2, norm2, gtg


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_core_tall_svd(benchmark, describe, peer, request, impl):
    dask = peer("dask")
    distributed = peer("distributed")
    import dask.array as da

    g, x = _generator(da, dask.delayed)
    if QUICK:  # the shared cluster, already warmed up for every implementation
        client = request.getfixturevalue("dask_cluster")
        s, peak, baseline, residual2, norm2, gtg = _timed_out_of_core(benchmark, client, impl, g, x, da, dask)
    else:
        with _cluster(distributed, WORKER_LIMIT) as client:
            _warm_up(impl, da, dask)  # imports and first-call costs on the workers stay out of the numbers
            s, peak, baseline, residual2, norm2, gtg = _timed_out_of_core(benchmark, client, impl, g, x, da, dask)

    _, sigma = _mix()
    exact = np.sqrt(np.clip(np.linalg.eigvalsh(sigma[:, None] * gtg * sigma[None, :]), 0, None))[::-1]
    optimal = math.sqrt(float(np.sum(exact[RANK:] ** 2)) / float(np.sum(exact**2)))
    error = math.sqrt(float(residual2) / float(norm2))
    sv_error = float(np.max(np.abs(np.asarray(s) - exact[:RANK]) / exact[:RANK]))
    mb = 2.0**-20
    describe(benchmark, op=f"out-of-core svd k={RANK} p={OVERSAMPLES} q={POWER_ITERS}, {WORKERS} dask workers",
             impl=impl, backend="cpu", shape=(ROWS, COLS, RANK), dtype=np.float64,
             bytes=_passes(impl) * ROWS * COLS * 8, passes=_passes(impl),
             peak_worker_mb=peak * mb, baseline_worker_mb=baseline * mb, worker_limit_mb=WORKER_LIMIT * mb,
             matrix_mb=ROWS * COLS * 8 * mb, relative_error=error, optimal_error=optimal,
             max_singular_value_error=sv_error)
    stats = getattr(benchmark, "stats", None)
    seconds = float("nan") if stats is None else stats.stats.median
    print(f"\n{impl:30s} {seconds:7.1f} s  peak/worker {peak * mb:6.0f} MB (baseline {baseline * mb:.0f} MB, "
          f"limit {WORKER_LIMIT * mb:.0f} MB, A {ROWS * COLS * 8 * mb:.0f} MB)  rel. error {error:.6f} "
          f"(optimal {optimal:.6f})  max sv error {sv_error:.2e}")
    if impl == "liam_gpu.dask":
        assert error <= 1.5 * optimal, f"relative error {error} is far from the optimum {optimal}"


# --------------------------------------------------------------------------- accuracy on a steep spectrum

#: A steep spectrum (sigma_j = exp(-j / 2)), where unnormalized power iterations lose the trailing directions:
#: rows, columns, power iterations, and the row blocks it is scattered in.
STEEP_ROWS, STEEP_COLS, STEEP_ITERS, STEEP_PARTS = (2_000, 300, 4, 4) if QUICK else (20_000, 300, 4, 10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("impl", IMPLS)
def test_accuracy_on_a_steep_spectrum(benchmark, describe, peer, request, impl, dtype):
    dask = peer("dask")
    peer("distributed")
    import dask.array as da

    client = request.getfixturevalue("dask_cluster")

    rng = np.random.default_rng(SEED)
    u0, _ = np.linalg.qr(rng.standard_normal((STEEP_ROWS, STEEP_COLS)))
    v0, _ = np.linalg.qr(rng.standard_normal((STEEP_COLS, STEEP_COLS)))
    sigma = np.exp(-np.arange(STEEP_COLS) / 2)
    exact = (u0 * sigma) @ v0.T
    # Scattered to the workers' memory first: the timed calls read it there, as they would a persisted dataset.
    parts = np.array_split(exact.astype(dtype), STEEP_PARTS)
    x = da.concatenate([da.from_delayed(b, shape=part.shape, dtype=dtype)
                        for b, part in zip(client.scatter(parts), parts)])

    def run():
        if impl == "liam_gpu.dask":
            from liam_gpu import dask as ldask

            lr = ldask.svd_compress(x, RANK, n_oversamples=OVERSAMPLES, n_iter=STEEP_ITERS, random_state=SEED)
            return lr.U.compute(), lr.S, lr.Vt
        iterator = "QR" if impl.endswith("(QR)") else "power"
        return dask.compute(*da.linalg.svd_compressed(x, RANK, iterator=iterator, n_power_iter=STEEP_ITERS,
                                                      n_oversamples=OVERSAMPLES, seed=SEED, compute=True))

    # Quick: the shared cluster was warmed up for every implementation when it started.
    u, s, vt = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0 if QUICK else 1)
    error = float(np.linalg.norm(exact - (u.astype(np.float64) * s) @ vt) / np.linalg.norm(exact))
    optimal = math.sqrt(float(np.sum(sigma[RANK:] ** 2) / np.sum(sigma**2)))
    sv_error = float(np.max(np.abs(np.asarray(s, dtype=np.float64) - sigma[:RANK]) / sigma[:RANK]))
    describe(benchmark, op=f"svd of a steep spectrum k={RANK} p={OVERSAMPLES} q={STEEP_ITERS}, "
             f"{WORKERS} dask workers", impl=impl, backend="cpu", shape=(STEEP_ROWS, STEEP_COLS, RANK),
             dtype=dtype, relative_error=error, optimal_error=optimal, error_over_optimal=error / optimal,
             max_singular_value_error=sv_error)
    print(f"\n{impl:30s} {np.dtype(dtype).name:8s} rel. error {error:.3e} = {error / optimal:8.3g} x optimal, "
          f"max sv error {sv_error:.1e}")
    if impl == "liam_gpu.dask":
        assert error <= 1.5 * optimal, f"relative error {error} is far from the optimum {optimal}"


# --------------------------------------------------------------------------- a grid of chunks against row chunks

#: The same matrix in worker memory, in row chunks and in a grid of chunks (the row chunks split along the
#: columns, never rechunked by the call): rows, columns, rows per chunk, columns per grid chunk.
GRID_ROWS, GRID_COLS, GRID_CHUNK_ROWS, GRID_CHUNK_COLS = (
    (1_000, 200, 500, 100) if QUICK else (20_000, 2_000, 2_500, 500))


#: The row chunks' singular values, for the grid case that follows it to compare with.
_ROW_CHUNKS_S: dict[str, np.ndarray] = {}


@pytest.mark.parametrize("layout", ["row chunks", "grid"])
def test_grid_against_row_chunks(benchmark, describe, peer, request, layout):
    dask = peer("dask")
    peer("distributed")
    import dask.array as da

    from liam_gpu import dask as ldask

    request.getfixturevalue("dask_cluster")  # the client every call below runs on
    # A = G diag(1/j) V^T (rank LATENT), generated on the workers in row chunks; for the grid those chunks
    # are split along the columns before the timed call (a rechunk within each row chunk).
    mix, sigma = _mix_of(GRID_COLS)
    g = da.random.default_rng(SEED).standard_normal((GRID_ROWS, LATENT), chunks=(GRID_CHUNK_ROWS, LATENT))
    x = g.map_blocks(np.matmul, dask.delayed(mix), chunks=(g.chunks[0], (GRID_COLS,)), dtype=np.float64)
    if layout == "grid":
        x = x.rechunk({1: GRID_CHUNK_COLS})
    x = x.persist()
    distributed_wait(x)

    def run():
        lr = ldask.svd_compress(x, RANK, n_oversamples=OVERSAMPLES, n_iter=POWER_ITERS, random_state=SEED)
        return lr.U, lr.S, lr.Vt

    u, s, vt = benchmark.pedantic(run, rounds=1 if QUICK else 3, iterations=1, warmup_rounds=0 if QUICK else 1)
    u = u.rechunk({0: x.chunks[0]}).persist()
    x_rows = x.rechunk({1: -1})
    residual2, norm2 = dask.compute(_residual_squares(da, x_rows, u, s, vt), (x_rows**2).sum())
    gtg = (g.T @ g).compute()
    exact = np.sqrt(np.clip(np.linalg.eigvalsh(sigma[:, None] * gtg * sigma[None, :]), 0, None))[::-1]
    optimal = math.sqrt(float(np.sum(exact[RANK:] ** 2)) / float(np.sum(exact**2)))
    error = math.sqrt(float(residual2) / float(norm2))
    sv_error = float(np.max(np.abs(np.asarray(s) - exact[:RANK]) / exact[:RANK]))
    passes = POWER_ITERS + 2 if layout == "row chunks" else 2 * POWER_ITERS + 2
    describe(benchmark, op=f"svd k={RANK} p={OVERSAMPLES} q={POWER_ITERS} in worker memory, {WORKERS} dask workers",
             impl=f"liam_gpu.dask ({layout})", backend="cpu", shape=(GRID_ROWS, GRID_COLS, RANK),
             dtype=np.float64, bytes=passes * GRID_ROWS * GRID_COLS * 8, passes=passes, blocks=x.numblocks,
             relative_error=error, optimal_error=optimal, max_singular_value_error=sv_error,
             singular_values=[float(v) for v in s])
    stats = getattr(benchmark, "stats", None)
    seconds = float("nan") if stats is None else stats.stats.median
    # The grid's singular values against the row chunks' (same matrix, seed and engine): rounding only.
    if layout == "row chunks":
        _ROW_CHUNKS_S["s"] = np.asarray(s, dtype=np.float64)
    elif "s" in _ROW_CHUNKS_S:
        benchmark.extra_info["max_s_difference_to_row_chunks"] = float(
            np.max(np.abs(np.asarray(s) - _ROW_CHUNKS_S["s"])) / _ROW_CHUNKS_S["s"][0])
    same = benchmark.extra_info.get("max_s_difference_to_row_chunks")
    print(f"\nliam_gpu.dask ({layout:10s}) {x.numblocks} blocks, {passes} passes: {seconds:6.2f} s  "
          f"rel. error {error:.8f} (optimal {optimal:.8f})  max sv error {sv_error:.2e}"
          + ("" if same is None else f"  max |S - S(row chunks)| / S[0] = {same:.1e}"))
    assert error <= 1.5 * optimal, f"relative error {error} is far from the optimum {optimal}"


def _mix_of(cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``diag(sigma) V^T`` (r x cols) and ``sigma = 1 / j``, as :func:`_mix` for another width."""
    rng = np.random.default_rng(SEED)
    v, _ = np.linalg.qr(rng.standard_normal((cols, LATENT)))
    sigma = 1.0 / np.arange(1, LATENT + 1)
    return sigma[:, None] * v.T, sigma


def distributed_wait(x) -> None:
    """Wait until a persisted Dask array is in worker memory (so that the timed call reads it there)."""
    import distributed

    distributed.wait(x)
