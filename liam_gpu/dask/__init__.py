"""Dask arrays: :func:`transform_matrix` and :func:`svd_compress` across a cluster.

A matrix too large for one machine lives as a ``dask.array`` chunked along its
rows (hundreds of millions of signals or embeddings), one Dask worker per GPU
with ``dask-cuda``.  Every chunk is computed by the single-machine code of
this package on the worker that holds it (our kernels on a GPU worker, numpy
on a CPU worker, CuPy or numpy chunks alike); nothing here runs a cluster of
its own.

* :func:`transform_matrix` is a lazy ``map_blocks`` of
  :func:`liam_gpu.transform_matrix`: same row chunks, same chunk type.
* :func:`svd_compress` is the randomized range finder of
  :func:`liam_gpu.svd_compress` with each pass over ``A`` one Dask
  computation: per-chunk sketches, products and Gram matrices, summed across
  chunks by a tree reduction; the small matrices (``l x l`` factors, the
  ``n x l`` right-hand bases) are handled on the client.  For a tall matrix
  in row chunks (or a wide one in column chunks) ``A`` is read once per pass
  (``q + 2`` passes) and never gathered, and the ``m x l`` bases stay on the
  workers, in the chunks of ``A``; chunks along the other axis take ``2 q +
  2`` passes with the long bases on the client.  A grid of chunks (several
  along both axes) is never rechunked: every product multiplies each block
  by the matching piece of the small factor and sums over the contracted
  block axis, ``2 q + 2`` passes with the long bases on the workers.
  Centring (``center=``) and scipy.sparse chunks are applied inside each
  block's products.

The operator is oriented by the shape alone, as in memory, and the sketch
``Omega`` is the Philox stream of :mod:`liam_gpu.philox`, indexed by
``(seed, column of the operator, sketch column)``: every chunk multiplies by
its rows of the same ``Omega`` the whole matrix would, so the result does not
depend on the chunking or on the backend of the workers, and equals the
single-machine ``svd_compress`` on the same data and seed to rounding.
``docs/distributed.md`` covers deployment and measurements.
"""
from __future__ import annotations

import contextlib
import math
import operator
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

try:
    import dask
    import dask.array as da
    from dask import delayed
    from dask.array.utils import meta_from_array
except ImportError as exc:  # dask is an optional extra
    raise ImportError(
        "liam_gpu.dask needs Dask; install it with: pip install 'liam-gpu[dask]'"
    ) from exc

from . import arrays, backends, philox, validation
from .backends.base import upper_inverse
from .lowrank import LowRank
from .operators import _row_blocks, left_factor
from .rangefinder import Plan, fixed_rank
from .svd import DEFAULT_RANK, _check_count, _n_iter, seed_from_random_state
from .transform import transform_matrix as _local_transform

__all__ = ["transform_matrix", "svd_compress"]

#: Partial results combined per task of the tree reductions.
FAN_IN = 8


# --------------------------------------------------------------------------- transform


def transform_matrix(
    x: Any,
    weights: Any,
    bias: Any = None,
    activation: str | None = None,
    *,
    device: Any = None,
    check_finite: bool = True,
) -> Any:
    """``activation(x @ weights.T + bias)`` for a Dask array, chunk by chunk, lazily.

    Parameters
    ----------
    x
        ``dask.array.Array`` of shape ``(..., d_in)`` with numpy or CuPy
        chunks, chunked along any axis but the last: every chunk must hold
        whole rows (``x.numblocks[-1] == 1``).  A chunking along the features
        is refused rather than silently rechunked (a rechunk moves all of
        ``x`` between workers); ``x.rechunk({-1: -1})`` is the fix the error
        message names.
    weights
        ``(d_out, d_in)`` numpy, CuPy or torch array (one matrix for all rows;
        batched weights are not supported here).  A copy travels once to every
        worker and is moved to each chunk's device there.
    bias
        ``(d_out,)`` or None.
    activation
        As for :func:`liam_gpu.transform_matrix`.
    device
        Where each chunk is computed, resolved on the worker that holds it:
        ``None``/``"auto"`` (a CuPy chunk's own GPU, else the worker's GPU if
        it has one, else its CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        ``"emulator"``.
    check_finite
        Reject NaN/Inf, per chunk when computed (and in ``weights``/``bias``
        at once).

    Returns
    -------
    dask.array.Array
        ``(..., d_out)``, not computed: the row chunks of ``x``, one chunk
        along the last axis, chunks of ``x``'s type (its ``_meta``), dtype as
        for :func:`liam_gpu.transform_matrix`.

    Raises
    ------
    TypeError
        ``x`` not a Dask array; complex or non-numeric ``x``; ``device`` not
        a string.
    ValueError
        ``x`` chunked along its last axis or of unknown width (unknown row
        chunk sizes are fine); shapes that do
        not match; batched weights; an unknown activation or device; NaN/Inf
        in ``weights``/``bias``.
    """
    x = _check_dask_array("x", x)
    validation.check_ndim("x", x, min_ndim=1)
    validation.float_dtype("x", x, allow_half=True)
    _check_row_chunks("x", x, known_rows=False)
    _check_device(device)
    w = _host_copy("weights", weights)
    b = None if bias is None else _host_copy("bias", bias)
    if w.ndim != 2:
        raise ValueError(
            f"weights must be 2-D (d_out, d_in) for a Dask array, got shape {tuple(w.shape)}; "
            "batched weights are supported by liam_gpu.transform_matrix on in-memory arrays only"
        )
    # One row of zeros through the single-machine transform checks every
    # argument now (with its messages) and gives the result dtype and width.
    probe = _local_transform(
        np.zeros((1, int(x.shape[-1])), dtype=x.dtype), w, b, activation, device="cpu",
        check_finite=check_finite,
    )
    out_dtype, d_out = probe.dtype, int(probe.shape[-1])
    # Delayed: the weights are one key of the graph, sent once to each worker.
    return x.map_blocks(
        _transform_block, delayed(w), None if b is None else delayed(b), activation, device,
        check_finite, out_dtype,
        chunks=x.chunks[:-1] + ((d_out,),),
        dtype=out_dtype,
        meta=meta_from_array(x, ndim=x.ndim, dtype=out_dtype),
    )


def _transform_block(block: Any, weights: np.ndarray, bias: np.ndarray | None, activation: str | None,
                     device: Any, check_finite: bool, out_dtype: np.dtype) -> Any:
    """One chunk of :func:`transform_matrix`, on a worker."""
    kind = arrays.kind_of(block)
    d_out = int(weights.shape[0])
    if block.size == 0:  # a zero-row chunk: nothing to compute, the single-machine call refuses it
        return arrays.array_module(block).empty(tuple(block.shape[:-1]) + (d_out,), dtype=out_dtype)
    with arrays.caller_stream(kind):
        w = arrays.from_compute(weights, kind)
        b = None if bias is None else arrays.from_compute(bias, kind)
        return _local_transform(block, w, b, activation, device=device, check_finite=check_finite)


