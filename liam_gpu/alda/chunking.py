"""The batch, its fixed chunks, and putting the chunk results back together.

The chunk plan depends only on the batch (its length and bytes per item) and
on ``chunk_size``, never on the devices, so the same chunks are computed
whatever runs them.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import arrays

#: The default plan aims at this many chunks: enough to keep 8 devices busy
#: with a few chunks each in flight, few enough that per-chunk costs vanish.
TARGET_CHUNKS = 64
#: ... but no chunk smaller than this (Python and launch costs dominate below) ...
MIN_CHUNK_BYTES = 256 << 10
#: ... or larger than this (bounded staging memory; fine-grained fault recovery).
MAX_CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class Chunk:
    """A contiguous range of batch items, computed as one call of the function.

    Attributes
    ----------
    index
        Position in the plan.  The halves of a chunk split after an
        out-of-memory error keep their parent's index.
    start, stop
        The items ``batch[start:stop]``.
    """

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of items."""
        return self.stop - self.start

    def halves(self) -> tuple["Chunk", "Chunk"]:
        """The two chunks an out-of-memory retry computes instead (first half the larger)."""
        mid = self.start + (self.size + 1) // 2
        return Chunk(self.index, self.start, mid), Chunk(self.index, mid, self.stop)

    def describe(self) -> str:
        """``"chunk 3 (items 96:128)"``."""
        return f"chunk {self.index} (items {self.start}:{self.stop})"


