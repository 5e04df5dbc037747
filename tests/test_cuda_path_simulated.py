"""The CUDA backend's Python code, run without a GPU: ``device="cuda"`` on a simulated CuPy.

What is real here: everything in liam_gpu above the kernel launch -- the public
functions, ``arrays`` (kinds, ``caller_stream``, conversions), the
``backends`` routing of ``device="cuda"``/``"cuda:N"``, the real
:class:`~liam_gpu.backends.kernel.CudaBackend` (``activate``, ``asarray``,
``empty``), the launch wrappers with the "cuda" runtime kind (so the planner
may choose ``"blas+epilogue"``), and the CUDA kernels themselves, compiled by
g++ and run by the emulator.

What is simulated: CuPy, by ``tests/fake_cupy.py`` -- numpy arrays behind
CuPy's attribute set, refusing what CuPy refuses (``flags.writeable``,
``ctypes``, implicit ``np.asarray``, numpy arrays passed to CuPy functions or
kernels, arrays of another device than the current one); and the runtime,
:class:`SimulatedCudaRuntime`: an ``EmulatorRuntime`` of kind "cuda" whose
launches make the runtime's device current (as ``CudaRuntime``'s do), check
the arguments as CuPy's ``RawKernel`` would, and hand the numpy memory to the
emulator.  ``CudaRuntime`` itself (NVRTC, ``RawModule``) and cuBLAS/cuSOLVER
numerics are not exercised; numpy stands in for them.

Three things are patched, for the duration of one test only (``monkeypatch``):
``sys.modules["cupy"]`` (the fake), ``liam_gpu.backends.cuda_device_count``
(two simulated devices) and ``liam_gpu.backends.kernel.cuda_runtime`` (the
simulated runtime); ``get_backend``'s memo is cleared before and after.  Each
result is compared with the CPU backend's within a loose tolerance: the point
is that the CUDA code path runs and gives the right values, not the bits.
"""
from __future__ import annotations


import fake_cupy
import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import backends, rangefinder
from liam_gpu.activations import activation_code
from liam_gpu.backends import emulator_available
from liam_gpu.backends import kernel as kernel_backends
from liam_gpu.launch import transform as transform_launch
from liam_gpu.launch.runtime import EmulatorRuntime

pytestmark = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

DEVICES = 2

#: Emulator modules by (family, entry points), shared by the simulated runtimes of all tests.
_MODULES: dict = {}


class SimulatedCudaRuntime(EmulatorRuntime):
    """A runtime of kind "cuda" on the fake CuPy whose kernels run on the emulator."""

    kind = "cuda"

    def __init__(self, device_id: int, cupy) -> None:
        super().__init__()
        self.xp = cupy
        self.device_id = device_id
        self.compute_capability = (9, 0)
        self.launches = 0

    def _load(self, family, name_expressions):
        key = (family.name, tuple(name_expressions))
        if key not in _MODULES:
            _MODULES[key] = super()._load(family, name_expressions)
        return _MODULES[key]

    def function(self, family, name_expression):
        kernel = super().function(family, name_expression)
        xp, device_id = self.xp, self.device_id

        def launch(grid, block, args, shared_mem: int = 0) -> None:
            with xp.cuda.Device(device_id):  # as CudaRuntime's launches do
                kernel(grid, block, fake_cupy.kernel_args(args, device_id), shared_mem=shared_mem)
            self.launches += 1

        return launch

    def data_ptr(self, a) -> int:
        return int(a.data.ptr)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()


@pytest.fixture
def cp(monkeypatch):
    """The fake ``cupy`` and ``cupyx.scipy.sparse``, installed, with ``device="cuda[:N]"`` routed to
    simulated devices (shared by the test files that simulate CUDA)."""
    fake = fake_cupy.install(monkeypatch, device_count=DEVICES)
    runtimes: dict[int, SimulatedCudaRuntime] = {}

    def cuda_runtime(device_id: int) -> SimulatedCudaRuntime:
        if device_id not in runtimes:
            runtimes[device_id] = SimulatedCudaRuntime(device_id, fake)
        return runtimes[device_id]

    monkeypatch.setattr(backends, "cuda_device_count", lambda: DEVICES)
    monkeypatch.setattr(kernel_backends, "cuda_runtime", cuda_runtime)
    backends.get_backend.cache_clear()
    try:
        yield fake
    finally:
        backends.get_backend.cache_clear()


TOL = {np.float16: dict(rtol=2e-2, atol=2e-2), np.float32: dict(rtol=1e-4, atol=1e-4),
       np.float64: dict(rtol=1e-9, atol=1e-9)}


