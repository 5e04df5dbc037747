"""liam-gpu: custom CUDA kernels for fused matrix transforms and randomized low-rank
compression, with a numpy fallback that gives the same answers.

Public names::

    transform_matrix, svd_compress, randomized_svd, randomized_range_finder, randomized_eigsh,
    pca, PCAResult, LowRank, ResolutionWarning, BinaryAlgebra, Scheduler,
    DeviceFault, ChunkError, AllDevicesFailed, current_device, devices

They load on first use (SPEC 1 lazy loading), so ``import liam_gpu`` stays
cheap and never imports CuPy or torch by itself.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

#: Public name -> the submodule that holds it (the operations: the front door, :mod:`~liam_gpu.api`).
_EXPORTS = {
    "AllDevicesFailed": "alda",
    "ChunkError": "alda",
    "BinaryAlgebra": "algebra",
    "DeviceFault": "alda",
    "Scheduler": "alda",
    "current_device": "backends",
    "devices": "backends",
    "LowRank": "lowrank",
    "PCAResult": "pca",
    "pca": "pca",
    "randomized_range_finder": "svd",
    "randomized_eigsh": "eigsh",
    "ResolutionWarning": "svd",
    "randomized_svd": "api",
    "svd_compress": "api",
    "transform_matrix": "api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'liam_gpu' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
