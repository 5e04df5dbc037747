"""The ALDA scheduler: throughput against device count, scaling efficiency, overhead per chunk.

Three groups:

* a batched transform ``gelu(x @ W.T + b)`` over the rows of ``x`` and a
  batched ``svd_compress`` over a stack, each split over 1, 2 and 4 devices;
* the scheduler's own cost per chunk: an identity function over many one-item
  chunks (goal: under 50 µs per chunk on the CPU).

Without a GPU the devices are virtual ``cpu:i`` workers, with BLAS limited to
one thread per call, so that ``n`` workers can use at most ``min(n, cores)``
cores and the speed-up over one worker shows how well the scheduler keeps
parallel devices busy.  With GPUs the same benchmarks run on ``cuda:0..n-1``
(counts above the GPUs present are skipped), plus the overlapped pipeline
against a plain ``device="cuda:0"`` call for a host-resident batch.

Each benchmark's ``extra_info`` holds ``devices``, ``ideal_speedup`` and, once
the one-device run of its group has been timed in the same session,
``speedup`` and ``scaling_efficiency = speedup / ideal_speedup``; the overhead
benchmarks hold ``us_per_chunk``.  Run::

    python -m pytest bench/bench_scheduler.py --benchmark-columns=median,rounds
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu.backends import cuda_device_count

QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"
CORES = os.cpu_count() or 1
DEVICE_COUNTS = (1, 2, 4)

ROWS, WIDTH = (8_000, 128) if QUICK else (200_000, 256)
STACK, M, N, RANK = (64, 64, 32, 8) if QUICK else (1024, 128, 64, 8)
OVERHEAD_CHUNKS = 1_000 if QUICK else 20_000
GPU_ROWS = 1_000_000

#: Median seconds of the one-device run of each group, for the speed-ups.
_ONE_DEVICE: dict[str, float] = {}


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread per call: each virtual CPU device then uses one core."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def _devices(kind: str, count: int) -> list[str]:
    if kind == "cuda" and count > cuda_device_count():
        pytest.skip(f"needs {count} CUDA devices, {cuda_device_count()} present")
    return [f"{kind}:{i}" for i in range(count)]


def _ideal(kind: str, count: int) -> int:
    return count if kind == "cuda" else min(count, CORES)


def _scaling(benchmark, group: str, count: int, ideal: int) -> None:
    """Record speed-up and efficiency against the group's one-device median."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    median = stats.stats.median
    if count == 1:
        _ONE_DEVICE[group] = median
    base = _ONE_DEVICE.get(group)
    benchmark.extra_info.update(devices=count, ideal_speedup=ideal)
    if base is not None:
        speedup = base / median
        benchmark.extra_info.update(speedup=speedup, scaling_efficiency=speedup / ideal)


KINDS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("count", DEVICE_COUNTS)
def test_batched_transform(benchmark, describe, measure, rotation, one_blas_thread, kind, count):
    rows = GPU_ROWS if kind == "cuda" else ROWS
    rng = np.random.default_rng(0)
    w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32)
    b = rng.standard_normal(WIDTH, dtype=np.float32)
    inputs = rotation(lambda: (rng.standard_normal((rows, WIDTH), dtype=np.float32),),
                      nbytes=4 * rows * WIDTH, backend="cpu")
    sched = lg.Scheduler(_devices(kind, count), chunk_size=rows // 64)
    describe(benchmark, op=f"scheduled transform gelu ({kind})", impl=f"liam_gpu x{count}", backend=kind,
             shape=(rows, WIDTH, WIDTH), dtype=np.float32, flops=2 * rows * WIDTH * WIDTH,
             bytes=4 * (2 * rows * WIDTH + WIDTH * WIDTH))
    measure(benchmark, lambda x: lg.transform_matrix(x, w, b, "gelu", device=sched), inputs, backend=kind)
    _scaling(benchmark, f"transform {kind}", count, _ideal(kind, count))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("count", DEVICE_COUNTS)
def test_batched_svd(benchmark, describe, measure, rotation, one_blas_thread, kind, count):
    if importlib.util.find_spec("liam_gpu.svd") is None:
        pytest.skip("liam_gpu.svd (issue 5) has not landed")
    rng = np.random.default_rng(0)
    inputs = rotation(lambda: (rng.standard_normal((STACK, M, N), dtype=np.float32),),
                      nbytes=4 * STACK * M * N, backend="cpu")
    sched = lg.Scheduler(_devices(kind, count), chunk_size=max(1, STACK // 64))
    describe(benchmark, op=f"scheduled batched svd_compress k={RANK} ({kind})", impl=f"liam_gpu x{count}",
             backend=kind, shape=(STACK, M, N), dtype=np.float32, bytes=4 * STACK * (M * N + (M + N + 1) * RANK))
    measure(benchmark, lambda a: lg.svd_compress(a, k=RANK, device=sched), inputs, backend=kind)
    _scaling(benchmark, f"svd {kind}", count, _ideal(kind, count))


@pytest.mark.parametrize("count", DEVICE_COUNTS)
def test_overhead_per_chunk(benchmark, describe, measure, count):
    batch = np.arange(OVERHEAD_CHUNKS, dtype=np.float64).reshape(-1, 1)
    sched = lg.Scheduler(_devices("cpu", count), chunk_size=1)
    describe(benchmark, op="scheduler overhead (identity, 1-item chunks)", impl=f"liam_gpu x{count}",
             backend="cpu", shape=(OVERHEAD_CHUNKS,), dtype=np.float64)
    measure(benchmark, lambda: sched.map(lambda chunk: chunk, batch), backend="cpu")
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info.update(devices=count, us_per_chunk=stats.stats.median / OVERHEAD_CHUNKS * 1e6)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["scheduler cuda:0 (overlapped)", "device=cuda:0 (one copy, then compute)"])
def test_host_batch_overlap_on_one_gpu(benchmark, describe, measure, path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((GPU_ROWS, WIDTH), dtype=np.float32)
    w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32)
    device = lg.Scheduler(["cuda:0"], chunk_size=GPU_ROWS // 64) if path.startswith("scheduler") else "cuda:0"
    describe(benchmark, op="host batch transform through one GPU", impl=path, backend="cuda",
             shape=(GPU_ROWS, WIDTH, WIDTH), dtype=np.float32, bytes=4 * (2 * GPU_ROWS * WIDTH + WIDTH * WIDTH))
    measure(benchmark, lambda: lg.transform_matrix(x, w, None, "gelu", device=device), backend="cuda")
