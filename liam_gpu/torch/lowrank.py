"""``torch.svd_lowrank`` and ``torch.pca_lowrank`` with torch's signatures and meanings, on liam-gpu's engine.

:func:`svd_lowrank` and :func:`pca_lowrank` take what torch's take (dense
tensors of any batch shape, sparse COO/CSR matrices) and return what they
return: ``(U, S, V)`` with ``V`` (not ``V^T``) of shape ``(*, n, q)``.  The
factors come from :func:`liam_gpu.svd.randomized_svd` (the engine of
``docs/svd.md``, with its default oversampling: ``q + 10`` sketch columns,
where torch sketches exactly ``q``), so they are at least as accurate as
torch's for the same ``q`` and ``niter``.  Tensors that require grad get
factors recorded by autograd (``docs/torch.md``).

The test matrix's seed is drawn from torch's default generator, so
``torch.manual_seed`` makes results repeatable, as it does for torch's own.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from .. import arrays, sparse_input
from ..svd import randomized_svd

__all__ = ["svd_lowrank", "pca_lowrank"]

#: torch's defaults.
DEFAULT_Q = 6
DEFAULT_NITER = 2


def svd_lowrank(A: torch.Tensor, q: Optional[int] = DEFAULT_Q, niter: Optional[int] = DEFAULT_NITER,
                M: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, V)`` with ``A - M ~ U diag(S) V^T``, as ``torch.svd_lowrank``.

    Parameters
    ----------
    A
        ``(*, m, n)`` dense tensor, or a 2-D sparse COO/CSR tensor (on the CPU;
        factored without densifying).
    q
        Rank of the result, ``0 <= q <= min(m, n)`` (None: 6, as torch).
    niter
        Power (subspace) iterations, ``>= 0`` (None: 2, as torch).
    M
        A mean to subtract, broadcast to ``A``'s shape, or None.  A row of
        column means (shape ``(n,)``, ``(1, n)``, or a scalar) or a column of
        row means (``(m, 1)``) of a 2-D ``A`` is subtracted implicitly, inside
        the engine's products (for sparse ``A`` too): no copy of ``A - M``.  Any
        other ``M`` (a full matrix, or any ``M`` with a batched ``A``) is
        subtracted densely, as one copy of ``A - M``.

    Returns
    -------
    U, S, V
        ``(*, m, q)``, ``(*, q)``, ``(*, n, q)``: float32 for float32 ``A``,
        else float64 (bfloat16 for bfloat16), on ``A``'s device.  Recorded by
        autograd when ``A`` or ``M`` requires grad (dense input only).

    Raises
    ------
    TypeError
        ``A`` not a tensor; ``q`` or ``niter`` not an integer.
    ValueError
        ``q`` or ``niter`` out of range, ``M`` not broadcastable to ``A``, and
        every error of :func:`liam_gpu.randomized_svd` (NaN/Inf, empty input).
    """
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2:
        raise ValueError(f"A must have at least 2 dimensions (*, m, n), got shape {tuple(A.shape)}")
    m, n = (int(d) for d in A.shape[-2:])
    q = _check_int("q", DEFAULT_Q if q is None else q, 0, min(m, n), f"min(m, n) = {min(m, n)}")
    niter = _check_int("niter", DEFAULT_NITER if niter is None else niter, 0, None, "")
    if M is not None and not isinstance(M, torch.Tensor):
        M = torch.as_tensor(M, device=A.device)
    if q == 0:  # torch allows it: empty factors
        dtype = _result_dtype(A)
        lead = tuple(A.shape[:-2])
        return (A.new_zeros(lead + (m, 0), dtype=dtype), A.new_zeros(lead + (0,), dtype=dtype),
                A.new_zeros(lead + (n, 0), dtype=dtype))
    return _factor(A, q, niter, M)


