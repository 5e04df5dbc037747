"""Property tests (hypothesis) over shapes and dtypes of the public API.

They draw shapes and dtypes the hand-written grids do not list, and check
properties that hold for every input: the transform equals the float64
reference within the dtype's rounding, never writes its inputs, and keeps the
caller's dtype; the compression has the promised shapes, an error no better
than the optimum and no worse than the first discarded singular value allows;
binary coding round-trips exactly.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import liam_gpu as lg
from liam_gpu import activations

DTYPES = st.sampled_from([np.float32, np.float64, np.int32, np.int64])
# derandomize: CI sees the same examples every run (a failure reproduces; no flaky runs)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def transform_case(draw):
    lead = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    d_in, d_out = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    dtype = draw(DTYPES)
    values = st.integers(-8, 8) if np.dtype(dtype).kind == "i" else st.floats(-4, 4, width=32)
    data = draw(hnp.arrays(dtype, tuple(lead) + (d_in,), elements=values))
    weights = draw(hnp.arrays(dtype, (d_out, d_in), elements=values))
    bias = draw(st.none() | hnp.arrays(dtype, (d_out,), elements=values))
    activation = draw(st.sampled_from(list(activations.ACTIVATIONS)))
    return data, weights, bias, activation


@SETTINGS
@given(transform_case())
def test_transform_matches_the_float64_reference(case):
    data, weights, bias, activation = case
    keep = [a.copy() for a in (data, weights) if a is not None]
    y = lg.transform_matrix(data, weights, bias, activation, device="cpu")
    pre = data.astype(np.float64) @ weights.T.astype(np.float64)
    if bias is not None:
        pre = pre + bias.astype(np.float64)
    want = activations.reference(pre, activation)
    out_dtype = np.float32 if data.dtype == np.float32 else np.float64
    assert y.dtype == out_dtype and y.shape == data.shape[:-1] + (weights.shape[0],)
    eps = np.finfo(out_dtype).eps
    # rounding of a d_in-term dot product of values up to 4 (the activations are 1-Lipschitz-ish)
    scale = 16.0 * (data.shape[-1] + 1)
    np.testing.assert_allclose(y, want, rtol=0, atol=4 * eps * scale)
    for before, after in zip(keep, (data, weights)):
        np.testing.assert_array_equal(before, after)


@SETTINGS
@given(
    m=st.integers(2, 30), n=st.integers(2, 30), k_frac=st.floats(0.05, 1.0),
    dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1),
)
def test_svd_compress_shapes_and_error_bounds(m, n, k_frac, dtype, seed):
    a = np.random.default_rng(seed).standard_normal((m, n)).astype(dtype)
    k = max(1, int(k_frac * min(m, n)))
    lr = lg.svd_compress(a, k=k, device="cpu", random_state=seed % 1000)
    assert lr.U.shape == (m, k) and lr.S.shape == (k,) and lr.Vt.shape == (k, n)
    assert np.all(np.diff(lr.S) <= 0)
    s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    err = np.linalg.norm(a.astype(np.float64) - np.asarray(lr, dtype=np.float64), 2)
    eps = np.finfo(dtype).eps * s[0] * max(m, n) * 10
    optimum = s[k] if k < len(s) else 0.0
    assert err >= optimum - eps  # nothing beats the truncated SVD
    assert err <= np.sqrt((s[k:] ** 2).sum()) * 3 + eps  # randomized: within a small factor of the tail


@SETTINGS
@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=4)))
def test_binary_coding_round_trips_exactly(values):
    algebra = lg.BinaryAlgebra(device="cpu")
    bits = algebra.binary_encode(values)
    assert bits.shape == values.shape + (64,)
    np.testing.assert_array_equal(algebra.binary_decode(bits), values)
