"""Randomized truncated SVD, the public face: :func:`randomized_svd` and :func:`svd_compress`.

Argument checks, input preparation (dtype, layout, stacks) and results in the
caller's array type.  The algorithm -- range finder, power iterations,
orthonormalization, small SVD, error estimate, ``tol`` mode -- is the engine
of :mod:`liam_gpu.rangefinder`, run over the operators of
:mod:`liam_gpu.operators`; ``docs/svd.md`` explains it.  Stacks of small
matrices get the exact SVD of the batched kernel instead.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arrays, backends, sparse_input, validation
from .transform import allows_tf32
from .operators import DenseOperator, RankOneUpdate, SparseOperator
from .rangefinder import (Factorization, Plan, ResolutionWarning, adaptive, basis, fixed_rank, flip_signs,
                          range_finder, resolution)

__all__ = ["randomized_svd", "randomized_range_finder", "svd_compress", "seed_from_random_state",
           "ResolutionWarning"]

#: Rank of :func:`svd_compress` when neither ``k`` nor ``tol`` is given (capped at ``min(m, n)``).
DEFAULT_RANK = 32
#: Power iterations per block of the rank-adaptive range finder when ``n_iter="auto"``.
ADAPTIVE_N_ITER = 2
#: Accepted values of ``power_iteration_normalizer``.
NORMALIZERS = ("auto", "QR", "LU", "none")

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- public API


def randomized_svd(
    a: Any,
    n_components: int,
    *,
    n_oversamples: int = 10,
    n_iter: int | str = "auto",
    power_iteration_normalizer: str = "auto",
    random_state: Any = 0,
    flip_sign: bool = True,
    transpose: bool | str = "auto",
    svd_lapack_driver: str = "gesdd",
    center: Any = False,
    device: Any = None,
    check_finite: bool = True,
    precision: str | None = None,
) -> tuple[Any, Any, Any]:
    """Truncated SVD by a randomized range finder, with scikit-learn's signature and meaning.

    Parameters
    ----------
    a
        ``(m, n)`` matrix, or a ``(..., m, n)`` stack factored item by item
        (numpy, CuPy, torch or a nested list; any number of leading axes),
        or sparse input: scipy.sparse (any format), cupyx.scipy.sparse, torch
        COO/CSR tensors (converted once to CSR, never densified; see
        :mod:`liam_gpu.sparse_input`).  Not modified and never copied, unless
        its dtype or memory layout needs converting (integers and float16 are computed in float64
        / float32; a non-contiguous view is copied).
    n_components
        Rank ``k`` of the result, ``1 <= k <= min(m, n)``.
    n_oversamples
        Extra sketch columns ``p``: the sketch has ``k + p`` columns rounded up
        to a multiple of 8 (BLAS micro-kernels' width; the extra columns cost
        no time and improve the result), at most ``min(m, n)``.
    n_iter
        Power iterations ``q``.  ``"auto"``: 7 if ``k < 0.1 min(m, n)``, else 4
        (scikit-learn's rule).  When ``l = min(m, n)`` the sketch spans the
        whole range and no iteration is run.
    power_iteration_normalizer
        ``"auto"`` or ``"QR"``: orthonormalize after every product with ``A``
        or ``A.T`` by CholeskyQR (same span as a QR, see :mod:`liam_gpu.cholqr`);
        ``"LU"``: scikit-learn's ``P L`` factor, computed on the host;
        ``"none"``: no normalization (fast, unstable for large ``n_iter``).
    random_state
        Seed of the Philox stream: an int in ``[0, 2**64)``; ``None`` draws one
        from numpy's global generator; a ``numpy.random.Generator`` or
        ``RandomState`` is asked for one.  Same seed, same backend: bitwise
        the same result.
    flip_sign
        Make the entry of largest magnitude of every column of ``U`` positive
        (scikit-learn's ``svd_flip`` convention), so results are deterministic
        up to ties.
    transpose
        scikit-learn's: which side to sketch.  Accepted (``"auto"``, True,
        False) for compatibility; the engine always sketches the taller side
        of ``a`` (scikit-learn's ``"auto"`` rule), which is the cheaper one
        and gives the same factors up to rounding.
    svd_lapack_driver
        LAPACK driver of the small ``l x l`` SVD: ``"gesdd"`` (default) or
        ``"gesvd"`` (slower, more robust), as in scikit-learn.
    center
        False (default); True: factor ``a - 1 mean(a, axis=0)`` (PCA), the
        centring applied inside the products, never materialised; or an
        array of ``n`` column means to subtract.  2-D ``a`` only.
    device
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"emulator"``
        (a :class:`~liam_gpu.Scheduler` is routed by :mod:`liam_gpu.api`).
    check_finite
        Reject NaN/Inf in ``a``.  Checked on the sketch ``A Omega`` (a NaN or
        Inf anywhere in ``a`` reaches it), so it costs no extra pass over ``a``.
    precision
        ``None``/``"float32"`` (default) or ``"tf32"``: allows the products
        of the sketch and power passes with a dense float32 ``a`` on TF32
        tensor cores (cuBLAS with ``CUBLAS_TF32_TENSOR_OP_MATH`` on a GPU of
        compute capability 8.0+; modelled on the emulator as our kernels'
        rounding).  The sketch ``A Omega`` itself (our Philox kernel), the
        final projection ``B = Q^T A``, the Gram matrices and the error
        estimate stay in float32, so the basis is what TF32 perturbs: the
        error grows by up to about ``2**-10 ||A||_F`` (docs/api.md).  The
        CPU, sparse input, float64 and the batched kernel ignore it.

    Returns
    -------
    U, S, Vt
        ``U`` (m, k), ``S`` (k,) descending, ``Vt`` (k, n) -- or (B, m, k),
        (B, k), (B, k, n) for a stack -- in the caller's array type, dtype
        float32 for float32 input, else float64.  Stacks of small matrices
        (those :meth:`~liam_gpu.backends.base.Backend.batched_svd_fits`) get
        the exact truncated SVD from the batched kernel.  When grad mode is
        on and ``a`` (or a ``center`` tensor) requires grad, the factors are
        recorded by autograd (exact gradients when the rank of ``a`` is at
        most the sketch width; ``docs/svd.md``).

    Raises
    ------
    ValueError
        ``a`` not 2-D/3-D, empty, or non-finite; ``n_components``,
        ``n_oversamples``, ``n_iter``, ``power_iteration_normalizer`` or
        ``random_state`` out of range.
    TypeError
        Complex or non-numeric ``a``; a non-integer rank or seed.
    """
    normalizer = _check_normalizer(power_iteration_normalizer)
    tf32 = allows_tf32(precision)
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    if not isinstance(flip_sign, (bool, np.bool_)):
        raise TypeError(f"flip_sign must be a bool, got {type(flip_sign).__name__}")
    if not (transpose == "auto" or isinstance(transpose, (bool, np.bool_))):
        raise ValueError(f"transpose must be 'auto', True or False, got {transpose!r}")
    if svd_lapack_driver not in ("gesdd", "gesvd"):
        raise ValueError(f"svd_lapack_driver must be 'gesdd' or 'gesvd', got {svd_lapack_driver!r}")
    kind, backend = _resolve(a, device)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, a, kind, max_ndim=32)
        lead = tuple(int(d) for d in a.shape[:-2]) if len(a.shape) > 3 else None
        recorded = _recording(a, center)
        mean = _mean(backend, mat, center, kind)
        k = validation.check_rank("n_components", n_components, mat.min_dim)
        q = _n_iter(n_iter, k, mat.min_dim)
        seed = seed_from_random_state(random_state)
        plan = Plan(k=k, p=p, q=q, normalizer=normalizer, seed=seed, check=bool(check_finite),
                    flip=bool(flip_sign), driver=svd_lapack_driver, tf32=tf32)
        if recorded:
            u, s, vt, _ = _factor_recorded(backend, mat, plan, mean, a, center, kind)
            if lead is not None:
                u, s, vt = (x.reshape(lead + tuple(x.shape[1:])) for x in (u, s, vt))
            return u, s, vt
        u, s, vt, _ = _factor(backend, mat, plan, mean)
        if lead is not None:  # (B1, B2, ..., m, n) in: the same leading axes out
            u, s, vt = (x.reshape(lead + tuple(x.shape[1:])) for x in (u, s, vt))
        return tuple(arrays.from_compute(x, kind) for x in (u, s, vt))


def svd_compress(
    a: Any,
    k: int | None = None,
    *,
    tol: float | None = None,
    n_oversamples: int = 10,
    n_iter: int | str = "auto",
    random_state: Any = 0,
    center: Any = False,
    device: Any = None,
    check_finite: bool = True,
    max_rank: int | None = None,
    precision: str | None = None,
) -> Any:
    """Compress a matrix (or a stack of matrices) to a :class:`~liam_gpu.LowRank` factorization.

    Parameters
    ----------
    a
        ``(m, n)`` matrix or ``(B, m, n)`` stack (numpy, CuPy, torch, list).
    k
        Fixed rank, ``1 <= k <= min(m, n)``.  With neither ``k`` nor ``tol``:
        ``min(32, min(m, n))``.
    tol
        Instead of ``k``: the smallest rank whose relative Frobenius error
        ``||A - U S Vt||_F / ||A||_F`` is at most ``tol``, ``0 < tol < 1``,
        found by a blocked rank-adaptive range finder and checked against the
        measured error (LAPACK's dense SVD when the rank needed is a large
        share of ``min(m, n)``).  A ``tol`` below the dtype's resolution
        (1e-5 float32, 1e-13 float64) returns the rank cap and warns
        :class:`ResolutionWarning`, as does a cap too small to reach ``tol``.
        For a stack, one rank for all items: the largest any item needs.
    n_oversamples
        Oversampling ``p`` of the fixed-rank sketch; in ``tol`` mode the range
        finder keeps at least ``p`` columns beyond the chosen rank when it can.
    n_iter
        Power iterations: ``"auto"`` is scikit-learn's rule for a fixed ``k``
        and 2 per block in ``tol`` mode.
    random_state, center, device, check_finite
        As for :func:`randomized_svd` (with ``center``, the factors and the
        error are those of the centred matrix).
    max_rank
        ``tol`` mode only: the largest rank to return (default ``min(m, n)``).
    precision
        As for :func:`randomized_svd`: ``"tf32"`` allows TF32 for the sketch
        and power passes; the error estimate stays float32 (and so measures
        what TF32 cost).

    Returns
    -------
    LowRank
        Factors in the caller's array type; ``relative_error`` estimates
        ``||A - U S Vt||_F / ||A||_F`` within a factor 2 wherever it is above
        the dtype's resolution, and is never reported below the resolution (a
        float, or a float64 array of one value per item for a stack; see
        ``docs/svd.md``).  Factors of a tensor that requires grad are
        recorded by autograd, as for :func:`randomized_svd` (the error is a
        plain float).

    Raises
    ------
    ValueError
        Both ``k`` and ``tol`` given, ``tol`` outside ``(0, 1)``, a rank out of
        range, ``max_rank`` without ``tol``, or bad ``a`` (as
        :func:`randomized_svd`).
    TypeError
        Non-numeric arguments.
    """
    from .lowrank import LowRank

    tf32 = allows_tf32(precision)
    if k is not None and tol is not None:
        raise ValueError("pass either k (a fixed rank) or tol (an error target), not both")
    if tol is not None:
        tol = _check_tol(tol)
    elif max_rank is not None:
        raise ValueError("max_rank applies to tol mode only; with a fixed k it is k itself")
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    kind, backend = _resolve(a, device)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, a, kind)
        recorded = _recording(a, center)
        mean = _mean(backend, mat, center, kind)
        if tol is None:
            plan = fixed_rank_plan(k, mat.min_dim, n_oversamples=p, n_iter=n_iter, random_state=random_state,
                                   check_finite=check_finite, tf32=tf32)
        else:
            seed = seed_from_random_state(random_state)
            cap = mat.min_dim if max_rank is None else validation.check_rank("max_rank", max_rank, mat.min_dim)
            q = ADAPTIVE_N_ITER if n_iter == "auto" else _check_count("n_iter", n_iter, minimum=0)
            plan = Plan(k=cap, p=p, q=q, seed=seed, check=bool(check_finite), estimate=True, tol=tol, tf32=tf32)
        if recorded:
            u, s, vt, err = _factor_recorded(backend, mat, plan, mean, a, center, kind)
            return LowRank(u, s, vt, relative_error=err)
        u, s, vt, err = _factor(backend, mat, plan, mean)
        factors = [arrays.from_compute(x, kind) for x in (u, s, vt)]
        return LowRank(*factors, relative_error=err)


def randomized_range_finder(
    a: Any,
    size: int,
    n_iter: int,
    *,
    power_iteration_normalizer: str = "auto",
    random_state: Any = 0,
    center: Any = False,
    device: Any = None,
    check_finite: bool = True,
) -> Any:
    """An orthonormal ``(m, size)`` basis ``Q`` whose range approximates that of ``a`` (scikit-learn's meaning).

    ``Q`` spans ``(A A^T)^q A Omega`` for a Philox test matrix ``Omega``
    (``n x size``), normalized after every product as the engine does
    (:func:`liam_gpu.rangefinder.range_finder`), orthonormal to working
    precision.  Parameters as for :func:`randomized_svd`; ``size`` is at
    most ``m`` (``Q`` has orthonormal columns).  2-D ``a`` only (dense, or
    sparse of any library :func:`randomized_svd` takes).  ``Q`` is never recorded by autograd: like the test
    matrix it is a constant of the factorizations built on it.
    """
    normalizer = _check_normalizer(power_iteration_normalizer)
    q = _check_count("n_iter", n_iter, minimum=0)
    kind, backend = _resolve(a, device)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, a, kind)
        if len(mat.shape) != 2:
            raise ValueError(f"a must be 2-D, got shape {mat.shape}")
        m = mat.shape[0]
        size = validation.check_rank("size", size, m, what="m")
        mean = _mean(backend, mat, center, kind)
        op = mat.operator(backend, tall=False)  # the caller's orientation: Q lives on a's row side
        if mean is not None:
            op = RankOneUpdate.centred(op, mean)
        basis = range_finder(op, size, q, seed_from_random_state(random_state), normalizer=normalizer,
                             check=bool(check_finite))
        return arrays.from_compute(basis, kind)


def seed_from_random_state(random_state: Any) -> int:
    """The 64-bit Philox seed of a ``random_state`` argument.

    An int in ``[0, 2**64)`` is the seed itself; ``None`` takes one from
    numpy's global ``RandomState`` (so ``np.random.seed`` makes it
    reproducible, as in scikit-learn); a ``numpy.random.Generator`` or
    ``RandomState`` is asked for one (advancing it).
    """
    if random_state is None:
        hi, lo = (int(w) for w in np.random.randint(0, 2**32, size=2, dtype=np.uint64))
        return (hi << 32) | lo
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, _MASK64, dtype=np.uint64, endpoint=True))
    if isinstance(random_state, np.random.RandomState):
        hi, lo = (int(w) for w in random_state.randint(0, 2**32, size=2, dtype=np.uint64))
        return (hi << 32) | lo
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, numbers.Integral):
        raise TypeError(
            "random_state must be None, an int, a numpy.random.Generator or a numpy.random.RandomState, "
            f"got {type(random_state).__name__}"
        )
    seed = int(random_state)
    if not 0 <= seed <= _MASK64:
        raise ValueError(f"random_state must be in [0, 2**64) when an int, got {seed}")
    return seed


# --------------------------------------------------------------------------- argument checks


def fixed_rank_plan(k: Any, min_dim: int, *, n_oversamples: Any, n_iter: Any, random_state: Any, check_finite: Any,
                    tf32: bool = False) -> Plan:
    """The engine's plan of a fixed-rank :func:`svd_compress` (here and in :func:`liam_gpu.dask.svd_compress`).

    Checked in this order: ``k`` against ``min_dim`` (None: ``min(DEFAULT_RANK,
    min_dim)``), ``n_oversamples``, ``n_iter`` (``"auto"``: scikit-learn's rule
    for that rank), ``random_state`` (or its seed); the error is estimated.
    """
    rank = min(DEFAULT_RANK, min_dim) if k is None else validation.check_rank("k", k, min_dim)
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    q = _n_iter(n_iter, rank, min_dim)
    return Plan(k=rank, p=p, q=q, seed=seed_from_random_state(random_state), check=bool(check_finite),
                estimate=True, tf32=tf32)


def check_center_means(mean: np.ndarray, n: int) -> np.ndarray:
    """``center=``'s column means as given (a host array): ``n`` of them, finite; returned as float64."""
    if mean.shape != (n,):
        raise ValueError(f"center must be True, False or {n} column means (shape ({n},)), got shape {mean.shape}")
    mean = np.asarray(mean, dtype=np.float64)
    if not np.isfinite(mean).all():
        raise ValueError("center contains NaN or Inf")
    return mean


def _check_count(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_normalizer(value: Any) -> str:
    if value not in NORMALIZERS:
        raise ValueError(f"power_iteration_normalizer must be one of {NORMALIZERS}, got {value!r}")
    return value


def _check_tol(tol: Any) -> float:
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
    tol = float(tol)
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in the open interval (0, 1), got {tol}")
    return tol


def _n_iter(n_iter: Any, k: int, min_dim: int) -> int:
    if isinstance(n_iter, str):
        if n_iter != "auto":
            raise ValueError(f"n_iter must be 'auto' or an integer >= 0, got {n_iter!r}")
        return 7 if k < 0.1 * min_dim else 4
    return _check_count("n_iter", n_iter, minimum=0)


# --------------------------------------------------------------------------- input


@dataclass
class _Matrix:
    """The validated input: a C-contiguous backend array and how to read it.

    ``data`` is 2-D or 3-D; the logical matrix (each item of a stack) is
    ``data`` or, when ``transposed``, its (2-D) transpose: an F-contiguous
    input is read through its C-contiguous transpose instead of being copied.
    """

    data: Any
    transposed: bool
    shape: tuple[int, ...]
    sparse: bool = False

    @property
    def min_dim(self) -> int:
        return min(self.shape[-2:])

    def operator(self, backend: Any, *, tall: bool = True) -> Any:
        """The 2-D matrix as an operator: its tall view (the engine's), or the caller's orientation."""
        if self.sparse:
            op = self.data
            return op if tall or not op.swapped else SparseOperator(op.backend, op.data_t, op.data, False)
        if tall:
            return DenseOperator.of(backend, self.data, self.transposed)
        return DenseOperator(backend, self.data, self.transposed, False)

    @classmethod
    def prepare(cls, backend: Any, a: Any, kind: arrays.ArrayKind, *, max_ndim: int = 3) -> "_Matrix":
        """Validate and convert ``a``; ``max_ndim > 3``: leading batch axes are flattened into one."""
        if sparse_input.is_sparse(a):
            return cls._sparse(backend, a)
        x = backend.asarray(arrays.to_compute(a, kind, name="a"))
        validation.check_ndim("a", x, ndim=tuple(range(2, max_ndim + 1)))
        validation.check_not_empty("a", x)
        dtype = validation.float_dtype("a", x)
        if x.ndim > 3:
            x = backend.xp.ascontiguousarray(x).reshape((-1,) + tuple(x.shape[-2:]))
        shape = tuple(int(d) for d in x.shape)
        transposed = False
        if x.dtype != dtype:
            x = x.astype(dtype, order="C")
        elif not x.flags.c_contiguous:
            if x.ndim == 2 and x.flags.f_contiguous:
                x, transposed = x.T, True
            else:
                x = backend.xp.ascontiguousarray(x)
        return cls(x, transposed, shape)

    @classmethod
    def _sparse(cls, backend: Any, a: Any) -> "_Matrix":
        """A sparse ``a`` (scipy, cupyx or torch) as a :class:`SparseOperator` of ``backend``'s sparse library."""
        shape = tuple(int(d) for d in a.shape)
        if len(shape) != 2:
            raise ValueError(f"a must be 2-D when sparse, got shape {shape}")
        if 0 in shape:
            raise ValueError(f"a is empty (shape {shape}); nothing to factor")
        dtype = sparse_input.compute_dtype(a)
        return cls(SparseOperator.of(backend, sparse_input.on_backend(backend, a, dtype), dtype), False, shape, True)


def _resolve(a: Any, device: Any) -> tuple[arrays.ArrayKind, Any]:
    """The caller's array kind and the backend that computes.

    Sparse input: a GPU's (cupyx, CUDA tensors) is factored on its own GPU
    unless ``device`` names another place; host sparse input (scipy, CPU
    tensors) on the CPU unless ``device`` names the emulator or a GPU (then
    copied there once).  Results come back dense in the caller's family.
    """
    if sparse_input.is_sparse(a):
        kind = sparse_input.kind_of(a)
        if not kind.on_gpu and (device is None or (isinstance(device, str) and device == "auto")):
            device = "cpu"
        return kind, backends.resolve(device, kind)
    kind = arrays.common_kind(a=a)
    return kind, backends.resolve(device, kind)


def _recording(a: Any, center: Any) -> bool:
    """Whether autograd records this call: ``a`` or a ``center`` tensor requires grad (and grad mode is on)."""
    if not arrays.needs_autograd(a, center):
        return False
    if not arrays.is_tensor(a):
        raise TypeError(f"center is a tensor that requires grad, but a is a {type(a).__name__}: pass a as a "
                        "torch tensor for differentiable factors, or center.detach()")
    return True


def _mean(backend: Any, mat: _Matrix, center: Any, kind: arrays.ArrayKind) -> np.ndarray | None:
    """The column means to subtract (host float64, length ``n``), or None without centring."""
    if center is False or center is None:
        return None
    if len(mat.shape) != 2:
        raise ValueError(f"center applies to a 2-D a, got shape {mat.shape}")
    m, n = mat.shape
    if center is True:
        if mat.sparse:
            return mat.data.column_sums() / m
        axis = 1 if mat.transposed else 0  # data is a.T when transposed
        return backend.to_host(backend.xp.mean(mat.data, axis=axis, dtype=np.float64)).astype(np.float64)
    mean = np.asarray(backend.to_host(backend.asarray(arrays.to_compute(center, kind, name="center"))),
                      dtype=np.float64)
    return check_center_means(mean, n)


# --------------------------------------------------------------------------- dispatch


def _factor(backend: Any, mat: _Matrix, plan: Plan, mean: np.ndarray | None = None) -> tuple[Any, Any, Any, Any]:
    """``(U, S, Vt, relative_error)`` of a prepared 2-D matrix or stack (signs flipped), centred by ``mean``."""
    xp = backend.xp
    if len(mat.shape) == 2:
        (fact,), k = _engine(backend, mat, plan, mean)
        u, s, vt = fact.factors(k, flip=plan.flip)
        return u, s, vt, (fact.relative_error(k) if plan.estimate else None)
    batch, m, n = mat.shape
    if backend.batched_svd_fits(m, n, mat.data.dtype):
        return _small_stack(backend, mat.data, plan)
    facts, k = _engine(backend, mat, plan, mean)
    u = xp.empty((batch, m, k), dtype=mat.data.dtype)
    s = xp.empty((batch, k), dtype=mat.data.dtype)
    vt = xp.empty((batch, k, n), dtype=mat.data.dtype)
    errors = np.empty(batch) if plan.estimate else None
    for i, fact in enumerate(facts):
        u[i], s[i], vt[i] = fact.factors(k, flip=plan.flip)
        if errors is not None:
            errors[i] = fact.relative_error(k)
    return u, s, vt, errors


def _factor_recorded(backend: Any, mat: _Matrix, plan: Plan, mean: np.ndarray | None, a: Any, center: Any,
                     kind: arrays.ArrayKind) -> tuple[Any, Any, Any, Any]:
    """:func:`_factor` for a tensor ``a`` (or ``center``) that requires grad: factors recorded by autograd.

    The engine gives the range basis, torch the factors (:mod:`liam_gpu._svd_grad`);
    stacks the batched kernel would take get torch's exact SVD instead.
    Returns torch tensors in the caller's dtype.
    """
    from . import _svd_grad

    if mat.sparse:
        raise ValueError("a is a sparse tensor and the call records gradients (a or center requires grad): "
                         "differentiable factors of sparse input are not supported; pass detached tensors for "
                         "factors without a graph")
    x = _svd_grad.source(a, mat.data.dtype)
    mu = None if mean is None else _svd_grad.centre_of(x, center, mean)
    if len(mat.shape) == 3 and backend.batched_svd_fits(*mat.shape[1:], mat.data.dtype):
        if plan.check:
            validation.check_finite("a", mat.data)
        u, s, vt = _svd_grad.exact(x)
        k, errors = _spectrum_rank(s.detach().cpu().numpy(), plan, mat.data.dtype)
        u, s, vt = u[..., :k], s[..., :k], vt[..., :k, :]
        if not plan.flip:  # no convention asked for: the batched kernel's signs, as the unrecorded path's
            signs = _svd_grad.align_signs(u, backend.batched_svd(mat.data)[0][..., :k])
            u, vt = u * signs, vt * signs.mT
    else:
        if plan.tol is None and plan.flip and not plan.estimate:
            # Only the bases are used: B = Q^T A is factored by torch and the signs set below.
            facts, k = [basis(op, plan) for op in _operators(backend, mat, mean)], plan.k
        else:
            facts, k = _engine(backend, mat, plan, mean)
        items = [_svd_grad.project(x if len(mat.shape) == 2 else x[i], mu, fact, k) for i, fact in enumerate(facts)]
        if len(mat.shape) == 2:
            (u, s, vt), = items
            errors = facts[0].relative_error(k) if plan.estimate else None
        else:
            u, s, vt = (_svd_grad.stack(parts) for parts in zip(*items))
            errors = np.array([fact.relative_error(k) for fact in facts]) if plan.estimate else None
    if plan.flip:
        u, vt = _svd_grad.flip_columns(u, vt)
    return (*(_svd_grad.as_result(t, kind) for t in (u, s, vt)), errors)


def _engine(backend: Any, mat: _Matrix, plan: Plan, mean: np.ndarray | None = None) -> tuple[list[Factorization], int]:
    """The engine's factorizations (one per item; one for a 2-D matrix) and the rank to keep.

    Not for stacks that the batched kernel takes (:func:`_small_stack`).
    """
    ops = _operators(backend, mat, mean)
    if plan.tol is None:
        return [fixed_rank(op, plan) for op in ops], plan.k
    if len(mat.shape) == 2:
        fact, k = adaptive(ops[0], plan)
        return [fact], k
    # One rank for the stack: what the most demanding item needs.  Items
    # whose basis is narrower than that are factored again at that rank.
    found = [adaptive(op, plan) for op in ops]
    k = max(rank for _, rank in found)
    again = dataclasses.replace(plan, k=k, tol=None, check=False, estimate=True)
    return [fact if fact.width >= k else fixed_rank(op, again) for (fact, _), op in zip(found, ops)], k


def _operators(backend: Any, mat: _Matrix, mean: np.ndarray | None) -> list[Any]:
    """The engine's operator of each item (one for a 2-D matrix, centred by ``mean`` if given)."""
    if len(mat.shape) == 2:
        op = mat.operator(backend)
        return [op if mean is None else RankOneUpdate.centred(op, mean)]
    return [DenseOperator.of(backend, mat.data[i]) for i in range(mat.shape[0])]


def _small_stack(backend: Any, data: Any, plan: Plan) -> tuple[Any, Any, Any, Any]:
    """Exact truncated SVD of a stack of small matrices by the batched kernel."""
    xp = backend.xp
    # NaN/Inf in an item reaches its singular values (or makes LAPACK give up):
    # only then is the stack inspected, for the input's own message.
    try:
        u, s, vt = backend.batched_svd(data)
    except np.linalg.LinAlgError:
        if plan.check:
            validation.check_finite("a", data)
        raise
    s_host = backend.to_host(s)
    if plan.check and not np.isfinite(s_host).all():
        validation.check_finite("a", data)
        raise ValueError(f"a is finite but so large that its singular values overflow {data.dtype}; scale it down")
    k, errors = _spectrum_rank(s_host, plan, data.dtype)
    u = xp.ascontiguousarray(u[:, :, :k])
    s = xp.ascontiguousarray(s[:, :k])
    vt = xp.ascontiguousarray(vt[:, :k, :])
    if plan.flip:
        u, vt = flip_signs(xp, u, vt)
    return u, s, vt, errors


def _spectrum_rank(s_host: np.ndarray, plan: Plan, dtype: Any) -> tuple[int, np.ndarray | None]:
    """The rank to keep of a stack's exact spectra ``s_host`` (B, min(m, n)) and, with
    ``plan.estimate``, each item's relative error at that rank (exact from the spectrum)."""
    energy = s_host.astype(np.float64) ** 2
    total = energy.sum(axis=1)
    # tail[i, j] = sum of sigma^2 beyond the first j values (exact from the spectrum).
    tail = np.maximum(np.concatenate([total[:, None], total[:, None] - np.cumsum(energy, axis=1)], axis=1), 0.0)
    if plan.tol is None:
        k = plan.k
    else:
        need = tail <= (plan.tol**2) * total[:, None]
        need[:, -1] = True  # the full rank always meets it (its tail is rounding)
        first = np.argmax(need[:, 1:], axis=1) + 1  # smallest j >= 1 meeting the target
        k = min(plan.k, int(first.max()))
    errors = None
    if plan.estimate:
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.sqrt(tail[:, k] / np.where(total > 0, total, 1.0))
        errors = np.where(total > 0, np.maximum(rel, resolution(dtype)), 0.0)
    return k, errors
