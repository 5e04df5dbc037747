"""PyTorch's own tests of ``torch.svd_lowrank`` and ``torch.pca_lowrank`` (test/test_linalg.py::
test_svd_lowrank and ::test_pca_lowrank, float64, CPU), assertions unchanged.

``test_svd_lowrank`` runs against ``liam_gpu.randomized_svd`` through a
``svd_lowrank``-shaped adapter and against ``liam_gpu.torch.svd_lowrank``;
``test_pca_lowrank`` against ``liam_gpu.torch.pca_lowrank``.

Left out: the ``torch.jit.script`` subtests (our functions are not TorchScript).
The adapter returns ``(U, S, V)`` with ``q`` columns, as ``torch.svd_lowrank``
does; torch's ``assertEqual`` is ``torch.testing.assert_close`` with the same
tolerances (float64 defaults: rtol 1e-7, atol 1e-7).  The test matrices are
made as torch's ``random_lowrank_matrix`` and ``random_sparse_matrix`` make
them (their module needs ``expecttest``, a test-only package of torch's):
products of matrices with singular values ``linspace(1/(k+1), 1, k)``, and
sparse matrices with at least one entry per row whose values decay away
from the diagonal.
"""
from __future__ import annotations

import pytest

import math
import random

torch = pytest.importorskip("torch")

import liam_gpu as lg  # noqa: E402
import liam_gpu.torch as lt  # noqa: E402


def _graded(rows, columns, *batch_dims, dtype=torch.double, device="cpu"):
    """Random orthonormal factors around singular values ``linspace(1/(k+1), 1, k)``."""
    u, _, vh = torch.linalg.svd(torch.randn(batch_dims + (rows, columns), dtype=dtype, device=device),
                                full_matrices=False)
    k = min(rows, columns)
    return (u * torch.linspace(1 / (k + 1), 1, k, dtype=dtype, device=device).unsqueeze(-2)) @ vh


def random_lowrank_matrix(rank, rows, columns, *batch_dims, dtype=torch.double, device="cpu"):
    return _graded(rows, rank, *batch_dims, dtype=dtype, device=device) @ _graded(
        rank, columns, *batch_dims, dtype=dtype, device=device)


def random_sparse_matrix(rows, columns, density=0.01, dtype=torch.double, device="cpu"):
    count = max(min(rows, columns), int(rows * columns * density))
    per_row = math.ceil(count / rows)
    pairs = [(r, c) for r in range(rows) for c in random.choices(range(columns), k=per_row)][:count]
    index = torch.tensor(pairs)
    weight = torch.tensor([math.exp(-float(i - j) ** 2) for i, j in pairs], dtype=dtype)
    values = torch.randn(count, dtype=dtype, device=device) * weight
    return torch.sparse_coo_tensor(index.t(), values, (rows, columns), device=device).coalesce()


def svd_lowrank(a, q):
    u, s, vt = lg.randomized_svd(a, q, device="cpu")
    return u, s, vt.mT


def assert_equal(actual, expected, rtol=None, atol=None):
    if rtol is None:
        torch.testing.assert_close(actual, expected)
    else:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def run_subtest(actual_rank, matrix_size, batches, device, svd_lowrank, **options):
    dtype = torch.double
    density = options.pop('density', 1)
    if isinstance(matrix_size, int):
        rows = columns = matrix_size
    else:
        (rows, columns) = matrix_size
    if density == 1:
        a_input = random_lowrank_matrix(actual_rank, rows, columns, *batches, device=device, dtype=dtype)
        a = a_input
    else:
        assert batches == ()
        a_input = random_sparse_matrix(rows, columns, density, device=device, dtype=dtype)
        a = a_input.to_dense()
    q = min(*matrix_size) if not isinstance(matrix_size, int) else matrix_size
    (u, s, v) = svd_lowrank(a_input, q=q, **options)
    (u, s, v) = (u[..., :q], s[..., :q], v[..., :q])
    A = u.matmul(s.diag_embed()).matmul(v.mT)
    assert_equal(A, a, rtol=1e-07, atol=2e-07)
    (U, S, V) = torch.svd(a)
    assert s.shape == S.shape
    assert u.shape == U.shape
    assert v.shape == V.shape
    assert_equal(s, S)
    if density == 1:
        (u, s, v) = (u[..., :actual_rank], s[..., :actual_rank], v[..., :actual_rank])
        (U, S, V) = (U[..., :actual_rank], S[..., :actual_rank], V[..., :actual_rank])
        assert_equal(u.mT.matmul(U).det().abs(), torch.ones(batches, device=device, dtype=dtype))
        assert_equal(v.mT.matmul(V).det().abs(), torch.ones(batches, device=device, dtype=dtype))


