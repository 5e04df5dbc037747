"""Elementwise activations applied after a transform (the fused epilogue).

:data:`TABLE` is the one list of activations: their names, their order (an
activation's code is its position), the functor type that computes each in
the CUDA kernels (``kernels/common.cuh``, namespace ``lg_act``) and the numpy
implementation used by the CPU backend.  The launch layer passes the functors
to the kernels, in this order, as a template argument (:func:`kernel_list`),
so the kernels hold no copy of the codes.

The CPU backend applies bias and activation to cache-sized blocks of its
output with :func:`apply_bias_inplace`.  With the ``fast`` extra (numba), the
float32 gelu there is compiled (:mod:`liam_gpu._numba_epilogue`, about 15x
faster than scipy's ``erfc``); without it, or with ``LIAM_GPU_NUMBA=0`` in the
environment, every activation takes the numpy functions of :data:`TABLE`.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_SQRT_HALF = math.sqrt(0.5)


def _identity(y: np.ndarray) -> None:
    pass


def _relu(y: np.ndarray) -> None:
    np.maximum(y, 0, out=y)


def _gelu(y: np.ndarray) -> None:
    # 0.5 x erfc(-x / sqrt 2): keeps relative accuracy where 1 + erf cancels
    # (x << 0), like the kernels; scipy's ndtr was 15-200 ulps off there in float64.
    t = special.erfc(y * -_SQRT_HALF)
    t *= 0.5
    y *= t


def _gelu_tanh(y: np.ndarray) -> None:
    t = y * y
    t *= 0.044715 * y
    t += y
    t *= _SQRT_2_OVER_PI
    np.tanh(t, out=t)
    t += 1.0
    t *= 0.5
    y *= t


def _silu(y: np.ndarray) -> None:
    y *= special.expit(y)


def _sigmoid(y: np.ndarray) -> None:
    special.expit(y, out=y)


def _tanh(y: np.ndarray) -> None:
    np.tanh(y, out=y)


@dataclass(frozen=True)
class Activation:
    """One activation of the fused epilogue.

    Attributes
    ----------
    name
        The public name (None for no activation).
    functor
        Its functor type in ``kernels/common.cuh`` (namespace ``lg_act``).
    numpy
        Applies it in place to a float32/float64 numpy array.
    """

    name: str | None
    functor: str
    numpy: Callable[[np.ndarray], None]


#: Every activation, in the order of their codes.
TABLE: tuple[Activation, ...] = (
    Activation(None, "Identity", _identity),
    Activation("relu", "Relu", _relu),
    Activation("gelu", "Gelu", _gelu),  # exact (erf) form, as torch.nn.functional.gelu
    Activation("gelu_tanh", "GeluTanh", _gelu_tanh),  # torch's approximate="tanh"
    Activation("silu", "Silu", _silu),
    Activation("sigmoid", "Sigmoid", _sigmoid),
    Activation("tanh", "Tanh", _tanh),
)

#: Activation name -> its code, the index that a kernel launch passes.
ACTIVATIONS: dict[str | None, int] = {a.name: code for code, a in enumerate(TABLE)}


def kernel_list() -> str:
    """The C++ type ``lg_act::List<...>`` of every functor, in code order (a template argument)."""
    return "lg_act::List<" + ", ".join(f"lg_act::{a.functor}" for a in TABLE) + ">"


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


def apply_inplace(y: np.ndarray, code: int) -> np.ndarray:
    """Apply activation ``code`` to the float32/float64 numpy array ``y`` in place."""
    if not 0 <= int(code) < len(TABLE):
        raise ValueError(f"unknown activation code {code}")
    TABLE[int(code)].numpy(y)
    return y


def reference(y: Any, activation: str | None) -> np.ndarray:
    """Float64 reference of ``activation(y)`` for tests (not in place)."""
    y = np.asarray(y, dtype=np.float64).copy()
    return apply_inplace(y, activation_code(activation))


_GELU = ACTIVATIONS["gelu"]
#: Elements per chunk of the numpy epilogue: its temporaries stay in L2.
_PASS_ELEMENTS = 1 << 16
_fast: Any = None  # the numba module once imported, False where it cannot be
_fast_lock = threading.Lock()


def fast_epilogue() -> Any | None:
    """The compiled epilogue module, or None without numba (or with ``LIAM_GPU_NUMBA=0``).

    The first call imports it under a lock: a worker thread of the same call
    waits for the import instead of taking the numpy path meanwhile (the two
    paths round differently, and one call must not mix them).
    """
    global _fast
    if _fast is None:
        with _fast_lock:
            if _fast is None:
                found: Any = False
                if os.environ.get("LIAM_GPU_NUMBA", "1") != "0":
                    try:
                        from . import _numba_epilogue

                        found = _numba_epilogue
                    except ImportError:  # numba missing or not importable here: the numpy path
                        pass
                _fast = found
    return _fast or None


def apply_bias_inplace(y: np.ndarray, bias: np.ndarray | None, code: int) -> np.ndarray:
    """``y = activation(y + bias)`` in place, for a 2-D float32/float64 block ``y`` and a 1-D ``bias`` (or None).

    ``y`` may be a strided view (a column range of a C-contiguous output).

    The bias is added in ``y``'s dtype before the activation, so every path
    rounds as ``y += bias`` followed by :func:`apply_inplace` does.
    """
    if bias is None and int(code) == 0:
        return y  # nothing to apply: no pass over y
    if int(code) == _GELU and y.dtype == np.float32 and y.ndim == 2 and y.strides[1] == y.itemsize:
        fast = fast_epilogue()
        if fast is not None:
            fast.bias_gelu_float32(y, None if bias is None else np.ascontiguousarray(bias, np.float32))
            return y
    # numpy's activations make several passes and temporaries: over L2-sized row chunks.
    step = max(1, _PASS_ELEMENTS // max(1, y.shape[-1]))
    for start in range(0, y.shape[0], step):
        part = y[start:start + step]
        if bias is not None:
            part += bias
        apply_inplace(part, code)
    return y
