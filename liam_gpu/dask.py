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
  ``n x l`` right-hand bases) are handled on the client.  ``A`` is read once
  per pass (``q + 2`` passes) and never gathered; the ``m x l`` bases stay on
  the workers, in the row chunks of ``A``.

The sketch ``Omega`` is the Philox stream of :mod:`liam_gpu.philox`, indexed
by ``(seed, column of A, sketch column)``: every row chunk multiplies by the
same ``Omega`` the whole matrix would, so the result does not depend on the
chunking or on the backend of the workers, and equals the single-machine
``svd_compress`` on the same data and seed to rounding.  ``docs/distributed.md``
covers deployment and measurements.
"""
from __future__ import annotations

import contextlib
import math
import operator
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

from . import arrays, backends, validation
from .backends.base import upper_inverse
from .lowrank import LowRank
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
    device: Any = None,
    check_finite: bool = True,
) -> LowRank:
    """Rank-``k`` :class:`~liam_gpu.LowRank` of a Dask array, one Dask reduction per pass.

    The engine of :func:`liam_gpu.svd_compress` (:mod:`liam_gpu.rangefinder`,
    fixed rank) run over :class:`DaskOperator`: the operator is ``x`` when its
    chunks hold whole rows, ``x.T`` when they hold whole columns (the factors
    swap on the way out), and each product with it is one pass of per-block
    tasks summed by a tree reduction::

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
    too ill-conditioned to orthonormalize after ``A^T Y``, and one for the
    residual when the error is small, as on one machine) and never gathered;
    between passes the workers hold one ``m x l`` basis, at the end the long
    factor.  Power iterations are normalized (unlike
    ``dask.array.linalg.svd_compressed``'s default); the result equals
    :func:`liam_gpu.svd_compress` on the same data and seed to rounding,
    whatever the chunking.

    Parameters
    ----------
    x
        ``dask.array.Array`` (m, n), tall or wide, chunked along one axis only
        (every chunk holds whole rows, ``x.numblocks[1] == 1``, or whole
        columns, ``x.numblocks[0] == 1``) with known chunk sizes; numpy or
        CuPy chunks.  Never modified.  Integers compute in float64, float16
        in float32.  Complex input is refused (the conjugate transpose this
        would need is not implemented).
    k
        Rank, ``1 <= k <= min(m, n)``; default ``min(32, m, n)``.
    n_oversamples
        Oversampling ``p`` (the sketch width is ``k + p`` rounded up to 8).
    n_iter
        Power iterations ``q``; ``"auto"`` is scikit-learn's rule (7 if
        ``k < 0.1 n``, else 4).  None are run when ``l = n``.
    random_state
        Seed of the Philox stream, as for :func:`liam_gpu.svd_compress`.
    device
        Where each chunk is computed, resolved on its worker (see
        :func:`transform_matrix`).  The client always works on the CPU.
    check_finite
        Reject NaN/Inf in ``x``, found in the sketch ``A Omega`` of the first
        pass (NaN/Inf anywhere in ``A`` reaches it): no extra pass unless the
        sketch is not finite.

    Returns
    -------
    LowRank
        For row chunks: ``U`` a ``dask.array.Array`` (m, k) in ``x``'s row
        chunks (empty chunks left out) and chunk type, its blocks persisted
        on the workers (the column signs, +-1, applied lazily on top); ``S``
        (k,) and ``Vt`` (k, n) numpy arrays on the client.  For column
        chunks: ``Vt`` the Dask array (k, n) in ``x``'s column chunks, ``U``
        (m, k) and ``S`` on the client.  dtype float32 for float32 input,
        else float64; ``relative_error`` the engine's estimate (within a
        factor 2 of the truth above the dtype's resolution).

    Raises
    ------
    TypeError
        ``x`` not a Dask array, complex or non-numeric; non-integer ``k``,
        ``n_oversamples``, ``n_iter`` or seed; ``device`` not a string.
    ValueError
        ``x`` not 2-D, empty, chunked along both axes, of unknown chunk
        sizes, or holding NaN/Inf; ``k``, ``n_oversamples``, ``n_iter``,
        ``random_state`` or ``device`` out of range.
    """
    x = _check_dask_array("x", x)
    validation.check_ndim("x", x, ndim=2)
    dtype = validation.float_dtype("x", x)
    # Blocks must hold whole rows (the operator is x) or whole columns (the operator is x.T,
    # whose row blocks are x's column blocks, and the factors swap on the way out).
    swapped = x.numblocks[1] > 1 or (x.numblocks[0] == 1 and x.shape[0] < x.shape[1])
    _check_row_chunks("x", x.T if swapped else x, known_rows=True, transposed=swapped)
    m, n = (int(d) for d in x.shape)
    validation.check_not_empty("x", x)
    _check_device(device)
    k = min(DEFAULT_RANK, m, n) if k is None else validation.check_rank("k", k, min(m, n))
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    q = _n_iter(n_iter, k, min(m, n))
    seed = seed_from_random_state(random_state)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")

    t = x.T if swapped else x
    if any(r == 0 for r in t.chunks[0]):
        # Zero-row chunks (left by filtering) carry nothing; dropping them moves no data.
        t = t.rechunk({0: tuple(r for r in t.chunks[0] if r > 0)})
    op = DaskOperator(t, dtype, device, swapped=swapped)
    plan = Plan(k=k, p=p, q=q, seed=seed, check=bool(check_finite), estimate=True)
    fact = fixed_rank(op, plan)
    u, s, vt = fact.factors(k, flip=True)
    return LowRank(u, s, vt, relative_error=fact.relative_error(k))


# --------------------------------------------------------------------------- argument checks


def _check_dask_array(name: str, x: Any) -> Any:
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__}; "
            "for in-memory arrays use liam_gpu.transform_matrix / liam_gpu.svd_compress"
        )
    return x


def _check_row_chunks(name: str, x: Any, *, known_rows: bool, transposed: bool = False) -> None:
    """Every chunk must hold whole rows (one chunk along the last axis) of a known width.

    ``known_rows``: the row chunk sizes must be known too (the SVD needs the
    shapes of its bases; a lazy map does not).  ``transposed``: ``x`` is the
    caller's array transposed, so its rows are the caller's columns.
    """
    if transposed and x.numblocks[-1] != 1:
        raise ValueError(
            f"{name} is chunked along both axes ({name}.numblocks = {x.numblocks[::-1]}); each chunk must "
            f"hold whole rows or whole columns: rechunk with {name}.rechunk({{1: -1}}) or "
            f"{name}.rechunk({{0: -1}}) (not done implicitly: it moves all of the array between workers)"
        )
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


def _check_device(device: Any) -> None:
    """The ``device=`` name is resolved on each worker; here only its spelling is checked."""
    if device is not None and not isinstance(device, str):
        raise TypeError(
            "device must be None, 'auto', 'cpu', 'cuda', 'cuda:N' or 'emulator' for Dask arrays, "
            f"got {type(device).__name__}"
        )
    backends.canonical_device(device)


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
    ``device`` names for the block's type.  ``gram`` is a tree reduction of
    per-block Gram matrices, computed at once -- or already known, for a basis
    made by a pass over ``A``, which sums its Gram matrices as it goes;
    ``tri_apply`` is lazy, block by block (Dask fuses it into whatever reads it
    next); ``householder_qr`` is a TSQR.  The ``n x l`` and ``l x l`` matrices
    live on the client and are handled by the CPU backend (:attr:`local`).

    Every per-block result keeps the block's columns as axes of its own (none
    is contracted), so that Dask fuses the reading (or generating) of a block
    of ``A`` into the task that uses it: no block of ``A`` is ever stored.

    Parameters
    ----------
    a
        The input: 2-D Dask array, one column chunk, no empty row chunk.
    dtype
        The dtype computed in (blocks of ``a`` are converted on use).
    device
        The ``device=`` argument, resolved on the workers.
    """

    def __init__(self, a: Any, dtype: np.dtype, device: Any, *, swapped: bool = False) -> None:
        self.swapped = swapped
        self.a = a
        self.dtype = np.dtype(dtype)
        self.device = device
        self.backend = backends.get_backend("cpu")
        self.meta = meta_from_array(a, ndim=2, dtype=self.dtype)
        # The Gram accumulation cholqr asks for, summed as each basis is made.
        self.accumulations = (np.dtype(np.float64),)
        self._grams: dict[tuple[str, np.dtype], np.ndarray] = {}
        self._norm2: float | None = None
        self._sketch_finite = True

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
        """``||A||_F^2``: summed by the sketch pass, else one pass of its own."""
        if self._norm2 is None:
            parts = self._per_block(_sum_squares_part, "a", [(self.a, "a")], {"a": 1}, self.dtype)
            self._norm2 = float(parts.sum().compute())
        return self._norm2

    def residual_sq(self, q: Any, bt: np.ndarray) -> float:
        """``||A - Q Bt^T||_F^2``: one pass, block by block on the workers."""
        small = delayed(np.ascontiguousarray(bt, dtype=self.dtype))
        parts = self._per_block(_residual_part, "ab", [(self.a, "a"), (q, "b")], {"a": 1, "b": 1},
                                small, self.dtype)
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
        """``Y = A Omega`` (persisted, its Gram matrices known), ``V = A^T Y``, ``||A||_F^2``: one pass.

        Also whether ``Y`` is finite (NaN/Inf in ``A`` always reach it: no
        entry of ``Omega`` is zero).  ``V`` only ``with_v`` (else None).
        """
        y, stats = self._basis_pass(_sketch_block, width, seed, width, leading=2, with_v=with_v)
        return y, stats.v, float(stats.leading[0]), not stats.leading[1]

    def power_pass(self, c: np.ndarray, *, with_v: bool) -> tuple[Any, np.ndarray | None]:
        """``Y = A @ C`` for a client matrix ``C`` (persisted, its Gram matrices known) and ``V = A^T Y``.

        One pass over ``A``; ``V`` only ``with_v`` (else None).
        """
        small = delayed(np.ascontiguousarray(c, dtype=self.dtype))
        y, stats = self._basis_pass(_power_block, int(c.shape[1]), small, leading=0, with_v=with_v)
        return y, stats.v

    def t_times(self, y: Any) -> Any:
        """``A^T Y`` on the client in the compute dtype: one pass over ``A``."""
        n, l = int(self.a.shape[1]), int(y.shape[1])
        product = self._per_block(_t_times_part, "ab", [(self.a, "a"), (y, "b")], {"a": n, "b": l},
                                  self.dtype)
        return np.ascontiguousarray(product.sum(axis=0, split_every=FAN_IN).compute(), dtype=self.dtype)

    def check_finite(self) -> None:
        """Raise ``ValueError`` if ``A`` holds NaN/Inf (one more pass, only after a non-finite sum)."""
        finite = self._per_block(_finite_part, "a", [(self.a, "a")], {"a": 1}, self.dtype)
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

    # -- helpers ---------------------------------------------------------------------------
    def _basis_pass(self, fn: Callable, cols: int, *args: Any, leading: int,
                    with_v: bool) -> tuple[Any, "_Stats"]:
        """A pass over ``A`` that makes a basis ``Y`` (``cols`` columns) and sums per-block statistics.

        ``fn(block, *args, with_v, dtype, accumulations, device)`` returns
        ``(Y_i, stats_i)``, ``stats_i`` a row of ``leading`` numbers, then
        ``A_i^T Y_i`` (``with_v``), then the Gram matrices of ``Y_i`` for each
        of :attr:`accumulations`.  ``Y`` is persisted, the sums come back, and
        the Gram matrices are remembered for :meth:`gram`.  One task per block
        computes all of it, so a block of ``A`` is read once however many
        results use it.
        """
        n = int(self.a.shape[1])
        layout = _Stats.layout(leading, n * cols if with_v else 0, len(self.accumulations) * cols * cols)
        pairs = self.a.map_blocks(fn, *args, with_v, self.dtype, self.accumulations, self.device,
                                  dtype=self.dtype, meta=self.meta)
        y = pairs.map_blocks(operator.getitem, 0, chunks=(self.a.chunks[0], (cols,)), dtype=self.dtype,
                             meta=self.meta)
        stats = pairs.map_blocks(operator.getitem, 1, chunks=((1,) * self.a.numblocks[0], (layout[-1],)),
                                 dtype=np.float64, meta=np.empty((0, 0)))
        y, total = dask.persist(y, stats.sum(axis=0, split_every=FAN_IN))
        sums = _Stats.split(np.asarray(total.compute(), dtype=np.float64), layout, (n, cols), self.dtype)
        grams = sums.grams.reshape(len(self.accumulations), cols, cols)
        self._grams = {(y.name, acc): g for acc, g in zip(self.accumulations, grams)}
        return y, sums

    def _per_block(self, fn: Callable, out: str, inputs: Sequence[tuple[Any, str]], sizes: dict[str, int],
                   *args: Any) -> Any:
        """``fn`` on each row block: one host float64 array per block, stacked along a new first axis.

        ``inputs`` are ``(array, letter)`` pairs, the letter naming the
        array's column axis; ``out`` names the axes of one block's result and
        ``sizes`` their lengths.  Every input letter must be in ``out`` (no
        axis is contracted, so Dask can fuse the production of the input
        blocks into these tasks).  ``fn`` gets the input blocks, then ``args``
        and ``device``.
        """
        pairs: list[Any] = []
        for arr, letter in inputs:
            pairs += [arr, "i" + letter]
        for value in (*args, self.device):
            pairs += [value, None]
        present = {letter for _, letter in inputs}
        return da.blockwise(
            fn, "i" + out, *pairs,
            new_axes={ax: size for ax, size in sizes.items() if ax not in present},
            adjust_chunks={"i": 1, **{ax: size for ax, size in sizes.items() if ax in present}},
            dtype=np.float64, meta=np.empty((0,) * (1 + len(out))),
        )

    def _gram_sum(self, y: Any, accumulate: Any) -> Any:
        l = int(y.shape[1])
        parts = self._per_block(_gram_part, "ab", [(y, "a")], {"a": l, "b": l}, np.dtype(accumulate))
        return parts.sum(axis=0, split_every=FAN_IN)


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
    def split(cls, row: np.ndarray, layout: tuple[int, int, int], v_shape: tuple[int, int],
              dtype: np.dtype) -> "_Stats":
        lead, v_end, end = layout
        v = None if v_end == lead else np.ascontiguousarray(row[lead:v_end].reshape(v_shape), dtype=dtype)
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
    kind = arrays.kind_of(block)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind):
        yield _Worker(kind, backend)


