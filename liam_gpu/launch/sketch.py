"""Launch wrapper of ``kernels/sketch.cu``: ``Y = op(A) @ Omega`` with Omega made in the kernel.

Omega is the Gaussian test matrix of :mod:`liam_gpu.philox` (the numpy
reference of ``kernels/philox.cuh``): ``Omega[j, c]`` depends on
``(seed, j, c)`` only.  Besides the sketch, the family has two small entry
points that store the generator's output, for tests and for callers that want
Omega itself: :func:`omega_words` (the raw uint32 words) and :func:`omega`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .family import KernelBudget, KernelFamily
from .runtime import Runtime, blocks_for, i64, require_contiguous

#: The sketch's tile, passed to ``sketch_kernel`` as template arguments (its
#: only copy): a block computes BLOCK_ROWS x BLOCK_COLS of Y, STEP deep per
#: step of the inner dimension, and each thread THREAD_ROWS x THREAD_COLS.
BLOCK_ROWS = 128
BLOCK_COLS = 64
STEP = 16
THREAD_ROWS = 8
THREAD_COLS = 4
#: Threads per block of the sketch (16 x 16).
THREADS = (BLOCK_ROWS // THREAD_ROWS) * (BLOCK_COLS // THREAD_COLS)
#: Threads per block and the grid cap of the grid-stride generator kernels.
GEN_THREADS = 256
GEN_MAX_BLOCKS = 4096

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_MASK64 = (1 << 64) - 1


def sketch_entry(ctype: str, trans: bool) -> str:
    """The name expression of one ``sketch_kernel`` instantiation."""
    return (f"sketch_kernel<{ctype}, {int(trans)}, {BLOCK_ROWS}, {BLOCK_COLS}, {STEP}, "
            f"{THREAD_ROWS}, {THREAD_COLS}>")


def omega_entry(ctype: str) -> str:
    """The name expression of one ``omega_kernel`` instantiation."""
    return f"omega_kernel<{ctype}, {GEN_THREADS}>"


#: The name expression of the raw-word generator.
PHILOX_WORDS_ENTRY = f"philox_words_kernel<{GEN_THREADS}>"


def _family() -> KernelFamily:
    names: list[str] = []
    budgets: dict[str, KernelBudget] = {}
    for ctype, itemsize in (("float", 4), ("double", 8)):
        for trans in (False, True):
            name = sketch_entry(ctype, trans)
            names.append(name)
            # float: __launch_bounds__(256, 2), two blocks per SM, <= 128 registers.
            # double: one block per SM; ptxas uses ~140 of the 255 it may.
            # Static smem: the A tile STEP x (BLOCK_ROWS + 1) plus the Omega tile STEP x BLOCK_COLS.
            budgets[name] = KernelBudget(max_registers=128 if itemsize == 4 else 168,
                                         max_shared_bytes=STEP * (BLOCK_ROWS + 1 + BLOCK_COLS) * itemsize)
        name = omega_entry(ctype)
        names.append(name)
        budgets[name] = KernelBudget(max_registers=64, max_shared_bytes=0)
    names.append(PHILOX_WORDS_ENTRY)
    budgets[PHILOX_WORDS_ENTRY] = KernelBudget(max_registers=64, max_shared_bytes=0)
    return KernelFamily("sketch", "sketch.cu", name_expressions=tuple(names), budgets=budgets)


FAMILY = _family()


def _seed(seed: Any) -> np.uint64:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) <= _MASK64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return np.uint64(int(seed))


def _ctype(name: str, a: Any) -> str:
    ctype = _CTYPES.get(np.dtype(a.dtype))
    if ctype is None:
        raise TypeError(f"{name} has dtype {a.dtype}; the sketch kernels take float32 or float64")
    return ctype


def _check_col0(col0: Any) -> int:
    col0 = int(col0)
    if col0 < 0 or col0 % 4:
        raise ValueError(f"col0 must be a non-negative multiple of 4 (a whole Philox group), got {col0}")
    return col0


def sketch(runtime: Runtime, a: Any, seed: int, l: int, out: Any, *, trans: bool = False, col0: int = 0) -> Any:
    """``out[:] = op(a) @ Omega[:, col0:col0 + l]``, Omega generated inside the kernel.

    Parameters
    ----------
    runtime
        CUDA or emulator runtime.
    a
        C-contiguous float32/float64 array of ``runtime.xp``: ``(m, n)``, or
        ``(n, m)`` with ``trans=True`` (then ``op(a) = a.T``, read in place).
    seed
        64-bit seed of the Philox stream.
    l
        Columns of the sketch.
    out
        ``(m, l)`` C-contiguous array of ``a``'s dtype, written.
    trans
        Multiply by ``a.T`` instead of ``a``.
    col0
        First column of Omega (a multiple of 4), so that a wider sketch can be
        continued with fresh columns.

    Returns
    -------
    out
    """
    ctype = _ctype("a", a)
    if a.ndim != 2:
        raise ValueError(f"a must be 2-D, got shape {tuple(a.shape)}")
    require_contiguous("a", a)
    require_contiguous("out", out)
    m, n = (a.shape[1], a.shape[0]) if trans else a.shape
    l = int(l)
    if tuple(out.shape) != (m, l):
        raise ValueError(f"out must have shape {(m, l)}, got {tuple(out.shape)}")
    if out.dtype != a.dtype:
        raise TypeError(f"out must have dtype {a.dtype}, got {out.dtype}")
    col0 = _check_col0(col0)
    if m == 0 or l == 0:
        return out
    if n == 0:
        out[...] = 0
        return out
    fn = runtime.function(FAMILY, sketch_entry(ctype, trans))
    grid = (blocks_for(m, BLOCK_ROWS), blocks_for(l, BLOCK_COLS))
    if grid[1] > 65535:
        raise ValueError(f"l={l} is too wide for one sketch launch (at most {65535 * BLOCK_COLS} columns)")
    fn(grid, (THREADS,), (a, out, i64(m), i64(n), i64(l), _seed(seed), i64(col0)))
    return out


def omega(runtime: Runtime, seed: int, rows: int, cols: int, dtype: Any, *, row0: int = 0,
          col0: int = 0) -> Any:
    """``Omega[row0:row0 + rows, col0:col0 + cols]`` stored as a ``runtime.xp`` array.

    The same values as :func:`liam_gpu.philox.omega` up to the platform's
    ``log``/``sqrt``/``cos``/``sin`` rounding.
    """
    dt = np.dtype(dtype)
    ctype = _CTYPES.get(dt)
    if ctype is None:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    rows, cols, row0 = int(rows), int(cols), int(row0)
    if rows < 0 or cols < 0 or row0 < 0:
        raise ValueError("rows, cols and row0 must be non-negative")
    col0 = _check_col0(col0)
    out = runtime.xp.empty((rows, cols), dtype=dt)
    work = rows * blocks_for(cols, 4)
    if rows and cols:
        fn = runtime.function(FAMILY, omega_entry(ctype))
        fn((min(GEN_MAX_BLOCKS, blocks_for(work, GEN_THREADS)),), (GEN_THREADS,),
           (out, i64(rows), i64(cols), i64(row0), i64(col0), _seed(seed)))
    return out


def omega_words(runtime: Runtime, seed: int, rows: int, groups: int, *, row0: int = 0, group0: int = 0) -> Any:
    """The raw Philox words: ``(rows, groups, 4)`` uint32, as :func:`liam_gpu.philox.omega_bits`."""
    rows, groups, row0, group0 = int(rows), int(groups), int(row0), int(group0)
    if min(rows, groups, row0, group0) < 0:
        raise ValueError("rows, groups, row0 and group0 must be non-negative")
    out = runtime.xp.empty((rows, groups, 4), dtype=np.uint32)
    if rows and groups:
        fn = runtime.function(FAMILY, PHILOX_WORDS_ENTRY)
        fn((min(GEN_MAX_BLOCKS, blocks_for(rows * groups, GEN_THREADS)),), (GEN_THREADS,),
           (out, i64(rows), i64(groups), i64(row0), i64(group0), _seed(seed)))
    return out
