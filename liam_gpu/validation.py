"""Input checks shared by every operation: dtype, shape, finiteness, ranks.

Errors name the argument and say what was expected.  Checks never modify the
caller's data; where a kernel needs a different layout or dtype, a copy is made.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import bfloat16
from .xp import array_module as _module_of  # numpy or CuPy: a leaf module, imported once

#: dtypes computed in their own precision.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: 16-bit storage dtypes (accumulated in float32) accepted by the transforms,
#: besides ``ml_dtypes.bfloat16`` (:func:`is_half`; :mod:`liam_gpu.bfloat16`).
HALF_DTYPES = (np.dtype(np.float16),)


def is_half(dt: Any) -> bool:
    """Whether ``dt`` is a 16-bit float storage dtype: float16 or ``ml_dtypes.bfloat16``."""
    return np.dtype(dt) in HALF_DTYPES or bfloat16.is_bfloat16(dt)


def float_dtype(name: str, x: Any, *, allow_half: bool = False) -> np.dtype:
    """The dtype an operation computes in for input ``x``.

    Booleans and integers become float64 (like numpy's ``linalg``); float16
    and ``ml_dtypes.bfloat16`` stay themselves where ``allow_half``
    (transforms), else become float32.  Complex, object and string arrays
    (and the other ``ml_dtypes`` types: float8, int4, ...) are a ``TypeError``.
    """
    dt = np.dtype(x.dtype)
    if dt in FLOAT_DTYPES:
        return dt
    if is_half(dt):
        return dt if allow_half else np.dtype(np.float32)
    if dt.kind in "biu":
        return np.dtype(np.float64)
    if dt.kind == "c":
        raise TypeError(
            f"{name} is complex ({dt}); liam_gpu supports real float16/32/64 and integer input only"
        )
    raise TypeError(f"{name} has dtype {dt}, expected a real numeric array (float or integer)")


def check_ndim(name: str, x: Any, *, ndim: int | tuple[int, ...] | None = None, min_ndim: int = 0) -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is as expected."""
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{name} must be {want}, got a {x.ndim}-D array of shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}"
        )


def check_not_empty(name: str, x: Any) -> None:
    """Raise ``ValueError`` for an array with a zero-length axis."""
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); every axis must have length >= 1")


