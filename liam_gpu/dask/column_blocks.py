"""A tall operator whose Dask chunks hold whole columns: products through ``S = T^T``, bases on the client."""
from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .. import arrays
from ..operators import left_factor
from .row_blocks import DaskOperator, omega_in_chunks

__all__ = ["ColumnBlocks"]


class ColumnBlocks:
    """A tall operator ``T`` whose Dask blocks hold whole columns, for the engine, on the client.

    The engine orients a matrix by its shape alone (``T`` is the caller's
    matrix when tall, its transpose when wide), as in memory, so that the
    sketch ``T Omega`` -- and with it the result -- does not depend on the
    chunking.  When ``T``'s chunks hold whole columns (a tall matrix in column
    chunks, a wide one in row chunks) the products go through ``S = T^T``, a
    :class:`DaskOperator` over those blocks as row blocks (``S``'s centring
    is ``T``'s, transposed)::

        T X = S^T X      one pass: sum_j S_j^T X_j, X in S's row chunks (Omega: made per block)
        T^T Y = S Y      one pass: S_j Y per block, gathered
        ||T - Q Bt^T||   = ||S - Bt Q^T||, one pass

    The ``mt x l`` bases (the long side) and the ``nt x l`` ones live on the
    client (the CPU backend is :attr:`space` and :attr:`backend`); ``T X``
    must be summed before ``T^T Y`` can start, so a power step reads ``A``
    twice where :class:`DaskOperator` reads it once: ``2 q + 2`` passes in
    all (``||T||_F^2`` comes with the sketch).
    """

    def __init__(self, s: DaskOperator, *, swapped: bool) -> None:
        self.s = s
        self.swapped = swapped
        self.dtype = s.dtype
        self.backend = s.backend
        self._norm2: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        nt, mt = self.s.shape
        return mt, nt

    @property
    def space(self) -> Any:
        return self.backend

    def _in_s_chunks(self, x: np.ndarray) -> Any:
        """A client ``nt x l`` matrix as a Dask array in ``S``'s row chunks (one graph key per block)."""
        return da.from_array(np.ascontiguousarray(x, dtype=self.dtype), chunks=(self.s.a.chunks[0], x.shape[1]))

    def _t_side(self, y: np.ndarray) -> np.ndarray:
        """``T^T Y = S Y``: one pass, its blocks gathered to the client."""
        blocks, _ = self.s.power_pass(np.asarray(y), with_v=False)
        host = blocks.map_blocks(arrays.from_compute, arrays.NUMPY, dtype=self.dtype,
                                 meta=np.empty((0, 0), dtype=self.dtype))  # CuPy blocks come to the host
        return np.ascontiguousarray(host.compute(), dtype=self.dtype)

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any | None]:
        if col0:
            raise ValueError("the Dask operator sketches from the first column of Omega only")
        omega = omega_in_chunks(seed, self.s.a.chunks[0], l, self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf: reported by the caller, from Y
            y, self._norm2 = self.s.t_times(omega, with_norm=True)
        return y, (self._t_side(y) if with_v else None)

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any | None]:
        y = self.s.t_times(self._in_s_chunks(w))
        return y, (self._t_side(y) if with_v else None)

    def t_times(self, y: Any) -> Any:
        return self._t_side(y)

    sums_in_sketch = True  # ||T||^2 comes with the sketch pass (see sum_squares)

    def sum_squares(self) -> float:
        """``||T||_F^2``: summed by the sketch pass, else one pass of its own."""
        return self.s.sum_squares() if self._norm2 is None else self._norm2

    def residual_sq(self, q: Any, bt: Any) -> float:
        return self.s.residual_sq(self._in_s_chunks(bt), q)

    def require_finite(self, y: Any) -> None:
        self.s.require_finite(np.asarray(y))  # y is a client array: checked as it is

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        return left_factor(self.backend, self.dtype, q, c, flip=flip)

    def transpose(self, x: Any) -> Any:
        return np.ascontiguousarray(x.T)
