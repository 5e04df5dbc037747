"""Randomized truncated SVD: :func:`randomized_svd` and :func:`svd_compress`.

The Halko-Martinsson-Tropp range finder with power iterations, written once
over the backend primitives (:mod:`liam_gpu.backends.base`): the in-kernel
Philox sketch ``A @ Omega``, the big skinny products ``A @ Z`` and
``A.T @ Y``, CholeskyQR (:mod:`liam_gpu.cholqr`) and, for stacks of small
matrices, the batched SVD.  ``docs/svd.md`` explains the algorithm and its
choices; in short, for ``A`` (m x n) with ``m >= n`` (a wide ``A`` is
factored as its transpose, read in place) and ``l = k + p``::

    Y = A @ Omega;  V = A.T @ Y            Omega: n x l, Philox; one pass over A
    repeat q times:
        W = basis(V R^-1)  (R: Y's Cholesky factor, so W = basis(A.T basis(Y)))
        Y = A @ W;  V = A.T @ Y            one pass over A (only Y = A @ W the last time)
    Q, _ = cholesky_qr(Y)                  m x l, orthonormal
    P, T = cholesky_qr(A.T @ Q)            n x l;  B = Q.T A = T.T P.T
    T.T = Uc diag(s) Vc.T                  l x l, on the host in float64
    U = Q Uc[:, :k],  Vt = (P Vc[:, :k]).T

That is ``2 q + 2`` products with ``A`` (the same subspace as scikit-learn's)
in ``q + 2`` passes over it on the CPU, a Gram reduction and a triangular
apply per orthonormalization instead of a Householder QR, and
``O((m + n) l)`` memory besides ``A``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arrays, backends, validation
from .cholqr import apply_dtype, cholesky_factor, cholesky_qr, first_factor, orthonormal_basis

#: Rank of :func:`svd_compress` when neither ``k`` nor ``tol`` is given (capped at ``min(m, n)``).
DEFAULT_RANK = 32
#: Power iterations per block of the rank-adaptive range finder when ``n_iter="auto"``.
ADAPTIVE_N_ITER = 2
#: Columns of the adaptive range finder's first block (it doubles after each block).
ADAPTIVE_FIRST_BLOCK = 32
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
    device: Any = None,
    check_finite: bool = True,
) -> tuple[Any, Any, Any]:
    """Truncated SVD by a randomized range finder, with scikit-learn's signature and meaning.

    Parameters
    ----------
    a
        ``(m, n)`` matrix, or a ``(B, m, n)`` stack factored item by item
        (numpy, CuPy, torch or a nested list).  Not modified and never copied,
        unless its dtype or memory layout needs converting (integers and
        float16 are computed in float64 / float32; a non-contiguous view is
        copied).
    n_components
        Rank ``k`` of the result, ``1 <= k <= min(m, n)``.
    n_oversamples
        Extra sketch columns ``p``: the sketch has ``l = min(k + p, min(m, n))`` columns.
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
    device
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"emulator"``
        or a :class:`~liam_gpu.Scheduler`.
    check_finite
        Reject NaN/Inf in ``a``.  Checked on the sketch ``A Omega`` (a NaN or
        Inf anywhere in ``a`` reaches it), so it costs no extra pass over ``a``.

    Returns
    -------
    U, S, Vt
        ``U`` (m, k), ``S`` (k,) descending, ``Vt`` (k, n) -- or (B, m, k),
        (B, k), (B, k, n) for a stack -- in the caller's array type, dtype
        float32 for float32 input, else float64.  Stacks of small matrices
        (those :meth:`~liam_gpu.backends.base.Backend.batched_svd_fits`) get
        the exact truncated SVD from the batched kernel.

    Raises
    ------
    ValueError
        ``a`` not 2-D/3-D, empty, or non-finite; ``n_components``,
        ``n_oversamples``, ``n_iter``, ``power_iteration_normalizer`` or
        ``random_state`` out of range.
    TypeError
        Complex or non-numeric ``a``; a non-integer rank or seed.
    """
    from .alda import Scheduler

    if isinstance(device, Scheduler):
        return device.randomized_svd(
            a, n_components, n_oversamples=n_oversamples, n_iter=n_iter,
            power_iteration_normalizer=power_iteration_normalizer, random_state=random_state,
            flip_sign=flip_sign, check_finite=check_finite,
        )
    normalizer = _check_normalizer(power_iteration_normalizer)
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    if not isinstance(flip_sign, (bool, np.bool_)):
        raise TypeError(f"flip_sign must be a bool, got {type(flip_sign).__name__}")
    kind = arrays.common_kind(a=a)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, a, kind)
        k = validation.check_rank("n_components", n_components, mat.min_dim)
        q = _n_iter(n_iter, k, mat.min_dim)
        seed = seed_from_random_state(random_state)
        plan = _Plan(k=k, p=p, q=q, normalizer=normalizer, seed=seed, check=bool(check_finite))
        u, s, vt, _ = _factor(backend, mat, plan)
        if flip_sign:
            u, vt = _flip_signs(backend.xp, u, vt)
        return tuple(arrays.from_compute(x, kind) for x in (u, s, vt))


def svd_compress(
    a: Any,
    k: int | None = None,
    *,
    tol: float | None = None,
    n_oversamples: int = 10,
    n_iter: int | str = "auto",
    random_state: Any = 0,
    device: Any = None,
    check_finite: bool = True,
    max_rank: int | None = None,
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
        Instead of ``k``: the smallest rank whose estimated relative Frobenius
        error ``||A - U S Vt||_F / ||A||_F`` is at most ``tol``, ``0 < tol < 1``,
        found by a blocked rank-adaptive range finder.  For a stack, one rank
        for all items: the largest any item needs.
    n_oversamples
        Oversampling ``p`` of the fixed-rank sketch; in ``tol`` mode the range
        finder keeps at least ``p`` columns beyond the chosen rank when it can.
    n_iter
        Power iterations: ``"auto"`` is scikit-learn's rule for a fixed ``k``
        and 2 per block in ``tol`` mode.
    random_state, device, check_finite
        As for :func:`randomized_svd`.
    max_rank
        ``tol`` mode only: the largest rank to return (default ``min(m, n)``).

    Returns
    -------
    LowRank
        Factors in the caller's array type; ``relative_error`` is the estimate
        ``sqrt(||A||_F^2 - sum(S**2)) / ||A||_F`` (a float, or a float64 array
        of one value per item for a stack; see ``docs/svd.md`` for its
        accuracy).

    Raises
    ------
    ValueError
        Both ``k`` and ``tol`` given, ``tol`` outside ``(0, 1)``, a rank out of
        range, ``max_rank`` without ``tol``, or bad ``a`` (as
        :func:`randomized_svd`).
    TypeError
        Non-numeric arguments.
    """
    from .alda import Scheduler

    if isinstance(device, Scheduler):
        return device.svd_compress(
            a, k=k, tol=tol, n_oversamples=n_oversamples, n_iter=n_iter, random_state=random_state,
            check_finite=check_finite, max_rank=max_rank,
        )
    from .lowrank import LowRank

    if k is not None and tol is not None:
        raise ValueError("pass either k (a fixed rank) or tol (an error target), not both")
    if tol is not None:
        tol = _check_tol(tol)
    elif max_rank is not None:
        raise ValueError("max_rank applies to tol mode only; with a fixed k it is k itself")
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    kind = arrays.common_kind(a=a)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, a, kind)
        seed = seed_from_random_state(random_state)
        if tol is None:
            rank = DEFAULT_RANK if k is None else k
            rank = validation.check_rank("k", rank, mat.min_dim) if k is not None else min(rank, mat.min_dim)
            plan = _Plan(k=rank, p=p, q=_n_iter(n_iter, rank, mat.min_dim), normalizer="auto", seed=seed,
                         check=bool(check_finite), estimate=True)
        else:
            cap = mat.min_dim if max_rank is None else validation.check_rank("max_rank", max_rank, mat.min_dim)
            q = ADAPTIVE_N_ITER if n_iter == "auto" else _check_count("n_iter", n_iter, minimum=0)
            plan = _Plan(k=cap, p=p, q=q, normalizer="auto", seed=seed, check=bool(check_finite), estimate=True,
                         tol=tol)
        u, s, vt, err = _factor(backend, mat, plan)
        u, vt = _flip_signs(backend.xp, u, vt)
        factors = [arrays.from_compute(x, kind) for x in (u, s, vt)]
        return LowRank(*factors, relative_error=err)


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

    @property
    def min_dim(self) -> int:
        return min(self.shape[-2:])

    @classmethod
    def prepare(cls, backend: Any, a: Any, kind: arrays.ArrayKind) -> "_Matrix":
        x = backend.asarray(arrays.to_compute(a, kind, name="a"))
        validation.check_ndim("a", x, ndim=(2, 3))
        validation.check_not_empty("a", x)
        dtype = validation.float_dtype("a", x)
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


