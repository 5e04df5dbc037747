"""The CPU backend: numpy and scipy (BLAS, LAPACK) primitives."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import activations, philox
from .base import Backend, upper_inverse

#: Output elements per chunk of the epilogue: a few MiB, so the chunk stays in
#: cache between the GEMM that writes it and the activation that reads it.
_CHUNK_ELEMENTS = 1 << 19
#: Elements per chunk of the float64 sum of squares (a 2 MiB float64 buffer).
_SUMSQ_CHUNK = 1 << 18


class CpuBackend(Backend):
    """numpy arrays, computed by numpy/scipy."""

    name = "cpu"
    kind = "cpu"
    xp = np

    def asarray(self, x: Any) -> np.ndarray:
        return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def linear(self, x, w, bias, activation, out):
        # GEMM straight into the output rows, then bias and activation in place
        # on the same chunk while it is in cache; no full-size temporary.
        # float16 has no BLAS: each chunk goes through a float32 buffer.
        compute = np.float32 if x.dtype == np.float16 else x.dtype
        wt = w.T.astype(compute, copy=False)
        b = None if bias is None else bias.astype(compute, copy=False)
        rows = max(1, _CHUNK_ELEMENTS // max(1, out.shape[1]))
        for start in range(0, x.shape[0], rows):
            xs = x[start:start + rows]
            dst = out[start:start + rows]
            buf = dst if compute == out.dtype else np.empty(dst.shape, compute)
            np.matmul(xs.astype(compute, copy=False), wt, out=buf)
            if b is not None:
                buf += b
            activations.apply_inplace(buf, activation)
            if buf is not dst:
                dst[...] = buf
        return out

    def batched_linear(self, x, w, bias, activation, out):
        for i in range(x.shape[0]):
            self.linear(x[i], w[i], None if bias is None else bias[i], activation, out[i])
        return out

    # -- randomized SVD ----------------------------------------------------------
    def sketch(self, a, seed, l, *, trans=False, col0=0):
        # Omega is materialised here (n x l, the O((m + n) l) budget allows it):
        # one BLAS call beats any blocked regeneration on a CPU.
        op = a.T if trans else a
        omega = philox.omega(seed, op.shape[1], l, a.dtype, col0=col0)
        # NaN/Inf in ``a`` is reported by the caller from this very product.
        with np.errstate(invalid="ignore", over="ignore"):
            return np.matmul(op, omega)

    def matmul(self, a, b, *, trans=False):
        # a.T of a C-contiguous array is F-contiguous: BLAS reads it in place.
        return np.matmul(a.T if trans else a, b)

    def gram(self, y, *, accumulate=np.float64):
        acc = np.dtype(accumulate)
        if acc == np.float32 and y.dtype != np.float32:
            raise ValueError(f"cannot accumulate {y.dtype} data in float32")
        yy = y.astype(acc, copy=False)
        # np.dot, not np.matmul: numpy 2.4's matmul special-cases ``y.T @ y``
        # into a path that is ~300x slower here for (8000, 42) (measured: 196 ms
        # against 0.6 ms for np.dot, which calls BLAS syrk).
        return np.dot(yy.T, yy).astype(np.float64, copy=False)

    def tri_apply(self, y, r, *, accumulate=np.float64, rinv=None):
        acc = np.dtype(accumulate)
        if acc == np.float32 and y.dtype != np.float32:
            raise ValueError(f"cannot accumulate {y.dtype} data in float32")
        rinv = (upper_inverse(r) if rinv is None else rinv).astype(acc, copy=False)
        return np.matmul(y.astype(acc, copy=False), rinv).astype(y.dtype, copy=False)

    def householder_qr(self, y):
        q, r = np.linalg.qr(y)
        return np.ascontiguousarray(q), r.astype(np.float64)

    def sum_squares(self, a):
        import math

        flat = a.reshape(-1)
        return math.fsum(
            float(np.dot(c, c)) for c in (flat[i:i + _SUMSQ_CHUNK].astype(np.float64)
                                          for i in range(0, flat.size, _SUMSQ_CHUNK))
        )

    def batched_svd_fits(self, m, n, dtype):
        # The limits of the batched kernel, so that every backend takes the same
        # path for the same shapes (and cpu and GPU results agree).
        from ..launch.batched_svd import MAX_COLS, MAX_ROWS

        return np.dtype(dtype) in (np.float32, np.float64) and max(m, n) <= MAX_ROWS and min(m, n) <= MAX_COLS

    def batched_svd(self, a):
        return np.linalg.svd(a, full_matrices=False)