def _stats_row(w: _Worker, leading: Sequence[float], v: Any | None, y: Any,
               accumulations: Sequence[np.dtype]) -> np.ndarray:
    """``[leading..., V_i..., Gram matrices of Y_i...]`` as one host float64 row (see :class:`_Stats`)."""
    parts = [np.asarray(leading, dtype=np.float64)]
    if v is not None:
        parts.append(w.host(v).ravel())
    parts += [np.ravel(w.backend.gram(y, accumulate=acc)) for acc in accumulations]
    return np.concatenate(parts)[None]


def _sketch_block(a: Any, seed: int, width: int, with_v: bool, dtype: np.dtype,
                  accumulations: Sequence[np.dtype], device: Any) -> tuple[Any, np.ndarray]:
    """``Y_i = A_i Omega`` and ``[||A_i||_F^2, Y_i not finite, A_i^T Y_i (with_v), Gram matrices of Y_i]``.

    ``Omega``'s rows are ``A``'s columns, so every block multiplies by the same ``Omega``.
    """
    with _worker(a, device) as w:
        x = w.load(a, dtype)
        if with_v:
            y, v = w.backend.sketch_pass(x, seed, width)
        else:
            y, v = w.backend.sketch(x, seed, width), None
        not_finite = float(not bool(w.backend.xp.isfinite(y).all()))
        return w.give_back(y), _stats_row(w, [w.backend.sum_squares(x), not_finite], v, y, accumulations)


