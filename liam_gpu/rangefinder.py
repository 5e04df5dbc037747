"""The randomized SVD engine, written once over an operator (:mod:`liam_gpu.operators`).

For a tall operator ``T`` (``mt x nt``), ``l`` sketch columns and ``q`` power
iterations (Halko, Martinsson & Tropp 2011)::

    Y = T Omega;  V = T^T Y                 one pass (V only when q > 0)
    repeat q times:
        R = shifted_chol(Y^T Y)             one Gram reduction
        W = basis(V R^-1)                   = basis(T^T basis(Y)): one more Gram
        Y = T W;  V = T^T Y                 one pass (only Y = T W the last time)
    Q = orthonormalize(Y)                   shifted CholeskyQR3: three Gram reductions
    Bt = T^T Q;  P, Rb = orthonormalize(Bt) B = Q^T T = Rb^T P^T
    Rb^T = Uc diag(s) Vc^T                  l x l SVD on the host, float64
    U = Q Uc;  V = P Vc

``2 q + 2`` products with ``T`` in ``q + 2`` passes, and ``2 q + 6`` Gram
reductions whatever the spectrum (one Householder QR more only where a basis
is numerically rank-deficient, see :mod:`liam_gpu.cholqr`; a power step whose
``Y`` is too ill-conditioned for the fused product takes one product more,
no Gram reduction more).

The error estimate: with ``Q`` and ``P`` orthonormal to working precision,
``||T - U_k S_k V_k^T||_F^2 = ||T||^2 - sum_{i<=k} s_i^2``.  That difference
cancels when the error is small; below :data:`CANCELLATION_FACTOR` ``u sqrt(l)`` the
engine measures ``||T - Q Bt^T||^2`` in one more pass instead and adds the
dropped ``s_i^2`` (Pythagoras: the residual is orthogonal to ``span(Q)``),
which has no cancellation.  The estimate is never reported below the dtype's
:data:`RESOLUTION`.

``tol`` mode (:func:`adaptive`) grows the basis in blocks (32, 64, 128, ...
fresh Philox columns, deflated by the basis so far) until the captured
energy says the target is met, then checks the target against the measured
error and keeps growing while it is not met.  When the basis would pass
:data:`DENSE_SHARE` of ``nt``, a dense SVD is faster: the engine switches.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cholqr import basis_pass, orthonormalize, shifted_factor
from .operators import largest_entry_signs

#: Relative errors below which an estimate says only "at most this", per dtype.
#: float32: the returned factors' own rounding (``~u sqrt(k)``) and the
#: residual's (``~u sqrt(l)``) are near 1e-6; float64: near 1e-14.
RESOLUTION = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-13}
#: Below this relative error (squared: ``1e3 u sqrt(l)``) ``||T||^2 - sum s^2``
#: is too cancelled to trust, and the residual is measured.
CANCELLATION_FACTOR = 1e3
#: A power step orthonormalizes ``Y`` after ``T^T Y`` was formed (one pass for
#: both) while ``u cond(R) <= FUSED_LIMIT``: ``T^T Y R^-1`` then carries an extra
#: relative error of at most that in its weakest direction, which the next
#: product and the unfused final basis absorb (``cond`` is the Frobenius bound,
#: up to ``l`` times the true one).  Measured on five spectra (docs/svd.md):
#: top-k singular values as accurate as with every step unfused.
FUSED_LIMIT = 1e-3
#: ``tol`` mode switches to LAPACK's dense SVD when its next block would take
#: the basis past this share of ``nt``.  Measured (1800 x 400 float32, one
#: thread, median of 3): the adaptive finder costs 0.25
#: of the dense SVD up to a 96-column basis and 0.71-0.79 at 224 columns (0.56
#: of ``nt``); its next step, 480 columns, would cost more than the dense SVD.
DENSE_SHARE = 0.6
#: Columns of the adaptive range finder's first block (it doubles after each block).
FIRST_BLOCK = 32
#: The fixed-rank sketch is ``k + p`` columns rounded up to a multiple of this
#: (the width of BLAS micro-kernels): OpenBLAS multiplies 8000 x 2000 float32 by
#: 48 columns in 12.7 ms and by 42 in 14.0 ms (best of 9, one thread, here), so
#: the extra oversampling is free -- and only improves the result.
SKETCH_MULTIPLE = 8


def sketch_width(k: int, p: int, nt: int) -> int:
    """``k + p`` rounded up to a multiple of :data:`SKETCH_MULTIPLE`, at most ``nt``."""
    return min(nt, -(-(k + p) // SKETCH_MULTIPLE) * SKETCH_MULTIPLE)


class ResolutionWarning(UserWarning):
    """A ``tol`` below what the error estimate can resolve, or not reached within the rank cap."""


@dataclass(frozen=True)
class Plan:
    """What to compute.

    ``k`` is the rank (fixed mode) or the rank cap (``tol`` mode); ``p`` the
    oversampling; ``q`` the power iterations; ``normalizer`` one of ``"auto"``,
    ``"QR"`` (shifted CholeskyQR), ``"LU"`` or ``"none"``; ``check``: reject
    non-finite input; ``estimate``: compute the error estimate; ``flip``:
    scikit-learn's sign convention on ``U``; ``driver``: LAPACK's routine for
    the small SVD (``"gesdd"`` or ``"gesvd"``); ``tf32``: the sketch and power
    passes may run on TF32 tensor cores (``precision="tf32"``; the final
    projection, the Gram matrices and the error estimate stay in the dtype).
    """

    k: int
    p: int
    q: int
    seed: int
    normalizer: str = "auto"
    check: bool = True
    estimate: bool = False
    tol: float | None = None
    flip: bool = True
    driver: str = "gesdd"
    tf32: bool = False


def passes(op: Any, plan: Plan) -> Any:
    """The operator the range finder's passes use: ``op.with_tf32()`` under ``plan.tf32``, else ``op``.

    An operator without TF32 products (sparse, Dask) computes every pass in its dtype.
    """
    return op.with_tf32() if plan.tf32 and hasattr(op, "with_tf32") else op


def resolution(dtype: Any) -> float:
    """The smallest relative error the estimate resolves for ``dtype`` (:data:`RESOLUTION`)."""
    return RESOLUTION[np.dtype(dtype)]


@dataclass
class Factorization:
    """``T ~ Q Uc diag(s) (P Vc)^T`` before truncation (``Uc``/``Vc`` None: the identity).

    ``q`` (mt x w) lives in the operator's space, ``p`` (nt x w) in its
    backend; ``uc``, ``s``, ``vc`` are host float64.  ``norm2`` is
    ``||T||_F^2`` and ``resid2`` ``||T - Q Q^T T||_F^2`` when they were measured.
    """

    op: Any
    q: Any
    p: Any
    uc: np.ndarray | None
    s: np.ndarray
    vc: np.ndarray | None
    norm2: float | None = None
    resid2: float | None = None

    @property
    def width(self) -> int:
        return int(self.s.shape[0])

    def errors_sq(self) -> np.ndarray:
        """``||T - T_k||_F^2`` for ``k = 0 .. width`` (measured residual plus the dropped tail, or the energy balance)."""
        energy = self.s.astype(np.float64) ** 2
        if self.resid2 is not None:
            tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
            return self.resid2 + tail
        return np.maximum(self.norm2 - np.concatenate([[0.0], np.cumsum(energy)]), 0.0)

    def error_sq(self, k: int) -> float:
        """``||T - T_k||_F^2`` of the rank-``k`` truncation."""
        return float(self.errors_sq()[k])

    def relative_error(self, k: int) -> float:
        """The estimated relative Frobenius error of rank ``k``, at least the dtype's resolution."""
        if not self.norm2:
            return 0.0
        return max(math.sqrt(self.error_sq(k) / self.norm2), resolution(self.op.dtype))

    def rank_for(self, tol: float, cap: int) -> int:
        """The smallest rank (at most ``cap``) whose error meets ``tol``, else the largest available."""
        limit = min(cap, self.width)
        met = np.flatnonzero(self.errors_sq()[1:limit + 1] <= tol**2 * self.norm2)
        return int(met[0]) + 1 if met.size else limit

    def factors(self, k: int, *, flip: bool) -> tuple[Any, Any, Any]:
        """``U`` (m, k), ``S`` (k,), ``Vt`` (k, n) of the caller's matrix (scikit-learn's signs with ``flip``)."""
        op, backend, dtype = self.op, self.op.backend, self.op.dtype
        # Uc = I (a dense factorization): the first k columns, not a product with the identity.
        uc = k if self.uc is None else self.uc[:, :k]
        left, signs = op.left(self.q, uc, flip=flip and not op.swapped)
        if self.vc is None:
            right = backend.xp.ascontiguousarray(self.p[:, :k])
        else:
            right = backend.matmul(self.p, backend.asarray(np.ascontiguousarray(self.vc[:, :k], dtype=dtype)))
        s = backend.asarray(self.s[:k].astype(dtype))
        if op.swapped:  # T = A^T: A = (P Vc) S (Q Uc)^T, and U is the right-hand factor
            u = backend.xp.ascontiguousarray(right)
            vt = op.transpose(left)
            if flip:
                u, vt = flip_signs(backend.xp, u, vt)
            return u, s, vt
        vt = backend.xp.ascontiguousarray(right.T)
        if signs is not None:
            vt *= backend.asarray(signs[:, None].astype(dtype))
        return left, s, vt


