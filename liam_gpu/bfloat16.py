"""bfloat16 carried as ``uint16`` bits, for array modules that lack the dtype.

numpy and CuPy have no bfloat16 dtype, yet torch users hand us bfloat16
tensors and expect bfloat16 back, stored as such (half the memory traffic of
float32).  Such a tensor is viewed, without a copy, as ``uint16`` holding the
bits; the kernels read them as ``lg_bf16`` (``kernels/common.cuh``) and the
CPU path widens them here.  Every function takes numpy or CuPy arrays alike.

A bfloat16 value is the top 16 bits of a float32, so widening is exact and
narrowing is a rounding of the low 16 bits: to nearest, ties to even (the rule
of torch's ``Tensor.to(torch.bfloat16)`` and of the kernels' ``cvt.rn.bf16.f32``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .xp import array_module

#: The dtype that carries bfloat16 bits.
CARRIER = np.dtype(np.uint16)

_EXPONENT = 0x7F80  # all ones: inf or NaN


def to_float32(bits: Any) -> Any:
    """Widen bfloat16 bits (``uint16``) to float32 values, exactly (a new array)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def from_float32(values: Any, out: Any | None = None) -> Any:
    """Round float32 values to bfloat16 bits: to nearest, ties to even.

    Finite values too large for bfloat16 round to inf; NaN stays a quiet NaN.

    Parameters
    ----------
    values
        float32 array.
    out
        Optional ``uint16`` array of the same shape to write the bits into.

    Returns
    -------
    array
        ``uint16`` bits (``out`` when given).
    """
    xp = array_module(values)
    u = xp.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly
    # when the dropped half is above one half, or equal to it with the kept part odd.
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    quiet = ((u >> 16) | 0x40).astype(np.uint16)
    result = xp.where(is_nan, quiet, rounded)
    if out is None:
        return result
    out[...] = result
    return out


def nonfinite(bits: Any) -> Any:
    """Boolean mask of the inf and NaN values among bfloat16 bits."""
    return (bits & _EXPONENT) == _EXPONENT
