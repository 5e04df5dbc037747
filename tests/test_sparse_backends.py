"""Sparse input on every backend: scipy.sparse on cpu and emulator, scipy.sparse and cupyx.scipy.sparse on CUDA.

The CUDA path runs on the simulated CuPy of ``tests/fake_cupy.py`` (its
strict ``cupyx.scipy.sparse`` stand-in included) with the kernels on the
emulator, as in ``tests/test_cuda_path_simulated.py``, whose simulated
runtime it borrows.  torch CUDA tensors are not simulated (the fake has no
torch CUDA device): the DLPack conversion of torch sparse tensors to cupyx
is tested directly on CPU tensors, whose DLPack the fake's ``from_dlpack``
imports as it would a GPU's.

Every result is compared with the float64 truth of the densified matrix
(within the randomized SVD's error bound) and with the CPU backend on the
same seed (to rounding: the backends differ only in Omega's last bits and
in summation orders; see :func:`bounds.rounding_bounds`).
"""
from __future__ import annotations

import math
import sys

import fake_cupy
from bounds import halko_bound, rounding_bounds
import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu import backends, operators, sparse_input
from liam_gpu.backends import emulator_available
from liam_gpu.rangefinder import sketch_width
from test_cuda_path_simulated import cp  # noqa: F401  (the simulated-CUDA fixture)

sp = pytest.importorskip("scipy.sparse")

pytestmark = pytest.mark.skipif(not emulator_available(), reason="the emulator (and the simulated GPU) need g++")

K, P, Q = 6, 10, 2
FORMATS = ["csr", "csc", "coo"]
#: Where the factorization runs and what the caller passes: scipy on cpu / emulator / the simulated GPU,
#: and cupyx matrices on the simulated GPU.
PLACES = ["cpu", "emulator", "cuda", "cupyx"]


@pytest.fixture
def place(request, monkeypatch):
    """One of :data:`PLACES`; the CUDA ones install the simulated GPU."""
    if request.param in ("cuda", "cupyx"):
        request.getfixturevalue("cp")
    return request.param


# --------------------------------------------------------------------------- matrices and bounds


def _blocks(rng, m: int, n: int, dtype=np.float64, blocks: int = 40) -> "sp.csr_matrix":
    """A sparse matrix with a known, well separated spectrum ``exp(-i / 4)``: permuted rank-one blocks.

    Block ``i`` is ``exp(-i / 4) u_i v_i^T`` on its own rows and columns with unit
    ``u_i``, ``v_i`` (a few zeros inside), so those are the singular values
    exactly, and the matrix has one block's worth of entries per row.
    """
    blocks = min(blocks, m // 3, n // 3)  # at least 3 rows and columns a block
    rows = np.array_split(rng.permutation(m), blocks)
    cols = np.array_split(rng.permutation(n), blocks)
    r, c, v = [], [], []
    for i, (ri, ci) in enumerate(zip(rows, cols)):
        u = rng.standard_normal(len(ri))
        w = rng.standard_normal(len(ci))
        u[0] = 0.0  # a stored zero: kept, and harmless
        u /= np.linalg.norm(u)
        w /= np.linalg.norm(w)
        block = math.exp(-i / 4) * np.outer(u, w)
        r.append(np.repeat(ri, len(ci)))
        c.append(np.tile(ci, len(ri)))
        v.append(block.ravel())
    a = sp.coo_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(m, n))
    return a.tocsr().astype(dtype)


def _shape(tall: bool) -> tuple[int, int]:
    return (240, 120) if tall else (120, 240)


def _host(x):
    return x.get() if isinstance(x, fake_cupy.ndarray) else np.asarray(x)


def _snapshot(a) -> list[np.ndarray]:
    """Copies of every array a sparse matrix holds (scipy or fake cupyx), to prove it unmodified."""
    host = a.get() if isinstance(a, fake_cupy._SparseMatrix) else a
    names = ("data", "row", "col") if host.format == "coo" else ("data", "indices", "indptr")
    return [np.array(getattr(host, n)) for n in names] + [np.array(host.shape)]


