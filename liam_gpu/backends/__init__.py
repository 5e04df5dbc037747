"""Backends and the ``device=`` keyword that picks one.

``device`` may be ``None``/``"auto"`` (the input's own GPU for CuPy or CUDA
tensors, else a GPU if CuPy sees one, else the CPU), ``"cpu"``, ``"cuda"``,
``"cuda:N"`` or ``"emulator"``, or a ``torch.device`` of one of these (read by
its ``str()``).  The environment variable ``LIAM_GPU_BACKEND`` replaces
``"auto"`` as the default.
"""
from __future__ import annotations

import functools
import os
import shutil
from typing import Any

from ..arrays import ArrayKind
from .base import Backend
from .cpu import CpuBackend
from .current import current_device

ENV_VAR = "LIAM_GPU_BACKEND"


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices CuPy can use (0 without CuPy, a driver or a GPU)."""
    try:
        import cupy

        if not cupy.cuda.is_available():
            return 0
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver: the CPU is what there is
        return 0


def emulator_available() -> bool:
    """The emulator needs a C++ compiler (g++) at run time."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def devices() -> list[str]:
    """Every device name accepted by ``device=``, best first (GPUs, then cpu, then emulator)."""
    names = [f"cuda:{i}" for i in range(cuda_device_count())]
    names.append("cpu")
    if emulator_available():
        names.append("emulator")
    return names


@functools.lru_cache(maxsize=None)
def get_backend(name: str) -> Backend:
    """The backend object for a canonical device name (memoized)."""
    if name == "cpu":
        return CpuBackend()
    if name == "emulator":
        from .kernel import EmulatorBackend

        return EmulatorBackend()
    if name.startswith("cuda:"):
        index = int(name.split(":")[1])
        count = cuda_device_count()
        if index >= count:
            have = "no CUDA device is visible to CuPy" if count == 0 else f"only {count} CUDA device(s) exist"
            raise ValueError(f"device={name!r} is not available: {have}")
        from .kernel import CudaBackend

        return CudaBackend(index)
    raise ValueError(f"unknown device {name!r}")


def canonical_device(device: Any, kind: ArrayKind | None = None) -> str:
    """Resolve a ``device=`` argument to ``"cpu"``, ``"emulator"`` or ``"cuda:N"``.

    ``None``/``"auto"`` inside a function mapped by a :class:`~liam_gpu.Scheduler`
    means the chunk's own device; a scheduler's virtual ``"cpu:i"`` /
    ``"emulator:i"`` name means its backend.  A ``torch.device`` counts as
    its ``str()`` (``torch.device("cuda", 1)`` is ``"cuda:1"``); torch is not
    imported for it.
    """
    source = "device"
    if device is None or (isinstance(device, str) and device == "auto"):
        scheduled = current_device()
        if not scheduled and os.environ.get(ENV_VAR):
            source = ENV_VAR  # a bad value must name the variable, not a device= the caller never passed
        device = scheduled or os.environ.get(ENV_VAR) or "auto"
    if _is_torch_device(device):
        device = str(device)
    if device == "auto":
        if kind is not None and kind.on_gpu:
            return kind.device
        return "cuda:0" if cuda_device_count() > 0 else "cpu"
    if not isinstance(device, str):
        raise TypeError(
            "device must be None, 'auto', 'cpu', 'cuda', 'cuda:N', 'emulator', a torch.device or a Scheduler, "
            f"got {device!r}"
        )
    name = device.strip().lower()
    if name == "cuda":
        return kind.device if kind is not None and kind.on_gpu else "cuda:0"
    if name in ("cpu", "emulator"):
        return name
    virtual = name.partition(":")
    if virtual[0] in ("cpu", "emulator") and (virtual[2].isdigit() or virtual[2] == "fallback"):
        return virtual[0]  # a scheduler's virtual device, e.g. lg.current_device() == "cpu:2"
    if name.startswith("cuda:") and name[5:].isdigit():
        return name
    raise ValueError(
        f"{source}={device!r} is not understood; expected None, 'auto', 'cpu', 'cuda', 'cuda:N' or 'emulator'"
        + (" (or unset it)" if source == ENV_VAR else "")
    )


def _is_torch_device(device: Any) -> bool:
    """Whether ``device`` is a ``torch.device``, judged by its type's name (torch is not imported)."""
    kind = type(device)
    return kind.__name__ == "device" and kind.__module__.partition(".")[0] == "torch"


def resolve(device: Any, kind: ArrayKind | None = None) -> Backend:
    """The backend that runs a call, from ``device=`` and the inputs' :class:`ArrayKind`."""
    return get_backend(canonical_device(device, kind))