# --------------------------------------------------------------------------- svd_compress


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
    one in row chunks), the products go through ``S = T^T`` (``_ColumnBlocks``):
    ``T X`` must be summed before ``T^T (T X)``, so ``2 q + 2`` passes, and
    the ``m x l`` bases live on the client.  When they form a grid (several
    chunks along both axes) ``x`` is not rechunked (that would move all of
    it between workers): ``T X`` sums ``T_ij X_j`` over the column blocks
    ``j`` of each row block ``i``, ``T^T Y`` sums ``T_ij^T Y_i`` over the row
    blocks (``_GridBlocks``), again ``2 q + 2`` passes (``T X`` must be
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
    x = _check_dask_array("x", x)
    centring = not (center is None or (isinstance(center, (bool, np.bool_)) and not center))
    if centring and x.ndim != 2:
        raise ValueError(f"center applies to a 2-D x (a matrix of rows to centre), got shape {tuple(x.shape)}")
    validation.check_ndim("x", x, ndim=2)
    dtype = validation.float_dtype("x", x)
    _check_svd_chunks(x)
    m, n = (int(d) for d in x.shape)
    validation.check_not_empty("x", x)
    _check_device(device)
    sparse = _is_sparse(x._meta)
    if sparse and device not in (None, "auto", "cpu"):
        raise ValueError(
            f"x has scipy.sparse chunks, which are computed on device='cpu' only, got device={device!r}"
        )
    k = min(DEFAULT_RANK, m, n) if k is None else validation.check_rank("k", k, min(m, n))
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    q = _n_iter(n_iter, k, min(m, n))
    seed = seed_from_random_state(random_state)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    mean = _check_center(center, n) if centring else None

    # Oriented by the shape alone, as in memory (T = x when tall, x.T when wide), so that the
    # sketch T Omega -- and the result -- does not depend on the chunking; then T's chunks hold
    # whole rows (the fused DaskOperator), whole columns (through S = T^T, _ColumnBlocks), or
    # form a grid (_GridBlocks: block products summed over the contracted block axis).
    swapped = m < n
    t = x.T if swapped else x
    if any(c == 0 for axis in t.chunks for c in axis):
        # Zero-size chunks (left by filtering) carry nothing; dropping them moves no data.
        t = t.rechunk({axis: tuple(c for c in t.chunks[axis] if c > 0) for axis in (0, 1)})
    grid = t.numblocks[0] > 1 and t.numblocks[1] > 1
    by_rows = grid or t.numblocks[1] == 1
    if grid:  # products block by block, summed over the contracted block axis: never rechunked
        inner = _GridBlocks(t, dtype, device, swapped=swapped)
    else:
        inner = DaskOperator(t if by_rows else t.T, dtype, device, swapped=swapped if by_rows else not swapped)
    if centring:
        inner.centre(mean, check=bool(check_finite))
    op = inner if by_rows else _ColumnBlocks(inner, swapped=swapped)
    plan = Plan(k=k, p=p, q=q, seed=seed, check=bool(check_finite), estimate=True)
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


# --------------------------------------------------------------------------- argument checks


def _check_dask_array(name: str, x: Any) -> Any:
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__}; "
            "for in-memory arrays use liam_gpu.transform_matrix / liam_gpu.svd_compress"
        )
    return x


def _check_row_chunks(name: str, x: Any, *, known_rows: bool) -> None:
    """Every chunk must hold whole rows (one chunk along the last axis) of a known width.

    ``known_rows``: the row chunk sizes must be known too (the SVD needs the
    shapes of its bases; a lazy map does not).
    """
    axes = x.chunks if known_rows else x.chunks[-1:]
    if any(math.isnan(c) for axis in axes for c in axis):
        raise ValueError(
            f"{name} has unknown chunk sizes {x.chunks}; call {name}.compute_chunk_sizes() first"
        )
    if x.numblocks[-1] != 1:
        axis = x.ndim - 1
        raise ValueError(
            f"{name} is chunked along its last axis ({x.numblocks[-1]} chunks {x.chunks[-1]}); "
            f"each chunk must hold whole rows: rechunk with {name}.rechunk({{{axis}: -1}}) "
            "(not done implicitly: it moves all of the array between workers)"
        )


