"""One worker thread per device: takes its chunks in order and pipelines them.

The loop keeps up to two chunks "staged" (inputs on their way to the device)
and ``transport.lag + 1`` chunks "computed" (results on their way home).  With
a :class:`~liam_gpu.alda.transport.CudaTransport` (``prefetch``, ``lag = 1``)
one iteration issues, in this order::

    stage_in(i + 1)   copy in the next chunk   } all queued on the GPU
    compute(i)        the function on chunk i  } before the host waits
    stage_out(i)      copy its results out     }
    finish(i - 1)     wait for chunk i - 1 only

so the GPU copies chunk ``i + 1`` in and chunk ``i - 1`` out while chunk ``i``
computes.  A :class:`~liam_gpu.alda.transport.HostTransport` (no prefetch,
``lag = 0``) degenerates to take → compute → report.

Every exception is blamed on the chunk whose stage raised it and handed to the
run (:class:`~liam_gpu.alda.run.Run`), which decides: split, retry
elsewhere, stop the map.  A chunk is reported complete only from ``finish``,
exactly once; chunks still in flight when a device faults are handed back
unreported, so nothing is computed twice into the output.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..backends.current import set_current
from .chunking import Chunk
from .errors import classify

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run
    from .transport import Slot

#: Prefix of every worker thread's name (tests look for leftovers by it).
THREAD_PREFIX = "liam_gpu.alda"


class Worker(threading.Thread):
    """The thread that computes one device's chunks.

    Attributes
    ----------
    device
        The scheduler device name (``"cuda:0"``, ``"cpu:2"``, ``"cpu:fallback"``).
    chunks, items
        What it completed in this map.
    first_start, last_finish
        ``time.perf_counter()`` at its first stage and its last completion
        (None before), for the per-device throughput log.
    """

    def __init__(self, run: "Run", device: str, transport: Any) -> None:
        super().__init__(name=f"{THREAD_PREFIX}[{device}]", daemon=True)
        self.owner = run
        self.device = device
        self.transport = transport
        self.chunks = 0
        self.items = 0
        self.first_start: float | None = None
        self.last_finish: float | None = None

    def run(self) -> None:
        set_current(self.device)
        try:
            self._pipeline()
        except BaseException as exc:  # a bug in the loop itself: never leave the caller waiting
            self.owner.crashed(self, exc)

    def _pipeline(self) -> None:
        transport = self.transport
        staged: deque[Slot] = deque()
        computed: deque[Slot] = deque()
        while not self.owner.cancelled:
            blame: Chunk | None = None
            try:
                if not staged:
                    chunk = self.owner.take(self, block=not computed)
                    if chunk is not None:
                        blame = chunk
                        staged.append(self._stage_in(chunk))
                    elif not computed:
                        break  # the map is over, or this device was retired
                if transport.prefetch and len(staged) == 1:
                    chunk = self.owner.take(self, block=False)
                    if chunk is not None:
                        blame = chunk
                        staged.append(self._stage_in(chunk))
                if staged:
                    slot = staged[0]
                    blame = slot.chunk
                    transport.compute(slot)
                    transport.stage_out(slot)
                    computed.append(staged.popleft())
                while computed and (len(computed) > transport.lag or not staged):
                    slot = computed[0]
                    blame = slot.chunk
                    value = transport.finish(slot)
                    computed.popleft()
                    blame = None
                    self._completed(slot.chunk, value, slot.borrowed)
            except BaseException as exc:
                if blame is None:
                    raise
                if not self._recover(blame, exc, staged, computed):
                    break
        transport.abandon()

    def _stage_in(self, chunk: Chunk) -> "Slot":
        if self.first_start is None:
            self.first_start = time.perf_counter()
        return self.transport.stage_in(chunk)

    def _completed(self, chunk: Chunk, value: Any, borrowed: set[int]) -> None:
        self.chunks += 1
        self.items += chunk.size
        self.last_finish = time.perf_counter()
        self.owner.complete(self, chunk, value, borrowed)

    def _recover(self, chunk: Chunk, exc: BaseException, staged: deque, computed: deque) -> bool:
        """Hand a failure to the run; whether this worker keeps going."""
        kind = classify(exc)
        if kind == "cancel":
            self.owner.interrupted(self, exc)
            return False
        if kind == "user":
            self.owner.user_error(self, chunk, exc)
            return False
        # Let every queued copy finish before any slot (and the buffers it
        # keeps alive) is dropped.
        self.transport.abandon()
        if kind == "oom" and chunk.size > 1:
            for queue in (staged, computed):
                for slot in [s for s in queue if s.chunk == chunk]:
                    queue.remove(slot)
            self.owner.split(self, chunk, exc)
            return True
        others = [s.chunk for s in (*computed, *staged) if s.chunk != chunk]
        staged.clear()
        computed.clear()
        self.owner.fault(self, chunk, others, exc)
        return True
