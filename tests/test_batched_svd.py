"""The batched small-matrix SVD kernel (kernels/batched_svd.cu) through its launch wrapper.

The kernel runs on the CPU emulator (numpy arrays stand in for device memory)
and, where CuPy sees a GPU, on the device.  Every result is checked against
``np.linalg.svd`` in float64 with a tolerance derived from the dtype:
``max(m, n) * eps`` is the backward error a stable SVD guarantees, so it bounds
the singular value error (Weyl), the loss of orthogonality of U and V and the
reconstruction error, each relative to ``sigma_max``.

Documented choice tested here: a column of U whose singular value is zero is
an orthonormal completion, so U always has orthonormal columns (the zero matrix
gives U = I[:, :r] and Vt = I).

Emulator sizes stay small (at most 48 x 24, batches of 2-3): every thread of a
block is a fiber there.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from liam_gpu.backends import emulator_available
from liam_gpu.launch import batched_svd as svd_launch
from liam_gpu.launch.runtime import emulator_runtime

needs_emulator = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]


def _tol(dtype, m: int, n: int) -> float:
    """Backward error bound of a stable SVD of an m x n matrix, relative to sigma_max."""
    return max(m, n) * float(np.finfo(dtype).eps)


def _svd(a: np.ndarray):
    return svd_launch.batched_svd(emulator_runtime(), a)


def _assert_valid_svd(a: np.ndarray, u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> None:
    """U S Vt is a thin SVD of every a[i], within the dtype-derived tolerance."""
    batch, m, n = a.shape
    r = min(m, n)
    assert u.shape == (batch, m, r) and s.shape == (batch, r) and vt.shape == (batch, r, n)
    assert u.dtype == s.dtype == vt.dtype == a.dtype
    tol = _tol(a.dtype, m, n)
    a64 = a.astype(np.float64)
    ref = np.linalg.svd(a64, compute_uv=False)
    smax = ref[:, :1]
    assert np.all(np.diff(s, axis=1) <= 0), "singular values must be descending"
    assert np.all(s >= 0)
    assert np.all(np.abs(s - ref) <= tol * smax), np.abs(s - ref).max(axis=1)
    eye = np.eye(r)
    u64, vt64 = u.astype(np.float64), vt.astype(np.float64)
    assert np.abs(np.swapaxes(u64, 1, 2) @ u64 - eye).max() <= tol, "U columns not orthonormal"
    assert np.abs(vt64 @ np.swapaxes(vt64, 1, 2) - eye).max() <= tol, "Vt rows not orthonormal"
    rebuilt = (u64 * s.astype(np.float64)[:, None, :]) @ vt64
    assert np.all(np.abs(rebuilt - a64).max(axis=(1, 2)) <= tol * smax[:, 0])


def _with_spectrum(rng, m: int, n: int, sigma: np.ndarray) -> np.ndarray:
    """An m x n matrix with the given singular values and random singular vectors."""
    q1, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    q2, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return (q1 * sigma) @ q2.T


# --------------------------------------------------------------------------- correctness


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((3, 48, 24), id="tall"),
        pytest.param((2, 24, 24), id="square"),
        pytest.param((2, 20, 40), id="wide"),
        pytest.param((3, 1, 1), id="1x1"),
        pytest.param((2, 33, 5), id="tall-odd-r-two-rows-per-lane"),
        pytest.param((2, 5, 33), id="wide-odd-r"),
        pytest.param((2, 17, 1), id="column"),
        pytest.param((2, 1, 17), id="row"),
        # Few columns keep these cheap while reaching the 4- and 8-rows-per-lane kernels.
        pytest.param((2, 70, 3), id="tall-four-rows-per-lane"),
        pytest.param((2, 3, 200), id="wide-eight-rows-per-lane"),
    ],
)
def test_random_matrices_match_lapack(rng, dtype, shape):
    a = rng.standard_normal(shape).astype(dtype)
    _assert_valid_svd(a, *_svd(a))


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_deficient_has_zero_tail_and_orthonormal_factors(rng, dtype):
    rank = 4
    a = (rng.standard_normal((3, 30, rank)) @ rng.standard_normal((3, rank, 12))).astype(dtype)
    u, s, vt = _svd(a)
    _assert_valid_svd(a, u, s, vt)
    assert np.all(s[:, rank:] <= _tol(dtype, 30, 12) * s[:, :1])


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 10, 6), (2, 6, 10)], ids=["tall", "wide"])
def test_zero_matrix_gives_identity_factors(dtype, shape):
    a = np.zeros(shape, dtype=dtype)
    u, s, vt = _svd(a)
    _, m, n = shape
    r = min(m, n)
    np.testing.assert_array_equal(s, 0)
    np.testing.assert_array_equal(u, np.broadcast_to(np.eye(m, r, dtype=dtype), u.shape))
    np.testing.assert_array_equal(vt, np.broadcast_to(np.eye(r, n, dtype=dtype), vt.shape))


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_zero_columns_get_an_orthonormal_completion(rng, dtype):
    a = rng.standard_normal((2, 12, 6)).astype(dtype)
    a[:, :, 1] = 0
    a[:, :, 4] = 0
    u, s, vt = _svd(a)
    _assert_valid_svd(a, u, s, vt)
    np.testing.assert_array_equal(s[:, 4:], 0)


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES)
def test_repeated_singular_values(rng, dtype):
    sigma = np.repeat([3.0, 2.0, 1.0, 0.5], 4)
    a = np.stack([_with_spectrum(rng, 32, 16, sigma) for _ in range(2)]).astype(dtype)
    u, s, vt = _svd(a)
    _assert_valid_svd(a, u, s, vt)


@needs_emulator
def test_ill_conditioned_float32_keeps_absolute_accuracy_and_orthogonality(rng):
    sigma = np.logspace(0, -6, 16)  # condition number 1e6, far past 1/sqrt(eps)
    a = np.stack([_with_spectrum(rng, 32, 16, sigma) for _ in range(2)]).astype(np.float32)
    u, s, vt = _svd(a)
    # Includes orthonormal U columns for sigma ~ 1e-6, which a Gram-matrix
    # method (U = A V / sigma) could not deliver in float32.
    _assert_valid_svd(a, u, s, vt)


@needs_emulator
def test_column_graded_float32_small_singular_values_are_relatively_accurate(rng):
    # One-sided Jacobi is relatively accurate for A = B D with B well
    # conditioned (Demmel & Veselic): error ~ eps * cond(B), not eps * cond(A).
    b = rng.standard_normal((2, 40, 20))
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    a = (b * np.logspace(0, -6, 20)).astype(np.float32)
    _, s, _ = _svd(a)
    ref = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    bound = _tol(np.float32, 40, 20) * np.linalg.cond(b)[:, None]
    assert np.all(np.abs(s - ref) <= bound * ref)


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_and_tiny_magnitudes_neither_overflow_nor_underflow(rng, dtype):
    # Squared norms of 1e30 (float32) or 1e200 (float64) entries overflow
    # without the kernel's power-of-two prescaling; 1e-30 / 1e-200 underflow.
    big = 1e30 if dtype == np.float32 else 1e200
    base = rng.standard_normal((1, 16, 8))
    a = np.concatenate([base * big, base / big]).astype(dtype)
    u, s, vt = _svd(a)
    _assert_valid_svd(a, u, s, vt)


@needs_emulator
def test_same_bits_twice(rng):
    a = rng.standard_normal((2, 24, 12)).astype(np.float32)
    first = _svd(a)
    second = _svd(a)
    for x, y in zip(first, second):
        assert x.tobytes() == y.tobytes()


@needs_emulator
def test_batch_item_result_does_not_depend_on_its_position(rng):
    a = rng.standard_normal((3, 16, 8))
    whole = _svd(a)
    alone = _svd(np.ascontiguousarray(a[2:3]))
    for x, y in zip(whole, alone):
        np.testing.assert_array_equal(x[2:3], y)


@needs_emulator
def test_a_block_factoring_several_matrices_gives_the_same_bits(rng):
    # Two blocks for three matrices: block 0 factors items 0 and 2 in turn, so
    # item 2 starts from shared memory that item 0 left behind.
    a = rng.standard_normal((3, 12, 7)).astype(np.float32)
    a[0, :, 3] = 0  # item 0 takes the completion path, writing more of shared memory
    one_each = _svd(a)
    shared = svd_launch.batched_svd(emulator_runtime(), a, max_blocks=2)
    for x, y in zip(one_each, shared):
        np.testing.assert_array_equal(x, y)


@needs_emulator
def test_input_is_not_modified(rng):
    a = rng.standard_normal((2, 12, 20))
    before = a.copy()
    _svd(a)
    np.testing.assert_array_equal(a, before)


def test_empty_batch_and_empty_matrices_launch_nothing():
    u, s, vt = _svd(np.zeros((0, 8, 4)))
    assert u.shape == (0, 8, 4) and s.shape == (0, 4) and vt.shape == (0, 4, 4)
    u, s, vt = _svd(np.zeros((2, 5, 0), dtype=np.float32))
    assert u.shape == (2, 5, 0) and s.shape == (2, 0) and vt.shape == (2, 0, 0)


# --------------------------------------------------------------------------- limits and bad input


def test_fits_follows_the_size_and_dtype_limits():
    rt = emulator_runtime()
    assert svd_launch.fits(rt, 256, 64, np.float64)
    assert svd_launch.fits(rt, 64, 256, np.float32)
    assert svd_launch.fits(rt, 1, 1, np.float32)
    assert not svd_launch.fits(rt, 257, 8, np.float32)
    assert not svd_launch.fits(rt, 65, 65, np.float32)
    assert not svd_launch.fits(rt, 16, 16, np.float16)
    assert not svd_launch.fits(rt, 16, 16, np.int64)


def test_largest_matrix_fits_an_a100_block():
    need = svd_launch.shared_bytes(svd_launch.MAX_ROWS, svd_launch.MAX_COLS, np.float64)
    assert need <= svd_launch.AMPERE_SHARED_LIMIT <= svd_launch.HOPPER_SHARED_LIMIT


def test_shared_memory_limit_of_the_device_is_enforced():
    small_gpu = types.SimpleNamespace(kind="emulator", xp=np, max_shared_per_block=48 * 1024)
    assert svd_launch.shared_bytes(128, 64, np.float64) > 48 * 1024
    assert not svd_launch.fits(small_gpu, 128, 64, np.float64)
    assert svd_launch.fits(small_gpu, 64, 64, np.float32)
    with pytest.raises(ValueError, match="49152 bytes"):
        svd_launch.batched_svd(small_gpu, np.zeros((1, 128, 64)))


@pytest.mark.parametrize(
    "shape", [(1, 257, 8), (1, 8, 257), (1, 65, 65), (1, 100, 100)], ids=["rows", "cols", "r", "both"]
)
def test_too_large_matrices_are_a_value_error(shape):
    with pytest.raises(ValueError, match=r"max\(m, n\) <= 256 and min\(m, n\) <= 64"):
        _svd(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("shape", [(8, 4), (2, 2, 8, 4), ()], ids=["2d", "4d", "0d"])
def test_not_a_3d_stack_is_a_value_error(shape):
    with pytest.raises(ValueError, match="a must be a 3-D stack"):
        _svd(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.complex64])
def test_unsupported_dtype_is_a_type_error(dtype):
    with pytest.raises(TypeError, match="float32 or float64"):
        _svd(np.zeros((1, 4, 4), dtype=dtype))


def test_non_contiguous_is_a_value_error():
    a = np.zeros((2, 8, 4))[:, ::2, :]
    with pytest.raises(ValueError, match="C-contiguous"):
        _svd(a)


def test_not_an_array_of_the_runtime_is_a_type_error():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _svd([[[1.0, 2.0], [3.0, 4.0]]])


@pytest.mark.parametrize("name", ["max_sweeps", "max_blocks"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_sweep_or_block_limit_is_a_value_error(name, bad):
    with pytest.raises(ValueError, match=name):
        svd_launch.batched_svd(emulator_runtime(), np.zeros((1, 4, 4)), **{name: bad})


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_10000_of_128x64_float32_matches_cupy_float64():
    cp = pytest.importorskip("cupy")
    from liam_gpu.launch.runtime import cuda_runtime

    batch, m, n = 10000, 128, 64
    rng = np.random.default_rng(5)
    a = cp.asarray(rng.standard_normal((batch, m, n), dtype=np.float32))
    u, s, vt = svd_launch.batched_svd(cuda_runtime(0), a)
    ref = cp.linalg.svd(a.astype(cp.float64), full_matrices=False, compute_uv=False)
    tol = _tol(np.float32, m, n)
    smax = ref[:, :1]
    assert bool(cp.all(cp.diff(s, axis=1) <= 0))
    assert bool(cp.all(cp.abs(s - ref) <= tol * smax))
    u64, vt64 = u.astype(cp.float64), vt.astype(cp.float64)
    assert float(cp.abs(cp.matmul(u64.transpose(0, 2, 1), u64) - cp.eye(n)).max()) <= tol
    assert float(cp.abs(cp.matmul(vt64, vt64.transpose(0, 2, 1)) - cp.eye(n)).max()) <= tol
    rebuilt = cp.matmul(u64 * s.astype(cp.float64)[:, None, :], vt64)
    assert bool(cp.all(cp.abs(rebuilt - a).max(axis=(1, 2)) <= tol * smax[:, 0]))
