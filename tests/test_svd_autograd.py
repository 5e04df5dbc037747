"""Differentiable factors of ``randomized_svd``, ``svd_compress``, ``pca``, ``randomized_eigsh`` and
``liam_gpu.torch.svd_lowrank`` / ``pca_lowrank`` for tensors that require grad (``liam_gpu/_svd_grad.py``, ``docs/svd.md``).

Truth is float64: ``torch.autograd.gradcheck`` (finite differences of the
function itself, engine included) and the gradients of ``torch.linalg.svd``
truncated to ``k`` on the same input.  The inputs are exactly low-rank (rank
at most the sketch width ``l``), where the gradients are exact, with singular
values ``linspace(3, 1, r)``: separated by ``2 / (r - 1)``.  Losses are
invariant to the singular vectors' signs (``|U|``, ``S``, ``U S V^T``), as in
torch's own SVD tests.  Double backward is not supported (tested: it raises).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import liam_gpu as lg  # noqa: E402
import liam_gpu.torch as lt  # noqa: E402

gradcheck = torch.autograd.gradcheck
F64 = torch.float64


def lowrank(m: int, n: int, r: int, *batch: int, dtype=F64, seed: int = 0, tail: float = 0.0) -> torch.Tensor:
    """A rank-``r`` matrix (or stack) with singular values ``linspace(3, 1, r)``.

    ``tail > 0`` gives the other ``min(m, n) - r`` singular values distinct
    values in ``[tail, 2 tail]`` instead of zeros: a reference through
    ``torch.linalg.svd`` then has no two equal singular values (its backward
    divides by their differences), at a cost of order ``tail`` to the truth.
    """
    g = torch.Generator().manual_seed(seed)
    width = min(m, n) if tail > 0 else r
    u, _ = torch.linalg.qr(torch.randn(*batch, m, width, dtype=F64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(*batch, n, width, dtype=F64, generator=g))
    s = torch.cat([torch.linspace(3, 1, r, dtype=F64), tail * torch.linspace(2, 1, width - r, dtype=F64)])
    return ((u * s) @ v.mT).to(dtype)


#: The tail of the matrices compared with torch.linalg.svd: far below the gradients' rounding.
TAIL = 1e-13


def grad_tolerance(a: torch.Tensor, dtype) -> float:
    """Rounding bound of an SVD gradient: ``u sqrt(mn)`` relative perturbation of ``A``, amplified by
    ``(sigma_max / gap)^2`` (singular vectors move by ``||dA|| / gap``, and the backward divides by gaps
    again), times a safety factor 64 for the handful of products in between."""
    m, n = a.shape[-2:]
    s = torch.linalg.svdvals(a.detach().double()).flatten()
    s = s[s > 1e-8 * s.max()]
    gap = float((s[:-1] - s[1:]).min()) if s.numel() > 1 else float(s.max())
    return 64 * torch.finfo(dtype).eps * math.sqrt(m * n) * (float(s.max()) / gap) ** 2


def truncated_reference(a: torch.Tensor, k: int):
    """``torch.linalg.svd`` of ``a`` truncated to ``k``, with scikit-learn's signs on ``U`` (constants)."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    u, s, vh = u[..., :k], s[..., :k], vh[..., :k, :]
    with torch.no_grad():
        idx = u.abs().argmax(dim=-2, keepdim=True)
        signs = torch.where(torch.gather(u, -2, idx) < 0, -1.0, 1.0).to(u.dtype)
    return u * signs, s, vh * signs.mT


def losses(g_u: torch.Tensor, g_a: torch.Tensor):
    """Sign-invariant losses of ``(U, S, Vt)``: each touches another part of the backward."""
    return {
        "S": lambda u, s, vt: s.sum(),
        "|U|": lambda u, s, vt: (u.abs() * g_u).sum(),
        "|V|": lambda u, s, vt: vt.abs().sum(),
        "USV^T": lambda u, s, vt: ((u * s.unsqueeze(-2)) @ vt * g_a).sum(),
        "signed U, V": lambda u, s, vt: (u * g_u).sum() + (vt ** 2).sum() + (u @ vt).sum(),
    }


# --------------------------------------------------------------------------- gradcheck


