"""Differentiable factors of the randomized SVD for torch tensors that require grad.

The engine (:mod:`liam_gpu.rangefinder`) runs as it does for any input and
hands over its orthonormal range basis ``Q`` (``mt x l``, on the tall side of
the matrix ``T``: ``A``, or ``A^T`` for a wide ``A``; centred: ``A - 1 mu^T``).
``Q`` is a constant here, as the engine's random test matrix is.  The factors
are then formed again with torch's differentiable operations::

    B = Q^T T                    (l x nt; the centring as Q^T A - (Q^T 1) mu^T, never formed)
    B = Ub diag(S) Vb^T          torch.linalg.svd: its backward couples all l captured directions
    U = Q Ub[:, :k] + Z,  S = S[:k],  V = Vb[:, :k]

``Z`` is zero (exactly, in value) but carries the derivative of ``U`` that a
constant ``Q`` would lose: ``dU`` has the term ``(I - Q Q^T) dT V S^-1``
(the first-order rotation of ``U`` towards directions outside ``span(Q)``,
which the truncated SVD's derivative has wherever those directions carry
singular value zero).  With it the gradients are those of the exact truncated
SVD whenever ``span(Q)`` contains the range of ``T`` (rank at most ``l``);
otherwise they are the exact gradients of the rank-``l`` matrix ``Q Q^T T``,
an approximation as good as the factors themselves (``docs/svd.md``).
Without ``Z`` only losses of ``S`` and ``V`` would get exact gradients: a loss
of ``U`` (or of ``U S V^T``) would lose ``(I - Q Q^T)`` of its gradient.

This module imports torch only through the tensors it is given (the caller
has imported torch); :mod:`liam_gpu.svd` and :mod:`liam_gpu.pca` call it
only when :func:`liam_gpu.arrays.needs_autograd` says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import arrays
from .rangefinder import Factorization

__all__ = ["source", "centre_of", "project", "stack", "ritz", "exact", "align_signs", "flip_columns", "flip_rows",
           "as_result"]


def _torch() -> Any:
    return arrays._torch()


def source(a: Any, compute_dtype: Any) -> Any:
    """The caller's tensor ``a`` as the torch tensor the factors are differentiated against.

    Leading batch axes beyond one are flattened (``(B1, B2, m, n)`` to
    ``(B1 B2, m, n)``), and the dtype is the engine's (float16/bfloat16 and
    integers computed in float32/float64): both differentiable views or casts.
    """
    dtype = getattr(_torch(), np.dtype(compute_dtype).name)
    x = a
    if x.dim() > 3:
        x = x.reshape((-1,) + tuple(x.shape[-2:]))
    return x if x.dtype == dtype else x.to(dtype)


def centre_of(x: Any, center: Any, mean: np.ndarray) -> Any:
    """The subtracted column means as a tensor: differentiable in ``x`` (``center=True``) or in ``center``.

    ``mean`` is the engine's float64 host copy (already validated), used when
    ``center`` is not a tensor (a numpy array or list: a constant).
    """
    torch = _torch()
    if center is True:
        return x.mean(dim=-2, dtype=torch.float64).to(x.dtype)  # float64 sums, as the engine's mean
    if isinstance(center, torch.Tensor):
        return center.to(device=x.device, dtype=x.dtype)
    return torch.from_numpy(np.ascontiguousarray(mean)).to(device=x.device, dtype=x.dtype)


class _Complement:
    """Holder of the autograd function built on first use (torch is imported by then)."""

    fn: Any = None

    @classmethod
    def apply(cls, *args: Any) -> Any:
        if cls.fn is None:
            cls.fn = _make_complement()
        return cls.fn.apply(*args)


def _make_complement() -> Any:
    torch = _torch()

    class Complement(torch.autograd.Function):
        """Zeros shaped like ``U`` (mt x k) whose backward is ``dU = (I - Q Q^T) dT V S^-1``.

        ``T`` is ``x`` (``swapped``: ``x^T``) minus the centring ``1 mu^T``
        (``swapped``: ``mu 1^T``).  Inputs ``q``, ``v`` (nt x k), ``s`` are
        constants (detached).  ``symmetric``: ``x`` is a symmetric matrix
        and its gradient the symmetric part (as ``torch.linalg.eigh``'s).
        Double backward is not supported (torch's ``once_differentiable`` error).
        """

        @staticmethod
        def forward(ctx, x, mu, q, v, s, swapped, symmetric):
            ctx.save_for_backward(q, v, s)
            ctx.swapped = swapped
            ctx.symmetric = symmetric
            ctx.has_mu = mu is not None
            return x.new_zeros((q.shape[0], v.shape[1]))

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            q, v, s = ctx.saved_tensors
            need_x, need_mu = ctx.needs_input_grad[:2]
            if not (need_x or need_mu):
                return None, None, None, None, None, None, None
            # G S^-1 (mt x k); a zero singular value's vector carries no gradient here (0, not 0/0).
            g = torch.where(s != 0, grad / s, torch.zeros_like(grad))  # s: theta for eigsh, of either sign
            g = g - q @ (q.mT @ g)  # (I - Q Q^T) G S^-1
            grad_t = g @ v.mT  # dL/dT (mt x nt)
            grad_x = (grad_t.mT if ctx.swapped else grad_t) if need_x else None
            if grad_x is not None and ctx.symmetric:
                grad_x = (grad_x + grad_x.mT) / 2
            grad_mu = None
            if ctx.has_mu and need_mu:
                # T = A - 1 mu^T (rows of T: rows of A) or T = A^T - mu 1^T: -sum over the ones side.
                grad_mu = -(grad_t.sum(dim=1) if ctx.swapped else grad_t.sum(dim=0))
            return grad_x, grad_mu, None, None, None, None, None

    return Complement


def _as_tensor(y: Any, like: Any) -> Any:
    """An engine array (numpy or CuPy) as a constant tensor on ``like``'s device and dtype."""
    kind = arrays.kind_of(like)
    t = arrays.from_compute(y, arrays.ArrayKind(kind.library, kind.device))
    return t.to(dtype=like.dtype)


def project(x: Any, mu: Any | None, fact: Factorization, k: int) -> tuple[Any, Any, Any]:
    """``(U, S, Vt)`` of one matrix ``x`` (m, n) from the engine's basis ``fact.q``, differentiable.

    ``mu`` (n,) is subtracted from every row (or None).  No sign convention is
    applied (see :func:`flip_columns`).
    """
    torch = _torch()
    swapped = bool(fact.op.swapped)
    t = x.mT if swapped else x
    q = _as_tensor(fact.q, x)
    b = q.mT @ t  # (l, nt)
    if mu is not None:
        # Q^T (A - 1 mu^T) = Q^T A - (Q^T 1) mu^T;  Q^T (A^T - mu 1^T) = Q^T A^T - (Q^T mu) 1^T.
        b = b - (q.mT @ mu)[:, None] if swapped else b - q.sum(dim=0)[:, None] * mu[None, :]
    ub, s, vbh = torch.linalg.svd(b, full_matrices=False)
    # The engine's signs (U = Q Uc), as constants: with no sign convention asked for,
    # the recorded factors still equal the unrecorded ones to rounding.
    uc = np.eye(ub.shape[0], k) if fact.uc is None else fact.uc[:, :k]
    signs = align_signs(ub[:, :k], uc)
    s = s[:k]
    ub = ub[:, :k] * signs
    v = vbh[:k].mT * signs  # (nt, k)
    u = q @ ub + _Complement.apply(x, mu, q, v.detach(), s.detach(), swapped, False)
    if swapped:  # T = A^T: A = V S U^T
        return v, s, u.mT
    return u, s, v.mT


def stack(parts: Any) -> Any:
    """The items' factors as one stack (recorded)."""
    return _torch().stack(list(parts))


def ritz(x: Any, basis: Any, order: np.ndarray, w_ref: np.ndarray) -> tuple[Any, Any]:
    """Rayleigh-Ritz eigenpairs of a symmetric ``x`` (n, n) on the engine's basis, differentiable.

    ``Q^T x Q = W diag(theta) W^T`` by ``torch.linalg.eigh``; the pairs kept
    are ``order`` (chosen by the caller from the unrecorded Ritz values), with
    the signs of the unrecorded eigenvectors ``w_ref`` (l, k), so that the
    values equal the unrecorded ones to rounding.  The eigenvectors ``Q W``
    carry :class:`_Complement`'s term ``(I - Q Q^T) dM v_i / theta_i``:
    exact when ``M``'s rank is at most ``l`` (its other eigenvalues zero).
    The gradient of ``M`` is symmetric, as ``torch.linalg.eigh``'s.
    """
    torch = _torch()
    q = _as_tensor(basis, x)
    b = q.mT @ x @ q
    theta, w = torch.linalg.eigh((b + b.mT) / 2)
    index = torch.as_tensor(np.ascontiguousarray(order), device=w.device)
    theta, w = theta[index], w[:, index]
    w = w * align_signs(w, np.ascontiguousarray(w_ref))  # the unrecorded path's signs: constants
    vecs = q @ w
    vecs = vecs + _Complement.apply(x, None, q, vecs.detach(), theta.detach(), False, True)
    return theta, vecs


def align_signs(u: Any, ref: Any) -> Any:
    """Constant signs (..., 1, k) that turn the columns of ``u`` towards those of ``ref`` (numpy or CuPy)."""
    torch = _torch()
    with torch.no_grad():
        dots = (u * _as_tensor(np.ascontiguousarray(ref) if isinstance(ref, np.ndarray) else ref, u)).sum(
            dim=-2, keepdim=True)
        return torch.where(dots < 0, -1.0, 1.0).to(u.dtype)


def exact(x: Any) -> tuple[Any, Any, Any]:
    """torch's thin SVD of a stack of small matrices (the batched kernel's counterpart), differentiable."""
    return _torch().linalg.svd(x, full_matrices=False)


def _largest_entry_signs(t: Any, dim: int) -> Any:
    """:func:`liam_gpu.operators.largest_entry_signs` for torch tensors: constant ``+-1`` along ``dim``
    (kept, length 1) making each vector's largest-magnitude entry positive."""
    torch = _torch()
    with torch.no_grad():
        where = t.abs().argmax(dim=dim, keepdim=True)
        return torch.where(torch.gather(t, dim, where) < 0, -1.0, 1.0).to(t.dtype)


def flip_columns(u: Any, vt: Any) -> tuple[Any, Any]:
    """scikit-learn's ``svd_flip`` on ``U``: the largest-magnitude entry of each column positive.

    The signs are constants (piecewise constant in the input): only the
    multiplication is recorded.  Works on single matrices and stacks.
    """
    signs = _largest_entry_signs(u, -2)
    return u * signs, vt * signs.mT


def flip_rows(vt: Any) -> Any:
    """scikit-learn ``PCA``'s convention: the largest-magnitude entry of each row of ``Vt`` positive."""
    return vt * _largest_entry_signs(vt, -1)


def as_result(t: Any, kind: arrays.ArrayKind) -> Any:
    """A factor in the dtype the non-recorded path returns (bfloat16 callers get bfloat16)."""
    return t.to(_torch().bfloat16) if kind.bfloat16 and t.is_floating_point() else t
