"""The primitives every backend supplies; the algorithms above are written once over them."""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..arrays import array_module


class Backend:
    """Where a computation runs, and the primitive operations it offers.

    Attributes
    ----------
    name
        ``"cpu"``, ``"emulator"`` or ``"cuda:N"``.
    kind
        ``"cpu"``, ``"emulator"`` or ``"cuda"``.
    xp
        The array module of the backend's arrays (numpy or cupy).
    """

    name: str = ""
    kind: str = ""
    xp: Any = np

    # -- memory ------------------------------------------------------------------
    def asarray(self, x: Any) -> Any:
        """A numpy/CuPy array as this backend's array (copied across host/device if needed)."""
        raise NotImplementedError

    def to_host(self, x: Any) -> np.ndarray:
        """A backend array as a numpy array."""
        raise NotImplementedError

    def activate(self) -> contextlib.AbstractContextManager:
        """A context in which this backend's device is the current one (a no-op on the host).

        Every public operation runs inside it, so that allocations, library
        calls and launches all happen on the device the call computes on,
        whichever device the caller had current.
        """
        return contextlib.nullcontext()

    def holds(self, a: Any) -> bool:
        """Whether ``a`` is memory this backend computes on (kernels may write it directly)."""
        return array_module(a) is self.xp

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Uninitialised backend memory."""
        return self.xp.empty(shape, dtype=dtype)

    # -- transform ---------------------------------------------------------------
    def linear(self, x: Any, w: Any, bias: Any | None, activation: int, out: Any, *,
               storage: str | None = None, tf32: bool = False) -> Any:
        """``out[:] = act(x @ w.T + bias)``; x (n, d_in), w (d_out, d_in), out (n, d_out).

        All arrays are C-contiguous backend arrays of one dtype (float16,
        ``ml_dtypes.bfloat16``, float32 or float64); ``activation`` is a code
        from :mod:`liam_gpu.activations`.  ``storage="bfloat16"``: the arrays
        are ``uint16`` bfloat16 bits, where the array library lacks the dtype
        (:mod:`liam_gpu.bfloat16`).  ``tf32``: float32 may run on TF32 tensor
        cores where the backend has them (a permission: a backend without
        them computes in float32; other dtypes ignore it).
        """
        raise NotImplementedError

    def batched_linear(self, x: Any, w: Any, bias: Any | None, activation: int, out: Any, *,
                       storage: str | None = None, tf32: bool = False) -> Any:
        """Per-item :meth:`linear`: x (B, n, d_in), w (B, d_out, d_in), bias (B, d_out), out (B, n, d_out)."""
        raise NotImplementedError

    # -- randomized SVD ----------------------------------------------------------
    # The algorithms of liam_gpu.svd run over these.  Big arrays (A, the m x l
    # and n x l bases) stay in backend memory; the small l x l matrices (Gram
    # matrices, triangular factors, the core SVD) are host float64 numpy
    # arrays, factored by numpy on the host for every backend.

    def sketch(self, a: Any, seed: int, l: int, *, trans: bool = False, col0: int = 0) -> Any:
        """``op(a) @ Omega[:, col0:col0 + l]``: the Gaussian sketch of :mod:`liam_gpu.philox`.

        ``a`` is a C-contiguous 2-D backend array; ``op(a)`` is ``a.T`` when
        ``trans``.  ``col0`` (a multiple of 4) selects fresh columns of Omega.
        Returns a new ``(rows of op(a), l)`` C-contiguous array of ``a``'s dtype.
        """
        raise NotImplementedError

    def matmul(self, a: Any, b: Any, *, trans: bool = False, tf32: bool = False) -> Any:
        """``op(a) @ b`` (``op(a) = a.T`` when ``trans``), a new C-contiguous array.

        The big products of the power iterations (``A @ Z``, ``A.T @ Y``) and
        the small ones (``Q @ U_small``) both come here: BLAS on the CPU,
        cuBLAS on a GPU (numpy stands in for cuBLAS on the emulator).
        ``tf32``: float32 operands may be multiplied on TF32 tensor cores
        (a permission; a backend without them ignores it).
        """
        raise NotImplementedError

    def power_pass(self, a: Any, z: Any, *, trans: bool = False, tf32: bool = False) -> tuple[Any, Any]:
        """``Y = op(a) @ z`` and ``V = op(a).T @ Y``: one power-iteration step, unnormalized.

        A backend may read ``a`` once for both products (the CPU does, by row
        blocks); this default is two :meth:`matmul` calls (a GPU has the
        bandwidth, and cuBLAS is faster on whole matrices).  ``tf32`` as for :meth:`matmul`.
        """
        y = self.matmul(a, z, trans=trans, tf32=tf32)
        return y, self.matmul(a, y, trans=not trans, tf32=tf32)

    def omega(self, seed: int, rows: int, cols: int, dtype: Any, *, col0: int = 0) -> Any:
        """``Omega[:rows, col0:col0 + cols]`` of the Philox stream as a backend array of ``dtype``
        (for operators without a fused sketch, e.g. sparse ones)."""
        raise NotImplementedError

    def sketch_pass(self, a: Any, seed: int, l: int, *, trans: bool = False, col0: int = 0,
                    tf32: bool = False) -> tuple[Any, Any]:
        """``Y = op(a) @ Omega`` (as :meth:`sketch`) and ``V = op(a).T @ Y``.

        ``tf32`` applies to ``V`` (a :meth:`matmul`); the sketch kernel
        computes ``Y`` in the dtype.
        """
        y = self.sketch(a, seed, l, trans=trans, col0=col0)
        return y, self.matmul(a, y, trans=not trans, tf32=tf32)

    def gram(self, y: Any, *, accumulate: Any = np.float64) -> np.ndarray:
        """``y.T @ y`` of a tall-skinny C-contiguous ``y`` (m, l), as a host float64 array.

        ``accumulate`` is the precision of the sums: float64 (default; exact
        products of float32 data) or, for float32 ``y``, float32 (faster,
        enough where only a well-conditioned basis is needed).
        """
        raise NotImplementedError

    def tri_apply(self, y: Any, r: np.ndarray, *, accumulate: Any = np.float64,
                  rinv: np.ndarray | None = None) -> Any:
        """``y @ inv(r)`` for a host upper-triangular ``r`` (l, l), in ``y``'s dtype.

        The inverse is formed on the host in float64 (or passed as ``rinv`` when
        the caller has it already); the product accumulates in ``accumulate``
        (float64 default, or float32 for float32 ``y``) and is rounded once.
        Returns a new array.
        """
        raise NotImplementedError

    def householder_qr(self, y: Any) -> tuple[Any, np.ndarray]:
        """Thin Householder QR ``y = Q R``: ``Q`` a backend array, ``R`` host float64.

        The fallback of CholeskyQR for numerically rank-deficient ``y``
        (LAPACK on the CPU, cuSOLVER on a GPU, numpy on the emulator).
        """
        raise NotImplementedError

    def sum_squares(self, a: Any) -> float:
        """``||a||_F^2`` of a C-contiguous array, accumulated in float64, deterministic."""
        raise NotImplementedError

    def batched_svd_fits(self, m: int, n: int, dtype: Any) -> bool:
        """Whether :meth:`batched_svd` takes a stack of ``m x n`` matrices of ``dtype``."""
        raise NotImplementedError

    def batched_svd(self, a: Any) -> tuple[Any, Any, Any]:
        """Thin SVD of every matrix of a C-contiguous ``(B, m, n)`` stack.

        Returns ``U (B, m, r)``, ``S (B, r)`` descending, ``Vt (B, r, n)``,
        ``r = min(m, n)``, backend arrays of ``a``'s dtype.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<liam_gpu backend {self.name}>"


