"""``transform_matrix``: ``activation(data @ weights.T + bias)`` in one pass.

The meaning is that of ``torch.nn.functional.linear`` followed by the
activation, and of the original LIAM ``np.dot(data, weights.T)`` without bias
and activation.  Each backend supplies the fused primitive
(:meth:`~liam_gpu.backends.base.Backend.linear`); this module checks the
arguments, converts arrays and shapes, and hands the result back in the
caller's array type.
"""
from __future__ import annotations

import math
import warnings

from typing import Any, Callable, NamedTuple

import numpy as np

from . import arrays, backends, bfloat16, validation
from .activations import activation_code


def transform_matrix(
    data: Any,
    weights: Any,
    bias: Any = None,
    activation: str | None = None,
    *,
    out: Any = None,
    device: Any = None,
    check_finite: bool = True,
    precision: str | None = None,
) -> Any:
    """Apply a linear map with optional bias and activation: ``act(data @ weights.T + bias)``.

    Parameters
    ----------
    data
        ``(..., d_in)`` array (numpy, CuPy, torch, or a nested list).
    weights
        ``(d_out, d_in)``, or ``(B, d_out, d_in)`` with ``data`` of shape
        ``(B, n, d_in)`` for one weight matrix per batch item.
    bias
        ``(d_out,)``, or ``(B, d_out)`` in the batched form.  Optional.
    activation
        ``None``, ``"relu"``, ``"gelu"`` (erf form), ``"gelu_tanh"``,
        ``"silu"``, ``"sigmoid"`` or ``"tanh"``.
    out
        Optional output of shape ``(..., d_out)`` and the result dtype, written
        in place and returned.  It may overlap ``data``, ``weights`` or
        ``bias`` (then the result goes through a separate buffer, as with
        numpy's ``out=``).
    device
        Where to compute: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"emulator"``, or a :class:`~liam_gpu.Scheduler`.
    check_finite
        Reject NaN/Inf in the inputs (one extra read of each input).
    precision
        ``None`` or ``"float32"`` (default): float32 inputs are computed in
        float32 throughout.  ``"tf32"``: *allows* float32 products on TF32
        tensor cores, like ``torch.backends.cuda.matmul.allow_tf32``: on the
        ``"cuda"`` (compute capability 8.0+) and ``"emulator"`` backends a
        float32 call with ``d_in % 4 == 0`` and 16-byte aligned inputs
        rounds each input element to 10 mantissa bits (round to nearest,
        ties away from zero) and accumulates in float32, at every size
        (large shapes too, which otherwise go to cuBLAS SGEMM).  The error
        bound becomes about ``2 * 2**-11 * sum_k |x_k| |w_k|`` instead of
        ``d_in * 2**-24 * sum_k |x_k| |w_k|``: about 1e-3 relative to that
        sum, however short ``d_in`` is.  Where there are no TF32 tensor
        cores (the ``"cpu"`` backend, older GPUs) or the call does not
        qualify, the result is full float32.  float64, float16 and bfloat16
        inputs ignore it (as torch's ``allow_tf32`` does), so one setting
        can be passed for any dtype.

    Returns
    -------
    array
        ``(..., d_out)`` in the caller's array type and device.  float32 and
        float64 are computed in their own precision; float16 and bfloat16
        (``ml_dtypes.bfloat16`` numpy/CuPy arrays, torch bfloat16 tensors)
        are stored as such, with float32 accumulation and one rounding of
        each result.  A mix of a 16-bit type with another dtype computes as
        float32 (or wider).  Integer input computes in float64.

    Raises
    ------
    ValueError
        Shapes that do not match, empty arrays, NaN/Inf, an unknown activation,
        an unknown ``precision``.
    TypeError
        Complex, object or string arrays; mixed array libraries.
    """
    # The front door (liam_gpu.api) has sent autograd and Scheduler calls elsewhere.
    code = activation_code(activation)
    tf32 = allows_tf32(precision)
    kind = arrays.common_kind(data=data, weights=weights, bias=bias, out=out)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind), backend.activate():
        return _transform(data, weights, bias, code, out, kind, backend, check_finite, tf32)


#: The values of ``precision=``: None means "float32".
PRECISIONS = ("float32", "tf32")