def _assert_unmodified(a, before: list[np.ndarray]) -> None:
    for old, new in zip(before, _snapshot(a), strict=True):
        np.testing.assert_array_equal(new, old)
        assert new.dtype == old.dtype


@pytest.fixture
def no_densify(monkeypatch):
    """Record every ``toarray``/``todense`` of a scipy or fake cupyx sparse matrix: ``calls`` holds their shapes."""
    calls: list[tuple[int, ...]] = []
    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        for name in ("toarray", "todense"):
            original = getattr(cls, name)

            def spy(self, *args, _original=original, **kwargs):
                calls.append(tuple(self.shape))
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, spy)
    fake_cupy.SPARSE_DENSIFIED.clear()
    yield calls
    calls.extend(shape for shape, _ in fake_cupy.SPARSE_DENSIFIED)


def _caller_input(a, fmt: str, place: str):
    """The scipy matrix ``a`` as the caller passes it at ``place``: scipy of ``fmt``, or a fake cupyx matrix of it."""
    host = a.asformat(fmt)
    if place == "cupyx":
        return getattr(sys.modules["cupyx.scipy.sparse"], f"{fmt}_matrix")(host)
    return host


def _device(place: str):
    return {"cpu": "cpu", "emulator": "emulator", "cuda": "cuda", "cupyx": None}[place]


def _check_family(out, place: str, dtype) -> None:
    for x in out:
        if place == "cupyx":
            assert isinstance(x, fake_cupy.ndarray) and x.device.id == 0, type(x)
        else:
            assert type(x) is np.ndarray, type(x)
        assert x.dtype == dtype