@dataclass(frozen=True)
class _Plan:
    """What to compute: rank (or rank cap in ``tol`` mode), oversampling, iterations, seed."""

    k: int
    p: int
    q: int
    normalizer: str
    seed: int
    check: bool = True
    estimate: bool = False
    tol: float | None = None


# --------------------------------------------------------------------------- dispatch


def _factor(backend: Any, mat: _Matrix, plan: _Plan) -> tuple[Any, Any, Any, Any]:
    """``(U, S, Vt, relative_error)`` of a prepared 2-D matrix or stack."""
    xp = backend.xp
    if len(mat.shape) == 2:
        tall = _TallView.of(mat.data, mat.transposed)
        core = _adaptive(backend, tall, plan) if plan.tol is not None else _fixed(backend, tall, plan)
        k = core.rank_for(plan) if plan.tol is not None else plan.k
        u, s, vt = core.factors(backend, k)
        return u, s, vt, (core.error(k) if plan.estimate else None)

    batch, m, n = mat.shape
    if backend.batched_svd_fits(m, n, mat.data.dtype):
        return _small_stack(backend, mat.data, plan)
    cores = []
    for i in range(batch):
        tall = _TallView.of(mat.data[i], False)
        cores.append(_adaptive(backend, tall, plan) if plan.tol is not None else _fixed(backend, tall, plan))
    if plan.tol is None:
        k = plan.k
    else:
        # One rank for the stack: what the most demanding item needs.  Items
        # whose basis is narrower than that are factored again at that rank.
        k = max(core.rank_for(plan) for core in cores)
        for i, core in enumerate(cores):
            if core.width < k:
                cores[i] = _fixed(backend, _TallView.of(mat.data[i], False),
                                  _Plan(k=k, p=plan.p, q=plan.q, normalizer="auto", seed=plan.seed,
                                        check=False, estimate=True))
    u = xp.empty((batch, m, k), dtype=mat.data.dtype)
    s = xp.empty((batch, k), dtype=mat.data.dtype)
    vt = xp.empty((batch, k, n), dtype=mat.data.dtype)
    errors = np.empty(batch) if plan.estimate else None
    for i, core in enumerate(cores):
        u[i], s[i], vt[i] = core.factors(backend, k)
        if errors is not None:
            errors[i] = core.error(k)
    return u, s, vt, errors


