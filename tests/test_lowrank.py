"""LowRank: the container of truncated-SVD factors, its dense views, files and stacks."""
from __future__ import annotations

import numpy as np
import pytest

from liam_gpu.lowrank import LowRank


def _factors(rng, m=30, n=20, k=4, batch=None, dtype=np.float64):
    lead = () if batch is None else (batch,)
    u = rng.standard_normal(lead + (m, k)).astype(dtype)
    s = np.sort(rng.random(lead + (k,)))[..., ::-1].astype(dtype).copy()
    vt = rng.standard_normal(lead + (k, n)).astype(dtype)
    return u, s, vt


def test_shape_rank_sizes_and_ratio(rng):
    u, s, vt = _factors(rng, dtype=np.float32)
    lr = LowRank(u, s, vt, relative_error=0.25)
    assert lr.shape == (30, 20) and lr.rank == 4 and not lr.batched
    assert lr.nbytes == (30 * 4 + 4 + 4 * 20) * 4
    assert lr.compression_ratio == pytest.approx(30 * 20 * 4 / lr.nbytes)
    assert lr.relative_error == 0.25
    assert "rank=4" in repr(lr) and "0.25" in repr(lr)


def test_dense_views_equal_u_s_vt(rng):
    u, s, vt = _factors(rng)
    lr = LowRank(u, s, vt)
    want = u @ np.diag(s) @ vt
    np.testing.assert_allclose(lr.to_dense(), want, rtol=1e-14, atol=1e-14)
    dense = np.asarray(lr)
    assert isinstance(dense, np.ndarray)
    np.testing.assert_allclose(dense, want, rtol=1e-14, atol=1e-14)
    assert np.asarray(lr, dtype=np.float32).dtype == np.float32


def test_batched_dense_project_and_indexing(rng):
    u, s, vt = _factors(rng, batch=3)
    lr = LowRank(u, s, vt, relative_error=[0.1, 0.2, 0.3])
    assert lr.shape == (3, 30, 20) and lr.batched and len(lr) == 3
    np.testing.assert_allclose(lr.to_dense(), np.einsum("bik,bk,bkj->bij", u, s, vt), rtol=1e-13, atol=1e-13)
    x = rng.standard_normal((3, 5, 20))
    np.testing.assert_allclose(lr.project(x), x @ np.swapaxes(vt, 1, 2), rtol=1e-13, atol=1e-13)
    one = lr[1]
    assert one.shape == (30, 20) and one.relative_error == pytest.approx(0.2)
    np.testing.assert_array_equal(one.U, u[1])
    assert lr[1:].shape == (2, 30, 20)
    with pytest.raises(ValueError, match="columns"):
        lr.project(rng.standard_normal((3, 5, 19)))


def test_project_gives_coordinates_in_the_right_singular_basis(rng):
    u, s, vt = _factors(rng)
    vt = np.linalg.qr(vt.T)[0].T  # orthonormal rows
    lr = LowRank(u, s, vt)
    coords = rng.standard_normal((6, 4))
    rows = coords @ vt  # rows inside the basis
    np.testing.assert_allclose(lr.project(rows), coords, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lr.project(rows[0]), coords[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [None, 2])
def test_save_load_is_lossless(tmp_path, rng, dtype, batch):
    u, s, vt = _factors(rng, batch=batch, dtype=dtype)
    err = None if batch is None else np.array([1e-3, 2e-3])
    lr = LowRank(u, s, vt, relative_error=err)
    path = tmp_path / "f.npz"
    lr.save(path)
    back = LowRank.load(path)
    for a, b in ((back.U, u), (back.S, s), (back.Vt, vt)):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    if err is None:
        assert back.relative_error is None
    else:
        np.testing.assert_array_equal(back.relative_error, err)


def test_load_rejects_truncated_foreign_and_missing_files(tmp_path, rng):
    lr = LowRank(*_factors(rng))
    good = tmp_path / "good.npz"
    lr.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        LowRank.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.ones(3))
    with pytest.raises(ValueError, match="foreign.npz.*not a liam_gpu LowRank"):
        LowRank.load(foreign)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.npz"):
        LowRank.load(text)
    with pytest.raises(ValueError, match="absent.npz"):
        LowRank.load(tmp_path / "absent.npz")


def test_concatenate_joins_items_and_errors(rng):
    a = LowRank(*_factors(rng, batch=2), relative_error=[0.1, 0.2])
    b = LowRank(*_factors(rng), relative_error=0.3)
    joined = LowRank.concatenate([a, b])
    assert joined.shape == (3, 30, 20)
    np.testing.assert_array_equal(joined.U[:2], a.U)
    np.testing.assert_array_equal(joined.U[2], b.U)
    np.testing.assert_array_equal(joined.relative_error, [0.1, 0.2, 0.3])
    assert LowRank.concatenate([a, LowRank(*_factors(rng))]).relative_error is None


def test_concatenate_refuses_mismatched_parts(rng):
    a = LowRank(*_factors(rng, k=4))
    with pytest.raises(ValueError, match="rank"):
        LowRank.concatenate([a, LowRank(*_factors(rng, k=5))])
    with pytest.raises(ValueError, match="shape"):
        LowRank.concatenate([a, LowRank(*_factors(rng, n=21))])
    with pytest.raises(ValueError, match="at least one"):
        LowRank.concatenate([])
    with pytest.raises(TypeError):
        LowRank.concatenate([a, "x"])


def test_constructor_checks_shapes_dtypes_and_errors(rng):
    u, s, vt = _factors(rng)
    with pytest.raises(ValueError, match="do not form"):
        LowRank(u, s[:3], vt)
    with pytest.raises(ValueError, match="2-D"):
        LowRank(u[0], s, vt)
    with pytest.raises(TypeError, match="dtype"):
        LowRank(u.astype(np.float32), s, vt)
    with pytest.raises(ValueError, match="one value per item"):
        LowRank(*_factors(rng, batch=2), relative_error=[0.1])
    with pytest.raises(ValueError, match="number"):
        LowRank(u, s, vt, relative_error=[0.1, 0.2])


def test_torch_factors_stay_tensors(rng):
    torch = pytest.importorskip("torch")
    u, s, vt = (torch.from_numpy(x) for x in _factors(rng))
    lr = LowRank(u, s, vt)
    dense = lr.to_dense()
    assert isinstance(dense, torch.Tensor)
    torch.testing.assert_close(dense, u @ torch.diag(s) @ vt)
    assert lr.nbytes == sum(x.numel() * x.element_size() for x in (u, s, vt))
    assert isinstance(lr.project(torch.ones(2, 20, dtype=torch.float64)), torch.Tensor)
    np.testing.assert_allclose(np.asarray(lr), (u @ torch.diag(s) @ vt).numpy(), rtol=1e-13, atol=1e-13)
