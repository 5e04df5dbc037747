"""The CPU backend: numpy and scipy (BLAS, LAPACK) primitives."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import activations, bfloat16, philox, validation
from . import _threads
from .base import Backend, upper_inverse

#: Output elements per chunk of the epilogue: a few MiB, so the chunk stays in
#: cache between the GEMM that writes it and the activation that reads it.
_CHUNK_ELEMENTS = 1 << 19
#: Output elements per row block of the fused GEMM + epilogue (4 MiB of float32,
#: the L2 of one core here).  Smaller blocks cost BLAS efficiency (1.2-1.6x at
#: 64K-256K elements, measured); at this size a block costs nothing measurable.
_BLOCK_ELEMENTS = 1 << 20
#: Row (and column) blocks start at multiples of this, and none is shorter unless the
#: whole output is.
_ROW_ALIGN = 64
#: Columns per block of an output wider than tall (a multiple of ``_ROW_ALIGN``).
_COL_BLOCK = 1024
#: Blocks an output is cut into at least (by rows, or by columns where it has too few rows),
#: so that threads have work.
_MIN_BLOCKS = 4
#: Work below which one thread does the whole call (2 n d_in d_out flops).
_PARALLEL_FLOPS = 1 << 24
#: Elements per float32 buffer of the 16-bit paths (large: BLAS needs big calls).
_HALF_CHUNK_ELEMENTS = 1 << 22
#: Elements per chunk of the float64 sum of squares (a 2 MiB float64 buffer).
_SUMSQ_CHUNK = 1 << 18
#: Bytes of ``a`` per block of a fused power pass: a block stays in the last-level
#: cache between its two products (32 MiB here), so ``a`` is read from memory once.
_PASS_BLOCK_BYTES = 4 << 20


def _widen_half(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def _narrow_half(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    out[...] = values  # numpy's float16 cast rounds to nearest even, as the kernels do
    return out


def _row_blocks(lo: int, hi: int, step: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` blocks of ``step`` over ``[lo, hi)``; a tail under ``_ROW_ALIGN`` joins the one before."""
    start = lo
    while start < hi:
        stop = start + step
        if hi - stop < _ROW_ALIGN:
            stop = hi
        yield start, stop
        start = stop


def _gemm_blocks(x, wt, bias, code, out, blocks, sums: bool = False) -> bool:
    """``out[rows, cols] = act(x @ wt + bias)`` for each ``(rows, cols)`` block, each finished while in cache.

    With ``sums``: whether every block's ``x @ wt`` (before bias and
    activation) sums to a finite value, each sum taken while the block is in
    cache (see :meth:`CpuBackend.linear_checked`); True without.
    """
    if sums:
        # A NaN/Inf input makes NaN (an overflow inf) on its way to the caller's ValueError,
        # not a warning first; the caller warns of an overflow of finite inputs itself.
        with np.errstate(invalid="ignore", over="ignore"):
            return _blocks(x, wt, bias, code, out, blocks, True)
    return _blocks(x, wt, bias, code, out, blocks, False)


def _blocks(x, wt, bias, code, out, blocks, sums) -> bool:
    finite = True
    for (r0, r1), (c0, c1) in blocks:
        part = out[r0:r1, c0:c1]
        np.matmul(x[r0:r1], wt[:, c0:c1], out=part)
        if sums and finite:
            finite = validation.sum_is_finite(part)
        activations.apply_bias_inplace(part, None if bias is None else bias[c0:c1], code)
    return finite