def _host(x):
    """A result as numpy, whichever side it is on (``.get()`` for the fake CuPy)."""
    return x.get() if isinstance(x, fake_cupy.ndarray) else x


def _launches(device_id: int = 0) -> int:
    """Kernels launched so far on a simulated device (proof that ``device="cuda"`` reached it)."""
    return backends.get_backend(f"cuda:{device_id}").runtime.launches


def _close(got, want, dtype=np.float32, scale=1.0):
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(_host(got), want, rtol=tol["rtol"], atol=tol["atol"] * scale)


# --------------------------------------------------------------------------- the fake itself


def test_fake_refuses_numpy_only_api(cp):
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert isinstance(a, cp.ndarray) and a.device.id == 0 and a.flags.c_contiguous
    for numpy_only in (lambda: a.flags.writeable, lambda: a.ctypes, lambda: np.asarray(a),
                       lambda: a + np.ones(3), lambda: cp.matmul(a, np.ones((3, 2))), lambda: range(a[0, 0])):
        with pytest.raises((AttributeError, TypeError)):
            numpy_only()
    with pytest.raises(TypeError, match="Unsupported type"):
        fake_cupy.kernel_args((np.ones(3),), 0)
    with cp.cuda.Device(1):
        b = cp.empty((2, 3))
    assert b.device.id == 1
    with pytest.raises(ValueError, match="device 1"):
        a + b  # another device's array, without peer access
    assert isinstance(np.sqrt(a), cp.ndarray) and isinstance(a.sum(), cp.ndarray)  # 0-d, as CuPy's


def test_snapshot_names_exist_in_installed_cupy():
    real = fake_cupy.installed_cupy_names()
    if real is None:
        pytest.skip("CuPy is not installed")
    for snapshot, names in zip((fake_cupy.SNAPSHOT_NDARRAY, fake_cupy.SNAPSHOT_MODULE, fake_cupy.SNAPSHOT_LINALG),
                               real):
        assert snapshot <= names, sorted(snapshot - names)


# --------------------------------------------------------------------------- transform_matrix


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("bias, activation", [(False, None), (True, "gelu"), (True, "relu")])
def test_transform_numpy_inputs_on_cuda_come_back_as_numpy(cp, rng, dtype, bias, activation):
    x = rng.standard_normal((37, 29)).astype(dtype)
    w = rng.standard_normal((45, 29)).astype(dtype)
    b = rng.standard_normal(45).astype(dtype) if bias else None
    got = lg.transform_matrix(x, w, b, activation, device="cuda")
    assert _launches() == 1
    want = lg.transform_matrix(x, w, b, activation, device="cpu")
    assert type(got) is np.ndarray and got.dtype == dtype and got.shape == (37, 45)
    _close(got, want.astype(np.float64), dtype, scale=10)
    assert transform_launch.last_launch().path == "kernel"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_batched_weights(cp, rng, dtype):
    x = rng.standard_normal((3, 5, 8)).astype(dtype)
    w = rng.standard_normal((3, 4, 8)).astype(dtype)
    b = rng.standard_normal((3, 4)).astype(dtype)
    want = lg.transform_matrix(x, w, b, "tanh", device="cpu")
    _close(lg.transform_matrix(x, w, b, "tanh", device="cuda"), want, dtype)
    got = lg.transform_matrix(cp.asarray(x), cp.asarray(w), cp.asarray(b), "tanh")
    assert isinstance(got, cp.ndarray)
    _close(got, want, dtype)


def test_transform_cupy_inputs_stay_on_the_device(cp, rng):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((20, 16), (12, 16), (12,)))
    got = lg.transform_matrix(cp.asarray(x), cp.asarray(w), cp.asarray(b), "silu")
    assert isinstance(got, cp.ndarray) and got.device.id == 0
    _close(got, lg.transform_matrix(x, w, b, "silu", device="cpu"))
    one_row = lg.transform_matrix(cp.asarray(x[0]), cp.asarray(w))  # 1-D data
    _close(one_row, lg.transform_matrix(x[0], w, device="cpu"))


def test_transform_out_given_as_cupy_array(cp, rng):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((20, 16), (12, 16), (12,)))
    want = lg.transform_matrix(x, w, b, "relu", device="cpu")
    out = cp.empty((20, 12), dtype=np.float32)
    assert lg.transform_matrix(cp.asarray(x), cp.asarray(w), cp.asarray(b), "relu", out=out) is out
    _close(out, want)
    strided = cp.empty((12, 20), dtype=np.float32).T  # not C-contiguous: computed aside, then copied in
    assert lg.transform_matrix(cp.asarray(x), cp.asarray(w), cp.asarray(b), "relu", out=strided) is strided
    _close(strided, want)


