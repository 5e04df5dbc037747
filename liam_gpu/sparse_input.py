"""Sparse input of any library: which one it is, its compute dtype, and its form on a backend.

The SVDs (:mod:`liam_gpu.svd`, :mod:`liam_gpu.pca`, :mod:`liam_gpu.eigsh`)
take scipy.sparse matrices and arrays (any format), cupyx.scipy.sparse
matrices and torch sparse COO/CSR tensors.  This module recognises them
without importing their libraries (a caller who made one has imported it),
picks the dtype they are computed in (as for dense input: integers in
float64, 16-bit floats in float32), and converts each once to the sparse
library of the backend that computes -- scipy CSR on ``cpu`` and
``emulator``, cupyx CSR on a GPU -- for :class:`liam_gpu.operators.SparseOperator`.
Where the input already lives there, memory is shared (torch CPU tensors,
CSR torch CUDA values through DLPack); otherwise it is copied once.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import arrays, validation

__all__ = ["is_sparse", "is_scipy", "is_cupyx", "is_torch", "compute_dtype", "kind_of", "on_backend",
           "scipy_of_torch", "cupyx_of_torch"]


def is_scipy(a: Any) -> bool:
    """Whether ``a`` is a scipy.sparse matrix or array (without importing scipy.sparse to ask)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(a)


def is_cupyx(a: Any) -> bool:
    """Whether ``a`` is a cupyx.scipy.sparse matrix or array (a caller who made one imported cupyx)."""
    sparse = sys.modules.get("cupyx.scipy.sparse")
    return sparse is not None and sparse.issparse(a)


def is_torch(a: Any) -> bool:
    """Whether ``a`` is a sparse (COO or CSR) torch tensor."""
    return arrays.is_tensor(a) and a.layout in (arrays._torch().sparse_coo, arrays._torch().sparse_csr)


def is_sparse(a: Any) -> bool:
    """Whether ``a`` is sparse input of any library we take (scipy, cupyx, torch COO/CSR)."""
    return is_scipy(a) or is_cupyx(a) or is_torch(a)


def compute_dtype(a: Any) -> np.dtype:
    """The dtype a sparse ``a`` is computed in (as for dense input: integers in float64, float16 in float32)."""
    if is_torch(a):
        torch = arrays._torch()
        if a.dtype in (torch.float16, torch.bfloat16):
            return np.dtype(np.float32)
        if a.is_complex():
            raise TypeError(f"a is complex ({a.dtype}); liam_gpu supports real float16/32/64 and integer input only")
        return np.dtype(np.float64) if not a.is_floating_point() else np.dtype(str(a.dtype).split(".")[-1])
    return validation.float_dtype("a", a)


def scipy_of_torch(t: Any) -> Any:
    """A CPU torch sparse tensor as a scipy.sparse CSR matrix sharing its index and value memory."""
    import scipy.sparse

    torch = arrays._torch()
    if t.layout == torch.sparse_csr:
        parts = (t.values(), t.col_indices(), t.crow_indices())
        return scipy.sparse.csr_matrix(tuple(x.detach().numpy() for x in parts), shape=tuple(t.shape))
    c = t.detach().coalesce()
    rows, cols = c.indices().numpy()
    return scipy.sparse.coo_matrix((c.values().numpy(), (rows, cols)), shape=tuple(t.shape)).tocsr()


def cupyx_of_torch(t: Any, dtype: Any) -> Any:
    """A CUDA torch sparse tensor (COO or CSR) as a cupyx.scipy.sparse CSR matrix of ``dtype``, through DLPack.

    The values are shared when they already have ``dtype`` (CSR tensors; a
    coalesced COO tensor's too); the indices come in as int64 and cupyx keeps
    int32 indices where they fit, so those are one copy.  A COO tensor is
    coalesced by torch and compressed by cupyx.  Call inside
    :func:`liam_gpu.arrays.caller_stream` (DLPack hands over on the caller's stream).
    """
    import cupy
    import cupyx.scipy.sparse as cusparse

    torch = arrays._torch()
    wanted = getattr(torch, np.dtype(dtype).name)
    t = t.detach()
    shape = tuple(int(d) for d in t.shape)
    if t.layout == torch.sparse_csr:
        values = t.values().to(wanted)
        parts = (values, t.col_indices(), t.crow_indices())
        return cusparse.csr_matrix(tuple(cupy.from_dlpack(x) for x in parts), shape=shape)
    c = t.coalesce()
    rows, cols = c.indices()
    coo = cusparse.coo_matrix((cupy.from_dlpack(c.values().to(wanted)),
                               (cupy.from_dlpack(rows), cupy.from_dlpack(cols))), shape=shape)
    return coo.tocsr()


def _cupyx_on(backend: Any, a: Any, dtype: Any) -> Any:
    """Sparse ``a`` of any library as a cupyx.scipy.sparse matrix of ``dtype`` on ``backend``'s (current) device.

    scipy.sparse (and CPU tensors, through scipy) is converted on the host to
    ``dtype`` CSR and copied once; a CUDA tensor comes through DLPack; a cupyx
    matrix of another GPU is copied to this one, as dense CuPy arrays are.
    """
    import cupy
    import cupyx.scipy.sparse as cusparse

    if is_torch(a):
        if a.device.type == "cpu":
            a = scipy_of_torch(a)
        else:
            with cupy.cuda.Device(a.device.index or 0):  # torch's device; its stream is the caller's
                a = cupyx_of_torch(a, dtype)
    if is_scipy(a):
        return cusparse.csr_matrix(a.tocsr().astype(dtype, copy=False))
    if a.device.id == backend.device_id:
        return a
    with cupy.cuda.Device(a.device.id):
        src = a.tocsr()  # converted where it lives
    return cusparse.csr_matrix(tuple(cupy.asarray(x) for x in (src.data, src.indices, src.indptr)), shape=src.shape)


def kind_of(a: Any) -> arrays.ArrayKind:
    """The caller's array family for a sparse ``a``: numpy (scipy), CuPy on its GPU (cupyx), torch (tensors)."""
    if is_cupyx(a):
        return arrays.ArrayKind("cupy", f"cuda:{a.device.id}")
    if arrays.is_tensor(a):
        return arrays.kind_of(a)
    return arrays.NUMPY


def on_backend(backend: Any, a: Any, dtype: Any) -> Any:
    """Sparse ``a`` as ``backend``'s sparse library holds it: scipy CSR on cpu/emulator, cupyx on a GPU.

    scipy input (or a CPU tensor's scipy view) goes to :class:`~liam_gpu.operators.SparseOperator`
    as it is (it converts to ``dtype`` CSR once); a GPU's matrix asked for on
    the host is copied there once; on a GPU, :func:`_cupyx_on`.
    """
    if backend.xp is np:  # cpu, emulator: scipy.sparse
        if is_torch(a):
            return scipy_of_torch(a.detach().cpu())
        if is_cupyx(a):
            return a.get()  # device="cpu"/"emulator" asked for a GPU's matrix: one copy to the host
        return a
    return _cupyx_on(backend, a, dtype)