def _check_svd_chunks(x: Any) -> None:
    """Every chunk size of ``x`` must be known (the bases' shapes follow them); any chunking is taken."""
    if any(math.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError(f"x has unknown chunk sizes {x.chunks}; call x.compute_chunk_sizes() first")


def _check_device(device: Any) -> None:
    """The ``device=`` name is resolved on each worker; here only its spelling is checked."""
    if device is not None and not isinstance(device, str):
        raise TypeError(
            "device must be None, 'auto', 'cpu', 'cuda', 'cuda:N' or 'emulator' for Dask arrays, "
            f"got {type(device).__name__}"
        )
    backends.canonical_device(device)


def _is_sparse(block: Any) -> bool:
    """Whether ``block`` is a scipy.sparse matrix or array (without importing scipy.sparse to ask)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(block)


def _check_center(center: Any, n: int) -> np.ndarray | None:
    """``center=``'s column means (host float64, length ``n``), or None for ``center=True`` (computed later)."""
    if isinstance(center, (bool, np.bool_)):
        return None
    if isinstance(center, da.Array):
        center = center.compute()  # n numbers: the client holds n x l matrices anyway
    mean = _host_copy("center", center)
    validation.float_dtype("center", mean)  # complex, strings, objects: a TypeError naming center
    if mean.shape != (n,):
        raise ValueError(
            f"center must be True, False or {n} column means (shape ({n},)), got shape {tuple(mean.shape)}"
        )
    mean = mean.astype(np.float64)
    if not np.isfinite(mean).all():
        raise ValueError("center contains NaN or Inf")
    return mean


def _host_copy(name: str, value: Any) -> np.ndarray:
    """A numpy copy of a small argument: shipped to every worker, and safe from later changes."""
    kind = arrays.common_kind(**{name: value})
    with arrays.caller_stream(kind):
        host = arrays.from_compute(arrays.to_compute(value, kind, name=name), arrays.NUMPY)
    return np.array(host, copy=True)


# --------------------------------------------------------------------------- the cluster as a backend


class DaskOperator:
    """A tall Dask array as an operator of the SVD engine (:mod:`liam_gpu.operators`).

    The operator is its own basis ``space``: the primitives
    :mod:`liam_gpu.cholqr` asks of a backend, over tall Dask arrays.

    Tall matrices (``A`` and the ``m x l`` bases) are Dask arrays in the row
    chunks of ``A``; each block is computed on its worker by the backend that
    ``device`` names for the block's type (scipy.sparse blocks: scipy on the
    CPU).  ``gram`` is a tree reduction of per-block Gram matrices, computed
    at once -- or already known, for a basis made by a pass over ``A``, which
    sums its Gram matrices as it goes; ``tri_apply`` is lazy, block by block
    (Dask fuses it into whatever reads it next); ``householder_qr`` is a
    TSQR.  The ``n x l`` and ``l x l`` matrices live on the client and are
    handled by the CPU backend (:attr:`backend`).

    Every per-block result keeps the block's columns as axes of its own (none
    is contracted), so that Dask fuses the reading (or generating) of a block
    of ``A`` into the task that uses it: no block of ``A`` is ever stored.

    After :meth:`centre` the operator is ``T = A - r c^T`` (the rank-one
    update of :class:`liam_gpu.operators.RankOneUpdate`), applied inside each
    block's products: ``(r, c) = (1, mu)`` for row chunks of the caller's
    matrix, ``(mu, 1)`` for column chunks (``A`` is then the caller's
    transpose).  Unlike the in-memory update, each pass still reads a block
    once for ``Y_i`` and ``A_i^T Y_i``: ``Y_i`` is centred on the worker
    before ``A_i^T Y_i`` is formed, and ``c (r_i^T Y_i)`` is subtracted from
    the sum on the client.

    Parameters
    ----------
    a
        The input: 2-D Dask array, one column chunk, no empty row chunk.
    dtype
        The dtype computed in (blocks of ``a`` are converted on use).
    device
        The ``device=`` argument, resolved on the workers.
    swapped
        ``a`` is the caller's matrix transposed (the factors swap on the way out).
    """

    def __init__(self, a: Any, dtype: np.dtype, device: Any, *, swapped: bool = False) -> None:
        self.swapped = swapped
        self.a = a
        self.dtype = np.dtype(dtype)
        self.device = device
        self.backend = backends.get_backend("cpu")
        # Bases of sparse blocks are dense numpy arrays; else of the blocks' own type.
        self.meta = (np.empty((0, 0), dtype=self.dtype) if _is_sparse(a._meta)
                     else meta_from_array(a, ndim=2, dtype=self.dtype))
        # The Gram accumulation cholqr asks for, summed as each basis is made.
        self.accumulations = (np.dtype(np.float64),)
        self._grams: dict[tuple[str, np.dtype], np.ndarray] = {}
        self._norm2: float | None = None
        self._sketch_finite = True
        # The centring T = A - r c^T (see centre): c on the client (None: ones), r on the
        # workers in A's row chunks (None: ones).
        self.centred = False
        self._c: np.ndarray | None = None
        self._r: Any = None

    def centre(self, mean: np.ndarray | None, *, check: bool) -> None:
        """Factor ``A - 1 mu^T`` of the caller's matrix from now on (``mean`` None: its column means).

        ``mean`` is ``mu`` (host float64, one per column of the caller's
        matrix).  ``A`` the caller's matrix: ``c = mu`` lives on the client
        and travels to every task (one graph key); ``mean=None`` sums the
        columns in one pass (means that are not finite are refused: ``A``'s
        NaN/Inf, named as such when ``check``).  ``A`` its transpose
        (``swapped``): ``r = mu`` is a Dask array in ``A``'s row chunks, each
        task reading its part; ``mean=None`` makes it from the row means of
        each block, persisted on the workers (one pass).
        """
        mt, nt = self.shape
        if not self.swapped:
            if mean is None:
                mean = self._column_sums() / mt
                if not np.isfinite(mean).all():
                    if check:
                        self.check_finite()  # raises for NaN/Inf in x
                    raise ValueError("x's column sums are not finite (NaN/Inf, or finite values whose sum "
                                     "overflows float64); pass its means as center= or scale it down")
            self._c = np.ascontiguousarray(mean, dtype=np.float64)
        elif mean is None:
            self._r = self._row_means().persist()
        else:
            self._r = da.from_array(np.ascontiguousarray(mean, dtype=np.float64), chunks=(self.a.chunks[0],))
        self.centred = True

    def _column_sums(self) -> np.ndarray:
        """``A``'s column sums on the client (host float64): one pass."""
        parts = self._per_block(_column_sums_part, "a", [(self.a, "ia")], {"a": self.shape[1]}, self.dtype)
        return np.asarray(parts.sum(axis=0, split_every=FAN_IN).compute(), dtype=np.float64)

    def _row_means(self) -> Any:
        """``A``'s row means, lazily: a float64 Dask array in ``A``'s row chunks."""
        return self.a.map_blocks(_row_means_block, self.dtype, self.device, drop_axis=1,
                                 dtype=np.float64, meta=np.empty((0,)))

    # -- the operator protocol ---------------------------------------------------------
    sums_in_sketch = True  # ||A||^2 comes with the sketch pass (see sum_squares)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(d) for d in self.a.shape)

    @property
    def space(self) -> "DaskOperator":
        return self

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any]:
        if col0:
            raise ValueError("the Dask operator sketches from the first column of Omega only")
        y, v, self._norm2, self._sketch_finite = self._sketch(seed, l, with_v=with_v)
        return y, v

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any]:
        return self.power_pass(w, with_v=with_v)

    def sum_squares(self) -> float:
        """``||T||_F^2``: summed by the sketch pass, else one pass of its own."""
        if self._norm2 is None:
            parts = self._per_block(_sum_squares_part, "a", [(self.a, "ia"), (self._r, "i")], {"a": 1},
                                    self._shift(), self.dtype)
            self._norm2 = float(parts.sum().compute())
        return self._norm2

    def residual_sq(self, q: Any, bt: np.ndarray) -> float:
        """``||T - Q Bt^T||_F^2``: one pass, block by block on the workers."""
        small = delayed(np.ascontiguousarray(bt, dtype=self.dtype))
        parts = self._per_block(_residual_part, "ab", [(self.a, "ia"), (self._r, "i"), (q, "ib")],
                                {"a": 1, "b": 1}, small, self._shift(), self.dtype)
        return float(parts.sum().compute())

    def require_finite(self, y: Any) -> None:
        """Raise for NaN/Inf in ``x`` if ``y`` (the sketch, or a host number made from ``x``) is not finite."""
        finite = bool(np.isfinite(y).all()) if isinstance(y, np.ndarray) else self._sketch_finite
        if finite:
            return
        self.check_finite()  # raises for NaN/Inf in x
        raise ValueError(f"x is finite but so large that its products overflow {self.dtype}; scale it down")

    def transpose(self, x: Any) -> Any:
        """``x^T`` of a basis-space array, lazily (a wide ``x``'s ``Vt`` stays on the workers)."""
        return x.T

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        if not flip:
            small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
            return q.map_blocks(_matmul_block, small, self.device, chunks=(q.chunks[0], (int(c.shape[1]),)),
                                dtype=self.dtype, meta=self.meta), None
        return self.left_factor(q, c)

    # -- passes over A -------------------------------------------------------------------
    def _sketch(self, seed: int, width: int, *, with_v: bool) -> tuple[Any, np.ndarray | None, float, bool]:
        """``Y = T Omega`` (persisted, its Gram matrices known), ``V = T^T Y``, ``||T||_F^2``: one pass.

        Also whether ``Y`` is finite (NaN/Inf in ``A`` always reach it: no
        entry of ``Omega`` is zero).  ``V`` only ``with_v`` (else None).
        """
        c_omega = None
        if self.centred:  # c^T Omega, from the same Philox stream the blocks use
            c_omega = self._c_times(_omega_rows(seed, self.shape[1], width, self.dtype, self._c))
        y, stats = self._basis_pass(_sketch_block, width, seed, width, shift=self._shift(c_omega), leading=2,
                                    with_v=with_v)
        return y, stats.v, float(stats.leading[0]), not stats.leading[1]

    def power_pass(self, c: np.ndarray, *, with_v: bool) -> tuple[Any, np.ndarray | None]:
        """``Y = T @ C`` for a client matrix ``C`` (persisted, its Gram matrices known) and ``V = T^T Y``.

        One pass over ``A``; ``V`` only ``with_v`` (else None).
        """
        small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
        shift = self._shift(self._c_times(np.asarray(c, dtype=np.float64)) if self.centred else None)
        y, stats = self._basis_pass(_power_block, int(c.shape[1]), small, shift=shift, leading=0, with_v=with_v)
        return y, stats.v

    def t_times(self, y: Any, *, with_norm: bool = False) -> Any:
        """``T^T Y`` on the client in the compute dtype: one pass over ``A``.

        ``with_norm``: also ``||T||_F^2`` from the same pass, returned second.
        """
        n, l = int(self.a.shape[1]), int(y.shape[1])
        rows = n + int(self.centred) + int(with_norm)  # A_i^T Y_i, then r_i^T Y_i, then ||T_i||^2
        product = self._per_block(_t_times_part, "ab", [(self.a, "ia"), (self._r, "i"), (y, "ib")],
                                  {"a": rows, "b": l}, self._shift(), with_norm, self.dtype)
        total = np.asarray(product.sum(axis=0, split_every=FAN_IN).compute(), dtype=np.float64)
        if with_norm:
            total, norm2 = total[:-1], float(total[-1, 0])
        result = np.ascontiguousarray(self._minus_c(total), dtype=self.dtype)
        return (result, norm2) if with_norm else result

    def check_finite(self) -> None:
        """Raise ``ValueError`` if ``A`` holds NaN/Inf (one more pass, only after a non-finite sum)."""
        finite = self._per_block(_finite_part, "a", [(self.a, "ia")], {"a": 1}, self.dtype)
        if not bool(finite.min().compute()):
            raise ValueError("x contains NaN or Inf; pass check_finite=False to skip this check")

    # -- the primitives cholqr asks for --------------------------------------------------
    def gram(self, y: Any, *, accumulate: Any = np.float64) -> np.ndarray:
        """``Y^T Y`` as a host float64 array: per-block Gram matrices summed in float64."""
        known = self._grams.get((y.name, np.dtype(accumulate)))
        return known.copy() if known is not None else self._gram_sum(y, accumulate).compute()

    def tri_apply(self, y: Any, r: np.ndarray, *, accumulate: Any = np.float64,
                  rinv: np.ndarray | None = None) -> Any:
        """``Y R^-1``, lazily, block by block (``rinv``, when given, is ``R^-1``, formed once on the client)."""
        r = np.asarray(r, dtype=np.float64)
        rinv = upper_inverse(r) if rinv is None else np.asarray(rinv, dtype=np.float64)
        return y.map_blocks(_tri_apply_block, r, rinv, np.dtype(accumulate), self.device,
                            dtype=self.dtype, meta=self.meta)

    def householder_qr(self, y: Any) -> tuple[Any, np.ndarray]:
        """Thin QR of a numerically rank-deficient ``Y`` by TSQR: ``Q`` orthonormal whatever the rank.

        Each block is factored ``Y_i = Q_i R_i`` by the backend's Householder
        QR on its worker; the stacked ``R_i`` (``min(rows_i, l) x l`` each) are
        factored on the client, ``[R_i] = [S_i] R``, and ``Q = [Q_i S_i]``
        stays on the workers.
        """
        pairs = y.map_blocks(_qr_block, self.device, dtype=self.dtype, meta=self.meta).persist()
        rs = dask.compute(*[delayed(operator.getitem)(b, 1) for b in pairs.to_delayed().ravel()])
        s, r = np.linalg.qr(np.vstack(rs))
        bounds = np.cumsum([0] + [int(ri.shape[0]) for ri in rs])
        parts = [np.ascontiguousarray(s[lo:hi], dtype=self.dtype) for lo, hi in zip(bounds[:-1], bounds[1:])]
        q = pairs.map_blocks(_tsqr_block, delayed(parts), self.device, dtype=self.dtype, meta=self.meta,
                             chunks=y.chunks)
        return q, np.asarray(r, dtype=np.float64)

    # -- the result ------------------------------------------------------------------------
    def left_factor(self, q: Any, c: np.ndarray) -> tuple[Any, np.ndarray]:
        """``U = Q C`` with scikit-learn's ``svd_flip`` signs, and the signs.

        One round: every block of ``Q C`` is persisted together with its
        largest-magnitude entry per column; the signs (ties to the first row,
        as an ``argmax`` over the whole ``U``) then scale the persisted blocks
        lazily.
        """
        k = int(c.shape[1])
        small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
        pairs = q.map_blocks(_left_block, small, self.device, chunks=(q.chunks[0], (k,)), dtype=self.dtype,
                             meta=self.meta)
        u = pairs.map_blocks(operator.getitem, 0, dtype=self.dtype, meta=self.meta)
        picked = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * q.numblocks[0], (2 * k,)),
                                  dtype=np.float64, meta=np.empty((0, 0)))
        u, picked = dask.persist(u, picked)
        rows = picked.compute().reshape(-1, 2, k)
        best, value = rows[0]
        for cand_best, cand_value in rows[1:]:
            better = cand_best > best
            best, value = np.where(better, cand_best, best), np.where(better, cand_value, value)
        signs = np.where(value < 0, -1.0, 1.0)
        return u.map_blocks(_scale_columns_block, signs, dtype=self.dtype, meta=self.meta), signs

    # -- centring on the client ------------------------------------------------------------
    def _shift(self, c_times: np.ndarray | None = None) -> Any:
        """What every task needs of the centring (one graph key), or None without centring."""
        if not self.centred:
            return None
        c = None if self._c is None else self._c.astype(self.dtype)
        cx = None if c_times is None else np.ascontiguousarray(c_times, dtype=self.dtype)
        return delayed(_Shift(c, cx))

    def _c_times(self, x: np.ndarray) -> np.ndarray:
        """``c^T X`` as a (1, l) host float64 row (``c`` the means, or ones)."""
        return (x.sum(axis=0) if self._c is None else self._c @ x)[None, :]

    def _minus_c(self, total: np.ndarray) -> np.ndarray:
        """``sum_i A_i^T Y_i - c sum_i r_i^T Y_i`` from their stacked sums (no-op without centring)."""
        if not self.centred:
            return total
        v, rty = total[:-1], total[-1:]
        return v - (rty if self._c is None else self._c[:, None] * rty)

    # -- helpers ---------------------------------------------------------------------------
    def _basis_pass(self, fn: Callable, cols: int, *args: Any, shift: Any, leading: int,
                    with_v: bool) -> tuple[Any, "_Stats"]:
        """A pass over ``A`` that makes a basis ``Y`` (``cols`` columns) and sums per-block statistics.

        ``fn(block, r_i, *args, shift, with_v, dtype, accumulations, device)``
        returns ``(Y_i, stats_i)``, ``stats_i`` a row of ``leading`` numbers,
        then ``T_i^T Y_i`` (``with_v``; with centring ``A_i^T Y_i`` and
        ``r_i^T Y_i``), then the Gram matrices of ``Y_i`` for each of
        :attr:`accumulations`.  ``Y`` is persisted, the sums come back, and
        the Gram matrices are remembered for :meth:`gram`.  One task per block
        computes all of it, so a block of ``A`` is read once however many
        results use it.
        """
        n = int(self.a.shape[1])
        v_rows = n + 1 if self.centred else n
        layout = _Stats.layout(leading, v_rows * cols if with_v else 0, len(self.accumulations) * cols * cols)
        pairs = da.blockwise(fn, "ij", self.a, "ij", self._r, None if self._r is None else "i",
                             *[v for arg in (*args, shift, with_v, self.dtype, self.accumulations, self.device)
                               for v in (arg, None)],
                             dtype=self.dtype, meta=self.meta)
        y = pairs.map_blocks(operator.getitem, 0, chunks=(self.a.chunks[0], (cols,)), dtype=self.dtype,
                             meta=self.meta)
        stats = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * self.a.numblocks[0], (layout[-1],)),
                                 dtype=np.float64, meta=np.empty((0, 0)))
        y, total = dask.persist(y, stats.sum(axis=0, split_every=FAN_IN))
        sums = _Stats.split(np.asarray(total.compute(), dtype=np.float64), layout, (v_rows, cols))
        if sums.v is not None:
            sums = _Stats(sums.leading, np.ascontiguousarray(self._minus_c(sums.v), dtype=self.dtype), sums.grams)
        grams = sums.grams.reshape(len(self.accumulations), cols, cols)
        self._grams = {(y.name, acc): g for acc, g in zip(self.accumulations, grams)}
        return y, sums

    def _per_block(self, fn: Callable, out: str, inputs: Sequence[tuple[Any, str]], sizes: dict[str, int],
                   *args: Any) -> Any:
        """``fn`` on each row block: one host float64 array per block, stacked along a new first axis.

        ``inputs`` are ``(array, index)`` pairs, ``"i"`` naming the row
        blocks and one more letter an array's column axis (``(None, "i")``:
        ``fn`` gets None); ``out`` names the axes of one block's result and
        ``sizes`` their lengths.  Every input letter must be in ``out`` (no
        axis is contracted, so Dask can fuse the production of the input
        blocks into these tasks).  ``fn`` gets the input blocks, then ``args``
        and ``device``.
        """
        pairs: list[Any] = []
        for arr, index in inputs:
            pairs += [arr, None if arr is None else index]
        for value in (*args, self.device):
            pairs += [value, None]
        present = {letter for arr, index in inputs if arr is not None for letter in index[1:]}
        return da.blockwise(
            fn, "i" + out, *pairs,
            new_axes={ax: size for ax, size in sizes.items() if ax not in present},
            adjust_chunks={"i": 1, **{ax: size for ax, size in sizes.items() if ax in present}},
            dtype=np.float64, meta=np.empty((0,) * (1 + len(out))),
        )

    def _gram_sum(self, y: Any, accumulate: Any) -> Any:
        l = int(y.shape[1])
        parts = self._per_block(_gram_part, "ab", [(y, "ia")], {"a": l, "b": l}, np.dtype(accumulate))
        return parts.sum(axis=0, split_every=FAN_IN)


