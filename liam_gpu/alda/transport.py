"""Moving a chunk to the device that computes it, and its result back.

A worker drives its transport through four stages per chunk::

    stage_in(chunk) -> Slot     inputs onto the device (asynchronous on a GPU)
    compute(slot)               the mapped function, on the device
    stage_out(slot)             results towards the batch's home (asynchronous)
    finish(slot) -> result      wait for the results; they are now at home
                                (host results may sit in borrowed staging
                                buffers, listed in ``slot.borrowed``)

and overlaps them across chunks when the transport says so (``prefetch`` and
``lag``, see :mod:`liam_gpu.alda.worker`).  "Home" is where the batch lives:
host memory, or the GPU holding a CuPy batch; results always land there, so
the parts can be joined in one place.

:class:`HostTransport` serves the virtual ``cpu:i``/``emulator:i`` devices and
the CPU fallback: everything is synchronous.  :class:`CudaTransport` serves
``cuda:i``: three non-blocking streams (copy in, compute, copy out) ordered by
events, host data staged through pinned buffers, CuPy batches on another GPU
copied peer to peer without a trip through the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .chunking import Batch, Chunk, tree_map
from .devices import cuda_index

#: ``invoke(chunk, inputs) -> result``: the fault injector and the mapped function.
Invoke = Callable[[Chunk, Any], Any]


@dataclass
class Slot:
    """One chunk on its way through a transport."""

    chunk: Chunk
    inputs: Any = None
    result: Any = None
    #: Buffers that must outlive the asynchronous copies reading or writing them.
    keep: list[Any] = field(default_factory=list)
    #: ids of the staging buffers holding results: borrowed until the run has
    #: copied them out (they go back to the pinned-memory pool afterwards).
    borrowed: set[int] = field(default_factory=set)
    in_event: Any = None
    done_event: Any = None
    out_event: Any = None


def to_home(value: Any, home: int | None) -> Any:
    """Every array inside ``value`` moved (synchronously) to host memory or to GPU ``home``."""

    def move(a: Any) -> Any:
        on_gpu = not isinstance(a, np.ndarray)
        if home is None:
            return a.get() if on_gpu else a
        if on_gpu and a.device.id == home:
            return a
        import cupy

        with cupy.cuda.Device(home):
            return cupy.asarray(a)

    return tree_map(move, value)


class HostTransport:
    """Synchronous stages for devices that compute on the host.

    Inputs of a CuPy batch are copied to the host (on the caller's stream) and
    results back to its GPU.
    """

    prefetch = False
    lag = 0

    def __init__(self, batch: Batch, invoke: Invoke, home_stream: Any = None) -> None:
        self.batch = batch
        self.invoke = invoke
        self.home_stream = home_stream

    def stage_in(self, chunk: Chunk) -> Slot:
        part = self.batch.take(chunk)
        if self.batch.home is not None and self.batch.mode != "sequence":
            part = tuple(leaf.get(stream=self.home_stream) for leaf in part)
        return Slot(chunk, inputs=part)

    def compute(self, slot: Slot) -> None:
        slot.result = self.invoke(slot.chunk, slot.inputs)

    def stage_out(self, slot: Slot) -> None:
        """Nothing to start: results are moved in :meth:`finish`."""

    def finish(self, slot: Slot) -> Any:
        if self.batch.home is None:
            return to_home(slot.result, None)
        import cupy

        with cupy.cuda.Device(self.batch.home), self.home_stream:
            return to_home(slot.result, self.batch.home)

    def abandon(self) -> None:
        """Nothing is in flight between calls."""


class CudaTransport:
    """Overlapped stages on one CUDA device.

    Chunk ``i + 1`` is copied in while chunk ``i`` computes and chunk
    ``i - 1`` is copied out: copy-in, compute and copy-out each have their own
    non-blocking stream, and events order a chunk's three stages.  Host inputs
    go through page-locked staging buffers (from CuPy's pinned-memory pool, so
    steady state pins nothing new) because only copies from pinned memory are
    asynchronous; a batch that is already page-locked (``cupyx.empty_pinned``)
    is copied from directly, with no staging copy.  Every buffer an
    asynchronous copy touches is kept in its :class:`Slot` until
    :meth:`finish` has waited for that chunk.
    """

    prefetch = True
    lag = 1

    def __init__(
        self, batch: Batch, invoke: Invoke, device: str, home_ready: Any = None, home_stream: Any = None
    ) -> None:
        self.batch = batch
        self.invoke = invoke
        self.index = cuda_index(device)
        self.home_ready = home_ready
        self.home_stream = home_stream
        self._streams: tuple[Any, Any, Any] | None = None
        self._pinned_leaves: tuple[bool, ...] | None = None

    def _cupy(self):
        import cupy

        if self._streams is None:
            # Created on first use, inside the guarded stage, so that a broken
            # device shows up as a fault of the chunk that met it.
            with cupy.cuda.Device(self.index):
                self._streams = tuple(cupy.cuda.Stream(non_blocking=True) for _ in range(3))
                if self.home_ready is not None:
                    for stream in self._streams:
                        stream.wait_event(self.home_ready)
        return cupy

    def _host_pinned(self) -> tuple[bool, ...]:
        """Per batch leaf: already page-locked and C-contiguous, so chunks copy straight from it."""
        if self._pinned_leaves is None:
            from cupy_backends.cuda.api import runtime

            def pinned(leaf: np.ndarray) -> bool:
                if not leaf.flags.c_contiguous or leaf.size == 0:
                    return False
                try:
                    kind = runtime.pointerGetAttributes(leaf.ctypes.data).type
                except runtime.CUDARuntimeError:  # older drivers: "not a CUDA pointer"
                    return False
                return kind in (runtime.memoryTypeHost, runtime.memoryTypeManaged)

            self._pinned_leaves = tuple(pinned(leaf) for leaf in self.batch.leaves)
        return self._pinned_leaves

    def stage_in(self, chunk: Chunk) -> Slot:
        cupy = self._cupy()
        copy_in = self._streams[0]
        slot = Slot(chunk)
        part = self.batch.take(chunk)
        if self.batch.mode == "sequence" or self.batch.home == self.index:
            slot.inputs = part  # nothing to move: list items, or views of this GPU's batch
            return slot
        import cupyx

        staged = []
        direct = self._host_pinned() if self.batch.home is None else ()
        with cupy.cuda.Device(self.index), copy_in:
            for i, leaf in enumerate(part):
                dev = cupy.empty(leaf.shape, leaf.dtype)
                if leaf.size:
                    if self.batch.home is None:
                        # Page-locked input is copied from directly; anything else is
                        # first copied (GIL released) into a pinned staging buffer.
                        source = leaf
                        if not direct[i]:
                            source = cupyx.empty_pinned(leaf.shape, leaf.dtype)
                            np.copyto(source, leaf)
                        slot.keep.append(source)
                        dev.data.copy_from_host_async(source.ctypes.data, leaf.nbytes, copy_in)
                    else:
                        # Peer copy from the home GPU; the batch leaves are C-contiguous,
                        # so a slice along axis 0 is one block of memory.
                        dev.data.copy_from_device_async(leaf.data, leaf.nbytes, copy_in)
                        slot.keep.append(leaf)
                staged.append(dev)
            slot.in_event = copy_in.record()
        slot.inputs = tuple(staged)
        return slot

    def compute(self, slot: Slot) -> None:
        cupy = self._cupy()
        compute = self._streams[1]
        with cupy.cuda.Device(self.index), compute:
            if slot.in_event is not None:
                compute.wait_event(slot.in_event)
            result = self.invoke(slot.chunk, slot.inputs)
            # Copies below move whole blocks of memory: make device results contiguous here.
            slot.result = tree_map(lambda a: cupy.ascontiguousarray(a) if self._mine(a) else a, result)
            slot.done_event = compute.record()

    def stage_out(self, slot: Slot) -> None:
        cupy = self._cupy()
        copy_out = self._streams[2]
        home = self.batch.home
        if home == self.index:
            return  # the results already live at home; finish waits for the compute
        import cupyx

        def start_copy(a: Any) -> Any:
            if not self._mine(a):
                return a  # not ours to move asynchronously; finish moves it
            slot.keep.append(a)
            if home is None:
                dst = cupyx.empty_pinned(a.shape, a.dtype)
                if a.size:
                    a.data.copy_to_host_async(dst.ctypes.data, a.nbytes, copy_out)
                slot.borrowed.add(id(dst))
                return dst
            with cupy.cuda.Device(home):
                dst = cupy.empty(a.shape, a.dtype)
            if a.size:
                dst.data.copy_from_device_async(a.data, a.nbytes, copy_out)
            return dst

        with cupy.cuda.Device(self.index):
            copy_out.wait_event(slot.done_event)
            slot.result = tree_map(start_copy, slot.result)
            slot.out_event = copy_out.record()

    def finish(self, slot: Slot) -> Any:
        cupy = self._cupy()
        with cupy.cuda.Device(self.index):
            (slot.done_event if slot.out_event is None else slot.out_event).synchronize()
        slot.keep.clear()
        if self.batch.home is not None:
            with cupy.cuda.Device(self.batch.home), self.home_stream:
                return to_home(slot.result, self.batch.home)
        return to_home(slot.result, None)

    def _mine(self, a: Any) -> bool:
        """A CuPy array on this worker's device."""
        return not isinstance(a, np.ndarray) and a.device.id == self.index

    def abandon(self) -> None:
        """Wait for (or give up on) everything queued, so no buffer is freed under a copy."""
        if self._streams is None:
            return
        for stream in self._streams:
            try:
                stream.synchronize()
            except Exception:  # a faulted device: its error was already reported
                pass