def allows_tf32(precision: Any) -> bool:
    """Whether ``precision=`` allows TF32 tensor cores for float32 (``"tf32"``); ValueError for unknown values.

    Parameters
    ----------
    precision
        ``None``, ``"float32"`` or ``"tf32"``.

    Returns
    -------
    bool
        True for ``"tf32"``.
    """
    if precision is None:
        return False
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; expected None, 'float32' or 'tf32'")
    return precision == "tf32"


def _transform(data, weights, bias, code, out, kind, backend, check_finite, tf32=False):
    """The body of :func:`transform_matrix`, on the caller's stream.

    bfloat16 (``ml_dtypes.bfloat16`` arrays, and torch bfloat16 tensors shared
    as such arrays) is computed as a storage dtype of its own, like float16:
    the kernels read and write bfloat16 itself, and ``out=`` works as for any
    other dtype.  Where the array library lacks the dtype, torch tensors come
    as ``uint16`` bits and go through with ``storage="bfloat16"``
    (:mod:`liam_gpu.bfloat16`).
    """
    defer = check_finite and _defers_check(backend, data, weights, out)
    try:
        call = prepare(data, weights, bias, out, kind, check_finite=check_finite and not defer,
                       to_backend=backend.asarray)
    except (TypeError, ValueError):
        if defer:  # the first error of the full checks, in their order (a NaN before an empty bias)
            prepare(data, weights, bias, out, kind, check_finite=True, to_backend=backend.asarray)
        raise
    target, direct = _output_buffer(call, backend)
    if defer:
        finite = backend.linear_checked(call.x.reshape(-1, call.x.shape[-1]), call.w, call.b, code,
                                        target.reshape(-1, call.out_shape[-1]))
        if not finite or not (call.b is None or bool(np.isfinite(call.b).all())):
            validation.check_all_finite(data=call.x, weights=call.w, bias=call.b)  # raises, or an overflow
            if not finite:  # the warning numpy gives the unchecked call (the checked product hid it)
                warnings.warn("overflow encountered in matmul", RuntimeWarning, stacklevel=4)
    else:
        _linear(backend, call, call.x, call.w, call.b, code, target, tf32)
    if out is not None:
        if not direct:
            arrays.copy_into(call.dest, target)
        return out
    return call.result(target, kind)


class PreparedCall(NamedTuple):
    """A transform call checked and converted, as :func:`_transform` and the scheduler's
    ``transform_matrix`` (:mod:`liam_gpu.alda.ops`) compute it.

    A named tuple rather than a frozen dataclass: as immutable, and made in a
    fifth of the time (0.25 against 1.15 µs here), which a tiny call notices.

    Attributes
    ----------
    x, w, b
        data, weights and bias (or None), checked (not empty; finite where
        asked): in ``dtype`` and C-contiguous, or as the caller gave them
        where :func:`prepare` was told not to cast (each part is cast by
        :func:`compute_part`).
    dtype
        The result dtype (:data:`liam_gpu.bfloat16.CARRIER` with ``storage``).
    storage
        ``"bfloat16"`` where the arrays hold bfloat16 as ``uint16`` bits, else None.
    batched
        Weights ``(B, d_out, d_in)``.
    out_shape
        ``x.shape[:-1] + (d_out,)``.
    dest
        The caller's ``out`` as a compute array (shape, dtype and writeable
        checked), or None.
    separate
        ``dest`` may overlap an input: the result must go through a separate
        buffer, so that every input is read whole before ``out`` is written.
    """

    x: Any
    w: Any
    b: Any | None
    dtype: np.dtype
    storage: str | None
    batched: bool
    out_shape: tuple[int, ...]
    dest: Any | None
    separate: bool

    def result(self, y: Any, kind: arrays.ArrayKind) -> Any:
        """The computed ``y`` (of ``dtype``) as the caller's array."""
        return arrays.from_bfloat16_bits(y, kind) if self.storage else arrays.from_compute(y, kind)