def _power_block(a: Any, c: np.ndarray, with_v: bool, dtype: np.dtype, accumulations: Sequence[np.dtype],
                 device: Any) -> tuple[Any, np.ndarray]:
    """``Y_i = A_i C`` for a client matrix ``C``, and ``[A_i^T Y_i (with_v), Gram matrices of Y_i]``."""
    with _worker(a, device) as w:
        x, small = w.load(a, dtype), w.backend.asarray(c)
        if with_v:
            y, v = w.backend.power_pass(x, small)
        else:
            y, v = w.backend.matmul(x, small), None
        return w.give_back(y), _stats_row(w, [], v, y, accumulations)


def _t_times_part(a: Any, y: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    """``A_i^T Y_i`` (summed across blocks in float64)."""
    with _worker(a, device) as w:
        return w.host(w.backend.matmul(w.load(a, dtype), w.load(y), trans=True))[None]


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


def _sum_squares_part(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    with _worker(a, device) as w:
        return np.array([[w.backend.sum_squares(w.load(a, dtype))]])


def _residual_part(a: Any, q: Any, bt: np.ndarray, dtype: np.dtype, device: Any) -> np.ndarray:
    """``||A_i - Q_i Bt^T||_F^2`` of one row block."""
    with _worker(a, device) as w:
        x = w.load(a, dtype)
        part = x - w.backend.matmul(w.load(q), w.backend.asarray(bt).T)
        return np.array([[[w.backend.sum_squares(w.backend.xp.ascontiguousarray(part))]]])


def _matmul_block(q: Any, c: np.ndarray, device: Any) -> Any:
    with _worker(q, device) as w:
        return w.give_back(w.backend.matmul(w.load(q), w.backend.asarray(c)))


def _finite_part(a: Any, dtype: np.dtype, device: Any) -> np.ndarray:
    with _worker(a, device) as w:
        return np.array([[float(bool(w.backend.xp.isfinite(w.load(a, dtype)).all()))]])
