"""The CPU backend: numpy and scipy (BLAS, LAPACK) primitives."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import activations
from .base import Backend

#: Output elements per chunk of the epilogue: a few MiB, so the chunk stays in
#: cache between the GEMM that writes it and the activation that reads it.
_CHUNK_ELEMENTS = 1 << 19


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
