"""The real :class:`~liam_gpu.launch.runtime.CudaRuntime`, run without a GPU.

``tests/test_cuda_path_simulated.py`` replaces the runtime by an
``EmulatorRuntime`` of kind "cuda"; here nothing in liam_gpu is replaced.
``sys.modules["cupy"]`` is the fake of ``tests/fake_cupy.py``, whose
``RawModule``/``RawKernel`` compile and run the kernels on the CPU emulator
and whose ``cuda.runtime.getDeviceProperties`` answers like an H200, so
``CudaRuntime.__init__`` (properties), ``_load`` (``RawModule(code=...,
options=..., name_expressions=[...])`` and ``compile()`` on its device),
``module_group`` (one module per transform dtype), ``function`` (one
``get_function`` per entry point, on its device) and the launch closure
(entering the device, raising ``max_dynamic_shared_size_bytes`` above 48 KiB)
all run as on a GPU.  ``fake_cupy.RAW_CALLS`` records what they asked.

Patched for one test only (``monkeypatch``): ``sys.modules["cupy"]`` and
``liam_gpu.backends.cuda_device_count`` (two devices); the memos of
``cuda_runtime`` and ``get_backend`` are cleared before and after, so no
runtime bound to the fake outlives its test.
"""
from __future__ import annotations

import sys

import fake_cupy
import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import backends
from liam_gpu.activations import activation_code
from liam_gpu.backends import emulator_available
from liam_gpu.backends import kernel as kernel_backends
from liam_gpu.launch import batched_svd as batched_svd_launch
from liam_gpu.launch import runtime as runtime_module
from liam_gpu.launch import transform as transform_launch
from liam_gpu.launch.family import compile_options
from liam_gpu.launch.runtime import CudaRuntime

pytestmark = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

DEVICES = 2


@pytest.fixture
def cp(monkeypatch):
    """The fake ``cupy``, installed, with the real ``cuda_runtime`` and ``CudaBackend`` on top."""
    fake = fake_cupy.make(device_count=DEVICES)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backends, "cuda_device_count", lambda: DEVICES)
    # CudaBackend must reach the real, memoized cuda_runtime (no other test's patch left behind).
    assert kernel_backends.cuda_runtime is runtime_module.cuda_runtime
    runtime_module.cuda_runtime.cache_clear()
    backends.get_backend.cache_clear()
    try:
        yield fake
    finally:
        runtime_module.cuda_runtime.cache_clear()
        backends.get_backend.cache_clear()


def _inputs(rng, cp, device=0, n=20, d_in=16, d_out=12):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((n, d_in), (d_out, d_in), (d_out,)))
    with cp.cuda.Device(device):
        xd, wd, bd = cp.asarray(x), cp.asarray(w), cp.asarray(b)
        out = cp.empty((n, d_out), dtype=np.float32)
    return (x, w, b), (xd, wd, bd, out)


def _gelu_reference(x, w, b):
    return lg.transform_matrix(x, w, b, "gelu", device="cpu")


# --------------------------------------------------------------------------- the fake's kernel surface