def pca_lowrank(A: torch.Tensor, q: Optional[int] = None, center: bool = True,
                niter: int = DEFAULT_NITER) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, V)`` of the centred ``A``, as ``torch.pca_lowrank``.

    ``A`` (``m`` samples by ``n`` features, any batch shape; or a 2-D sparse
    tensor) is centred by its column means (``center=True``): implicitly for
    a 2-D ``A``, dense or sparse (never forming ``A - mean``), and as one copy
    for a batched ``A``.  The columns of ``V`` are the principal directions,
    ``S**2 / (m - 1)`` the variances along them, and ``A V[:, :k]`` the data
    projected on the first ``k``.

    Parameters
    ----------
    A
        ``(*, m, n)`` tensor or 2-D sparse COO/CSR tensor.
    q
        Rank, ``0 <= q <= min(m, n)``; None: ``min(6, m, n)``.
    center
        Subtract the column means (True) or take ``A`` as centred (False).
    niter
        Power (subspace) iterations, ``>= 0``.

    Returns
    -------
    U, S, V
        As :func:`svd_lowrank`.
    """
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2:
        raise ValueError(f"A must have at least 2 dimensions (*, m, n), got shape {tuple(A.shape)}")
    if not isinstance(center, bool):
        raise TypeError(f"center must be a bool, got {type(center).__name__}")
    m, n = (int(d) for d in A.shape[-2:])
    q = min(DEFAULT_Q, m, n) if q is None else q
    q = _check_int("q", q, 0, min(m, n), f"min(m, n) = {min(m, n)}")
    niter = _check_int("niter", niter, 0, None, "")
    if not center or q == 0:
        return svd_lowrank(A, q, niter)
    if A.layout != torch.strided or A.dim() == 2:
        return _factor(A, q, niter, None, center=True)  # the engine's implicit centring
    return _factor(A - A.mean(dim=-2, keepdim=True), q, niter, None)


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: object, lo: int, hi: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {what}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _result_dtype(A: torch.Tensor) -> torch.dtype:
    """The dtype :func:`liam_gpu.randomized_svd` returns for ``A``."""
    if A.dtype in (torch.float32, torch.float16):
        return torch.float32
    return torch.bfloat16 if A.dtype == torch.bfloat16 else torch.float64


def _seed() -> int:
    """A 63-bit seed from torch's default generator (``torch.manual_seed`` repeats it)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def _transpose(A: torch.Tensor) -> torch.Tensor:
    """``A^T`` without a copy of a dense ``A`` (a view) or a densified sparse one (COO's transpose)."""
    if A.layout == torch.sparse_csr:
        A = A.to_sparse_coo()
    return A.t() if sparse_input.is_torch(A) else A.mT


def _factor(A: torch.Tensor, q: int, niter: int, M: torch.Tensor | None, *,
            center: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, V)`` of ``A - M`` (or of ``A`` centred by its column means with ``center``)."""
    options = dict(n_iter=niter, random_state=_seed())
    if sparse_input.is_torch(A) and arrays.needs_autograd(A, M):
        # The same refusal on every route (the centring operator, the transposed one, the dense copy).
        raise ValueError("A is a sparse tensor and A or M requires grad: gradients are recorded for dense A only")
    if center:
        u, s, vt = randomized_svd(A, q, center=True, **options)
        return u, s, vt.mT
    if M is None:
        u, s, vt = randomized_svd(A, q, **options)
        return u, s, vt.mT
    m, n = (int(d) for d in A.shape[-2:])
    try:
        shape = torch.broadcast_shapes(tuple(M.shape), tuple(A.shape))
    except RuntimeError:
        raise ValueError(f"M of shape {tuple(M.shape)} does not broadcast to A's shape {tuple(A.shape)}") from None
    if shape != tuple(A.shape):
        raise ValueError(f"M of shape {tuple(M.shape)} broadcasts A's shape {tuple(A.shape)} to {shape}")
    if A.dim() == 2 and M.numel() in (1, n) and (M.dim() < 2 or M.shape[-2] == 1):
        # Column means (a row, or one value for every entry): the engine's centring operator.
        mu = M.reshape(-1).expand(n)
        u, s, vt = randomized_svd(A, q, center=mu, **options)
        return u, s, vt.mT
    if A.dim() == 2 and M.dim() == 2 and M.shape == (m, 1):
        # Row means: A - nu 1^T = (A^T - 1 nu^T)^T, the centring operator on the transpose.
        u, s, vt = randomized_svd(_transpose(A), q, center=M.reshape(m), **options)
        return vt.mT, s, u
    dense = A.to_dense() if sparse_input.is_torch(A) else A
    u, s, vt = randomized_svd(dense - M, q, **options)
    return u, s, vt.mT