# Shapes whose short side (12) is wider than the sketch (k + p = 4, rounded to 8): the range
# finder runs (a sketch spanning the matrix would take the dense SVD instead).
@pytest.mark.parametrize("shape", [(20, 12), (12, 20)])
@pytest.mark.parametrize("loss", ["S", "|U|", "|V|", "USV^T"])
def test_gradcheck_randomized_svd_exactly_low_rank(shape, loss):
    m, n = shape
    a = lowrank(m, n, 3).requires_grad_()
    k = 2
    g = torch.randn(m, k, dtype=F64, generator=torch.Generator().manual_seed(1))
    fn = losses(g, torch.randn(m, n, dtype=F64, generator=torch.Generator().manual_seed(2)))[loss]
    assert gradcheck(lambda x: fn(*lg.randomized_svd(x, k, n_oversamples=2, n_iter=2)), (a,))


def test_dense_path_when_the_sketch_spans_the_matrix():
    a = lowrank(14, 6, 3).requires_grad_()  # l = 8 >= 6: the exact (dense) factorization's basis
    assert gradcheck(lambda x: lg.randomized_svd(x, 2)[0].abs().sum(), (a,))


def test_gradcheck_svd_compress_fixed_rank_and_tol():
    assert gradcheck(lambda x: lg.svd_compress(x, 2, n_oversamples=2).U.abs().sum(),
                     (lowrank(18, 10, 3).requires_grad_(),))
    a = lowrank(15, 7, 3).requires_grad_()
    # tol 0.5 keeps rank 2 of singular values (3, 2, 1): relative error 1/sqrt(14) = 0.27.
    assert lg.svd_compress(a, tol=0.5).rank == 2
    assert gradcheck(lambda x: lg.svd_compress(x, tol=0.5).to_dense().square().sum(), (a,))