def check_finite(name: str, x: Any, *, storage: str | None = None) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (one pass, like scipy's ``check_finite``).

    bfloat16 (the ``ml_dtypes`` dtype, or its ``uint16`` bits with
    ``storage="bfloat16"``): the exponent bits are read, which needs no
    bfloat16 arithmetic in numpy or CuPy.
    """
    if storage == "bfloat16" or bfloat16.is_bfloat16(x.dtype):
        bad = bool(bfloat16.nonfinite(x).any())
    else:
        xp = _module_of(x)
        big = x.dtype.itemsize >= 4 and x.size >= _SUM_TEST_MIN  # float16 sums overflow early
        bad = x.dtype.kind == "f" and not (big and sum_is_finite(x)) and not bool(xp.isfinite(x).all())
    if bad:
        raise ValueError(f"{name} contains NaN or Inf; pass check_finite=False to skip this check")


#: Elements from which :func:`check_finite` tries the one-sum test first: below it two small
#: reductions cost more than the exact test's boolean temporary (7.6 µs more per tiny call).
_SUM_TEST_MIN = 1 << 15


def sum_is_finite(x: Any) -> bool:
    """Whether the sum of the float32/float64 array ``x`` (numpy or CuPy) is finite.

    A finite sum proves every element finite; False is NaN/Inf in ``x`` or an
    overflow of finite terms (the caller's exact test decides).  One reduction
    and no input-sized boolean temporary; a C-contiguous numpy array is summed
    by BLAS row sums (``x @ 1``, which propagate NaN/Inf as a sum does): on
    4096 x 4096 float32, one thread, 2.4 ms against 3.4 for ``np.sum`` (and
    4.9 for ``isfinite(x).all()`` on the same 16M elements), measured here.
    """
    xp = _module_of(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if xp is np and x.ndim >= 1 and x.size and (x.ndim == 2 or x.flags.c_contiguous):
            rows = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
            return bool(np.isfinite(np.sum(rows @ np.ones(rows.shape[-1], rows.dtype))))
        return bool(xp.isfinite(xp.sum(x)))


def check_all_finite(*, storage: str | None = None, **named: Any) -> None:
    """:func:`check_finite` on each array given (None skipped), in order: the first bad one is named.

    ``storage="bfloat16"``: the arrays hold bfloat16 bits (see :func:`check_finite`).
    """
    for name, x in named.items():
        if x is not None:
            check_finite(name, x, storage=storage)


def check_rank(name: str, k: Any, limit: int, *, what: str = "min(m, n)") -> int:
    """Validate a target rank ``1 <= k <= limit`` and return it as ``int``."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= limit:
        raise ValueError(f"{name}={k} is out of range; expected 1 <= {name} <= {what} = {limit}")
    return k


def as_float_array(
    name: str,
    x: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_ndim: int = 0,
    allow_half: bool = False,
    finite: bool = True,
    empty_ok: bool = False,
    dtype: Any = None,
    storage: str | None = None,
) -> Any:
    """Check one array argument and return it in its compute dtype, C-contiguous.

    The result is ``x`` itself when no conversion is needed (callers must not
    write to it) and a new array otherwise.  ``storage="bfloat16"`` says that
    ``x`` holds bfloat16 bits as ``uint16`` (:mod:`liam_gpu.bfloat16`); they
    are kept as they are, and the finiteness check reads their exponent.
    """
    xp = _module_of(x)
    if storage == "bfloat16":
        target = bfloat16.CARRIER
        if np.dtype(x.dtype) != target:  # a cast would turn values into bit patterns
            raise TypeError(f"{name} has dtype {x.dtype}; bfloat16 storage is carried as {target} bits")
    elif storage is not None:
        raise ValueError(f"storage={storage!r} is unknown; expected None or 'bfloat16'")
    else:
        target = np.dtype(dtype) if dtype is not None else float_dtype(name, x, allow_half=allow_half)
    check_ndim(name, x, ndim=ndim, min_ndim=min_ndim)
    if not empty_ok:
        check_not_empty(name, x)
    out = xp.ascontiguousarray(x, dtype=target)
    if finite:
        check_finite(name, out, storage=storage)
    return out


def _byte_range(a: Any) -> tuple[int, int] | None:
    """``[lo, hi)``: the bytes an array (numpy or CuPy) may touch; None when it has no elements."""
    if int(a.size) == 0:
        return None
    # numpy's address, or CuPy's device pointer (both give byte strides)
    lo = hi = int(a.__array_interface__["data"][0]) if isinstance(a, np.ndarray) else int(a.data.ptr)
    itemsize = int(a.itemsize)
    for n, step in zip(a.shape, a.strides):
        reach = (int(n) - 1) * int(step)
        lo, hi = (lo + reach, hi) if reach < 0 else (lo, hi + reach)
    return lo, hi + itemsize


def overlapping(out: Any, **inputs: Any) -> list[str]:
    """The names of ``inputs`` whose memory may overlap ``out``'s (their byte ranges intersect).

    A bounds test, like ``numpy.may_share_memory``: interleaved views that
    share no element count as overlapping, which costs the caller a copy,
    never a wrong answer.  Arrays of different devices never overlap (a CuPy
    array and a numpy one live in different memory).  Not the array
    module's ``may_share_memory``: an ``out`` on another GPU is legitimate
    here, and a CuPy function given arrays of two devices may refuse them
    (the tests' strict fake CuPy does).
    """
    if out is None:
        return []
    span = _byte_range(out)
    if span is None:
        return []
    on_host = isinstance(out, np.ndarray)
    found = []
    for name, a in inputs.items():
        if a is None or isinstance(a, np.ndarray) != on_host:
            continue
        other = _byte_range(a)
        if other is not None and other[0] < span[1] and span[0] < other[1]:
            found.append(name)
    return found

