"""The CPU backend's fused transform: GEMM by blocks, bias and activation applied while in cache.

The bits do not depend on the number of threads (on every OpenBLAS kernel); the
compiled gelu (numba, the ``fast`` extra) and the numpy fallback agree within
a few ulps; the BLAS thread limit is set for one call and restored; the extra
memory is far below one output.
"""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import activations
from liam_gpu.backends import _threads, cpu

from test_transform import assert_close  # tests/ is on sys.path

ACTS = [None, "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"]
#: (n, d_in, d_out): tall, wide (split by columns), tails of 1 and 63 rows, one row.
SHAPES = [(1000, 96, 200), (96, 64, 1000), (4097, 32, 96), (191, 16, 130), (1, 5, 3)]

threadpoolctl = pytest.importorskip("threadpoolctl")


def _inputs(n, d_in, d_out, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    w = (rng.standard_normal((d_out, d_in)) * d_in ** -0.5).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    return x, w, b


@pytest.fixture
def parallel_always(monkeypatch):
    """Every call large enough for the worker threads."""
    monkeypatch.setattr(cpu, "_PARALLEL_FLOPS", 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_same_bits_whatever_the_thread_count(monkeypatch, parallel_always, shape, dtype):
    """The blocks are fixed by the output's shape, one BLAS call each, so 1, 2 or 3 threads give the
    same bits -- on every OpenBLAS kernel (run with OPENBLAS_CORETYPE=Haswell, Zen, SkylakeX, ...:
    the AVX2 kernels round a row differently when a call's rows start elsewhere), checked calls too."""
    x, w, b = _inputs(*shape, dtype=dtype)
    for block in (1 << 20, 1 << 12, 64 * 7):
        monkeypatch.setattr(cpu, "_BLOCK_ELEMENTS", block)
        for act in ("relu", "gelu"):
            results = []
            for threads in (1, 2, 3):
                with threadpoolctl.threadpool_limits(threads, user_api="blas"):
                    results.append(lg.transform_matrix(x, w, b, act, device="cpu", check_finite=False))
                    results.append(lg.transform_matrix(x, w, b, act, device="cpu"))
            for r in results[1:]:
                np.testing.assert_array_equal(r, results[0])


def test_the_grid_depends_on_the_shape_alone_and_covers_the_output_once():
    for n, d_out in [(1, 1), (63, 5), (64, 2000), (4097, 96), (256, 4096), (1000, 1025), (5000, 5000),
                     (64, 300), (300, 64), (100000, 64)]:
        blocks = cpu._grid(n, d_out)
        cover = np.zeros((n, d_out), np.int64)
        for (r0, r1), (c0, c1) in blocks:
            assert r0 % cpu._ROW_ALIGN == 0 and c0 % cpu._ROW_ALIGN == 0
            cover[r0:r1, c0:c1] += 1
        assert (cover == 1).all()
        if max(n, d_out) >= 4 * cpu._ROW_ALIGN:  # work for several threads, by rows or by columns
            assert len(blocks) >= 2, (n, d_out)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_matches_the_float64_reference(parallel_always, shape, act):
    x, w, b = _inputs(*shape)
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            got = lg.transform_matrix(x, w, b, act, device="cpu")
        assert_close(got, x, w, b, act, np.float32)  # the elementwise bound of tests/test_transform.py


def test_numpy_fallback_without_numba(monkeypatch):
    # LIAM_GPU_NUMBA=0 (or numba missing): scipy's erfc, the same values within a few ulps.
    x, w, b = _inputs(512, 64, 256)
    fast = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    monkeypatch.setattr(activations, "_fast", False)
    assert activations.fast_epilogue() is None
    slow = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    # Both are within gelu's bound of 4 + 3 x^2 ulps (tests/test_activations.py) of the truth;
    # scipy's path rounds -x / sqrt 2 to float32 and the compiled one does not, so they differ in the tail.
    pre = x.astype(np.float64) @ w.T.astype(np.float64) + b
    allowed = 2 * (4 + 3 * pre ** 2) * np.spacing(np.abs(slow))
    assert np.all(np.abs(fast.astype(np.float64) - slow) <= allowed)


def test_numba_switch_by_environment(monkeypatch):
    monkeypatch.setattr(activations, "_fast", None)
    monkeypatch.setenv("LIAM_GPU_NUMBA", "0")
    assert activations.fast_epilogue() is None
    monkeypatch.setattr(activations, "_fast", None)
    monkeypatch.delenv("LIAM_GPU_NUMBA")
    pytest.importorskip("numba")
    assert activations.fast_epilogue() is not None


def test_apply_bias_inplace_on_a_column_range():
    # The worker threads' epilogue runs on column slices of a C-contiguous output.
    rng = np.random.default_rng(3)
    y = rng.standard_normal((70, 200)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    whole = y.copy()
    activations.apply_bias_inplace(whole, b, activations.ACTIVATIONS["gelu"])
    got = y.copy()
    activations.apply_bias_inplace(got[:, :64], b[:64], activations.ACTIVATIONS["gelu"])
    activations.apply_bias_inplace(got[:, 64:], b[64:], activations.ACTIVATIONS["gelu"])
    np.testing.assert_array_equal(got, whole)


def test_blas_limit_is_for_the_call_only(parallel_always):
    x, w, b = _inputs(512, 64, 256)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _threads.blas_threads()
        lg.transform_matrix(x, w, b, "gelu", device="cpu")
        assert _threads.blas_threads() == before


def test_overlapping_calls_restore_the_limit(parallel_always):
    # Two threads inside blas_limited at once: the last one out restores the caller's limit.
    x, w, b = _inputs(2048, 128, 256)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _threads.blas_threads()
        errors = []

        def run():
            try:
                for _ in range(5):
                    lg.transform_matrix(x, w, b, "relu", device="cpu")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert _threads.blas_threads() == before


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_extra_memory_is_below_one_output(parallel_always, act):
    x, w, b = _inputs(16384, 64, 256)
    lg.transform_matrix(x[:128], w, b, act, device="cpu")  # compile and warm up first
    tracemalloc.start()
    try:
        y = lg.transform_matrix(x, w, b, act, device="cpu", check_finite=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - y.nbytes <= y.nbytes // 2


def test_without_threadpoolctl_one_thread_of_ours(monkeypatch, parallel_always):
    # No threadpoolctl (the fast extra): ours stay at one thread and BLAS keeps its own (whose
    # internal split may round differently on some kernels: values within the bound; with BLAS at
    # one thread, the bits of the threadpoolctl path).
    x, w, b = _inputs(1000, 96, 200)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        want = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    monkeypatch.setattr(_threads, "_controllers", [])
    assert _threads.blas_threads() == 1
    assert_close(lg.transform_matrix(x, w, b, "gelu", device="cpu"), x, w, b, "gelu", np.float32)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        np.testing.assert_array_equal(lg.transform_matrix(x, w, b, "gelu", device="cpu"), want)


def test_a_pool_in_hand_still_takes_work_after_a_larger_one_is_made():
    # A concurrent call may hold the pool it was given while another grows it.
    small = _threads.pool(1)
    _threads.pool(_threads.pool(1)._max_workers + 1)
    assert small.submit(lambda: 7).result() == 7


def test_blas_threads_are_numpys_not_a_library_loaded_after_the_callers_limit(monkeypatch):
    """scipy's OpenBLAS, loaded after the caller's ``threadpool_limits(1)``, keeps its default:
    the count is numpy's library's (the fewest where numpy's cannot be told apart)."""
    import os
    from types import SimpleNamespace

    home = os.path.dirname(os.path.abspath(np.__file__))
    numpys = SimpleNamespace(filepath=home + ".libs/libopenblas.so", num_threads=1)
    later = SimpleNamespace(filepath="/elsewhere/scipy.libs/libopenblas.so", num_threads=4)
    monkeypatch.setattr(_threads, "_controllers", [later, numpys])
    assert _threads.blas_threads() == 1
    monkeypatch.setattr(_threads, "_controllers", [later, SimpleNamespace(filepath="/usr/lib/libblas.so",
                                                                          num_threads=2)])
    assert _threads.blas_threads() == 2


def test_checked_calls_take_no_output_sized_memory_for_the_check(parallel_always):
    """The finite test of a checked call (sums of the product's blocks) adds no output-sized temporary."""
    x, w, b = _inputs(16384, 64, 256)
    lg.transform_matrix(x[:128], w, b, "relu", device="cpu")
    tracemalloc.start()
    try:
        y = lg.transform_matrix(x, w, b, "relu", device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - y.nbytes <= y.nbytes // 2


def test_a_library_whose_path_only_begins_like_numpys_is_not_numpys(monkeypatch):
    import os
    from types import SimpleNamespace

    home = os.path.dirname(os.path.realpath(np.__file__))
    sibling = SimpleNamespace(filepath=home + "ro/lib/libopenblas.so", num_threads=8)  # e.g. numpyro/
    other = SimpleNamespace(filepath="/usr/lib/libblas.so", num_threads=2)
    monkeypatch.setattr(_threads, "_controllers", [sibling, other])
    assert _threads.blas_threads() == 2


def test_the_first_gelu_call_has_the_bits_of_later_calls(monkeypatch, parallel_always):
    """The numba epilogue is imported under a lock: worker threads of the first call wait for it
    instead of taking the numpy path meanwhile (the two round differently)."""
    pytest.importorskip("numba")
    x, w, b = _inputs(4096, 64, 256)
    later = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    # A first call for real: the module imported again (numba loads its functions: a wide window).
    import sys

    import liam_gpu

    monkeypatch.setattr(activations, "_fast", None)
    monkeypatch.delitem(sys.modules, "liam_gpu._numba_epilogue")
    monkeypatch.delattr(liam_gpu, "_numba_epilogue", raising=False)
    first = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    np.testing.assert_array_equal(first, later)
