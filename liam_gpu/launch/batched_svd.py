"""Launch wrapper of ``kernels/batched_svd.cu``: thin SVD of a stack of small matrices.

One thread block factors one matrix with one-sided Jacobi, the matrix held in
shared memory (see the kernel's header comment for the algorithm and its
accuracy).  The wrapper checks the input, picks the instantiation and the
block size, sizes the dynamic shared memory with the kernel's own layout and
refuses matrices that do not fit, so that the algorithm layer can choose
another path per item (:func:`fits` answers without launching).

Block size: 32 threads per warp times ``min(8, ceil(r / 2))`` warps, where
``r = min(m, n)``.  A Jacobi round has ``ceil(r / 2)`` independent column pairs,
one warp per pair; with at most 8 warps (256 threads) a 128 x 64 float32 block
needs ~50 KiB of shared memory and at most 64 registers per thread, so four
blocks (32 warps, four independent barrier groups) share one Hopper SM, which
hides shuffle and barrier latency better than fewer, larger blocks.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .family import KernelBudget, KernelFamily
from .runtime import Runtime, i64, require_contiguous

#: Largest ``max(m, n)``: rows of the working matrix (8 rows per lane of a warp).
MAX_ROWS = 256
#: Largest ``min(m, n)``: columns of the working matrix (2 per lane of V's rows).
MAX_COLS = 64
#: Opt-in shared memory per block of Hopper (H100/H200, sm_90): 227 KiB.
HOPPER_SHARED_LIMIT = 227 * 1024
#: Opt-in shared memory per block of the A100 (sm_80): 163 KiB.
AMPERE_SHARED_LIMIT = 163 * 1024
#: Sweep limit (LAPACK xGESVJ uses 30); matrices of these sizes converge in ~10.
DEFAULT_MAX_SWEEPS = 30
#: Warps per block at most (see the module docstring).
MAX_WARPS = 8

_WARP = 32
_ROWS_PER_LANE = (1, 2, 4, 8)
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: Blocks per SM each instantiation's ``__launch_bounds__`` asks for (a template
#: argument; its register budget follows from it).  Chosen from the shared
#: memory per block of the largest matrix each instantiation takes, so that
#: registers are not what limits residency: float R <= 4 (<= 128 x 64,
#: ~50 KiB) fits 4 blocks in Hopper's 228 KiB, double R = 2 (~67 KiB) fits 3,
#: float R = 8 and double R = 4 fit 2, double R = 8 (~162 KiB) fits 1.
_MIN_BLOCKS = {("float", 1): 4, ("float", 2): 4, ("float", 4): 4, ("float", 8): 2,
               ("double", 1): 4, ("double", 2): 3, ("double", 4): 2, ("double", 8): 1}


def _entry(ctype: str, rows_per_lane: int) -> str:
    """The name expression of one ``batched_svd_kernel`` instantiation (the limits as template arguments)."""
    return (f"batched_svd_kernel<{ctype}, {rows_per_lane}, {MAX_COLS}, {MAX_WARPS * _WARP}, "
            f"{_MIN_BLOCKS[ctype, rows_per_lane]}>")


def _register_budget(min_blocks: int) -> int:
    # What ptxas may use under __launch_bounds__(256, min_blocks): the 64 Ki
    # register file split over the blocks, in the allocation unit of 8.
    return min(255, 65536 // (MAX_WARPS * _WARP * min_blocks) // 8 * 8)


FAMILY = KernelFamily(
    name="batched_svd",
    source="batched_svd.cu",
    name_expressions=tuple(_entry(c, r) for c in _CTYPES.values() for r in _ROWS_PER_LANE),
    # All shared memory is dynamic: no static shared memory is allowed.
    budgets={_entry(c, r): KernelBudget(max_registers=_register_budget(b), max_shared_bytes=0)
             for (c, r), b in _MIN_BLOCKS.items()},
)


def _warps(m: int, n: int) -> int:
    pairs = (min(m, n) + 1) // 2
    return max(1, min(MAX_WARPS, pairs))


def shared_bytes(m: int, n: int, dtype: Any) -> int:
    """Dynamic shared memory one block needs for an ``m x n`` matrix.

    Mirrors the kernel's layout: W (``M x N``, leading dimension ``M | 1``),
    V (``N x N``, leading dimension ``N | 1``), sigma, coefficients and one
    reduction slot per warp in the element type, then the sort permutation,
    its inverse and two per-warp integer slots (``M = max(m, n)``,
    ``N = min(m, n)``).
    """
    big, small = max(m, n), min(m, n)
    warps = _warps(m, n)
    itemsize = np.dtype(dtype).itemsize
    elements = small * (big | 1) + small * (small | 1) + 2 * small + warps
    return elements * itemsize + (2 * small + 2 * warps) * 4


def shared_limit(runtime: Runtime) -> int:
    """Opt-in dynamic shared memory one block may use on ``runtime``'s device."""
    return int(runtime.max_shared_per_block)


def _dtype_or_none(dtype: Any) -> np.dtype | None:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return None
    return dt if dt in _CTYPES else None


