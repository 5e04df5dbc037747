"""Who executes a launch: CuPy on a GPU, or the CUDA emulator on the CPU.

Both runtimes expose the same thing to the per-family launch wrappers: a
memoized module per (device, family) and functions called as
``fn(grid, block, args, shared_mem=...)``.  The wrappers above this never know
which one they drive, so the emulator in CI exercises exactly the launch code
that runs on a GPU.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import numpy as np

from .family import KernelFamily, compile_options

LaunchFn = Callable[..., None]


class Runtime:
    """Common interface of :class:`CudaRuntime` and :class:`EmulatorRuntime`.

    Attributes
    ----------
    kind
        ``"cuda"`` or ``"emulator"``.
    xp
        The array module whose arrays stand for device memory (cupy / numpy).
    sm_count
        Streaming multiprocessors, used to size grids.
    max_shared_per_block
        Dynamic shared memory a block may opt in to, in bytes.
    """

    kind: str = ""
    xp: Any = np
    sm_count: int = 1
    max_shared_per_block: int = 48 * 1024

    def __init__(self) -> None:
        # (family name, module group) -> loaded module; the group is None for a one-module family.
        self._modules: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()

    def function(self, family: KernelFamily, name_expression: str) -> LaunchFn:
        """The launchable entry point ``name_expression`` of ``family``."""
        if name_expression not in family.name_expressions:
            raise KeyError(f"{name_expression!r} is not an entry point of kernel family {family.name!r}")
        group = self.module_group(family, name_expression)
        with self._lock:
            module = self._modules.get((family.name, group))
            if module is None:
                names = family.group_members(group) if group is not None else family.name_expressions
                module = self._modules[(family.name, group)] = self._load(family, names)
        return module.get_function(name_expression)

    def module_group(self, family: KernelFamily, name_expression: str) -> str | None:
        """Which module holds an entry point: None means one module for the whole family."""
        return None

    def _load(self, family: KernelFamily, name_expressions: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def data_ptr(self, a: Any) -> int:
        """The device address of an array (for alignment checks)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for launched work (a no-op on the emulator, which runs synchronously)."""


class CudaRuntime(Runtime):
    """Launches through ``cupy.RawModule`` on one CUDA device, on the current stream.

    CuPy compiles with NVRTC for the device's architecture and caches the
    binary on disk (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``), so
    the compile cost is paid once per machine and kernel version.
    """

    kind = "cuda"

    def __init__(self, device_id: int) -> None:
        super().__init__()
        import cupy

        self.xp = cupy
        self.device_id = device_id
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        self.sm_count = int(props["multiProcessorCount"])
        self.compute_capability = (int(props["major"]), int(props["minor"]))
        self.max_shared_per_block = int(props.get("sharedMemPerBlockOptin", props["sharedMemPerBlock"]))
        self._kernels: dict[tuple[str, str], Any] = {}

    def module_group(self, family: KernelFamily, name_expression: str) -> str | None:
        # One NVRTC compile per module group (the transform family: per dtype),
        # so a first call compiles a quarter of the family (5.7 s instead of
        # 23 s for float32 on the 2-core development machine, sm_90).
        return family.group(name_expression)

    def _load(self, family: KernelFamily, name_expressions: tuple[str, ...]) -> Any:
        import cupy

        with cupy.cuda.Device(self.device_id):
            module = cupy.RawModule(
                code=family.code(),
                options=compile_options(),
                name_expressions=list(name_expressions),
            )
            module.compile()
        return module

    def function(self, family: KernelFamily, name_expression: str) -> LaunchFn:
        # One RawKernel per entry point, looked up on this runtime's device:
        # RawModule.get_function builds a new one (and loads the module on the
        # *current* device) at every call.
        key = (family.name, name_expression)
        kernel = self._kernels.get(key)
        if kernel is None:
            import cupy

            with cupy.cuda.Device(self.device_id):
                kernel = self._kernels.setdefault(key, super().function(family, name_expression))
        device_id = self.device_id

        def launch(grid, block, args, shared_mem: int = 0) -> None:
            import cupy

            with cupy.cuda.Device(device_id):
                if shared_mem > 48 * 1024:
                    kernel.max_dynamic_shared_size_bytes = shared_mem
                kernel(grid, block, args, shared_mem=shared_mem)

        return launch

    def data_ptr(self, a: Any) -> int:
        return int(a.data.ptr)

    def synchronize(self) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()


class EmulatorRuntime(Runtime):
    """Launches the same kernels on the CPU emulator; numpy arrays are device memory."""

    kind = "emulator"
    #: An H100/H200-like SM count, so grid-sizing logic takes the same branches as on a GPU.
    sm_count = 132
    #: Hopper's opt-in limit (227 KiB), so shared-memory checks match the H100/H200.
    max_shared_per_block = 227 * 1024

    def _load(self, family: KernelFamily, name_expressions: tuple[str, ...]) -> Any:
        # One g++ build per family (None group): the build is cached on disk, and
        # the tests use every instantiation anyway.
        from liam_gpu.emulator import EmulatorModule

        return EmulatorModule(family.code(), name_expressions=name_expressions, options=compile_options())

    def data_ptr(self, a: Any) -> int:
        return int(a.ctypes.data)


@functools.lru_cache(maxsize=None)
def cuda_runtime(device_id: int) -> CudaRuntime:
    """The memoized runtime of one CUDA device."""
    return CudaRuntime(device_id)


@functools.lru_cache(maxsize=1)
def emulator_runtime() -> EmulatorRuntime:
    """The process-wide emulator runtime."""
    return EmulatorRuntime()


# --- argument helpers used by every launch wrapper ---------------------------------

def i64(value: int) -> np.int64:
    """A size or offset as C ``long long`` (sizes can pass 2**31)."""
    return np.int64(value)


def require_contiguous(name: str, a: Any) -> None:
    """Kernels index raw memory: insist on C-contiguous arrays."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous for a kernel launch")


def is_aligned(runtime: Runtime, a: Any, nbytes: int) -> bool:
    """Whether ``a``'s first element sits on an ``nbytes`` boundary (vector loads)."""
    return runtime.data_ptr(a) % nbytes == 0


def blocks_for(n: int, per_block: int) -> int:
    """Ceiling division for grid sizes."""
    return max(1, -(-int(n) // int(per_block)))