class _ColumnBlocks:
    """A tall operator ``T`` whose Dask blocks hold whole columns, for the engine, on the client.

    The engine orients a matrix by its shape alone (``T`` is the caller's
    matrix when tall, its transpose when wide), as in memory, so that the
    sketch ``T Omega`` -- and with it the result -- does not depend on the
    chunking.  When ``T``'s chunks hold whole columns (a tall matrix in column
    chunks, a wide one in row chunks) the products go through ``S = T^T``, a
    :class:`DaskOperator` over those blocks as row blocks (``S``'s centring
    is ``T``'s, transposed)::

        T X = S^T X      one pass: sum_j S_j^T X_j, X in S's row chunks (Omega: made per block)
        T^T Y = S Y      one pass: S_j Y per block, gathered
        ||T - Q Bt^T||   = ||S - Bt Q^T||, one pass

    The ``mt x l`` bases (the long side) and the ``nt x l`` ones live on the
    client (the CPU backend is :attr:`space` and :attr:`backend`); ``T X``
    must be summed before ``T^T Y`` can start, so a power step reads ``A``
    twice where :class:`DaskOperator` reads it once: ``2 q + 2`` passes in
    all (``||T||_F^2`` comes with the sketch).
    """

    def __init__(self, s: DaskOperator, *, swapped: bool) -> None:
        self.s = s
        self.swapped = swapped
        self.dtype = s.dtype
        self.backend = s.backend
        self._norm2: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        nt, mt = self.s.shape
        return mt, nt

    @property
    def space(self) -> Any:
        return self.backend

    def _in_s_chunks(self, x: np.ndarray) -> Any:
        """A client ``nt x l`` matrix as a Dask array in ``S``'s row chunks (one graph key per block)."""
        return da.from_array(np.ascontiguousarray(x, dtype=self.dtype), chunks=(self.s.a.chunks[0], x.shape[1]))

    def _t_side(self, y: np.ndarray) -> np.ndarray:
        """``T^T Y = S Y``: one pass, its blocks gathered to the client."""
        blocks, _ = self.s.power_pass(np.asarray(y), with_v=False)
        host = blocks.map_blocks(arrays.from_compute, arrays.NUMPY, dtype=self.dtype,
                                 meta=np.empty((0, 0), dtype=self.dtype))  # CuPy blocks come to the host
        return np.ascontiguousarray(host.compute(), dtype=self.dtype)

    def sketch(self, seed: int, l: int, col0: int = 0, *, with_v: bool = False) -> tuple[Any, Any | None]:
        if col0:
            raise ValueError("the Dask operator sketches from the first column of Omega only")
        omega = da.map_blocks(_omega_block, seed, l, self.dtype, chunks=(self.s.a.chunks[0], (l,)),
                              dtype=self.dtype, meta=np.empty((0, 0), dtype=self.dtype))
        with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf: reported by the caller, from Y
            y, self._norm2 = self.s.t_times(omega, with_norm=True)
        return y, (self._t_side(y) if with_v else None)

    def power(self, w: Any, *, with_v: bool = False) -> tuple[Any, Any | None]:
        y = self.s.t_times(self._in_s_chunks(w))
        return y, (self._t_side(y) if with_v else None)

    def t_times(self, y: Any) -> Any:
        return self._t_side(y)

    sums_in_sketch = True  # ||T||^2 comes with the sketch pass (see sum_squares)

    def sum_squares(self) -> float:
        """``||T||_F^2``: summed by the sketch pass, else one pass of its own."""
        return self.s.sum_squares() if self._norm2 is None else self._norm2

    def residual_sq(self, q: Any, bt: Any) -> float:
        return self.s.residual_sq(self._in_s_chunks(bt), q)

    def require_finite(self, y: Any) -> None:
        if bool(np.isfinite(y).all()):
            return
        self.s.check_finite()  # raises for NaN/Inf in x
        raise ValueError(f"x is finite but so large that its products overflow {self.dtype}; scale it down")

    def left(self, q: Any, c: np.ndarray, *, flip: bool) -> tuple[Any, np.ndarray | None]:
        return left_factor(self.backend, self.dtype, q, c, flip=flip)

    def transpose(self, x: Any) -> Any:
        return np.ascontiguousarray(x.T)


