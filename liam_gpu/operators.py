"""The matrices the SVD engine factors, as operators: products, norms, and where bases live.

The engine (:mod:`liam_gpu.rangefinder`) never touches a matrix's entries.  It
sees an operator ``T``, tall (``mt >= nt``) wherever the operator can choose
(a wide matrix is presented as its transpose, ``swapped``), through this
protocol:

==========================  ================================================
``shape``, ``dtype``        ``(mt, nt)``; the dtype computed in
``space``                   owner of the ``mt x l`` bases: ``gram``,
                            ``tri_apply``, ``householder_qr``, ``matmul``
                            (a backend in memory; the cluster for Dask)
``backend``                 owner of the ``nt x l`` bases (always in memory)
``sketch(seed, l, col0,     ``Y = T Omega[:, col0:col0 + l]`` (Philox) and,
with_v)``                   ``with_v``, ``V = T^T Y`` from the same pass
``power(w, with_v)``        ``Y = T W`` and, ``with_v``, ``V = T^T Y``
``t_times(y)``              ``T^T Y``
``sum_squares()``           ``||T||_F^2`` (float64)
``residual_sq(q, bt)``      ``||T - Q Bt^T||_F^2`` (float64), one pass
``require_finite(y)``       raise the input's error if ``y`` (made from
                            ``T``) is not finite
``left(q, c, flip)``        ``U = Q C`` (``c`` an int ``k``: ``Q[:, :k]``)
                            and, ``flip``, scikit-learn's column signs of
                            ``U`` (applied)
``transpose(x)``            ``x^T`` of a basis-space array (a swapped
                            operator's ``Vt``; lazy for Dask)
``dense_svd()``             the exact thin SVD of ``T`` (only operators
                            that offer a dense factorization define it)
``with_tf32()``             the same operator whose ``sketch``, ``power``
                            and ``t_times`` may use TF32 tensor cores
                            (``precision="tf32"``; optional: an operator
                            without it computes every pass in its dtype)
==========================  ================================================

Here: :class:`DenseOperator` (a backend array), :class:`SparseOperator`
(scipy.sparse or cupyx.scipy.sparse) and :class:`RankOneUpdate` (``T0 - a b^T``: centring);
:class:`liam_gpu.dask.DaskOperator` implements the protocol over Dask.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import validation

#: Elements of ``T`` per row block of :meth:`DenseOperator.residual_sq` (16 MiB of float32).
_RESIDUAL_BLOCK = 1 << 22


def _row_blocks(rows: int, cols: int):
    """Row ranges of about :data:`_RESIDUAL_BLOCK` elements."""
    step = max(1, _RESIDUAL_BLOCK // max(1, cols))
    return ((start, min(rows, start + step)) for start in range(0, rows, step))


def left_factor(backend: Any, dtype: Any, q: Any, c: np.ndarray | int, *,
                flip: bool) -> tuple[Any, np.ndarray | None]:
    """``U = Q C`` in ``backend`` (``c`` an int ``k``: ``C = I[:, :k]``, a copy of ``Q``'s first
    columns) and, with ``flip``, scikit-learn's column signs of ``U`` (applied, and returned)."""
    if isinstance(c, int):
        u = backend.xp.array(q[:, :c], order="C")
    else:
        u = backend.matmul(q, backend.asarray(np.ascontiguousarray(c, dtype=dtype)))
    if not flip:
        return u, None
    signs = largest_entry_signs(backend.xp, u, axis=0)
    u *= signs
    return u, backend.to_host(signs)[0].astype(np.float64)


def largest_entries(xp: Any, a: Any, axis: int) -> Any:
    """Each vector's entry of largest magnitude along ``axis`` of ``a``, signed, the first on ties;
    the length-1 ``axis`` kept.  Of the parts of a vector (row blocks of a Dask factor), the largest
    of the parts' largest entries is the vector's."""
    return xp.take_along_axis(a, xp.expand_dims(xp.argmax(xp.abs(a), axis=axis), axis), axis=axis)