# --------------------------------------------------------------------------- randomized_svd everywhere


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tall", [True, False], ids=["tall", "wide"])
@pytest.mark.parametrize("center", [False, True], ids=["plain", "centred"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_randomized_svd_against_the_truth_and_the_cpu(place, fmt, center, tall, dtype, no_densify):
    m, n = _shape(tall)
    a = _blocks(np.random.default_rng(1), m, n, dtype)
    dense = a.toarray().astype(np.float64)
    truth = dense - dense.mean(axis=0) if center else dense
    s_true = np.linalg.svd(truth, compute_uv=False)
    ref = lg.randomized_svd(a, K, n_iter=Q, random_state=7, center=center, device="cpu")
    x = _caller_input(a, fmt, place)
    before = _snapshot(x)
    no_densify.clear()
    got = lg.randomized_svd(x, K, n_iter=Q, random_state=7, center=center, device=_device(place))
    assert no_densify == []  # never densified, not even by rows (no error estimate asked for)
    _assert_unmodified(x, before)
    _check_family(got, place, dtype)
    u, s, vt = (_host(v).astype(np.float64) for v in got)
    # The same seed as the CPU: the same answer to rounding (bitwise on the CPU, whatever the format).
    s_tol, vec_tol = rounding_bounds(dense, s_true, K, dtype)
    if place == "cpu":
        for mine, theirs in zip(got, ref):
            np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(s, ref[1], rtol=0, atol=s_tol)
    np.testing.assert_allclose(u, ref[0], rtol=0, atol=vec_tol)
    np.testing.assert_allclose(vt, ref[2], rtol=0, atol=vec_tol)
    # Against the float64 truth: within Halko's bound (plus the rounding), singular values within it
    # too (Weyl), never above the true ones (U^T A V is a compression of A), orthonormal factors.
    bound = halko_bound(s_true, K, sketch_width(K, P, min(m, n)), Q) + s_tol
    assert np.linalg.norm(truth - (u * s) @ vt, 2) <= bound
    assert np.all(s_true[:K] - s <= bound) and np.all(s <= s_true[:K] + s_tol)
    unit = 100 * np.finfo(dtype).eps * math.sqrt(max(m, n))
    assert np.abs(u.T @ u - np.eye(K)).max() <= unit and np.abs(vt @ vt.T - np.eye(K)).max() <= unit


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_svd_compress_tol_mode_and_its_residual_by_row_blocks(place, no_densify, monkeypatch):
    """A nearly exact factorization makes the engine measure the residual: by row blocks, never the whole matrix."""
    m, n = 240, 120
    a = _blocks(np.random.default_rng(2), m, n)
    dense = a.toarray()
    rows = 16
    monkeypatch.setattr(operators, "_RESIDUAL_BLOCK", rows * n)  # 15 row blocks of 16 rows
    x = _caller_input(a, "csr", place)
    no_densify.clear()
    for kwargs in (dict(k=30), dict(tol=1e-3)):
        lr = lg.svd_compress(x, random_state=3, device=_device(place), **kwargs)
        ref = lg.svd_compress(a, random_state=3, device="cpu", **kwargs)
        assert lr.rank == ref.rank
        u, s, vt = (_host(v) for v in (lr.U, lr.S, lr.Vt))
        true = np.linalg.norm(dense - (u * s) @ vt) / np.linalg.norm(dense)
        floor = max(true, 1e-13)
        assert floor / 2 <= lr.relative_error <= 2 * floor, (lr.relative_error, true)
        if "tol" in kwargs:
            assert true <= kwargs["tol"]
    assert no_densify and all(shape[0] <= rows for shape in no_densify), no_densify


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_pca_eigsh_and_range_finder_take_sparse_input_everywhere(place):
    rng = np.random.default_rng(3)
    a = _blocks(rng, 240, 120)
    x = _caller_input(a, "csc", place)
    device = _device(place)
    dense = a.toarray()
    s_true = np.linalg.svd(dense - dense.mean(axis=0), compute_uv=False)
    ours, ref = lg.pca(x, 4, random_state=1, device=device), lg.pca(a, 4, random_state=1, device="cpu")
    s_tol, vec_tol = rounding_bounds(dense, s_true, 4, np.float64)
    np.testing.assert_allclose(_host(ours.singular_values), ref.singular_values, rtol=0, atol=s_tol)
    np.testing.assert_allclose(_host(ours.components), ref.components, rtol=0, atol=vec_tol)
    # Two summation orders of n terms: within n eps max|a| of each other.
    mean_tol = dense.shape[0] * np.finfo(np.float64).eps * np.abs(dense).max()
    np.testing.assert_allclose(_host(ours.mean), dense.mean(axis=0), rtol=0, atol=mean_tol)
    # The explained variance ratio's denominator is the centred matrix's exact squared norm.
    total = np.sum((dense - dense.mean(axis=0)) ** 2)
    np.testing.assert_allclose(_host(ours.explained_variance_ratio), _host(ours.singular_values) ** 2 / total,
                               rtol=1e-12)
    # A symmetric sparse matrix: eigenpairs (signed) of A^T A's sparse square, and the range finder.
    sym = (a.T @ a).tocsr()
    sym_x = _caller_input(sym, "csr", place)
    lam = np.linalg.eigvalsh(sym.toarray())[::-1]
    vals, vecs = lg.randomized_eigsh(sym_x, 4, n_iter=4, random_state=2, device=device)
    lam_tol = rounding_bounds(sym.toarray(), lam, 4, np.float64)[0]
    np.testing.assert_allclose(_host(vals), lam[:4], rtol=0, atol=lam_tol + 1e-6 * lam[0])
    np.testing.assert_allclose(sym.toarray() @ _host(vecs), _host(vecs) * _host(vals), atol=1e-5 * lam[0])
    q = _host(lg.randomized_range_finder(x, size=12, n_iter=3, random_state=4, device=device))
    assert q.shape == (240, 12)
    np.testing.assert_allclose(q.T @ q, np.eye(12), atol=1e-12)
    ref_q = lg.randomized_range_finder(a, size=12, n_iter=3, random_state=4, device="cpu")
    # Same span as the CPU's (to rounding): the projections agree.
    np.testing.assert_allclose(q @ (q.T @ ref_q), ref_q, atol=1e-8)


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_non_canonical_input_is_summed_on_a_copy(place):
    """Duplicates and unsorted indices: the same answer as the canonical matrix, the caller's arrays untouched."""
    a = _blocks(np.random.default_rng(4), 120, 60)
    coo = a.tocoo()
    half = coo.data / 2  # every entry stored twice, halves, in reversed order within each row
    order = np.lexsort((-coo.col, coo.row))
    dup = sp.coo_matrix((np.concatenate([half[order], half[order]]),
                         (np.concatenate([coo.row[order]] * 2), np.concatenate([coo.col[order]] * 2))),
                        shape=a.shape)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dup.row, minlength=a.shape[0]))])
    rows_sorted = np.argsort(dup.row, kind="stable")
    messy = sp.csr_matrix((dup.data[rows_sorted], dup.col[rows_sorted], indptr), shape=a.shape)
    assert not messy.has_canonical_format
    x = _caller_input(messy, "csr", place)
    before = _snapshot(x)
    got = lg.randomized_svd(x, 4, random_state=5, device=_device(place))
    _assert_unmodified(x, before)
    ref = lg.randomized_svd(a, 4, random_state=5, device="cpu")
    dense = a.toarray()
    s_tol, vec_tol = rounding_bounds(dense, np.linalg.svd(dense, compute_uv=False), 4, np.float64)
    np.testing.assert_allclose(_host(got[1]), ref[1], rtol=0, atol=s_tol)
    np.testing.assert_allclose(_host(got[0]), ref[0], rtol=0, atol=vec_tol)


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_degenerate_sparse_input(place):
    """All zeros (nothing stored), one entry, integer values: exact answers on every backend."""
    device = _device(place)
    zero = _caller_input(sp.csr_matrix((50, 20)), "csr", place)
    u, s, vt = (_host(v) for v in lg.randomized_svd(zero, 3, device=device))
    np.testing.assert_array_equal(s, 0.0)
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(vt))
    assert lg.svd_compress(zero, 3, device=device).relative_error == 0.0
    one = _caller_input(sp.csr_matrix(([3.0], ([7], [11])), shape=(30, 40)), "coo", place)
    u, s, vt = (_host(v) for v in lg.randomized_svd(one, 1, device=device))
    np.testing.assert_allclose(s, [3.0], rtol=1e-15)
    assert abs(u[7, 0]) == pytest.approx(1.0, abs=1e-15) and abs(vt[0, 11]) == pytest.approx(1.0, abs=1e-15)
    if place != "cupyx":  # cupyx holds no integer values; scipy's are computed in float64 on every backend
        ints = sp.csr_matrix(np.diag(np.arange(1, 9)).astype(np.int32))
        _, s, _ = lg.randomized_svd(ints, 3, device=device)
        assert s.dtype == np.float64
        np.testing.assert_allclose(s, [8.0, 7.0, 6.0], rtol=1e-13)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_nan_in_the_stored_entries_names_the_argument(place):
    a = _blocks(np.random.default_rng(5), 120, 60)
    bad = a.copy()
    bad.data[17] = np.nan
    x = _caller_input(bad, "csr", place)
    device = _device(place)
    with pytest.raises(ValueError, match="a contains NaN or Inf"):
        lg.randomized_svd(x, 3, device=device)
    with pytest.raises(ValueError, match="a contains NaN or Inf"):
        lg.svd_compress(x, tol=0.1, device=device)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        lg.pca(x, 3, device=device)
    inf = a.copy()
    inf.data[3] = np.inf
    with pytest.raises(ValueError, match="a contains NaN or Inf"):
        lg.randomized_svd(_caller_input(inf, "csc", place), 3, center=True, device=device)


