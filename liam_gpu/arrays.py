"""Array-type dispatch: what the caller passed, and how to give it back.

Every public function accepts numpy arrays, CuPy arrays and PyTorch tensors
(and Python lists/scalars, which become numpy).  The library computes on numpy
(CPU and emulator backends) or CuPy (CUDA backend) arrays only; this module is
the one place that converts between the caller's type and those, zero-copy
through DLPack for tensors, and the only module below the public API that
knows about torch (it never imports torch: a tensor can only reach us if the
caller has imported it already).

Streams and DLPack
------------------
The Python DLPack protocol (array API standard, ``array.__dlpack__``) lets the
*consumer* pass its current stream to the *producer* as
``__dlpack__(stream=...)``: on CUDA ``None`` or ``1`` mean the legacy default
stream, ``2`` the per-thread default stream, any other positive integer a
``cudaStream_t``, and ``-1`` "do not synchronise"; ``0`` is disallowed.  The
producer must then make the data safe to use on that stream, typically by
recording an event on its own stream and making the consumer's stream wait for
it -- never by a device-wide synchronisation.

``cupy.from_dlpack`` passes CuPy's current stream and ``torch.from_dlpack``
passes torch's current stream.  :func:`caller_stream` makes the two the same
stream (torch's), so both directions hand over on one stream and neither
library needs to insert even an event; every conversion of a CUDA tensor must
therefore happen inside ``with caller_stream(kind):``.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from . import bfloat16 as _bf16
from .xp import array_module, is_cupy  # noqa: F401  (re-exported: callers ask arrays.is_cupy)


@dataclass(frozen=True)
class ArrayKind:
    """The array library and device of a caller's input.

    Attributes
    ----------
    library
        ``"numpy"``, ``"cupy"`` or ``"torch"``.
    device
        ``"cpu"`` or ``"cuda:N"``.
    bfloat16
        The caller's floating-point tensors are all ``torch.bfloat16``:
        ``transform_matrix`` computes on them as bfloat16 arrays
        (``ml_dtypes.bfloat16``, shared zero-copy; ``uint16`` bits where the
        array library lacks the dtype, :mod:`liam_gpu.bfloat16`), other
        operations in float32, and floating-point results are given back as
        bfloat16.  numpy and CuPy arrays of ``ml_dtypes.bfloat16`` carry the
        dtype themselves and leave this False.
    """

    library: str
    device: str
    bfloat16: bool = False

    @property
    def on_gpu(self) -> bool:
        """Whether the caller's memory lives on a CUDA device."""
        return self.device.startswith("cuda")

    @property
    def device_index(self) -> int | None:
        """The CUDA ordinal, or None for host memory."""
        return int(self.device.split(":")[1]) if self.on_gpu else None


NUMPY = ArrayKind("numpy", "cpu")


_TORCH: Any = None


