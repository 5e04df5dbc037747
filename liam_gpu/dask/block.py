"""One block of the operator on its worker: the backend that computes it and the block's products."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .. import arrays, backends
from ..operators import (DenseOperator, RankOneUpdate, SparseOperator, canonical_csr, rank_one_minus,
                         vector_times)
from ..sparse_input import is_scipy

__all__ = ["Shift", "Worker", "on_worker", "Block"]


@dataclass(frozen=True)
class Shift:
    """The centring as one task sees it: ``c`` (None: ones) and ``c^T X`` of the pass's ``X`` (or None)."""

    c: np.ndarray | None
    cx: np.ndarray | None


@dataclass(frozen=True)
class Worker:
    """The backend that computes one block, and the conversions to and from the block's type."""

    kind: arrays.ArrayKind
    backend: Any

    def load(self, block: Any, dtype: Any = None) -> Any:
        """A block as a C-contiguous backend array of ``dtype`` (no copy when it already is one)."""
        x = self.backend.asarray(arrays.to_compute(block, self.kind))
        return self.backend.xp.ascontiguousarray(x, dtype=x.dtype if dtype is None else dtype)

    def give_back(self, y: Any) -> Any:
        """A result in the block's own array type and device."""
        return arrays.from_compute(y, self.kind)

    def host(self, y: Any) -> np.ndarray:
        """A result as a host float64 array."""
        return np.asarray(self.backend.to_host(y), dtype=np.float64)


@contextlib.contextmanager
def on_worker(block: Any, device: Any) -> Iterator[Worker]:
    """The :class:`Worker` for ``block``: ``device`` resolved for its array type, inside its stream."""
    if is_scipy(block):  # scipy's SpMM on the CPU; the client refused any other device
        yield Worker(arrays.NUMPY, backends.get_backend("cpu"))
        return
    kind = arrays.kind_of(block)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind):
        yield Worker(kind, backend)


class Block:
    """Row block ``T_i = A_i - r_i c^T`` of the operator, on its worker.

    ``A_i`` is read through the in-memory operator of its kind, in its own
    orientation -- :class:`~liam_gpu.operators.DenseOperator` for a backend
    array, :class:`~liam_gpu.operators.SparseOperator` for a scipy.sparse
    block (scipy's sparse-times-dense, never densified but for row pieces in
    :meth:`residual_sq`) -- so a block's products, norm and residual are the
    in-memory formulas.  Without centring (``shift`` None) ``T_i = A_i``; with
    it ``r_i`` is the block's part of ``r`` (None: ones) and ``c`` comes with
    ``shift`` (None: ones), both in the compute dtype.  The norm and the
    residual of ``T_i`` are :class:`~liam_gpu.operators.RankOneUpdate`'s; the
    products split its correction across the cluster, so that a pass still
    reads ``A_i`` once for ``Y_i`` and ``A_i^T Y_i``: ``c^T X`` comes from the
    client with ``shift``, and ``r_i^T Y_i`` goes back with ``A_i^T Y_i``, the
    client subtracting ``c sum_i r_i^T Y_i``.
    """

    def __init__(self, w: Worker, a: Any, dtype: np.dtype, r: np.ndarray | None = None,
                 shift: Shift | None = None) -> None:
        self.w, self.dtype, self.shift = w, np.dtype(dtype), shift
        self.sparse = is_scipy(a)
        if self.sparse:
            self.x = canonical_csr(a, self.dtype)
            self.op = SparseOperator(w.backend, self.x, self.x.T, False)  # the block's rows, never swapped
        else:
            self.x = w.load(a, dtype)
            self.op = DenseOperator(w.backend, self.x, False, False)
        rows, cols = (int(d) for d in self.x.shape)
        self.r64 = self.c64 = None
        self.t = self.op  # T_i, for its norm and residual
        if shift is not None:
            self.r64 = np.ones(rows) if r is None else np.asarray(r, dtype=np.float64)
            self.c64 = np.ones(cols) if shift.c is None else np.asarray(shift.c, dtype=np.float64)
            self.t = RankOneUpdate(self.op, self.r64, self.c64)

    def _quiet(self) -> Any:
        """Overflow in a sparse block's products is reported by the caller, from ``Y``."""
        return np.errstate(over="ignore", invalid="ignore") if self.sparse else contextlib.nullcontext()

    def _pass(self, y: Any, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = A_i X - r_i (c^T X)`` from ``A_i X``, and ``T_i^T Y_i``'s parts (``A_i^T Y_i`` then
        ``r_i^T Y_i``, see :meth:`t_times`) when ``with_v``."""
        if self.shift is not None:
            cx = self.w.backend.asarray(np.ascontiguousarray(self.shift.cx, dtype=self.dtype))
            y = rank_one_minus(self.w.backend, y, self.r64, cx)
        return y, (self.t_times(y) if with_v else None)

    def _fused(self, y: Any, v: Any) -> tuple[Any, Any | None]:
        """A pass without centring: ``V`` of the operator's own (fused) pass, to the host."""
        return y, (None if v is None else self.w.host(v))

    def sketch(self, seed: int, width: int, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = T_i Omega`` (``Omega``'s rows are ``A``'s columns: the same for every block)."""
        with self._quiet():
            if self.shift is None:
                return self._fused(*self.op.sketch(seed, width, with_v=with_v))
            return self._pass(self.op.sketch(seed, width)[0], with_v)

    def product(self, c: Any) -> Any:
        """``A_i C`` (no centring) for a backend matrix ``C`` (numpy for a sparse block)."""
        with self._quiet():
            return self.op.power(c)[0]

    def times(self, c: Any, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = T_i C`` for a backend matrix ``C``."""
        if self.shift is None:
            return self._fused(*self.op.power(c, with_v=with_v))
        return self._pass(self.op.power(c)[0], with_v)

    def t_times(self, y: Any) -> np.ndarray:
        """``A_i^T Y_i`` and, with centring, the row ``r_i^T Y_i`` under it: host float64."""
        v = self.w.host(self.op.t_times(y))
        if self.shift is None:
            return v
        return np.vstack([v, self.w.host(vector_times(self.w.backend, self.r64, y, self.dtype))])

    def sum_squares(self) -> float:
        """``||T_i||_F^2`` (float64)."""
        return self.t.sum_squares()

    def residual_sq(self, q: Any, bt: Any) -> float:
        """``||T_i - Q_i Bt^T||_F^2`` (float64): dense, or row pieces of a sparse block made dense."""
        return self.t.residual_sq(q, bt)

    def finite(self) -> bool:
        values = self.x.data if self.sparse else self.x
        return bool(self.w.backend.xp.isfinite(values).all())