def prepare(data: Any, weights: Any, bias: Any, out: Any, kind: arrays.ArrayKind, *, check_finite: bool,
            to_backend: Callable[[Any], Any] | None = None, cast: bool = True) -> PreparedCall:
    """Check a transform call and convert its arrays: the one statement of the rules.

    In order: the inputs' dtypes (``TypeError``), shapes, each input not
    empty, cast and (with ``check_finite``) finite, then ``out``.  The inputs
    are cast to the result dtype only where they differ from it (or are not
    C-contiguous), so the usual call copies nothing.

    Parameters
    ----------
    data, weights, bias, out
        The caller's arguments (``bias`` and ``out`` may be None).
    kind
        Their :class:`~liam_gpu.arrays.ArrayKind`.
    check_finite
        Reject NaN/Inf in the inputs.
    to_backend
        Moves an input where it is computed (the backend's ``asarray``) before
        its cast; None leaves the inputs in the caller's memory (the
        scheduler, whose chunks go to their devices).
    cast
        False: check the inputs but leave them in their own dtype and layout
        (the scheduler: each chunk is cast on its worker by
        :func:`compute_part`, so a float16 or integer input crosses to a
        device, and sits in the caller's memory, at its own size, not the
        result dtype's).  Casting widens, so a finite input stays finite.

    Returns
    -------
    PreparedCall
    """

    def compute_array(a, name, writable=False):
        return arrays.to_compute(a, kind, name=name, writable=writable, keep_bfloat16=kind.bfloat16)

    x = compute_array(data, "data")
    w = compute_array(weights, "weights")
    b = None if bias is None else compute_array(bias, "bias")

    # torch bfloat16 as bits: only where numpy (or CuPy) has no bfloat16 dtype.
    storage = "bfloat16" if kind.bfloat16 and np.dtype(x.dtype) == bfloat16.CARRIER else None
    dtype = bfloat16.CARRIER if storage else _result_dtype(x, w, b)
    batched = check_shapes(x, w, b)
    move = to_backend or (lambda a: a)

    def checked(name, a):
        if cast:
            return validation.as_float_array(name, move(a), finite=check_finite, dtype=dtype, storage=storage)
        validation.check_not_empty(name, a)
        if check_finite:
            validation.check_finite(name, a, storage=storage)
        return a

    x, w = checked("data", x), checked("weights", w)
    if b is not None:
        b = checked("bias", b)
    out_shape = tuple(x.shape[:-1]) + (w.shape[-2],)
    dest = None
    if out is not None:
        dest = compute_array(out, "out", writable=True)
        check_out(dest, out_shape, dtype)
    separate = bool(validation.overlapping(dest, data=x, weights=w, bias=b))
    return PreparedCall(x, w, b, dtype, storage, batched, out_shape, dest, separate)


def compute_part(call: PreparedCall, x: Any, w: Any, b: Any | None, code: int, device: Any,
                 tf32: bool = False) -> Any:
    """One part of a prepared call (a scheduler's chunk) on backend ``device``.

    ``x``, ``w``, ``b`` are slices of ``call.x``, ``call.w``, ``call.b`` (checked
    already, so nothing is checked again), possibly copied to the worker's
    device, and cast here to ``call.dtype`` where :func:`prepare` left them
    uncast.  Returns ``act(x @ w.T + b)`` of ``call.dtype`` (bits with
    ``call.storage``) in the array library of ``x``.
    """
    kind = arrays.common_kind(data=x, weights=w, bias=b)
    backend = backends.resolve(device, kind)
    with arrays.caller_stream(kind), backend.activate():
        x, w, b = (None if a is None else validation.as_float_array(
            name, backend.asarray(a), finite=False, dtype=call.dtype, storage=call.storage)
            for name, a in (("data", x), ("weights", w), ("bias", b)))
        target = backend.empty(tuple(x.shape[:-1]) + (w.shape[-2],), call.dtype)
        _linear(backend, call, x, w, b, code, target, tf32)
        return arrays.from_compute(target, kind)


def _linear(backend, call: PreparedCall, x: Any, w: Any, b: Any | None, code: int, target: Any,
            tf32: bool) -> None:
    """The backend's fused primitive for ``call`` (or a part of it), written into ``target``."""
    # tf32 is a permission: only float32 storage can use it (other dtypes ignore it).  The
    # keyword goes to the backend only when set, so a backend without it serves every default call.
    extra = {"tf32": True} if tf32 and call.storage is None and np.dtype(call.dtype) == np.float32 else {}
    if call.batched:
        backend.batched_linear(x, w, b, code, target, storage=call.storage, **extra)
    else:
        d_out, d_in = w.shape
        backend.linear(x.reshape(-1, d_in), w, b, code, target.reshape(-1, d_out), storage=call.storage, **extra)