def fits(runtime: Runtime, m: int, n: int, dtype: Any) -> bool:
    """Whether one block of :func:`batched_svd` can factor an ``m x n`` matrix.

    True when ``dtype`` is float32/float64, ``max(m, n) <= 256``,
    ``min(m, n) <= 64`` and :func:`shared_bytes` is within
    :func:`shared_limit`.  Empty matrices (``m`` or ``n`` zero) fit trivially.
    """
    dt = _dtype_or_none(dtype)
    if dt is None or m < 0 or n < 0:
        return False
    if min(m, n) == 0:
        return True
    if max(m, n) > MAX_ROWS or min(m, n) > MAX_COLS:
        return False
    return shared_bytes(m, n, dt) <= shared_limit(runtime)


def batched_svd(
    runtime: Runtime, a: Any, *, max_sweeps: int = DEFAULT_MAX_SWEEPS, max_blocks: int | None = None
) -> tuple[Any, Any, Any]:
    """Thin SVD ``a[i] = U[i] @ diag(S[i]) @ Vt[i]`` of every matrix of a stack.

    Parameters
    ----------
    runtime
        The runtime that launches (CUDA or emulator).
    a
        ``(B, m, n)`` C-contiguous float32/float64 array of ``runtime.xp``
        (CuPy on CUDA, numpy on the emulator); not modified.  Each matrix must
        satisfy :func:`fits`.
    max_sweeps
        Upper bound on Jacobi sweeps (each sweep visits every column pair once).
    max_blocks
        Cap on the grid: each block then factors several matrices in turn
        (the kernel loops over the batch).  ``None``: one block per matrix.

    Returns
    -------
    U, S, Vt
        ``U`` (B, m, r), ``S`` (B, r), ``Vt`` (B, r, n), ``r = min(m, n)``, of
        ``a``'s dtype.  ``S`` is descending (ties keep column order).  ``U``
        and ``Vt`` always have orthonormal columns/rows: a column of ``U``
        whose singular value is zero is an orthonormal completion (the zero
        matrix gives ``U = I[:, :r]`` and ``Vt = I``).  Bitwise reproducible.

    Raises
    ------
    TypeError
        ``a`` is not an array of ``runtime.xp``, or not float32/float64.
    ValueError
        ``a`` is not 3-D or not C-contiguous, its matrices do not fit one
        block (the message gives the limits), or ``max_sweeps`` / ``max_blocks``
        is not a positive integer.
    """
    xp = runtime.xp
    if not isinstance(a, xp.ndarray):
        raise TypeError(f"a must be a {xp.__name__}.ndarray for the {runtime.kind} runtime, "
                        f"got {type(a).__name__}")
    if a.ndim != 3:
        raise ValueError(f"a must be a 3-D stack (B, m, n) of matrices, got shape {tuple(a.shape)}")
    dt = _dtype_or_none(a.dtype)
    if dt is None:
        raise TypeError(f"a has dtype {a.dtype}; the batched SVD kernel takes float32 or float64")
    require_contiguous("a", a)
    if isinstance(max_sweeps, (bool, np.bool_)) or not isinstance(max_sweeps, (int, np.integer)) \
            or max_sweeps < 1:
        raise ValueError(f"max_sweeps must be an integer >= 1, got {max_sweeps!r}")
    if max_blocks is not None and (isinstance(max_blocks, (bool, np.bool_))
                                   or not isinstance(max_blocks, (int, np.integer)) or max_blocks < 1):
        raise ValueError(f"max_blocks must be None or an integer >= 1, got {max_blocks!r}")
    batch, m, n = (int(d) for d in a.shape)
    if not fits(runtime, m, n, dt):
        limit = shared_limit(runtime)
        raise ValueError(
            f"a's matrices are {m} x {n} {dt}: the one-block batched SVD takes max(m, n) <= {MAX_ROWS} "
            f"and min(m, n) <= {MAX_COLS} within {limit} bytes of shared memory per block on this "
            f"device (Hopper {HOPPER_SHARED_LIMIT}, A100 {AMPERE_SHARED_LIMIT}); this size needs "
            f"{shared_bytes(m, n, dt)} bytes"
        )
    r = min(m, n)
    u = xp.empty((batch, m, r), dtype=dt)
    s = xp.empty((batch, r), dtype=dt)
    vt = xp.empty((batch, r, n), dtype=dt)
    if batch == 0 or r == 0:
        return u, s, vt
    rows_per_lane = next(k for k in _ROWS_PER_LANE if max(m, n) <= _WARP * k)
    fn = runtime.function(FAMILY, _entry(_CTYPES[dt], rows_per_lane))
    # The kernel loops over the batch (grid-stride), so any grid size is valid.
    grid = min(batch, 2**31 - 1, max_blocks or batch)
    fn((grid,), (_WARP * _warps(m, n),),
       (a, u, s, vt, i64(batch), i64(m), i64(n), i64(max_sweeps)),
       shared_mem=shared_bytes(m, n, dt))
    return u, s, vt