def largest_entry_signs(xp: Any, a: Any, axis: int) -> Any:
    """scikit-learn's ``svd_flip`` convention: ``+1`` or ``-1`` per vector along ``axis`` of ``a``
    (stacks too), making each vector's largest-magnitude entry positive.  Same dtype as ``a``, the
    length-1 ``axis`` kept, so ``a * signs`` applies it."""
    return xp.where(largest_entries(xp, a, axis) < 0, -1, 1).astype(a.dtype)


def rank_one_minus(backend: Any, x: Any, left: np.ndarray | None, row: Any) -> Any:
    """``x - left row``: the correction of :class:`RankOneUpdate` (``T0 X - a (b^T X)``,
    ``T0^T Y - b (a^T Y)``), on all of ``x`` or on one block of its rows.

    ``x`` (rows, l) is a ``backend`` array, ``left`` a host float64 vector of its
    rows (None: ones), ``row`` a (1, l) ``backend`` array; computed in ``x``'s dtype.
    """
    if left is None:
        return x - row  # 1 * row is row: the same as a vector of ones
    return x - backend.asarray(np.ascontiguousarray(left, dtype=x.dtype))[:, None] * row


def vector_times(backend: Any, v: np.ndarray, y: Any, dtype: Any) -> Any:
    """``v^T Y`` as a (1, l) ``backend`` array, for a host float64 vector ``v`` made ``dtype``:
    the ``a^T Y`` and ``b^T X`` of :class:`RankOneUpdate`, of all rows or one block's."""
    return backend.asarray(np.ascontiguousarray(v, dtype=dtype))[None, :] @ y


def centred_sum_squares(norm2: float, a_t0_b: float, a: np.ndarray, b: np.ndarray) -> float:
    """``||T0 - a b^T||_F^2 = ||T0||^2 - 2 a^T T0 b + ||a||^2 ||b||^2`` from ``||T0||^2`` and
    ``a^T T0 b``, all float64 (for sparse ``T0``, whose products with a float64 vector are float64:
    the cancellation costs ~1e-16 relative); clipped at 0."""
    return max(norm2 - 2.0 * a_t0_b + float(a @ a) * float(b @ b), 0.0)


def canonical_csr(a: Any, dtype: Any) -> Any:
    """``a`` (any format of its sparse library) as CSR of ``dtype`` with its duplicates summed.

    ``sum_duplicates`` works in place (and cuSPARSE's SpMM asks for canonical
    CSR): it runs on a copy, never on the caller's own matrix.
    """
    csr = a.tocsr().astype(dtype, copy=False)
    if not csr.has_canonical_format:
        csr = csr.copy() if csr is a else csr
        csr.sum_duplicates()
    return csr


class _InMemory:
    """What the in-memory operators share: ``backend`` owns every basis, ``data`` holds the entries."""

    backend: Any
    data: Any

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def space(self) -> Any:
        return self.backend

    def _entries(self) -> Any:
        """The stored values, for the finiteness check."""
        return self.data

    def require_finite(self, y: Any) -> None:
        """Raise the input error if ``y`` (made from ``T``) holds NaN/Inf.

        NaN or Inf anywhere in ``T`` reaches the sketch (no entry of ``Omega``
        is zero), so checking ``y`` replaces a pass over ``T``; only when it
        fires are the entries inspected, for the usual message.
        """
        xp = self.backend.xp
        if bool(xp.isfinite(xp.asarray(y)).all()):
            return
        validation.check_finite("a", self._entries())
        raise ValueError(f"a is finite but so large that its products overflow {self.dtype}; scale it down")

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        return left_factor(self.backend, self.dtype, q, c, flip=flip)

    def transpose(self, x: Any) -> Any:
        """``x^T`` of a basis-space array, C-contiguous (a swapped operator's ``Vt``)."""
        return self.backend.xp.ascontiguousarray(x.T)