def flip_signs(xp: Any, u: Any, vt: Any) -> tuple[Any, Any]:
    """scikit-learn's ``svd_flip`` on ``U``: the largest-magnitude entry of each column positive.

    Works on single matrices and stacks (``u`` (..., m, k), ``vt`` (..., k,
    n)); ``u`` and ``vt`` are scaled in place.
    """
    signs = largest_entry_signs(xp, u, axis=-2)
    u *= signs
    vt *= xp.swapaxes(signs, -1, -2)
    return u, vt


# --------------------------------------------------------------------------- the range finder


def normalize(space: Any, y: Any, normalizer: str) -> Any:
    """The basis a power iteration continues with: one shifted CholeskyQR pass, LU's ``P L``, or ``y``."""
    if normalizer in ("auto", "QR"):
        return basis_pass(space, y)[0]
    if normalizer == "LU":
        import scipy.linalg

        pl, _ = scipy.linalg.lu(space.to_host(y), permute_l=True, check_finite=False)
        return space.asarray(np.ascontiguousarray(pl, dtype=y.dtype))
    return y


def project_out(space: Any, basis: Any | None, y: Any) -> Any:
    """``(I - Q Q^T) y`` applied twice (twice is enough for orthogonality to working precision)."""
    if basis is None:
        return y
    for _ in range(2):
        y = y - space.matmul(basis, space.matmul(basis, y, trans=True))
    return y


