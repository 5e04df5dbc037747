"""``transform_matrix`` through the public API, on every backend present.

Each result is checked against a float64 numpy reference computed from the
same (already rounded) inputs, within a bound derived from the dtype: the
accumulation error of a ``d_in``-term dot product, the activation's own
rounding, and the rounding of the stored output.  Emulator cases stay small
(a few hundred thousand multiply-adds each).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import activations
from liam_gpu.activations import ACTIVATIONS
from liam_gpu.backends import emulator_available
from liam_gpu.launch import transform as transform_launch

needs_emulator = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

DTYPES = [np.float32, np.float64, np.float16]
ACTIVATION_NAMES = list(ACTIVATIONS)  # None, "relu", "gelu", ...

# (data shape, d_out): 1x1, primes, non-multiples of every tile size (16, 32,
# 64, 128), d_in >> d_out and the reverse, a single row, 1-D and 3-D data.
SHAPES = [
    ((1, 1), 1),
    ((7, 13), 11),
    ((37, 29), 45),
    ((130, 17), 131),
    ((5, 515), 3),
    ((9, 3), 257),
    ((1, 300), 70),
    ((29,), 23),
    ((2, 3, 19), 23),
]


def _id(shape_case) -> str:
    shape, d_out = shape_case
    return "x".join(map(str, shape)) + f"-{d_out}"


def reference(x, w, b, activation):
    """float64 ``act(x @ w.T + b)`` from the inputs as given (already rounded)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    if w64.ndim == 3:
        y = np.matmul(x64, np.swapaxes(w64, 1, 2))
        if b is not None:
            y += np.asarray(b, np.float64)[:, None, :]
    else:
        y = x64 @ w64.T
        if b is not None:
            y += np.asarray(b, np.float64)
    return activations.reference(y, activation)


#: Machine epsilon and smallest subnormal of bfloat16, which numpy lacks.
BFLOAT16_LIMITS = (2.0 ** -7, 2.0 ** -133)


def is_bfloat16(dtype) -> bool:
    """Whether a test's dtype parameter is bfloat16 (a name: numpy has no such dtype)."""
    return isinstance(dtype, str) and dtype == "bfloat16"


def storage_limits(dtype) -> tuple[float, float]:
    """(machine epsilon, smallest subnormal) of a storage dtype or of ``"bfloat16"``."""
    if is_bfloat16(dtype):
        return BFLOAT16_LIMITS
    info = np.finfo(dtype)
    return float(info.eps), float(info.smallest_subnormal)


def tolerance(dtype, x, w, b, ref):
    """Elementwise error bound of a correct implementation.

    * accumulation: a ``d_in``-term dot product in the compute precision errs
      by at most ``d_in * eps`` times the sum of the terms' magnitudes (the
      standard bound is ``d_in * eps / 2``; the activation's slope is <= 1.13);
    * the activation's own rounding: a few ulps of the result;
    * the stored output (float16, bfloat16): half an ulp, or half the
      subnormal spacing.

    ``dtype`` is a numpy dtype or ``"bfloat16"``; ``x``, ``w``, ``b`` are the
    inputs' values (bfloat16 already widened).
    """
    compute64 = not is_bfloat16(dtype) and np.dtype(dtype) == np.float64
    eps_acc = np.finfo(np.float64 if compute64 else np.float32).eps
    eps_out, tiny_out = storage_limits(dtype)
    ax, aw = np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64))
    scale = np.matmul(ax, np.swapaxes(aw, -1, -2)) if aw.ndim == 3 else ax @ aw.T
    if b is not None:
        ab = np.abs(np.asarray(b, np.float64))
        scale = scale + (ab[:, None, :] if aw.ndim == 3 else ab)
    d_in = ax.shape[-1]
    return (1.2 * (d_in + 2) * eps_acc * scale + 8 * eps_acc * np.abs(ref)
            + eps_out * np.abs(ref) + tiny_out)


