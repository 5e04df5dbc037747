"""One block of the operator on its worker: the backend that computes it and the block's products."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .. import arrays, backends, philox
from ..operators import _row_blocks
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

    ``A_i`` is a backend array, or a scipy.sparse CSR matrix whose products are
    scipy's sparse-times-dense (never densified but for row pieces in
    :meth:`residual_sq`).  Without centring (``shift`` None) ``T_i = A_i``;
    with it ``r_i`` is the block's part of ``r`` (None: ones) and ``c`` comes
    with ``shift`` (None: ones), both in the compute dtype.
    """

    def __init__(self, w: Worker, a: Any, dtype: np.dtype, r: np.ndarray | None = None,
                 shift: Shift | None = None) -> None:
        self.w, self.dtype, self.shift = w, np.dtype(dtype), shift
        self.sparse = is_scipy(a)
        if self.sparse:
            x = a.tocsr().astype(self.dtype, copy=False)
            if not x.has_canonical_format:  # summed duplicates for sum_squares, on a copy: x is the caller's
                x = x.copy()
                x.sum_duplicates()
            self.x = x
        else:
            self.x = w.load(a, dtype)
        rows, cols = (int(d) for d in self.x.shape)
        self.r64 = self.c64 = None
        if shift is not None:
            self.r64 = np.ones(rows) if r is None else np.asarray(r, dtype=np.float64)
            self.c64 = np.ones(cols) if shift.c is None else np.asarray(shift.c, dtype=np.float64)

    @property
    def xp(self) -> Any:
        return self.w.backend.xp

    def _vec(self, v: np.ndarray) -> Any:
        return self.w.backend.asarray(np.ascontiguousarray(v, dtype=self.dtype))

    def _centred(self, y: Any) -> Any:
        """``A_i X - r_i (c^T X)`` from ``A_i X`` (``c^T X`` came with the shift)."""
        if self.shift is None:
            return y
        return y - self._vec(self.r64)[:, None] * self._vec(self.shift.cx)

    def _pass(self, y: Any, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i`` centred, and ``T_i^T Y_i``'s parts (``A_i^T Y_i`` then ``r_i^T Y_i``) when ``with_v``."""
        y = self._centred(y)
        return y, (self.t_times(y) if with_v else None)

    def sketch(self, seed: int, width: int, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = T_i Omega`` (``Omega``'s rows are ``A``'s columns: the same for every block)."""
        if self.sparse:
            omega = philox.omega(seed, self.x.shape[1], width, self.dtype)
            with np.errstate(over="ignore", invalid="ignore"):  # reported by the caller, from Y
                return self._pass(np.ascontiguousarray(self.x @ omega, dtype=self.dtype), with_v)
        if self.shift is None and with_v:  # the backend's fused pass: A_i read once for both
            y, v = self.w.backend.sketch_pass(self.x, seed, width)
            return y, self.w.host(v)
        return self._pass(self.w.backend.sketch(self.x, seed, width), with_v)

    def product(self, c: Any) -> Any:
        """``A_i C`` (no centring) for a backend matrix ``C`` (numpy for a sparse block)."""
        if self.sparse:
            with np.errstate(over="ignore", invalid="ignore"):  # reported by the caller, from Y
                return np.ascontiguousarray(self.x @ c, dtype=self.dtype)
        return self.w.backend.matmul(self.x, c)

    def times(self, c: Any, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = T_i C`` for a backend matrix ``C``."""
        if self.sparse:
            return self._pass(np.ascontiguousarray(self.x @ c, dtype=self.dtype), with_v)
        if self.shift is None and with_v:
            y, v = self.w.backend.power_pass(self.x, c)
            return y, self.w.host(v)
        return self._pass(self.w.backend.matmul(self.x, c), with_v)

    def t_times(self, y: Any) -> np.ndarray:
        """``A_i^T Y_i`` and, with centring, the row ``r_i^T Y_i`` under it: host float64."""
        v = self.x.T @ y if self.sparse else self.w.backend.matmul(self.x, y, trans=True)
        if self.shift is None:
            return self.w.host(v)
        return np.vstack([self.w.host(v), self.w.host(self._vec(self.r64)[None, :] @ y)])

    def sum_squares(self) -> float:
        """``||T_i||_F^2`` (float64)."""
        if self.sparse:
            values = self.x.data.astype(np.float64)
            total = float(np.dot(values, values))
            if self.shift is None:
                return total
            # ||A_i - r c^T||^2 = ||A_i||^2 - 2 r^T A_i c + ||r||^2 ||c||^2 in float64, as in memory
            # (operators.RankOneUpdate): the sparse product with a float64 vector is float64.
            value = total - 2.0 * float(self.r64 @ (self.x @ self.c64)) \
                + float(self.r64 @ self.r64) * float(self.c64 @ self.c64)
            return max(value, 0.0)
        if self.shift is None:
            return self.w.backend.sum_squares(self.x)
        # Entry by entry: T_ij = A_ij - r_i c_j rounds like an explicit centring.
        part = self.x - self._vec(self.r64)[:, None] * self._vec(self.c64)[None, :]
        return self.w.backend.sum_squares(self.xp.ascontiguousarray(part))

    def residual_sq(self, q: Any, bt: Any) -> float:
        """``||T_i - Q_i Bt^T||_F^2`` (float64): dense, or row pieces of a sparse block made dense."""
        backend = self.w.backend
        if not self.sparse:
            part = self.x - backend.matmul(q, bt.T)
            if self.shift is not None:
                part = part - self._vec(self.r64)[:, None] * self._vec(self.c64)[None, :]
            return backend.sum_squares(self.xp.ascontiguousarray(part))
        total = 0.0
        for lo, hi in _row_blocks(*(int(d) for d in self.x.shape)):
            part = self.x[lo:hi].toarray() - q[lo:hi] @ bt.T
            if self.shift is not None:
                part -= (self.r64[lo:hi, None] * self.c64[None, :]).astype(self.dtype)
            total += backend.sum_squares(np.ascontiguousarray(part))
        return total

    def finite(self) -> bool:
        values = self.x.data if self.sparse else self.x
        return bool(self.xp.isfinite(values).all())
