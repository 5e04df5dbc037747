"""The kernel backends: our CUDA kernels, run by CuPy on a GPU or by the CPU emulator.

``cuda`` and ``emulator`` differ only in the :class:`~liam_gpu.launch.runtime.Runtime`
that executes a launch; everything here is shared, so CI (emulator) tests the
same code path that runs on a GPU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..launch import transform as transform_launch
from ..launch.runtime import Runtime, cuda_runtime, emulator_runtime
from .base import Backend


class KernelBackend(Backend):
    """Primitives implemented by launching ``kernels/*.cu`` through a runtime."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.kind = runtime.kind
        self.runtime = runtime
        self.xp = runtime.xp

    def asarray(self, x: Any) -> Any:
        return self.xp.asarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)

    def linear(self, x, w, bias, activation, out):
        return transform_launch.linear(self.runtime, x, w, bias, activation, out)

    def batched_linear(self, x, w, bias, activation, out):
        return transform_launch.batched_linear(self.runtime, x, w, bias, activation, out)


class CudaBackend(KernelBackend):
    """One CUDA device through CuPy; arrays are allocated on that device."""

    def __init__(self, device_id: int) -> None:
        super().__init__(f"cuda:{device_id}", cuda_runtime(device_id))
        self.device_id = device_id

    def asarray(self, x: Any) -> Any:
        with self.xp.cuda.Device(self.device_id):
            return self.xp.asarray(x)

    def empty(self, shape, dtype):
        with self.xp.cuda.Device(self.device_id):
            return self.xp.empty(shape, dtype=dtype)


class EmulatorBackend(KernelBackend):
    """The CUDA kernels executed on the CPU emulator; numpy arrays stand in for device memory."""

    def __init__(self) -> None:
        super().__init__("emulator", emulator_runtime())