#: Order below which :func:`upper_inverse` calls LAPACK's general inverse directly.
_INVERSE_LEAF = 48


def upper_inverse(r: np.ndarray) -> np.ndarray:
    """``inv(r)`` of an upper-triangular host matrix, in float64, exactly upper triangular.

    ``inv([[A, B], [0, C]]) = [[inv(A), -inv(A) B inv(C)], [0, inv(C)]]``,
    recursively, with numpy's LAPACK for the small diagonal blocks: ``l^3 / 3``
    flops in GEMMs instead of a general inverse's ``2 l^3`` (0.35 against
    1.32 ms at ``l = 210``, one thread, measured here).  numpy only, on purpose:
    scipy bundles a second OpenBLAS whose thread pool, woken between numpy's
    calls, fights numpy's for the cores (LAPACK ``trtri`` through scipy took
    35 ms a call that way).
    """
    r = np.asarray(r, dtype=np.float64)
    n = r.shape[0]
    if n <= _INVERSE_LEAF:
        return np.triu(np.linalg.inv(r))
    h = n // 2
    a_inv = upper_inverse(r[:h, :h])
    c_inv = upper_inverse(r[h:, h:])
    out = np.zeros_like(r)
    out[:h, :h] = a_inv
    out[h:, h:] = c_inv
    out[:h, h:] = -(a_inv @ r[:h, h:]) @ c_inv
    return out