def _small_stack(backend: Any, data: Any, plan: _Plan) -> tuple[Any, Any, Any, Any]:
    """Exact truncated SVD of a stack of small matrices by the batched kernel."""
    xp = backend.xp
    u, s, vt = backend.batched_svd(data)
    s_host = backend.to_host(s).astype(np.float64)
    if plan.check:
        _require_finite(backend, data, s_host)
    energy = s_host**2
    total = energy.sum(axis=1)
    # tail[i, j] = sum of sigma^2 beyond the first j values (exact from the spectrum).
    tail = np.concatenate([total[:, None], total[:, None] - np.cumsum(energy, axis=1)], axis=1)
    tail = np.maximum(tail, 0.0)
    if plan.tol is None:
        k = plan.k
    else:
        need = tail <= (plan.tol**2) * total[:, None]
        need[:, -1] = True  # the full rank always meets it (its tail is rounding)
        first = np.argmax(need[:, 1:], axis=1) + 1  # smallest j >= 1 meeting the target
        k = min(plan.k, int(first.max()))
    u = xp.ascontiguousarray(u[:, :, :k])
    s = xp.ascontiguousarray(s[:, :k])
    vt = xp.ascontiguousarray(vt[:, :k, :])
    errors = None
    if plan.estimate:
        with np.errstate(invalid="ignore", divide="ignore"):
            errors = np.where(total > 0, np.sqrt(tail[:, k] / np.where(total > 0, total, 1.0)), 0.0)
    return u, s, vt, errors