def _torch():
    """The torch module if the caller has imported it (we never import it ourselves).

    Remembered once found (a module is never unloaded): this runs several times
    per call.
    """
    global _TORCH
    if _TORCH is None:
        _TORCH = sys.modules.get("torch")
    return _TORCH


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor``."""
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def kind_of(x: Any) -> ArrayKind:
    """Classify one input.  Anything that is neither CuPy nor torch is numpy-like."""
    if is_tensor(x):
        dev = x.device
        bf16 = x.dtype == _torch().bfloat16
        if dev.type == "cuda":
            return ArrayKind("torch", f"cuda:{dev.index or 0}", bf16)
        if dev.type != "cpu":
            raise TypeError(f"torch tensors on device {dev.type!r} are not supported (only cpu and cuda)")
        return ArrayKind("torch", "cpu", bf16)
    if is_cupy(x):
        return ArrayKind("cupy", f"cuda:{x.device.id}")
    return NUMPY


def common_kind(**named: Any) -> ArrayKind:
    """The single :class:`ArrayKind` shared by all non-None arguments.

    Mixed array libraries are a ``TypeError`` and mixed devices a ``ValueError``:
    the library never copies between them implicitly.  Plain Python lists and
    scalars adopt the kind of the arrays they are passed with.  The result is
    bfloat16 only when every array argument is (like float16 in
    :func:`liam_gpu.transform_matrix`, a mix computes and returns float32 or
    wider).
    """
    found: dict[str, ArrayKind] = {}
    for name, value in named.items():
        if value is None or _is_plain_python(value):
            continue
        found[name] = kind_of(value)
        if found[name].library == "torch":
            _check_strided(name, value)
    if not found:
        return NUMPY
    libraries = {k.library for k in found.values()}
    if len(libraries) > 1:
        listing = ", ".join(f"{n}: {k.library}" for n, k in found.items())
        raise TypeError(f"mixed array types in one call ({listing}); pass arrays of one library")
    devices = {k.device for k in found.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n}: {k.device}" for n, k in found.items())
        raise ValueError(f"arrays on different devices in one call ({listing}); move them to one device first")
    first = next(iter(found.values()))
    bfloat16 = all(k.bfloat16 for k in found.values())
    return first if first.bfloat16 == bfloat16 else ArrayKind(first.library, first.device, bfloat16)


def _is_plain_python(x: Any) -> bool:
    return isinstance(x, (list, tuple, int, float, bool, complex))


def needs_autograd(*xs: Any) -> bool:
    """Whether a call on ``xs`` must be recorded by torch autograd.

    True when grad mode is on and any argument is a tensor that requires grad.
    Cheap, and never imports torch.
    """
    torch = _torch()
    if torch is None or not torch.is_grad_enabled():
        return False
    return any(isinstance(x, torch.Tensor) and x.requires_grad for x in xs)


def route_to_torch(*xs: Any) -> bool:
    """Whether a call on ``xs`` must be handled by :mod:`liam_gpu.torch`.

    True when a tensor argument needs autograd recording (:func:`needs_autograd`)
    or when ``torch.compile`` is tracing the call: the tracer cannot follow
    numpy/CuPy code (it fails inside it rather than breaking the graph), so
    tensors then go through the custom operator
    ``torch.ops.liam_gpu.transform_matrix``.
    """
    torch = _torch()
    if torch is None or not any(isinstance(x, torch.Tensor) for x in xs):
        return False
    return torch.compiler.is_compiling() or needs_autograd(*xs)


def to_compute(x: Any, kind: ArrayKind | None = None, *, name: str = "array", writable: bool = False,
               keep_bfloat16: bool = False) -> Any:
    """Turn a caller's input into a numpy or CuPy array, without copying.

    CUDA tensors go through DLPack to CuPy, CPU tensors to numpy through
    ``Tensor.numpy()``; both share the tensor's memory, strides included; a tensor that
    requires grad is detached first, which also shares memory.  Lists and
    scalars become numpy arrays.  CUDA tensors must be converted inside
    :func:`caller_stream`.

    Parameters
    ----------
    x
        The caller's array.
    kind
        Its :class:`ArrayKind` (computed when omitted).
    name
        The argument's name, for error messages.
    writable
        The caller will write into the result (an ``out=`` argument).  A
        bfloat16 tensor converted to float32 cannot be written through, so it
        is a ``TypeError`` then (unless ``keep_bfloat16``).
    keep_bfloat16
        Give a bfloat16 tensor as a bfloat16 array sharing its memory, for
        code that computes on bfloat16 storage: of the ``ml_dtypes`` dtype
        where the array library has it (:func:`liam_gpu.bfloat16.has_dtype`),
        else a ``uint16`` view of its bits.  With ``kind.bfloat16``, a list
        or scalar passed among the tensors is rounded (once) to the same form.

    Notes
    -----
    Without ``keep_bfloat16``, bfloat16 tensors are the one exception to
    zero-copy: they are converted to float32 (one read, one write, on the
    caller's stream) for the operations that compute in float32 anyway, which
    is also the precision every kernel accumulates 16-bit inputs in.
    numpy and CuPy arrays of ``ml_dtypes.bfloat16`` are returned as they are.
    """
    kind = kind or kind_of(x)
    if kind.library == "torch" and isinstance(x, _torch().Tensor):
        return _tensor_to_compute(x, kind, name, writable, keep_bfloat16)
    if kind.library == "torch":  # a list or scalar among tensors: host data, like numpy's
        a = np.asarray(x)
        if keep_bfloat16 and kind.bfloat16 and a.dtype.kind in "biuf":
            return _rounded_list(a, kind)
        return a
    if kind.library == "cupy":
        return x
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def _rounded_list(a: np.ndarray, kind: ArrayKind) -> np.ndarray:
    """Host values given among bfloat16 tensors, rounded once to bfloat16 in the form the tensors take."""
    if _bf16.has_dtype(kind.on_gpu):
        # ml_dtypes rounds float64 to bfloat16 in one step, and so does from_float32:
        # never float64 -> float32 -> bfloat16 (a tie made by the first rounding).
        return a.astype(np.float64, copy=False).astype(_bf16.dtype())
    return _bf16.from_float32(a.astype(np.float64, copy=False))


def _tensor_to_compute(x: Any, kind: ArrayKind, name: str, writable: bool, keep_bfloat16: bool) -> Any:
    torch = _torch()
    t = x.detach()  # shares memory; __dlpack__ refuses tensors that require grad
    _check_strided(name, t)
    # DLPack has no flag for torch's lazy conjugate/negative views: exporting
    # such a view would silently drop the sign, so materialise it.
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.dtype == torch.bfloat16:
        if keep_bfloat16:
            return _bfloat16_tensor(t, kind)
        if writable:
            raise TypeError(
                f"{name} is a bfloat16 tensor, which this operation computes in float32 and cannot write "
                "through; pass a float32 or float16 tensor, or omit it and use the returned tensor"
            )
        t = t.float()
    if kind.on_gpu:
        import cupy

        return cupy.from_dlpack(t)
    # On the host there is no stream to agree on, and Tensor.numpy() is the same
    # zero-copy view as numpy.from_dlpack (strides included) at a third of the
    # cost: no capsule is built and consumed.
    return t.numpy()


def _bfloat16_tensor(t: Any, kind: ArrayKind) -> Any:
    """A bfloat16 tensor as a bfloat16 (or ``uint16`` bits) numpy/CuPy array sharing its memory."""
    torch = _torch()
    if kind.on_gpu:
        import cupy

        if _bf16.cupy_has_dtype():
            # CuPy 14 with ml_dtypes imports DLPack's bfloat16 as ml_dtypes.bfloat16.
            try:
                a = cupy.from_dlpack(t)
            except (TypeError, NotImplementedError, BufferError):
                a = None  # a CuPy build that refuses it after all: the int16 view below
            if a is not None and _bf16.is_bfloat16(a.dtype):
                return a
        bits = cupy.from_dlpack(t.view(torch.int16)).view(np.uint16)
    else:
        # Tensor.numpy() and numpy's DLPack refuse bfloat16: an int16 view has the same strides.
        bits = t.view(torch.int16).numpy().view(np.uint16)
    return _bf16.from_bits(bits) if _bf16.has_dtype(kind.on_gpu) else bits


def _check_strided(name: str, t: Any) -> None:
    """DLPack carries dense strided memory only: sparse and other layouts are a ``TypeError``."""
    if t.layout != _torch().strided:
        raise TypeError(f"{name} is a {t.layout} tensor; pass a dense (strided) tensor, e.g. {name}.to_dense()")


def from_compute(y: Any, kind: ArrayKind) -> Any:
    """Give a result back as the caller's array type, on the caller's device.

    numpy results for a CuPy/torch-CUDA caller are copied to that device (this
    happens when the caller asked for ``device="cpu"`` explicitly); CuPy results
    for a numpy caller come back to the host.  Tensors share the result's
    memory through DLPack (CUDA results must be handed over inside
    :func:`caller_stream`); read-only or negatively strided arrays, which a
    tensor cannot alias, are copied.
    """
    if y is None:
        return None
    if isinstance(y, np.generic):
        y = np.asarray(y)
    on_gpu = is_cupy(y)
    if kind.library == "numpy":
        return y.get() if on_gpu else y
    if kind.library == "cupy":
        if on_gpu:
            if y.device.id == kind.device_index:
                return y
            import cupy

            with cupy.cuda.Device(kind.device_index):  # computed on another GPU at the caller's request
                return y.copy()  # CuPy's copy reads any device and writes the current one
        import cupy

        with cupy.cuda.Device(kind.device_index):
            return cupy.asarray(y)
    torch = _torch()
    if _bf16.is_bfloat16(y.dtype):
        return from_bfloat16_bits(y, kind)
    if kind.on_gpu:
        if not on_gpu:
            t = torch.from_numpy(_aliasable(y)).to(kind.device)
        else:
            t = torch.from_dlpack(_aliasable(y))
            if t.device != torch.device(kind.device):
                t = t.to(kind.device)  # computed on another GPU at the caller's request
    else:
        if on_gpu:
            y = y.get()
        t = torch.from_dlpack(_aliasable(y))
    if kind.bfloat16 and t.is_floating_point():
        t = t.to(torch.bfloat16)
    return t


def from_bfloat16_bits(y: Any, kind: ArrayKind) -> Any:
    """Give a bfloat16 array (or its ``uint16`` bits) back as the caller's bfloat16 tensor, sharing memory.

    The counterpart of ``to_compute(..., keep_bfloat16=True)``; ``kind`` is a
    torch kind (CUDA results inside :func:`caller_stream`).  The tensor is made
    from an ``int16`` view: numpy's DLPack has no bfloat16, and the view costs
    nothing on a GPU either.
    """
    t = from_compute(_bf16.as_bits(y).view(np.int16), ArrayKind(kind.library, kind.device))
    return t.view(_torch().bfloat16)


def _aliasable(y: Any) -> Any:
    """``y`` itself if a tensor may alias it, else a C-contiguous copy.

    torch has no negative strides (importing them aborts the process, not
    raises), and a tensor is always writable, so read-only arrays are copied.
    """
    if any(s < 0 for s in y.strides):
        return array_module(y).ascontiguousarray(y)
    if not is_writeable(y):
        return y.copy()
    return y


def copy_into(dest: Any, src: Any) -> None:
    """``dest[...] = src`` for numpy and CuPy arrays on any devices (host, or another GPU)."""
    if not is_cupy(dest):
        dest[...] = src.get() if is_cupy(src) else src
        return
    import cupy

    with cupy.cuda.Device(dest.device.id):
        if not is_cupy(src):
            src = cupy.asarray(src)
        elif src.device.id != dest.device.id:
            src = src.copy()
        dest[...] = src


def is_writeable(a: Any) -> bool:
    """Whether ``a`` may be written: numpy's ``writeable`` flag; CuPy arrays always may.

    CuPy's ``flags`` has only ``c_contiguous``, ``f_contiguous`` and ``owndata``
    (device memory has no read-only mode), so code that may see either kind
    asks here instead of reading ``a.flags.writeable``.
    """
    return bool(getattr(a.flags, "writeable", True))


@contextlib.contextmanager
def caller_stream(kind: ArrayKind) -> Iterator[None]:
    """Run the enclosed GPU work, and DLPack hand-overs, on the caller's stream.

    For torch CUDA tensors that is ``torch.cuda.current_stream()``, wrapped as
    a CuPy external stream and made CuPy's current stream, so that our
    launches are ordered after the caller's pending work and before whatever
    the caller queues next, with no synchronisation at all.  CuPy callers
    already run on CuPy's current stream; their arrays' device is made the
    current one (CuPy refuses, or with peer access silently races on, arrays
    of another device).  Host callers need nothing.

    Notes
    -----
    Inside this context the stream CuPy passes to ``tensor.__dlpack__(stream=s)``
    (``cupy.from_dlpack``) and the stream torch passes to
    ``cupy_array.__dlpack__(stream=s)`` (``torch.from_dlpack``) are both the
    caller's own stream, so under the DLPack rules (array API standard,
    ``array.__dlpack__``: "stream is provided by the consumer to the producer
    to instruct the producer to ensure that operations can safely be performed
    on the array") the producer sees consumer stream == producer stream and
    inserts nothing.  torch's legacy default stream (handle 0) is passed as
    ``1`` by both libraries, as the standard requires.  torch's ``__dlpack__``
    also refuses tensors that are not on torch's current device, hence
    ``torch.cuda.device`` here.

    Memory of results is allocated from CuPy's pool on this stream and is
    returned to it when the tensor dies; route CuPy through torch's caching
    allocator if one pool is wanted (see ``docs/torch.md``).
    """
    if not kind.on_gpu:
        yield
        return
    import cupy

    if kind.library == "cupy":
        with cupy.cuda.Device(kind.device_index):
            yield
        return

    torch = _torch()
    index = kind.device_index
    stream = torch.cuda.current_stream(index)
    with torch.cuda.device(index), cupy.cuda.Device(index):
        with cupy.cuda.ExternalStream(stream.cuda_stream, index):
            yield