def test_fake_raw_module_is_strict(cp):
    family = batched_svd_launch.FAMILY
    names = family.name_expressions
    with pytest.raises(TypeError):
        cp.RawModule(family.code(), options=compile_options(), name_expressions=names)  # keyword-only
    with pytest.raises(TypeError, match="options"):
        cp.RawModule(code=family.code(), options=list(compile_options()), name_expressions=names)
    with pytest.raises(NotImplementedError):
        cp.RawKernel("extern \"C\" __global__ void k() {}", "k")
    with pytest.raises(fake_cupy.CUDARuntimeError):
        cp.cuda.runtime.getDeviceProperties(DEVICES)
    module = cp.RawModule(code=family.code(), options=compile_options(), name_expressions=list(names))
    module.compile()
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="NOT_FOUND"):
        module.get_function(names[0].replace(", ", ","))  # CuPy's name mapping is exact
    kernel = module.get_function(batched_svd_launch._entry("double", 4))
    a = cp.asarray(np.random.default_rng(1).standard_normal((1, 96, 48)))
    u, s, vt = cp.empty((1, 96, 48)), cp.empty((1, 48)), cp.empty((1, 48, 48))
    args = (a, u, s, vt, np.int64(1), np.int64(96), np.int64(48), np.int64(30))
    smem = batched_svd_launch.shared_bytes(96, 48, np.float64)
    assert smem > 48 * 1024
    with pytest.raises(TypeError, match="tuples"):
        kernel(1, (64,), args, shared_mem=smem)
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="INVALID_VALUE"):
        kernel((1,), (64,), args, shared_mem=smem)  # above 48 KiB without the attribute
    with cp.cuda.Device(1), pytest.raises(ValueError, match="looked up on device 0"):
        kernel.max_dynamic_shared_size_bytes = smem
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="INVALID_VALUE"):
        kernel.max_dynamic_shared_size_bytes = 228 * 1024  # above the opt-in limit
    kernel.max_dynamic_shared_size_bytes = smem
    with cp.cuda.Device(1), pytest.raises(ValueError, match="looked up on device 0"):
        kernel((1,), (64,), args, shared_mem=smem)
    kernel((1,), (64,), args, shared_mem=smem)
    np.testing.assert_allclose(s.get()[0], np.linalg.svd(a.get()[0], compute_uv=False), rtol=1e-12)


# --------------------------------------------------------------------------- CudaRuntime itself


def test_properties_read_from_the_device(cp, monkeypatch):
    runtime = runtime_module.cuda_runtime(0)
    assert type(runtime) is CudaRuntime and runtime.kind == "cuda" and runtime.xp is cp
    assert runtime.device_id == 0
    assert runtime.sm_count == 132
    assert runtime.compute_capability == (9, 0)
    assert runtime.max_shared_per_block == 232448  # sharedMemPerBlockOptin, not sharedMemPerBlock
    assert runtime_module.cuda_runtime(0) is runtime and runtime_module.cuda_runtime(1) is not runtime
    with pytest.raises(fake_cupy.CUDARuntimeError):
        runtime_module.cuda_runtime(DEVICES)
    props = {k: v for k, v in fake_cupy.DEVICE_PROPERTIES.items() if k != "sharedMemPerBlockOptin"}
    monkeypatch.setattr(fake_cupy, "DEVICE_PROPERTIES", props)
    assert CudaRuntime(1).max_shared_per_block == 48 * 1024  # a driver without the opt-in key


def test_float32_transform_compiles_one_group_and_caches_the_kernel(cp, rng):
    runtime = runtime_module.cuda_runtime(0)
    family = transform_launch.FAMILY
    (x, w, b), (xd, wd, bd, out) = _inputs(rng, cp)
    gelu = activation_code("gelu")
    assert transform_launch.linear(runtime, xd, wd, bd, gelu, out) is out
    launch = transform_launch.last_launch()
    assert launch.path == "kernel"
    np.testing.assert_allclose(out.get(), _gelu_reference(x, w, b), rtol=1e-4, atol=1e-4)

    calls = fake_cupy.RAW_CALLS
    float32_group = family.group_members("float32")
    assert float32_group and all(family.group(n) == "float32" for n in float32_group)
    assert len(float32_group) < len(family.name_expressions)
    assert calls.modules == [(float32_group, compile_options(), 0)]  # only the float32 group was built
    assert calls.compiles == [(float32_group, 0)]
    entry = transform_launch.linear_entry("float32", transform_launch.TILE_CONFIGS["float32"][launch.config],
                                          launch.vec)
    assert calls.lookups == [(entry, 0)]
    assert [(name, device, shared) for name, device, _, _, shared in calls.launches] == [(entry, 0, 0)]

    # Same entry again: the cached kernel is launched, nothing is compiled or looked up.
    (x2, w2, b2), (xd2, wd2, bd2, out2) = _inputs(rng, cp)
    transform_launch.linear(runtime, xd2, wd2, bd2, gelu, out2)
    assert transform_launch.last_launch() == launch
    np.testing.assert_allclose(out2.get(), _gelu_reference(x2, w2, b2), rtol=1e-4, atol=1e-4)
    assert len(calls.modules) == 1 and len(calls.compiles) == 1
    assert calls.lookups == [(entry, 0)]
    assert len(calls.launches) == 2
    assert runtime._kernels.keys() == {(family.name, entry)}