@pytest.mark.parametrize("place", PLACES, indirect=True)
def test_complex_empty_and_bad_centre_name_the_argument(place):
    device = _device(place)
    if place != "cupyx":
        with pytest.raises(TypeError, match="a is complex"):
            lg.randomized_svd(sp.csr_matrix(np.eye(4, dtype=np.complex128)), 2, device=device)
    else:
        cs = sys.modules["cupyx.scipy.sparse"]
        with pytest.raises(TypeError, match="a is complex"):
            lg.randomized_svd(cs.csr_matrix(sp.csr_matrix(np.eye(4, dtype=np.complex128))), 2)
    with pytest.raises(ValueError, match="a is empty"):
        lg.randomized_svd(_caller_input(sp.csr_matrix((0, 5)), "csr", place), 1, device=device)
    x = _caller_input(_blocks(np.random.default_rng(6), 60, 30), "csr", place)
    with pytest.raises(ValueError, match=r"center must be True, False or 30 column means"):
        lg.randomized_svd(x, 2, center=np.zeros(29), device=device)


def test_cupyx_input_goes_where_device_says_and_comes_back_on_its_gpu(cp):
    """As dense CuPy input: computed on the CPU, the emulator or another GPU when asked, CuPy results on its own GPU."""
    cs = sys.modules["cupyx.scipy.sparse"]
    a = _blocks(np.random.default_rng(7), 120, 60)
    ref = lg.randomized_svd(a, 4, random_state=1, device="cpu")
    with cp.cuda.Device(1):
        x = cs.csr_matrix(a)
    dense = a.toarray()
    s_tol, vec_tol = rounding_bounds(dense, np.linalg.svd(dense, compute_uv=False), 4, np.float64)
    for device in (None, "cuda", "cuda:0", "cpu", "emulator"):
        before = _snapshot(x)
        got = lg.randomized_svd(x, 4, random_state=1, device=device)
        _assert_unmodified(x, before)
        assert all(isinstance(v, cp.ndarray) and v.device.id == 1 for v in got), device
        np.testing.assert_allclose(got[1].get(), ref[1], rtol=0, atol=s_tol, err_msg=str(device))
        np.testing.assert_allclose(got[0].get(), ref[0], rtol=0, atol=vec_tol, err_msg=str(device))
    # Factored on GPU 0 for a matrix of GPU 1: the kernels ran on GPU 0 only.
    backends.get_backend("cuda:0").runtime.launches = 0
    backends.get_backend("cuda:1").runtime.launches = 0
    lg.randomized_svd(x, 4, device="cuda:0")
    assert backends.get_backend("cuda:0").runtime.launches > 0
    assert backends.get_backend("cuda:1").runtime.launches == 0


