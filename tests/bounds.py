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
