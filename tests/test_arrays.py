"""Array in, same array out: type and device dispatch, DLPack, the device keyword."""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import arrays, backends


def test_devices_lists_cpu_and_emulator_without_a_gpu():
    names = lg.devices()
    assert "cpu" in names
    assert names.index("cpu") > max((i for i, n in enumerate(names) if n.startswith("cuda")), default=-1)


def test_auto_picks_cpu_without_a_gpu(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    if backends.cuda_device_count():
        assert backends.canonical_device(None) == "cuda:0"
    else:
        assert backends.canonical_device(None) == "cpu"
        assert backends.canonical_device("auto") == "cpu"


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "emulator")
    assert backends.canonical_device(None) == "emulator"
    assert backends.canonical_device("cpu") == "cpu"


@pytest.mark.parametrize("device", ["cuda", "CUDA:0", "cpu", "emulator"])
def test_canonical_device_names(device):
    assert backends.canonical_device(device) in ("cuda:0", "cpu", "emulator")


def test_common_kind_refuses_mixed_libraries():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="data: torch.*weights: numpy"):
        arrays.common_kind(data=torch.ones(2), weights=np.ones(2))
    assert arrays.common_kind(data=[1, 2], weights=np.ones(2)) == arrays.NUMPY


def test_torch_cpu_round_trip_is_zero_copy():
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4).requires_grad_(True)
    kind = arrays.kind_of(t)
    assert kind == arrays.ArrayKind("torch", "cpu")
    view = arrays.to_compute(t, kind)
    assert isinstance(view, np.ndarray) and view.ctypes.data == t.data_ptr()
    back = arrays.from_compute(view, kind)
    assert isinstance(back, torch.Tensor) and back.data_ptr() == t.data_ptr()


def test_torch_in_torch_out_through_the_public_api():
    torch = pytest.importorskip("torch")
    x = torch.randn(5, 3, dtype=torch.float32)
    w = torch.randn(2, 3, dtype=torch.float32)
    y = lg.transform_matrix(x, w, device="cpu")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.device.type == "cpu"
    torch.testing.assert_close(y, x @ w.T)


def test_numpy_in_numpy_out_on_every_backend(backend_name):
    y = lg.transform_matrix(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), device=backend_name)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.full((2, 4), 3.0, np.float32))


@pytest.mark.gpu
def test_cupy_in_cupy_out_and_numpy_on_cuda_comes_back_as_numpy():
    import cupy

    x = cupy.ones((2, 3), cupy.float32)
    y = lg.transform_matrix(x, cupy.ones((4, 3), cupy.float32))
    assert isinstance(y, cupy.ndarray) and y.device.id == x.device.id
    z = lg.transform_matrix(np.ones((2, 3)), np.ones((4, 3)), device="cuda")
    assert isinstance(z, np.ndarray)


def test_scheduler_device_names_and_the_chunks_own_device(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cpu")
    assert backends.canonical_device("cpu:2") == "cpu"
    assert backends.canonical_device("emulator:0") == "emulator"
    sched = lg.Scheduler(["emulator:0", "emulator:1"])
    seen = sched.map(lambda chunk: np.array([backends.canonical_device(None)] * len(chunk)), np.arange(4), chunk_size=1)
    assert seen.tolist() == ["emulator"] * 4  # not the process default "cpu"
    assert backends.canonical_device(None) == "cpu"
    with pytest.raises(ValueError, match="device"):
        backends.canonical_device("cpu:x")