def _fused_rows(x, wt, bias, code, out, sums: bool = False) -> bool:
    """``out = act(x @ wt + bias)`` for 2-D float32/float64 ``out``: the GEMM by blocks, each
    block's bias and activation applied in place while it is in cache (no temporary of the output).
    Returns what :func:`_gemm_blocks` returns for ``sums``, over every block.

    The blocks are a grid fixed by the output's shape alone (:func:`_grid`), and each is one
    BLAS call: whatever the number of threads of ours, every element comes from the same call,
    so the bits do not depend on it -- on every OpenBLAS kernel (the AVX2 ones, Haswell's and
    Zen's, round a row differently when a call's rows or columns start elsewhere).  Below
    :data:`_PARALLEL_FLOPS` one thread of ours calls BLAS, whose own threads split as they
    decide (limiting them costs OpenBLAS a resize of its pool: 100 us a call, measured).  With BLAS
    allowed ``t > 1`` threads, ``t`` threads of ours each take a contiguous run of blocks and
    call BLAS single-threaded on them: the epilogue then runs in parallel too, and one pool of
    threads is busy at a time (OpenBLAS's own threads would spin while ours compute).  Wide
    outputs are split by columns (256 x 4096 -> 4096: each thread reads its part of the
    weights, not all of them).  The thread limit is set for this call only.
    """
    n, d_out = out.shape
    blocks = _grid(n, d_out)
    mnk = n * d_out * x.shape[1]
    workers = min(_threads.blas_threads(), len(blocks)) if 2 * mnk >= _PARALLEL_FLOPS else 1
    if workers <= 1:  # below _PARALLEL_FLOPS (or one block): BLAS threads as it decides
        return _gemm_blocks(x, wt, bias, code, out, blocks, sums)
    share = -(-len(blocks) // workers)
    runs = [blocks[i:i + share] for i in range(0, len(blocks), share)]
    with _threads.blas_limited(1):
        pool = _threads.pool(len(runs))
        futures = [pool.submit(_gemm_blocks, x, wt, bias, code, out, run, sums) for run in runs]
        return all([future.result() for future in futures])


def _round_up(v: int, step: int) -> int:
    return -(-v // step) * step


def _grid(n: int, d_out: int) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """The ``(rows, cols)`` blocks of an ``n x d_out`` output (:func:`_grid_of`, remembered per shape)."""
    return _grid_of(n, d_out, _BLOCK_ELEMENTS, _ROW_ALIGN, _COL_BLOCK, _MIN_BLOCKS)


@functools.lru_cache(maxsize=256)
def _grid_of(n: int, d_out: int, block_elements: int, align: int, col_block: int,
             min_blocks: int) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """The ``(rows, cols)`` blocks of an ``n x d_out`` output, column block by column block.

    Columns in blocks of :data:`_COL_BLOCK` where the output is wider than tall (the weights
    are then the larger operand), in up to :data:`_MIN_BLOCKS` blocks where it has too few
    rows to cut, else whole; rows in blocks of about :data:`_BLOCK_ELEMENTS` elements (and,
    with one column block, at least :data:`_MIN_BLOCKS` of them where the rows allow); all
    multiples of :data:`_ROW_ALIGN`, a short tail joined to the block before it.
    """
    cstep = col_block if d_out > n and d_out > col_block else d_out
    if cstep == d_out and n < min_blocks * align:  # too few rows to cut: columns, if they allow
        cstep = min(d_out, max(align, _round_up(-(-d_out // min_blocks), align)))
    columns = list(_row_blocks(0, d_out, cstep))
    rstep = max(align, block_elements // max(1, cstep) // align * align)
    if len(columns) == 1:  # one column block: at least min_blocks row blocks where the rows allow
        rstep = min(rstep, max(align, _round_up(-(-n // min_blocks), align)))
    return tuple((rows, cols) for cols in columns for rows in _row_blocks(0, n, rstep))


#: Elements per row block of the widened Gram reduction and triangular apply: about 1 MiB of float64, in L2.
_GRAM_BLOCK_ELEMENTS = 1 << 17


class CpuBackend(Backend):
    """numpy arrays, computed by numpy/scipy."""

    name = "cpu"
    kind = "cpu"
    xp = np

    def asarray(self, x: Any) -> np.ndarray:
        return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    # tf32: a permission the CPU has no hardware for; float32 stays float32 here.
    def linear(self, x, w, bias, activation, out, *, storage=None, tf32=False):
        if storage is None and not validation.is_half(out.dtype) and (bias is not None or activation):
            _fused_rows(x, w.T, bias, activation, out)
            return out
        return self._gemm_epilogue(x, w.T, bias, activation, out, storage)

    def linear_checked(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, activation: int,
                       out: np.ndarray) -> bool:
        """:meth:`linear` for 2-D float32/float64 arrays; False where ``x`` or ``w`` may hold NaN/Inf.

        NaN/Inf in ``x[i, k]`` makes every ``(x @ w.T)[i, :]`` non-finite
        (``inf * 0`` is NaN, ``inf - inf`` too), one in ``w[j, k]`` every
        ``(x @ w.T)[:, j]``: BLAS multiplies every pair (tests/test_transform.py
        checks it on this BLAS), so a finite sum of the product proves both
        inputs finite.  With a bias or an activation the sums are taken block
        by block while each block is in cache, before the bias and the
        activation (``relu(-inf)`` is 0); a plain product sums the smaller of
        the output and the inputs.  False may also be an overflow of finite
        values: the caller's exact checks decide.  The bias is the caller's.
        """
        if bias is not None or activation:
            return _fused_rows(x, w.T, bias, activation, out, sums=True)
        with np.errstate(invalid="ignore", over="ignore"):  # as in _gemm_blocks
            np.matmul(x, w.T, out=out)
        if out.size <= x.size + w.size:
            return validation.sum_is_finite(out)
        return validation.sum_is_finite(x) and validation.sum_is_finite(w)

    def batched_linear(self, x, w, bias, activation, out, *, storage=None, tf32=False):
        b = None if bias is None else bias[:, None, :]
        return self._gemm_epilogue(x, w.transpose(0, 2, 1), b, activation, out, storage)

    def _gemm_epilogue(self, x, wt, bias, activation, out, storage):
        """``out = act(x @ wt + bias)`` with one BLAS call and a chunked in-place epilogue.

        For what :func:`_fused_rows` does not take: a plain product (no bias,
        no activation), a batch, and the 16-bit types.  The GEMM is one call;
        bias and activation then run over cache-sized chunks of the output so
        their temporaries stay small.  The 16-bit types have no
        BLAS: they go through float32 buffers of about 4M elements.  bfloat16
        (the ``ml_dtypes`` dtype, or ``uint16`` bits with ``storage``) is
        widened exactly from its bits and rounded once per output element.
        """
        if storage == "bfloat16" or bfloat16.is_bfloat16(out.dtype):
            return self._half_gemm_epilogue(x, wt, bias, activation, out, bfloat16.to_float32, bfloat16.round_from)
        if out.dtype == np.float16:
            return self._half_gemm_epilogue(x, wt, bias, activation, out, _widen_half, _narrow_half)
        np.matmul(x, wt, out=out)
        per_item = bias is not None and bias.ndim > 1  # batched: one bias row per batch item
        flat = out if per_item else out.reshape(-1, out.shape[-1])
        step = max(1, _CHUNK_ELEMENTS // max(1, flat[0].size))
        for start in range(0, flat.shape[0], step):
            part = flat[start:start + step]
            if per_item:
                part += bias[start:start + step]
                part = part.reshape(-1, part.shape[-1])
            activations.apply_bias_inplace(part, None if per_item else bias, activation)
        return out

    def _half_gemm_epilogue(self, x, wt, bias, activation, out, widen, narrow):
        """The 16-bit path: ``widen`` storage to float32, compute, ``narrow(values, out=...)`` back."""
        lead = out.shape[0]
        step = max(1, _HALF_CHUNK_ELEMENTS // max(1, out[0].size))
        wt32 = widen(wt)
        b32 = None if bias is None else widen(bias)
        for start in range(0, lead, step):
            sl = slice(start, start + step)
            w_part = wt32 if wt32.ndim == 2 else wt32[sl]
            b_part = b32 if b32 is None or b32.ndim == 1 else b32[sl]
            buf = np.matmul(widen(x[sl]), w_part)
            if b_part is not None and b_part.ndim > 1:
                buf += b_part
                b_part = None
            activations.apply_bias_inplace(buf.reshape(-1, buf.shape[-1]), b_part, activation)
            narrow(buf, out=out[sl])
        return out

    # -- randomized SVD ----------------------------------------------------------
    def sketch(self, a, seed, l, *, trans=False, col0=0):
        # Omega is materialised here (n x l, the O((m + n) l) budget allows it):
        # one BLAS call beats any blocked regeneration on a CPU.
        op = a.T if trans else a
        omega = self.omega(seed, op.shape[1], l, a.dtype, col0=col0)
        # NaN/Inf in ``a`` is reported by the caller from this very product.
        with np.errstate(invalid="ignore", over="ignore"):
            return np.matmul(op, omega)

    def matmul(self, a, b, *, trans=False, tf32=False):  # no TF32 on the CPU: float32 stays float32
        # a.T of a C-contiguous array is F-contiguous: BLAS reads it in place.
        return np.matmul(a.T if trans else a, b)

    def power_pass(self, a, z, *, trans=False, tf32=False):
        # Row blocks of op(a): Y_i = A_i z, then V += A_i^T Y_i while A_i is still
        # in cache.  The skinny products are bound by reading ``a`` (64 MB for
        # 8000 x 2000 float32) plus packing it; one read instead of two saved
        # ~7% of the pair here (measured, alternating, 2 cores).
        op = a.T if trans else a
        rows, cols = op.shape
        y = np.empty((rows, z.shape[1]), dtype=np.result_type(a, z))
        v = np.zeros((cols, z.shape[1]), dtype=y.dtype)
        part = np.empty_like(v)
        step = max(64, _PASS_BLOCK_BYTES // max(1, cols * a.itemsize) // 64 * 64)
        # V may overflow where Y does not (huge finite input): the engine then takes the unfused step.
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, rows, step):
                block = op[start:start + step]
                np.matmul(block, z, out=y[start:start + step])
                np.matmul(block.T, y[start:start + step], out=part)
                v += part
        return y, v

    def omega(self, seed, rows, cols, dtype, *, col0=0):
        """``Omega[:rows, col0:col0 + cols]`` of the Philox stream, stored (for operators without a fused sketch)."""
        return philox.omega(seed, rows, cols, dtype, col0=col0)

    def sketch_pass(self, a, seed, l, *, trans=False, col0=0, tf32=False):
        op = a.T if trans else a
        # power_pass ignores NaN/Inf and overflow: the caller reports them, from Y.
        return self.power_pass(a, self.omega(seed, op.shape[1], l, a.dtype, col0=col0), trans=trans)

    def gram(self, y, *, accumulate=np.float64):
        acc = np.dtype(accumulate)
        if acc == np.float32 and y.dtype != np.float32:
            raise ValueError(f"cannot accumulate {y.dtype} data in float32")
        # ``b.T`` and ``b`` share one buffer: numpy calls BLAS syrk (half a GEMM).
        # An overflowing Gram matrix is the caller's to handle (cholqr takes Householder QR).
        with np.errstate(over="ignore", invalid="ignore"):
            if y.dtype == acc:
                return np.dot(y.T, y).astype(np.float64, copy=False)
            # Widened by row blocks that stay in cache, not as one copy of y: at
            # 100000 x 110 that copy was 88 MB and 0.47 s of a sparse SVD's 1.49 s.
            step = max(1, _GRAM_BLOCK_ELEMENTS // max(1, int(y.shape[1])))
            g = np.zeros((int(y.shape[1]),) * 2, dtype=acc)  # zero rows: the zero matrix
            for lo in range(0, int(y.shape[0]), step):
                b = y[lo:lo + step].astype(acc)
                g += np.dot(b.T, b)
            return g.astype(np.float64, copy=False)

    def tri_apply(self, y, r, *, accumulate=np.float64, rinv=None):
        acc = np.dtype(accumulate)
        if acc == np.float32 and y.dtype != np.float32:
            raise ValueError(f"cannot accumulate {y.dtype} data in float32")
        rinv = (upper_inverse(r) if rinv is None else rinv).astype(acc, copy=False)
        if y.dtype == acc:
            return np.matmul(y, rinv)
        # By row blocks, as gram: widened, multiplied and rounded while in cache.
        out = np.empty(y.shape, dtype=y.dtype)
        step = max(1, _GRAM_BLOCK_ELEMENTS // max(1, int(y.shape[1])))
        for lo in range(0, int(y.shape[0]), step):
            out[lo:lo + step] = np.matmul(y[lo:lo + step].astype(acc), rinv)
        return out

    def householder_qr(self, y):
        q, r = np.linalg.qr(y)
        return np.ascontiguousarray(q), r.astype(np.float64)

    def sum_squares(self, a):
        import math

        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):  # an infinite sum is the caller's to report
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
