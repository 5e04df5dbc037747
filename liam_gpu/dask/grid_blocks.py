"""A tall operator whose Dask chunks form a grid: block products summed over the contracted block axis."""
from __future__ import annotations

import operator
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask import delayed
from dask.array.utils import meta_from_array

from ..operators import rank_one_minus
from . import tasks
from .block import Shift
from .row_blocks import FAN_IN, DaskOperator, omega_in_chunks, omega_rows

__all__ = ["GridBlocks"]


class GridBlocks(DaskOperator):
    """A tall operator ``T`` whose Dask chunks form a grid (several along both axes), never rechunked.

    Block ``(i, j)`` of ``T`` is ``T_ij = A_ij - r_i c_j^T`` (``r = c = 0``
    without centring; see :class:`DaskOperator`).  Every product is one pass:
    one task per block multiplies it by the matching piece of the small
    factor, and the partial products are summed over the contracted block
    axis by a tree reduction (fan-in :data:`FAN_IN`)::

        Y = T X       Y_i = sum_j A_ij X_j - r_i (c^T X)     X (nt x l) from the client in T's column chunks;
                                                             Y (mt x l) persisted in T's row chunks
        Z = T^T Y     Z_j = sum_i A_ij^T Y_i - c_j (r^T Y)   Y_i sent to every block of row i; Z to the client
        ||T||^2, ||T - Q Bt^T||^2                            sums of per-block terms (r_i, c_j, Q_i, Bt_j)

    so, as for :class:`DaskOperator`, the ``mt x l`` bases live on the
    workers in ``T``'s row chunks (the same Gram reductions, triangular
    applies and TSQR, inherited) and the ``nt x l`` ones on the client.  What
    a grid cannot do is the fused power step: ``T^T (T W)`` needs all of
    ``Y_i = sum_j A_ij W_j`` before any ``A_ij^T Y_i`` can start, so each
    power step reads ``A`` twice (``2 q + 2`` passes, as for column blocks),
    where row blocks read it once (``q + 2``).  ``Omega_j`` (the Philox rows
    of ``T``'s column block ``j``) is generated once per column block and
    sent to the blocks of that column: our sketch kernel has no row offset.
    """

    # -- the centring's passes -------------------------------------------------------------
    def _column_sums(self) -> np.ndarray:
        nbi = self.a.numblocks[0]
        parts = self.a.map_blocks(tasks.column_sums_part, self.dtype, self.device,
                                  chunks=((1,) * nbi, self.a.chunks[1]), dtype=np.float64, meta=np.empty((0, 0)))
        return np.asarray(parts.sum(axis=0, split_every=FAN_IN).compute(), dtype=np.float64)

    def _row_means(self) -> Any:
        nbj = self.a.numblocks[1]
        sums = self.a.map_blocks(tasks.row_sums_block, self.dtype, self.device, chunks=(self.a.chunks[0], (1,) * nbj),
                                 dtype=np.float64, meta=np.empty((0, 0)))
        return sums.sum(axis=1, split_every=FAN_IN) / self.shape[1]

    def _rc(self) -> list[Any]:
        """``r`` and ``c`` as ``blockwise`` arguments: Dask arrays in ``A``'s row and column chunks, or None (ones)."""
        c = None if self._c is None else da.from_array(self._c.astype(self.dtype), chunks=(self.a.chunks[1],))
        return [self._r, None if self._r is None else "i", c, None if c is None else "j"]

    def _in_column_chunks(self, x: np.ndarray) -> Any:
        """A client ``nt x l`` matrix as a Dask array in ``A``'s column chunks (one graph key per block)."""
        return da.from_array(np.ascontiguousarray(x, dtype=self.dtype), chunks=(self.a.chunks[1], (int(x.shape[1]),)))

    # -- passes over A -------------------------------------------------------------------
    def _sketch(self, seed: int, width: int, *, with_v: bool) -> tuple[Any, np.ndarray | None, float, bool]:
        """``Y = T Omega`` and ``||T||_F^2`` in one pass; ``V = T^T Y`` (``with_v``) in a second one."""
        omega = omega_in_chunks(seed, self.a.chunks[1], width, self.dtype)
        c_omega = None
        if self.centred:  # c^T Omega, from the same Philox stream the blocks use
            c_omega = self._c_times(omega_rows(seed, self.shape[1], width, self.dtype, self._c))
        y, finite, norm2 = self._product_pass(omega, width, c_omega, with_norm=True)
        return y, (self.t_times(y) if with_v else None), norm2, finite

    def power_pass(self, c: np.ndarray, *, with_v: bool) -> tuple[Any, np.ndarray | None]:
        """``Y = T C`` for a client matrix ``C`` (one pass) and ``V = T^T Y`` (``with_v``: one more)."""
        cx = self._c_times(np.asarray(c, dtype=np.float64)) if self.centred else None
        y, _, _ = self._product_pass(self._in_column_chunks(c), int(c.shape[1]), cx, with_norm=False)
        return y, (self.t_times(y) if with_v else None)

    def _product_pass(self, x: Any, cols: int, cx: np.ndarray | None, *,
                      with_norm: bool) -> tuple[Any, bool, float | None]:
        """``Y = T X`` for ``X`` in ``A``'s column chunks: persisted, its Gram matrix known.

        Returns ``Y``, whether it is finite, and ``||T||_F^2`` (``with_norm``;
        from the same tasks, which read each block once) or None.
        """
        nbi, nbj = self.a.numblocks
        meta3 = meta_from_array(self.meta, ndim=3)
        # One task per block: A_ij X_j as an (m_i, 1, l) piece of the j-th partial sum.
        out = da.blockwise(tasks.grid_times_block, "ijb", self.a, "ij", *self._rc(), x, "jb",
                           self.centred, None, with_norm, None, self.dtype, None, self.device, None,
                           adjust_chunks={"j": 1}, dtype=self.dtype, meta=meta3)
        partial = out
        if with_norm:
            partial = out.map_blocks(operator.getitem, 0, dtype=self.dtype, meta=meta3)
            norms = out.map_blocks(operator.getitem, 1, chunks=((1,) * nbi, (1,) * nbj, (1,)), dtype=np.float64,
                                   meta=np.empty((0, 0, 0)))
        summed = partial.sum(axis=1, split_every={1: FAN_IN})
        # Per row block: the centring, then [Y_i not finite, Y_i^T Y_i].
        shift = None if cx is None else delayed(Shift(None, np.ascontiguousarray(cx, dtype=self.dtype)))
        r = self._r if self.centred else None
        pairs = da.blockwise(tasks.grid_basis_block, "ib", summed, "ib", r, None if r is None else "i", shift, None,
                             self.dtype, None, self.device, None,
                             dtype=self.dtype, meta=self.meta)
        y = pairs.map_blocks(operator.getitem, 0, chunks=(self.a.chunks[0], (cols,)), dtype=self.dtype,
                             meta=self.meta)
        width = 1 + cols * cols
        stats = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * nbi, (width,)), dtype=np.float64,
                                 meta=np.empty((0, 0)))
        wanted = [y, stats.sum(axis=0, split_every=FAN_IN)] + ([norms.sum()] if with_norm else [])
        y, *totals = dask.persist(*wanted)
        totals = [np.asarray(t, dtype=np.float64) for t in dask.compute(*totals)]
        self._grams = {y.name: totals[0][1:].reshape(cols, cols)}
        return y, not totals[0][0], (float(totals[1]) if with_norm else None)

    def t_times(self, y: Any, *, with_norm: bool = False) -> Any:
        """``T^T Y`` on the client in the compute dtype: one pass over ``A``, ``Y_i`` sent to row ``i``'s blocks."""
        if with_norm:
            raise ValueError("a grid operator sums ||T||^2 in its sketch pass")
        parts = da.blockwise(tasks.grid_t_times_block, "ijb", self.a, "ij", y, "ib", self.dtype, None, self.device,
                             None, adjust_chunks={"i": 1}, dtype=np.float64, meta=np.empty((0, 0, 0)))
        wanted = [parts.sum(axis=0, split_every=FAN_IN)]
        if self.centred:  # r^T Y = sum_i r_i^T Y_i: read from Y, not A
            r = self._r
            rty = da.blockwise(tasks.r_times_block, "ib", y, "ib", r, None if r is None else "i", self.dtype, None,
                               self.device, None, adjust_chunks={"i": 1}, dtype=np.float64, meta=np.empty((0, 0)))
            wanted.append(rty.sum(axis=0, split_every=FAN_IN))
        totals = [np.asarray(t, dtype=np.float64) for t in dask.compute(*wanted)]
        total = totals[0]
        if self.centred:  # Z = A^T Y - c (r^T Y)
            total = rank_one_minus(self.backend, total, self._c, totals[1][None, :])
        return np.ascontiguousarray(total, dtype=self.dtype)

    def sum_squares(self) -> float:
        """``||T||_F^2``: summed by the sketch pass, else one pass of its own."""
        if self._norm2 is None:
            parts = da.blockwise(tasks.grid_sum_squares_block, "ij", self.a, "ij", *self._rc(), self.centred, None,
                                 self.dtype, None, self.device, None, adjust_chunks={"i": 1, "j": 1},
                                 dtype=np.float64, meta=np.empty((0, 0)))
            self._norm2 = float(parts.sum().compute())
        return self._norm2

    def residual_sq(self, q: Any, bt: np.ndarray) -> float:
        """``||T - Q Bt^T||_F^2`` = sum of ``||T_ij - Q_i Bt_j^T||^2``: one pass, block by block."""
        parts = da.blockwise(tasks.grid_residual_block, "ijb", self.a, "ij", *self._rc(), q, "ib",
                             self._in_column_chunks(bt), "jb", self.centred, None, self.dtype, None, self.device,
                             None, adjust_chunks={"i": 1, "j": 1, "b": 1}, dtype=np.float64,
                             meta=np.empty((0, 0, 0)))
        return float(parts.sum().compute())

    def _finite_parts(self) -> Any:
        nbi, nbj = self.a.numblocks
        return self.a.map_blocks(tasks.finite_part, self.dtype, self.device, chunks=((1,) * nbi, (1,) * nbj),
                                 dtype=np.float64, meta=np.empty((0, 0)))