class _GridBlocks(DaskOperator):
    """A tall operator ``T`` whose Dask chunks form a grid (several along both axes), never rechunked.

    Block ``(i, j)`` of ``T`` is ``T_ij = A_ij - r_i c_j^T`` (``r = c = 0``
    without centring; see :class:`DaskOperator`).  Every product is one pass:
    one task per block multiplies it by the matching piece of the small
    factor, and the partial products are summed over the contracted block
    axis by a tree reduction (fan-in :data:`FAN_IN`)::

        Y = T X       Y_i = sum_j A_ij X_j - r_i (c^T X)     X (nt x l) from the client in T's column chunks;
                                                             Y (mt x l) persisted in T's row chunks
        Z = T^T Y     Z_j = sum_i A_ij^T Y_i - c_j (r^T Y)   Y_i sent to every block of row i; Z to the client
        ||T||^2, ||T - Q Bt^T||^2                            sums of per-block terms (r_i, c_j, Q_i, Bt_j)

    so, as for :class:`DaskOperator`, the ``mt x l`` bases live on the
    workers in ``T``'s row chunks (the same Gram reductions, triangular
    applies and TSQR, inherited) and the ``nt x l`` ones on the client.  What
    a grid cannot do is the fused power step: ``T^T (T W)`` needs all of
    ``Y_i = sum_j A_ij W_j`` before any ``A_ij^T Y_i`` can start, so each
    power step reads ``A`` twice (``2 q + 2`` passes, as for column blocks),
    where row blocks read it once (``q + 2``).  ``Omega_j`` (the Philox rows
    of ``T``'s column block ``j``) is generated once per column block and
    sent to the blocks of that column: our sketch kernel has no row offset.
    """

    # -- the centring's passes -------------------------------------------------------------
    def _column_sums(self) -> np.ndarray:
        nbi = self.a.numblocks[0]
        parts = self.a.map_blocks(_column_sums_part, self.dtype, self.device, chunks=((1,) * nbi, self.a.chunks[1]),
                                  dtype=np.float64, meta=np.empty((0, 0)))
        return np.asarray(parts.sum(axis=0, split_every=FAN_IN).compute(), dtype=np.float64)

    def _row_means(self) -> Any:
        nbj = self.a.numblocks[1]
        sums = self.a.map_blocks(_row_sums_block, self.dtype, self.device, chunks=(self.a.chunks[0], (1,) * nbj),
                                 dtype=np.float64, meta=np.empty((0, 0)))
        return sums.sum(axis=1, split_every=FAN_IN) / self.shape[1]

    def _rc(self) -> list[Any]:
        """``r`` and ``c`` as ``blockwise`` arguments: Dask arrays in ``A``'s row and column chunks, or None (ones)."""
        c = None if self._c is None else da.from_array(self._c.astype(self.dtype), chunks=(self.a.chunks[1],))
        return [self._r, None if self._r is None else "i", c, None if c is None else "j"]

    def _in_column_chunks(self, x: np.ndarray) -> Any:
        """A client ``nt x l`` matrix as a Dask array in ``A``'s column chunks (one graph key per block)."""
        return da.from_array(np.ascontiguousarray(x, dtype=self.dtype), chunks=(self.a.chunks[1], (int(x.shape[1]),)))

    # -- passes over A -------------------------------------------------------------------
    def _sketch(self, seed: int, width: int, *, with_v: bool) -> tuple[Any, np.ndarray | None, float, bool]:
        """``Y = T Omega`` and ``||T||_F^2`` in one pass; ``V = T^T Y`` (``with_v``) in a second one."""
        omega = da.map_blocks(_omega_block, seed, width, self.dtype, chunks=(self.a.chunks[1], (width,)),
                              dtype=self.dtype, meta=np.empty((0, 0), dtype=self.dtype))
        c_omega = None
        if self.centred:  # c^T Omega, from the same Philox stream the blocks use
            c_omega = self._c_times(_omega_rows(seed, self.shape[1], width, self.dtype, self._c))
        y, finite, norm2 = self._product_pass(omega, width, c_omega, with_norm=True)
        return y, (self.t_times(y) if with_v else None), norm2, finite

    def power_pass(self, c: np.ndarray, *, with_v: bool) -> tuple[Any, np.ndarray | None]:
        """``Y = T C`` for a client matrix ``C`` (one pass) and ``V = T^T Y`` (``with_v``: one more)."""
        cx = self._c_times(np.asarray(c, dtype=np.float64)) if self.centred else None
        y, _, _ = self._product_pass(self._in_column_chunks(c), int(c.shape[1]), cx, with_norm=False)
        return y, (self.t_times(y) if with_v else None)

    def _product_pass(self, x: Any, cols: int, cx: np.ndarray | None, *,
                      with_norm: bool) -> tuple[Any, bool, float | None]:
        """``Y = T X`` for ``X`` in ``A``'s column chunks: persisted, its Gram matrices known.

        Returns ``Y``, whether it is finite, and ``||T||_F^2`` (``with_norm``;
        from the same tasks, which read each block once) or None.
        """
        nbi, nbj = self.a.numblocks
        meta3 = meta_from_array(self.meta, ndim=3)
        # One task per block: A_ij X_j as an (m_i, 1, l) piece of the j-th partial sum.
        out = da.blockwise(_grid_times_block, "ijb", self.a, "ij", *self._rc(), x, "jb",
                           self.centred, None, with_norm, None, self.dtype, None, self.device, None,
                           adjust_chunks={"j": 1}, dtype=self.dtype, meta=meta3)
        partial = out
        if with_norm:
            partial = out.map_blocks(operator.getitem, 0, dtype=self.dtype, meta=meta3)
            norms = out.map_blocks(operator.getitem, 1, chunks=((1,) * nbi, (1,) * nbj, (1,)), dtype=np.float64,
                                   meta=np.empty((0, 0, 0)))
        summed = partial.sum(axis=1, split_every={1: FAN_IN})
        # Per row block: the centring, then [Y_i not finite, Gram matrices of Y_i].
        shift = None if cx is None else delayed(_Shift(None, np.ascontiguousarray(cx, dtype=self.dtype)))
        r = self._r if self.centred else None
        pairs = da.blockwise(_grid_basis_block, "ib", summed, "ib", r, None if r is None else "i", shift, None,
                             self.dtype, None, self.accumulations, None, self.device, None,
                             dtype=self.dtype, meta=self.meta)
        y = pairs.map_blocks(operator.getitem, 0, chunks=(self.a.chunks[0], (cols,)), dtype=self.dtype,
                             meta=self.meta)
        width = 1 + len(self.accumulations) * cols * cols
        stats = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * nbi, (width,)), dtype=np.float64,
                                 meta=np.empty((0, 0)))
        wanted = [y, stats.sum(axis=0, split_every=FAN_IN)] + ([norms.sum()] if with_norm else [])
        y, *totals = dask.persist(*wanted)
        totals = [np.asarray(t, dtype=np.float64) for t in dask.compute(*totals)]
        grams = totals[0][1:].reshape(len(self.accumulations), cols, cols)
        self._grams = {(y.name, acc): g for acc, g in zip(self.accumulations, grams)}
        return y, not totals[0][0], (float(totals[1]) if with_norm else None)

    def t_times(self, y: Any, *, with_norm: bool = False) -> Any:
        """``T^T Y`` on the client in the compute dtype: one pass over ``A``, ``Y_i`` sent to row ``i``'s blocks."""
        if with_norm:
            raise ValueError("a grid operator sums ||T||^2 in its sketch pass")
        parts = da.blockwise(_grid_t_times_block, "ijb", self.a, "ij", y, "ib", self.dtype, None, self.device, None,
                             adjust_chunks={"i": 1}, dtype=np.float64, meta=np.empty((0, 0, 0)))
        wanted = [parts.sum(axis=0, split_every=FAN_IN)]
        if self.centred:  # r^T Y = sum_i r_i^T Y_i: read from Y, not A
            r = self._r
            rty = da.blockwise(_r_times_block, "ib", y, "ib", r, None if r is None else "i", self.dtype, None,
                               self.device, None, adjust_chunks={"i": 1}, dtype=np.float64, meta=np.empty((0, 0)))
            wanted.append(rty.sum(axis=0, split_every=FAN_IN))
        totals = [np.asarray(t, dtype=np.float64) for t in dask.compute(*wanted)]
        total = totals[0]
        if self.centred:  # Z = A^T Y - c (r^T Y)
            total = total - (totals[1][None, :] if self._c is None else self._c[:, None] * totals[1][None, :])
        return np.ascontiguousarray(total, dtype=self.dtype)

    def sum_squares(self) -> float:
        """``||T||_F^2``: summed by the sketch pass, else one pass of its own."""
        if self._norm2 is None:
            parts = da.blockwise(_grid_sum_squares_block, "ij", self.a, "ij", *self._rc(), self.centred, None,
                                 self.dtype, None, self.device, None, adjust_chunks={"i": 1, "j": 1},
                                 dtype=np.float64, meta=np.empty((0, 0)))
            self._norm2 = float(parts.sum().compute())
        return self._norm2

    def residual_sq(self, q: Any, bt: np.ndarray) -> float:
        """``||T - Q Bt^T||_F^2`` = sum of ``||T_ij - Q_i Bt_j^T||^2``: one pass, block by block."""
        parts = da.blockwise(_grid_residual_block, "ijb", self.a, "ij", *self._rc(), q, "ib",
                             self._in_column_chunks(bt), "jb", self.centred, None, self.dtype, None, self.device,
                             None, adjust_chunks={"i": 1, "j": 1, "b": 1}, dtype=np.float64,
                             meta=np.empty((0, 0, 0)))
        return float(parts.sum().compute())

    def check_finite(self) -> None:
        """Raise ``ValueError`` if ``A`` holds NaN/Inf (one more pass, only after a non-finite sum)."""
        nbi, nbj = self.a.numblocks
        finite = self.a.map_blocks(_finite_part, self.dtype, self.device, chunks=((1,) * nbi, (1,) * nbj),
                                   dtype=np.float64, meta=np.empty((0, 0)))
        if not bool(finite.min().compute()):
            raise ValueError("x contains NaN or Inf; pass check_finite=False to skip this check")