def default_chunk_size(length: int, item_bytes: int | None) -> int:
    """Items per chunk when the caller gives no ``chunk_size``.

    ``ceil(length / 64)`` items, raised to at least 256 KiB and lowered to at
    most 32 MiB of input per chunk when the bytes per item are known, and
    clipped to ``[1, length]``.
    """
    size = math.ceil(length / TARGET_CHUNKS)
    if item_bytes:
        size = max(size, math.ceil(MIN_CHUNK_BYTES / item_bytes))
        size = min(size, max(1, MAX_CHUNK_BYTES // item_bytes))
    return max(1, min(size, length))


def plan(length: int, chunk_size: int) -> list[Chunk]:
    """Chunks ``[0, s), [s, 2s), ...`` covering ``length`` items; one empty chunk for an empty batch."""
    if length == 0:
        return [Chunk(0, 0, 0)]
    return [
        Chunk(i, start, min(start + chunk_size, length))
        for i, start in enumerate(range(0, length, chunk_size))
    ]


def check_chunk_size(chunk_size: Any) -> int | None:
    """Validate a ``chunk_size`` argument (None or a positive integer)."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


class Batch:
    """What :meth:`~liam_gpu.Scheduler.map` splits.

    Three forms:

    * one array (numpy, CuPy or torch): split along axis 0, ``fn(chunk)``;
    * a tuple of arrays with one length: split together, ``fn(*chunks)``;
    * a list (any non-array sequence): sliced, ``fn(sub_list)``; its items are
      never moved between devices.

    torch tensors are viewed as numpy/CuPy arrays (DLPack, no copy); the
    function sees those, and array results go back to torch at the end.

    Attributes
    ----------
    mode
        ``"array"``, ``"tuple"`` or ``"sequence"``.
    leaves
        The compute arrays (array and tuple modes).
    length
        Number of items.
    home
        The CUDA ordinal holding the arrays, or None for host memory.
    """

    def __init__(self, batch: Any) -> None:
        self.kind = arrays.NUMPY
        self.leaves: list[Any] = []
        self.items: Sequence[Any] | None = None
        if isinstance(batch, tuple):
            if not batch:
                raise ValueError("batch is an empty tuple; give one array or a tuple of arrays")
            self.mode = "tuple"
            self._take_arrays(batch)
        elif hasattr(batch, "shape") and hasattr(batch, "dtype"):
            self.mode = "array"
            self._take_arrays((batch,))
        elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
            self.mode = "sequence"
            self.items = batch
            self.length = len(batch)
        else:
            raise TypeError(
                "batch must be an array (numpy, CuPy, torch), a tuple of arrays or a list, "
                f"got {type(batch).__name__}"
            )
        self.home = self.kind.device_index

    def _take_arrays(self, values: tuple[Any, ...]) -> None:
        named = {f"batch[{i}]": v for i, v in enumerate(values)}
        for name, value in named.items():
            if value is None or not (hasattr(value, "shape") or isinstance(value, (list, np.generic))):
                raise TypeError(f"{name} must be an array, got {type(value).__name__}")
        self.kind = arrays.common_kind(**named)
        self.leaves = [arrays.to_compute(v, self.kind) for v in values]
        if self.kind.on_gpu:
            # Chunks of a GPU batch are copied to other GPUs as single blocks of
            # memory: each leaf must be C-contiguous (a no-op when it already is).
            import cupy

            with cupy.cuda.Device(self.kind.device_index):
                self.leaves = [cupy.ascontiguousarray(leaf) for leaf in self.leaves]
        lengths = set()
        for name, leaf in zip(named, self.leaves):
            if leaf.ndim == 0:
                raise ValueError(f"{name} is 0-d; batch arrays need a leading axis to split along")
            lengths.add(leaf.shape[0])
        if len(lengths) > 1:
            shapes = ", ".join(f"{n}: {tuple(x.shape)}" for n, x in zip(named, self.leaves))
            raise ValueError(f"the arrays of a tuple batch must have one length along axis 0 ({shapes})")
        self.length = lengths.pop()

    @property
    def item_bytes(self) -> int | None:
        """Input bytes per item (None for a list batch)."""
        if self.mode == "sequence":
            return None
        return sum(leaf.dtype.itemsize * math.prod(leaf.shape[1:]) for leaf in self.leaves)

    def take(self, chunk: Chunk) -> Any:
        """The chunk's input: a tuple of array views, or a sub-list."""
        if self.mode == "sequence":
            return self.items[chunk.start:chunk.stop]
        return tuple(leaf[chunk.start:chunk.stop] for leaf in self.leaves)

    def call(self, fn: Callable[..., Any], part: Any) -> Any:
        """``fn`` applied to one chunk's input, in this batch's calling convention."""
        if self.mode == "tuple":
            return fn(*part)
        if self.mode == "array":
            return fn(part[0])
        return fn(part)

    def restore(self, result: Any) -> Any:
        """The combined result in the caller's array library (torch callers get tensors)."""
        if self.kind.library != "torch":
            return result
        return tree_map(lambda a: arrays.from_compute(a, self.kind), result)


def is_array(x: Any) -> bool:
    """A numpy or CuPy array (what transports move and results concatenate)."""
    return isinstance(x, np.ndarray) or arrays.is_cupy(x)


def tree_map(fn: Callable[[Any], Any], value: Any) -> Any:
    """Apply ``fn`` to every array inside tuples, lists and dicts; other leaves pass through."""
    if is_array(value):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(tree_map(fn, v) for v in value)
    if isinstance(value, list):
        return [tree_map(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: tree_map(fn, v) for k, v in value.items()}
    return value


def combine(parts: list[Any]) -> Any:
    """Join chunk results in input order.

    Arrays are concatenated along axis 0 (on their own device for CuPy);
    tuples and dicts are joined field by field; lists are concatenated as
    lists; ``None`` fields stay ``None``; other objects must offer a
    ``concatenate(parts)`` class method (as :class:`~liam_gpu.LowRank` does).

    Raises
    ------
    TypeError
        Results that none of these rules joins; pass ``combine=`` to
        :meth:`~liam_gpu.Scheduler.map`.
    """
    first = parts[0]
    if is_array(first) and first.ndim == 0:
        raise TypeError(
            "chunk results are 0-d arrays, which cannot be concatenated; return one row per item "
            "or pass combine= to Scheduler.map"
        )
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=0)
    if arrays.is_cupy(first):
        import cupy

        with cupy.cuda.Device(first.device.id):
            return cupy.concatenate(parts, axis=0)
    if isinstance(first, tuple):
        _same_structure(parts, len(first))
        return tuple(combine([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, list):
        return list(itertools.chain.from_iterable(parts))
    if isinstance(first, dict):
        _same_structure(parts, first.keys())
        return {k: combine([p[k] for p in parts]) for k in first}
    if first is None and all(p is None for p in parts):
        return None
    joiner = getattr(type(first), "concatenate", None)
    if callable(joiner):
        return joiner(parts)
    raise TypeError(
        f"cannot join chunk results of type {type(first).__name__}: return arrays (concatenated along "
        "axis 0), tuples/dicts of them or lists, or pass combine= to Scheduler.map"
    )


def _same_structure(parts: list[Any], shape: Any) -> None:
    for p in parts:
        if type(p) is not type(parts[0]) or (len(p) != shape if isinstance(shape, int) else p.keys() != shape):
            raise TypeError("chunk results differ in structure (tuple length or dict keys) between chunks")
