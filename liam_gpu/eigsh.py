"""Eigenpairs of a symmetric matrix by the engine's range finder and Rayleigh-Ritz: :func:`randomized_eigsh`."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import arrays, validation
from .rangefinder import ResolutionWarning, range_finder, sketch_width
from .svd import _Matrix, _check_count, _check_normalizer, _n_iter, _resolve, seed_from_random_state

__all__ = ["randomized_eigsh"]

SELECTIONS = ("module", "value")


def randomized_eigsh(
    M: Any,
    n_components: int,
    *,
    n_oversamples: int = 10,
    n_iter: int | str = "auto",
    power_iteration_normalizer: str = "auto",
    selection: str = "module",
    random_state: Any = 0,
    device: Any = None,
    check_finite: bool = True,
) -> tuple[Any, Any]:
    """``n_components`` eigenpairs of a symmetric ``M``, scikit-learn's ``randomized_eigsh``.

    The range finder of the SVD engine gives an orthonormal ``Q`` (``n x l``,
    ``l = n_components + n_oversamples`` rounded up to 8) spanning the
    dominant eigenvectors (largest ``|lambda|``: power iterations amplify by
    magnitude); the Rayleigh-Ritz step ``Q^T M Q = W diag(theta) W^T`` (Halko,
    Martinsson & Tropp 2011, algorithm 5.3) gives eigenvalues and vectors
    ``Q W`` with their signs -- no sign guessing from singular vectors.

    Parameters
    ----------
    M
        ``(n, n)`` symmetric matrix (dense or scipy.sparse / torch sparse);
        only its products are used, and its symmetry is not checked.
    n_components
        ``k``, ``1 <= k <= n``.
    selection
        ``"module"``: the ``k`` eigenvalues of largest magnitude, in
        descending magnitude.  ``"value"`` (which scikit-learn leaves
        unimplemented): the ``k`` largest eigenvalues, descending, chosen among
        the ``l`` Ritz values; a :class:`~liam_gpu.ResolutionWarning` says
        when the basis cannot vouch for them (a missed eigenvalue could be
        larger than the ``k``-th chosen: widen ``n_oversamples``).
    n_oversamples, n_iter, power_iteration_normalizer, random_state, device, check_finite
        As for :func:`liam_gpu.randomized_svd`.

    Returns
    -------
    eigvals, eigvecs
        ``(k,)`` and ``(n, k)`` in the caller's array type; recorded by
        autograd for a tensor ``M`` that requires grad (grad mode on), with a
        symmetric gradient of ``M`` (``docs/svd.md``).
    """
    import warnings

    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    normalizer = _check_normalizer(power_iteration_normalizer)
    p = _check_count("n_oversamples", n_oversamples, minimum=0)
    kind, backend = _resolve(M, device)
    with arrays.caller_stream(kind), backend.activate():
        mat = _Matrix.prepare(backend, M, kind)
        if len(mat.shape) != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(f"M must be a square 2-D matrix, got shape {mat.shape}")
        n = mat.shape[0]
        k = validation.check_rank("n_components", n_components, n, what="n")
        op = mat.operator(backend)
        width = sketch_width(k, p, n)
        q = 0 if width >= n else _n_iter(n_iter, k, n)
        basis = range_finder(op, width, q, seed_from_random_state(random_state), normalizer=normalizer,
                             check=bool(check_finite))
        # B = Q^T M Q, symmetrised against rounding; its eigenpairs on the host in float64.
        b = backend.to_host(backend.matmul(basis, op.t_times(basis), trans=True)).astype(np.float64)
        theta, w = np.linalg.eigh((b + b.T) / 2)
        order = np.argsort(-np.abs(theta) if selection == "module" else -theta, kind="stable")[:k]
        if selection == "value" and width < n and theta[order[-1]] <= np.min(np.abs(theta)):
            warnings.warn(f"selection='value': the {k}-th largest Ritz value {theta[order[-1]]:.3g} is not above "
                          f"the smallest captured magnitude {np.min(np.abs(theta)):.3g}, so an eigenvalue the "
                          "basis missed could be larger; widen n_oversamples", ResolutionWarning, stacklevel=2)
        dtype = mat.data.dtype
        if arrays.needs_autograd(M):
            return _recorded(M, mat, basis, order, w[:, order], kind)
        vecs = backend.matmul(basis, backend.asarray(np.ascontiguousarray(w[:, order], dtype=dtype)))
        vals = backend.asarray(theta[order].astype(dtype))
        return arrays.from_compute(vals, kind), arrays.from_compute(vecs, kind)


def _recorded(M: Any, mat: Any, basis: Any, order: np.ndarray, w_ref: np.ndarray,
              kind: arrays.ArrayKind) -> tuple[Any, Any]:
    """:func:`randomized_eigsh` of a tensor that requires grad: the Rayleigh-Ritz step recorded by autograd.

    The basis is a constant; ``Q^T M Q`` and its eigenpairs are torch
    operations (:func:`liam_gpu._svd_grad.ritz`).
    """
    from . import _svd_grad

    if mat.sparse:
        raise ValueError("M is a sparse tensor that requires grad: differentiable eigenpairs of sparse input are "
                         "not supported; pass M.detach() for a result without a graph")
    x = _svd_grad.source(M, mat.data.dtype)
    vals, vecs = _svd_grad.ritz(x, basis, order, w_ref)
    return _svd_grad.as_result(vals, kind), _svd_grad.as_result(vecs, kind)