@dataclass(frozen=True)
class DenseOperator(_InMemory):
    """A 2-D C-contiguous backend array read as the tall operator ``T``.

    ``T = data.T`` when ``trans`` (an F-contiguous input read through its
    C-contiguous transpose, or a wide matrix); ``swapped`` records that ``T``
    is the transpose of the caller's matrix, so the factors swap on the way out.
    """

    backend: Any
    data: Any
    trans: bool
    swapped: bool
    #: The range finder's passes may run on TF32 tensor cores (:meth:`with_tf32`).
    tf32: bool = False

    @classmethod
    def of(cls, backend: Any, data: Any, transposed: bool = False) -> "DenseOperator":
        """The tall view of the caller's matrix ``data`` (or ``data.T`` when ``transposed``)."""
        rows, cols = (data.shape[1], data.shape[0]) if transposed else data.shape
        if rows >= cols:
            return cls(backend, data, transposed, False)
        return cls(backend, data, not transposed, True)

    @property
    def shape(self) -> tuple[int, int]:
        r, c = (int(d) for d in self.data.shape)
        return (c, r) if self.trans else (r, c)

    def with_tf32(self) -> "DenseOperator":
        """This operator with its products allowed TF32 (float32 data only; else itself).

        The engine uses it for the sketch and power passes only: the final
        projection ``B = Q^T T``, the norms and the residual stay in the dtype.
        """
        return replace(self, tf32=True) if np.dtype(self.data.dtype) == np.float32 else self

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any | None]:
        if with_v:
            return self.backend.sketch_pass(self.data, seed, l, trans=self.trans, col0=col0, tf32=self.tf32)
        return self.backend.sketch(self.data, seed, l, trans=self.trans, col0=col0), None

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any | None]:
        if with_v:
            return self.backend.power_pass(self.data, w, trans=self.trans, tf32=self.tf32)
        return self.backend.matmul(self.data, w, trans=self.trans, tf32=self.tf32), None

    def t_times(self, y: Any) -> Any:
        return self.backend.matmul(self.data, y, trans=not self.trans, tf32=self.tf32)

    def sum_squares(self) -> float:
        return self.backend.sum_squares(self.data)

    def residual_sq(self, q: Any, bt: Any) -> float:
        # ||T - Q Bt^T|| = ||data - L R^T|| with (L, R) = (Q, Bt), or (Bt, Q) for T = data^T:
        # either way, row blocks of ``data`` against row blocks of L.
        left, right = (bt, q) if self.trans else (q, bt)
        total = 0.0
        for lo, hi in _row_blocks(*(int(d) for d in self.data.shape)):
            total += self.backend.sum_squares(self.data[lo:hi] - self.backend.matmul(left[lo:hi], right.T))
        return total

    def dense_svd(self) -> tuple[Any, np.ndarray, Any]:
        """``(U, s, Vt)`` of ``T``: LAPACK's ``gesdd`` through the backend's array module."""
        x = self.data.T if self.trans else self.data
        u, s, vt = self.backend.xp.linalg.svd(x, full_matrices=False)
        return self.backend.xp.ascontiguousarray(u), self.backend.to_host(s).astype(np.float64), vt


