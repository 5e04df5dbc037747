"""One test per row of the bad-input table in docs/bad-input.md.

Each row runs through the public API on every backend present: a clear
``ValueError``/``TypeError`` that names the argument, or (for inputs that are
fine) a correct answer with the caller's arrays untouched.
"""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg


def test_wrong_ndim_is_a_value_error(backend_name):
    with pytest.raises(ValueError, match="weights"):
        lg.transform_matrix(np.ones((2, 3)), np.ones(3), device=backend_name)
    with pytest.raises(ValueError, match="2-D"):
        lg.svd_compress(np.ones(5), k=1, device=backend_name)


def test_shape_mismatch_names_both_shapes(backend_name):
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)|d_in=5"):
        lg.transform_matrix(np.ones((2, 3)), np.ones((4, 5)), device=backend_name)
    with pytest.raises(ValueError, match="bias"):
        lg.transform_matrix(np.ones((2, 3)), np.ones((4, 3)), np.ones(5), device=backend_name)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_empty_arrays_are_refused(backend_name, shape):
    with pytest.raises(ValueError, match="empty"):
        lg.transform_matrix(np.ones(shape), np.ones((2, shape[1])), device=backend_name)
    with pytest.raises(ValueError, match="empty"):
        lg.svd_compress(np.ones(shape), k=1, device=backend_name)


@pytest.mark.parametrize("k", [0, -1, 7])
def test_rank_out_of_range(backend_name, k):
    with pytest.raises(ValueError, match="k"):
        lg.svd_compress(np.ones((6, 5)), k=k, device=backend_name)


def test_rank_of_wrong_type():
    with pytest.raises(TypeError, match="k"):
        lg.svd_compress(np.ones((6, 5)), k=2.5, device="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_by_default(backend_name, bad):
    x = np.ones((4, 3))
    x[1, 2] = bad
    with pytest.raises(ValueError, match="data.*NaN or Inf"):
        lg.transform_matrix(x, np.ones((2, 3)), device=backend_name)
    with pytest.raises(ValueError, match="NaN or Inf"):
        lg.transform_matrix(np.ones((4, 3)), x[:2], device=backend_name)
    with pytest.raises(ValueError, match="NaN or Inf"):
        lg.svd_compress(x, k=1, device=backend_name)


def test_check_finite_false_lets_nan_through():
    x = np.ones((4, 3))
    x[0, 0] = np.nan
    y = lg.transform_matrix(x, np.ones((2, 3)), device="cpu", check_finite=False)
    assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


def test_integer_input_computes_in_float64(backend_name):
    x = np.arange(12, dtype=np.int32).reshape(4, 3)
    w = np.arange(6, dtype=np.int64).reshape(2, 3)
    y = lg.transform_matrix(x, w, device=backend_name)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, x.astype(np.float64) @ w.T.astype(np.float64))


def test_complex_input_is_a_type_error(backend_name):
    with pytest.raises(TypeError, match="complex"):
        lg.transform_matrix(np.ones((2, 3), complex), np.ones((2, 3)), device=backend_name)
    with pytest.raises(TypeError, match="complex"):
        lg.svd_compress(np.ones((4, 3), complex), k=1, device=backend_name)


@pytest.mark.parametrize("value", [np.array([["a", "b"]]), np.array([[object(), object()]])])
def test_object_and_string_arrays_are_type_errors(value):
    with pytest.raises(TypeError, match="data"):
        lg.transform_matrix(value, np.ones((2, 2)), device="cpu")


def test_non_contiguous_and_read_only_inputs_work_and_are_untouched(backend_name, rng):
    base = rng.standard_normal((9, 8))
    x = base[::2, ::2]  # non-contiguous view
    w = rng.standard_normal((3, 4))
    w.flags.writeable = False
    before_x, before_w = x.copy(), w.copy()
    y = lg.transform_matrix(x, w, device=backend_name)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(x, before_x)
    np.testing.assert_array_equal(w, before_w)
    a = rng.standard_normal((12, 10))[:, ::2]
    a_before = a.copy()
    lr = lg.svd_compress(a, k=2, device=backend_name)
    assert lr.rank == 2
    np.testing.assert_array_equal(a, a_before)


def test_unknown_activation_and_device():
    with pytest.raises(ValueError, match="activation"):
        lg.transform_matrix(np.ones((2, 3)), np.ones((2, 3)), activation="swish2", device="cpu")
    with pytest.raises(ValueError, match="device"):
        lg.transform_matrix(np.ones((2, 3)), np.ones((2, 3)), device="tpu")
    with pytest.raises(ValueError, match="device"):
        lg.BinaryAlgebra(device="gpu0")


def test_mixed_array_types_are_a_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="mixed array types"):
        lg.transform_matrix(torch.ones(2, 3), np.ones((2, 3)))


@pytest.mark.gpu
def test_mixed_devices_are_a_value_error():
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    with cupy.cuda.Device(0):
        a = cupy.ones((2, 3))
    with cupy.cuda.Device(1):
        b = cupy.ones((2, 3))
    with pytest.raises(ValueError, match="different devices"):
        lg.transform_matrix(a, b)


def test_cuda_without_a_device_is_a_clear_error(monkeypatch):
    from liam_gpu import backends

    if backends.cuda_device_count():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cuda:3.*not available"):
        lg.transform_matrix(np.ones((2, 3)), np.ones((2, 3)), device="cuda:3")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_finite_is_exact_whatever_the_sum_does(monkeypatch, dtype):
    # The fast test sums x: a finite sum clears x, and a non-finite one (NaN,
    # +inf and -inf together, or an overflow of finite values) takes the exact test.
    from liam_gpu import validation

    monkeypatch.setattr(validation, "_SUM_TEST_MIN", 0)  # the sum test on these small arrays too
    big = np.finfo(dtype).max
    finite_overflowing = np.array([big, big, big, -big / 2], dtype=dtype)
    validation.check_finite("x", finite_overflowing)  # finite: no error although the sum overflows
    validation.check_finite("x", np.zeros((0, 3), dtype=dtype))
    for bad in ([1.0, np.nan], [np.inf, -np.inf], [1.0, np.inf], [-np.inf, 2.0]):
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            validation.check_finite("x", np.array(bad, dtype=dtype))
    base = np.ones((4, 6), dtype=dtype)
    base[0, 1] = np.nan  # outside the strided view: not part of x
    validation.check_finite("x", base[:, ::2])
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        validation.check_finite("x", base[:, 1::2])