def range_finder(op: Any, width: int, q: int, seed: int, *, col0: int = 0, normalizer: str = "auto",
                 deflate: Any | None = None, check: bool = False) -> Any:
    """An orthonormal basis of ``T' (T'^T T')^q Omega[:, col0:col0 + width]``, ``T' = (I - B B^T) T``.

    Parameters
    ----------
    op
        The operator (:mod:`liam_gpu.operators`).
    width
        Columns of the basis.
    q
        Power iterations.
    seed, col0
        The Philox stream and its first column (a multiple of 4).
    normalizer
        See :class:`Plan`.
    deflate
        An orthonormal basis ``B`` (mt x l0) whose span is projected away, or None.
    check
        Raise the input's error if the sketch is not finite.

    Returns
    -------
    array
        ``(mt, width)`` in ``op.space``, orthonormal to working precision.
    """
    mt = op.shape[0]
    fused = deflate is None and normalizer in ("auto", "QR") and q > 0
    y, v = op.sketch(seed, width, col0, with_v=fused)
    if check:
        op.require_finite(y)
    y = project_out(op.space, deflate, y)
    u = np.finfo(op.dtype).eps / 2
    for step in range(q):
        if fused:
            # T^T basis(Y) = (T^T Y) R^-1: V came with Y from one pass over T.
            f = shifted_factor(mt, op.space.gram(y))
            if f is None:  # a zero or non-finite Gram matrix: Householder's basis
                w = op.t_times(op.space.householder_qr(y)[0])
            elif f.cond * u <= FUSED_LIMIT:
                w = f.apply(op.backend, v)
            else:  # too ill-conditioned for that: the extra product (the same Gram reduction)
                w = op.t_times(f.apply(op.space, y))
        else:
            w = op.t_times(normalize(op.space, y, normalizer))
        w = normalize(op.backend, w, normalizer)
        y, v = op.power(w, with_v=fused and step + 1 < q)
        y = project_out(op.space, deflate, y)
    return orthonormalize(op.space, y)[0]


