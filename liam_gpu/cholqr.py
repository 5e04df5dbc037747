"""Bases of tall-skinny matrices without a panel QR: shifted CholeskyQR with a fixed pass count.

The randomized SVD orthonormalizes ``m x l`` blocks (``l`` at most a few
hundred) after every product with ``A``.  Householder QR of such a block is a
chain of ``l`` memory-bound panel steps (and on a GPU, ``l`` launches);
CholeskyQR needs one Gram reduction ``G = Y^T Y`` (a tall-skinny kernel, one
device sync), a Cholesky factorization of the small ``l x l`` matrix on the
host in float64 and one triangular apply ``Y R^-1``.

Every call makes a **fixed number of Gram reductions, whatever the data**:

* :func:`basis_pass` (power iterations: a well-conditioned basis is enough):
  one pass of *shifted* CholeskyQR.  ``G + s I`` with
  ``s = 11 (m l + l (l + 1)) u ||Y||_F^2`` (``u = 2**-53``: the Gram matrix is
  accumulated in float64 even for float32 data) is positive definite in
  floating point for every finite ``Y`` (Fukaya, Kannan, Nakatsukasa, Zhang &
  Yamamoto 2020), so the factorization cannot fail.  Directions of ``Y``
  above ``sqrt(s)`` come out with unit scale; weaker ones are damped by
  ``sigma / sqrt(s)`` but kept, and the next product restores them.
* :func:`orthonormalize` (final bases: orthonormal to working precision):
  shifted CholeskyQR3, three Gram reductions -- two shifted passes, then a
  plain one.  After the first pass ``cond(Q1) <= O(u^-1/2)`` for any
  ``cond(Y) <= O(u^-1)``, which the next two passes turn into
  ``||Q^T Q - I|| = O(u_data)`` (the second pass is shifted too, so that it
  cannot fail either; its shift is negligible for a well-conditioned ``Q1``).
* Only a ``Y`` that is **numerically rank-deficient** (directions below the
  rounding of its own dtype: a zero column, a constant matrix, ``k`` above
  the rank of ``A``) can leave the third Gram matrix far from the identity.
  That is detected on the third pass and answered, once, by a Householder QR
  of the well-scaled second-pass basis: ``Q`` is orthonormal whatever the
  rank, and its extra columns span directions ``A`` does not have (they meet
  zero singular values later).  No loop retries anything.

The apply ``Q = Y R^-1`` runs in ``Y``'s own dtype; its rounding costs
orthogonality of order ``u_data cond``, which the following pass removes.
Triangular inverses come from :func:`liam_gpu.backends.base.upper_inverse`
(a blocked recursion over numpy's LAPACK: 0.35 against 1.37 ms for a
general inverse at ``l = 210``, one thread; scipy's ``trtri`` was rejected,
see its docstring).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backends.base import upper_inverse

#: Unit roundoff of float64 (the Gram matrices' precision).
U64 = 2.0**-53
#: The third Gram matrix of :func:`orthonormalize` must be this close to the
#: identity (largest entry of ``G - I``); farther means numerical rank deficiency.
RANK_DEFICIENT_GAP = 0.5


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
    """A triangular factor ``R``, its inverse and a bound on its condition number (host float64)."""

    __slots__ = ("r", "rinv", "cond")

    def __init__(self, r: np.ndarray) -> None:
        self.r = r
        self.rinv = upper_inverse(r)
        # ||R||_F ||R^-1||_F >= cond_2(R): a conservative bound that costs two norms.
        cond = float(np.linalg.norm(r) * np.linalg.norm(self.rinv))
        self.cond = cond if math.isfinite(cond) else float("inf")

    def apply(self, space: Any, y: Any) -> Any:
        """``y @ inv(R)`` by ``space`` (a backend, or an operator's basis space), in ``y``'s dtype."""
        return space.tri_apply(y, self.r, accumulate=apply_dtype(y), rinv=self.rinv)


def apply_dtype(y: Any) -> Any:
    """The accumulator of ``Y R^-1``: ``Y``'s own dtype (see the module notes)."""
    return np.float32 if y.dtype == np.float32 else np.float64


def shift(m: int, g: np.ndarray) -> float:
    """The shift ``11 (m l + l (l + 1)) u trace(G)`` that makes ``G + s I`` safely positive definite."""
    l = int(g.shape[0])
    return 11.0 * (m * l + l * (l + 1)) * U64 * float(np.trace(g))


def shifted_factor(m: int, g: np.ndarray) -> Factor | None:
    """:class:`Factor` of ``G + shift(G) I``; None only for a zero or non-finite ``G``."""
    g = np.asarray(g, dtype=np.float64)
    if not np.isfinite(g).all() or not np.trace(g) > 0:
        return None
    r = cholesky_factor(g + shift(m, g) * np.eye(g.shape[0]))
    return None if r is None else Factor(r)


def basis_pass(space: Any, y: Any) -> tuple[Any, Factor | None]:
    """One shifted CholeskyQR pass: a well-conditioned basis of ``span(y)`` and its factor.

    Parameters
    ----------
    space
        The backend (or an operator's basis space) that owns ``y``: it
        supplies ``gram``, ``tri_apply`` and ``householder_qr``.
    y
        ``(m, l)`` array, ``m >= l``.

    Returns
    -------
    basis, factor
        ``y @ inv(R)`` and ``R`` (a :class:`Factor`); for a zero or
        non-finite ``y``, Householder's ``Q`` and None.
    """
    f = shifted_factor(int(y.shape[0]), space.gram(y))
    if f is None:
        return space.householder_qr(y)[0], None
    return f.apply(space, y), f


def orthonormalize(space: Any, y: Any) -> tuple[Any, np.ndarray]:
    """Thin QR ``y = Q R`` of a tall-skinny array, ``Q`` orthonormal to working precision.

    Shifted CholeskyQR3: three Gram reductions; a Householder QR, once, for a
    numerically rank-deficient ``y`` (see the module notes).

    Parameters
    ----------
    space
        The backend (or an operator's basis space) that owns ``y``.
    y
        ``(m, l)`` array, ``m >= l``.

    Returns
    -------
    Q
        ``(m, l)`` array of ``y``'s dtype, in ``space``.
    R
        ``(l, l)`` upper-triangular host float64 array (zero rows where ``y``
        has no direction).
    """
    m, l = (int(d) for d in y.shape)
    first = shifted_factor(m, space.gram(y))
    if first is None:  # zero or non-finite: nothing to scale
        return space.householder_qr(y)
    q1 = first.apply(space, y)
    second = shifted_factor(m, space.gram(q1))
    if second is None:
        q, r = space.householder_qr(q1)
        return q, r @ first.r
    q2 = second.apply(space, q1)
    g3 = space.gram(q2)
    r12 = second.r @ first.r
    r3 = cholesky_factor(g3)
    if r3 is None or np.max(np.abs(g3 - np.eye(l))) > RANK_DEFICIENT_GAP:
        q, r = space.householder_qr(q2)
        return q, r @ r12
    third = Factor(r3)
    return third.apply(space, q2), r3 @ r12
