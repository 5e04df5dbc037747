"""bfloat16 stored as such: the bit conversions, the kernels, and torch tensors through the public API.

The kernels read bfloat16 as ``uint16`` bits (:mod:`liam_gpu.bfloat16`); torch
tensors reach the backends as ``ml_dtypes.bfloat16`` arrays sharing their
memory, or as such bits where ``ml_dtypes`` is missing (simulated here).  The
conversions are checked bit for bit against torch's own; the kernels
(emulator, and a GPU when present) against a float64 reference within the
bfloat16 bound of ``tests/test_transform.py``; and ``transform_matrix`` on
bfloat16 tensors for zero-copy inputs, ``out=`` and bad input on every
backend.  numpy ml_dtypes arrays: ``tests/test_bfloat16_dtype.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import bfloat16
from liam_gpu.backends.cpu import CpuBackend
from liam_gpu.launch import transform as T

from test_transform import assert_close, reference, tolerance  # tests/ is on sys.path
from test_transform_kernels import CONFIG_NAMES, aligned_empty, host, rt  # noqa: F401  (rt is a fixture)

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = "bfloat16"


def bits_of(values) -> np.ndarray:
    """float32 values rounded to bfloat16 by torch, as uint16 bits (the reference rounding)."""
    t = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def widened(bits) -> np.ndarray:
    return bfloat16.to_float32(host(bits))


# --------------------------------------------------------------------------- the bit conversions


def test_rounding_matches_torch_bit_for_bit(rng):
    # Random bit patterns cover every binade, subnormals, inf and the values that
    # overflow; the low 16 bits set to exactly 0x8000 are ties (both parities).
    u = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    u[:50_000] = (u[:50_000] & 0xFFFF0000) | 0x8000
    u[50_000:50_010] = [0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F800000, 0x00000001, 0x80008000, 0, 0x80000000,
                        0x3F808000, 0x3F818000]
    f = u.view(np.float32)
    finite = ~np.isnan(f)
    got = bfloat16.from_float32(f)
    np.testing.assert_array_equal(got[finite], bits_of(f[finite]))
    assert np.all((got[~finite] & 0x7FC0) == 0x7FC0)  # NaN stays a quiet NaN
    assert got[50_000 + 8] == 0x3F80 and got[50_000 + 9] == 0x3F82  # ties to even, down and up


def test_widening_is_exact_and_out_is_written(rng):
    bits = rng.integers(0, 2**16, size=4096, dtype=np.uint16)
    want = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bfloat16.to_float32(bits).view(np.uint32), want.view(np.uint32))
    out = np.zeros(4096, np.uint16)
    assert bfloat16.from_float32(want, out=out) is out
    np.testing.assert_array_equal(out[~np.isnan(want)], bits[~np.isnan(want)])


def test_nonfinite_reads_the_exponent():
    bits = bits_of(np.float32([1.0, np.inf, -np.inf, np.nan, 3e38, -0.0]))
    np.testing.assert_array_equal(bfloat16.nonfinite(bits), [False, True, True, True, False, False])


# --------------------------------------------------------------------------- the kernels


def filled_bits(rt, rng, shape, *, offset_bytes=0, scale=1.0):
    a = aligned_empty(rt, shape, np.uint16, offset_bytes=offset_bytes)
    a[...] = rt.xp.asarray(bits_of(rng.standard_normal(shape) * scale))
    return a


def poisoned_bits(rt, shape):
    out = aligned_empty(rt, shape, np.uint16)
    out[...] = 0x7FC0  # NaN
    return out


def close_bits(out, x, w, b, activation):
    assert_close(widened(out), widened(x), widened(w), None if b is None else widened(b), activation, BF16)


@pytest.mark.parametrize("vec", [True, False], ids=["vec", "scalar"])
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_every_configuration_and_load_path(rt, rng, config, vec):
    c = T.TILE_CONFIGS[BF16][config]
    n, d_out, d_in = c.bm + 3, c.bn + 5, 2 * c.bk + T.VECTOR_WIDTH[BF16]
    x = filled_bits(rt, rng, (n, d_in), offset_bytes=0 if vec else 2)
    w = filled_bits(rt, rng, (d_out, d_in), scale=d_in ** -0.5)
    b = filled_bits(rt, rng, (d_out,))
    out = poisoned_bits(rt, (n, d_out))
    T.linear(rt, x, w, b, 2, out, config=config, storage=BF16)
    launch = T.last_launch()
    assert (launch.path, launch.config, launch.vec, launch.vec_out) == ("kernel", config, vec, d_out % 4 == 0)
    close_bits(out, x, w, b, "gelu")


def test_batched_weights_and_ragged_output_groups(rt, rng):
    x, w = filled_bits(rt, rng, (3, 9, 24)), filled_bits(rt, rng, (3, 7, 24), scale=0.2)
    b = filled_bits(rt, rng, (3, 7))
    out = poisoned_bits(rt, (3, 9, 7))
    T.batched_linear(rt, x, w, b, 4, out, storage=BF16)
    assert T.last_launch().vec is True and T.last_launch().vec_out is False
    assert_close(widened(out), widened(x), widened(w), widened(b), "silu", BF16)


@pytest.mark.parametrize("d_out", [1, 4], ids=["scalar-store", "group-store"])
def test_kernel_rounding_is_bit_exact(rt, rng, d_out):
    # out = bf16(hi + lo) with w = ones: hi and lo are bfloat16 values at most 16
    # binades apart, so their float32 sum is exact and only the kernel's
    # float -> bfloat16 conversion rounds.  It must match torch's rounding bit
    # for bit, ties to even included.
    hi = widened(rng.integers(0x0080, 0x7F00, size=3000, dtype=np.uint16))
    ratio = rng.choice(np.float32([2.0 ** -8, 2.0 ** -9, 3 * 2.0 ** -9, 2.0 ** -7, 0.7 * 2.0 ** -7]), size=hi.size)
    lo = widened(bits_of(hi * ratio * rng.choice(np.float32([-1, 1]), size=hi.size)))
    hi[:2], lo[:2] = 1.0, [2.0 ** -8, 3 * 2.0 ** -8]  # ties: to even down (1.0), to even up (1 + 2^-6)
    x = aligned_empty(rt, (hi.size, 2), np.uint16)
    x[...] = rt.xp.asarray(bits_of(np.stack([hi, lo], axis=1)))
    w = aligned_empty(rt, (d_out, 2), np.uint16)
    w[...] = 0x3F80  # 1.0
    out = poisoned_bits(rt, (hi.size, d_out))
    T.linear(rt, x, w, None, 0, out, config="medium", storage=BF16)
    assert T.last_launch().vec_out is (d_out == 4)
    want = np.broadcast_to(bits_of(hi + lo)[:, None], out.shape)
    np.testing.assert_array_equal(host(out), want)
    assert host(out)[0, 0] == 0x3F80 and host(out)[1, 0] == 0x3F82


def test_launch_checks_the_carrier_and_refuses_the_blas_path(rt, rng):
    x, w = filled_bits(rt, rng, (4, 8)), filled_bits(rt, rng, (3, 8))
    out = poisoned_bits(rt, (4, 3))
    with pytest.raises(TypeError, match="bfloat16 storage is carried as uint16"):
        T.linear(rt, x.view(np.int16), w.view(np.int16), None, 0, out.view(np.int16), storage=BF16)
    with pytest.raises(TypeError, match="storage='bfloat16'"):
        T.linear(rt, x, w, None, 0, out)  # uint16 without the storage flag is not a float
    with pytest.raises(ValueError, match="storage='bf16' is unknown"):
        T.linear(rt, x, w, None, 0, out, storage="bf16")
    with pytest.raises(ValueError, match="cannot compute bfloat16"):
        T.linear(rt, x, w, None, 0, out, storage=BF16, path="blas+epilogue")


def test_plan_keeps_bfloat16_on_the_fused_kernel():
    from types import SimpleNamespace

    cuda = SimpleNamespace(kind="cuda", sm_count=132)
    assert T.plan(cuda, 8192, 8192, 8192, BF16).path == "kernel"
    assert T.plan(cuda, 8192, 8192, 8192, np.float16).path == "blas+epilogue"


# --------------------------------------------------------------------------- tensors through the public API


def tensors(shape, d_out, *, batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_in = shape[-1]
    x = torch.randn(*shape, generator=g).bfloat16()
    wshape = (batch, d_out, d_in) if batch else (d_out, d_in)
    w = (torch.randn(*wshape, generator=g) / d_in ** 0.5).bfloat16()
    b = torch.randn(*wshape[:-1], generator=g).bfloat16()
    return x, w, b


def values(t):
    return t.float().numpy()


def check(y, x, w, b, activation):
    assert y.dtype == torch.bfloat16
    assert_close(values(y), values(x), values(w), None if b is None else values(b), activation, BF16)


@pytest.mark.parametrize("shape, d_out", [((1, 1), 1), ((37, 29), 45), ((5, 515), 3), ((2, 3, 19), 24), ((29,), 23)])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"], ids=str)
def test_transform_matches_the_reference(backend_name, shape, d_out, activation):
    x, w, b = tensors(shape, d_out)
    y = lg.transform_matrix(x, w, b, activation, device=backend_name)
    assert y.shape == shape[:-1] + (d_out,)
    check(y, x, w, b, activation)


def test_batched_weights(backend_name):
    x, w, b = tensors((4, 11, 16), 9, batch=4)
    check(lg.transform_matrix(x, w, b, "silu", device=backend_name), x, w, b, "silu")


def test_inputs_are_read_in_place_and_out_is_written_in_place(backend_name, monkeypatch):
    if backend_name.startswith("cuda"):
        pytest.skip("host tensors are copied to the device; zero-copy is for memory the backend computes on")
    backend_cls = type(lg.backends.resolve(backend_name, None))
    seen = {}
    real = backend_cls.linear

    def spy(self, x, w, bias, activation, out, *, storage=None):
        seen.update(x=x.ctypes.data, w=w.ctypes.data, out=out.ctypes.data, storage=storage, dtype=x.dtype)
        return real(self, x, w, bias, activation, out, storage=storage)

    monkeypatch.setattr(backend_cls, "linear", spy)
    x, w, b = tensors((12, 16), 8)
    before = x.clone()
    out = torch.full((12, 8), float("nan"), dtype=torch.bfloat16)
    assert lg.transform_matrix(x, w, b, "relu", out=out, device=backend_name) is out
    assert seen == {"x": x.data_ptr(), "w": w.data_ptr(), "out": out.data_ptr(), "storage": None,
                    "dtype": np.dtype(ml_dtypes.bfloat16)}
    assert torch.equal(x, before)
    check(out, x, w, b, "relu")


def test_result_is_the_buffer_the_backend_wrote(backend_name, monkeypatch):
    if backend_name.startswith("cuda"):
        pytest.skip("a CPU tensor's result computed on a GPU comes back as a copy")
    backend_cls = type(lg.backends.resolve(backend_name, None))
    made = []
    real = backend_cls.empty

    def spy(self, shape, dtype):
        made.append(real(self, shape, dtype))
        return made[-1]

    monkeypatch.setattr(backend_cls, "empty", spy)
    x, w, _ = tensors((6, 8), 5)
    y = lg.transform_matrix(x, w, device=backend_name)
    assert y.dtype == torch.bfloat16 and made[-1].dtype == ml_dtypes.bfloat16
    assert y.data_ptr() == made[-1].ctypes.data  # no copy on the way back


def test_lists_among_bfloat16_tensors_are_rounded_to_bfloat16(backend_name):
    x, w, b = tensors((5, 4), 3)
    y = lg.transform_matrix(x, values(w).tolist(), values(b).tolist(), "relu", device=backend_name)
    check(y, x, w, b, "relu")  # w and b were bfloat16 already: rounding them again changes nothing


def test_storage_refuses_values_that_are_not_bits():
    from liam_gpu import validation

    with pytest.raises(TypeError, match="w has dtype float64; bfloat16 storage is carried as uint16"):
        validation.as_float_array("w", np.array([[1.5, 300.7]]), storage="bfloat16")


def test_cpu_and_emulator_agree_within_the_bound():
    pytest.importorskip("liam_gpu.emulator")
    from liam_gpu.backends import emulator_available

    if not emulator_available():
        pytest.skip("the emulator needs g++")
    x, w, b = tensors((40, 33), 20, seed=3)
    a = values(lg.transform_matrix(x, w, b, "gelu", device="cpu"))
    e = values(lg.transform_matrix(x, w, b, "gelu", device="emulator"))
    ref = reference(values(x), values(w), values(b), "gelu")
    assert np.all(np.abs(a - e) <= 2 * tolerance(BF16, values(x), values(w), values(b), ref))


def test_strided_input_is_made_contiguous_and_never_modified(backend_name):
    x, w, b = tensors((20, 32), 7)
    xs = x[::2, ::2]  # a strided view
    before = xs.clone()
    y = lg.transform_matrix(xs, w[:, :16], b, device=backend_name)
    assert torch.equal(xs, before)
    check(y, xs, w[:, :16], b, None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_is_a_value_error_unless_unchecked(backend_name, bad):
    x, w, b = tensors((4, 8), 3)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="weights contains NaN or Inf"):
        lg.transform_matrix(x, w, b, device=backend_name)
    y = lg.transform_matrix(x, w, b, device=backend_name, check_finite=False)
    assert not torch.isfinite(y[:, 1]).any() and torch.isfinite(y[:, [0, 2]]).all()


def test_bad_shapes_and_out_are_errors(backend_name):
    x, w, b = tensors((4, 8), 3)
    with pytest.raises(ValueError, match="d_in=8"):
        lg.transform_matrix(x[:, :5], w, device=backend_name)
    with pytest.raises(ValueError, match="out must have shape"):
        lg.transform_matrix(x, w, out=torch.empty(4, 4, dtype=torch.bfloat16), device=backend_name)
    with pytest.raises(ValueError, match="data is empty"):
        lg.transform_matrix(x[:0], w, device=backend_name)


def test_mixed_with_float32_still_computes_in_float32():
    x, w, _ = tensors((4, 8), 3)
    y = lg.transform_matrix(x, w.float(), device="cpu")
    assert y.dtype == torch.float32


def test_cpu_backend_linear_takes_bits_directly(rng):
    x, w = bits_of(rng.standard_normal((5, 6))), bits_of(rng.standard_normal((4, 6)))
    out = np.zeros((5, 4), np.uint16)
    CpuBackend().linear(x, w, None, 0, out, storage=BF16)
    want = bits_of(widened(x) @ widened(w).T)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("route", ["dtype", "bits"])
def test_scheduler_writes_a_bfloat16_out_with_the_bits_of_the_core(route, monkeypatch):
    # The scheduler prepares a call as the core does (transform.prepare): bfloat16 tensors
    # stay bfloat16 (or their bits), so out= is written in place instead of refused.
    if route == "bits":
        monkeypatch.setattr(bfloat16, "has_dtype", lambda on_gpu: False)
    sched = lg.Scheduler(["cpu:0", "cpu:1"], chunk_size=3)
    for x, w, b in (tensors((8, 4), 3), tensors((5, 7, 6), 4, batch=5)):
        want = lg.transform_matrix(x, w, b, "gelu", device="cpu")
        y = lg.transform_matrix(x, w, b, "gelu", device=sched)
        out = torch.full(want.shape, float("nan"), dtype=torch.bfloat16)
        assert lg.transform_matrix(x, w, b, "gelu", out=out, device=sched) is out
        for got in (y, out):
            assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), want.view(torch.int16))
        check(y, x, w, b, "gelu")


@pytest.mark.gpu
def test_cuda_tensors_in_place_views_and_out():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch and a visible GPU")
    x, w, b = (t.cuda() for t in tensors((64, 40), 24))
    y = lg.transform_matrix(x, w, b, "gelu")
    assert y.device == x.device and y.dtype == torch.bfloat16
    check(y.cpu(), x.cpu(), w.cpu(), b.cpu(), "gelu")
    # A view 2 bytes past 16-byte alignment: the scalar load path, read in place.
    flat = torch.randn(64 * 40 + 1, device="cuda").bfloat16()
    xm = flat[1:].view(64, 40)
    check(lg.transform_matrix(xm, w, b, "gelu").cpu(), xm.cpu(), w.cpu(), b.cpu(), "gelu")
    out = torch.full((64, 24), float("nan"), device="cuda", dtype=torch.bfloat16)
    assert lg.transform_matrix(x, w, b, "silu", out=out) is out
    check(out.cpu(), x.cpu(), w.cpu(), b.cpu(), "silu")


# --------------------------------------------------------------------------- the two routes of a tensor


def test_bits_route_gives_the_bits_of_the_dtype_route(backend_name, monkeypatch):
    # Where ml_dtypes is not loaded, tensors travel as uint16 bits with storage="bfloat16";
    # both routes widen exactly and round once to nearest even, so the bits agree.
    if backend_name.startswith("cuda"):
        pytest.skip("host tensors")
    backend_cls = type(lg.backends.resolve(backend_name, None))
    seen = []
    real = backend_cls.linear

    def spy(self, x, w, bias, activation, out, *, storage=None):
        seen.append((x.dtype, storage))
        return real(self, x, w, bias, activation, out, storage=storage)

    monkeypatch.setattr(backend_cls, "linear", spy)
    x, w, b = tensors((33, 40), 21, seed=5)
    by_dtype = lg.transform_matrix(x, w, b, "gelu", device=backend_name)
    monkeypatch.setattr(bfloat16, "has_dtype", lambda on_gpu: False)
    by_bits = lg.transform_matrix(x, w, b, "gelu", device=backend_name)
    out = torch.full((33, 21), float("nan"), dtype=torch.bfloat16)
    assert lg.transform_matrix(x, w, b, "gelu", out=out, device=backend_name) is out
    assert seen == [(np.dtype(ml_dtypes.bfloat16), None)] + [(np.dtype(np.uint16), BF16)] * 2
    assert torch.equal(by_bits.view(torch.int16), by_dtype.view(torch.int16))
    assert torch.equal(out.view(torch.int16), by_dtype.view(torch.int16))
    check(by_bits, x, w, b, "gelu")


@pytest.mark.parametrize("route", ["dtype", "bits"])
def test_lists_among_tensors_are_rounded_once_from_float64(route, monkeypatch):
    # 1 + 2^-8 + 2^-30: rounded to float32 first it is the tie 1 + 2^-8, which goes to
    # even (1.0); rounded once it is above the tie: 1 + 2^-7.
    if route == "bits":
        monkeypatch.setattr(bfloat16, "has_dtype", lambda on_gpu: False)
    x = torch.ones(1, 1, dtype=torch.bfloat16)
    y = lg.transform_matrix(x, [[1 + 2.0 ** -8 + 2.0 ** -30], [1 + 2.0 ** -8]], device="cpu")
    assert y.dtype == torch.bfloat16 and y.view(torch.int16)[0].tolist() == [0x3F81, 0x3F80]


def test_float64_rounds_once_to_bits(rng):
    # Every float64 value rounded once by ml_dtypes, bit for bit: near ties at every scale,
    # subnormals, overflow to inf, signed zero, inf; NaN stays a quiet NaN.
    u = rng.integers(0, 2**64, size=200_000, dtype=np.uint64)
    v = u.view(np.float64)
    # float32-range values with a tie of bfloat16 perturbed by the low float64 bits
    near = (rng.integers(0x0080, 0x7F80, size=50_000).astype(np.uint64) << 48) | (np.uint64(0x8000) << 32)
    near |= rng.integers(0, 3, size=50_000).astype(np.uint64) * rng.integers(0, 2**20, size=50_000).astype(np.uint64)
    v = np.concatenate([v, near.view(np.float64), -near.view(np.float64),
                        [2.0 ** -134, 2.0 ** -134 * (1 + 2.0 ** -40), 3.4e38, 1e300, -1e300, 0.0, -0.0, np.inf]])
    finite = ~np.isnan(v)
    got = bfloat16.from_float32(v)
    with np.errstate(over="ignore"):  # the values beyond bfloat16's range: inf, as wanted
        want = v[finite].astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(got[finite], want)
    assert np.all((got[~finite] & 0x7FC0) == 0x7FC0)


def test_neither_import_nor_a_tensor_call_imports_ml_dtypes():
    # Its import costs about a second here; torch users who never asked for it do not pay it.
    import subprocess
    import sys

    code = ("import sys, torch, liam_gpu as lg\n"
            "x = torch.randn(4, 8).bfloat16()\n"
            "y = lg.transform_matrix(x, x[:3], device='cpu')\n"
            "assert y.dtype == torch.bfloat16\n"
            "print('ml_dtypes' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