def _flip_signs(xp: Any, u: Any, vt: Any) -> tuple[Any, Any]:
    """scikit-learn's ``svd_flip`` on ``U``: the largest-magnitude entry of each column positive.

    Works on single matrices and stacks (``u`` (..., m, k), ``vt`` (..., k, n));
    ``u`` and ``vt`` are our own arrays and are scaled in place.
    """
    where = xp.argmax(xp.abs(u), axis=-2)[..., None, :]
    picked = xp.take_along_axis(u, where, axis=-2)
    signs = xp.where(picked < 0, -1, 1).astype(u.dtype)
    u *= signs
    vt *= xp.swapaxes(signs, -1, -2)
    return u, vt


# --------------------------------------------------------------------------- one tall matrix


@dataclass(frozen=True)
class _TallView:
    """A 2-D C-contiguous array read as the tall matrix ``T`` (``mt >= nt``).

    ``T = data.T`` when ``trans``.  ``swapped`` records that ``T`` is the
    transpose of the caller's matrix (a wide input), so the factors swap roles
    on the way out.
    """

    data: Any
    trans: bool
    swapped: bool

    @classmethod
    def of(cls, data: Any, transposed: bool) -> "_TallView":
        rows, cols = (data.shape[1], data.shape[0]) if transposed else data.shape
        if rows >= cols:
            return cls(data, transposed, False)
        return cls(data, not transposed, True)

    @property
    def shape(self) -> tuple[int, int]:
        r, c = self.data.shape
        return (c, r) if self.trans else (r, c)

    def times(self, backend: Any, z: Any) -> Any:
        """``T @ z``."""
        return backend.matmul(self.data, z, trans=self.trans)

    def t_times(self, backend: Any, y: Any) -> Any:
        """``T.T @ y``."""
        return backend.matmul(self.data, y, trans=not self.trans)


def _normalize(backend: Any, y: Any, normalizer: str) -> Any:
    """The basis a power iteration continues with."""
    if normalizer in ("auto", "QR"):
        return orthonormal_basis(backend, y)
    if normalizer == "LU":
        import scipy.linalg

        pl, _ = scipy.linalg.lu(backend.to_host(y), permute_l=True, check_finite=False)
        return backend.asarray(np.ascontiguousarray(pl, dtype=y.dtype))
    return y


def _project_out(backend: Any, q: Any | None, y: Any) -> Any:
    """``(I - Q Q^T) y`` applied twice (twice is enough for orthogonality to working precision)."""
    if q is None:
        return y
    for _ in range(2):
        y = y - backend.matmul(q, backend.matmul(q, y, trans=True))
    return y


def _require_finite(backend: Any, a: Any, probe: Any) -> None:
    """Raise the input error if ``probe`` (computed from ``a``) holds NaN/Inf.

    NaN or Inf anywhere in ``a`` reaches the sketch ``A Omega`` (no entry of
    Omega is zero), so checking the ``m x l`` sketch replaces a pass over
    ``a``.  Only then is ``a`` itself inspected, for the usual message; a
    finite ``a`` whose products overflow gets its own.
    """
    if bool(backend.xp.isfinite(backend.xp.asarray(probe)).all()):
        return
    validation.check_finite("a", a)
    raise ValueError(f"a is finite but so large that its products overflow {a.dtype}; scale it down")


#: A power step may orthonormalize ``Y`` after ``A^T Y`` is formed (one pass over
#: ``A`` for both products) while ``cond(Y) sqrt(u) <= FUSED_LIMIT``: ``A^T Y``
#: then carries an extra relative error ``u cond(Y) <= FUSED_LIMIT sqrt(u)``
#: (2.4e-5 in float32), far below what the next iterations correct.
FUSED_LIMIT = 0.1