def test_second_device_runtime_launches_while_device_0_is_current(cp, rng):
    runtime = runtime_module.cuda_runtime(1)
    (x, w, b), (xd, wd, bd, out) = _inputs(rng, cp, device=1)
    assert cp.cuda.runtime.getDevice() == 0
    transform_launch.linear(runtime, xd, wd, bd, activation_code("gelu"), out)
    assert cp.cuda.runtime.getDevice() == 0  # the launch entered device 1 and left it
    np.testing.assert_allclose(out.get(), _gelu_reference(x, w, b), rtol=1e-4, atol=1e-4)
    calls = fake_cupy.RAW_CALLS
    # Built, compiled, looked up and launched on device 1, though device 0 is current around the call.
    assert [device for *_, device in calls.modules] == [1]
    assert [device for _, device in calls.compiles] == [1]
    assert [device for _, device in calls.lookups] == [1]
    assert [launch[1] for launch in calls.launches] == [1]
    # The RawKernel itself is bound to device 1: only the runtime's entering the device makes this work.
    (kernel,) = runtime._kernels.values()
    with pytest.raises(ValueError, match="looked up on device 1"):
        kernel((1,), (128,), (xd, wd, bd, out, 0, 0, 0, 0, 0, 0, 0))


def test_shared_memory_above_48_kib_sets_the_kernel_attribute(cp, rng):
    runtime = runtime_module.cuda_runtime(0)
    m, n = 96, 48
    shared = batched_svd_launch.shared_bytes(m, n, np.float64)
    # A smaller shared-memory layout must not turn this test into a silent skip:
    # it would stop checking the attribute path.  Pick a larger shape instead.
    assert shared > 48 * 1024, (
        f"batched_svd of {m}x{n} float64 now needs {shared} bytes of shared memory, not more than "
        "48 KiB: choose a shape that does, or this test checks nothing"
    )
    a = rng.standard_normal((2, m, n))
    u, s, vt = batched_svd_launch.batched_svd(runtime, cp.asarray(a))
    entry = batched_svd_launch._entry("double", 4)
    calls = fake_cupy.RAW_CALLS
    assert calls.attributes == [(entry, 0, "max_dynamic_shared_size_bytes", shared)]
    assert [(name, shared_mem) for name, _, _, _, shared_mem in calls.launches] == [(entry, shared)]
    np.testing.assert_allclose(s.get(), np.linalg.svd(a, compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose(np.matmul(u.get() * s.get()[:, None, :], vt.get()), a, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- public functions through CudaBackend


def test_transform_matrix_end_to_end(cp, rng):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((37, 29), (45, 29), (45,)))
    got = lg.transform_matrix(x, w, b, "gelu", device="cuda")
    assert type(backends.get_backend("cuda:0").runtime) is CudaRuntime
    assert type(got) is np.ndarray and got.dtype == np.float32
    np.testing.assert_allclose(got, _gelu_reference(x, w, b), rtol=1e-4, atol=1e-3)
    assert len(fake_cupy.RAW_CALLS.launches) == 1


def test_randomized_svd_end_to_end(cp, rng):
    a = rng.standard_normal((90, 6)) @ rng.standard_normal((6, 30)) + 1e-3 * rng.standard_normal((90, 30))
    want = lg.randomized_svd(a, 5, device="cpu")
    got = lg.randomized_svd(a, 5, device="cuda")
    assert type(backends.get_backend("cuda:0").runtime) is CudaRuntime
    calls = fake_cupy.RAW_CALLS
    assert {name.split("<")[0] for name, *_ in calls.launches} >= {"sketch_kernel", "gram_partial_kernel"}
    assert len(calls.launches) > len(calls.lookups) == len(set(calls.lookups))  # one lookup per entry
    assert all(type(v) is np.ndarray and v.dtype == np.float64 for v in got)
    scale = float(want[1][0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-8, atol=1e-8 * scale)
    dense = [np.matmul(u * s[None, :], vt) for u, s, vt in (got, want)]
    np.testing.assert_allclose(dense[0], dense[1], rtol=1e-8, atol=1e-8 * scale)