def _omega_block(seed: int, width: int, dtype: np.dtype, block_info: dict | None = None) -> np.ndarray:
    """Rows ``lo:hi`` of the Philox ``Omega`` (``block_info`` is passed by ``map_blocks``)."""
    lo, hi = block_info[None]["array-location"][0]
    return philox.omega(seed, hi - lo, width, dtype, row0=lo)


def _omega_rows(seed: int, rows: int, width: int, dtype: np.dtype, c: np.ndarray | None) -> np.ndarray:
    """``c^T Omega`` needs ``Omega``'s rows: all of them for ``c = mu``; for ``c = 1`` their column
    sums, generated in pieces of ``width``-column rows so that a long side never lives on the client
    whole.  Returns an ``X`` with ``c^T X = c^T Omega`` (float64, ``Omega`` as the blocks make it)."""
    if c is not None:
        return philox.omega(seed, rows, width, dtype).astype(np.float64)
    step = max(1, (1 << 20) // max(1, width))
    total = np.zeros((1, width))
    for row0 in range(0, rows, step):
        piece = philox.omega(seed, min(step, rows - row0), width, dtype, row0=row0)
        total += piece.sum(axis=0, dtype=np.float64)
    return total


@dataclass(frozen=True)
class _Shift:
    """The centring as one task sees it: ``c`` (None: ones) and ``c^T X`` of the pass's ``X`` (or None)."""

    c: np.ndarray | None
    cx: np.ndarray | None


@dataclass(frozen=True)
class _Stats:
    """The summed statistics of a basis pass: leading numbers, ``V = A^T Y`` (or None), Gram matrices."""

    leading: np.ndarray
    v: np.ndarray | None
    grams: np.ndarray

    @staticmethod
    def layout(leading: int, v: int, grams: int) -> tuple[int, int, int]:
        """Where the parts of a statistics row end."""
        return leading, leading + v, leading + v + grams

    @classmethod
    def split(cls, row: np.ndarray, layout: tuple[int, int, int], v_shape: tuple[int, int]) -> "_Stats":
        lead, v_end, end = layout
        v = None if v_end == lead else row[lead:v_end].reshape(v_shape)
        return cls(row[:lead], v, row[v_end:end])


# --------------------------------------------------------------------------- on the workers


@dataclass(frozen=True)
class _Worker:
    """The backend that computes one block, and the conversions to and from the block's type."""

    kind: arrays.ArrayKind
    backend: Any

    def load(self, block: Any, dtype: Any = None) -> Any:
        """A block as a C-contiguous backend array of ``dtype`` (no copy when it already is one)."""
        x = self.backend.asarray(arrays.to_compute(block, self.kind))
        return self.backend.xp.ascontiguousarray(x, dtype=x.dtype if dtype is None else dtype)

    def give_back(self, y: Any) -> Any:
        """A result in the block's own array type and device."""
        return arrays.from_compute(y, self.kind)

    def host(self, y: Any) -> np.ndarray:
        """A result as a host float64 array."""
        return np.asarray(self.backend.to_host(y), dtype=np.float64)


@contextlib.contextmanager
def _worker(block: Any, device: Any) -> Iterator[_Worker]:
    if _is_sparse(block):  # scipy's SpMM on the CPU; the client refused any other device
        yield _Worker(arrays.NUMPY, backends.get_backend("cpu"))
        return
    kind = arrays.kind_of(block)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind):
        yield _Worker(kind, backend)