def _power_range(backend: Any, tall: _TallView, width: int, col0: int, q_iter: int, normalizer: str,
                 seed: int, basis: Any | None = None, check: bool = False) -> Any:
    """An orthonormal basis of ``(T')(T'^T T')^q Omega[:, col0:col0 + width]``, ``T' = (I - B B^T) T``.

    ``basis`` (mt x l0, orthonormal, or None) is deflated away: the new block
    spans directions of ``T`` that ``basis`` misses.  ``check``: reject a
    non-finite ``T`` (see :func:`_require_finite`).
    """
    if basis is None and normalizer in ("auto", "QR") and q_iter > 0:
        return _fused_power_range(backend, tall, width, col0, q_iter, seed, check)
    y = backend.sketch(tall.data, seed, width, trans=tall.trans, col0=col0)
    if check:
        _require_finite(backend, tall.data, y)
    y = _project_out(backend, basis, y)
    for _ in range(q_iter):
        y = _normalize(backend, y, normalizer)
        w = _normalize(backend, tall.t_times(backend, y), normalizer)
        y = _project_out(backend, basis, tall.times(backend, w))
    return cholesky_qr(backend, y)[0]


def _fused_power_range(backend: Any, tall: _TallView, width: int, col0: int, q_iter: int, seed: int,
                       check: bool) -> Any:
    """The power iterations with ``T`` read once per ``(T z, T^T T z)`` pair.

    ``Y = T W`` and ``V = T^T Y`` come from one pass (:meth:`power_pass`);
    orthonormalizing ``Y`` is a right-multiplication by ``R^-1``, so the next
    basis is ``basis(V R^-1)`` -- the same span as ``basis(T^T basis(Y))``,
    with ``2 q + 2`` products but ``q + 2`` passes over ``T``.  When ``Y`` is
    too ill-conditioned for that (see :data:`FUSED_LIMIT`), the step is redone
    the unfused way.  The last product and the final basis are never fused:
    their rounding goes straight into the result.
    """
    sqrt_u = math.sqrt(np.finfo(tall.data.dtype).eps / 2)
    y, v = backend.sketch_pass(tall.data, seed, width, trans=tall.trans, col0=col0)
    if check:
        _require_finite(backend, tall.data, y)
    for step in range(q_iter):
        f = first_factor(backend, y)
        if f is not None and f.cond * sqrt_u <= FUSED_LIMIT:
            w = orthonormal_basis(backend, f.apply(backend, v, apply_dtype(v)))
        else:
            w = orthonormal_basis(backend, tall.t_times(backend, orthonormal_basis(backend, y)))
        if step + 1 < q_iter:
            y, v = backend.power_pass(tall.data, w, trans=tall.trans)
        else:
            y = tall.times(backend, w)
    return cholesky_qr(backend, y)[0]


@dataclass
class _Core:
    """``T ~ Q Uc diag(s) (P Vc)^T``: a tall matrix's factorization before truncation.

    ``Q`` (mt x l) and ``P`` (nt x l) are backend arrays; ``uc`` (l x l, with
    the Gram correction of ``Q`` folded in), ``s`` and ``vc`` are host float64.
    ``norm2`` is ``||T||_F^2`` when an error estimate is wanted.
    """

    tall: _TallView
    q: Any
    p: Any
    uc: np.ndarray
    s: np.ndarray
    vc: np.ndarray
    norm2: float | None

    @property
    def width(self) -> int:
        return int(self.s.shape[0])

    def error_sq(self, k: int) -> float:
        """Estimated ``||T - T_k||_F^2`` (zero when it falls below rounding)."""
        return max(self.norm2 - float(np.sum(self.s[:k] ** 2)), 0.0)

    def error(self, k: int) -> float:
        """Estimated relative Frobenius error of the rank-``k`` truncation."""
        if not self.norm2:
            return 0.0
        return math.sqrt(self.error_sq(k) / self.norm2)

    def rank_for(self, plan: _Plan) -> int:
        """The smallest rank (at most ``plan.k``) meeting ``plan.tol``, else the largest available."""
        target = plan.tol**2 * self.norm2
        limit = min(plan.k, self.width)
        for k in range(1, limit + 1):
            if self.error_sq(k) <= target:
                return k
        return limit

    def factors(self, backend: Any, k: int) -> tuple[Any, Any, Any]:
        """``U`` (m, k), ``S`` (k,), ``Vt`` (k, n) of the caller's matrix."""
        dtype = self.q.dtype
        left = backend.matmul(self.q, backend.asarray(np.ascontiguousarray(self.uc[:, :k], dtype=dtype)))
        right_t = backend.matmul(backend.asarray(np.ascontiguousarray(self.vc[:, :k].T, dtype=dtype)), self.p.T)
        s = backend.asarray(self.s[:k].astype(dtype))
        if self.tall.swapped:  # T = A^T: A = (P Vc) S (Q Uc)^T
            return backend.xp.ascontiguousarray(right_t.T), s, backend.xp.ascontiguousarray(left.T)
        return left, s, right_t