def finish(op: Any, q: Any, norm2: float | None, bt: Any | None = None, driver: str = "gesdd") -> Factorization:
    """The small SVD of ``B = Q^T T`` (``bt = T^T Q`` if already formed), and the error's terms."""
    if bt is None:
        bt = op.t_times(q)
    p, rb = orthonormalize(op.backend, bt)
    if driver == "gesdd":
        uc, s, vct = np.linalg.svd(rb.T)
    else:
        import scipy.linalg

        uc, s, vct = scipy.linalg.svd(rb.T, lapack_driver=driver, check_finite=False)
    fact = Factorization(op, q, p, uc, s, vct.T, norm2)
    if norm2:
        balance = norm2 - float(np.sum(s**2))
        cancelled = CANCELLATION_FACTOR * np.finfo(op.dtype).eps / 2 * math.sqrt(fact.width)
        if balance <= cancelled * norm2:
            fact.resid2 = op.residual_sq(q, bt)
    return fact


def dense(op: Any, norm2: float | None) -> Factorization:
    """The exact thin SVD of ``T`` as a :class:`Factorization` (tails exact from the spectrum)."""
    u, s, vt = op.dense_svd()
    return Factorization(op, u, op.backend.xp.ascontiguousarray(vt.T), None, s, None, norm2,
                         None if norm2 is None else 0.0)


def fixed_rank(op: Any, plan: Plan, norm2: float | None = None) -> Factorization:
    """The fixed-rank range finder and small SVD (``plan.k`` columns kept, :func:`sketch_width` sketched).

    ``norm2``: ``||T||_F^2`` if known (else measured when ``plan.estimate``).
    """
    if _dense_is_exact(op, plan):
        if plan.check:  # LAPACK would answer NaN with its own message
            op.require_finite(op.data)
        return dense(op, _norm2(op, plan) if plan.estimate and norm2 is None else norm2)
    # Input that cannot be estimated is refused before any work, unless the
    # operator sums ||T||^2 in its sketch pass anyway (Dask: one pass fewer).
    early = plan.estimate and norm2 is None and not getattr(op, "sums_in_sketch", False)
    if early:
        norm2 = _norm2(op, plan)
    q = fixed_basis(op, plan)
    if norm2 is None and plan.estimate:
        norm2 = _norm2(op, plan)
    return finish(op, q, norm2, driver=plan.driver)


def _width(op: Any, plan: Plan) -> int:
    mt, nt = op.shape
    return min(sketch_width(plan.k, plan.p, nt), mt)  # mt < nt only for a Dask array chunked along columns


def _dense_is_exact(op: Any, plan: Plan) -> bool:
    """A sketch as wide as ``T`` spans its whole range: LAPACK's SVD is exact and cheaper, where offered."""
    return _width(op, plan) >= op.shape[1] and hasattr(op, "dense_svd")


def basis(op: Any, plan: Plan) -> Factorization:
    """The fixed-rank range finder's basis as a :class:`Factorization` without the small SVD.

    Only ``op`` and ``q`` are set (``p``, ``uc``, ``vc`` None, ``s`` empty):
    for callers that factor ``Q^T T`` themselves and fix the signs after
    (the autograd path, :mod:`liam_gpu._svd_grad`), which would otherwise pay
    :func:`finish`'s pass over ``T`` and its Gram reductions for nothing.
    Where the dense SVD is exact it is that :func:`fixed_rank` result.
    """
    if _dense_is_exact(op, plan):
        return fixed_rank(op, plan)
    return Factorization(op, fixed_basis(op, plan), None, None, np.empty(0), None)


