"""The row-block operator: a tall Dask array as an operator of the SVD engine, one reduction per pass."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import dask
import dask.array as da
import numpy as np
from dask import delayed
from dask.array.utils import meta_from_array

from .. import backends, philox
from ..backends.base import upper_inverse
from ..operators import largest_entry_signs, rank_one_minus
from ..sparse_input import is_scipy
from . import tasks
from .block import Shift

__all__ = ["DaskOperator", "FAN_IN", "omega_in_chunks", "omega_rows"]

#: Partial results combined per task of the tree reductions.
FAN_IN = 8


class DaskOperator:
    """A tall Dask array as an operator of the SVD engine (:mod:`liam_gpu.operators`).

    The operator is its own basis ``space``: the primitives
    :mod:`liam_gpu.cholqr` asks of a backend, over tall Dask arrays.

    Tall matrices (``A`` and the ``m x l`` bases) are Dask arrays in the row
    chunks of ``A``; each block is computed on its worker by the backend that
    ``device`` names for the block's type (scipy.sparse blocks: scipy on the
    CPU).  ``gram`` is a tree reduction of per-block Gram matrices, computed
    at once -- or already known, for a basis made by a pass over ``A``, which
    sums its Gram matrix as it goes; ``tri_apply`` is lazy, block by block
    (Dask fuses it into whatever reads it next); ``householder_qr`` is a
    TSQR.  The ``n x l`` and ``l x l`` matrices live on the client and are
    handled by the CPU backend (:attr:`backend`).

    Every per-block result keeps the block's columns as axes of its own (none
    is contracted), so that Dask fuses the reading (or generating) of a block
    of ``A`` into the task that uses it: no block of ``A`` is ever stored.

    After :meth:`centre` the operator is ``T = A - r c^T`` (the rank-one
    update of :class:`liam_gpu.operators.RankOneUpdate`), applied inside each
    block's products: ``(r, c) = (1, mu)`` for row chunks of the caller's
    matrix, ``(mu, 1)`` for column chunks (``A`` is then the caller's
    transpose).  Unlike the in-memory update, each pass still reads a block
    once for ``Y_i`` and ``A_i^T Y_i``: ``Y_i`` is centred on the worker
    before ``A_i^T Y_i`` is formed, and ``c (r_i^T Y_i)`` is subtracted from
    the sum on the client.

    Parameters
    ----------
    a
        The input: 2-D Dask array, one column chunk, no empty row chunk.
    dtype
        The dtype computed in (blocks of ``a`` are converted on use).
    device
        The ``device=`` argument, resolved on the workers.
    swapped
        ``a`` is the caller's matrix transposed (the factors swap on the way out).
    """

    def __init__(self, a: Any, dtype: np.dtype, device: Any, *, swapped: bool = False) -> None:
        self.swapped = swapped
        self.a = a
        self.dtype = np.dtype(dtype)
        self.device = device
        self.backend = backends.get_backend("cpu")
        # Bases of sparse blocks are dense numpy arrays; else of the blocks' own type.
        self.meta = (np.empty((0, 0), dtype=self.dtype) if is_scipy(a._meta)
                     else meta_from_array(a, ndim=2, dtype=self.dtype))
        # The Gram matrix of the last basis made by a pass over A (summed as it was made), by its name.
        self._grams: dict[str, np.ndarray] = {}
        self._norm2: float | None = None
        self._sketch_finite = True
        # The centring T = A - r c^T (see centre): c on the client (None: ones), r on the
        # workers in A's row chunks (None: ones).
        self.centred = False
        self._c: np.ndarray | None = None
        self._r: Any = None

    def centre(self, mean: np.ndarray | None, *, check: bool) -> None:
        """Factor ``A - 1 mu^T`` of the caller's matrix from now on (``mean`` None: its column means).

        ``mean`` is ``mu`` (host float64, one per column of the caller's
        matrix).  ``A`` the caller's matrix: ``c = mu`` lives on the client
        and travels to every task (one graph key); ``mean=None`` sums the
        columns in one pass (means that are not finite are refused: ``A``'s
        NaN/Inf, named as such when ``check``).  ``A`` its transpose
        (``swapped``): ``r = mu`` is a Dask array in ``A``'s row chunks, each
        task reading its part; ``mean=None`` makes it from the row means of
        each block, persisted on the workers (one pass).
        """
        mt, nt = self.shape
        if not self.swapped:
            if mean is None:
                mean = self._column_sums() / mt
                if not np.isfinite(mean).all():
                    if check:
                        self.check_finite()  # raises for NaN/Inf in x
                    raise ValueError("x's column sums are not finite (NaN/Inf, or finite values whose sum "
                                     "overflows float64); pass its means as center= or scale it down")
            self._c = np.ascontiguousarray(mean, dtype=np.float64)
        elif mean is None:
            self._r = self._row_means().persist()
        else:
            self._r = da.from_array(np.ascontiguousarray(mean, dtype=np.float64), chunks=(self.a.chunks[0],))
        self.centred = True

    def _column_sums(self) -> np.ndarray:
        """``A``'s column sums on the client (host float64): one pass."""
        parts = self._per_block(tasks.column_sums_part, "a", [(self.a, "ia")], {"a": self.shape[1]}, self.dtype)
        return np.asarray(parts.sum(axis=0, split_every=FAN_IN).compute(), dtype=np.float64)

    def _row_means(self) -> Any:
        """``A``'s row means, lazily: a float64 Dask array in ``A``'s row chunks."""
        return self.a.map_blocks(tasks.row_means_block, self.dtype, self.device, drop_axis=1,
                                 dtype=np.float64, meta=np.empty((0,)))

    # -- the operator protocol ---------------------------------------------------------
    sums_in_sketch = True  # ||A||^2 comes with the sketch pass (see sum_squares)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(d) for d in self.a.shape)

    @property
    def space(self) -> "DaskOperator":
        return self

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any]:
        if col0:
            raise ValueError("the Dask operator sketches from the first column of Omega only")
        y, v, self._norm2, self._sketch_finite = self._sketch(seed, l, with_v=with_v)
        return y, v

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any]:
        return self.power_pass(w, with_v=with_v)

    def sum_squares(self) -> float:
        """``||T||_F^2``: summed by the sketch pass, else one pass of its own."""
        if self._norm2 is None:
            parts = self._per_block(tasks.sum_squares_part, "a", [(self.a, "ia"), (self._r, "i")], {"a": 1},
                                    self._shift(), self.dtype)
            self._norm2 = float(parts.sum().compute())
        return self._norm2

    def residual_sq(self, q: Any, bt: np.ndarray) -> float:
        """``||T - Q Bt^T||_F^2``: one pass, block by block on the workers."""
        small = delayed(np.ascontiguousarray(bt, dtype=self.dtype))
        parts = self._per_block(tasks.residual_part, "ab", [(self.a, "ia"), (self._r, "i"), (q, "ib")],
                                {"a": 1, "b": 1}, small, self._shift(), self.dtype)
        return float(parts.sum().compute())

    def require_finite(self, y: Any) -> None:
        """Raise for NaN/Inf in ``x`` if ``y`` (the sketch, or a host number made from ``x``) is not finite."""
        finite = bool(np.isfinite(y).all()) if isinstance(y, np.ndarray) else self._sketch_finite
        if finite:
            return
        self.check_finite()  # raises for NaN/Inf in x
        raise ValueError(f"x is finite but so large that its products overflow {self.dtype}; scale it down")

    def transpose(self, x: Any) -> Any:
        """``x^T`` of a basis-space array, lazily (a wide ``x``'s ``Vt`` stays on the workers)."""
        return x.T

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        if not flip:
            small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
            return q.map_blocks(tasks.matmul_block, small, self.device, chunks=(q.chunks[0], (int(c.shape[1]),)),
                                dtype=self.dtype, meta=self.meta), None
        return self.left_factor(q, c)

    # -- passes over A -------------------------------------------------------------------
    def _sketch(self, seed: int, width: int, *, with_v: bool) -> tuple[Any, np.ndarray | None, float, bool]:
        """``Y = T Omega`` (persisted, its Gram matrix known), ``V = T^T Y``, ``||T||_F^2``: one pass.

        Also whether ``Y`` is finite (NaN/Inf in ``A`` always reach it: no
        entry of ``Omega`` is zero).  ``V`` only ``with_v`` (else None).
        """
        c_omega = None
        if self.centred:  # c^T Omega, from the same Philox stream the blocks use
            c_omega = self._c_times(omega_rows(seed, self.shape[1], width, self.dtype, self._c))
        y, stats = self._basis_pass(tasks.sketch_block, width, seed, width, shift=self._shift(c_omega), leading=2,
                                    with_v=with_v)
        return y, stats.v, float(stats.leading[0]), not stats.leading[1]

    def power_pass(self, c: np.ndarray, *, with_v: bool) -> tuple[Any, np.ndarray | None]:
        """``Y = T @ C`` for a client matrix ``C`` (persisted, its Gram matrix known) and ``V = T^T Y``.

        One pass over ``A``; ``V`` only ``with_v`` (else None).
        """
        small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
        shift = self._shift(self._c_times(np.asarray(c, dtype=np.float64)) if self.centred else None)
        y, stats = self._basis_pass(tasks.power_block, int(c.shape[1]), small, shift=shift, leading=0, with_v=with_v)
        return y, stats.v

    def t_times(self, y: Any, *, with_norm: bool = False) -> Any:
        """``T^T Y`` on the client in the compute dtype: one pass over ``A``.

        ``with_norm``: also ``||T||_F^2`` from the same pass, returned second.
        """
        n, l = int(self.a.shape[1]), int(y.shape[1])
        rows = n + int(self.centred) + int(with_norm)  # A_i^T Y_i, then r_i^T Y_i, then ||T_i||^2
        product = self._per_block(tasks.t_times_part, "ab", [(self.a, "ia"), (self._r, "i"), (y, "ib")],
                                  {"a": rows, "b": l}, self._shift(), with_norm, self.dtype)
        total = np.asarray(product.sum(axis=0, split_every=FAN_IN).compute(), dtype=np.float64)
        if with_norm:
            total, norm2 = total[:-1], float(total[-1, 0])
        result = np.ascontiguousarray(self._minus_c(total), dtype=self.dtype)
        return (result, norm2) if with_norm else result

    def check_finite(self) -> None:
        """Raise ``ValueError`` if ``A`` holds NaN/Inf (one more pass, only after a non-finite sum)."""
        if not bool(self._finite_parts().min().compute()):
            raise ValueError("x contains NaN or Inf; pass check_finite=False to skip this check")

    def _finite_parts(self) -> Any:
        """Per block of ``A``: 1.0 if its entries are finite, else 0.0 (lazy)."""
        return self._per_block(tasks.finite_part, "a", [(self.a, "ia")], {"a": 1}, self.dtype)

    # -- the primitives cholqr asks for --------------------------------------------------
    def gram(self, y: Any) -> np.ndarray:
        """``Y^T Y`` as a host float64 array: per-block Gram matrices accumulated and summed in float64
        (the only accumulation :mod:`liam_gpu.cholqr` asks for)."""
        known = self._grams.get(y.name)
        if known is not None:
            return known.copy()
        l = int(y.shape[1])
        parts = self._per_block(tasks.gram_part, "ab", [(y, "ia")], {"a": l, "b": l})
        return parts.sum(axis=0, split_every=FAN_IN).compute()

    def tri_apply(self, y: Any, r: np.ndarray, *, accumulate: Any = np.float64,
                  rinv: np.ndarray | None = None) -> Any:
        """``Y R^-1``, lazily, block by block (``rinv``, when given, is ``R^-1``, formed once on the client)."""
        r = np.asarray(r, dtype=np.float64)
        rinv = upper_inverse(r) if rinv is None else np.asarray(rinv, dtype=np.float64)
        return y.map_blocks(tasks.tri_apply_block, r, rinv, np.dtype(accumulate), self.device,
                            dtype=self.dtype, meta=self.meta)

    def householder_qr(self, y: Any) -> tuple[Any, np.ndarray]:
        """Thin QR of a numerically rank-deficient ``Y`` by TSQR: ``Q`` orthonormal whatever the rank.

        Each block is factored ``Y_i = Q_i R_i`` by the backend's Householder
        QR on its worker; the stacked ``R_i`` (``min(rows_i, l) x l`` each) are
        factored on the client, ``[R_i] = [S_i] R``, and ``Q = [Q_i S_i]``
        stays on the workers.
        """
        pairs = y.map_blocks(tasks.qr_block, self.device, dtype=self.dtype, meta=self.meta).persist()
        rs = dask.compute(*[delayed(operator.getitem)(b, 1) for b in pairs.to_delayed().ravel()])
        s, r = np.linalg.qr(np.vstack(rs))
        bounds = np.cumsum([0] + [int(ri.shape[0]) for ri in rs])
        parts = [np.ascontiguousarray(s[lo:hi], dtype=self.dtype) for lo, hi in zip(bounds[:-1], bounds[1:])]
        q = pairs.map_blocks(tasks.tsqr_block, delayed(parts), self.device, dtype=self.dtype, meta=self.meta,
                             chunks=y.chunks)
        return q, np.asarray(r, dtype=np.float64)

    # -- the result ------------------------------------------------------------------------
    def left_factor(self, q: Any, c: np.ndarray) -> tuple[Any, np.ndarray]:
        """``U = Q C`` with scikit-learn's ``svd_flip`` signs, and the signs.

        One round: every block of ``Q C`` is persisted together with its
        largest-magnitude entry per column; the largest of those is the
        column's (:func:`~liam_gpu.operators.largest_entry_signs` over the
        blocks' entries: ties to the first block, as an ``argmax`` over the
        whole ``U`` ties to the first row), and the signs then scale the
        persisted blocks lazily.
        """
        k = int(c.shape[1])
        small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
        pairs = q.map_blocks(tasks.left_block, small, self.device, chunks=(q.chunks[0], (k,)), dtype=self.dtype,
                             meta=self.meta)
        u = pairs.map_blocks(operator.getitem, 0, dtype=self.dtype, meta=self.meta)
        picked = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * q.numblocks[0], (k,)),
                                  dtype=np.float64, meta=np.empty((0, 0)))
        u, picked = dask.persist(u, picked)
        signs = largest_entry_signs(np, np.asarray(picked.compute(), dtype=np.float64), axis=0)[0]
        return u.map_blocks(tasks.scale_columns_block, signs, dtype=self.dtype, meta=self.meta), signs

    # -- centring on the client ------------------------------------------------------------
    def _shift(self, c_times: np.ndarray | None = None) -> Any:
        """What every task needs of the centring (one graph key), or None without centring."""
        if not self.centred:
            return None
        c = None if self._c is None else self._c.astype(self.dtype)
        cx = None if c_times is None else np.ascontiguousarray(c_times, dtype=self.dtype)
        return delayed(Shift(c, cx))

    def _c_times(self, x: np.ndarray) -> np.ndarray:
        """``c^T X`` as a (1, l) host float64 row (``c`` the means, or ones)."""
        return (x.sum(axis=0) if self._c is None else self._c @ x)[None, :]

    def _minus_c(self, total: np.ndarray) -> np.ndarray:
        """``sum_i A_i^T Y_i - c sum_i r_i^T Y_i`` from their stacked sums (no-op without centring)."""
        if not self.centred:
            return total
        return rank_one_minus(self.backend, total[:-1], self._c, total[-1:])

    # -- helpers ---------------------------------------------------------------------------
    def _basis_pass(self, fn: Callable, cols: int, *args: Any, shift: Any, leading: int,
                    with_v: bool) -> tuple[Any, "_Stats"]:
        """A pass over ``A`` that makes a basis ``Y`` (``cols`` columns) and sums per-block statistics.

        ``fn(block, r_i, *args, shift, with_v, dtype, device)`` returns
        ``(Y_i, stats_i)``, ``stats_i`` a row of ``leading`` numbers, then
        ``T_i^T Y_i`` (``with_v``; with centring ``A_i^T Y_i`` and
        ``r_i^T Y_i``), then ``Y_i^T Y_i``.  ``Y`` is persisted, the sums come
        back, and the Gram matrix is remembered for :meth:`gram`.  One task per block
        computes all of it, so a block of ``A`` is read once however many
        results use it.
        """
        n = int(self.a.shape[1])
        v_rows = n + 1 if self.centred else n
        layout = _Stats.layout(leading, v_rows * cols if with_v else 0, cols * cols)
        pairs = da.blockwise(fn, "ij", self.a, "ij", self._r, None if self._r is None else "i",
                             *[v for arg in (*args, shift, with_v, self.dtype, self.device)
                               for v in (arg, None)],
                             dtype=self.dtype, meta=self.meta)
        y = pairs.map_blocks(operator.getitem, 0, chunks=(self.a.chunks[0], (cols,)), dtype=self.dtype,
                             meta=self.meta)
        stats = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * self.a.numblocks[0], (layout[-1],)),
                                 dtype=np.float64, meta=np.empty((0, 0)))
        y, total = dask.persist(y, stats.sum(axis=0, split_every=FAN_IN))
        sums = _Stats.split(np.asarray(total.compute(), dtype=np.float64), layout, (v_rows, cols))
        if sums.v is not None:
            sums = _Stats(sums.leading, np.ascontiguousarray(self._minus_c(sums.v), dtype=self.dtype), sums.gram)
        self._grams = {y.name: sums.gram.reshape(cols, cols)}
        return y, sums

    def _per_block(self, fn: Callable, out: str, inputs: Sequence[tuple[Any, str]], sizes: dict[str, int],
                   *args: Any) -> Any:
        """``fn`` on each row block: one host float64 array per block, stacked along a new first axis.

        ``inputs`` are ``(array, index)`` pairs, ``"i"`` naming the row
        blocks and one more letter an array's column axis (``(None, "i")``:
        ``fn`` gets None); ``out`` names the axes of one block's result and
        ``sizes`` their lengths.  Every input letter must be in ``out`` (no
        axis is contracted, so Dask can fuse the production of the input
        blocks into these tasks).  ``fn`` gets the input blocks, then ``args``
        and ``device``.
        """
        pairs: list[Any] = []
        for arr, index in inputs:
            pairs += [arr, None if arr is None else index]
        for value in (*args, self.device):
            pairs += [value, None]
        present = {letter for arr, index in inputs if arr is not None for letter in index[1:]}
        return da.blockwise(
            fn, "i" + out, *pairs,
            new_axes={ax: size for ax, size in sizes.items() if ax not in present},
            adjust_chunks={"i": 1, **{ax: size for ax, size in sizes.items() if ax in present}},
            dtype=np.float64, meta=np.empty((0,) * (1 + len(out))),
        )


