"""Dask arrays: :func:`transform_matrix` and :func:`svd_compress` across a cluster.

A matrix too large for one machine lives as a ``dask.array`` chunked along its
rows (hundreds of millions of signals or embeddings), one Dask worker per GPU
with ``dask-cuda``.  Every chunk is computed by the single-machine code of
this package on the worker that holds it (our kernels on a GPU worker, numpy
on a CPU worker, CuPy or numpy chunks alike); nothing here runs a cluster of
its own.

* :func:`transform_matrix` is a lazy ``map_blocks`` of
  :func:`liam_gpu.transform_matrix`: same row chunks, same chunk type.
* :func:`svd_compress` is the randomized range finder of
  :func:`liam_gpu.svd_compress` with each pass over ``A`` one Dask
  computation: per-chunk sketches, products and Gram matrices, summed across
  chunks by a tree reduction; the small matrices (``l x l`` factors, the
  ``n x l`` right-hand bases) are handled on the client.  For a tall matrix
  in row chunks (or a wide one in column chunks) ``A`` is read once per pass
  (``q + 2`` passes) and never gathered, and the ``m x l`` bases stay on the
  workers, in the chunks of ``A``; chunks along the other axis take ``2 q +
  2`` passes with the long bases on the client.  A grid of chunks (several
  along both axes) is never rechunked: every product multiplies each block
  by the matching piece of the small factor and sums over the contracted
  block axis, ``2 q + 2`` passes with the long bases on the workers.
  Centring (``center=``) and scipy.sparse chunks are applied inside each
  block's products.

The operator is oriented by the shape alone, as in memory, and the sketch
``Omega`` is the Philox stream of :mod:`liam_gpu.philox`, indexed by
``(seed, column of the operator, sketch column)``: every chunk multiplies by
its rows of the same ``Omega`` the whole matrix would, so the result does not
depend on the chunking or on the backend of the workers, and equals the
single-machine ``svd_compress`` on the same data and seed to rounding.
``docs/distributed.md`` covers deployment and measurements.

The package, top down (arrows point down; nothing in the core imports it):

==================  ===========================================================
``transform``       :func:`transform_matrix`
``svd``             :func:`svd_compress`: arguments, orientation, layout
``row_blocks``      :class:`DaskOperator`: whole-row chunks (the fused passes)
``column_blocks``   whole-column chunks, through ``S = T^T``
``grid_blocks``     grids of chunks, summed over the contracted block axis
``tasks``           the per-block tasks of every pass, on the workers
``block``           one block on its worker: its backend and its products
``checks``          argument checks on the client
==================  ===========================================================
"""
from __future__ import annotations

try:
    import dask  # noqa: F401
except ImportError as exc:  # dask is an optional extra
    raise ImportError(
        "liam_gpu.dask needs Dask; install it with: pip install 'liam-gpu[dask]'"
    ) from exc

from .row_blocks import DaskOperator  # noqa: F401  (liam_gpu.dask.DaskOperator, named by operators.py)
from .svd import svd_compress
from .transform import transform_matrix

__all__ = ["transform_matrix", "svd_compress"]
