"""float32 bias + gelu for the CPU epilogue, compiled by numba (the ``fast`` extra).

scipy's ``erfc`` evaluates one element at a time in double (17-27 ns per
element); this path takes about 1-2 ns.  gelu is ``0.5 x erfc(-x / sqrt 2)``,
with ``erfc`` from the Chebyshev fit of Press et al., *Numerical Recipes*
(``erfcc``: ``t exp(-z^2 + P(t))``, ``t = 1 / (1 + z/2)``, relative error below
1.2e-7 for every ``z >= 0``), evaluated in float64 and rounded once to float32:
its relative accuracy holds in the tail, where ``1 + erf`` would cancel (2.1
ulps at most against mpmath, ``tests/test_activations.py``; the bound is 4).
float64 data keeps scipy's ``erfc``: the fit is float32-accurate only.

Two compiled loops and numpy's own SIMD ``exp`` between them (numba has no
vectorised ``exp`` without Intel's SVML, numpy has): the first writes the
exponent and ``t`` to float64 scratch, the second finishes in place.  Both
release the GIL, so the CPU backend's worker threads run them side by side.

Importing this module imports numba and compiles nothing; the loops compile
on their first call (about 1.5 s, cached on disk where the package folder is
writable).
"""
from __future__ import annotations

import math

import numba
import numpy as np

_SQRT_HALF = math.sqrt(0.5)
_OPTIONS = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


@numba.njit(**_OPTIONS)
def _exponent(y, bias, e, t):  # pragma: no cover - compiled
    """``e = P(t) - z^2`` and ``t`` for each ``x = y + bias`` (rounded to float32, as numpy adds)."""
    rows, cols = y.shape
    for i in range(rows):
        yi = y[i]
        ei = e[i * cols:(i + 1) * cols]
        ti = t[i * cols:(i + 1) * cols]
        for j in range(cols):
            x = np.float64(yi[j] + bias[j])
            z = abs(x) * _SQRT_HALF
            u = 1.0 / (1.0 + 0.5 * z)
            ti[j] = u
            ei[j] = u * (1.00002368 + u * (0.37409196 + u * (0.09678418 + u * (-0.18628806 + u * (
                0.27886807 + u * (-1.13520398 + u * (1.48851587 + u * (-0.82215223 + u * 0.17087277)))))))) \
                - 1.26551223 - z * z


@numba.njit(**_OPTIONS)
def _finish(y, bias, e, t):  # pragma: no cover - compiled
    """``y = 0.5 x erfc(-x / sqrt 2)`` from ``exp(e)`` and ``t`` (erfc(-z) = 2 - erfc(z))."""
    rows, cols = y.shape
    for i in range(rows):
        yi = y[i]
        ei = e[i * cols:(i + 1) * cols]
        ti = t[i * cols:(i + 1) * cols]
        for j in range(cols):
            x = np.float64(yi[j] + bias[j])
            q = ti[j] * ei[j]  # erfc(|x| / sqrt 2)
            if x > 0:
                q = 2.0 - q
            yi[j] = np.float32(0.5 * x * q)


#: Elements per pass of the two loops: their float64 scratch (1 MiB) stays in L2.
_PASS_ELEMENTS = 1 << 16


def bias_gelu_float32(y: np.ndarray, bias: np.ndarray | None) -> None:
    """``y = gelu(y + bias)`` in place: 2-D float32 ``y`` with unit stride along rows, 1-D ``bias`` (or None)."""
    rows, cols = y.shape
    if bias is None:
        bias = np.zeros(cols, np.float32)
    step = max(1, _PASS_ELEMENTS // max(1, cols))
    scratch = np.empty(2 * min(rows, step) * cols)
    with np.errstate(under="ignore"):  # exp of the far tail underflows to 0, as erfc does
        for start in range(0, rows, step):
            part = y[start:start + step]
            size = part.size
            e, t = scratch[:size], scratch[size:2 * size]
            _exponent(part, bias, e, t)
            np.exp(e, out=e)
            _finish(part, bias, e, t)