@dataclass(frozen=True)
class SparseOperator(_InMemory):
    """A sparse matrix as the tall operator ``T``, never densified, on any in-memory backend.

    One class for every sparse library: ``data`` is a CSR matrix of the
    backend's array module -- scipy.sparse for numpy backends (``cpu``,
    ``emulator``), cupyx.scipy.sparse for a CUDA backend -- and the products
    are that library's sparse-times-dense (scipy's SpMM; cuSPARSE's through
    cupyx).  ``data`` holds the rows of ``T`` as CSR and ``data_t`` is ``T^T``,
    both made once: for a tall scipy ``T`` the CSC view ``data.T`` (scipy's
    SpMM of a CSC matrix into the short side measured faster than a
    transposed copy, and needs no second copy of ``A``), otherwise a
    transposed CSR.  ``swapped``: ``T`` is the transpose of the
    caller's (wide) matrix.  Bases live in ``backend``; the test matrix Omega
    is made there (``backend.omega``: :func:`liam_gpu.philox.omega` on the
    CPU, the Philox generator kernel on the emulator and a GPU).  The entries are read only:
    the caller's matrix is never modified (a non-canonical one is copied
    before its duplicates are summed).
    """

    backend: Any
    data: Any
    data_t: Any
    swapped: bool

    @classmethod
    def of(cls, backend: Any, a: Any, dtype: Any) -> "SparseOperator":
        """The tall view of ``a`` (any format of the backend's sparse library), converted once to ``dtype`` CSR."""
        csr = canonical_csr(a, dtype)
        rows, cols = csr.shape
        if rows >= cols:
            # scipy multiplies A^T through A's CSR read as CSC (a view, no second copy
            # of A): 74 ms against 126 ms for a transposed CSR copy at 100000 x 50000,
            # density 1e-3, 110 columns (tests/bench: compare_sparse_pca_cpu.py).
            # cuSPARSE keeps its transposed CSR.
            return cls(backend, csr, csr.T if backend.xp is np else csr.T.tocsr(), False)
        return cls(backend, csr.T.tocsr(), csr, True)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(d) for d in self.data.shape)

    def _entries(self) -> Any:
        return self.data.data

    def _times(self, m: Any, x: Any) -> Any:
        # cuSPARSE's SpMM answers in Fortran order; the engine's bases are C-contiguous.
        return self.backend.xp.ascontiguousarray(m @ x, dtype=self.dtype)

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any | None]:
        omega = self.backend.omega(seed, self.shape[1], l, self.dtype, col0=col0)
        with np.errstate(over="ignore", invalid="ignore"):  # reported by the caller, from Y
            y = self._times(self.data, omega)
        return y, (self.t_times(y) if with_v else None)

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any | None]:
        y = self._times(self.data, w)
        return y, (self.t_times(y) if with_v else None)

    def t_times(self, y: Any) -> Any:
        return self._times(self.data_t, y)

    def sum_squares(self) -> float:
        return self.backend.sum_squares(self.data.data)

    def times_host(self, m: Any, v: np.ndarray) -> np.ndarray:
        """``m v`` in float64 for ``m`` one of ``data``/``data_t`` and a host vector ``v``, as a host float64 array.

        The sums of centring (column sums, ``a^T T0 b``) must not cancel in
        float32: ``m``'s values are widened (a temporary copy of them).
        """
        wide = m.astype(np.float64, copy=False)
        return np.asarray(self.backend.to_host(wide @ self.backend.asarray(np.asarray(v, dtype=np.float64))),
                          dtype=np.float64)

    def column_sums(self) -> np.ndarray:
        """The column sums of the caller's matrix (host float64, its ``n`` columns)."""
        a_t = self.data if self.swapped else self.data_t  # the caller's A^T as CSR
        return self.times_host(a_t, np.ones(int(a_t.shape[1])))

    def residual_sq(self, q: Any, bt: Any) -> float:
        # Row blocks of T made dense one at a time: a bounded temporary, never all of T.
        xp, total = self.backend.xp, 0.0
        for lo, hi in _row_blocks(self.shape[0], self.shape[1]):
            part = self.data[lo:hi].toarray() - q[lo:hi] @ bt.T
            total += self.backend.sum_squares(xp.ascontiguousarray(part))
        return total


