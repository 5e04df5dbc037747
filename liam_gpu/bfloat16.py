"""bfloat16: the ``ml_dtypes`` dtype, and ``uint16`` bits where a library lacks it.

bfloat16 is a real dtype for the library: ``ml_dtypes.bfloat16`` (the dtype
JAX and TensorFlow use) in numpy arrays, and the same dtype in CuPy (14 and
newer) arrays.  Such arrays go in, and arrays of the same dtype come out,
wherever float16 does (:func:`liam_gpu.transform_matrix`; the SVDs compute
16-bit input in float32, as they do float16).  torch ``bfloat16`` tensors are
shared with numpy/CuPy zero-copy as bfloat16 arrays too.

Where the ``uint16`` route stays
--------------------------------
A value's 16 bits are carried in a ``uint16`` array only where a library has
no bfloat16:

* **the kernels** (``kernels/*.cu`` read ``lg_bf16``): the launch layer takes
  ``uint16`` views with ``storage="bfloat16"``; the kernel backend makes those
  views of bfloat16 arrays at its boundary (zero-copy);
* **torch <-> numpy**: ``Tensor.numpy()`` and numpy's DLPack refuse bfloat16,
  so a CPU tensor is viewed as ``int16`` and then as bfloat16 (and back);
  torch <-> CuPy goes through DLPack as bfloat16 itself with CuPy 14 and
  ``ml_dtypes``, else through the same ``int16`` view;
* **ml_dtypes not loaded** (not installed, or not imported by anyone yet; or a
  CuPy before 14): torch bfloat16 tensors are then computed from ``uint16``
  bits end to end (``storage="bfloat16"`` through the transform).  The two
  routes give the same bits (both widen exactly and round once, to nearest
  even; ``tests/test_bfloat16.py`` compares them).

A bfloat16 value is the top 16 bits of a float32, so widening is exact and
narrowing is a rounding of the low 16 bits: to nearest, ties to even (the rule
of ``ml_dtypes``' cast, of torch's ``Tensor.to(torch.bfloat16)`` and of the
kernels' ``cvt.rn.bf16.f32``).  Every function here takes numpy or CuPy arrays.

``ml_dtypes`` is a dependency, but never imported by ``import liam_gpu``, nor
for torch tensors: its import took 1.2 s on a cold first import and 0.47-0.52 s
warm here (``python -X importtime -c 'import numpy, ml_dtypes'``), against
0.02 s for ``import liam_gpu``: a cost that a torch user who never asked for
it should not pay on the first bfloat16 call.  CuPy 14
imports it itself, and a numpy bfloat16 array can only exist once it is
imported; so asking whether an array *is* bfloat16 never imports it, and
torch tensors use the dtype where it is loaded (:func:`has_dtype`).
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .xp import array_module, is_cupy

#: The dtype that carries bfloat16 bits where a library lacks bfloat16.
CARRIER = np.dtype(np.uint16)

_EXPONENT = 0x7F80  # all ones: inf or NaN
_MISSING = object()
_DTYPE: Any = _MISSING
_CUPY: dict[str, bool] = {}


def dtype() -> np.dtype | None:
    """``numpy.dtype(ml_dtypes.bfloat16)``, or None where ``ml_dtypes`` is not installed.

    Imports ``ml_dtypes`` on the first call (about half a second).
    """
    global _DTYPE
    if _DTYPE is _MISSING:
        try:
            import ml_dtypes
        except ImportError:
            _DTYPE = None
        else:
            _DTYPE = np.dtype(ml_dtypes.bfloat16)
    return _DTYPE


def is_bfloat16(dt: Any) -> bool:
    """Whether ``dt`` (a dtype or anything with a ``dtype``) is ``ml_dtypes.bfloat16``.

    Never imports ``ml_dtypes``: without it no array can have that dtype.
    """
    if "ml_dtypes" not in sys.modules:
        return False
    dt = getattr(dt, "dtype", dt)
    if not isinstance(dt, np.dtype):
        try:
            dt = np.dtype(dt)
        except TypeError:  # torch dtypes and other objects numpy does not know
            return False
    return dt == dtype()  # dtype() is cached, and imports nothing here


def cupy_has_dtype() -> bool:
    """Whether CuPy arrays can hold ``ml_dtypes.bfloat16`` (CuPy 14 or newer, with ml_dtypes).

    Asked only once CuPy is imported (a CuPy array or a CUDA tensor is at hand).
    """
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return False
    version = str(getattr(cupy, "__version__", "0"))
    if version not in _CUPY:
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = 0
        _CUPY[version] = major >= 14 and dtype() is not None
    return _CUPY[version]


def has_dtype(on_gpu: bool) -> bool:
    """Whether torch tensors are shared as bfloat16 arrays (else as ``uint16`` bits), on a GPU or the host.

    On a GPU: CuPy 14 or newer with ``ml_dtypes`` (which CuPy imports itself).
    On the host: ``ml_dtypes`` is imported already (never imported here: see
    the module's notes on its import time).
    """
    if on_gpu:
        return cupy_has_dtype()
    return "ml_dtypes" in sys.modules and dtype() is not None


def as_bits(a: Any) -> Any:
    """A bfloat16 array as a ``uint16`` view of its bits (no copy); ``uint16`` bits are returned as they are."""
    return a if np.dtype(a.dtype) == CARRIER else a.view(CARRIER)


def from_bits(bits: Any) -> Any:
    """``uint16`` bits as a bfloat16 array (a view, no copy); needs :func:`has_dtype`."""
    dt = dtype()
    if dt is None:
        raise RuntimeError("ml_dtypes is not installed, so bits cannot be viewed as bfloat16")
    return bits.view(dt)


def to_float32(a: Any) -> Any:
    """Widen bfloat16 (an array of the dtype, or its ``uint16`` bits) to float32 values, exactly (a new array).

    The shift of the bits is twice as fast as ``ml_dtypes``' cast here, and exact
    like it: a bfloat16 value is the top half of a float32.
    """
    return (as_bits(a).astype(np.uint32) << 16).view(np.float32)


def round_from(values: Any, out: Any | None = None) -> Any:
    """Round float32 (or float64) values to bfloat16 once, to nearest, ties to even.

    Returns bfloat16 arrays where the array library has the dtype (``ml_dtypes``'
    own cast rounds float32 and float64 alike in one step), else ``uint16``
    bits (:func:`from_float32`, from float32).  ``out``: a bfloat16 or
    ``uint16`` array of the same shape to write into (and return).
    """
    if out is not None:
        if is_bfloat16(out.dtype):
            out[...] = values
        else:
            from_float32(values, out=out)
        return out
    if has_dtype(is_cupy(values)):
        return values.astype(dtype())
    return from_float32(values)


def from_float32(values: Any, out: Any | None = None) -> Any:
    """Round float32 values to bfloat16 bits: to nearest, ties to even.

    Finite values too large for bfloat16 round to inf; NaN stays a quiet NaN.

    Parameters
    ----------
    values
        float32 array; or float64, also rounded once (through float32
        rounded to odd, which keeps the information a second rounding needs).
    out
        Optional ``uint16`` array of the same shape to write the bits into.

    Returns
    -------
    array
        ``uint16`` bits (``out`` when given).
    """
    xp = array_module(values)
    if np.dtype(values.dtype) == np.float64:
        values = _to_odd_float32(values)
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


def _to_odd_float32(values: Any) -> Any:
    """float64 to float32 rounded to odd: truncated, with the last bit set when inexact.

    Rounding that to bfloat16 (to nearest even) equals rounding the float64
    value once: float32 keeps 16 more bits than bfloat16, and the sticky last
    bit tells a tie from values above or below it.
    """
    xp = array_module(values)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and overflow: handled below
        f = values.astype(np.float32)
        # float32's round to nearest may have gone away from zero: step back to truncate
        # (inf from a finite value steps back to the largest float32).
        away = xp.isfinite(values) & (xp.abs(f.astype(np.float64)) > xp.abs(values))
        f = xp.where(away, xp.nextafter(f, np.float32(0)), f)
        inexact = xp.isfinite(values) & (f.astype(np.float64) != values)
    bits = f.view(np.uint32) | inexact.astype(np.uint32)
    return bits.view(np.float32)


def nonfinite(a: Any) -> Any:
    """Boolean mask of the inf and NaN values of a bfloat16 array (or of its ``uint16`` bits).

    Reads the exponent bits, so it needs no bfloat16 arithmetic (numpy and
    CuPy alike).
    """
    return (as_bits(a) & _EXPONENT) == _EXPONENT
