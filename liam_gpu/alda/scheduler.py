"""The scheduler: fixed chunks, a deterministic assignment, faults survived.

Rules (also in ``docs/scheduler.md``):

Chunking
    :func:`~liam_gpu.alda.chunking.plan` cuts the batch into chunks from its
    length, its bytes per item and ``chunk_size`` only, never from the
    devices, so every chunk is the same computation on 1 or N devices.
Assignment
    Chunk ``i`` starts on ``active[i % len(active)]``, where ``active`` is the
    scheduler's healthy devices in the order given; each worker takes its
    chunks in increasing order.
Out of memory
    The chunk is split in halves, which go to the front of the same device's
    queue (a one-item chunk counts as a device fault instead).
Device fault
    The chunk moves to the front of the queue of the next healthy device
    after the faulting one (in the order given, wrapping around; the same
    device when it is the only healthy one).  Chunks the device had in flight
    go back to the front of its own queue.  After ``max_faults`` faults in a
    row (no success in between) a device is unhealthy: it stops, and its
    queued chunks are dealt round-robin to the healthy devices after it.  A
    chunk that has faulted ``max_faults`` times, or that finds no healthy
    device, goes to the CPU fallback (``cpu_fallback=True``) or is reported in
    :class:`~liam_gpu.alda.errors.AllDevicesFailed`.
Function errors and interrupts
    Stop every worker; the error is raised as
    :class:`~liam_gpu.alda.errors.ChunkError` naming the chunk;
    ``KeyboardInterrupt`` is re-raised as it is.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from .. import arrays
from . import chunking
from .chunking import Batch, Chunk
from .devices import FALLBACK, resolve_devices
from .run import DeviceStats, Run

#: ``fault_injector(device, chunk)``: called before every attempt of every chunk.
FaultInjector = Callable[[str, Chunk], None]


class Scheduler:
    """Split a batch into fixed chunks and compute them on several devices.

    Parameters
    ----------
    devices
        ``"all"`` (every CUDA device CuPy sees, or ``["cpu:0"]`` without
        one), a device name, or a list of names: ``"cuda:i"``, virtual CPU
        devices ``"cpu:i"`` (one worker thread each, computing with the
        ``cpu`` backend) and ``"emulator:i"`` (the ``emulator`` backend).
    chunk_size
        Items per chunk; None picks one from the batch alone
        (:func:`~liam_gpu.alda.chunking.default_chunk_size`).
    cpu_fallback
        Finish on the CPU the chunks no device could compute.  When False
        they are reported in :class:`~liam_gpu.alda.errors.AllDevicesFailed`.
    max_faults
        Faults in a row that make a device unhealthy, and faults after which
        a chunk stops moving between devices (it goes to the fallback).
    fault_injector
        Testing and chaos hook: ``fault_injector(device, chunk)`` is called in
        the worker before every attempt to compute a chunk; what it raises is
        treated as if the function had raised it (``DeviceFault`` → retry
        elsewhere, ``MemoryError`` → split, other errors → ``ChunkError``).

    Notes
    -----
    The mapped function must be *row-separable*: its result for an item may
    not depend on which other items share its chunk.  Fixed chunking makes
    results bitwise identical for any number of devices; an out-of-memory
    split keeps them identical only for functions that also compute each row
    the same way whatever the chunk length (our transform kernels and the
    per-item batched SVD do).  Health is remembered across maps: an unhealthy
    device stays out until :meth:`reset_health`.
    """

    def __init__(
        self,
        devices: Any = "all",
        *,
        chunk_size: int | None = None,
        cpu_fallback: bool = True,
        max_faults: int = 3,
        fault_injector: FaultInjector | None = None,
    ) -> None:
        self._devices = resolve_devices(devices)
        self.chunk_size = chunking.check_chunk_size(chunk_size)
        if not isinstance(cpu_fallback, bool):
            raise TypeError(f"cpu_fallback must be True or False, got {cpu_fallback!r}")
        self.cpu_fallback = cpu_fallback
        if isinstance(max_faults, bool) or not isinstance(max_faults, int) or max_faults < 1:
            raise ValueError(f"max_faults must be an integer >= 1, got {max_faults!r}")
        self.max_faults = max_faults
        if fault_injector is not None and not callable(fault_injector):
            raise TypeError(f"fault_injector must be callable(device, chunk) or None, got {fault_injector!r}")
        self.fault_injector = fault_injector
        self._health_lock = threading.Lock()
        self._in_a_row = {d: 0 for d in self._devices}
        self._unhealthy: set[str] = set()
        #: Per-device :class:`DeviceStats` of the last completed map.
        self.last_stats: dict[str, DeviceStats] = {}

    # -- devices and health --------------------------------------------------------
    @property
    def devices(self) -> tuple[str, ...]:
        """The scheduler's devices, in assignment order."""
        return self._devices

    @property
    def health(self) -> dict[str, bool]:
        """Device → whether it still receives chunks."""
        with self._health_lock:
            return {d: d not in self._unhealthy for d in self._devices}

    def reset_health(self) -> None:
        """Give every device a clean record again."""
        with self._health_lock:
            self._unhealthy.clear()
            self._in_a_row = {d: 0 for d in self._devices}

    def _healthy(self) -> list[str]:
        with self._health_lock:
            return [d for d in self._devices if d not in self._unhealthy]

    def _record_success(self, device: str) -> None:
        # Read first: the common case (no recent fault) takes no lock.
        if self._in_a_row.get(device):
            with self._health_lock:
                self._in_a_row[device] = 0

    def _record_fault(self, device: str) -> tuple[int, bool]:
        """Count a fault; (faults in a row, whether the device is still healthy)."""
        with self._health_lock:
            self._in_a_row[device] += 1
            if self._in_a_row[device] >= self.max_faults:
                self._unhealthy.add(device)
            return self._in_a_row[device], device not in self._unhealthy

    # -- planning ------------------------------------------------------------------
    def plan(self, batch: Any, *, chunk_size: int | None = None) -> list[tuple[Chunk, str | None]]:
        """The chunks :meth:`map` would cut ``batch`` into, each with the device it starts on.

        With no healthy device left that is ``"cpu:fallback"``, or None when
        ``cpu_fallback`` is off (the map would fail).
        """
        data = batch if isinstance(batch, Batch) else Batch(batch)
        chunks = chunking.plan(data.length, self._chunk_size_for(data, chunk_size))
        active = self._healthy()
        if not active:
            return [(c, FALLBACK if self.cpu_fallback else None) for c in chunks]
        return [(c, active[c.index % len(active)]) for c in chunks]

    def _chunk_size_for(self, data: Batch, chunk_size: int | None) -> int:
        size = chunking.check_chunk_size(chunk_size) or self.chunk_size
        return size or chunking.default_chunk_size(data.length, data.item_bytes)

    # -- the map -------------------------------------------------------------------
    def map(
        self,
        fn: Callable[..., Any],
        batch: Any,
        *,
        chunk_size: int | None = None,
        progress: bool = False,
        combine: Callable[[list[Any]], Any] | None = None,
        out: Any = None,
    ) -> Any:
        """Apply ``fn`` to every chunk of ``batch`` on the devices; join the results in input order.

        Parameters
        ----------
        fn
            Called once per chunk in a worker thread, with the chunk on its
            device: numpy arrays on ``cpu:i``/``emulator:i``, CuPy arrays on
            ``cuda:i`` (the worker's device and stream are current).
            :func:`~liam_gpu.current_device` names the device.  It must not
            modify its input.
        batch
            One array (``fn(chunk)``), a tuple of arrays with one length
            (split together; ``fn(*chunks)``), or a list (``fn(sub_list)``).
            numpy, CuPy and torch arrays are accepted; a CuPy (or CUDA torch)
            batch is split on its GPU and never goes through the host.
        chunk_size
            Items per chunk for this call (default: the scheduler's).
        progress
            Show a tqdm progress bar over the items.
        combine
            ``combine(parts) -> result`` joins the chunk results (in input
            order); by default arrays are concatenated along axis 0, tuples
            and dicts field by field, lists as lists, and objects with a
            ``concatenate`` class method through it.
        out
            With the default joining of array results: the array that
            receives them (``len(batch)`` rows; numpy for a host batch, CuPy
            on the batch's GPU for a GPU batch).  Each chunk's rows must fit.
            ``out`` must not overlap ``batch`` (chunks write their rows while
            others still read theirs).

        Returns
        -------
        The joined results, in host memory for host batches and on the
        batch's GPU for GPU batches (torch batches get torch tensors back).
        An empty batch is one empty chunk: ``fn`` is called once with it.

        Raises
        ------
        ChunkError
            ``fn`` raised; the original error is ``__cause__``.
        TypeError, ValueError
            ``out`` is not an array of the batch's library, has the wrong
            length, is read-only, overlaps the batch, or cannot receive the
            results (their shape, or a dtype numpy's ``same_kind`` rule does
            not cast to out's; raised before that result is written).
        AllDevicesFailed
            Some chunks could not be computed anywhere.
        KeyboardInterrupt
            From the caller or from ``fn``: every worker is stopped first.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if combine is not None and not callable(combine):
            raise TypeError(f"combine must be callable(parts) or None, got {combine!r}")
        if combine is not None and out is not None:
            raise TypeError("pass combine= or out=, not both: out receives the default joining of arrays")
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        data = Batch(batch)
        chunks = chunking.plan(data.length, self._chunk_size_for(data, chunk_size))
        run = Run(self, data, fn, chunks)
        if combine is None:
            run.gather_into(out)
        parts = run.execute(progress)
        if run.out is not None and run.placed == len(parts):
            result = run.out  # every chunk was copied into place by its worker
        elif out is not None:
            result = _concatenate_into(parts, out)
        else:
            result = (combine or chunking.combine)(parts)
        return data.restore(result)

    def __repr__(self) -> str:
        health = ", ".join(d if ok else f"{d} (unhealthy)" for d, ok in self.health.items())
        return f"Scheduler([{health}], chunk_size={self.chunk_size}, cpu_fallback={self.cpu_fallback})"


def _concatenate_into(parts: list[Any], out: Any) -> Any:
    """The default joining of array parts, written into the caller's ``out``."""
    if not all(chunking.is_array(p) for p in parts):
        raise TypeError("out= needs array results from every chunk")
    try:
        if arrays.is_cupy(out):
            import cupy

            with cupy.cuda.Device(out.device.id):
                return cupy.concatenate(parts, axis=0, out=out)
        return np.concatenate(parts, axis=0, out=out)
    except TypeError as exc:  # the casting: out's fault, not the function's
        raise TypeError(f"out has dtype {out.dtype}, which cannot receive the results "
                        f"({parts[0].dtype if parts else 'none'}): {exc}") from None
    except ValueError as exc:
        raise ValueError(f"out of shape {tuple(out.shape)} does not fit the results: {exc}") from None
