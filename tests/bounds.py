"""Error bounds of the randomized SVD that tests compare results with (shared by several test files)."""
from __future__ import annotations

import math

import numpy as np


def halko_bound(s: np.ndarray, k: int, l: int, q: int) -> float:
    """A bound on ``||A - U S Vt||_2`` the randomized SVD meets with probability ``>= 1 - 6 (l-k)^-(l-k)``.

    Halko, Martinsson & Tropp (2011): Theorem 10.8 for the Gaussian sketch of
    ``B = (A A^T)^q A`` (singular values ``s^(2q+1)``), Proposition 8.6 to come
    back to ``A`` (power ``1 / (2q+1)``), and Theorem 9.3 for the truncation
    to rank ``k`` (``+ s_(k+1)``).  ``s``: the true singular values of ``A``
    (descending); ``l - k >= 4`` oversampling columns; ``q`` power iterations.
    """
    p = l - k
    e = 2 * q + 1
    tail = float(np.sqrt(np.sum(s[k:] ** (2 * e))))
    basis = ((1 + 17 * math.sqrt(1 + k / p)) * s[k] ** e + 8 * math.sqrt(k + p) / (p + 1) * tail) ** (1 / e)
    return float(s[k]) + basis


def rounding_bounds(matrix: np.ndarray, s_factored: np.ndarray, k: int, dtype) -> tuple[float, float]:
    """How far two rounding-level computations of the same rank-``k`` SVD may differ.

    Sums of ``matrix``'s ``sqrt(m n)``-long products round differently (another
    chunking, another backend), so the two results factor matrices that differ
    by about ``eps sqrt(m n) ||matrix||_2`` (the products of an implicitly
    centred matrix round at the uncentred one's scale): singular values move by
    that (Weyl), singular vectors by that over the smallest gap among the first
    ``k + 1`` of the factored spectrum ``s_factored`` (Wedin).  Returns both.
    """
    dense = np.asarray(matrix, dtype=np.float64)
    perturbation = np.finfo(dtype).eps * math.sqrt(dense.size) * np.linalg.norm(dense, 2)
    return perturbation, perturbation / float(np.min(s_factored[:k] - s_factored[1:k + 1]))
