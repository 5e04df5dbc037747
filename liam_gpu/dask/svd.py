"""The Dask :func:`svd_compress`: arguments, orientation and layout; the engine does the rest.

The operator is oriented by the shape alone, as in memory, then chosen by
how ``T``'s chunks lie: whole rows (:class:`~.row_blocks.DaskOperator`),
whole columns (:class:`~.column_blocks.ColumnBlocks`) or a grid
(:class:`~.grid_blocks.GridBlocks`); :func:`liam_gpu.rangefinder.fixed_rank`
factors it.
"""
from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .. import validation
from ..lowrank import LowRank
from ..rangefinder import fixed_rank
from ..sparse_input import is_scipy
from ..svd import fixed_rank_plan
from .checks import check_center, check_dask_array, check_device, check_svd_chunks
from .column_blocks import ColumnBlocks
from .grid_blocks import GridBlocks
from .row_blocks import DaskOperator

__all__ = ["svd_compress"]


def svd_compress(
                 x: Any,
                 k: int | None = None,
                 *,
                 n_oversamples: int = 10,
                 n_iter: int | str = "auto",
                 random_state: Any = 0,
                 center: Any = False,
                 device: Any = None,
                 check_finite: bool = True,
                 ) -> LowRank:
    """Rank-``k`` :class:`~liam_gpu.LowRank` of a Dask array, one Dask reduction per pass.

    The engine of :func:`liam_gpu.svd_compress` (:mod:`liam_gpu.rangefinder`,
    fixed rank).  As in memory the operator ``T`` is ``x`` when it is tall and
    ``x.T`` when it is wide (the factors swap on the way out).  When ``T``'s
    chunks hold whole rows (a tall ``x`` in row chunks, a wide one in column
    chunks) it is a :class:`DaskOperator` and each product with it is one
    pass of per-block tasks summed by a tree reduction::

        pass          Y_i = A_i Omega, V_i = A_i^T Y_i,     Y kept on the workers; V, ||A||^2
                      ||A_i||_F^2, Y_i^T Y_i                 and Y^T Y summed to the client
        repeat q:     R = shifted_chol(Y^T Y)               on the client (l x l)
                      W = basis(V R^-1)                     on the client (n x l)
        pass          Y_i = A_i W, V_i = A_i^T Y_i, Gram    (V only before the last step)
        Q = orthonormalize(Y)                               Gram reductions; Q = Y R^-1, lazy
        last pass     Bt = sum_i A_i^T Q_i                  n x l, to the client
        client        Bt = P Rb,  Rb^T = Uc S Vc^T          small SVD in float64
        U_i = Q_i Uc[:, :k]                                 on the workers, signs flipped

    so ``A`` is read ``q + 2`` times (one more per power step whose ``Y`` is
    too ill-conditioned to orthonormalize after ``A^T Y``, one for the
    residual when the error is small, as on one machine, and one for the
    means with ``center=True``) and never gathered; between passes the
    workers hold one ``m x l`` basis, at the end the long factor.  When
    ``T``'s chunks hold whole columns (a tall ``x`` in column chunks, a wide
    one in row chunks), the products go through ``S = T^T`` (``ColumnBlocks``):
    ``T X`` must be summed before ``T^T (T X)``, so ``2 q + 2`` passes, and
    the ``m x l`` bases live on the client.  When they form a grid (several
    chunks along both axes) ``x`` is not rechunked (that would move all of
    it between workers): ``T X`` sums ``T_ij X_j`` over the column blocks
    ``j`` of each row block ``i``, ``T^T Y`` sums ``T_ij^T Y_i`` over the row
    blocks (``GridBlocks``), again ``2 q + 2`` passes (``T X`` must be
    summed before ``T^T (T X)``), the ``m x l`` bases on the workers in
    ``T``'s row chunks.  Power
    iterations are normalized (unlike ``dask.array.linalg.svd_compressed``'s
    default).  The result equals :func:`liam_gpu.svd_compress` on the same
    data and seed to rounding, whatever the chunking: every block multiplies
    by its rows of the same Philox ``Omega``.

    Parameters
    ----------
    x
        ``dask.array.Array`` (m, n), tall or wide, in any chunking with known
        chunk sizes (whole rows, whole columns, or a grid); numpy or
        CuPy chunks, or scipy.sparse chunks (``da.from_array(csr_matrix)``,
        ``x.map_blocks(scipy.sparse.csr_matrix)``: every product is scipy's
        sparse-times-dense on the worker's CPU, no chunk is densified except
        row pieces of one in the residual pass).  Never modified.  Integers
        compute in float64, float16 in float32.  Complex input is refused
        (the conjugate transpose this would need is not implemented).
    k
        Rank, ``1 <= k <= min(m, n)``; default ``min(32, m, n)``.
    n_oversamples
        Oversampling ``p`` (the sketch width is ``k + p`` rounded up to 8).
    n_iter
        Power iterations ``q``; ``"auto"`` is scikit-learn's rule (7 if
        ``k < 0.1 n``, else 4).  None are run when ``l = n``.
    random_state
        Seed of the Philox stream, as for :func:`liam_gpu.svd_compress`.
    center
        As for :func:`liam_gpu.svd_compress`: False (default); True: factor
        ``x - 1 mean(x, axis=0)`` (PCA), the means found by one more pass;
        or ``n`` column means to subtract (array-like, or a 1-D Dask array,
        computed once).  The centring is applied inside every per-block
        product (``A_i W - r_i (c^T W)``, ``A_i^T Y_i - c (r_i^T Y_i)``),
        never materialised.  The factors and the error are those of the
        centred matrix.
    device
        Where each chunk is computed, resolved on its worker (see
        :func:`transform_matrix`); scipy.sparse chunks are computed on the
        CPU only (``None``, ``"auto"`` or ``"cpu"``).  The client always
        works on the CPU.
    check_finite
        Reject NaN/Inf in ``x``, found in the sketch ``A Omega`` of the first
        pass (NaN/Inf anywhere in ``A`` reaches it): no extra pass unless the
        sketch is not finite.

    Returns
    -------
    LowRank
        For row chunks: ``U`` a ``dask.array.Array`` (m, k) in ``x``'s row
        chunks (empty chunks left out), ``S`` (k,) and ``Vt`` (k, n) numpy
        arrays on the client; for column chunks ``Vt`` is the Dask array (k,
        n) in ``x``'s column chunks, ``U`` (m, k) and ``S`` numpy (for one
        chunk or a grid: the longer side is the Dask array, in ``x``'s
        chunks along that side).  Where ``T`` is in row blocks (a grid
        included) the Dask factor's blocks are persisted on the workers in
        the chunks' type (numpy for sparse chunks), the column signs (+-1)
        applied lazily on top; else it is made on the client.  dtype
        float32 for float32 input, else float64; ``relative_error`` the
        engine's estimate (within a factor 2 of the truth above the dtype's
        resolution).

    Raises
    ------
    TypeError
        ``x`` not a Dask array, complex or non-numeric; non-integer ``k``,
        ``n_oversamples``, ``n_iter`` or seed; ``device`` not a string;
        ``center`` not numeric.
    ValueError
        ``x`` not 2-D, empty, of unknown chunk sizes, or holding NaN/Inf
        (sparse chunks too); ``k``, ``n_oversamples``, ``n_iter``,
        ``random_state`` or ``device`` out of range; ``device`` other than
        the CPU for sparse chunks; ``center`` not of length ``n``, holding
        NaN/Inf, or given for an ``x`` that is not 2-D.
    """
    x = check_dask_array("x", x)
    centring = not (center is None or (isinstance(center, (bool, np.bool_)) and not center))
    if centring and x.ndim != 2:
        raise ValueError(f"center applies to a 2-D x (a matrix of rows to centre), got shape {tuple(x.shape)}")
    validation.check_ndim("x", x, ndim=2)
    dtype = validation.float_dtype("x", x)
    check_svd_chunks(x)
    m, n = (int(d) for d in x.shape)
    validation.check_not_empty("x", x)
    check_device(device)
    sparse = is_scipy(x._meta)
    if sparse and device not in (None, "auto", "cpu"):
        raise ValueError(
            f"x has scipy.sparse chunks, which are computed on device='cpu' only, got device={device!r}"
        )
    plan = fixed_rank_plan(k, min(m, n), n_oversamples=n_oversamples, n_iter=n_iter, random_state=random_state,
                           check_finite=check_finite)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    k = plan.k
    mean = check_center(center, n) if centring else None

    # Oriented by the shape alone, as in memory (T = x when tall, x.T when wide), so that the
    # sketch T Omega -- and the result -- does not depend on the chunking; then T's chunks hold
    # whole rows (the fused DaskOperator), whole columns (through S = T^T, ColumnBlocks), or
    # form a grid (GridBlocks: block products summed over the contracted block axis).
    swapped = m < n
    t = x.T if swapped else x
    if any(c == 0 for axis in t.chunks for c in axis):
        # Zero-size chunks (left by filtering) carry nothing; dropping them moves no data.
        t = t.rechunk({axis: tuple(c for c in t.chunks[axis] if c > 0) for axis in (0, 1)})
    grid = t.numblocks[0] > 1 and t.numblocks[1] > 1
    by_rows = grid or t.numblocks[1] == 1
    if grid:  # products block by block, summed over the contracted block axis: never rechunked
        inner = GridBlocks(t, dtype, device, swapped=swapped)
    else:
        inner = DaskOperator(t if by_rows else t.T, dtype, device, swapped=swapped if by_rows else not swapped)
    if centring:
        inner.centre(mean, check=bool(check_finite))
    op = inner if by_rows else ColumnBlocks(inner, swapped=swapped)
    fact = fixed_rank(op, plan)
    u, s, vt = fact.factors(k, flip=True)
    if not by_rows:
        # The client made both factors; the one along x's chunked axis goes back as a Dask
        # array in x's chunks, as it comes from the row-block operator.
        if swapped:  # x wide, in row chunks: U
            u = da.from_array(u, chunks=(t.chunks[1], (k,)))
        else:  # x tall, in column chunks: Vt
            vt = da.from_array(vt, chunks=((k,), t.chunks[1]))
    return LowRank(u, s, vt, relative_error=fact.relative_error(k))
