"""Launch wrapper of ``kernels/gram.cu``: the tall-skinny kernels of CholeskyQR.

* :func:`gram` -- ``G = Y^T Y`` for ``Y`` (m x l), in two deterministic passes
  (per-chunk partial Gram matrices, then a fixed-order sum);
* :func:`tri_apply` -- ``Q = Y @ R^-1`` given the upper-triangular ``R^-1``;
* :func:`sum_squares` -- ``||A||_F^2`` accumulated in float64.

All results are bitwise reproducible: the row partition depends on the sizes
only, and no kernel uses atomics.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .family import KernelBudget, KernelFamily
from .runtime import Runtime, blocks_for, i64, require_contiguous

#: The tile shape, passed to the kernels as template arguments (its only
#: copy): G and Q in TILE x TILE tiles, STEP rows of Y (or R) per step, each
#: thread a THREAD_TILE x THREAD_TILE block of outputs.
TILE = 64
STEP = 16
THREAD_TILE = 4
#: Threads per block of every gram kernel (16 x 16).
THREADS = (TILE // THREAD_TILE) ** 2
#: Rows of Y that one partial-Gram block sums at least (more when the partial
#: buffer would grow past :data:`MAX_PARTIAL_ELEMENTS`).
MIN_CHUNK_ROWS = 256
#: Cap on the partial buffer (chunks x l x l accumulator elements: 32 MiB of float64).
MAX_PARTIAL_ELEMENTS = 1 << 22
#: Cap on the number of row chunks (grid.y).
MAX_CHUNKS = 1024
#: Elements per block of the sum of squares (at least), and its grid cap.
SUMSQ_MIN_CHUNK = 1 << 16
SUMSQ_MAX_BLOCKS = 4096

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: (data type, accumulator type) pairs: float data may accumulate in float (fast
#: path) or double (CholeskyQR's default); double data in double.
PAIRS = (("float", "double"), ("float", "float"), ("double", "double"))


def _tile_args() -> str:
    return f"{TILE}, {STEP}, {THREAD_TILE}"


def gram_partial_entry(ctype: str, acc: str) -> str:
    """The name expression of one ``gram_partial_kernel`` instantiation."""
    return f"gram_partial_kernel<{ctype}, {acc}, {_tile_args()}>"


def gram_reduce_entry(acc: str) -> str:
    """The name expression of one ``gram_reduce_kernel`` instantiation."""
    return f"gram_reduce_kernel<{acc}, {TILE}, {THREADS}>"


def tri_apply_entry(ctype: str, acc: str) -> str:
    """The name expression of one ``tri_apply_kernel`` instantiation."""
    return f"tri_apply_kernel<{ctype}, {acc}, {_tile_args()}>"


def sumsq_entry(ctype: str) -> str:
    """The name expression of one ``sumsq_partial_kernel`` instantiation."""
    return f"sumsq_partial_kernel<{ctype}, {THREADS}>"


def _family() -> KernelFamily:
    names: list[str] = []
    budgets: dict[str, KernelBudget] = {}
    size = {"float": 4, "double": 8}
    for ctype, acc in PAIRS:
        name = gram_partial_entry(ctype, acc)
        names.append(name)
        budgets[name] = KernelBudget(max_registers=128, max_shared_bytes=2 * STEP * TILE * size[acc])
        name = tri_apply_entry(ctype, acc)
        names.append(name)
        budgets[name] = KernelBudget(max_registers=128, max_shared_bytes=(STEP * (TILE + 1) + STEP * TILE) * size[acc])
    for acc in ("float", "double"):
        name = gram_reduce_entry(acc)
        names.append(name)
        budgets[name] = KernelBudget(max_registers=64, max_shared_bytes=0)
        name = sumsq_entry(acc)
        names.append(name)
        budgets[name] = KernelBudget(max_registers=64, max_shared_bytes=THREADS * 8)
    return KernelFamily("gram", "gram.cu", name_expressions=tuple(names), budgets=budgets)


FAMILY = _family()


def _ctype(name: str, a: Any) -> str:
    ctype = _CTYPES.get(np.dtype(a.dtype))
    if ctype is None:
        raise TypeError(f"{name} has dtype {a.dtype}; the gram kernels take float32 or float64")
    return ctype


def _acc_ctype(data: str, accumulate: Any) -> str:
    if accumulate is None:
        return "double"
    acc = _CTYPES.get(np.dtype(accumulate))
    if acc is None or (data, acc) not in PAIRS:
        raise ValueError(f"cannot accumulate {data} data in {np.dtype(accumulate)}; "
                         f"supported pairs: {', '.join(f'{d}/{a}' for d, a in PAIRS)}")
    return acc


def chunk_rows(m: int, l: int) -> int:
    """Rows per partial-Gram block for an ``m x l`` Y (a function of the sizes only)."""
    chunks = max(1, min(blocks_for(m, MIN_CHUNK_ROWS), MAX_PARTIAL_ELEMENTS // max(1, l * l), MAX_CHUNKS))
    return blocks_for(blocks_for(m, chunks), STEP) * STEP


def _check_2d(name: str, a: Any) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(a.shape)}")
    require_contiguous(name, a)


def gram(runtime: Runtime, y: Any, out: Any = None, *, accumulate: Any = None) -> Any:
    """``G = y.T @ y`` for a tall-skinny ``y`` (m x l), deterministic.

    Parameters
    ----------
    runtime
        CUDA or emulator runtime.
    y
        ``(m, l)`` C-contiguous float32/float64 array of ``runtime.xp``.
    out
        Optional ``(l, l)`` C-contiguous array of the accumulator dtype.
    accumulate
        Accumulator dtype: float64 (default) or, for float32 ``y``, float32.

    Returns
    -------
    array
        ``(l, l)`` symmetric (bitwise) Gram matrix in the accumulator dtype.
    """
    ctype = _ctype("y", y)
    _check_2d("y", y)
    acc = _acc_ctype(ctype, accumulate)
    acc_dtype = np.float64 if acc == "double" else np.float32
    m, l = (int(d) for d in y.shape)
    xp = runtime.xp
    if out is None:
        out = xp.empty((l, l), dtype=acc_dtype)
    elif tuple(out.shape) != (l, l) or out.dtype != acc_dtype:
        raise ValueError(f"out must be ({l}, {l}) {np.dtype(acc_dtype)}, got {tuple(out.shape)} {out.dtype}")
    require_contiguous("out", out)
    if l == 0:
        return out
    if m == 0:
        out[...] = 0
        return out
    rows = chunk_rows(m, l)
    chunks = blocks_for(m, rows)
    tiles = blocks_for(l, TILE)
    pairs = tiles * (tiles + 1) // 2
    partial = xp.empty((chunks, l, l), dtype=acc_dtype)
    runtime.function(FAMILY, gram_partial_entry(ctype, acc))(
        (pairs, chunks), (THREADS,), (y, partial, i64(m), i64(l), i64(rows)))
    runtime.function(FAMILY, gram_reduce_entry(acc))(
        (min(SUMSQ_MAX_BLOCKS, blocks_for(l * l, THREADS)),), (THREADS,), (partial, out, i64(l), i64(chunks)))
    return out


def tri_apply(runtime: Runtime, y: Any, rinv: Any, out: Any) -> Any:
    """``out[:] = y @ rinv`` with ``rinv`` upper triangular (the inverse of a Cholesky factor).

    Parameters
    ----------
    runtime
        CUDA or emulator runtime.
    y
        ``(m, l)`` C-contiguous float32/float64 array of ``runtime.xp``.
    rinv
        ``(l, l)`` C-contiguous upper-triangular array of the accumulator dtype
        (float64, or float32 for float32 ``y``); entries below the diagonal
        must be zero (they are skipped by whole tiles only).
    out
        ``(m, l)`` C-contiguous array of ``y``'s dtype, not overlapping ``y``.

    Returns
    -------
    out
    """
    ctype = _ctype("y", y)
    _check_2d("y", y)
    _check_2d("rinv", rinv)
    _check_2d("out", out)
    acc = _acc_ctype(ctype, rinv.dtype)
    m, l = (int(d) for d in y.shape)
    if tuple(rinv.shape) != (l, l):
        raise ValueError(f"rinv must have shape {(l, l)}, got {tuple(rinv.shape)}")
    if tuple(out.shape) != (m, l) or out.dtype != y.dtype:
        raise ValueError(f"out must be {(m, l)} {y.dtype}, got {tuple(out.shape)} {out.dtype}")
    if runtime.data_ptr(out) == runtime.data_ptr(y) and m and l:
        raise ValueError("out must not be y: blocks of other column tiles still read y")
    if m == 0 or l == 0:
        return out
    runtime.function(FAMILY, tri_apply_entry(ctype, acc))(
        (blocks_for(m, TILE), blocks_for(l, TILE)), (THREADS,), (y, rinv, out, i64(m), i64(l)))
    return out


def sum_squares(runtime: Runtime, a: Any) -> float:
    """``||a||_F^2`` of a C-contiguous float32/float64 array, accumulated in float64.

    Per-block partial sums in a fixed order, added on the host with
    :func:`math.fsum`: deterministic and as accurate as float64 allows.
    """
    ctype = _ctype("a", a)
    require_contiguous("a", a)
    total = int(a.size)
    if total == 0:
        return 0.0
    chunk = max(SUMSQ_MIN_CHUNK, blocks_for(total, SUMSQ_MAX_BLOCKS))
    blocks = blocks_for(total, chunk)
    partial = runtime.xp.empty((blocks,), dtype=np.float64)
    runtime.function(FAMILY, sumsq_entry(ctype))((blocks,), (THREADS,), (a, partial, i64(total), i64(chunk)))
    host = partial.get() if hasattr(partial, "get") and not isinstance(partial, np.ndarray) else partial
    return math.fsum(host.tolist())
