"""numpy or CuPy: which array module owns a compute array.

A leaf module (it imports nothing of the package), so that both
:mod:`liam_gpu.arrays` and the modules below it (:mod:`liam_gpu.bfloat16`)
can ask without an import cycle.  CuPy is never imported here: an array can
only be a CuPy array once the caller has imported CuPy.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

_CUPY_MODULE = "cupy"


def is_cupy(x: Any) -> bool:
    """Whether ``x`` is a ``cupy.ndarray``."""
    cupy = sys.modules.get(_CUPY_MODULE)
    return cupy is not None and isinstance(x, cupy.ndarray)


def array_module(x: Any):
    """``numpy`` or ``cupy``, whichever owns ``x`` (a compute array)."""
    if is_cupy(x):
        import cupy

        return cupy
    return np
