"""What can go wrong in a chunk, and how the scheduler answers each kind.

Four kinds, decided by :func:`classify`:

``"oom"``
    ``MemoryError`` (CuPy's ``OutOfMemoryError`` is one): the chunk is split
    in halves and retried on the same device.
``"device"``
    :class:`DeviceFault`, ``CUDARuntimeError``, ``CUDADriverError``: the chunk
    is retried on another device, and the device is marked unhealthy after
    repeated faults.
``"user"``
    Any other ``Exception``: the map stops and raises :class:`ChunkError`
    chained to the original.
``"cancel"``
    ``KeyboardInterrupt``, ``SystemExit`` and other ``BaseException``: the map
    stops every worker and re-raises it in the caller.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .chunking import Chunk

#: ``cudaErrorMemoryAllocation``: a CUDA runtime error that is an out-of-memory.
_CUDA_ALLOCATION_STATUS = 2

#: CuPy's modules whose error classes mean "this device is in trouble".  Looked
#: up in ``sys.modules`` only: if CuPy was never imported, it raised nothing.
_CUDA_ERROR_CLASSES = (
    ("cupy_backends.cuda.api.runtime", "CUDARuntimeError"),
    ("cupy_backends.cuda.api.driver", "CUDADriverError"),
)


class DeviceFault(RuntimeError):
    """A device could not compute a chunk; the scheduler retries it elsewhere.

    Raise it from the mapped function (or from a ``fault_injector``) to report
    a device problem the scheduler cannot see by itself, such as a failed
    health check or a result that the device corrupted.
    """


class ChunkError(RuntimeError):
    """The mapped function raised an error for one chunk.

    The original exception is ``__cause__``.

    Attributes
    ----------
    chunk
        The :class:`~liam_gpu.alda.chunking.Chunk` that failed (its index in
        the plan and its item range).
    device
        The device it ran on.
    """

    def __init__(self, chunk: "Chunk", device: str, error: BaseException) -> None:
        self.chunk = chunk
        self.device = device
        super().__init__(
            f"the mapped function failed on {chunk.describe()} on device {device}: "
            f"{type(error).__name__}: {error}"
        )


class AllDevicesFailed(RuntimeError):
    """Chunks that no device could compute (every device faulted, no CPU fallback).

    The last fault seen is ``__cause__``.

    Attributes
    ----------
    chunks
        The chunks that were not computed, in input order.
    faults
        Device name → number of faults it had in this map.
    """

    def __init__(self, chunks: Sequence["Chunk"], faults: dict[str, int], fallback: bool) -> None:
        self.chunks = sorted(chunks, key=lambda c: c.start)
        self.faults = dict(faults)
        listing = ", ".join(c.describe() for c in self.chunks[:20])
        if len(self.chunks) > 20:
            listing += f", ... ({len(self.chunks) - 20} more)"
        by_device = ", ".join(f"{d}: {n}" for d, n in self.faults.items() if n) or "none"
        hint = (
            "the CPU fallback failed too"
            if fallback
            else "pass cpu_fallback=True to finish such chunks on the CPU"
        )
        super().__init__(
            f"{len(self.chunks)} chunk(s) could not be computed on any device: {listing}. "
            f"Faults per device: {by_device}; {hint}"
        )


def _cuda_error_types() -> tuple[type, ...]:
    found = []
    for module_name, class_name in _CUDA_ERROR_CLASSES:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is not None:
            found.append(cls)
    return tuple(found)


def classify(error: BaseException) -> str:
    """``"oom"``, ``"device"``, ``"user"`` or ``"cancel"`` (see the module docstring)."""
    if not isinstance(error, Exception):
        return "cancel"
    if isinstance(error, MemoryError):
        return "oom"
    if isinstance(error, DeviceFault):
        return "device"
    if isinstance(error, _cuda_error_types()):
        return "oom" if getattr(error, "status", None) == _CUDA_ALLOCATION_STATUS else "device"
    return "user"
