"""Argument checks of :mod:`liam_gpu.dask`'s functions, on the client, before any graph is built."""
from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from .. import arrays, backends, validation
from ..svd import check_center_means

__all__ = ["check_dask_array", "check_row_chunks", "check_svd_chunks", "check_device", "check_center",
           "host_copy"]


def check_dask_array(name: str, x: Any) -> Any:
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__}; "
            "for in-memory arrays use liam_gpu.transform_matrix / liam_gpu.svd_compress"
        )
    return x


def check_row_chunks(name: str, x: Any) -> None:
    """Every chunk must hold whole rows (one chunk along the last axis) of a known width.

    The row chunk sizes may be unknown (a lazy map needs none; the SVD checks
    its chunks with :func:`check_svd_chunks`).
    """
    if any(math.isnan(c) for c in x.chunks[-1]):
        raise ValueError(
            f"{name} has unknown chunk sizes {x.chunks}; call {name}.compute_chunk_sizes() first"
        )
    if x.numblocks[-1] != 1:
        axis = x.ndim - 1
        raise ValueError(
            f"{name} is chunked along its last axis ({x.numblocks[-1]} chunks {x.chunks[-1]}); "
            f"each chunk must hold whole rows: rechunk with {name}.rechunk({{{axis}: -1}}) "
            "(not done implicitly: it moves all of the array between workers)"
        )


def check_svd_chunks(x: Any) -> None:
    """Every chunk size of ``x`` must be known (the bases' shapes follow them); any chunking is taken."""
    if any(math.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError(f"x has unknown chunk sizes {x.chunks}; call x.compute_chunk_sizes() first")


def check_device(device: Any) -> None:
    """The ``device=`` name is resolved on each worker; here only its spelling is checked."""
    if device is not None and not isinstance(device, str):
        raise TypeError(
            "device must be None, 'auto', 'cpu', 'cuda', 'cuda:N' or 'emulator' for Dask arrays, "
            f"got {type(device).__name__}"
        )
    backends.canonical_device(device)


def check_center(center: Any, n: int) -> np.ndarray | None:
    """``center=``'s column means (host float64, length ``n``), or None for ``center=True`` (computed later)."""
    if isinstance(center, (bool, np.bool_)):
        return None
    if isinstance(center, da.Array):
        center = center.compute()  # n numbers: the client holds n x l matrices anyway
    mean = host_copy("center", center)
    validation.float_dtype("center", mean)  # complex, strings, objects: a TypeError naming center
    return check_center_means(mean, n)


def host_copy(name: str, value: Any) -> np.ndarray:
    """A numpy copy of a small argument: shipped to every worker, and safe from later changes."""
    kind = arrays.common_kind(**{name: value})
    with arrays.caller_stream(kind):
        host = arrays.from_compute(arrays.to_compute(value, kind, name=name), arrays.NUMPY)
    return np.array(host, copy=True)
