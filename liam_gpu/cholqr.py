"""Orthonormal bases of tall-skinny matrices without a panel QR: CholeskyQR2 and its fallbacks.

The randomized SVD orthonormalizes ``m x l`` and ``n x l`` blocks (``l`` at
most a few hundred) after every product with ``A``.  Householder QR of such a
block is a sequence of ``l`` memory-bound panel steps; CholeskyQR needs one
Gram reduction (``G = Y^T Y``, a tall-skinny kernel), a Cholesky factorization
of the small ``l x l`` matrix and one triangular apply (``Q = Y R^-1``).  The
small factorizations run on the host in float64 for every backend: ``l`` is
small, and float64 there removes the float32 fragility of CholeskyQR.

Precision, with ``u`` the unit roundoff of float64 (``2**-53``):

* The Gram matrix is accumulated in float64 even for float32 data (products of
  floats are exact in double), so ``R`` is accurate while
  ``cond(Y)**2 * 11 (m l + l (l + 1)) u <= 1`` (a worst-case bound: up to
  ``cond(Y) ~ 1e5`` for ``m l ~ 1e5``), where float32 CholeskyQR would stop
  near ``cond(Y) ~ 1e2``.
* :func:`cholesky_qr` (final bases) is CholeskyQR2: two passes make ``Q``
  orthonormal to the working precision of ``Y``'s dtype (Yamamoto, Nakatsukasa,
  Yanagisawa & Fukaya 2015).  The second pass always uses a float64 Gram
  matrix; the first may use float32 (last point).
* Beyond that condition number the Gram matrix is numerically singular:
  shifted CholeskyQR (Fukaya, Kannan, Nakatsukasa, Zhang & Yamamoto 2020)
  factors ``G + s I`` with ``s = 11 (m l + l (l + 1)) u ||Y||_F^2``, which
  improves the condition number by a factor ~ ``1 / sqrt(s)`` per step; after
  at most :data:`MAX_SHIFTED_STEPS` shifted steps CholeskyQR2 finishes
  (shifted CholeskyQR3).
* An exactly rank-deficient block (a zero or repeated column, a matrix of
  rank below ``l``) never becomes well conditioned: it falls back to
  Householder QR, whose ``Q`` is orthonormal whatever the rank.
* The apply ``Q = Y R^-1`` runs in ``Y``'s own precision: its rounding
  (``u |Y| |R^-1|``) costs orthogonality of order ``u cond(Y)``, which the
  second pass removes, so float64 there would buy nothing.
* :func:`orthonormal_basis` (the power iterations, where only the span and a
  good conditioning matter) takes the first pass only.  For float32 data the
  first pass tries a float32 Gram matrix.  Its rounding is ``~ sqrt(m) u32 ||G||`` with high
  probability (Higham & Mary 2019), which moves ``cond(Q)`` by
  ``cond(R)**2 sqrt(m) u32``; it is accepted when that is at most 1/2.

Condition numbers are bounded by ``||R||_F ||R^-1||_F`` (at least the 2-norm
condition number, typically a few times it; the inverse is needed for the
apply anyway), so every acceptance test errs on the safe side.  All host work uses numpy's LAPACK only (see
:func:`~liam_gpu.backends.base.upper_inverse` for why not scipy's).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backends.base import upper_inverse

#: Unit roundoff of float64 and float32.
U64 = 2.0**-53
U32 = 2.0**-24
#: Shifted CholeskyQR steps tried before Householder QR.
MAX_SHIFTED_STEPS = 3


def cholesky_factor(g: np.ndarray) -> np.ndarray | None:
    """The upper Cholesky factor ``R`` (``G = R^T R``) of a host matrix, or None.

    None when ``G`` is not numerically positive definite (LAPACK refuses it, or
    it holds NaN/Inf).
    """
    g = np.asarray(g, dtype=np.float64)
    if not np.isfinite(g).all():
        return None
    try:
        lower = np.linalg.cholesky(g)
    except np.linalg.LinAlgError:
        return None
    r = np.ascontiguousarray(lower.T)
    if not np.isfinite(r).all() or not (np.diag(r) > 0).all():
        return None
    return r


class Factor:
    """A Cholesky factor ``R``, its inverse and a bound on its condition number (host float64)."""

    __slots__ = ("r", "rinv", "cond")

    def __init__(self, r: np.ndarray) -> None:
        self.r = r
        self.rinv = upper_inverse(r)
        # ||R||_F ||R^-1||_F >= cond_2(R): a conservative bound that costs two norms.
        cond = float(np.linalg.norm(r) * np.linalg.norm(self.rinv))
        self.cond = cond if math.isfinite(cond) else float("inf")

    def apply(self, backend: Any, y: Any, accumulate: Any = np.float64) -> Any:
        """``y @ inv(R)`` on the backend."""
        return backend.tri_apply(y, self.r, accumulate=accumulate, rinv=self.rinv)


def factor_gram(g: np.ndarray) -> Factor | None:
    """:class:`Factor` of a Gram matrix, or None when it is not numerically positive definite."""
    r = cholesky_factor(g)
    return None if r is None else Factor(r)


def _cholqr_bound(m: int, l: int) -> float:
    """``11 (m l + l (l + 1)) u``: CholeskyQR is reliable while ``cond**2`` times this is <= 1."""
    return 11.0 * (m * l + l * (l + 1)) * U64


def first_factor(backend: Any, y: Any) -> Factor | None:
    """The Cholesky factor of ``y``'s Gram matrix that one reliable CholeskyQR pass needs, or None.

    float32 data tries a float32 Gram matrix first (cheaper), then float64;
    None when neither passes its test (the shifted or Householder route is
    needed).
    """
    m, l = (int(d) for d in y.shape)
    if y.dtype == np.float32:
        f = factor_gram(backend.gram(y, accumulate=np.float32))
        if f is not None and f.cond**2 * math.sqrt(m) * U32 <= 0.5:
            return f
    f = factor_gram(backend.gram(y))
    if f is not None and f.cond**2 * _cholqr_bound(m, l) <= 1.0:
        return f
    return None


def apply_dtype(y: Any) -> Any:
    """The accumulator of ``Y R^-1``: ``Y``'s own dtype (see the module notes)."""
    return np.float32 if y.dtype == np.float32 else np.float64