def test_scipy_input_on_cuda_is_copied_once_as_csr_of_the_compute_dtype(cp, monkeypatch):
    cs = sys.modules["cupyx.scipy.sparse"]
    made = []
    original = cs.csr_matrix.__init__

    def counted(self, arg1, *args, **kwargs):
        made.append(type(arg1).__name__)
        original(self, arg1, *args, **kwargs)

    monkeypatch.setattr(cs.csr_matrix, "__init__", counted)
    rng = np.random.default_rng(8)
    ints = rng.integers(-3, 4, (120, 60)) * (rng.random((120, 60)) < 0.1)
    a = sp.coo_matrix(ints.astype(np.int32))  # cupyx holds no integers: converted to float64 on the host
    u, s, vt = lg.randomized_svd(a, 3, device="cuda")
    assert made == ["csr_matrix"]  # one host CSR copied to the device; the transpose made there
    assert u.dtype == np.float64 and type(u) is np.ndarray
    np.testing.assert_allclose(s, lg.randomized_svd(a, 3, device="cpu")[1], rtol=1e-12)


# --------------------------------------------------------------------------- the fake itself


def test_fake_cupyx_refuses_what_cupyx_refuses(cp):
    cs = sys.modules["cupyx.scipy.sparse"]
    host = sp.random(8, 5, density=0.5, format="csr", random_state=0)
    a = cs.csr_matrix(host)
    assert cs.issparse(a) and not cs.issparse(host) and a.format == "csr" and a.device.id == 0
    np.testing.assert_array_equal(a.get().toarray(), host.toarray())
    with pytest.raises(ValueError, match="1-D cupy arrays"):  # host arrays are not device memory
        cs.csr_matrix((host.data, host.indices, host.indptr), shape=host.shape)
    with pytest.raises(ValueError, match="float32, float64"):  # no integer values in cupyx
        cs.csr_matrix(host.astype(np.int64))
    with pytest.raises(TypeError, match="numpy"):
        a @ np.ones((5, 2))
    with pytest.raises(TypeError):
        np.asarray(a)
    y = a @ cp.ones((5, 2))
    assert isinstance(y, cp.ndarray) and y.flags.f_contiguous  # cuSPARSE's SpMM answers in Fortran order
    # From device arrays: values shared, int64 indices made int32 (cupyx's choice where they fit).
    data, indices, indptr = (cp.asarray(v) for v in (host.data, host.indices.astype(np.int64), host.indptr))
    b = cs.csr_matrix((data, indices, indptr), shape=host.shape)
    assert b.indices.dtype == np.int32 and np.shares_memory(b.data._a, data._a)
    with cp.cuda.Device(1):
        with pytest.raises(ValueError, match="device 0"):
            a @ cp.ones((5, 2))
    with pytest.raises(NotImplementedError):
        a.multiply(a)


