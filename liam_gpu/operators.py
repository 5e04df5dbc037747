"""The matrices the SVD engine factors, as operators: products, norms, and where bases live.

The engine (:mod:`liam_gpu.rangefinder`) never touches a matrix's entries.  It
sees a *tall* operator ``T`` (``mt >= nt``; a wide matrix is presented as its
transpose, ``swapped``) through this protocol:

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
``left(q, c, flip)``        ``U = Q C`` and, ``flip``, scikit-learn's column
                            signs of ``U`` (applied)
``dense_svd()``             the exact thin SVD of ``T``, or None where a
                            dense factorization is not on offer
==========================  ================================================

Sparse and centred operators (the next step) implement the same protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import validation

#: Elements of ``T`` per row block of :meth:`DenseOperator.residual_sq` (16 MiB of float32).
_RESIDUAL_BLOCK = 1 << 22


@dataclass(frozen=True)
class DenseOperator:
    """A 2-D C-contiguous backend array read as the tall operator ``T``.

    ``T = data.T`` when ``trans`` (an F-contiguous input read through its
    C-contiguous transpose, or a wide matrix); ``swapped`` records that ``T``
    is the transpose of the caller's matrix, so the factors swap on the way out.
    """

    backend: Any
    data: Any
    trans: bool
    swapped: bool

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

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def space(self) -> Any:
        return self.backend

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any | None]:
        if with_v:
            return self.backend.sketch_pass(self.data, seed, l, trans=self.trans, col0=col0)
        return self.backend.sketch(self.data, seed, l, trans=self.trans, col0=col0), None

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any | None]:
        if with_v:
            return self.backend.power_pass(self.data, w, trans=self.trans)
        return self.backend.matmul(self.data, w, trans=self.trans), None

    def t_times(self, y: Any) -> Any:
        return self.backend.matmul(self.data, y, trans=not self.trans)

    def sum_squares(self) -> float:
        return self.backend.sum_squares(self.data)

    def residual_sq(self, q: Any, bt: Any) -> float:
        # ||T - Q Bt^T|| = ||data - L R^T|| with (L, R) = (Q, Bt), or (Bt, Q) for T = data^T:
        # either way, row blocks of ``data`` against row blocks of L.
        left, right = (bt, q) if self.trans else (q, bt)
        rows, cols = (int(d) for d in self.data.shape)
        step = max(1, _RESIDUAL_BLOCK // max(1, cols))
        total = 0.0
        for start in range(0, rows, step):
            part = self.data[start:start + step] - self.backend.matmul(left[start:start + step], right.T)
            total += self.backend.sum_squares(part)
        return total

    def require_finite(self, y: Any) -> None:
        """Raise the input error if ``y`` holds NaN/Inf (see the module notes of :mod:`liam_gpu.svd`)."""
        xp = self.backend.xp
        if bool(xp.isfinite(xp.asarray(y)).all()):
            return
        validation.check_finite("a", self.data)
        raise ValueError(f"a is finite but so large that its products overflow {self.dtype}; scale it down")

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        u = self.backend.matmul(q, self.backend.asarray(np.ascontiguousarray(c, dtype=self.dtype)))
        if not flip:
            return u, None
        xp = self.backend.xp
        picked = xp.take_along_axis(u, xp.argmax(xp.abs(u), axis=0)[None, :], axis=0)[0]
        signs = np.where(self.backend.to_host(picked) < 0, -1.0, 1.0)
        u *= self.backend.asarray(signs.astype(self.dtype))
        return u, signs

    def dense_svd(self) -> tuple[Any, np.ndarray, Any]:
        """``(U, s, Vt)`` of ``T``: LAPACK's ``gesdd`` through the backend's array module."""
        x = self.data.T if self.trans else self.data
        u, s, vt = self.backend.xp.linalg.svd(x, full_matrices=False)
        return self.backend.xp.ascontiguousarray(u), self.backend.to_host(s).astype(np.float64), vt