def _first_pass(backend: Any, y: Any) -> tuple[Any, np.ndarray] | None:
    """One CholeskyQR pass ``y = Q1 R1`` with ``cond(Q1)`` close to 1, or None if unreliable."""
    f = first_factor(backend, y)
    return None if f is None else (f.apply(backend, y, apply_dtype(y)), f.r)


def _second_pass(backend: Any, q1: Any, r1: np.ndarray) -> tuple[Any, np.ndarray] | None:
    """CholeskyQR of a well-conditioned ``q1`` with a float64 Gram matrix, folding in ``r1``."""
    f2 = factor_gram(backend.gram(q1))
    if f2 is None:
        return None
    return f2.apply(backend, q1, apply_dtype(q1)), f2.r @ r1


def orthonormal_basis(backend: Any, y: Any) -> Any:
    """A well-conditioned basis of ``span(y)`` (one CholeskyQR pass), for power iterations.

    Parameters
    ----------
    backend
        The :class:`~liam_gpu.backends.base.Backend` that owns ``y``.
    y
        ``(m, l)`` C-contiguous backend array, ``m >= l``.

    Returns
    -------
    array
        ``(m, l)`` with the span of ``y`` and condition number close to 1 (not
        necessarily orthonormal to working precision).
    """
    first = _first_pass(backend, y)
    return first[0] if first is not None else cholesky_qr(backend, y)[0]


def cholesky_qr(backend: Any, y: Any) -> tuple[Any, np.ndarray]:
    """Thin QR ``y = Q R`` of a tall-skinny backend array, ``Q`` orthonormal to working precision.

    CholeskyQR2; shifted CholeskyQR3 for a numerically singular Gram matrix;
    Householder QR for a rank-deficient ``y`` (see the module notes).

    Parameters
    ----------
    backend
        The backend that owns ``y``.
    y
        ``(m, l)`` C-contiguous backend array, ``m >= l``.

    Returns
    -------
    Q
        ``(m, l)`` backend array of ``y``'s dtype.
    R
        ``(l, l)`` upper-triangular host float64 array.
    """
    m, l = (int(d) for d in y.shape)
    first = _first_pass(backend, y)
    done = None if first is None else _second_pass(backend, *first)
    if done is not None:
        return done
    work, r_total = y, np.eye(l)
    for _ in range(MAX_SHIFTED_STEPS):
        g = backend.gram(work)
        shift = _cholqr_bound(m, l) * float(np.trace(g))
        f = factor_gram(g + shift * np.eye(l))
        if f is None:
            break
        work, r_total = f.apply(backend, work, apply_dtype(work)), f.r @ r_total
        first = _first_pass(backend, work)
        done = None if first is None else _second_pass(backend, *first)
        if done is not None:
            q, r2 = done
            return q, r2 @ r_total
    return backend.householder_qr(y)