# --------------------------------------------------------------------------- torch sparse tensors


def test_torch_sparse_to_cupyx_through_dlpack(cp):
    """The DLPack conversion of CUDA sparse tensors, run on CPU tensors (the fake's from_dlpack imports those)."""
    torch = pytest.importorskip("torch")
    a = _blocks(np.random.default_rng(9), 60, 30).tocoo()
    coo = torch.sparse_coo_tensor(np.vstack([a.row, a.col]), a.data, a.shape)
    csr = coo.to_sparse_csr()
    for t in (coo, csr):
        m = sparse_input.cupyx_of_torch(t, np.float64)
        assert isinstance(m, sys.modules["cupyx.scipy.sparse"].csr_matrix) and m.dtype == np.float64
        np.testing.assert_array_equal(m.get().toarray(), a.toarray())
    shared = sparse_input.cupyx_of_torch(csr, np.float64)
    assert np.shares_memory(shared.data._a, csr.values().numpy())  # CSR values: zero-copy
    half = sparse_input.cupyx_of_torch(csr.to(torch.float16), np.float32)
    assert half.dtype == np.float32
    # float16 values widened exactly: each is a's entry rounded once to float16.
    np.testing.assert_array_equal(half.get().toarray(), a.toarray().astype(np.float16).astype(np.float32))


def test_torch_cpu_sparse_on_every_device_comes_back_as_tensors(cp):
    torch = pytest.importorskip("torch")
    a = _blocks(np.random.default_rng(10), 120, 60).tocoo()
    t = torch.sparse_coo_tensor(np.vstack([a.row, a.col]), a.data, a.shape).to_sparse_csr()
    ref = lg.randomized_svd(a, 4, device="cpu")
    dense = a.toarray()
    s_tol, vec_tol = rounding_bounds(dense, np.linalg.svd(dense, compute_uv=False), 4, np.float64)
    for device in (None, "emulator", "cuda", "cuda:1"):
        u, s, vt = lg.randomized_svd(t, 4, device=device)
        assert isinstance(u, torch.Tensor) and u.device.type == "cpu" and u.layout == torch.strided
        np.testing.assert_allclose(s.numpy(), ref[1], rtol=0, atol=s_tol, err_msg=str(device))
        np.testing.assert_allclose(u.numpy(), ref[0], rtol=0, atol=vec_tol, err_msg=str(device))


def test_torch_sparse_that_requires_grad_or_of_another_layout_is_refused_by_name():
    torch = pytest.importorskip("torch")
    a = _blocks(np.random.default_rng(11), 40, 20).tocoo()
    t = torch.sparse_coo_tensor(np.vstack([a.row, a.col]), a.data, a.shape, requires_grad=True)
    for call in (lambda: lg.randomized_svd(t, 2), lambda: lg.svd_compress(t, 2)):
        with pytest.raises(ValueError, match="a is a sparse tensor .* requires grad"):
            call()
    with pytest.raises(ValueError, match="x is a sparse tensor that requires grad"):
        lg.pca(t, 2)
    square = torch.sparse_coo_tensor(np.vstack([a.row % 20, a.col]), a.data, (20, 20), requires_grad=True)
    with pytest.raises(ValueError, match="M is a sparse tensor that requires grad"):
        lg.randomized_eigsh(square, 2)
    with torch.no_grad():  # no graph asked for: factored as usual
        assert lg.randomized_svd(t, 2)[1].shape == (2,)
    with pytest.raises(TypeError, match="a is a torch.sparse_csc tensor"):
        lg.randomized_svd(t.detach().to_sparse_csc(), 2)
    batched = torch.stack([t.detach(), t.detach()])
    with pytest.raises(ValueError, match="a must be 2-D when sparse"):
        lg.randomized_svd(batched, 2)