def assert_close(got, x, w, b, activation, dtype):
    ref = reference(x, w, b, activation)
    got64 = np.asarray(got, np.float64)
    assert got64.shape == ref.shape
    assert np.all(np.isfinite(got64)), "some outputs are not finite (unwritten or overflowed)"
    err = np.abs(got64 - ref)
    tol = tolerance(dtype, x, w, b, ref)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (
        f"max error {err[worst]:.3e} > tolerance {tol[worst]:.3e} at {worst} "
        f"(got {got64[worst]!r}, want {ref[worst]!r})")


def make(rng, shape, d_out, dtype, *, bias=True, batch=None):
    d_in = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    wshape = (batch, d_out, d_in) if batch else (d_out, d_in)
    # Weights scaled like a trained layer, so activations see values of order 1.
    w = (rng.standard_normal(wshape) / np.sqrt(d_in)).astype(dtype)
    b = rng.standard_normal((batch, d_out) if batch else (d_out,)).astype(dtype) if bias else None
    return x, w, b


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape_case", SHAPES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_shapes_match_float64_reference(backend_name, rng, shape_case, dtype):
    shape, d_out = shape_case
    x, w, b = make(rng, shape, d_out, dtype)
    got = lg.transform_matrix(x, w, b, "gelu", device=backend_name)
    assert got.dtype == dtype and got.shape == shape[:-1] + (d_out,)
    assert_close(got, x, w, b, "gelu", dtype)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_activation_and_dtype(backend_name, rng, activation, dtype, with_bias):
    x, w, b = make(rng, (33, 21), 39, dtype, bias=with_bias)
    x *= dtype(3)  # reach the saturating parts of sigmoid / tanh / gelu
    got = lg.transform_matrix(x, w, b, activation, device=backend_name)
    assert_close(got, x, w, b, activation, dtype)