def check_shapes(x: Any, w: Any, b: Any | None) -> bool:
    """Check the shapes of data, weights and bias; return whether the weights are batched."""
    validation.check_ndim("weights", w, ndim=(2, 3))
    batched = w.ndim == 3
    validation.check_ndim("data", x, ndim=3 if batched else None, min_ndim=1)
    d_out, d_in = w.shape[-2:]
    if x.shape[-1] != d_in:
        raise ValueError(
            f"data has {x.shape[-1]} features (last axis of shape {tuple(x.shape)}) but weights "
            f"expects d_in={d_in} (shape {tuple(w.shape)}, read as (d_out, d_in))"
        )
    if batched and x.shape[0] != w.shape[0]:
        raise ValueError(
            f"batched transform: data has batch {x.shape[0]} (shape {tuple(x.shape)}) but weights "
            f"has batch {w.shape[0]} (shape {tuple(w.shape)})"
        )
    if b is not None and tuple(b.shape) != tuple(w.shape[:-1]):
        raise ValueError(f"bias must have shape {tuple(w.shape[:-1])} to match weights, got {tuple(b.shape)}")
    return batched


def _result_dtype(*xs: Any) -> np.dtype:
    """Common compute dtype: a 16-bit type (float16, bfloat16) only when every input has it.

    A mix of 16-bit types, or one with wider floats, computes and returns
    float32 or wider (each 16-bit type counts as float32); integers count as
    float64.
    """
    names = ("data", "weights", "bias")
    dts = [validation.float_dtype(n, x, allow_half=True) for n, x in zip(names, xs) if x is not None]
    if validation.is_half(dts[0]) and all(dt == dts[0] for dt in dts):
        return dts[0]
    return np.result_type(*[np.float32 if validation.is_half(dt) else dt for dt in dts])


def check_out(dest: Any, shape: tuple, dtype: np.dtype) -> None:
    """Check the caller's ``out`` (as a compute array): shape, dtype, writeable."""
    if tuple(dest.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(dest.shape)}")
    if np.dtype(dest.dtype) != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {dest.dtype}")
    if not arrays.is_writeable(dest):
        raise ValueError("out is read-only")


#: Input elements (data and weights) from which the CPU checks finiteness from sums of the
#: product (:meth:`liam_gpu.backends.cpu.CpuBackend.linear_checked`) instead of reading the
#: inputs first: below it the exact checks are cheaper than a second call path.
DEFERRED_CHECK_MIN = 1 << 16
_CHECKED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _defers_check(backend: Any, data: Any, weights: Any, out: Any) -> bool:
    """Whether a checked call's NaN/Inf test waits for the product (the CPU backend, no ``out``, big
    float32/float64 inputs of one dtype, 2-D weights).

    The product's sums read the output while it is in cache instead of every
    input from memory (at 256 x 4096 -> 4096 the weights are 16 times the
    output); a non-finite sum takes the exact checks, so the errors and
    their messages are those of the checks before the product.  With ``out``
    the checks stay first: ``out`` is never written for bad input.
    """
    if out is not None or not hasattr(backend, "linear_checked"):
        return False
    # linear_checked's inputs: 2-D weights and data of one float32/float64 dtype (no cast, no storage).
    dtype = getattr(data, "dtype", None)
    if dtype not in _CHECKED_DTYPES or getattr(weights, "dtype", None) != dtype or getattr(weights, "ndim", 0) != 2:
        return False
    return math.prod(data.shape) + math.prod(weights.shape) >= DEFERRED_CHECK_MIN


def _output_buffer(call: PreparedCall, backend) -> tuple[Any, bool]:
    """The buffer the kernel writes, and whether it is the caller's ``out`` (``call.dest``) itself.

    An ``out`` that overlaps an input (``call.separate``) gets a new buffer.
    """
    dest = call.dest
    if dest is not None and backend.holds(dest) and dest.flags.c_contiguous and not call.separate:
        return dest, True
    return backend.empty(call.out_shape, call.dtype), False