def _finish(backend: Any, tall: _TallView, q: Any, bt: Any, norm2: float | None) -> _Core:
    """From an orthonormal basis ``Q`` and ``Bt = T^T Q`` to the small SVD.

    ``Bt = P R`` (CholeskyQR), so ``B = Q^T T = R^T P^T``; the SVD of the
    l x l ``R^T`` on the host gives everything.  With ``norm2`` (an error
    estimate is wanted), ``Q``'s own Gram matrix ``Q^T Q = Rq^T Rq`` corrects
    for its rounding-level loss of orthogonality: the projection onto span(Q)
    is ``Q Rq^-1 (Q Rq^-1)^T``, so the core becomes ``Rq^-T R^T`` and ``Uc``
    absorbs ``Rq^-1``.  That keeps ``||T||^2 - sum(s^2)`` meaningful well
    below ``sqrt(eps)`` relative error.
    """
    p, r = cholesky_qr(backend, bt)
    core = r.T
    correction = None
    if norm2 is not None:
        correction = cholesky_factor(backend.gram(q))
        if correction is not None:
            core = np.linalg.solve(correction.T, core)
    uc, s, vct = np.linalg.svd(core)
    if correction is not None:
        uc = np.linalg.solve(correction, uc)
    return _Core(tall, q, p, uc, s, vct.T, norm2)


def _fixed(backend: Any, tall: _TallView, plan: _Plan) -> _Core:
    """Fixed-rank range finder + small SVD (the :func:`randomized_svd` algorithm)."""
    mt, nt = tall.shape
    width = min(plan.k + plan.p, nt)
    # A sketch as wide as the matrix spans its whole range: iterating only squares its conditioning.
    q_iter = 0 if width >= nt else plan.q
    norm2 = backend.sum_squares(tall.data) if plan.estimate else None
    basis = _power_range(backend, tall, width, 0, q_iter, plan.normalizer, plan.seed, check=plan.check)
    return _finish(backend, tall, basis, tall.t_times(backend, basis), norm2)


def _adaptive(backend: Any, tall: _TallView, plan: _Plan) -> _Core:
    """Blocked rank-adaptive range finder (randQB_b of Martinsson & Voronin 2016, with power iterations).

    Blocks of fresh Philox columns (32, 64, 128, ...) are sketched from the
    matrix deflated by the basis found so far; after each block
    ``||T||^2 - ||B||^2`` (exact for an orthonormal basis) says whether the
    target is met.  Then the small SVD picks the smallest rank meeting it; one
    more block is added when that rank leaves fewer than ``p`` spare columns.
    """
    xp = backend.xp
    mt, nt = tall.shape
    norm2 = backend.sum_squares(tall.data)
    if plan.check:
        _require_finite(backend, tall.data, np.array(norm2))
    target = plan.tol**2 * norm2
    cap = min(nt, plan.k + plan.p)
    basis = bt = None
    width, block, captured = 0, ADAPTIVE_FIRST_BLOCK, 0.0
    core = None
    while True:
        step = min(block, cap - width)
        new = _power_range(backend, tall, step, width + (-width) % 4, plan.q, plan.normalizer, plan.seed, basis)
        new_bt = tall.t_times(backend, new)
        captured += backend.sum_squares(new_bt)
        basis = new if basis is None else xp.concatenate([basis, new], axis=1)
        bt = new_bt if bt is None else xp.concatenate([bt, new_bt], axis=1)
        width += step
        block *= 2
        if width < cap and norm2 - captured > target:
            continue
        core = _finish(backend, tall, basis, bt, norm2)
        if width >= cap or core.rank_for(plan) + plan.p <= width:
            return core
