"""Principal component analysis by the randomized SVD of the implicitly centred matrix: :func:`pca`.

``X - 1 mean^T`` is never formed: the centring is a rank-one update applied
inside the engine's products (:class:`liam_gpu.operators.RankOneUpdate`), so
dense, scipy.sparse and (on one machine) any operator input cost no copy of
``X``.  The result has scikit-learn ``PCA``'s meanings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arrays, validation
from .operators import RankOneUpdate, largest_entry_signs
from .rangefinder import Plan, basis, fixed_rank
from .svd import _Matrix, _check_count, _check_normalizer, _mean, _n_iter, _resolve, seed_from_random_state

__all__ = ["PCAResult", "pca"]


@dataclass(frozen=True)
class PCAResult:
    """The principal components of ``X`` (``m`` samples, ``n`` features), as scikit-learn's ``PCA`` names them.

    Attributes
    ----------
    components
        ``(k, n)``: the principal axes, rows of ``Vt`` of ``X - mean``, each
        with its largest-magnitude entry positive (scikit-learn's
        ``svd_flip(u_based_decision=False)``).
    explained_variance
        ``(k,)``: ``singular_values**2 / (m - 1)``.
    explained_variance_ratio
        ``(k,)``: each component's share of the total variance
        ``||X - mean||_F^2 / (m - 1)`` (exact, from the operator's norm).
    singular_values
        ``(k,)``: the singular values of ``X - mean``.
    mean
        ``(n,)``: the per-feature mean that was subtracted.
    n_samples
        ``m``.
    """

    components: Any
    explained_variance: Any
    explained_variance_ratio: Any
    singular_values: Any
    mean: Any
    n_samples: int

    def transform(self, x: Any) -> Any:
        """``(x - mean) @ components.T``: the scores of new samples (same array type as the result)."""
        return (x - self.mean) @ self.components.T


def pca(
    x: Any,
    n_components: int,
    *,
    n_oversamples: int = 10,
    n_iter: int | str = "auto",
    power_iteration_normalizer: str = "auto",
    random_state: Any = 0,
    device: Any = None,
    check_finite: bool = True,
) -> PCAResult:
    """The first ``n_components`` principal components of ``x`` (rows are samples).

    Parameters
    ----------
    x
        ``(m, n)``, ``m >= 2``: numpy, CuPy, torch, a nested list, or a
        scipy.sparse matrix of any format (centred implicitly, never densified).
    n_components
        ``k``, ``1 <= k <= min(m, n)``.
    n_oversamples, n_iter, power_iteration_normalizer, random_state, device, check_finite
        As for :func:`liam_gpu.randomized_svd` (``n_iter="auto"``:
        scikit-learn's rule, 7 or 4).

    Returns
    -------
    PCAResult
        In the caller's array type (numpy for scipy.sparse input).  For a
        tensor that requires grad (grad mode on), every field but
        ``n_samples`` is recorded by autograd (``docs/svd.md``).

    Raises
    ------
    ValueError
        ``x`` not 2-D, empty, with fewer than 2 samples, or holding NaN/Inf;
        ``n_components`` out of range.
    TypeError
        Complex or non-numeric ``x``.
    """
    normalizer = _check_normalizer(power_iteration_normalizer)
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    kind, backend = _resolve(x, device)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, x, kind)
        if len(mat.shape) != 2:
            raise ValueError(f"x must be 2-D (samples x features), got shape {mat.shape}")
        m, n = mat.shape
        if m < 2:
            raise ValueError(f"x must have at least 2 samples for a variance, got {m}")
        mean = _mean(backend, mat, True, kind)
        if check_finite and not np.isfinite(mean).all():  # NaN/Inf in a column reaches its mean: no extra pass
            validation.check_finite("x", mat.data.data.data if mat.sparse else mat.data)  # sparse: the stored values
        k = validation.check_rank("n_components", n_components, min(m, n))
        op = RankOneUpdate.centred(mat.operator(backend), mean)
        plan = Plan(k=k, p=p, q=_n_iter(n_iter, k, min(m, n)), seed=seed_from_random_state(random_state),
                    normalizer=normalizer, check=bool(check_finite), flip=False)
        if arrays.needs_autograd(x):
            return _recorded(x, mat, mean, op, plan, kind)
        u, s, vt = fixed_rank(op, plan).factors(k, flip=False)
        total = op.sum_squares()
        xp = backend.xp
        # scikit-learn's PCA: the largest-magnitude entry of each component positive.
        vt *= largest_entry_signs(xp, vt, axis=1)
        s_host = backend.to_host(s).astype(np.float64)
        variance = s_host**2 / (m - 1)
        ratio = s_host**2 / total if total > 0 else np.zeros_like(s_host)
        dtype = vt.dtype
        out = [vt, backend.asarray(variance.astype(dtype)), backend.asarray(ratio.astype(dtype)), s,
               backend.asarray(mean.astype(dtype))]
        return PCAResult(*(arrays.from_compute(v, kind) for v in out), n_samples=m)


def _recorded(x: Any, mat: Any, mean: np.ndarray, op: Any, plan: Plan, kind: arrays.ArrayKind) -> PCAResult:
    """:func:`pca` of a tensor that requires grad: every field but ``n_samples`` recorded by autograd.

    The engine's basis (of the centred operator ``op``) is a constant; the mean, the factors
    (:func:`liam_gpu._svd_grad.project`) and the variances are torch
    operations on ``x``.
    """
    from . import _svd_grad

    if mat.sparse:
        raise ValueError("x is a sparse tensor that requires grad: differentiable PCA of sparse input is not "
                         "supported; pass x.detach() for a result without a graph")
    t = _svd_grad.source(x, mat.data.dtype)
    m = int(t.shape[0])
    mu = _svd_grad.centre_of(t, True, mean)
    _, s, vt = _svd_grad.project(t, mu, basis(op, plan), plan.k)  # signs: flip_rows below
    vt = _svd_grad.flip_rows(vt)
    # ||X - mean||_F^2 of the ratio's denominator, in float64 (the engine's sum_squares is float64).
    total = (t - mu).double().square().sum()
    s2 = s.double().square()
    variance = (s2 / (m - 1)).to(s.dtype)
    # A constant x has no variance to share: zeros, as the unrecorded path.
    ratio = s2 / total if float(total.detach()) > 0 else s2.new_zeros(s2.shape)
    out = (vt, variance, ratio.to(s.dtype), s, mu)
    return PCAResult(*(_svd_grad.as_result(v, kind) for v in out), n_samples=m)