def test_transform_cupy_out_overlapping_its_input(cp, rng):
    """A CuPy out overlapping data (and out=data) is computed as with separate buffers, as on every device."""
    buf = rng.standard_normal((41, 16)).astype(np.float32)
    w = (rng.standard_normal((16, 16)) / 4).astype(np.float32)
    want = lg.transform_matrix(buf[1:], w, None, "gelu", device="cpu")
    d = cp.asarray(buf)
    got = lg.transform_matrix(d[1:], cp.asarray(w), None, "gelu", out=d[:-1])
    _close(got, want)
    same = cp.asarray(buf[1:])
    lg.transform_matrix(same, cp.asarray(w), None, "gelu", out=same)
    _close(same, want)


def test_transform_numpy_out_on_cuda(cp, rng):
    x, w = rng.standard_normal((20, 16)), rng.standard_normal((12, 16))
    out = np.empty((20, 12))
    assert lg.transform_matrix(x, w, out=out, device="cuda") is out
    _close(out, x @ w.T, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("batched", [False, True])
def test_forced_blas_epilogue_path(cp, rng, dtype, batched):
    runtime = backends.get_backend("cuda:0").runtime
    assert isinstance(runtime, SimulatedCudaRuntime)
    lead = (2,) if batched else ()
    x = rng.standard_normal(lead + (33, 24)).astype(dtype)
    w = rng.standard_normal(lead + (40, 24)).astype(dtype)
    b = rng.standard_normal(lead + (40,)).astype(dtype)
    out = cp.empty(lead + (33, 40), dtype=dtype)
    run = transform_launch.batched_linear if batched else transform_launch.linear
    gelu = activation_code("gelu")
    assert run(runtime, cp.asarray(x), cp.asarray(w), cp.asarray(b), gelu, out, path="blas+epilogue") is out
    assert transform_launch.last_launch().path == "blas+epilogue"
    _close(out, lg.transform_matrix(x, w, b, "gelu", device="cpu").astype(np.float64), dtype, scale=10)


def test_planner_chooses_blas_on_cuda_for_a_large_float64_gemm(cp, rng):
    x, w, b = rng.standard_normal((512, 256)), rng.standard_normal((512, 256)), rng.standard_normal(512)
    got = lg.transform_matrix(x, w, b, "relu", device="cuda")
    assert transform_launch.last_launch().path == "blas+epilogue"
    _close(got, lg.transform_matrix(x, w, b, "relu", device="cpu"), np.float64, scale=100)


# --------------------------------------------------------------------------- randomized SVD


def _matrix(rng, m, n, rank=6, dtype=np.float64):
    a = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + 1e-3 * rng.standard_normal((m, n))
    return a.astype(dtype)


def _dense(u, s, vt):
    u, s, vt = (_host(v).astype(np.float64) for v in (u, s, vt))
    return np.matmul(u * s[..., None, :], vt)


@pytest.mark.parametrize("shape", [(90, 30), (30, 90)], ids=["tall", "wide"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_randomized_svd(cp, rng, shape, dtype):
    a = _matrix(rng, *shape, dtype=dtype)
    want = lg.randomized_svd(a, 5, device="cpu")
    got = lg.randomized_svd(a, 5, device="cuda")
    assert _launches() > 0
    assert all(type(v) is np.ndarray and v.dtype == dtype for v in got)
    scale = float(want[1][0])
    tol = dict(rtol=1e-3, atol=1e-3 * scale) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-8 * scale)
    np.testing.assert_allclose(got[1], want[1], **tol)
    np.testing.assert_allclose(_dense(*got), _dense(*want), **tol)
    on_device = lg.randomized_svd(cp.asarray(a), 5)
    assert all(isinstance(v, cp.ndarray) for v in on_device)
    np.testing.assert_allclose(_dense(*on_device), _dense(*want), **tol)


def test_randomized_svd_fortran_ordered_cupy_input(cp, rng):
    a = _matrix(rng, 60, 25)
    want = lg.randomized_svd(a, 4, device="cpu")
    got = lg.randomized_svd(cp.asarray(np.asfortranarray(a)), 4)
    np.testing.assert_allclose(_dense(*got), _dense(*want), rtol=1e-8, atol=1e-8)


def _check_error_estimate(a, low) -> float:
    """``low.relative_error`` against the truth, within the engine's contract; the truth.

    The truth is ``||A - U S Vt||_F / ||A||_F`` in float64 from the returned
    factors.  The estimate is within a factor 2 of it wherever it is above the
    dtype's resolution, and never reported below the resolution.  (Comparing
    two float32 estimates of about 3e-4 with each other to 1e-4 depended on
    one CPU's BLAS kernels: it failed on a CPU with AVX-512 and AMX.)
    """
    a64 = np.asarray(a, np.float64)
    truth = np.linalg.norm(a64 - _dense(low.U, low.S, low.Vt)) / np.linalg.norm(a64)
    floor = max(truth, rangefinder.resolution(a.dtype))
    assert floor / 2 <= low.relative_error <= 2 * floor, (low.relative_error, truth)
    return truth


@pytest.mark.parametrize("shape", [(90, 30), (30, 90)], ids=["tall", "wide"])
def test_svd_compress_fixed_rank_and_tol(cp, rng, shape):
    a = _matrix(rng, *shape, dtype=np.float32)
    for kwargs in (dict(k=5), dict(tol=1e-2)):
        want = lg.svd_compress(a, device="cpu", **kwargs)
        got = lg.svd_compress(a, device="cuda", **kwargs)
        assert got.rank == want.rank and isinstance(got.U, np.ndarray)
        np.testing.assert_allclose(got.to_dense(), want.to_dense(), rtol=1e-3, atol=1e-3)
        for low in (want, got):
            truth = _check_error_estimate(a, low)
            if "tol" in kwargs:
                assert truth <= kwargs["tol"]


@pytest.mark.parametrize("kwargs", [dict(k=4), dict(tol=0.3)], ids=["k", "tol"])
def test_svd_compress_small_stack(cp, rng, kwargs):
    a = rng.standard_normal((4, 30, 20))
    want = lg.svd_compress(a, device="cpu", **kwargs)
    got = lg.svd_compress(a, device="cuda", **kwargs)
    assert got.batched and got.rank == want.rank
    np.testing.assert_allclose(got.to_dense(), want.to_dense(), rtol=1e-8, atol=1e-8)
    on_device = lg.svd_compress(cp.asarray(a), **kwargs)
    assert isinstance(on_device.U, cp.ndarray)
    np.testing.assert_allclose(_host(on_device.to_dense()), want.to_dense(), rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------- LowRank


def test_lowrank_methods_on_cupy_factors(cp, rng, tmp_path):
    a = _matrix(rng, 50, 24)
    want = lg.svd_compress(a, 6, device="cpu")
    lr = lg.svd_compress(cp.asarray(a), 6)
    assert isinstance(lr.U, cp.ndarray)
    dense = lr.to_dense()
    assert isinstance(dense, cp.ndarray)
    np.testing.assert_allclose(dense.get(), want.to_dense(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(np.asarray(lr), want.to_dense(), rtol=1e-8, atol=1e-8)
    coords = lr.project(cp.asarray(a[:3]))
    assert isinstance(coords, cp.ndarray)
    np.testing.assert_allclose(np.abs(coords.get()), np.abs(want.project(a[:3])), rtol=1e-8, atol=1e-8)
    lr.save(tmp_path / "lr.npz")
    back = lg.LowRank.load(tmp_path / "lr.npz")
    assert isinstance(back.U, np.ndarray)
    np.testing.assert_array_equal(back.S, lr.S.get())
    stack = lg.LowRank.concatenate([lr, lr])
    assert isinstance(stack.U, cp.ndarray) and stack.shape == (2, 50, 24)
    np.testing.assert_allclose(_host(stack[1].to_dense()), want.to_dense(), rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------- BinaryAlgebra


def test_binary_algebra_on_cuda(cp, rng):
    gpu, cpu = lg.BinaryAlgebra(device="cuda"), lg.BinaryAlgebra(device="cpu")
    m = rng.standard_normal((5, 5))
    spd = m @ m.T + 5 * np.eye(5)
    for name, args in [("hadamard_product", (m, m)), ("kronecker_product", (m[:2, :2], m)),
                       ("outer_product", (m[0], m[1])), ("frobenius_norm", (m,)), ("matrix_power", (spd, -2)),
                       ("solve_linear_system", (spd, m[0])), ("cosine_similarity", (m,)), ("covariance", (m,))]:
        got, want = getattr(gpu, name)(*args), getattr(cpu, name)(*args)
        assert type(got) is type(want), name
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=name)
    codes = gpu.binary_encode(np.arange(6))
    np.testing.assert_array_equal(codes, cpu.binary_encode(np.arange(6)))
    np.testing.assert_array_equal(gpu.binary_decode(codes), np.arange(6))


def test_binary_algebra_cusolver_differences(cp):
    gpu = lg.BinaryAlgebra(device="cuda")
    w, v = gpu.spectral_decomposition(np.array([[2.0, 1.0], [0.0, 3.0]]))  # cupy's eig: complex
    assert w.dtype == np.float64 and v.dtype == np.float64
    np.testing.assert_allclose(np.sort(w), [2.0, 3.0])
    w, _ = gpu.spectral_decomposition(np.array([[0.0, -1.0], [1.0, 0.0]]))
    assert np.iscomplexobj(w)
    with pytest.raises(ValueError, match="singular"):  # cuSOLVER gives NaN, not LinAlgError
        gpu.matrix_power(np.ones((3, 3)), -1)


def test_binary_algebra_cupy_inputs(cp, rng):
    m = rng.standard_normal((4, 4))
    got = lg.BinaryAlgebra().hadamard_product(cp.asarray(m), cp.asarray(m))
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(got.get(), m * m)
    w, _ = lg.BinaryAlgebra().spectral_decomposition(cp.asarray(m + m.T))
    np.testing.assert_allclose(np.sort(w.get()), np.linalg.eigvalsh(m + m.T), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- a second device


def test_second_device_numpy_inputs(cp, rng):
    x, w = rng.standard_normal((20, 16)), rng.standard_normal((12, 16))
    _close(lg.transform_matrix(x, w, device="cuda:1"), x @ w.T, np.float64)
    assert _launches(1) == 1 and _launches(0) == 0
    a = _matrix(rng, 40, 20)
    lr = lg.svd_compress(a, 4, device="cuda:1")
    np.testing.assert_allclose(lr.to_dense(), lg.svd_compress(a, 4, device="cpu").to_dense(), rtol=1e-8, atol=1e-8)


def test_second_device_cupy_inputs_while_device_0_is_current(cp, rng):
    x, w = rng.standard_normal((20, 16)), rng.standard_normal((12, 16))
    a = _matrix(rng, 40, 20)
    with cp.cuda.Device(1):
        xd, wd, ad = cp.asarray(x), cp.asarray(w), cp.asarray(a)
    got = lg.transform_matrix(xd, wd)
    assert got.device.id == 1
    _close(got, x @ w.T, np.float64)
    u, s, vt = lg.randomized_svd(ad, 4)
    assert u.device.id == 1
    np.testing.assert_allclose(_dense(u, s, vt), _dense(*lg.randomized_svd(a, 4, device="cpu")), rtol=1e-8,
                               atol=1e-8)
    lr = lg.svd_compress(ad, 4)
    assert lr.to_dense().device.id == 1
    got = lg.BinaryAlgebra().hadamard_product(ad, ad)
    assert got.device.id == 1


@pytest.mark.parametrize("device", ["cpu", "emulator"])
def test_cupy_inputs_computed_on_the_host_come_back_as_cupy(cp, rng, device):
    x, w = rng.standard_normal((20, 16)), rng.standard_normal((12, 16))
    with cp.cuda.Device(1):
        xd, wd = cp.asarray(x), cp.asarray(w)
    got = lg.transform_matrix(xd, wd, device=device)
    assert isinstance(got, cp.ndarray) and got.device.id == 1
    _close(got, x @ w.T, np.float64)
    u, s, vt = lg.randomized_svd(xd, 3, device=device)
    assert isinstance(u, cp.ndarray) and u.device.id == 1
    np.testing.assert_allclose(_dense(u, s, vt), _dense(*lg.randomized_svd(x, 3, device="cpu")), rtol=1e-8,
                               atol=1e-8)
    got = lg.BinaryAlgebra(device=device).hadamard_product(xd, xd)
    assert isinstance(got, cp.ndarray) and got.device.id == 1


# --------------------------------------------------------------------------- results and out= on the caller's GPU


def test_cupy_input_computed_on_another_gpu_comes_back_on_its_own_gpu(cp, rng):
    x, w = rng.standard_normal((20, 16)), rng.standard_normal((12, 16))
    with cp.cuda.Device(1):
        xd, wd = cp.asarray(x), cp.asarray(w)
    got = lg.transform_matrix(xd, wd, device="cuda:0")  # computed on GPU 0 as asked, given back on GPU 1
    _close(got, x @ w.T, np.float64)
    assert got.device.id == 1


def test_cupy_out_on_another_gpu(cp, rng):
    x, w = rng.standard_normal((20, 16)), rng.standard_normal((12, 16))
    with cp.cuda.Device(1):
        xd, wd, out = cp.asarray(x), cp.asarray(w), cp.empty((20, 12))
    assert lg.transform_matrix(xd, wd, out=out, device="cuda:0") is out
    _close(out, x @ w.T, np.float64)
