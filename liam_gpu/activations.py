"""Elementwise activations applied after a transform (the fused epilogue).

The CUDA kernels apply these in registers (``kernels/common.cuh`` mirrors the
codes below); this module holds their names, their numbered codes shared with
the kernels, and the numpy implementation used by the CPU backend.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special

#: Activation name -> the integer code that the kernels take as a template argument.
ACTIVATIONS: dict[str | None, int] = {
    None: 0,
    "relu": 1,
    "gelu": 2,  # exact (erf) form, as torch.nn.functional.gelu
    "gelu_tanh": 3,  # torch's approximate="tanh"
    "silu": 4,
    "sigmoid": 5,
    "tanh": 6,
}


def activation_code(activation: str | None) -> int:
    """Validate an activation name and return its kernel code."""
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be a string or None, got {type(activation).__name__}")
    key = activation.lower() if isinstance(activation, str) else None
    if key == "none":
        key = None
    if key not in ACTIVATIONS:
        names = ", ".join(repr(n) for n in ACTIVATIONS)
        raise ValueError(f"activation={activation!r} is unknown; expected one of {names}")
    return ACTIVATIONS[key]


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_SQRT_HALF = math.sqrt(0.5)


def apply_inplace(y: np.ndarray, code: int) -> np.ndarray:
    """Apply activation ``code`` to the float32/float64 numpy array ``y`` in place."""
    if code == 0:
        return y
    if code == 1:
        np.maximum(y, 0, out=y)
    elif code == 2:
        # 0.5 x erfc(-x / sqrt 2): keeps relative accuracy where 1 + erf cancels
        # (x << 0), like the kernels; scipy's ndtr was 15-200 ulps off there in float64.
        t = special.erfc(y * -_SQRT_HALF)
        t *= 0.5
        y *= t
    elif code == 3:
        t = y * y
        t *= 0.044715 * y
        t += y
        t *= _SQRT_2_OVER_PI
        np.tanh(t, out=t)
        t += 1.0
        t *= 0.5
        y *= t
    elif code == 4:
        y *= special.expit(y)
    elif code == 5:
        special.expit(y, out=y)
    elif code == 6:
        np.tanh(y, out=y)
    else:
        raise ValueError(f"unknown activation code {code}")
    return y


def reference(y: Any, activation: str | None) -> np.ndarray:
    """Float64 reference of ``activation(y)`` for tests (not in place)."""
    y = np.asarray(y, dtype=np.float64).copy()
    return apply_inplace(y, activation_code(activation))