class _Block:
    """Row block ``T_i = A_i - r_i c^T`` of the operator, on its worker.

    ``A_i`` is a backend array, or a scipy.sparse CSR matrix whose products are
    scipy's sparse-times-dense (never densified but for row pieces in
    :meth:`residual_sq`).  Without centring (``shift`` None) ``T_i = A_i``;
    with it ``r_i`` is the block's part of ``r`` (None: ones) and ``c`` comes
    with ``shift`` (None: ones), both in the compute dtype.
    """

    def __init__(self, w: _Worker, a: Any, dtype: np.dtype, r: np.ndarray | None = None,
                 shift: _Shift | None = None) -> None:
        self.w, self.dtype, self.shift = w, np.dtype(dtype), shift
        self.sparse = _is_sparse(a)
        if self.sparse:
            x = a.tocsr().astype(self.dtype, copy=False)
            if not x.has_canonical_format:  # summed duplicates for sum_squares, on a copy: x is the caller's
                x = x.copy()
                x.sum_duplicates()
            self.x = x
        else:
            self.x = w.load(a, dtype)
        rows, cols = (int(d) for d in self.x.shape)
        self.r64 = self.c64 = None
        if shift is not None:
            self.r64 = np.ones(rows) if r is None else np.asarray(r, dtype=np.float64)
            self.c64 = np.ones(cols) if shift.c is None else np.asarray(shift.c, dtype=np.float64)

    @property
    def xp(self) -> Any:
        return self.w.backend.xp

    def _vec(self, v: np.ndarray) -> Any:
        return self.w.backend.asarray(np.ascontiguousarray(v, dtype=self.dtype))

    def _centred(self, y: Any) -> Any:
        """``A_i X - r_i (c^T X)`` from ``A_i X`` (``c^T X`` came with the shift)."""
        if self.shift is None:
            return y
        return y - self._vec(self.r64)[:, None] * self._vec(self.shift.cx)

    def _pass(self, y: Any, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i`` centred, and ``T_i^T Y_i``'s parts (``A_i^T Y_i`` then ``r_i^T Y_i``) when ``with_v``."""
        y = self._centred(y)
        return y, (self.t_times(y) if with_v else None)

    def sketch(self, seed: int, width: int, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = T_i Omega`` (``Omega``'s rows are ``A``'s columns: the same for every block)."""
        if self.sparse:
            omega = philox.omega(seed, self.x.shape[1], width, self.dtype)
            with np.errstate(over="ignore", invalid="ignore"):  # reported by the caller, from Y
                return self._pass(np.ascontiguousarray(self.x @ omega, dtype=self.dtype), with_v)
        if self.shift is None and with_v:  # the backend's fused pass: A_i read once for both
            y, v = self.w.backend.sketch_pass(self.x, seed, width)
            return y, self.w.host(v)
        return self._pass(self.w.backend.sketch(self.x, seed, width), with_v)

    def product(self, c: Any) -> Any:
        """``A_i C`` (no centring) for a backend matrix ``C`` (numpy for a sparse block)."""
        if self.sparse:
            with np.errstate(over="ignore", invalid="ignore"):  # reported by the caller, from Y
                return np.ascontiguousarray(self.x @ c, dtype=self.dtype)
        return self.w.backend.matmul(self.x, c)

    def times(self, c: Any, with_v: bool) -> tuple[Any, Any | None]:
        """``Y_i = T_i C`` for a backend matrix ``C``."""
        if self.sparse:
            return self._pass(np.ascontiguousarray(self.x @ c, dtype=self.dtype), with_v)
        if self.shift is None and with_v:
            y, v = self.w.backend.power_pass(self.x, c)
            return y, self.w.host(v)
        return self._pass(self.w.backend.matmul(self.x, c), with_v)

    def t_times(self, y: Any) -> np.ndarray:
        """``A_i^T Y_i`` and, with centring, the row ``r_i^T Y_i`` under it: host float64."""
        v = self.x.T @ y if self.sparse else self.w.backend.matmul(self.x, y, trans=True)
        if self.shift is None:
            return self.w.host(v)
        return np.vstack([self.w.host(v), self.w.host(self._vec(self.r64)[None, :] @ y)])

    def sum_squares(self) -> float:
        """``||T_i||_F^2`` (float64)."""
        if self.sparse:
            values = self.x.data.astype(np.float64)
            total = float(np.dot(values, values))
            if self.shift is None:
                return total
            # ||A_i - r c^T||^2 = ||A_i||^2 - 2 r^T A_i c + ||r||^2 ||c||^2 in float64, as in memory
            # (operators.RankOneUpdate): the sparse product with a float64 vector is float64.
            value = total - 2.0 * float(self.r64 @ (self.x @ self.c64)) \
                + float(self.r64 @ self.r64) * float(self.c64 @ self.c64)
            return max(value, 0.0)
        if self.shift is None:
            return self.w.backend.sum_squares(self.x)
        # Entry by entry: T_ij = A_ij - r_i c_j rounds like an explicit centring.
        part = self.x - self._vec(self.r64)[:, None] * self._vec(self.c64)[None, :]
        return self.w.backend.sum_squares(self.xp.ascontiguousarray(part))

    def residual_sq(self, q: Any, bt: Any) -> float:
        """``||T_i - Q_i Bt^T||_F^2`` (float64): dense, or row pieces of a sparse block made dense."""
        backend = self.w.backend
        if not self.sparse:
            part = self.x - backend.matmul(q, bt.T)
            if self.shift is not None:
                part = part - self._vec(self.r64)[:, None] * self._vec(self.c64)[None, :]
            return backend.sum_squares(self.xp.ascontiguousarray(part))
        total = 0.0
        for lo, hi in _row_blocks(*(int(d) for d in self.x.shape)):
            part = self.x[lo:hi].toarray() - q[lo:hi] @ bt.T
            if self.shift is not None:
                part -= (self.r64[lo:hi, None] * self.c64[None, :]).astype(self.dtype)
            total += backend.sum_squares(np.ascontiguousarray(part))
        return total

    def finite(self) -> bool:
        values = self.x.data if self.sparse else self.x
        return bool(self.xp.isfinite(values).all())


def _stats_row(w: _Worker, leading: Sequence[float], v: np.ndarray | None, y: Any,
               accumulations: Sequence[np.dtype]) -> np.ndarray:
    """``[leading..., V_i..., Gram matrices of Y_i...]`` as one host float64 row (see :class:`_Stats`)."""
    parts = [np.asarray(leading, dtype=np.float64)]
    if v is not None:
        parts.append(np.ravel(v))
    parts += [np.ravel(w.backend.gram(y, accumulate=acc)) for acc in accumulations]
    return np.concatenate(parts)[None]


def _sketch_block(a: Any, r: np.ndarray | None, seed: int, width: int, shift: _Shift | None, with_v: bool,
                  dtype: np.dtype, accumulations: Sequence[np.dtype], device: Any) -> tuple[Any, np.ndarray]:
    """``Y_i = T_i Omega`` and ``[||T_i||_F^2, Y_i not finite, T_i^T Y_i's parts (with_v), Gram matrices of Y_i]``.

    ``Omega``'s rows are ``A``'s columns, so every block multiplies by the same ``Omega``.
    """
    with _worker(a, device) as w:
        block = _Block(w, a, dtype, r, shift)
        y, v = block.sketch(seed, width, with_v)
        not_finite = float(not bool(w.backend.xp.isfinite(y).all()))
        return w.give_back(y), _stats_row(w, [block.sum_squares(), not_finite], v, y, accumulations)


def _power_block(a: Any, r: np.ndarray | None, c: np.ndarray, shift: _Shift | None, with_v: bool,
                 dtype: np.dtype, accumulations: Sequence[np.dtype], device: Any) -> tuple[Any, np.ndarray]:
    """``Y_i = T_i C`` for a client matrix ``C``, and ``[T_i^T Y_i's parts (with_v), Gram matrices of Y_i]``."""
    with _worker(a, device) as w:
        y, v = _Block(w, a, dtype, r, shift).times(w.backend.asarray(c), with_v)
        return w.give_back(y), _stats_row(w, [], v, y, accumulations)


def _t_times_part(a: Any, r: np.ndarray | None, y: Any, shift: _Shift | None, with_norm: bool,
                  dtype: np.dtype, device: Any) -> np.ndarray:
    """``A_i^T Y_i`` (and ``r_i^T Y_i`` under it, with centring; then a row ``[||T_i||_F^2, 0...]``
    ``with_norm``), summed across blocks in float64."""
    with _worker(a, device) as w:
        block = _Block(w, a, dtype, r, shift)
        part = block.t_times(w.load(y, dtype))
        if with_norm:
            norm = np.zeros((1, part.shape[1]))
            norm[0, 0] = block.sum_squares()
            part = np.vstack([part, norm])
        return part[None]


def _gram_part(y: Any, accumulate: np.dtype, device: Any) -> np.ndarray:
    with _worker(y, device) as w:
        return w.backend.gram(w.load(y), accumulate=accumulate)[None]


def _tri_apply_block(y: Any, r: np.ndarray, rinv: np.ndarray, accumulate: np.dtype, device: Any) -> Any:
    with _worker(y, device) as w:
        return w.give_back(w.backend.tri_apply(w.load(y), r, accumulate=accumulate, rinv=rinv))


def _qr_block(y: Any, device: Any) -> tuple[Any, np.ndarray]:
    """Householder QR of one block: ``Q_i`` in the block's type, ``R_i`` (min(rows, l) x l) on the host."""
    with _worker(y, device) as w:
        q, r = w.backend.householder_qr(w.load(y))
        return w.give_back(q), np.asarray(r, dtype=np.float64)


def _tsqr_block(pair: tuple[Any, np.ndarray], parts: list[np.ndarray], device: Any,
                block_id: tuple[int, ...] | None = None) -> Any:
    """``Q_i S_i``: block ``i`` of the TSQR factor (``block_id`` is passed by ``map_blocks``)."""
    q = pair[0]
    with _worker(q, device) as w:
        return w.give_back(w.backend.matmul(w.load(q), w.backend.asarray(parts[block_id[0]])))


def _left_block(q: Any, c: np.ndarray, device: Any) -> tuple[Any, np.ndarray]:
    """``U_i = Q_i C``, and per column ``[largest |u|..., the signed u at its first occurrence...]``."""
    with _worker(q, device) as w:
        xp = w.backend.xp
        u = w.backend.matmul(w.load(q), w.backend.asarray(c))
        where = xp.argmax(xp.abs(u), axis=0)[None, :]
        picked = xp.take_along_axis(u, where, axis=0)[0]
        return w.give_back(u), np.concatenate([w.host(xp.abs(picked)), w.host(picked)])[None]


def _scale_columns_block(u: Any, signs: np.ndarray) -> Any:
    """``u * signs`` in ``u``'s own array type (the signs are +-1: exact)."""
    kind = arrays.kind_of(u)
    with arrays.caller_stream(kind):
        return u * arrays.from_compute(signs.astype(u.dtype), kind)


def _sum_squares_part(a: Any, r: np.ndarray | None, shift: _Shift | None, dtype: np.dtype,
                      device: Any) -> np.ndarray:
    with _worker(a, device) as w:
        return np.array([[_Block(w, a, dtype, r, shift).sum_squares()]])


def _residual_part(a: Any, r: np.ndarray | None, q: Any, bt: np.ndarray, shift: _Shift | None,
                   dtype: np.dtype, device: Any) -> np.ndarray:
    """``||T_i - Q_i Bt^T||_F^2`` of one row block."""
    with _worker(a, device) as w:
        block = _Block(w, a, dtype, r, shift)
        return np.array([[[block.residual_sq(w.load(q, dtype), w.backend.asarray(bt))]]])


def _matmul_block(q: Any, c: np.ndarray, device: Any) -> Any:
    with _worker(q, device) as w:
        return w.give_back(w.backend.matmul(w.load(q), w.backend.asarray(c)))


def _finite_part(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    with _worker(a, device) as w:
        return np.array([[float(_Block(w, a, dtype).finite())]])


def _sparse_sums(x: Any, axis: int) -> np.ndarray:
    """Sums of a scipy.sparse block along ``axis`` in float64, as a 1-D host array.

    scipy's ``sum(dtype=float64)`` accumulates float32 data in float32 and
    casts the result, so the values are widened first (a copy of the values
    only), as the in-memory :meth:`~liam_gpu.operators.SparseOperator.times_host` does.
    """
    return np.asarray(x.astype(np.float64).sum(axis=axis)).ravel()


def _column_sums_part(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """The column sums of one row block in float64 (``center=True`` on row chunks)."""
    with _worker(a, device) as w:
        x = _Block(w, a, dtype).x
        if _is_sparse(x):
            return _sparse_sums(x, axis=0).reshape(1, -1)
        return w.host(w.backend.xp.sum(x, axis=0, dtype=np.float64))[None]


def _row_means_block(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """The row means of one row block of ``x.T`` in float64 (``center=True`` on column chunks)."""
    with _worker(a, device) as w:
        x = _Block(w, a, dtype).x
        if _is_sparse(x):
            return _sparse_sums(x, axis=1) / x.shape[1]
        return w.host(w.backend.xp.mean(x, axis=1, dtype=np.float64))


# --------------------------------------------------------------------------- grid blocks, on the workers


def _grid_block(w: _Worker, a: Any, r: np.ndarray | None, c: np.ndarray | None, centred: bool,
                dtype: np.dtype) -> _Block:
    """Block ``T_ij = A_ij - r_i c_j^T`` (``r_i``, ``c_j`` its pieces; None: ones) or ``A_ij``."""
    return _Block(w, a, dtype, r, _Shift(c, None) if centred else None)


def _grid_times_block(a: Any, r: np.ndarray | None, c: np.ndarray | None, x: np.ndarray, centred: bool,
                      with_norm: bool, dtype: np.dtype, device: Any) -> Any:
    """``A_ij X_j`` as an ``(m_i, 1, l)`` piece in the block's type, and ``[[[||T_ij||_F^2]]]`` (``with_norm``)."""
    with _worker(a, device) as w:
        block = _grid_block(w, a, r, c, centred, dtype)
        xj = np.ascontiguousarray(x, dtype=dtype)
        part = w.give_back(block.product(xj if block.sparse else w.backend.asarray(xj)))[:, None, :]
        return (part, np.array([[[block.sum_squares()]]])) if with_norm else part


def _grid_basis_block(y: Any, r: np.ndarray | None, shift: _Shift | None, dtype: np.dtype,
                      accumulations: Sequence[np.dtype], device: Any) -> tuple[Any, np.ndarray]:
    """Row block ``Y_i = sum_j A_ij X_j - r_i (c^T X)`` and ``[Y_i not finite, Gram matrices of Y_i]``."""
    with _worker(y, device) as w:
        y = w.load(y, dtype)
        if shift is not None:
            rows = int(y.shape[0])
            ri = np.ones(rows) if r is None else np.asarray(r, dtype=np.float64)
            y = y - w.backend.asarray(ri.astype(dtype))[:, None] * w.backend.asarray(shift.cx)
        not_finite = float(not bool(w.backend.xp.isfinite(y).all()))
        return w.give_back(y), _stats_row(w, [not_finite], None, y, accumulations)


def _grid_t_times_block(a: Any, y: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """``A_ij^T Y_i`` as a host float64 ``(1, n_j, l)`` piece."""
    with _worker(a, device) as w:
        return _Block(w, a, dtype).t_times(w.load(y, dtype))[None]


def _r_times_block(y: Any, r: np.ndarray | None, dtype: np.dtype, device: Any) -> np.ndarray:
    """``r_i^T Y_i`` (``r`` None: ones) as a host float64 ``(1, l)`` row."""
    with _worker(y, device) as w:
        y = w.load(y, dtype)
        ri = np.ones(int(y.shape[0])) if r is None else np.asarray(r, dtype=np.float64)
        return w.host(w.backend.asarray(ri.astype(dtype))[None, :] @ y)


def _grid_sum_squares_block(a: Any, r: np.ndarray | None, c: np.ndarray | None, centred: bool,
                            dtype: np.dtype, device: Any) -> np.ndarray:
    with _worker(a, device) as w:
        return np.array([[_grid_block(w, a, r, c, centred, dtype).sum_squares()]])


def _grid_residual_block(a: Any, r: np.ndarray | None, c: np.ndarray | None, q: Any, bt: np.ndarray,
                         centred: bool, dtype: np.dtype, device: Any) -> np.ndarray:
    """``||T_ij - Q_i Bt_j^T||_F^2`` of one block."""
    with _worker(a, device) as w:
        block = _grid_block(w, a, r, c, centred, dtype)
        return np.array([[[block.residual_sq(w.load(q, dtype), w.backend.asarray(bt))]]])


def _row_sums_block(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """The row sums of one block in float64, as an ``(m_i, 1)`` column (``center=True`` on a grid, swapped)."""
    with _worker(a, device) as w:
        x = _Block(w, a, dtype).x
        if _is_sparse(x):
            return _sparse_sums(x, axis=1).reshape(-1, 1)
        return w.host(w.backend.xp.sum(x, axis=1, dtype=np.float64))[:, None]
