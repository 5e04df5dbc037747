"""PyTorch's own test of ``torch.svd_lowrank`` (test/test_linalg.py::test_svd_lowrank, float64, CPU),
run against ``liam_gpu.randomized_svd`` through a ``svd_lowrank``-shaped adapter, assertions unchanged.

Left out: the ``torch.jit.script`` subtest (our function is not TorchScript).
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


@pytest.mark.parametrize("actual_rank,size,batches_list", [
    (2, (17, 4), all_batches), (4, (17, 4), all_batches), (4, (17, 17), all_batches),
    (10, (100, 40), all_batches), (7, (1000, 1000), [()])])
def test_svd_lowrank_dense(actual_rank, size, batches_list):
    torch.manual_seed(0)
    for batches in batches_list:
        run_subtest(actual_rank, size, batches, "cpu", svd_lowrank)
        if size != size[::-1]:
            run_subtest(actual_rank, size[::-1], batches, "cpu", svd_lowrank)


@pytest.mark.parametrize("size", [(17, 4), (4, 17), (17, 17), (100, 40), (40, 100), (1000, 1000)])
@pytest.mark.parametrize("density", [0.005, 0.1])
def test_svd_lowrank_sparse(size, density):
    torch.manual_seed(0)
    random.seed(0)
    run_subtest(None, size, (), "cpu", svd_lowrank, density=density)
