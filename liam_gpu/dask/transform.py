"""The Dask :func:`transform_matrix`: a lazy ``map_blocks`` of :func:`liam_gpu.transform_matrix`."""
from __future__ import annotations

from typing import Any

import numpy as np
from dask import delayed
from dask.array.utils import meta_from_array

from .. import arrays, validation
from ..transform import transform_matrix as _local_transform
from .checks import check_dask_array, check_device, check_row_chunks, host_copy

__all__ = ["transform_matrix"]


def transform_matrix(
                     x: Any,
                     weights: Any,
                     bias: Any = None,
                     activation: str | None = None,
                     *,
                     device: Any = None,
                     check_finite: bool = True,
                     ) -> Any:
    """``activation(x @ weights.T + bias)`` for a Dask array, chunk by chunk, lazily.

    Parameters
    ----------
    x
        ``dask.array.Array`` of shape ``(..., d_in)`` with numpy or CuPy
        chunks, chunked along any axis but the last: every chunk must hold
        whole rows (``x.numblocks[-1] == 1``).  A chunking along the features
        is refused rather than silently rechunked (a rechunk moves all of
        ``x`` between workers); ``x.rechunk({-1: -1})`` is the fix the error
        message names.
    weights
        ``(d_out, d_in)`` numpy, CuPy or torch array (one matrix for all rows;
        batched weights are not supported here).  A copy travels once to every
        worker and is moved to each chunk's device there.
    bias
        ``(d_out,)`` or None.
    activation
        As for :func:`liam_gpu.transform_matrix`.
    device
        Where each chunk is computed, resolved on the worker that holds it:
        ``None``/``"auto"`` (a CuPy chunk's own GPU, else the worker's GPU if
        it has one, else its CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        ``"emulator"``.
    check_finite
        Reject NaN/Inf, per chunk when computed (and in ``weights``/``bias``
        at once).

    Returns
    -------
    dask.array.Array
        ``(..., d_out)``, not computed: the row chunks of ``x``, one chunk
        along the last axis, chunks of ``x``'s type (its ``_meta``), dtype as
        for :func:`liam_gpu.transform_matrix`.

    Raises
    ------
    TypeError
        ``x`` not a Dask array; complex or non-numeric ``x``; ``device`` not
        a string.
    ValueError
        ``x`` chunked along its last axis or of unknown width (unknown row
        chunk sizes are fine); shapes that do
        not match; batched weights; an unknown activation or device; NaN/Inf
        in ``weights``/``bias``.
    """
    x = check_dask_array("x", x)
    validation.check_ndim("x", x, min_ndim=1)
    validation.float_dtype("x", x, allow_half=True)
    check_row_chunks("x", x)
    check_device(device)
    w = host_copy("weights", weights)
    b = None if bias is None else host_copy("bias", bias)
    if w.ndim != 2:
        raise ValueError(
            f"weights must be 2-D (d_out, d_in) for a Dask array, got shape {tuple(w.shape)}; "
            "batched weights are supported by liam_gpu.transform_matrix on in-memory arrays only"
        )
    # One row of zeros through the single-machine transform checks every
    # argument now (with its messages) and gives the result dtype and width.
    probe = _local_transform(
        np.zeros((1, int(x.shape[-1])), dtype=x.dtype), w, b, activation, device="cpu",
        check_finite=check_finite,
    )
    out_dtype, d_out = probe.dtype, int(probe.shape[-1])
    # Delayed: the weights are one key of the graph, sent once to each worker.
    return x.map_blocks(
        _transform_block, delayed(w), None if b is None else delayed(b), activation, device,
        check_finite, out_dtype,
        chunks=x.chunks[:-1] + ((d_out,),),
        dtype=out_dtype,
        meta=meta_from_array(x, ndim=x.ndim, dtype=out_dtype),
    )


def _transform_block(block: Any, weights: np.ndarray, bias: np.ndarray | None, activation: str | None,
                     device: Any, check_finite: bool, out_dtype: np.dtype) -> Any:
    """One chunk of :func:`transform_matrix`, on a worker."""
    kind = arrays.kind_of(block)
    d_out = int(weights.shape[0])
    if block.size == 0:  # a zero-row chunk: nothing to compute, the single-machine call refuses it
        return arrays.array_module(block).empty(tuple(block.shape[:-1]) + (d_out,), dtype=out_dtype)
    with arrays.caller_stream(kind):
        w = arrays.from_compute(weights, kind)
        b = None if bias is None else arrays.from_compute(bias, kind)
        return _local_transform(block, w, b, activation, device=device, check_finite=check_finite)