@dataclass(frozen=True)
class RankOneUpdate:
    """``T = T0 - a b^T`` for an operator ``T0``, applied inside the products, never formed.

    Centring is this update: for the caller's ``A - 1 mu^T`` with ``T0 = A``,
    ``(a, b) = (1, mu)``; when ``T0 = A^T`` (a wide ``A``), ``(a, b) = (mu, 1)``.
    ``a`` (mt,) and ``b`` (nt,) are host float64 vectors; ``unit`` names the one
    that is all ones (``"a"``, ``"b"`` or ``""``), whose products are skipped
    (``x - 1 row`` is ``x - row``: no ones vector made or moved per pass).
    """

    base: Any
    a: np.ndarray
    b: np.ndarray
    unit: str = ""

    def with_tf32(self) -> "RankOneUpdate":
        """The update over the base's :meth:`~DenseOperator.with_tf32` (where the base has one)."""
        base = self.base.with_tf32() if hasattr(self.base, "with_tf32") else self.base
        return replace(self, base=base)

    @classmethod
    def centred(cls, op: Any, mean: np.ndarray) -> "RankOneUpdate":
        """``op`` minus the column means ``mean`` (length ``n`` of the caller's matrix) of every row."""
        mt, nt = op.shape
        mean = np.asarray(mean, dtype=np.float64)
        if op.swapped:
            return cls(op, mean, np.ones(nt), unit="b")
        return cls(op, np.ones(mt), mean, unit="a")

    shape = property(lambda self: self.base.shape)
    dtype = property(lambda self: self.base.dtype)
    swapped = property(lambda self: self.base.swapped)
    space = property(lambda self: self.base.space)
    backend = property(lambda self: self.base.backend)

    def _vec(self, v: np.ndarray) -> Any:
        return self.backend.asarray(np.ascontiguousarray(v, dtype=self.dtype))

    def _minus(self, x: Any, side: str, right_t_x: Any) -> Any:
        """``x - v right_t_x`` for the vector ``v`` named ``side`` (``"a"`` or ``"b"``) and a row (1, l)."""
        return rank_one_minus(self.backend, x, None if side == self.unit else getattr(self, side), right_t_x)

    # Y is centred before T^T Y is formed, so the update gives up the base's fused
    # (Y, T0^T Y) pass: forming T^T Y from T0^T T0 X cancels at the scale of
    # ||T0||^2 instead of ||T0|| ||T||.  Measured (pca, 2000 x 300 float32, mean
    # 30): explained variance off by 0.21 fused against 2.8e-5 unfused.

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any | None]:
        from . import philox

        y0, _ = self.base.sketch(seed, l, col0)
        b_omega = self._vec(self.b @ philox.omega(seed, self.shape[1], l, np.float64, col0=col0))[None, :]
        y = self._minus(y0, "a", b_omega)
        return y, (self.t_times(y) if with_v else None)

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any | None]:
        y = self._minus(self.base.power(w)[0], "a", vector_times(self.backend, self.b, w, self.dtype))
        return y, (self.t_times(y) if with_v else None)

    def t_times(self, y: Any) -> Any:
        """``T^T Y = T0^T Y - b (a^T Y)``."""
        return self._minus(self.base.t_times(y), "b", vector_times(self.backend, self.a, y, self.dtype))

    def sum_squares(self) -> float:
        if isinstance(self.base, SparseOperator):
            # The sparse product with a float64 vector is float64: the formula does not cancel.
            t0_b = self.base.times_host(self.base.data, self.b)
            return centred_sum_squares(self.base.sum_squares(), float(self.a @ t0_b), self.a, self.b)
        # Dense: entry by entry, row block by row block (T0_ij - a_i b_j rounds like an explicit
        # centring; the formula above would cancel in the data's own precision).
        return self.base.residual_sq(self._vec(self.a)[:, None], self._vec(self.b)[:, None])

    def residual_sq(self, q: Any, bt: Any) -> float:
        # T - Q Bt^T = T0 - [Q, a] [Bt, b]^T: the base's residual against one more column.
        qa = self.backend.xp.concatenate([q, self._vec(self.a)[:, None]], axis=1)
        btb = self.backend.xp.concatenate([bt, self._vec(self.b)[:, None]], axis=1)
        return self.base.residual_sq(qa, btb)

    def require_finite(self, y: Any) -> None:
        self.base.require_finite(y)

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        return self.base.left(q, c, flip=flip)

    def transpose(self, x: Any) -> Any:
        return self.base.transpose(x)
