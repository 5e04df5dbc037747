"""LowRank: the container of truncated-SVD factors, its dense views, files and stacks."""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg
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


# --------------------------------------------------------------------------- writing whole or not at all


def test_save_that_fails_midway_leaves_the_old_file_whole(tmp_path, rng, monkeypatch):
    path = tmp_path / "f.npz"
    old = LowRank(*_factors(rng))
    old.save(path)
    before = path.read_bytes()

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match=r"cannot write .*f\.npz: No space left"):
        LowRank(*_factors(rng, m=40)).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # no temporary file left behind
    monkeypatch.undo()
    np.testing.assert_array_equal(LowRank.load(path).U, old.U)


def test_save_keeps_the_mode_of_the_file_it_replaces_and_writes_through_links(tmp_path, rng):
    real = tmp_path / "real.npz"
    LowRank(*_factors(rng)).save(real)
    real.chmod(0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    LowRank(*_factors(rng, m=31)).save(link)
    assert link.is_symlink() and LowRank.load(real).shape == (31, 20)
    assert real.stat().st_mode & 0o777 == 0o640


def test_save_to_a_directory_is_an_os_error_naming_it(tmp_path, rng):
    with pytest.raises(IsADirectoryError, match="cannot write .*: it is a directory"):
        LowRank(*_factors(rng)).save(tmp_path)


# --------------------------------------------------------------------------- the loader


def _npz(path, **arrays):
    """Write arrays into an .npz, bypassing LowRank.save (for files it would never write)."""
    np.savez(path, **arrays)
    return path


def _good_keys(rng, **over):
    u, s, vt = _factors(rng)
    keys = {"format": np.asarray("liam_gpu.LowRank"), "version": np.asarray(1), "U": u, "S": s, "Vt": vt,
            "relative_error": np.asarray(np.nan)}
    keys.update(over)
    return keys


def _npy_member(shape, dtype, data=b""):
    """An .npy member whose header declares ``shape`` whatever data follows."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_a_small_file_declaring_a_huge_factor_is_a_value_error_not_a_memory_error(tmp_path, rng):
    import zipfile

    path = tmp_path / "huge.npz"
    good = tmp_path / "good.npz"
    LowRank(*_factors(rng)).save(good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == "U.npy":
                dst.writestr("U.npy", _npy_member((10**6, 10**6), np.float64, b"\0" * 64))
            else:
                dst.writestr(info, src.read(info))
    assert path.stat().st_size < 4096
    with pytest.raises(ValueError, match=r"huge\.npz.*U declares shape \(1000000, 1000000\)"):
        LowRank.load(path)


def test_factors_larger_than_the_memory_available_are_refused_before_reading(tmp_path, rng, monkeypatch):
    from liam_gpu import lowrank

    path = tmp_path / "f.npz"
    LowRank(*_factors(rng)).save(path)
    monkeypatch.setattr(lowrank, "available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"f\.npz.*needs .* only .* available"):
        LowRank.load(path)


@pytest.mark.parametrize("key, value, words", [
    ("U", "strings", "U must be float16, float32 or float64"),
    ("U", "datetime", "U must be float16, float32 or float64"),
    ("S", "bool", "S must be float16, float32 or float64"),
    ("Vt", "complex", "Vt must be float16, float32 or float64"),
    ("version", np.asarray([1]), "version must be an integer"),
    ("version", np.asarray(1.0), "version must be an integer"),
    ("format", np.asarray(["liam_gpu.LowRank"]), "format must be a string"),
    ("relative_error", np.asarray("0.1"), "relative_error must be a float"),
    ("relative_error", np.asarray([0.1, 0.2]), "relative_error must be a float"),
    ("S", np.ones(3), "do not form"),
    ("source_dtype", np.asarray("complex128"), "source_dtype"),
    ("source_dtype", np.asarray(3), "source_dtype must be a string"),
])
def test_every_key_is_checked_for_dtype_and_shape(tmp_path, rng, key, value, words):
    keys = _good_keys(rng)
    if isinstance(value, str):
        like = keys[key]
        value = {"strings": like.astype(str), "datetime": like.astype(np.int64).astype("M8[s]"),
                 "bool": like > 0.5, "complex": like.astype(np.complex128)}[value]
    keys[key] = value
    path = _npz(tmp_path / "odd.npz", **keys)
    with pytest.raises(ValueError, match=r"odd\.npz") as info:
        LowRank.load(path)
    assert words in str(info.value)


def test_object_arrays_are_never_unpickled(tmp_path, rng):
    keys = _good_keys(rng, U=np.array([{"a": 1}, None], dtype=object))
    path = tmp_path / "pickled.npz"
    np.savez(path, **keys)
    with pytest.raises(ValueError, match=r"pickled\.npz: U holds Python objects") as info:
        LowRank.load(path)
    assert "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("content, words", [
    (b"hello, I am plain text\n", "not an .npz archive"),
    (b"\x93NUMPY\x01\x00", "is a .npy array"),
])
def test_a_foreign_file_named_npz_gets_a_message_naming_it_not_numpys(tmp_path, content, words):
    path = tmp_path / "plain.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"plain\.npz") as info:
        LowRank.load(path)
    assert words in str(info.value) and "allow_pickle" not in str(info.value)


def test_a_member_holding_more_or_less_than_it_declares_is_refused(tmp_path, rng):
    import zipfile

    good = tmp_path / "good.npz"
    LowRank(*_factors(rng)).save(good)
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:-8] if info.filename == "S.npy" else data)
    with pytest.raises(ValueError, match=r"short\.npz: S declares shape \(4,\)"):
        LowRank.load(path)


def test_newer_format_versions_are_refused_naming_the_file(tmp_path, rng):
    path = _npz(tmp_path / "new.npz", **_good_keys(rng, version=np.asarray(2)))
    with pytest.raises(ValueError, match=r"new\.npz has LowRank format version 2.*newer"):
        LowRank.load(path)


def test_source_dtype_is_saved_and_loaded_and_counts_in_the_ratio(tmp_path, rng):
    u, s, vt = _factors(rng)
    lr = LowRank(u, s, vt, source_dtype=np.uint8)
    assert lr.compression_ratio == pytest.approx(30 * 20 * 1 / lr.nbytes)
    lr.save(tmp_path / "f.npz")
    back = LowRank.load(tmp_path / "f.npz")
    assert back.source_dtype == np.uint8
    old = _npz(tmp_path / "old.npz", **_good_keys(rng))  # written before the dtype was recorded
    assert LowRank.load(old).source_dtype is None
    with pytest.raises(ValueError, match="boolean, integer or float"):
        LowRank(u, s, vt, source_dtype="U3")


@pytest.mark.parametrize("bad", [np.ones(10) + 1j, np.array(["1"] * 10), np.array([object()] * 10)],
                         ids=["complex", "numeric-strings", "object"])
def test_project_refuses_complex_and_non_numeric_input(bad):
    lr = lg.svd_compress(np.random.default_rng(0).random((20, 10)), 3, device="cpu")
    with pytest.raises(TypeError, match="x "):
        lr.project(bad)
    np.testing.assert_allclose(lr.project(np.ones(10, dtype=int)), np.ones(10) @ lr.Vt.T)