all_batches = [(), (1,), (3,), (2, 3)]


#: The functions under test: the adapter over ``randomized_svd``, and the drop-in ``svd_lowrank``.
IMPLEMENTATIONS = {"randomized_svd": svd_lowrank, "liam_gpu.torch.svd_lowrank": lt.svd_lowrank}


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("actual_rank,size,batches_list", [
    (2, (17, 4), all_batches), (4, (17, 4), all_batches), (4, (17, 17), all_batches),
    (10, (100, 40), all_batches), (7, (1000, 1000), [()])])
def test_svd_lowrank_dense(actual_rank, size, batches_list, impl):
    torch.manual_seed(0)
    for batches in batches_list:
        run_subtest(actual_rank, size, batches, "cpu", IMPLEMENTATIONS[impl])
        if size != size[::-1]:
            run_subtest(actual_rank, size[::-1], batches, "cpu", IMPLEMENTATIONS[impl])


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("size", [(17, 4), (4, 17), (17, 17), (100, 40), (40, 100), (1000, 1000)])
@pytest.mark.parametrize("density", [0.005, 0.1])
def test_svd_lowrank_sparse(size, density, impl):
    torch.manual_seed(0)
    random.seed(0)
    run_subtest(None, size, (), "cpu", IMPLEMENTATIONS[impl], density=density)


# --------------------------------------------------------------------------- test_pca_lowrank


def assertEqual(actual, expected):
    """torch's ``TestCase.assertEqual``: ints exactly, tensors by ``assert_close``'s dtype defaults."""
    if isinstance(actual, int) and isinstance(expected, int):
        assert actual == expected
    else:
        torch.testing.assert_close(actual, expected)


def run_pca_subtest(guess_rank, actual_rank, matrix_size, batches, device, pca, **options):
    dtype = torch.double
    density = options.pop('density', 1)
    if isinstance(matrix_size, int):
        rows = columns = matrix_size
    else:
        rows, columns = matrix_size
    if density == 1:
        a_input = random_lowrank_matrix(actual_rank, rows, columns, *batches, device=device, dtype=dtype)
        a = a_input
    else:
        a_input = random_sparse_matrix(rows, columns, density, device=device, dtype=dtype)
        a = a_input.to_dense()

    u, s, v = pca(a_input, q=guess_rank, **options)

    assertEqual(s.shape[-1], guess_rank)
    assertEqual(u.shape[-2], rows)
    assertEqual(u.shape[-1], guess_rank)
    assertEqual(v.shape[-1], guess_rank)
    assertEqual(v.shape[-2], columns)

    A1 = u.matmul(s.diag_embed()).matmul(v.transpose(-2, -1))
    ones_m1 = torch.ones(batches + (rows, 1), dtype=a.dtype, device=device)
    c = a.sum(axis=-2) / rows
    c = c.reshape(batches + (1, columns))
    A2 = a - ones_m1.matmul(c)
    assertEqual(A1, A2)

    if density == 1:
        # actual rank is known only for dense input
        detect_rank = (s.abs() > 1e-5).sum(axis=-1)
        assertEqual(actual_rank * torch.ones(batches, device=device, dtype=torch.int64), detect_rank)
        U, S, V = torch.svd(A2)
        assertEqual(s[..., :actual_rank], S[..., :actual_rank])


@pytest.mark.parametrize("actual_rank,size,batches_list", [
    (2, (17, 4), all_batches), (2, (100, 4), all_batches), (6, (100, 40), all_batches),
    (12, (1000, 1000), [()])])
def test_pca_lowrank_dense(actual_rank, size, batches_list):
    torch.manual_seed(0)
    for batches in batches_list:
        for guess_rank in [actual_rank, actual_rank + 2, actual_rank + 6]:
            if guess_rank <= min(*size):
                run_pca_subtest(guess_rank, actual_rank, size, batches, "cpu", lt.pca_lowrank)
                run_pca_subtest(guess_rank, actual_rank, size[::-1], batches, "cpu", lt.pca_lowrank)


@pytest.mark.parametrize("guess_rank,size", [
    (4, (17, 4)), (4, (4, 17)), (16, (17, 17)), (21, (100, 40)), (20, (40, 100)), (600, (1000, 1000))])
@pytest.mark.parametrize("density", [0.005, 0.1])
def test_pca_lowrank_sparse(guess_rank, size, density):
    torch.manual_seed(0)
    random.seed(0)
    run_pca_subtest(guess_rank, None, size, (), "cpu", lt.pca_lowrank, density=density)
