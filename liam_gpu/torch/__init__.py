"""PyTorch face of liam-gpu: autograd, ``torch.compile``, and drop-in layers.

Laid out as torch lays out its own: :mod:`~liam_gpu.torch.functional` (the
differentiable :func:`transform_matrix`, :class:`TransformFunction` and the
custom operator ``torch.ops.liam_gpu.transform_matrix``),
:mod:`~liam_gpu.torch.nn` (:class:`Linear`, :class:`LowRankLinear`) and
:mod:`~liam_gpu.torch.allocator` (:func:`use_torch_allocator`).  The names
below are re-exported here, so ``liam_gpu.torch.Linear`` and the like keep
working.

This package is the only part of liam-gpu that imports torch at import time,
with :mod:`liam_gpu.torch_ops`, which :mod:`liam_gpu.dispatch` loads only for
torch tensors (torch is then imported already); nothing else below it does.
"""
from .allocator import use_torch_allocator
from .functional import TransformFunction, result_dtype, transform_matrix
from .lowrank import pca_lowrank, svd_lowrank
from .nn import CompressionReport, Linear, LowRankLinear

__all__ = [
    "CompressionReport",
    "Linear",
    "LowRankLinear",
    "TransformFunction",
    "pca_lowrank",
    "svd_lowrank",
    "transform_matrix",
    "use_torch_allocator",
]