def test_gradcheck_centred_through_a_and_through_a_given_mean():
    a = lowrank(16, 10, 3).requires_grad_()
    mu = torch.randn(10, dtype=F64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    g = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    opts = dict(n_oversamples=2)  # l = 8 < 10: the range finder over the centring operator
    assert gradcheck(lambda x: (lg.randomized_svd(x, 2, center=True, **opts)[0].abs() * g).sum(), (a,))
    assert gradcheck(lambda x, c: (lg.randomized_svd(x, 2, center=c, **opts)[0].abs() * g).sum()
                     + lg.randomized_svd(x, 2, center=c, **opts)[1].sum(), (a, mu))
    wide = lowrank(10, 16, 3).requires_grad_()
    mu16 = torch.randn(16, dtype=F64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    assert gradcheck(lambda x, c: lg.randomized_svd(x, 2, center=c, **opts)[2].abs().sum()
                     + lg.randomized_svd(x, 2, center=c, **opts)[0].abs().sum(), (wide, mu16))


def test_gradcheck_pca_every_field():
    x = (lowrank(18, 10, 3) + torch.arange(10, dtype=F64)).requires_grad_()  # rank <= 4 after centring

    def fn(x):
        r = lg.pca(x, 2, n_oversamples=2)
        return (r.components.abs().sum() + r.explained_variance.sum() + r.explained_variance_ratio.sum()
                + r.singular_values.sum() + r.mean.square().sum())

    assert gradcheck(fn, (x,))


@pytest.mark.parametrize("batch", [(3,), (2, 2)])
def test_gradcheck_stacks(batch):
    # 270 x 10 items: beyond the batched kernel's 256 rows, so the engine, item by item
    # (gradcheck's fast mode: a random direction, as the full Jacobian has 10^4 columns).
    a = lowrank(270, 10, 3, *batch).requires_grad_()
    assert gradcheck(lambda x: lg.randomized_svd(x, 2, n_oversamples=2)[0].abs().sum(), (a,), fast_mode=True)
    small = lowrank(5, 4, 2, *batch).requires_grad_()  # the batched kernel's route: torch's exact SVD
    assert gradcheck(lambda x: lg.randomized_svd(x, 2)[0].abs().sum() + lg.randomized_svd(x, 2)[1].sum(),
                     (small,))


# --------------------------------------------------------------------------- against torch.linalg.svd


@pytest.mark.parametrize("shape,rank,k", [((60, 25), 4, 4), ((25, 60), 4, 2), ((60, 25), 7, 3)])
@pytest.mark.parametrize("loss", ["S", "|U|", "|V|", "USV^T", "signed U, V"])
def test_gradients_equal_truncated_torch_svd(shape, rank, k, loss):
    """rank <= l (k + 10 rounded to 8): the gradient of the exact truncated SVD, to rounding."""
    m, n = shape
    a = lowrank(m, n, rank, tail=TAIL)
    g = torch.randn(m, k, dtype=F64, generator=torch.Generator().manual_seed(6))
    fn = losses(g, torch.randn(m, n, dtype=F64, generator=torch.Generator().manual_seed(7)))[loss]
    ours = a.clone().requires_grad_()
    fn(*lg.randomized_svd(ours, k)).backward()
    ref = a.clone().requires_grad_()
    fn(*truncated_reference(ref, k)).backward()
    tol = grad_tolerance(a, F64) * max(1.0, float(ref.grad.abs().max()))
    assert float((ours.grad - ref.grad).abs().max()) <= tol


def test_without_the_complement_term_u_gradients_would_be_wrong():
    """The zero-valued term is what makes ``U``'s gradient exact: ``P G`` alone misses ``(I - P) G``."""
    m, n, k = 60, 25, 3
    a = lowrank(m, n, 3, tail=TAIL)
    g = torch.randn(m, k, dtype=F64, generator=torch.Generator().manual_seed(8))
    ours = a.clone().requires_grad_()
    u, _, _ = lg.randomized_svd(ours, k)
    (u * g).sum().backward()
    ref = a.clone().requires_grad_()
    (truncated_reference(ref, k)[0] * g).sum().backward()
    # The part outside span(U) is present, and right: a constant Q would leave P G only.
    q, _ = torch.linalg.qr(u.detach())
    outside = ref.grad - q @ (q.mT @ ref.grad)
    assert float(outside.abs().max()) > 0.1 * float(ref.grad.abs().max())
    assert float((ours.grad - ref.grad).abs().max()) <= grad_tolerance(a, F64) * float(ref.grad.abs().max())


def test_float32_gradients_against_float64_truth():
    m, n, k = 80, 30, 3
    a64 = lowrank(m, n, 5, tail=TAIL)
    g = torch.randn(m, k, dtype=F64, generator=torch.Generator().manual_seed(9))
    fn = losses(g, torch.randn(m, n, dtype=F64, generator=torch.Generator().manual_seed(10)))["signed U, V"]
    ours = a64.float().requires_grad_()
    u, s, vt = lg.randomized_svd(ours, k)
    assert u.dtype == s.dtype == vt.dtype == torch.float32
    fn(u.double(), s.double(), vt.double()).backward()
    ref = a64.clone().requires_grad_()
    fn(*truncated_reference(ref, k)).backward()
    tol = grad_tolerance(a64, torch.float32) * float(ref.grad.abs().max())
    assert ours.grad.dtype == torch.float32
    assert float((ours.grad.double() - ref.grad).abs().max()) <= tol


def test_stack_gradients_equal_item_by_item():
    a = lowrank(50, 20, 4, 3)
    ours = a.clone().requires_grad_()
    lg.randomized_svd(ours, 3)[0].abs().sum().backward()
    for i in range(3):
        item = a[i].clone().requires_grad_()
        lg.randomized_svd(item, 3)[0].abs().sum().backward()
        assert float((ours.grad[i] - item.grad).abs().max()) <= grad_tolerance(a[i], F64)


def test_pca_gradients_against_torch_svd_of_the_centred_matrix():
    x = lowrank(40, 12, 4, tail=TAIL) + torch.linspace(-2, 2, 12, dtype=F64)
    k = 3

    def reference(x):
        c = x - x.mean(dim=0)
        _, s, vh = truncated_reference(c, k)
        return (vh.abs().sum() + (s**2 / (x.shape[0] - 1)).sum() + (s**2 / c.square().sum()).sum())

    ours = x.clone().requires_grad_()
    r = lg.pca(ours, k)
    (r.components.abs().sum() + r.explained_variance.sum() + r.explained_variance_ratio.sum()).backward()
    ref = x.clone().requires_grad_()
    reference(ref).backward()
    tol = grad_tolerance(x - x.mean(dim=0), F64) * max(1.0, float(ref.grad.abs().max()))
    assert float((ours.grad - ref.grad).abs().max()) <= tol


# --------------------------------------------------------------------------- values, graphs, errors


@pytest.mark.parametrize("flip_sign", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(120, 30), (30, 120), (2, 300, 20), (4, 6, 5)])
def test_recorded_factors_equal_the_unrecorded_ones(dtype, shape, flip_sign):
    *batch, m, n = shape
    a = lowrank(m, n, min(6, m, n), *batch, dtype=dtype)
    u0, s0, vt0 = lg.randomized_svd(a, 4, flip_sign=flip_sign)
    u, s, vt = lg.randomized_svd(a.clone().requires_grad_(), 4, flip_sign=flip_sign)
    assert all(t.requires_grad and t.grad_fn is not None for t in (u, s, vt))
    assert (u.dtype, u.shape, vt.shape, s.shape) == (u0.dtype, u0.shape, vt0.shape, s0.shape)
    # Both are the SVD of Q^T A, formed two ways: equal to rounding, singular values to
    # u sqrt(mn) ||A||, vectors to that over the gap (0.4 between singular values 3 ... 1).
    eps = torch.finfo(dtype).eps
    tol = 16 * eps * math.sqrt(m * n) * 3.0
    assert float((s.detach() - s0).abs().max()) <= tol
    assert float((u.detach() - u0).abs().max()) <= tol / 0.4
    assert float((vt.detach() - vt0).abs().max()) <= tol / 0.4


def test_svd_compress_records_and_keeps_the_error_estimate():
    a = lowrank(60, 20, 8) + 1e-3 * torch.randn(60, 20, dtype=F64, generator=torch.Generator().manual_seed(12))
    ref = lg.svd_compress(a, 5)
    lr = lg.svd_compress(a.clone().requires_grad_(), 5)
    assert lr.U.requires_grad and lr.S.requires_grad and lr.Vt.requires_grad
    assert lr.relative_error == ref.relative_error
    # A small stack: torch's exact SVD instead of the batched kernel's (numpy's) -- the same
    # rank, and errors from spectra equal to rounding: sigma_i to u ||A||_2 each, so the tail
    # energy err^2 ||A||_F^2 to about 2 min(m, n) u ||A||_2^2 (16: a safety factor).
    stack = torch.stack([a, 2 * a])
    lr = lg.svd_compress(stack.clone().requires_grad_(), tol=0.2)
    expected = lg.svd_compress(stack, tol=0.2)
    assert lr.rank == expected.rank
    norm2 = float(torch.linalg.matrix_norm(a, 2)) ** 2
    tail2 = float(expected.relative_error[0]) ** 2 * float(a.square().sum())
    rtol = 16 * 2 * 20 * torch.finfo(F64).eps * norm2 / tail2
    np.testing.assert_allclose(lr.relative_error, expected.relative_error, rtol=rtol, atol=0)


def test_no_graph_without_requires_grad_or_under_no_grad():
    a = lowrank(30, 10, 3)
    u0, s0, vt0 = lg.randomized_svd(a, 2)
    assert not any(t.requires_grad for t in (u0, s0, vt0))
    leaf = a.clone().requires_grad_()
    with torch.no_grad():
        u, s, vt = lg.randomized_svd(leaf, 2)
        r = lg.pca(leaf, 2)
        lr = lg.svd_compress(leaf, 2)
    assert not any(t.requires_grad for t in (u, s, vt, r.components, r.mean, lr.U))
    # The unrecorded path, bit for bit.
    assert torch.equal(u, u0) and torch.equal(s, s0) and torch.equal(vt, vt0)


def test_inputs_are_not_modified():
    a = lowrank(30, 10, 3).requires_grad_()
    before = a.detach().clone()
    mu = torch.randn(10, dtype=F64).requires_grad_()
    mu_before = mu.detach().clone()
    u, s, vt = lg.randomized_svd(a, 2, center=mu)
    (u.abs().sum() + s.sum()).backward()
    lg.pca(a, 2).components.sum().backward()
    assert torch.equal(a.detach(), before) and torch.equal(mu.detach(), mu_before)


def test_a_center_that_requires_grad_with_a_non_tensor_a_is_refused_by_name():
    a = lowrank(20, 8, 3).numpy()
    center = torch.zeros(8, dtype=F64, requires_grad=True)
    with pytest.raises(TypeError, match="center is a tensor that requires grad, but a is a ndarray"):
        lg.randomized_svd(a, 2, center=center)
    with pytest.raises(TypeError, match="center is a tensor that requires grad"):
        lg.svd_compress(a, 2, center=center)


def test_double_backward_is_refused():
    a = lowrank(20, 8, 3).requires_grad_()
    u, _, _ = lg.randomized_svd(a, 2)
    (grad,) = torch.autograd.grad(u.abs().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


def test_sparse_tensor_that_requires_grad_is_refused_by_name():
    a = lowrank(20, 8, 3).to_sparse().requires_grad_()
    with pytest.raises(ValueError, match="a is a sparse tensor and the call records gradients"):
        lg.randomized_svd(a, 2)
    with pytest.raises(ValueError, match="x is a sparse tensor that requires grad"):
        lg.pca(a, 2)
    with pytest.raises(ValueError, match="M is a sparse tensor that requires grad"):
        lg.randomized_eigsh(symmetric_lowrank(8, [1.0, 2.0]).to_sparse().requires_grad_(), 2)


def test_zero_matrix_and_rank_beyond_the_matrix_rank():
    """Degenerate: ``S`` has zeros; a loss of ``S`` still has the finite (sub)gradient ``U V^T``."""
    zero = torch.zeros(10, 4, dtype=F64, requires_grad=True)
    lg.randomized_svd(zero, 2)[1].sum().backward()
    assert torch.isfinite(zero.grad).all()
    a = lowrank(20, 8, 2, tail=TAIL).requires_grad_()
    u, s, vt = lg.randomized_svd(a, 4)  # k = 4 > rank 2: two singular values at rounding level
    s.sum().backward()
    # d(sum S)/dA = U_4 V_4^T: on the rank-2 part the identity, Frobenius norm^2 = 4.
    u2, _, vt2 = truncated_reference(a.detach(), 2)
    tol = grad_tolerance(a, F64)
    assert torch.isfinite(a.grad).all()
    assert float((u2.mT @ a.grad @ vt2.mT - torch.eye(2, dtype=F64)).abs().max()) <= tol
    assert abs(float(a.grad.square().sum()) - 4.0) <= tol


def test_bfloat16_input_gets_bfloat16_factors_with_a_graph():
    a = lowrank(40, 12, 3).to(torch.bfloat16).requires_grad_()
    u, s, vt = lg.randomized_svd(a, 2)
    assert u.dtype == s.dtype == vt.dtype == torch.bfloat16 and u.requires_grad
    s.float().sum().backward()
    assert a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()


# --------------------------------------------------------------------------- randomized_eigsh


def symmetric_lowrank(n: int, eigenvalues, seed: int = 0, tail: float = 0.0) -> torch.Tensor:
    """``U diag(eigenvalues) U^T`` (``tail > 0``: the other eigenvalues distinct, in ``[tail, 2 tail]``)."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.tensor(eigenvalues, dtype=F64)
    if tail > 0:
        lam = torch.cat([lam, tail * torch.linspace(2, 1, n - lam.numel(), dtype=F64)])
    u, _ = torch.linalg.qr(torch.randn(n, lam.numel(), dtype=F64, generator=g))
    return (u * lam) @ u.mT


@pytest.mark.parametrize("selection,k", [("module", 3), ("value", 2)])
def test_gradcheck_randomized_eigsh(selection, k):
    # Eigenvalues 3, -2.2, 1.5, -0.8: "value" with k = 2 keeps 3 and 1.5, "module" 3, -2.2, 1.5.
    x = symmetric_lowrank(20, [3.0, -2.2, 1.5, -0.8]).requires_grad_()

    def fn(x):
        vals, vecs = lg.randomized_eigsh((x + x.mT) / 2, k, n_oversamples=4, selection=selection)
        return vals.sum() + vecs.abs().sum() + (vecs[:, :1] * vecs).sum()

    assert gradcheck(fn, (x,))


def test_eigsh_gradients_equal_torch_eigh_and_values_equal_the_unrecorded_ones():
    m = symmetric_lowrank(40, [3.0, -2.2, 1.5, -0.8, 0.5], tail=TAIL)
    k = 3
    vals0, vecs0 = lg.randomized_eigsh(m, k)
    ours = m.clone().requires_grad_()
    vals, vecs = lg.randomized_eigsh(ours, k)
    assert vals.requires_grad and vecs.requires_grad
    # Eigenvalue gaps >= 0.7: the vectors to u n ||M|| / gap, the values to u n ||M|| (16: safety).
    tol = 16 * torch.finfo(F64).eps * 40 * 3.0
    assert float((vals.detach() - vals0).abs().max()) <= tol
    assert float((vecs.detach() - vecs0).abs().max()) <= tol / 0.7
    (vals.sum() + vecs.abs().sum()).backward()
    ref = m.clone().requires_grad_()
    lam, w = torch.linalg.eigh(ref)
    order = torch.argsort(-lam.detach().abs())[:k]
    (lam[order].sum() + w[:, order].abs().sum()).backward()
    gap_tol = 64 * torch.finfo(F64).eps * 40 * (3.0 / 0.7) ** 2 * float(ref.grad.abs().max())
    assert float((ours.grad - ref.grad).abs().max()) <= gap_tol


# --------------------------------------------------------------------------- torch's contract


def test_svd_lowrank_and_pca_lowrank_are_differentiable_through_a_and_m():
    a = lowrank(14, 6, 3).requires_grad_()
    row = torch.randn(1, 6, dtype=F64, generator=torch.Generator().manual_seed(13)).requires_grad_()
    col = torch.randn(14, 1, dtype=F64, generator=torch.Generator().manual_seed(14)).requires_grad_()
    full = torch.randn(14, 6, dtype=F64, generator=torch.Generator().manual_seed(15)) * 1e-3

    def fn(x, m):
        torch.manual_seed(0)  # the seed comes from torch's generator: the same for every evaluation
        u, s, v = lt.svd_lowrank(x, q=2, M=m)
        return u.abs().sum() + s.sum() + v.abs().sum()

    assert gradcheck(fn, (a, row))
    assert gradcheck(fn, (a, col))
    assert gradcheck(lambda x: fn(x, full), (lowrank(14, 6, 3).requires_grad_(),))

    def pca_fn(x):
        torch.manual_seed(0)
        u, s, v = lt.pca_lowrank(x, q=2)
        return u.abs().sum() + s.sum() + v.abs().sum()

    assert gradcheck(pca_fn, (a,))


def test_exactly_zero_singular_values_give_finite_gradients_of_the_product():
    # A rank-1 matrix factored at k = 2: S = [s1, 0].  The zero singular value's
    # vector must not turn the gradient of a loss of U S V^T into 0/0 (NaN).  Of
    # that gradient, the part touching u1 or v1 is the rank-1 SVD's exact one; the
    # rest, (I - u1 u1^T) G (I - v1 v1^T), belongs to a direction in which the
    # rank-2 truncation of a rank-1 matrix is not differentiable (its second
    # pair is the best rank-1 part of the perturbation), so any finite value goes.
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(4)
    a = (torch.randn(10, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 4, generator=g, dtype=torch.float64))
    a.requires_grad_()
    w = torch.randn(10, 4, generator=g, dtype=torch.float64)
    lr = lg.svd_compress(a, 2)
    assert float(lr.S[1]) < 1e-12 * float(lr.S[0])
    (lr.to_dense() * w).sum().backward()
    assert bool(torch.isfinite(a.grad).all())
    u, _, vt = torch.linalg.svd(a.detach(), full_matrices=False)
    pu, pv = u[:, :1] @ u[:, :1].T, vt[:1].T @ vt[:1]
    linear_part = lambda m: pu @ m + m @ pv - pu @ m @ pv  # noqa: E731
    assert torch.allclose(linear_part(a.grad), linear_part(w), atol=1e-10)


def test_recorded_calls_do_not_run_the_engines_small_svd(monkeypatch):
    # With sign flipping on and no estimate asked for, the recorded path uses only
    # the engine's basis Q (torch factors Q^T A): the engine's finish() -- a pass
    # over A, three Gram reductions and the small SVD -- would be thrown away.
    torch = pytest.importorskip("torch")
    from liam_gpu import rangefinder

    monkeypatch.setattr(rangefinder, "finish", lambda *a, **k: pytest.fail("finish() ran for a recorded call"))
    g = torch.Generator().manual_seed(9)
    a = torch.randn(120, 40, generator=g, dtype=torch.float64, requires_grad=True)
    u, s, vt = lg.randomized_svd(a, 5)
    (s.sum() + u.sum() + vt.sum()).backward()
    lg.pca(a, 4).explained_variance.sum().backward()
    stack = torch.randn(2, 60, 30, generator=g, dtype=torch.float64, requires_grad=True)
    lg.randomized_svd(stack, 3)[1].sum().backward()
    assert bool(torch.isfinite(a.grad).all()) and bool(torch.isfinite(stack.grad).all())
