"""The per-block tasks of :mod:`liam_gpu.dask`'s passes, run on the workers.

Each takes its blocks (and the small client matrices, one graph key each)
and returns the block's results in the block's type and host float64 sums.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import arrays, philox
from ..operators import largest_entries, rank_one_minus, vector_times
from .block import Block, Shift, Worker, on_worker


def omega_block(seed: int, width: int, dtype: np.dtype, block_info: dict | None = None) -> np.ndarray:
    """Rows ``lo:hi`` of the Philox ``Omega`` (``block_info`` is passed by ``map_blocks``)."""
    lo, hi = block_info[None]["array-location"][0]
    return philox.omega(seed, hi - lo, width, dtype, row0=lo)


def _stats_row(w: Worker, leading: Sequence[float], v: np.ndarray | None, y: Any) -> np.ndarray:
    """``[leading..., V_i..., Y_i^T Y_i]`` as one host float64 row (see :class:`~.row_blocks._Stats`);
    the Gram matrix accumulated in float64, as cholqr asks."""
    parts = [np.asarray(leading, dtype=np.float64)]
    if v is not None:
        parts.append(np.ravel(v))
    parts.append(np.ravel(w.backend.gram(y)))
    return np.concatenate(parts)[None]


def sketch_block(a: Any, r: np.ndarray | None, seed: int, width: int, shift: Shift | None, with_v: bool,
                 dtype: np.dtype, device: Any) -> tuple[Any, np.ndarray]:
    """``Y_i = T_i Omega`` and ``[||T_i||_F^2, Y_i not finite, T_i^T Y_i's parts (with_v), Y_i^T Y_i]``.

    ``Omega``'s rows are ``A``'s columns, so every block multiplies by the same ``Omega``.
    """
    with on_worker(a, device) as w:
        block = Block(w, a, dtype, r, shift)
        y, v = block.sketch(seed, width, with_v)
        not_finite = float(not bool(w.backend.xp.isfinite(y).all()))
        return w.give_back(y), _stats_row(w, [block.sum_squares(), not_finite], v, y)


def power_block(a: Any, r: np.ndarray | None, c: np.ndarray, shift: Shift | None, with_v: bool,
                dtype: np.dtype, device: Any) -> tuple[Any, np.ndarray]:
    """``Y_i = T_i C`` for a client matrix ``C``, and ``[T_i^T Y_i's parts (with_v), Y_i^T Y_i]``."""
    with on_worker(a, device) as w:
        y, v = Block(w, a, dtype, r, shift).times(w.backend.asarray(c), with_v)
        return w.give_back(y), _stats_row(w, [], v, y)


def t_times_part(a: Any, r: np.ndarray | None, y: Any, shift: Shift | None, with_norm: bool,
                 dtype: np.dtype, device: Any) -> np.ndarray:
    """``A_i^T Y_i`` (and ``r_i^T Y_i`` under it, with centring; then a row ``[||T_i||_F^2, 0...]``
    ``with_norm``), summed across blocks in float64."""
    with on_worker(a, device) as w:
        block = Block(w, a, dtype, r, shift)
        part = block.t_times(w.load(y, dtype))
        if with_norm:
            norm = np.zeros((1, part.shape[1]))
            norm[0, 0] = block.sum_squares()
            part = np.vstack([part, norm])
        return part[None]


def gram_part(y: Any, device: Any) -> np.ndarray:
    """``Y_i^T Y_i`` (accumulated in float64) as a host ``(1, l, l)`` piece."""
    with on_worker(y, device) as w:
        return w.backend.gram(w.load(y))[None]


def tri_apply_block(y: Any, r: np.ndarray, rinv: np.ndarray, accumulate: np.dtype, device: Any) -> Any:
    with on_worker(y, device) as w:
        return w.give_back(w.backend.tri_apply(w.load(y), r, accumulate=accumulate, rinv=rinv))


def qr_block(y: Any, device: Any) -> tuple[Any, np.ndarray]:
    """Householder QR of one block: ``Q_i`` in the block's type, ``R_i`` (min(rows, l) x l) on the host."""
    with on_worker(y, device) as w:
        q, r = w.backend.householder_qr(w.load(y))
        return w.give_back(q), np.asarray(r, dtype=np.float64)


def tsqr_block(pair: tuple[Any, np.ndarray], parts: list[np.ndarray], device: Any,
               block_id: tuple[int, ...] | None = None) -> Any:
    """``Q_i S_i``: block ``i`` of the TSQR factor (``block_id`` is passed by ``map_blocks``)."""
    q = pair[0]
    with on_worker(q, device) as w:
        return w.give_back(w.backend.matmul(w.load(q), w.backend.asarray(parts[block_id[0]])))


def left_block(q: Any, c: np.ndarray, device: Any) -> tuple[Any, np.ndarray]:
    """``U_i = Q_i C``, and each column's largest-magnitude entry in the block (signed, host float64 row:
    :func:`~liam_gpu.operators.largest_entries`, of which the client takes the largest)."""
    with on_worker(q, device) as w:
        u = w.backend.matmul(w.load(q), w.backend.asarray(c))
        return w.give_back(u), w.host(largest_entries(w.backend.xp, u, axis=0))


def scale_columns_block(u: Any, signs: np.ndarray) -> Any:
    """``u * signs`` in ``u``'s own array type (the signs are +-1: exact)."""
    kind = arrays.kind_of(u)
    with arrays.caller_stream(kind):
        return u * arrays.from_compute(signs.astype(u.dtype), kind)


def sum_squares_part(a: Any, r: np.ndarray | None, shift: Shift | None, dtype: np.dtype,
                     device: Any) -> np.ndarray:
    with on_worker(a, device) as w:
        return np.array([[Block(w, a, dtype, r, shift).sum_squares()]])


def residual_part(a: Any, r: np.ndarray | None, q: Any, bt: np.ndarray, shift: Shift | None,
                  dtype: np.dtype, device: Any) -> np.ndarray:
    """``||T_i - Q_i Bt^T||_F^2`` of one row block."""
    with on_worker(a, device) as w:
        block = Block(w, a, dtype, r, shift)
        return np.array([[[block.residual_sq(w.load(q, dtype), w.backend.asarray(bt))]]])


def matmul_block(q: Any, c: np.ndarray, device: Any) -> Any:
    with on_worker(q, device) as w:
        return w.give_back(w.backend.matmul(w.load(q), w.backend.asarray(c)))


def finite_part(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    with on_worker(a, device) as w:
        return np.array([[float(Block(w, a, dtype).finite())]])


def _row_sums(block: Block) -> np.ndarray:
    """A block's row sums in float64, host 1-D (a sparse block's values widened first, as in memory)."""
    if block.sparse:
        return block.op.times_host(block.op.data, np.ones(int(block.x.shape[1])))
    return block.w.host(block.w.backend.xp.sum(block.x, axis=1, dtype=np.float64))


def column_sums_part(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """The column sums of one row block in float64 (``center=True`` on row chunks)."""
    with on_worker(a, device) as w:
        block = Block(w, a, dtype)
        if block.sparse:  # SparseOperator.column_sums: the values widened to float64 before summing
            return block.op.column_sums()[None]
        return w.host(w.backend.xp.sum(block.x, axis=0, dtype=np.float64))[None]


def row_means_block(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """The row means of one row block of ``x.T`` in float64 (``center=True`` on column chunks)."""
    with on_worker(a, device) as w:
        block = Block(w, a, dtype)
        return _row_sums(block) / block.x.shape[1]


# --------------------------------------------------------------------------- grid blocks, on the workers


def _grid_block(w: Worker, a: Any, r: np.ndarray | None, c: np.ndarray | None, centred: bool,
                dtype: np.dtype) -> Block:
    """Block ``T_ij = A_ij - r_i c_j^T`` (``r_i``, ``c_j`` its pieces; None: ones) or ``A_ij``."""
    return Block(w, a, dtype, r, Shift(c, None) if centred else None)


def grid_times_block(a: Any, r: np.ndarray | None, c: np.ndarray | None, x: np.ndarray, centred: bool,
                     with_norm: bool, dtype: np.dtype, device: Any) -> Any:
    """``A_ij X_j`` as an ``(m_i, 1, l)`` piece in the block's type, and ``[[[||T_ij||_F^2]]]`` (``with_norm``)."""
    with on_worker(a, device) as w:
        block = _grid_block(w, a, r, c, centred, dtype)
        xj = np.ascontiguousarray(x, dtype=dtype)
        part = w.give_back(block.product(xj if block.sparse else w.backend.asarray(xj)))[:, None, :]
        return (part, np.array([[[block.sum_squares()]]])) if with_norm else part


def grid_basis_block(y: Any, r: np.ndarray | None, shift: Shift | None, dtype: np.dtype,
                     device: Any) -> tuple[Any, np.ndarray]:
    """Row block ``Y_i = sum_j A_ij X_j - r_i (c^T X)`` and ``[Y_i not finite, Y_i^T Y_i]``."""
    with on_worker(y, device) as w:
        y = w.load(y, dtype)
        if shift is not None:
            y = rank_one_minus(w.backend, y, r, w.backend.asarray(shift.cx))
        not_finite = float(not bool(w.backend.xp.isfinite(y).all()))
        return w.give_back(y), _stats_row(w, [not_finite], None, y)


def grid_t_times_block(a: Any, y: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """``A_ij^T Y_i`` as a host float64 ``(1, n_j, l)`` piece."""
    with on_worker(a, device) as w:
        return Block(w, a, dtype).t_times(w.load(y, dtype))[None]


def r_times_block(y: Any, r: np.ndarray | None, dtype: np.dtype, device: Any) -> np.ndarray:
    """``r_i^T Y_i`` (``r`` None: ones) as a host float64 ``(1, l)`` row."""
    with on_worker(y, device) as w:
        y = w.load(y, dtype)
        ri = np.ones(int(y.shape[0])) if r is None else r
        return w.host(vector_times(w.backend, ri, y, dtype))


def grid_sum_squares_block(a: Any, r: np.ndarray | None, c: np.ndarray | None, centred: bool,
                           dtype: np.dtype, device: Any) -> np.ndarray:
    with on_worker(a, device) as w:
        return np.array([[_grid_block(w, a, r, c, centred, dtype).sum_squares()]])


def grid_residual_block(a: Any, r: np.ndarray | None, c: np.ndarray | None, q: Any, bt: np.ndarray,
                        centred: bool, dtype: np.dtype, device: Any) -> np.ndarray:
    """``||T_ij - Q_i Bt_j^T||_F^2`` of one block."""
    with on_worker(a, device) as w:
        block = _grid_block(w, a, r, c, centred, dtype)
        return np.array([[[block.residual_sq(w.load(q, dtype), w.backend.asarray(bt))]]])


def row_sums_block(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """The row sums of one block in float64, as an ``(m_i, 1)`` column (``center=True`` on a grid, swapped)."""
    with on_worker(a, device) as w:
        return _row_sums(Block(w, a, dtype))[:, None]
