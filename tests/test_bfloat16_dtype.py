"""``ml_dtypes.bfloat16`` as a dtype: numpy and CuPy arrays in, the same dtype out.

Every public function that takes float16 takes bfloat16 arrays, under the
same rules: ``transform_matrix`` stores the result as bfloat16 (float32
accumulation, one rounding), a mix with another dtype computes in float32 or
wider, and the SVDs and the light algebra compute 16-bit input in float32.
Results are compared with a float64 reference within the bound derived below
from bfloat16's unit roundoff and the accumulation length; the rounding
itself is checked bit for bit.  Backends: cpu, the emulator, and the CUDA
backend on the simulated CuPy of ``tests/fake_cupy.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import activations, arrays, bfloat16, validation
from liam_gpu.backends import cpu as cpu_backend
from liam_gpu.backends import emulator_available
from liam_gpu.launch import transform as transform_launch

ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
#: Unit roundoff of bfloat16 (8 significant bits) and of float32, the accumulation type.
U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24
#: Half the spacing of bfloat16's subnormals (an absolute rounding error for tiny results).
HALF_SUBNORMAL = 2.0 ** -134
#: The largest slope of the activations (gelu's, about 1.129), rounded up.
SLOPE = 1.13
BF16_MAX = float(ml_dtypes.finfo(BF16).max)

needs_emulator = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")
ACTIVATIONS = [None, "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"]


def f64(a) -> np.ndarray:
    """Values as float64 numpy (widening bfloat16 is exact)."""
    a = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a
    return np.asarray(a).astype(np.float64)


def make(rng, shape, d_out, *, batch=None, bias=True):
    d_in = shape[-1]
    x = rng.standard_normal(shape).astype(BF16)
    wshape = (batch, d_out, d_in) if batch else (d_out, d_in)
    w = (rng.standard_normal(wshape) / np.sqrt(d_in)).astype(BF16)
    b = rng.standard_normal(wshape[:-1]).astype(BF16) if bias else None
    return x, w, b


def reference(x, w, b, activation):
    x64, w64 = f64(x), f64(w)
    y = np.matmul(x64, np.swapaxes(w64, -1, -2)) if w64.ndim == 3 else x64 @ w64.T
    if b is not None:
        y = y + (f64(b)[:, None, :] if w64.ndim == 3 else f64(b))
    return activations.reference(y, activation)


def tolerance(x, w, b, ref, *, u_acc=U_F32, u_out=U_BF16, tiny_out=HALF_SUBNORMAL):
    """Elementwise bound of a correct transform: float32 accumulation, one rounding to bfloat16.

    * accumulation of ``d_in`` products and the bias with unit roundoff
      ``u_acc``: at most ``(d_in + 1) u_acc`` times the sum of the terms'
      magnitudes, in any order (1% over, for the second-order terms);
    * the activation: its slope (<= 1.13) times that, plus its own rounding
      (a few ulps of the result);
    * the one rounding of the stored result (``u_out``, bfloat16's ``2^-8``
      by default) of the computed value, which is within the errors above of
      the reference, or half a subnormal spacing for tiny results.
    """
    ax, aw = np.abs(f64(x)), np.abs(f64(w))
    scale = np.matmul(ax, np.swapaxes(aw, -1, -2)) if aw.ndim == 3 else ax @ aw.T
    if b is not None:
        ab = np.abs(f64(b))
        scale = scale + (ab[:, None, :] if aw.ndim == 3 else ab)
    d_in = ax.shape[-1]
    computed = SLOPE * 1.01 * (d_in + 1) * u_acc * scale + 8 * u_acc * np.abs(ref)
    return computed + u_out * (np.abs(ref) + computed) + tiny_out


def assert_close(got, x, w, b, activation, *, dtype=BF16):
    assert got.dtype == dtype, got.dtype
    ref = reference(x, w, b, activation)
    got64 = f64(got)
    assert got64.shape == ref.shape
    err = np.abs(got64 - ref)
    if dtype == BF16:
        tol = tolerance(x, w, b, ref)
    else:  # float32 or float64 stored in its own compute precision: no extra rounding
        u = float(np.finfo(dtype).eps) / 2
        tol = tolerance(x, w, b, ref, u_acc=u, u_out=0.0, tiny_out=float(np.finfo(dtype).smallest_subnormal))
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"error {err[worst]:.3e} > bound {tol[worst]:.3e} at {worst}"


def bits(a) -> np.ndarray:
    return np.array(a).view(np.uint16)


# --------------------------------------------------------------------------- the bound itself


def test_the_bound_rejects_a_result_rounded_twice_through_bfloat16(rng):
    # The bound must be tight enough to see an error of the kind it guards against:
    # the product rounded to bfloat16 before the bias is added and rounded again.
    x, w, b = make(rng, (64, 256), 48)
    assert_close(reference(x, w, b, None).astype(BF16), x, w, b, None)
    with pytest.raises(AssertionError, match="bound"):
        # A product accumulated in bfloat16 (every partial sum rounded) is far outside.
        acc = np.zeros((64, 48), np.float64)
        for k in range(256):
            acc = (acc + f64(x)[:, k:k + 1] * f64(w)[:, k]).astype(BF16).astype(np.float64)
        assert_close((acc + f64(b)).astype(BF16), x, w, b, None)


# --------------------------------------------------------------------------- values, every backend


@pytest.mark.parametrize("shape, d_out", [((1, 1), 1), ((37, 29), 45), ((5, 515), 3), ((2, 3, 19), 24),
                                          ((29,), 23), ((130, 64), 72)], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_matches_the_float64_reference_and_stays_bfloat16(backend_name, rng, shape, d_out, activation):
    x, w, b = make(rng, shape, d_out)
    before = [bits(a).copy() for a in (x, w, b)]
    y = lg.transform_matrix(x, w, b, activation, device=backend_name)
    assert isinstance(y, np.ndarray) and y.shape == shape[:-1] + (d_out,)
    assert_close(y, x, w, b, activation)
    for a, kept in zip((x, w, b), before):
        np.testing.assert_array_equal(bits(a), kept)  # inputs are never modified


def test_without_bias(backend_name, rng):
    x, w, _ = make(rng, (33, 40), 17, bias=False)
    assert_close(lg.transform_matrix(x, w, None, "silu", device=backend_name), x, w, None, "silu")


def test_batched_weights(backend_name, rng):
    x, w, b = make(rng, (4, 11, 16), 9, batch=4)
    y = lg.transform_matrix(x, w, b, "gelu", device=backend_name)
    assert y.shape == (4, 11, 9)
    assert_close(y, x, w, b, "gelu")


def test_out_is_written_in_place_and_its_dtype_checked(backend_name, rng):
    x, w, b = make(rng, (12, 16), 8)
    out = np.full((12, 8), np.nan, BF16)
    assert lg.transform_matrix(x, w, b, "relu", out=out, device=backend_name) is out
    assert_close(out, x, w, b, "relu")
    with pytest.raises(TypeError, match="out must have dtype bfloat16, got float32"):
        lg.transform_matrix(x, w, b, out=np.empty((12, 8), np.float32), device=backend_name)
    with pytest.raises(TypeError, match="out must have dtype float32, got bfloat16"):
        lg.transform_matrix(x, w.astype(np.float32), out=np.empty((12, 8), BF16), device=backend_name)


def test_out_overlapping_an_input_reads_the_input_first(backend_name, rng):
    x, w, _ = make(rng, (8, 8), 8, bias=False)
    x0 = x.copy()
    assert lg.transform_matrix(x, w, out=x, device=backend_name) is x
    assert_close(x, x0, w, None, None)


def test_strided_and_fortran_inputs(backend_name, rng):
    x, w, b = make(rng, (20, 32), 7)
    xs, wf = x[::2, ::2], np.asfortranarray(w[:, :16])
    assert_close(lg.transform_matrix(xs, wf, b, device=backend_name), xs, wf, b, None)


@pytest.mark.parametrize("other", [np.float32, np.float64, np.float16, np.int32], ids=lambda d: np.dtype(d).name)
def test_mixed_dtypes_follow_the_float16_rule(backend_name, rng, other):
    # bfloat16 with another dtype computes in what float16 with that dtype computes in;
    # with float16 itself (two different 16-bit types) in float32.
    x, w, b = make(rng, (6, 8), 5)
    w_other = f64(w).astype(other) if other != np.int32 else np.rint(f64(w) * 4).astype(other)
    y = lg.transform_matrix(x, w_other, b, device=backend_name)
    y16 = lg.transform_matrix(f64(x).astype(np.float16), w_other, f64(b).astype(np.float16), device="cpu")
    want = np.dtype(np.float32) if other == np.float16 else y16.dtype
    assert_close(y, x, w_other, b, None, dtype=want)


def test_lists_with_bfloat16_arrays_are_numpy_float64_as_with_float16(rng):
    x, w, _ = make(rng, (3, 4), 2, bias=False)
    y = lg.transform_matrix(x, f64(w).tolist(), device="cpu")
    assert y.dtype == np.float64


# --------------------------------------------------------------------------- rounding once


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("batch", [None, 3], ids=["2d", "batched"])
def test_cpu_rounds_the_float32_result_once_bit_for_bit(rng, activation, batch):
    # The CPU backend computes in float32 and rounds once with ml_dtypes' cast: the
    # float32 computation done here, rounded once, must give the same bits.
    x, w, b = make(rng, (3, 40, 33) if batch else (70, 33), 21, batch=batch)
    y = lg.transform_matrix(x, w, b, activation, device="cpu")
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    if batch:
        y32 = np.matmul(x32, w32.transpose(0, 2, 1)) + b32[:, None, :]
        for item in y32:
            activations.apply_bias_inplace(item, None, activations.activation_code(activation))
    else:
        y32 = np.matmul(x32, w32.T)
        activations.apply_bias_inplace(y32, b32, activations.activation_code(activation))
    np.testing.assert_array_equal(bits(y), bits(y32.astype(BF16)))


def _exact_sums(rng, n, lowest=0x0080, highest=0x7F00):
    """Pairs (hi, lo) of bfloat16 values whose sum float32 holds exactly, with ties among them.

    ``hi`` has bits in ``[lowest, highest)``; ``lo`` is ``2^-9`` to ``2^-7`` of it, so the
    sum spans at most 17 bits.
    """
    hi = rng.integers(lowest, highest, size=n, dtype=np.uint16).view(BF16).astype(np.float64)
    ratio = rng.choice([2.0 ** -8, 2.0 ** -9, 3 * 2.0 ** -9, 2.0 ** -7, 0.7 * 2.0 ** -7], size=n)
    lo = (hi * ratio * rng.choice([-1.0, 1.0], size=n)).astype(BF16).astype(np.float64)
    hi[:2], lo[:2] = 1.0, [2.0 ** -8, 3 * 2.0 ** -8]  # ties: to even down (1.0), to even up (1 + 2^-6)
    return hi, lo


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_result_is_the_exact_value_rounded_once(backend_name, rng, with_bias):
    # x = [hi, lo], w = [1, 1] (and a bias c = 2^-9): hi + lo (+ c) is exact in float32
    # (with the bias, hi is in [1, 16): the sum spans under 24 bits), so only the final
    # rounding to bfloat16 rounds, to nearest with ties to even, as ml_dtypes' cast of the
    # exact float64 value does.  A result rounded before the bias is added loses c, which
    # breaks the ties hi + lo has: it differs there.
    hi, lo = _exact_sums(rng, 2000, *((0x3F80, 0x4180) if with_bias else ()))
    x = np.stack([hi, lo], axis=1).astype(BF16)
    w = np.ones((1, 2), BF16)
    b = np.array([2.0 ** -9], BF16) if with_bias else None
    y = lg.transform_matrix(x, w, b, device=backend_name)
    exact = hi + lo + (2.0 ** -9 if with_bias else 0.0)
    np.testing.assert_array_equal(bits(y[:, 0]), bits(exact.astype(BF16)))
    # 1 + 2^-8 is a tie (to even: 1.0), which c breaks upwards; 1 + 3 2^-8 rounds up either way.
    assert bits(y[:2, 0]).tolist() == ([0x3F81, 0x3F82] if with_bias else [0x3F80, 0x3F82])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy's, as for float32
def test_huge_values_round_to_inf_and_the_largest_finite_stays(backend_name):
    # bf16 max = 0x7F7F (odd significand).  max + 2^119 is a tie: to even, which is inf;
    # max + 2^118 is below half an ulp: max.  A product beyond float32's range is inf too.
    x = np.array([[BF16_MAX, 2.0 ** 119], [BF16_MAX, 2.0 ** 118], [-BF16_MAX, -(2.0 ** 120)],
                  [2.0 ** 100, 0.0]], BF16)
    w = np.array([[1.0, 1.0], [2.0 ** 40, 0.0]], BF16)
    y = f64(lg.transform_matrix(x, w, device=backend_name))
    assert y[0, 0] == np.inf and y[1, 0] == BF16_MAX and y[2, 0] == -np.inf
    assert y[3, 1] == np.inf and y[3, 0] == 2.0 ** 100


def test_zeros_give_zeros(backend_name):
    x = np.zeros((5, 7), BF16)
    w = np.zeros((3, 7), BF16)
    y = lg.transform_matrix(x, w, None, "gelu", device=backend_name)
    assert y.dtype == BF16 and not np.any(f64(y))
    y = lg.transform_matrix(x, w, np.array([1.0, -2.0, 0.5], BF16), "relu", device=backend_name)
    np.testing.assert_array_equal(f64(y), np.broadcast_to([1.0, 0.0, 0.5], (5, 3)))


def test_tiny_results_round_to_bfloat16_subnormals(backend_name):
    # 2^-130 * 1 and 2^-133 / 2 (a tie, to even: zero): bfloat16 keeps float32's exponent range.
    x = np.array([[2.0 ** -130], [2.0 ** -133]], BF16)
    w = np.array([[1.0], [0.5]], BF16)
    y = f64(lg.transform_matrix(x, w, device=backend_name))
    assert y[0, 0] == 2.0 ** -130 and y[1, 1] == 0.0 and y[1, 0] == 2.0 ** -133


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=str)
@pytest.mark.parametrize("where", ["data", "weights", "bias"])
def test_nonfinite_input_is_a_value_error_naming_it(backend_name, rng, bad, where):
    x, w, b = make(rng, (4, 8), 3)
    named = {"data": x, "weights": w, "bias": b}
    named[where].reshape(-1)[1] = bad
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf"):
        lg.transform_matrix(x, w, b, device=backend_name)
    y = f64(lg.transform_matrix(x, w, b, device=backend_name, check_finite=False))
    assert not np.isfinite(y).all()  # unchecked, it propagates (as with float16)


def test_check_finite_reads_bfloat16_itself():
    a = np.array([1.0, 3e38, -0.0, 2.0 ** -133], BF16)
    validation.check_finite("a", a)  # huge, signed zero, subnormal: all finite
    for bad in (np.inf, -np.inf, np.nan):
        c = a.copy()
        c[2] = bad
        with pytest.raises(ValueError, match="c contains NaN or Inf"):
            validation.check_finite("c", c)
    np.testing.assert_array_equal(bfloat16.nonfinite(np.array([np.inf, 1, np.nan], BF16)), [True, False, True])


def test_other_ml_dtypes_are_a_type_error(rng):
    x = rng.standard_normal((3, 4)).astype(ml_dtypes.float8_e4m3fn)
    with pytest.raises(TypeError, match="data has dtype float8_e4m3fn, expected a real numeric array"):
        lg.transform_matrix(x, np.ones((2, 4), np.float32), device="cpu")


def test_bad_shapes_are_value_errors(backend_name, rng):
    x, w, b = make(rng, (4, 8), 3)
    with pytest.raises(ValueError, match="d_in=8"):
        lg.transform_matrix(x[:, :5], w, device=backend_name)
    with pytest.raises(ValueError, match="data is empty"):
        lg.transform_matrix(x[:0], w, device=backend_name)
    with pytest.raises(ValueError, match="bias must have shape"):
        lg.transform_matrix(x, w, b[:2], device=backend_name)


# --------------------------------------------------------------------------- the boundaries


@needs_emulator
def test_kernels_get_zero_copy_uint16_views_with_bfloat16_storage(rng, monkeypatch):
    seen = {}
    real = transform_launch.linear

    def spy(runtime, x, w, bias, activation, out, **kw):
        seen.update(x=(x.dtype, x.ctypes.data), out=(out.dtype, out.ctypes.data), storage=kw.get("storage"))
        return real(runtime, x, w, bias, activation, out, **kw)

    monkeypatch.setattr(transform_launch, "linear", spy)
    x, w, b = make(rng, (9, 16), 8)
    out = np.empty((9, 8), BF16)
    lg.transform_matrix(x, w, b, out=out, device="emulator")
    assert seen == {"x": (np.dtype(np.uint16), x.ctypes.data), "out": (np.dtype(np.uint16), out.ctypes.data),
                    "storage": "bfloat16"}


def test_cpu_widens_in_bounded_chunks_and_the_bits_do_not_depend_on_them(rng, monkeypatch):
    x, w, b = make(rng, (300, 24), 20)
    whole = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    sizes = []
    real = bfloat16.round_from

    def spy(values, out=None):
        sizes.append(values.size)
        return real(values, out)

    monkeypatch.setattr(cpu_backend, "_HALF_CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(bfloat16, "round_from", spy)
    chunked = lg.transform_matrix(x, w, b, "gelu", device="cpu")
    assert len(sizes) == 300 // (1000 // 20) and max(sizes) <= 1000  # float32 buffers of <= 1000 values
    np.testing.assert_array_equal(bits(chunked), bits(whole))


# --------------------------------------------------------------------------- the other operations


@pytest.mark.parametrize("fn", ["randomized_svd", "svd_compress"])
def test_svds_compute_bfloat16_in_float32_like_float16(backend_name, rng, fn):
    # Widening is exact, so bfloat16 input gives the bits of its float32 widening.
    a = rng.standard_normal((40, 30)).astype(BF16)
    kwargs = {"random_state": 7} if fn == "randomized_svd" else {"k": 5}
    args = (5,) if fn == "randomized_svd" else ()
    got = getattr(lg, fn)(a, *args, device=backend_name, **kwargs)
    want = getattr(lg, fn)(a.astype(np.float32), *args, device=backend_name, **kwargs)
    half = getattr(lg, fn)(a.astype(np.float16), *args, device=backend_name, **kwargs)
    got, want, half = ((r.U, r.S, r.Vt) if fn == "svd_compress" else r for r in (got, want, half))
    for g, w_, h in zip(got, want, half):
        assert g.dtype == h.dtype == np.float32
        np.testing.assert_array_equal(g, w_)


def test_scheduler_splits_bfloat16_rows_and_fills_out(rng):
    x, w, b = make(rng, (70, 16), 9)
    sched = lg.Scheduler(["cpu:0", "cpu:1"])
    y = lg.transform_matrix(x, w, b, "tanh", device=sched)
    assert_close(y, x, w, b, "tanh")
    out = np.empty((70, 9), BF16)
    assert lg.transform_matrix(x, w, b, "tanh", out=out, device=sched) is out
    assert_close(out, x, w, b, "tanh")
    x[3, 3] = np.nan
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        lg.transform_matrix(x, w, b, device=sched)


def test_binary_algebra(rng):
    alg = lg.BinaryAlgebra(device="cpu")
    x, w, b = make(rng, (6, 8), 4)
    assert_close(alg.transform_matrix(x, w, b, "relu"), x, w, b, "relu")
    # The light operations compute 16-bit input in float32, as for float16.
    a = x.astype(np.float32)
    np.testing.assert_array_equal(alg.hadamard_product(x, x), a * a)
    assert alg.hadamard_product(x, x).dtype == alg.hadamard_product(*(x.astype(np.float16),) * 2).dtype
    whole = np.array([[3.0, -2.0], [0.0, 256.0]], BF16)
    np.testing.assert_array_equal(alg.binary_decode(alg.binary_encode(whole)), [[3, -2], [0, 256]])
    with pytest.raises(ValueError, match="fractional part"):
        alg.binary_encode(np.array([1.5], BF16))


def test_lowrank_factors_in_bfloat16(rng, tmp_path):
    u = rng.standard_normal((6, 2)).astype(BF16)
    s = np.array([2.0, 0.5], BF16)
    vt = rng.standard_normal((2, 5)).astype(BF16)
    lr = lg.LowRank(u, s, vt)
    u32, s32, vt32 = (a.astype(np.float32) for a in (u, s, vt))
    got = lr.to_dense()
    assert got.dtype == BF16
    np.testing.assert_array_equal(bits(got), bits(((u32 * s32) @ vt32).astype(BF16)))  # float32, rounded once
    np.testing.assert_array_equal(bits(np.asarray(lr)), bits(got))
    p = lr.project(np.eye(5, dtype=BF16))
    assert p.dtype == BF16
    np.testing.assert_array_equal(f64(p), f64(vt).T)
    lr.save(tmp_path / "f.npz")
    back = lg.LowRank.load(tmp_path / "f.npz")
    assert back.dtype == BF16
    for a, b_ in ((back.U, u), (back.S, s), (back.Vt, vt)):
        np.testing.assert_array_equal(bits(a), bits(b_))


# --------------------------------------------------------------------------- the simulated CUDA path


from test_cuda_path_simulated import cp  # noqa: E402,F401  (the fixture: fake CuPy installed; tests/ is on sys.path)


def _launches(device_id: int = 0) -> int:
    return lg.backends.get_backend(f"cuda:{device_id}").runtime.launches


@needs_emulator
def test_cuda_numpy_bfloat16_in_numpy_bfloat16_out(cp, rng):
    x, w, b = make(rng, (37, 29), 45)
    y = lg.transform_matrix(x, w, b, "gelu", device="cuda")
    assert isinstance(y, np.ndarray) and _launches() == 1
    assert_close(y, x, w, b, "gelu")


@needs_emulator
def test_cuda_cupy_bfloat16_arrays_stay_on_the_device(cp, rng):
    x, w, b = make(rng, (3, 11, 16), 9, batch=3)
    dx, dw, db = (cp.asarray(a) for a in (x, w, b))
    y = lg.transform_matrix(dx, dw, db, "silu", device="cuda")
    assert isinstance(y, cp.ndarray) and y.dtype == BF16 and y.device.id == 0
    assert_close(y, x, w, b, "silu")
    out = cp.empty((3, 11, 9), dtype=BF16)
    assert lg.transform_matrix(dx, dw, db, "silu", out=out) is out  # the input's device: "auto"
    np.testing.assert_array_equal(bits(out.get()), bits(y.get()))
    np.testing.assert_array_equal(bits(dx.get()), bits(x))


@needs_emulator
def test_cuda_cupy_bfloat16_rounding_is_exact(cp, rng):
    hi, lo = _exact_sums(rng, 500)
    x = cp.asarray(np.stack([hi, lo], axis=1).astype(BF16))
    y = lg.transform_matrix(x, cp.asarray(np.ones((1, 2), BF16)))
    np.testing.assert_array_equal(bits(y.get()[:, 0]), bits((hi + lo).astype(BF16)))


@needs_emulator
def test_cuda_cupy_bfloat16_nonfinite_is_found_on_the_device(cp, rng):
    x, w, b = make(rng, (4, 8), 3)
    w[2, 5] = np.inf
    with pytest.raises(ValueError, match="weights contains NaN or Inf"):
        lg.transform_matrix(cp.asarray(x), cp.asarray(w), cp.asarray(b))


@needs_emulator
def test_cuda_torch_bfloat16_comes_through_dlpack_as_cupy_bfloat16(cp):
    torch = pytest.importorskip("torch")
    import fake_cupy

    t = torch.randn(6, 5).bfloat16()
    kind = arrays.ArrayKind("torch", "cuda:0", True)  # as a CUDA tensor would be classified
    a = arrays.to_compute(t, kind, name="data", keep_bfloat16=True)
    assert isinstance(a, cp.ndarray) and a.dtype == BF16 and a.data.ptr == t.data_ptr()
    assert fake_cupy.DLPACK_IMPORTS == [BF16]  # one import, as bfloat16 itself
    np.testing.assert_array_equal(bits(a.get()), t.view(torch.int16).numpy().view(np.uint16))


@needs_emulator
def test_cuda_torch_bfloat16_without_cupy_bfloat16_is_a_uint16_view(cp, monkeypatch):
    torch = pytest.importorskip("torch")
    import fake_cupy

    monkeypatch.setattr(type(cp), "__version__", "13.6.0+fake")  # a CuPy before bfloat16
    t = torch.randn(6, 5).bfloat16()
    a = arrays.to_compute(t, arrays.ArrayKind("torch", "cuda:0", True), name="data", keep_bfloat16=True)
    assert a.dtype == np.uint16 and a.data.ptr == t.data_ptr()
    assert fake_cupy.DLPACK_IMPORTS == [np.dtype(np.int16)]


def test_lowrank_bfloat16_files_are_checked(rng, tmp_path, monkeypatch):
    import zipfile

    u, s, vt = (rng.standard_normal(shape).astype(BF16) for shape in ((6, 2), (2,), (2, 5)))
    path = tmp_path / "f.npz"
    lg.LowRank(u, s, vt).save(path)
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}

    def rewrite(target, **replace):
        import io

        with zipfile.ZipFile(target, "w") as zf:
            for name, data in members.items():
                key = name[:-4]
                if key in replace:
                    buf = io.BytesIO()
                    np.save(buf, replace[key])
                    data = buf.getvalue()
                zf.writestr(name, data)
        return target

    with pytest.raises(ValueError, match="factor_dtype must be 'bfloat16', got 'float8'"):
        lg.LowRank.load(rewrite(tmp_path / "a.npz", factor_dtype=np.asarray("float8")))
    with pytest.raises(ValueError, match=r"U must be uint16 \(the bits of bfloat16 factors\)"):
        lg.LowRank.load(rewrite(tmp_path / "b.npz", U=f64(u).astype(np.float32)))
    monkeypatch.setattr(bfloat16, "_DTYPE", None)  # as without ml_dtypes installed
    with pytest.raises(ValueError, match="holds bfloat16 factors, which need ml_dtypes"):
        lg.LowRank.load(path)


@needs_emulator
def test_cuda_svd_of_cupy_bfloat16_is_that_of_its_float32_widening(cp, rng):
    a = rng.standard_normal((50, 30)).astype(BF16)
    got = lg.randomized_svd(cp.asarray(a), 4, random_state=3)
    want = lg.randomized_svd(cp.asarray(a.astype(np.float32)), 4, random_state=3)
    for g, w_ in zip(got, want):
        assert isinstance(g, cp.ndarray) and g.dtype == np.float32
        np.testing.assert_array_equal(g.get(), w_.get())