def test_without_bias_and_activation_is_np_dot(backend_name, rng):
    # The original LIAM meaning: np.dot(data, weights.T).
    x, w, _ = make(rng, (12, 10), 6, np.float64, bias=False)
    got = lg.transform_matrix(x, w, device=backend_name)
    np.testing.assert_allclose(got, np.dot(x, w.T), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_batched_weights(backend_name, rng, batch, dtype):
    x, w, b = make(rng, (batch, 11, 10), 9, dtype, batch=batch)
    got = lg.transform_matrix(x, w, b, "silu", device=backend_name)
    assert got.shape == (batch, 11, 9)
    assert_close(got, x, w, b, "silu", dtype)


def test_batched_weights_without_bias(backend_name, rng):
    x, w, _ = make(rng, (3, 5, 8), 4, np.float32, bias=False, batch=3)
    got = lg.transform_matrix(x, w, None, "tanh", device=backend_name)
    assert_close(got, x, w, None, "tanh", np.float32)


@needs_emulator
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cpu_and_emulator_agree(rng, dtype):
    x, w, b = make(rng, (41, 37), 67, dtype)
    cpu = lg.transform_matrix(x, w, b, "gelu_tanh", device="cpu")
    emu = lg.transform_matrix(x, w, b, "gelu_tanh", device="emulator")
    tol = tolerance(dtype, x, w, b, reference(x, w, b, "gelu_tanh"))
    # Both are within tol of the exact value, so within 2 tol of each other.
    assert np.all(np.abs(cpu.astype(np.float64) - emu.astype(np.float64)) <= 2 * tol)


# --------------------------------------------------------------------------- out=


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_out_is_written_in_place_and_every_element(backend_name, rng, dtype):
    x, w, b = make(rng, (2, 19, 23), 45, dtype)
    out = np.full((2, 19, 45), np.nan, dtype)  # poison: an unwritten element stays NaN
    got = lg.transform_matrix(x, w, b, "relu", out=out, device=backend_name)
    assert got is out
    assert_close(out, x, w, b, "relu", dtype)


def test_out_batched(backend_name, rng):
    x, w, b = make(rng, (4, 7, 9), 13, np.float32, batch=4)
    out = np.full((4, 7, 13), np.nan, np.float32)
    assert lg.transform_matrix(x, w, b, "sigmoid", out=out, device=backend_name) is out
    assert_close(out, x, w, b, "sigmoid", np.float32)


def test_out_non_contiguous_is_filled(backend_name, rng):
    x, w, b = make(rng, (6, 5), 4, np.float64)
    base = np.full((6, 8), np.nan)
    out = base[:, ::2]  # a strided view: the result goes through a buffer
    assert lg.transform_matrix(x, w, b, None, out=out, device=backend_name) is out
    assert_close(out, x, w, b, None, np.float64)
    assert np.all(np.isnan(base[:, 1::2])), "elements between the view's columns were touched"


def test_out_wrong_shape_or_dtype(backend_name, rng):
    x, w, b = make(rng, (6, 5), 4, np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(6, 4\)"):
        lg.transform_matrix(x, w, b, out=np.empty((6, 5), np.float32), device=backend_name)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        lg.transform_matrix(x, w, b, out=np.empty((6, 4), np.float64), device=backend_name)
    readonly = np.empty((6, 4), np.float32)
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        lg.transform_matrix(x, w, b, out=readonly, device=backend_name)


def _slow_first_device(device, chunk):
    """Hold cpu:0 back so that cpu:1 writes its rows first (the race made certain)."""
    if device == "cpu:0":
        time.sleep(0.02)


OVERLAP_DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("emulator", id="emulator", marks=needs_emulator),
    pytest.param("sched1", id="scheduler-1"),
    pytest.param("sched2", id="scheduler-2"),
]


def _device(name):
    if name == "sched1":
        return lg.Scheduler(["cpu:0"], chunk_size=10)
    if name == "sched2":
        return lg.Scheduler(["cpu:0", "cpu:1"], chunk_size=10, fault_injector=_slow_first_device)
    return name


@pytest.mark.parametrize("device", OVERLAP_DEVICES)
def test_out_overlapping_an_input_gives_the_right_result(device, rng):
    """An out that overlaps data, weights or bias is computed as with separate buffers.

    The issue: ``transform_matrix(x[1:], w, out=x[:-1], device=Scheduler(2 CPUs))``
    was wrong (a chunk's rows overwrote the next chunk's input before it was
    read), while the emulator refused and the cpu was right.  Now every
    device reads the inputs whole before writing ``out``.
    """
    d = 16
    buf = rng.standard_normal((61, d)).astype(np.float32)
    w = (rng.standard_normal((d, d)) / 4).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    # out shifted one row before data: every chunk's output is the previous input
    x0 = buf[1:].copy()
    got = lg.transform_matrix(buf[1:], w, b, "gelu", out=buf[:-1], device=_device(device))
    assert_close(got, x0, w, b, "gelu", np.float32)
    # out is data itself
    buf2 = rng.standard_normal((40, d)).astype(np.float32)
    x0 = buf2.copy()
    lg.transform_matrix(buf2, w, b, None, out=buf2, device=_device(device))
    assert_close(buf2, x0, w, b, None, np.float32)
    # out overlaps the weights and the bias (all three in one buffer)
    whole = rng.standard_normal((d + 1 + 30, d)).astype(np.float32) / 4
    w3, b3, x3 = whole[:d], whole[d], whole[d + 1:]
    ref = (w3.copy(), b3.copy(), x3.copy())
    lg.transform_matrix(x3, w3, b3, "relu", out=whole[:30], device=_device(device))
    assert_close(whole[:30], ref[2], ref[0], ref[1], "relu", np.float32)


@pytest.mark.parametrize("device", OVERLAP_DEVICES)
def test_out_overlapping_batched_inputs(device, rng):
    x = rng.standard_normal((6, 5, 8)).astype(np.float64)
    w = rng.standard_normal((6, 8, 8)).astype(np.float64)
    x0 = x.copy()
    sched = device.startswith("sched")
    dev = lg.Scheduler(["cpu:0", "cpu:1"], chunk_size=1, fault_injector=_slow_first_device) if sched else device
    lg.transform_matrix(x, w, out=x, device=dev)
    assert_close(x, x0, w, None, None, np.float64)


@pytest.mark.parametrize("device", OVERLAP_DEVICES)
def test_nan_is_found_before_out_is_written(device, rng):
    """On every device a NaN anywhere in the input leaves ``out`` untouched.

    The Scheduler used to write the rows of every chunk before the one
    holding the NaN (3,500 of 4,000 rows in the issue).
    """
    x = rng.standard_normal((80, 8)).astype(np.float32)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    x[-1, 3] = np.nan
    out = np.zeros((80, 4), np.float32)
    with pytest.raises(ValueError, match="data contains NaN"):
        lg.transform_matrix(x, w, out=out, device=_device(device))
    assert not out.any(), f"{np.count_nonzero(out.any(axis=1))} rows of out were written"
    w[0, 0] = np.inf
    x[-1, 3] = 0
    with pytest.raises(ValueError, match="weights contains NaN"):
        lg.transform_matrix(x, w, out=out, device=_device(device))
    assert not out.any()


# --------------------------------------------------------------------------- inputs


def test_non_contiguous_and_read_only_inputs_are_unchanged(backend_name, rng):
    big = rng.standard_normal((20, 26)).astype(np.float32)
    x = big[::2, ::2]  # (10, 13), strided both ways
    w = np.asfortranarray(rng.standard_normal((7, 13)).astype(np.float32))
    b = rng.standard_normal(14).astype(np.float32)[::2]
    for a in (big, w, b):
        a.setflags(write=False)
    before = [a.copy() for a in (big, w, b)]
    got = lg.transform_matrix(x, w, b, "gelu", device=backend_name)
    assert_close(got, x, w, b, "gelu", np.float32)
    for a, a0 in zip((big, w, b), before):
        np.testing.assert_array_equal(a, a0)


@needs_emulator
def test_misaligned_data_takes_the_scalar_path(rng):
    # A C-contiguous float32 view starting 4 bytes past a 16-byte boundary.
    n, d_in, d_out = 9, 12, 10
    raw = np.empty(n * d_in + 4, np.float32)
    start = (-(raw.ctypes.data // 4) % 4 + 1) % 4
    x = raw[start:start + n * d_in].reshape(n, d_in)
    x[...] = rng.standard_normal((n, d_in))
    assert x.ctypes.data % 16 != 0 and x.flags.c_contiguous
    w = rng.standard_normal((d_out, d_in)).astype(np.float32)
    got = lg.transform_matrix(x, w, None, "relu", device="emulator")
    assert transform_launch.last_launch().vec is False
    assert_close(got, x, w, None, "relu", np.float32)


def test_integer_input_computes_in_float64(backend_name):
    x = np.arange(12).reshape(3, 4)
    w = np.ones((2, 4), dtype=np.int32)
    got = lg.transform_matrix(x, w, device=backend_name)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.dot(x, w.T).astype(np.float64))


def test_mixed_half_and_single_computes_in_float32(backend_name, rng):
    x, w, b = make(rng, (5, 6), 3, np.float16)
    got = lg.transform_matrix(x, w.astype(np.float32), b, device=backend_name)
    assert got.dtype == np.float32


# --------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_both_shapes(backend_name):
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(3, 6\)"):
        lg.transform_matrix(np.ones((4, 5)), np.ones((3, 6)), device=backend_name)


def test_bias_shape(backend_name):
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        lg.transform_matrix(np.ones((4, 5)), np.ones((3, 5)), np.ones(4), device=backend_name)


def test_batched_bias_shape(backend_name):
    with pytest.raises(ValueError, match=r"bias must have shape \(2, 3\)"):
        lg.transform_matrix(np.ones((2, 4, 5)), np.ones((2, 3, 5)), np.ones(3), device=backend_name)


def test_batched_batch_mismatch(backend_name):
    with pytest.raises(ValueError, match="batch"):
        lg.transform_matrix(np.ones((2, 4, 5)), np.ones((3, 3, 5)), device=backend_name)


def test_unknown_activation(backend_name):
    with pytest.raises(ValueError, match="activation='swish'"):
        lg.transform_matrix(np.ones((4, 5)), np.ones((3, 5)), activation="swish", device=backend_name)


def test_nan_in_weights(backend_name):
    w = np.ones((3, 5))
    w[1, 2] = np.nan
    with pytest.raises(ValueError, match="weights contains NaN"):
        lg.transform_matrix(np.ones((4, 5)), w, device=backend_name)


def test_complex_input_is_refused(backend_name):
    with pytest.raises(TypeError, match="complex"):
        lg.transform_matrix(np.ones((4, 5), complex), np.ones((3, 5)), device=backend_name)


# --- torch CPU tensors: torch's own GEMM after the core's checks (issue 18) -------------------

def _torch_or_skip():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_cpu_tensors_take_torch_ops_with_the_same_values(monkeypatch, activation, dtype):
    torch = _torch_or_skip()
    from liam_gpu import torch_ops
    from liam_gpu.backends.cpu import CpuBackend

    calls = []
    real = torch_ops.transform_matrix
    monkeypatch.setattr(torch_ops, "transform_matrix", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(CpuBackend, "linear", lambda *a, **k: pytest.fail("the core computed a torch CPU call"))
    g = torch.Generator().manual_seed(0)
    tdtype = getattr(torch, dtype)
    x = torch.randn(5, 70, 48, generator=g, dtype=tdtype)
    w = torch.randn(33, 48, generator=g, dtype=tdtype) * 0.2
    b = torch.randn(33, generator=g, dtype=tdtype)
    y = lg.transform_matrix(x, w, b, activation, device="cpu")
    assert calls and isinstance(y, torch.Tensor) and y.dtype == tdtype and y.shape == (5, 70, 33)
    assert_close(y.numpy(), x.numpy(), w.numpy(), b.numpy(), activation, np.dtype(dtype))
    out = torch.empty(5, 70, 33, dtype=tdtype)
    assert lg.transform_matrix(x, w, b, activation, out=out) is out
    np.testing.assert_array_equal(out.numpy(), y.numpy())


def test_torch_cpu_gelu_keeps_the_relative_tail():
    # Unlike F.gelu (1 + erf, 12% off at -4 and 0 at -12), the erfc form by blocks
    # (torch_ops.gelu_): within gelu's bound of 4 + 3 x^2 ulps (tests/test_activations.py).
    torch = _torch_or_skip()
    x = torch.linspace(-12, -4, 64, dtype=torch.float32)[:, None]
    got = lg.transform_matrix(x, torch.ones(1, 1), None, "gelu", device="cpu")[:, 0].numpy()
    pre = x.double().numpy()[:, 0]
    want = activations.reference(pre, "gelu")
    allowed = (4 + 3 * pre ** 2) * np.spacing(np.abs(got))
    assert np.all(np.abs(got - want) <= allowed)


@pytest.mark.parametrize("block", [1, 7, 1000, 1 << 20])
def test_torch_cpu_gelu_bits_do_not_depend_on_the_block(monkeypatch, block):
    # One temporary reused block after block (ragged last block included): the same bits
    # as the whole tensor in one block.
    torch = _torch_or_skip()
    from liam_gpu import torch_ops

    y = torch.randn(37, 29, generator=torch.Generator().manual_seed(5)) * 4
    monkeypatch.setattr(torch_ops, "_BLOCK_ELEMENTS", 1 << 20)
    whole = torch_ops.gelu_(y.clone())
    monkeypatch.setattr(torch_ops, "_BLOCK_ELEMENTS", block)
    assert torch.equal(torch_ops.gelu_(y.clone()), whole)
    ref = activations.reference(y.double().numpy(), "gelu")
    assert np.all(np.abs(whole.numpy() - ref) <= (4 + 3 * y.double().numpy() ** 2) * np.spacing(np.abs(whole.numpy())))


def test_torch_cpu_errors_are_the_cores():
    torch = _torch_or_skip()
    x, w, b = torch.randn(4, 3), torch.randn(2, 3), torch.randn(2)
    with pytest.raises(ValueError, match="weights expects d_in=5"):
        lg.transform_matrix(x, torch.randn(2, 5), b)
    with pytest.raises(ValueError, match="bias must have shape"):
        lg.transform_matrix(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="unknown"):
        lg.transform_matrix(x, w, b, "swish")
    with pytest.raises(ValueError, match="out must have shape"):
        lg.transform_matrix(x, w, b, out=torch.empty(4, 3))
    bad = x.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        lg.transform_matrix(bad, w, b)
    lg.transform_matrix(bad, w, b, check_finite=False)  # no check: computed
    # Checked from the product's sum (torch_ops): every input, and zero weights do not hide an Inf.
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        lg.transform_matrix(bad, torch.zeros(2, 3), b, "relu")
    for name, args in {"weights": (x, w.clone().fill_(float("nan")), b), "bias": (x, w, b + float("inf"))}.items():
        with pytest.raises(ValueError, match=f"{name} contains NaN or Inf"):
            lg.transform_matrix(*args, "sigmoid")
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        lg.transform_matrix(bad, w, b, out=torch.full((4, 2), 7.0))
    # Finite input whose product overflows: no error, as in the core.
    huge = torch.full((4, 3), 3e38)
    assert torch.isinf(lg.transform_matrix(huge, torch.ones(2, 3), None)).all()


def test_torch_cpu_out_overlapping_an_input_goes_through_the_core():
    torch = _torch_or_skip()
    x = torch.randn(6, 6)
    w = torch.eye(6)
    want = torch.relu(x).clone()
    assert lg.transform_matrix(x, w, None, "relu", out=x) is x
    np.testing.assert_array_equal(x.numpy(), want.numpy())  # x @ I is exact


# --------------------------------------------------------------------------- the CPU's finite check from sums


_BIG = (300, 256, 240)  # data + weights past transform.DEFERRED_CHECK_MIN: the check waits for the product


@pytest.mark.parametrize("seed", range(40))
def test_blas_turns_any_nonfinite_input_into_a_nonfinite_product(seed):
    """What :meth:`CpuBackend.linear_checked` relies on, on this machine's BLAS: NaN/Inf anywhere in
    ``x`` or ``w`` -- beside zeros (``inf * 0``), or cancelling (``inf - inf``) -- makes ``x @ w.T`` sum
    to a non-finite value, for small shapes (BLAS's small-matrix kernels) and large ones."""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        n, d_in, d_out = (int(rng.choice(c)) for c in ((1, 3, 16, 65, 300), (1, 5, 64, 129), (1, 7, 64, 200)))
        dtype = (np.float32, np.float64)[int(rng.integers(2))]
        x = rng.standard_normal((n, d_in)).astype(dtype)
        w = rng.standard_normal((d_out, d_in)).astype(dtype)
        value = (np.nan, np.inf, -np.inf)[int(rng.integers(3))]
        target, other = (x, w) if rng.random() < 0.5 else (w, x)
        i, k = int(rng.integers(target.shape[0])), int(rng.integers(d_in))
        target[i, k] = value
        if rng.random() < 0.5:
            other[:, k] = 0.0
        with np.errstate(all="ignore"):
            assert not np.isfinite(np.sum(x @ w.T)), (n, d_in, d_out, dtype, value)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "gelu"])
@pytest.mark.parametrize("where", ["data", "weights", "bias"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_check_after_the_product_refuses_every_nonfinite_input_naming_it(activation, where, value, dtype):
    """Big calls on the CPU test finiteness from the product's sums, before the activation
    (``relu(-inf)`` and ``sigmoid(-inf)`` are 0): every NaN/Inf is still refused with the exact
    check's message, a zero column beside it included, and no input is modified."""
    rng = np.random.default_rng(3)
    n, d_in, d_out = _BIG
    arrays_ = {"data": rng.standard_normal((n, d_in)).astype(dtype),
               "weights": rng.standard_normal((d_out, d_in)).astype(dtype),
               "bias": rng.standard_normal(d_out).astype(dtype)}
    arrays_[where].flat[int(rng.integers(arrays_[where].size))] = value
    if where == "data":
        arrays_["weights"][:, :] = 0.0  # every product with the bad entry is inf * 0
    copies = {k: v.copy() for k, v in arrays_.items()}
    with pytest.raises(ValueError, match=f"^{where} contains NaN or Inf"):
        lg.transform_matrix(arrays_["data"], arrays_["weights"], arrays_["bias"], activation, device="cpu")
    for k in arrays_:
        np.testing.assert_array_equal(arrays_[k], copies[k])


def test_cpu_check_after_the_product_names_the_first_bad_input_and_keeps_the_checks_order():
    """Several faults: the same first error as the checks before the product (data's NaN before
    empty weights, data before weights before bias)."""
    n, d_in, d_out = _BIG
    x = np.ones((n, d_in), np.float32)
    x[5, 5] = np.nan
    with pytest.raises(ValueError, match="^data contains NaN"):
        lg.transform_matrix(x, np.ones((0, d_in), np.float32), device="cpu")
    w = np.ones((d_out, d_in), np.float32)
    w[1, 1] = np.inf
    b = np.full(d_out, np.nan, np.float32)
    with pytest.raises(ValueError, match="^data contains NaN"):
        lg.transform_matrix(x, w, b, "relu", device="cpu")
    with pytest.raises(ValueError, match="^weights contains NaN"):
        lg.transform_matrix(np.ones((n, d_in), np.float32), w, b, "relu", device="cpu")


@pytest.mark.parametrize("activation", [None, "relu"])
def test_cpu_check_after_the_product_returns_an_overflow_of_finite_inputs(activation):
    """Finite inputs whose products overflow are not bad input: the result (with its infinities) is
    what the unchecked call returns."""
    n, d_in, d_out = _BIG
    x = np.full((n, d_in), 1e30, np.float32)
    w = np.full((d_out, d_in), 1e30, np.float32)
    w[0] = -1e30
    got = lg.transform_matrix(x, w, None, activation, device="cpu")
    want = lg.transform_matrix(x, w, None, activation, device="cpu", check_finite=False)
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got).any()


@pytest.mark.parametrize("route", ["dtype", "bits"])
@pytest.mark.parametrize("where", ["data", "weights", "bias"])
def test_big_bfloat16_tensors_with_nan_are_refused_on_either_route(route, where, monkeypatch):
    """bfloat16 torch tensors reach the core as the ml_dtypes dtype or as uint16 bits; past the size
    where the CPU checks from the product, NaN is still found from the bits (found by review: the bits
    route once skipped the check)."""
    torch = pytest.importorskip("torch")
    from liam_gpu import bfloat16

    if route == "bits":
        monkeypatch.setattr(bfloat16, "has_dtype", lambda on_gpu: False)
    n, d_in, d_out = _BIG
    args = {"data": torch.ones(n, d_in, dtype=torch.bfloat16), "weights": torch.ones(d_out, d_in, dtype=torch.bfloat16),
            "bias": torch.ones(d_out, dtype=torch.bfloat16)}
    args[where].view(-1)[3] = float("nan")
    for activation in (None, "relu"):
        with pytest.raises(ValueError, match=f"^{where} contains NaN or Inf"):
            lg.transform_matrix(args["data"], args["weights"], args["bias"], activation, device="cpu")


def test_cpu_check_after_the_product_warns_nothing_before_refusing_bad_input_that_also_overflows():
    """Bad input beside finite values that overflow: the ValueError comes without a RuntimeWarning first
    (a caller with warnings as errors gets the ValueError); an overflow of finite inputs alone still warns."""
    import warnings

    n, d_in, d_out = _BIG
    x = np.full((n, d_in), 1e30, np.float32)
    w = np.full((d_out, d_in), 1e30, np.float32)
    bad = x.copy()
    bad[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="^data contains NaN"):
            lg.transform_matrix(bad, w, device="cpu")
        with pytest.raises(ValueError, match="^data contains NaN"):
            lg.transform_matrix(bad, w, None, "relu", device="cpu")
    with pytest.warns(RuntimeWarning, match="overflow"):
        lg.transform_matrix(x, w, None, "relu", device="cpu")