def omega_in_chunks(seed: int, chunks: tuple[int, ...], width: int, dtype: np.dtype) -> Any:
    """The Philox ``Omega`` (``sum(chunks) x width``) as a lazy Dask array in row chunks ``chunks``,
    each chunk generated by the task that reads it (rows ``lo:hi`` of the whole ``Omega``)."""
    return da.map_blocks(tasks.omega_block, seed, width, dtype, chunks=(chunks, (width,)), dtype=dtype,
                         meta=np.empty((0, 0), dtype=dtype))


def omega_rows(seed: int, rows: int, width: int, dtype: np.dtype, c: np.ndarray | None) -> np.ndarray:
    """``c^T Omega`` needs ``Omega``'s rows: all of them for ``c = mu``; for ``c = 1`` their column
    sums, generated in pieces of ``width``-column rows so that a long side never lives on the client
    whole.  Returns an ``X`` with ``c^T X = c^T Omega`` (float64, ``Omega`` as the blocks make it)."""
    if c is not None:
        return philox.omega(seed, rows, width, dtype).astype(np.float64)
    step = max(1, (1 << 20) // max(1, width))
    total = np.zeros((1, width))
    for row0 in range(0, rows, step):
        piece = philox.omega(seed, min(step, rows - row0), width, dtype, row0=row0)
        total += piece.sum(axis=0, dtype=np.float64)
    return total


@dataclass(frozen=True)
class _Stats:
    """The summed statistics of a basis pass: leading numbers, ``V = A^T Y`` (or None), ``Y^T Y`` (flat)."""

    leading: np.ndarray
    v: np.ndarray | None
    gram: np.ndarray

    @staticmethod
    def layout(leading: int, v: int, gram: int) -> tuple[int, int, int]:
        """Where the parts of a statistics row end."""
        return leading, leading + v, leading + v + gram

    @classmethod
    def split(cls, row: np.ndarray, layout: tuple[int, int, int], v_shape: tuple[int, int]) -> "_Stats":
        lead, v_end, end = layout
        v = None if v_end == lead else row[lead:v_end].reshape(v_shape)
        return cls(row[:lead], v, row[v_end:end])
