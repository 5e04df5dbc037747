"""Batched SVD of many small matrices: 10000 x (128 x 64) float32.

GPU: the one-block Jacobi kernel (``kernels/batched_svd.cu`` through
``liam_gpu.launch.batched_svd``) against ``torch.linalg.svd`` and
``cupy.linalg.svd`` on the same stack (thin factors, U, S and Vt all computed).
CPU: numpy's batched ``np.linalg.svd`` for reference (a smaller batch with
``LIAM_BENCH_QUICK=1``).  The target is at least 5x over torch on an H200.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from liam_gpu.launch import batched_svd as svd_launch

QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"

M, N = 128, 64
GPU_BATCH = 10000
CPU_BATCH = 20 if QUICK else GPU_BATCH
DTYPE = np.float32
OP = "batched svd (thin, U S Vt)"


def _bytes(batch: int) -> float:
    """Input read once, U, S and Vt written once."""
    r = min(M, N)
    return float(batch * (M * N + M * r + r + r * N) * np.dtype(DTYPE).itemsize)


def _make(batch: int):
    rng = np.random.default_rng(0)
    return lambda: rng.standard_normal((batch, M, N), dtype=DTYPE)


def _label(describe, benchmark, impl: str, backend: str, batch: int) -> None:
    describe(benchmark, op=OP, impl=impl, backend=backend, shape=(batch, M, N), dtype=DTYPE,
             bytes=_bytes(batch))


@pytest.mark.gpu
def test_liam_gpu_kernel(benchmark, describe, measure, rotation):
    from liam_gpu.launch.runtime import cuda_runtime

    runtime = cuda_runtime(0)
    inputs = rotation(_make(GPU_BATCH), nbytes=GPU_BATCH * M * N * 4, backend="cuda")
    _label(describe, benchmark, "liam_gpu", "cuda", GPU_BATCH)
    measure(benchmark, lambda a: svd_launch.batched_svd(runtime, a), inputs, backend="cuda")


@pytest.mark.gpu
def test_torch_linalg_svd(benchmark, describe, measure, rotation, peer):
    torch = peer("torch")
    if not torch.cuda.is_available():
        pytest.skip("peer torch has no CUDA device")
    inputs = rotation(_make(GPU_BATCH), nbytes=GPU_BATCH * M * N * 4, backend="cuda")
    # The same device memory seen as torch tensors (DLPack, no copy).
    tensors = itertools.cycle([(torch.from_dlpack(a),) for (a,) in inputs.copies])
    _label(describe, benchmark, "torch", "cuda", GPU_BATCH)
    measure(benchmark, lambda t: torch.linalg.svd(t, full_matrices=False),
            lambda: next(tensors), backend="cuda")


@pytest.mark.gpu
def test_cupy_linalg_svd(benchmark, describe, measure, rotation, peer):
    cupy = peer("cupy")
    inputs = rotation(_make(GPU_BATCH), nbytes=GPU_BATCH * M * N * 4, backend="cuda")
    _label(describe, benchmark, "cupy", "cuda", GPU_BATCH)
    measure(benchmark, lambda a: cupy.linalg.svd(a, full_matrices=False), inputs, backend="cuda")


def test_numpy_linalg_svd(benchmark, describe, measure, rotation):
    inputs = rotation(_make(CPU_BATCH), nbytes=CPU_BATCH * M * N * 4, backend="cpu")
    _label(describe, benchmark, "numpy", "cpu", CPU_BATCH)
    measure(benchmark, lambda a: np.linalg.svd(a, full_matrices=False), inputs, backend="cpu")
