"""One :meth:`~liam_gpu.Scheduler.map` in flight: queues, results, faults, workers.

:class:`Run` is the state machine behind the rules of
:mod:`liam_gpu.alda.scheduler` (assignment, out-of-memory splits, device
faults, the CPU fallback); the :class:`~liam_gpu.alda.scheduler.Scheduler`
keeps what outlives a map (its devices and their health) and starts one run
per map.  :class:`DeviceStats` is what each device did in a run.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import arrays, validation
from . import chunking
from .chunking import Batch, Chunk
from .devices import FALLBACK, is_cuda
from .errors import AllDevicesFailed, ChunkError
from .transport import CudaTransport, HostTransport
from .worker import Worker

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Scheduler

logger = logging.getLogger("liam_gpu.alda")

#: How often the waiting caller wakes up to let signals (Ctrl-C) through.
_POLL_S = 0.05


@dataclass(frozen=True)
class DeviceStats:
    """What one device did in the last map.

    Attributes
    ----------
    chunks, items
        Chunks and items it completed.
    seconds
        Wall time from its first chunk's start to its last chunk's end.
    """

    chunks: int
    items: int
    seconds: float

    @property
    def items_per_second(self) -> float:
        """Throughput (0 when it did nothing)."""
        return self.items / self.seconds if self.seconds > 0 else 0.0


class Run:
    """The state of one :meth:`Scheduler.map`: queues, results, faults, workers.

    Workers call :meth:`take`, :meth:`complete`, :meth:`split`, :meth:`fault`
    and the stop methods from their threads; everything they touch is guarded
    by one condition variable.  The caller's thread runs :meth:`execute`,
    which only waits for events, so it stays responsive to Ctrl-C.
    """

    def __init__(self, scheduler: Scheduler, batch: Batch, fn: Callable[..., Any], chunks: list[Chunk]) -> None:
        self.sched = scheduler
        self.batch = batch
        self.fn = fn
        self.length = batch.length
        self.cond = threading.Condition()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.finished = False
        #: Post a "done" event per chunk (only a progress bar needs them).
        self.report_chunks = False
        #: Gather mode (see :meth:`gather_into`): array results are copied by the
        #: workers straight into ``self.out``; ``placed`` counts those chunks.
        self.gather = False
        self.out: Any = None
        self.out_given = False
        self.placed = 0
        self.outstanding = len(chunks)
        self.results: dict[int, tuple[Chunk, Any]] = {}
        self.failed: list[Chunk] = []
        self.chunk_faults: dict[tuple[int, int], int] = {}
        self.faults = {d: 0 for d in scheduler.devices}
        self.last_fault: BaseException | None = None
        self.active = scheduler._healthy()
        self.queues: dict[str, deque[Chunk]] = {d: deque() for d in self.active}
        self.workers: list[Worker] = []
        self.fallback: Worker | None = None
        self.home_stream = self.home_ready = None
        if batch.home is not None:
            import cupy

            # The caller's stream (torch's current stream for torch tensors):
            # workers start after the work already queued on it.
            with cupy.cuda.Device(batch.home), arrays.caller_stream(batch.kind):
                self.home_stream = cupy.cuda.get_current_stream()
                self.home_ready = self.home_stream.record()
        self.unassigned: list[Chunk] = []
        if self.active:
            for c in chunks:
                self.queues[self.active[c.index % len(self.active)]].append(c)
        else:
            self.unassigned = chunks
        if logger.isEnabledFor(logging.INFO):
            size = chunks[0].size if chunks else 0
            logger.info(
                "map: %d items in %d chunks of %d over %s",
                self.length, len(chunks), size, self.active or "no healthy device",
            )
        if logger.isEnabledFor(logging.DEBUG):
            for device, q in self.queues.items():
                logger.debug("assign %s <- chunks %s", device, _ranges([c.index for c in q]))

    # -- the caller's side ----------------------------------------------------------
    def _invoke(self, device: str) -> Callable[[Chunk, Any], Any]:
        """What a transport calls to compute a chunk on ``device``: the fault injector, then ``fn``."""
        injector = self.sched.fault_injector

        def invoke(chunk: Chunk, inputs: Any) -> Any:
            if injector is not None:
                injector(device, chunk)
            return self.batch.call(self.fn, inputs)

        return invoke

    def _transport(self, device: str) -> Any:
        invoke = self._invoke(device)
        if is_cuda(device):
            return CudaTransport(self.batch, invoke, device, self.home_ready, self.home_stream)
        return HostTransport(self.batch, invoke, self.home_stream)

    def execute(self, progress: bool) -> list[Any]:
        """Start the workers, wait, stop them; the chunk results in input order."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.length, unit="item", desc="liam_gpu")
            self.report_chunks = True
        try:
            with self.cond:
                self.workers.extend(Worker(self, d, self._transport(d)) for d in self.active)
                for w in self.workers:
                    w.start()
                if self.unassigned:
                    logger.warning("no healthy device: %s", self.sched.health)
                    self._to_fallback(self.unassigned)
            self._wait(bar)
        finally:
            self._stop()
            if bar is not None:
                bar.close()
        if self.failed:
            raise AllDevicesFailed(self.failed, self.faults, self.sched.cpu_fallback) from self.last_fault
        self._report_throughput()
        return self._ordered_results()

    def _wait(self, bar: Any) -> None:
        while True:
            try:
                event = self.events.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            tag = event[0]
            if tag == "done":
                if bar is not None:
                    bar.update(event[1].size)
            elif tag == "finished":
                return
            elif tag == "error":
                _, device, chunk, exc = event
                raise ChunkError(chunk, device, exc) from exc
            elif tag in ("cancel", "out"):
                raise event[1]
            else:  # "crash"
                _, device, exc = event
                raise RuntimeError(f"the scheduler's worker for {device} failed unexpectedly") from exc

    def _stop(self) -> None:
        """Cancel, wake every worker and wait until none is left running."""
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()
        while True:
            with self.cond:
                alive = [w for w in self.workers if w.is_alive()]
            if not alive:
                return
            for w in alive:
                w.join(timeout=_POLL_S)

    def _ordered_results(self) -> list[Any]:
        parts, position = [], 0
        for start in sorted(self.results):
            chunk, value = self.results[start]
            if chunk.start != position:
                raise RuntimeError(f"internal error: items {position}:{chunk.start} have no result")
            parts.append(value)
            position = chunk.stop
        if position != self.length:
            raise RuntimeError(f"internal error: items {position}:{self.length} have no result")
        return parts

    def _report_throughput(self) -> None:
        stats = {}
        for w in self.workers:
            seconds = (w.last_finish - w.first_start) if w.chunks else 0.0
            stats[w.device] = DeviceStats(w.chunks, w.items, seconds)
            if w.chunks:
                logger.info(
                    "throughput %s: %d chunks, %d items in %.4f s (%.0f items/s)",
                    w.device, w.chunks, w.items, seconds, stats[w.device].items_per_second,
                )
        self.sched.last_stats = stats

    # -- the workers' side (all under self.cond) ----------------------------------------
    def take(self, worker: Worker, *, block: bool) -> Chunk | None:
        """The worker's next chunk; None when the map is over, or the worker is retired or told not to wait."""
        with self.cond:
            while True:
                if self.cancelled or self.finished:
                    return None
                q = self.queues.get(worker.device)
                if q:
                    return q.popleft()
                if worker.device not in self.active or not block:
                    return None
                self.cond.wait()

    def gather_into(self, out: Any) -> None:
        """Join host array results as they arrive, into ``out`` or an array made for them.

        Each worker copies its chunk's rows into their place (in parallel,
        without the GIL), so no serial concatenation remains at the end and
        results in staging buffers are copied once.  A result that does not
        fit (not an array with one row per item, or another shape or dtype)
        turns gathering off for the rest of the map; rows already placed stay
        valid as views.  With a caller's ``out`` such a result is an error.
        """
        if out is not None:
            module = "cupy" if self.batch.home is not None else "numpy"
            if not chunking.is_array(out) or chunking.is_array(out) and (module == "cupy") != arrays.is_cupy(out):
                raise TypeError(f"out must be a {module} array for this batch, got {type(out).__name__}")
            if out.ndim == 0 or out.shape[0] != self.length:
                raise ValueError(f"out must have {self.length} rows (one per batch item), got shape {out.shape}")
            if not arrays.is_writeable(out):
                raise ValueError("out is read-only")
            # Workers write their rows while others still read theirs: an out that
            # overlaps the batch would feed written rows to later chunks.
            names = {f"batch[{i}]" if len(self.batch.leaves) > 1 else "batch": a
                     for i, a in enumerate(self.batch.leaves)}
            shared = validation.overlapping(out, **names)
            if shared:
                raise ValueError(f"out overlaps {', '.join(shared)}; pass a separate output array")
            self.out_given = True
        self.out = out
        self.gather = self.batch.home is None

    def _place(self, chunk: Chunk, value: Any) -> Any:
        """Where in the gathered output ``value`` goes (None: keep it as a part).  Holds the lock."""
        if not self.gather:
            return None
        fits = (
            isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == chunk.size
            and (self.out is None or (value.shape[1:] == self.out.shape[1:] and value.dtype == self.out.dtype))
        )
        if not fits and not self.out_given:
            self.gather = False
            return None
        if self.out is None:
            self.out = np.empty((self.length,) + value.shape[1:], value.dtype)
        return self.out[chunk.start:chunk.stop]

    def complete(self, worker: Worker, chunk: Chunk, value: Any, borrowed: set[int] = frozenset()) -> None:
        """Store (or place) a chunk's result, exactly once.

        ``borrowed`` lists arrays of ``value`` in staging buffers that the
        worker reuses: they are copied, never kept.
        """
        with self.cond:
            if self.cancelled:
                return
            target = self._place(chunk, value)
        if target is not None:
            # A result without one row per item is the function's error (ChunkError);
            # one whose rows do not fit the caller's out (their shape or dtype) is
            # out's, raised as it is and before that result is written (copyto
            # checks the casting first).
            rows_ok = isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == chunk.size
            if not (rows_ok and value.shape == target.shape):
                got = getattr(value, "shape", type(value).__name__)
                message = (f"the function returned {got} for {chunk.describe()}, which does not fit "
                           f"out[{chunk.start}:{chunk.stop}] of shape {target.shape}")
                if rows_ok:
                    self._abort(("out", ValueError(f"out has rows of shape {target.shape[1:]} but {message}")))
                else:
                    self._abort(("error", worker.device, chunk, ValueError(message)))
                return
            try:
                np.copyto(target, value, casting="same_kind")  # outside the lock: workers copy in parallel
            except TypeError as exc:
                self._abort(("out", TypeError(
                    f"out has dtype {target.dtype}, which cannot receive the function's {value.dtype} "
                    f"results (numpy casting rule 'same_kind')"
                )))
                return
            value = target
        elif borrowed:
            value = chunking.tree_map(lambda a: np.array(a) if id(a) in borrowed else a, value)
        with self.cond:
            if self.cancelled:
                return
            if chunk.start in self.results:
                raise RuntimeError(f"internal error: {chunk.describe()} completed twice")
            self.results[chunk.start] = (chunk, value)
            self.placed += target is not None
            self.sched._record_success(worker.device)
            self.outstanding -= 1
            if self.report_chunks:
                self.events.put(("done", chunk))
            self._settle()

    def split(self, worker: Worker, chunk: Chunk, exc: BaseException) -> None:
        """Out of memory: the halves go to the front of the same device's queue."""
        first, second = chunk.halves()
        with self.cond:
            q = self.queues[worker.device]
            q.appendleft(second)
            q.appendleft(first)
            self.outstanding += 1
            self.cond.notify_all()
        logger.warning(
            "%s ran out of memory on %s (%s: %s); retrying as items %d:%d and %d:%d",
            chunk.describe(), worker.device, type(exc).__name__, exc,
            first.start, first.stop, second.start, second.stop,
        )

    def fault(self, worker: Worker, chunk: Chunk, in_flight: list[Chunk], exc: BaseException) -> None:
        """A device fault: retry the chunk elsewhere, maybe retire the device (see the module rules)."""
        device = worker.device
        with self.cond:
            self.last_fault = exc
            key = (chunk.start, chunk.stop)
            self.chunk_faults[key] = self.chunk_faults.get(key, 0) + 1
            if worker is self.fallback:
                logger.error("%s failed on the CPU fallback (%s: %s)", chunk.describe(), type(exc).__name__, exc)
                self.queues[device].extendleft(reversed(in_flight))
                self._give_up([chunk], reason="the CPU fallback faulted")
                return
            self.faults[device] += 1
            in_a_row, healthy = self.sched._record_fault(device)
            orphans: list[Chunk] = []
            if healthy:
                self.queues[device].extendleft(reversed(in_flight))
            else:
                self.active.remove(device)
                orphans = [*in_flight, *self.queues.pop(device)]
            if self.chunk_faults[key] >= self.sched.max_faults:
                logger.warning(
                    "%s faulted %d times (last on %s: %s: %s); it stops moving between devices",
                    chunk.describe(), self.chunk_faults[key], device, type(exc).__name__, exc,
                )
                self._to_fallback([chunk])
            else:
                target = self._next_device(device)
                logger.warning(
                    "%s faulted on %s (%s: %s; fault %d of %d in a row); retrying on %s",
                    chunk.describe(), device, type(exc).__name__, exc, in_a_row, self.sched.max_faults,
                    target or ("the CPU fallback" if self.sched.cpu_fallback else "no device"),
                )
                if target is None:
                    self._to_fallback([chunk])
                else:
                    self.queues[target].appendleft(chunk)
            if not healthy:
                logger.error(
                    "device %s is unhealthy after %d faults in a row; its %d queued chunk(s) move on",
                    device, in_a_row, len(orphans),
                )
            self._deal(orphans, after=device)
            self.cond.notify_all()

    def user_error(self, worker: Worker, chunk: Chunk, exc: BaseException) -> None:
        """The function raised: stop the map, report the chunk."""
        self._abort(("error", worker.device, chunk, exc))

    def interrupted(self, worker: Worker, exc: BaseException) -> None:
        """KeyboardInterrupt (or another BaseException) inside a worker: stop everything."""
        self._abort(("cancel", exc))

    def crashed(self, worker: Worker, exc: BaseException) -> None:
        """A bug in the worker loop: stop rather than leave the caller waiting."""
        self._abort(("crash", worker.device, exc))

    def _abort(self, event: tuple) -> None:
        with self.cond:
            if self.cancelled:
                return
            self.cancelled = True
            self.events.put(event)
            self.cond.notify_all()

    # -- helpers (the caller holds self.cond) ------------------------------------------
    def _ring(self, device: str) -> list[str]:
        """The active devices in the scheduler's order, starting after ``device`` and wrapping around."""
        order = self.sched.devices
        start = order.index(device)
        rotated = [order[(start + step) % len(order)] for step in range(1, len(order) + 1)]
        return [d for d in rotated if d in self.active]

    def _next_device(self, device: str) -> str | None:
        """Where a faulted chunk is retried: the first active device after ``device``."""
        ring = self._ring(device)
        return ring[0] if ring else None

    def _deal(self, chunks: list[Chunk], *, after: str) -> None:
        """Orphaned chunks, round-robin over the active devices after ``after``."""
        if not chunks:
            return
        ring = self._ring(after)
        if not ring:
            self._to_fallback(chunks)
            return
        for i, c in enumerate(chunks):
            self.queues[ring[i % len(ring)]].append(c)

    def _to_fallback(self, chunks: list[Chunk]) -> None:
        if not self.sched.cpu_fallback:
            self._give_up(chunks, reason="cpu_fallback is off")
            return
        if self.fallback is None:
            if self.cancelled:
                return
            listing = ", ".join(c.describe() for c in chunks)
            logger.warning("the CPU fallback (%s) takes over %s", FALLBACK, listing)
            self.queues[FALLBACK] = deque()
            self.active.append(FALLBACK)
            transport = HostTransport(self.batch, self._invoke(FALLBACK), self.home_stream)
            self.fallback = Worker(self, FALLBACK, transport)
            self.workers.append(self.fallback)
            self.fallback.start()
        self.queues[FALLBACK].extend(chunks)

    def _give_up(self, chunks: list[Chunk], *, reason: str) -> None:
        if chunks:
            logger.error("giving up on %s: %s", ", ".join(c.describe() for c in chunks), reason)
        self.failed.extend(chunks)
        self.outstanding -= len(chunks)
        self._settle()

    def _settle(self) -> None:
        if self.outstanding == 0 and not self.finished:
            self.finished = True
            self.events.put(("finished",))
            self.cond.notify_all()


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2, 5, 7-8"``."""
    spans: list[tuple[int, int]] = []
    for i in indices:
        if spans and spans[-1][1] == i - 1:
            spans[-1] = (spans[-1][0], i)
        else:
            spans.append((i, i))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
