"""ALDA: deterministic scheduling of batches over several devices.

A batch (a stack of matrices, a long run of rows) is cut into fixed chunks,
the chunks are dealt to one worker thread per device, and the results are
joined in input order: bitwise the same on 1 or N devices, with out-of-memory
splits, retries on other devices, unhealthy-device exclusion and a CPU
fallback when something goes wrong.  See ``docs/scheduler.md``.

Modules: :mod:`~.scheduler` (the rules and the :class:`Scheduler`),
:mod:`~.run` (one map in flight: the :class:`Run` state machine),
:mod:`~.chunking` (batch, plan, joining), :mod:`~.worker` (the per-device
pipeline), :mod:`~.transport` (moving chunks: host and CUDA),
:mod:`~.devices` (device names; :func:`current_device` is
:mod:`liam_gpu.backends.current`'s), :mod:`~.errors` (the fault
model), :mod:`~.ops` (``transform_matrix`` and ``svd_compress`` over a
scheduler).
"""
from ..backends.current import current_device
from .chunking import Chunk
from .errors import AllDevicesFailed, ChunkError, DeviceFault
from .run import DeviceStats
from .scheduler import Scheduler

__all__ = [
    "AllDevicesFailed",
    "Chunk",
    "ChunkError",
    "DeviceFault",
    "DeviceStats",
    "Scheduler",
    "current_device",
]
