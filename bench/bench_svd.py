"""Randomized truncated SVD against its peers (issue 5).

CPU (peers.md's reference): ``A = U diag(s) V^T``, 8000 x 2000, U and V from
QR of Gaussian matrices (seed 12345), ``s_i = exp(-i/20) + 1e-3``; k = 32,
p = 10, q = 2; float32 and float64.  Ours (``device="cpu"``) against
``sklearn.utils.extmath.randomized_svd``, ``torch.svd_lowrank`` and numpy's
full SVD.

GPU: the same spectrum at 32768 x 8192 float32, k = 64 (ours against
``torch.svd_lowrank`` on CUDA and ``cupy.linalg.svd``), and a batch of
10000 matrices 128 x 64, k = 8 (ours against batched ``torch.linalg.svd``).

Every group records, measured once outside timing, the spectral error ratio
``||A - U S Vt||_2 / sigma_{k+1}`` (1 is optimal) and the largest relative
error of the top-k singular values in ``extra_info``.  ``LIAM_BENCH_QUICK=1``
shrinks every size.
"""
from __future__ import annotations

import functools
import itertools
import os

import numpy as np
import pytest

import liam_gpu as lg

QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"

CPU_SHAPE, CPU_K = ((1000, 250), 16) if QUICK else ((8000, 2000), 32)
GPU_SHAPE, GPU_K = ((4096, 1024), 32) if QUICK else ((32768, 8192), 64)
BATCH, BATCH_SHAPE, BATCH_K = (1000 if QUICK else 10000), (128, 64), 8
P, Q = 10, 2


def _spectrum(n: int) -> np.ndarray:
    return np.exp(-np.arange(n) / 20) + 1e-3


@functools.lru_cache(maxsize=None)
def _reference(m: int, n: int, dtype: str) -> np.ndarray:
    """peers.md's matrix (built once per size in float64, then cast)."""
    if dtype != "float64":
        return _reference(m, n, "float64").astype(dtype)
    rng = np.random.default_rng(12345)
    u = np.linalg.qr(rng.standard_normal((m, n)))[0]
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return (u * _spectrum(n)) @ v.T


def _errors(xp, a, u, s, vt, k: int, iters: int = 40) -> dict:
    """Spectral error ratio (block power iteration on the residual) and top-k error, in float64."""
    a64, u64, s64, vt64 = (xp.asarray(x, dtype=xp.float64) for x in (a, u, s, vt))
    us = u64 * s64
    x = xp.asarray(np.random.default_rng(1).standard_normal((a.shape[1], 4)))
    for _ in range(iters):
        y = a64 @ x - us @ (vt64 @ x)
        x = a64.T @ y - vt64.T @ (us.T @ y)
        x, _ = xp.linalg.qr(x)
    y = a64 @ x - us @ (vt64 @ x)
    spectral = float(xp.linalg.svd(y, compute_uv=False)[0])
    truth = _spectrum(min(a.shape))
    top = float(np.max(np.abs(np.asarray(s64.get() if hasattr(s64, "get") else s64) - truth[:k]) / truth[:k]))
    return {"spectral_error_ratio": spectral / truth[k], "topk_rel_error": top}


# --------------------------------------------------------------------------- CPU