def fixed_basis(op: Any, plan: Plan) -> Any:
    """The fixed-rank range finder's orthonormal basis ``Q`` of ``T`` (``mt x width``), no small SVD.

    Shared by :func:`fixed_rank` and :func:`basis` (whose callers, the autograd
    path of :mod:`liam_gpu._svd_grad`, form ``Q^T T`` themselves).  A sketch as
    wide as ``T`` takes no power iteration (it would only square the conditioning).
    """
    width = _width(op, plan)
    q = 0 if width >= op.shape[1] else plan.q
    return range_finder(passes(op, plan), width, q, plan.seed, normalizer=plan.normalizer, check=plan.check)


def adaptive(op: Any, plan: Plan) -> tuple[Factorization, int]:
    """``tol`` mode: the factorization and the smallest rank meeting ``plan.tol`` (see the module notes).

    Warns :class:`ResolutionWarning` when ``tol`` is below the dtype's
    resolution (the rank goes to the cap) or the cap does not reach it.
    """
    mt, nt = op.shape
    norm2 = _norm2(op, plan)
    cap = min(nt, plan.k + plan.p)
    floor = resolution(op.dtype)
    if plan.tol < floor:
        warnings.warn(f"tol={plan.tol:g} is below the {op.dtype} error estimate's resolution {floor:g}: "
                      f"returning the rank cap {plan.k}", ResolutionWarning, stacklevel=4)
        fact = fixed_rank(op, plan, norm2)  # dense when the cap's sketch spans the matrix
        return fact, min(plan.k, fact.width)
    target = plan.tol**2 * norm2
    found = bt = None
    width, block, captured = 0, FIRST_BLOCK, 0.0
    while True:
        step = min(block, cap - width)
        if width + step > DENSE_SHARE * nt and hasattr(op, "dense_svd"):
            fact = dense(op, norm2)  # norm2 is finite here: the input was checked by _norm2
            return _checked(fact, fact.rank_for(plan.tol, plan.k), plan)
        new = range_finder(passes(op, plan), step, plan.q, plan.seed, col0=width + (-width) % 4,
                           normalizer=plan.normalizer, deflate=found, check=plan.check and found is None)
        new_bt = op.t_times(new)
        captured += op.backend.sum_squares(new_bt)
        found = new if found is None else op.space.xp.concatenate([found, new], axis=1)
        bt = new_bt if bt is None else op.backend.xp.concatenate([bt, new_bt], axis=1)
        width += step
        block *= 2
        if width < cap and norm2 - captured > target:
            continue
        fact = finish(op, found, norm2, bt, plan.driver)
        k = fact.rank_for(plan.tol, plan.k)
        met = fact.error_sq(k) <= target
        if width >= cap or (met and k + plan.p <= width):
            return _checked(fact, k, plan)
        if met:  # fewer than p spare columns: one more block for the accuracy of the last ones
            continue
        # The energy balance said "met", the measured error says not: more columns.
        captured = norm2 - fact.error_sq(width)


def _checked(fact: Factorization, k: int, plan: Plan) -> tuple[Factorization, int]:
    if fact.norm2 and fact.error_sq(k) > plan.tol**2 * fact.norm2:
        warnings.warn(f"tol={plan.tol:g} not reached within the rank cap {plan.k}: relative error "
                      f"{fact.relative_error(k):.3g}", ResolutionWarning, stacklevel=4)
    return fact, k


def _norm2(op: Any, plan: Plan) -> float:
    """``||T||_F^2``, refusing non-finite input (and finite input whose square overflows) when checking."""
    norm2 = op.sum_squares()
    if plan.check and not math.isfinite(norm2):
        op.require_finite(np.array([norm2]))
    if not math.isfinite(norm2):
        raise ValueError("a is finite but its squared Frobenius norm overflows float64; scale it down")
    return norm2