def _cpu_case(benchmark, describe, measure, impl: str, dtype: str, fn) -> None:
    m, n = CPU_SHAPE
    a = _reference(m, n, dtype)
    k = CPU_K
    u, s, vt = fn(a)
    describe(benchmark, op=f"randomized svd k={k} p={P} q={Q}", impl=impl, backend="cpu", shape=(m, n),
             dtype=dtype, flops=2.0 * m * n * (k + P) * (2 * Q + 2), bytes=float(a.nbytes),
             **_errors(np, a, u, s, vt, k))
    measure(benchmark, fn, (a,), backend="cpu")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_liam_gpu(benchmark, describe, measure, dtype):
    _cpu_case(benchmark, describe, measure, "liam_gpu", dtype,
              lambda a: lg.randomized_svd(a, CPU_K, n_oversamples=P, n_iter=Q, device="cpu"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_sklearn(benchmark, describe, measure, peer, dtype):
    extmath = peer("sklearn.utils.extmath")
    _cpu_case(benchmark, describe, measure, "sklearn", dtype,
              lambda a: extmath.randomized_svd(a, CPU_K, n_oversamples=P, n_iter=Q, random_state=0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_torch_svd_lowrank(benchmark, describe, measure, peer, dtype):
    torch = peer("torch")

    def run(a):
        u, s, v = torch.svd_lowrank(torch.from_numpy(a), q=CPU_K + P, niter=Q)
        return u[:, :CPU_K].numpy(), s[:CPU_K].numpy(), v[:, :CPU_K].T.numpy()

    torch.manual_seed(0)
    _cpu_case(benchmark, describe, measure, "torch", dtype, run)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_numpy_full_svd(benchmark, describe, measure, dtype):
    def run(a):
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        return u[:, :CPU_K], s[:CPU_K], vt[:CPU_K]

    _cpu_case(benchmark, describe, measure, "numpy", dtype, run)


# --------------------------------------------------------------------------- GPU


@functools.lru_cache(maxsize=1)
def _gpu_reference():
    import cupy

    m, n = GPU_SHAPE
    rs = cupy.random.RandomState(12345)
    u = cupy.linalg.qr(rs.standard_normal((m, n), dtype=cupy.float32))[0]
    v = cupy.linalg.qr(rs.standard_normal((n, n), dtype=cupy.float32))[0]
    return (u * cupy.asarray(_spectrum(n), dtype=cupy.float32)) @ v.T


def _gpu_case(benchmark, describe, measure, impl: str, fn) -> None:
    import cupy

    a = _gpu_reference()
    m, n = GPU_SHAPE
    u, s, vt = fn(a)
    describe(benchmark, op=f"randomized svd k={GPU_K} p={P} q={Q}", impl=impl, backend="cuda", shape=(m, n),
             dtype="float32", flops=2.0 * m * n * (GPU_K + P) * (2 * Q + 2), bytes=float(a.nbytes),
             **_errors(cupy, a, u, s, vt, GPU_K, iters=20))
    measure(benchmark, fn, (a,), backend="cuda")


@pytest.mark.gpu
def test_gpu_liam_gpu(benchmark, describe, measure):
    _gpu_case(benchmark, describe, measure, "liam_gpu",
              lambda a: lg.randomized_svd(a, GPU_K, n_oversamples=P, n_iter=Q, device="cuda"))


@pytest.mark.gpu
def test_gpu_torch_svd_lowrank(benchmark, describe, measure, peer):
    torch = peer("torch")
    if not torch.cuda.is_available():
        pytest.skip("peer torch has no CUDA device")
    import cupy

    def run(a):
        u, s, v = torch.svd_lowrank(torch.from_dlpack(a), q=GPU_K + P, niter=Q)
        return (cupy.from_dlpack(u[:, :GPU_K].contiguous()), cupy.from_dlpack(s[:GPU_K].contiguous()),
                cupy.from_dlpack(v[:, :GPU_K].T.contiguous()))

    torch.manual_seed(0)
    _gpu_case(benchmark, describe, measure, "torch", run)


@pytest.mark.gpu
def test_gpu_cupy_full_svd(benchmark, describe, measure, peer):
    cupy = peer("cupy")

    def run(a):
        u, s, vt = cupy.linalg.svd(a, full_matrices=False)
        return u[:, :GPU_K], s[:GPU_K], vt[:GPU_K]

    _gpu_case(benchmark, describe, measure, "cupy", run)


def _batch(rotation, backend: str):
    rng = np.random.default_rng(0)
    m, n = BATCH_SHAPE
    return rotation(lambda: rng.standard_normal((BATCH, m, n), dtype=np.float32),
                    nbytes=BATCH * m * n * 4, backend=backend)


def _batch_label(describe, benchmark, impl: str) -> None:
    m, n = BATCH_SHAPE
    describe(benchmark, op=f"batched truncated svd k={BATCH_K}", impl=impl, backend="cuda", shape=(BATCH, m, n),
             dtype="float32", bytes=float(BATCH * (m * n + (m + n + 1) * BATCH_K) * 4))


@pytest.mark.gpu
def test_gpu_batched_liam_gpu(benchmark, describe, measure, rotation):
    inputs = _batch(rotation, "cuda")
    _batch_label(describe, benchmark, "liam_gpu")
    measure(benchmark, lambda a: lg.randomized_svd(a, BATCH_K, device="cuda"), inputs, backend="cuda")


@pytest.mark.gpu
def test_gpu_batched_torch_linalg_svd(benchmark, describe, measure, rotation, peer):
    torch = peer("torch")
    if not torch.cuda.is_available():
        pytest.skip("peer torch has no CUDA device")
    inputs = _batch(rotation, "cuda")
    cycle = itertools.cycle([torch.from_dlpack(a) for (a,) in inputs.copies])

    def run():
        u, s, vt = torch.linalg.svd(next(cycle), full_matrices=False)
        return u[..., :BATCH_K], s[..., :BATCH_K], vt[..., :BATCH_K, :]

    _batch_label(describe, benchmark, "torch")
    measure(benchmark, run, (), backend="cuda")


# --------------------------------------------------------------------------- side by side (CPU)
#
#   python bench/bench_svd.py [--dtype float32] [--rounds 3] [--reps 7] [--seeds 50] [--threads 2]
#
# Each library in its own process (so that torch's OpenMP threads and numpy's
# OpenBLAS threads never spin against each other), the processes alternating
# for --rounds rounds; median time per process, then the median over rounds.
# Accuracy over --seeds seeds (untimed, last round): the residual A - U S Vt is
# applied through the exact float64 factors of A (cheap), so its spectral
# norm costs milliseconds.  Per-seed accuracy varies several-fold with the
# random test matrix, so compare distributions over many seeds, not one.

IMPLS = ("liam_gpu", "torch", "sklearn")


def _factor_with(impl: str, a: np.ndarray, seed: int):
    k = CPU_K
    if impl == "liam_gpu":
        return lg.randomized_svd(a, k, n_oversamples=P, n_iter=Q, random_state=seed, device="cpu")
    if impl == "sklearn":
        from sklearn.utils.extmath import randomized_svd

        return randomized_svd(a, k, n_oversamples=P, n_iter=Q, random_state=seed)
    import torch

    torch.manual_seed(seed)
    u, s, v = torch.svd_lowrank(torch.from_numpy(a), q=k + P, niter=Q)
    return u[:, :k].numpy(), s[:k].numpy(), v[:, :k].T.numpy()


def _worker(impl: str, workdir: str, dtype: str, reps: int, seeds: int) -> None:
    import json
    import time

    a = np.load(os.path.join(workdir, f"a_{dtype}.npy"))
    _factor_with(impl, a, 0)  # warm-up: imports, thread pools, caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _factor_with(impl, a, 0)
        times.append(time.perf_counter() - t0)
    spectral, top = [], []
    if seeds:
        u0, s0, v0 = (np.load(os.path.join(workdir, f"{name}.npy")) for name in ("u0", "s0", "v0"))
        for seed in range(seeds):
            u, s, vt = _factor_with(impl, a, seed)
            spectral.append(_residual_norm(u0, s0, v0, u, s, vt) / s0[CPU_K])
            top.append(float(np.max(np.abs(np.asarray(s, dtype=np.float64) - s0[:CPU_K]) / s0[:CPU_K])))
    print(json.dumps({"median": float(np.median(times)), "spectral": spectral, "top": top}))


def _residual_norm(u0, s0, v0, u, s, vt) -> float:
    """``||A - U S Vt||_2`` for ``A = u0 diag(s0) v0^T`` (orthonormal float64 factors), in A's bases."""
    p = u0.T @ u.astype(np.float64) * s.astype(np.float64)  # n x k
    q = v0.T @ vt.T.astype(np.float64)                      # n x k

    def apply(x):
        return s0[:, None] * x - p @ (q.T @ x)

    def apply_t(y):
        return s0[:, None] * y - q @ (p.T @ y)

    x = np.random.default_rng(1).standard_normal((len(s0), 8))
    for _ in range(60):
        x, _ = np.linalg.qr(apply_t(apply(x)))
    return float(np.linalg.svd(apply(x), compute_uv=False)[0])


def _side_by_side(dtype: str, rounds: int, reps: int, seeds: int, threads: int) -> None:
    import json
    import subprocess
    import sys
    import tempfile

    m, n = CPU_SHAPE
    rng = np.random.default_rng(12345)
    u0 = np.linalg.qr(rng.standard_normal((m, n)))[0]
    v0 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    s0 = _spectrum(n)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as workdir:
        np.save(os.path.join(workdir, f"a_{dtype}.npy"), ((u0 * s0) @ v0.T).astype(dtype))
        for name, value in (("u0", u0), ("s0", s0), ("v0", v0)):
            np.save(os.path.join(workdir, f"{name}.npy"), value)
        timings: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        accuracy: dict[str, dict] = {}
        for r in range(rounds):
            for impl in IMPLS:
                # Accuracy (untimed) in the last round only.
                args = [sys.executable, __file__, "--worker", impl, workdir, dtype, str(reps),
                        str(seeds if r == rounds - 1 else 0)]
                out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                timings[impl].append(result["median"])
                if result["spectral"]:
                    accuracy[impl] = result
    print(f"randomized SVD {m} x {n} {dtype}, k={CPU_K}, p={P}, q={Q}, {threads} threads; time: median over "
          f"{rounds} rounds (one process per library per round) of the median of {reps} calls; accuracy: "
          f"{seeds} seeds")
    print(f"{'impl':10s} {'time ms':>8s} {'vs torch':>9s} {'spectral/s_k+1 median':>22s} {'p90':>9s} "
          f"{'top-k err median':>17s} {'mean':>9s} {'p90':>9s}")
    base = float(np.median(timings["torch"]))
    for impl in IMPLS:
        t = float(np.median(timings[impl]))
        sp, top = np.array(accuracy[impl]["spectral"]), np.array(accuracy[impl]["top"])
        print(f"{impl:10s} {t * 1e3:8.1f} {t / base:9.2f} {np.median(sp):22.6f} {np.percentile(sp, 90):9.6f} "
              f"{np.median(top):17.2e} {top.mean():9.2e} {np.percentile(top, 90):9.2e}")


if __name__ == "__main__":
    import argparse
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        parser = argparse.ArgumentParser(description="CPU randomized SVD side by side, one process per library")
        parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--reps", type=int, default=7)
        parser.add_argument("--seeds", type=int, default=50)
        parser.add_argument("--threads", type=int, default=2)
        args = parser.parse_args()
        _side_by_side(args.dtype, args.rounds, args.reps, args.seeds, args.threads)
