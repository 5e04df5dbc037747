"""A stand-in for CuPy that runs on numpy and refuses what only numpy allows.

``make()`` builds a module object to install as ``sys.modules["cupy"]`` (see
``tests/test_cuda_path_simulated.py``), so that liam_gpu's CUDA backend code
runs on a machine without a GPU.  It is a test double, not a CuPy emulation:
arithmetic is numpy's, and "device memory" is host memory.  What it imitates
is CuPy's *surface*, strictly, so that code which works only because numpy is
lenient fails here as it would on a GPU:

* :class:`ndarray` wraps a numpy array and has exactly the attributes
  ``cupy.ndarray`` has (the names of the installed CuPy when there is one,
  else the snapshot below, taken from CuPy 14.2).  ``flags`` has only
  ``c_contiguous``, ``f_contiguous`` and ``owndata`` (no ``writeable``), there
  is no ``ctypes`` and no ``__index__``, ``data.ptr`` is the address of the
  first element, and ``device.id`` the device the array was allocated on.
* ``__array__`` raises ``TypeError`` like CuPy's refusal of implicit
  conversion (so ``np.asarray(cupy_array)`` fails); ``.get()`` copies to the
  host.
* numpy ufuncs and ``__array_function__`` functions called on these arrays
  run only when CuPy has a function of the same name (CuPy dispatches them to
  its own); numpy arrays among the arguments of a CuPy function, method,
  ufunc or operator are refused (``TypeError``), except by the creation
  functions ``array``/``asarray``/``asanyarray`` that copy host data to the
  device.  Reductions return 0-d arrays, never numpy scalars.
* ``cuda.Device(i)`` is a context manager that makes device ``i`` current
  (``i`` must be below ``device_count``); arrays are allocated on the current
  device, and an operation on an array of another device raises
  ``ValueError`` (CuPy needs peer access for that, and then races with the
  other device's streams), as does a kernel launch with such an argument.
  Views, ``get()``, ``copy()`` and ``asarray`` (which copies another
  device's array to the current one, as CuPy's does) work across devices.
* ``ml_dtypes.bfloat16`` arrays work as in CuPy 14 (numpy's own, with
  ml_dtypes' casts), and ``from_dlpack`` imports a torch bfloat16 tensor as
  one, sharing its memory, as CuPy 14 does with ml_dtypes installed.
* ``cupy.linalg`` follows cuSOLVER where it differs from LAPACK: ``eig``
  always returns complex arrays, and a singular matrix gives NaN from
  ``inv``/``solve``/``matrix_power(n < 0)`` instead of ``LinAlgError``.
* :func:`kernel_args` converts a ``RawKernel`` argument tuple the way CuPy's
  launcher does (arrays by pointer, Python scalars as 64-bit numpy scalars,
  anything else -- numpy arrays included -- is ``TypeError``), for a runtime
  that executes the launch on the emulator.
* ``cuda.runtime.getDeviceProperties(i)`` gives H200-like properties
  (:data:`DEVICE_PROPERTIES`: 132 SMs, compute capability 9.0, 48 KiB of
  shared memory per block, 227 KiB opt-in).
* :class:`RawModule` (keyword-only ``code``, ``options`` a tuple,
  ``name_expressions``) compiles through the CUDA emulator, once per
  (code, name expressions, options) per process, when ``compile()`` or the
  first ``get_function`` is called.  ``get_function(name)`` takes exactly one
  of the name expressions (else ``CUDADriverError``, CUDA_ERROR_NOT_FOUND) and
  gives a :class:`RawKernel` bound to the device current at the lookup: a
  launch, or a ``max_dynamic_shared_size_bytes`` change, while another device
  is current is refused (``ValueError``; CuPy itself would load the module
  again there, silently, with the attribute unset -- the fake treats that as
  the bug it usually is).  ``RawKernel.__call__(grid, block, args,
  shared_mem=0)`` takes tuples for ``grid`` and ``block`` (CuPy's ``Function``
  is typed so), converts ``args`` with :func:`kernel_args`, refuses more than
  48 KiB of dynamic shared memory unless ``max_dynamic_shared_size_bytes``
  was raised to cover it on that device (CUDA_ERROR_INVALID_VALUE, as the
  driver does), and runs the emulator kernel.  :data:`RAW_CALLS` records
  module constructions, compiles, lookups, attribute changes and launches
  (cleared by :func:`make`).
"""
from __future__ import annotations

import operator
import sys
import threading
import types
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- CuPy's names

#: Public attributes of ``cupy.ndarray`` (CuPy 14.2).
SNAPSHOT_NDARRAY = frozenset("""
T all any argmax argmin argpartition argsort astype base byteswap choose clip compress conj conjugate
copy cstruct cumprod cumsum data device diagonal dot dtype dump dumps fill flags flat flatten get imag
item itemsize mT max mdspan mean min nbytes ndim nonzero partition prod ptp put ravel real reduced_view
repeat reshape round scatter_add scatter_max scatter_min searchsorted set shape size sort squeeze std
strides sum swapaxes take toDlpack tobytes tofile tolist trace transpose var view
""".split())

#: Public names that ``cupy`` and ``numpy`` share (CuPy 14.2).
SNAPSHOT_MODULE = frozenset("""
abs absolute acos acosh add all allclose amax amin angle any append apply_along_axis apply_over_axes
arange arccos arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin argpartition argsort
argwhere around array array2string array_equal array_equiv array_repr array_split array_str
asanyarray asarray asarray_chkfinite ascontiguousarray asfortranarray asin asinh astype atan atan2
atanh atleast_1d atleast_2d atleast_3d average bartlett base_repr binary_repr bincount bitwise_and
bitwise_count bitwise_invert bitwise_left_shift bitwise_not bitwise_or bitwise_right_shift
bitwise_xor blackman bool bool_ broadcast broadcast_arrays broadcast_shapes broadcast_to byte c_
can_cast cbrt cdouble ceil choose clip column_stack common_type complex128 complex64 complexfloating
compress concat concatenate conj conjugate convolve copy copysign copyto corrcoef correlate cos cosh
count_nonzero cov cross csingle cumprod cumsum cumulative_prod cumulative_sum deg2rad degrees delete
diag diag_indices diag_indices_from diagflat diagonal diff digitize divide divmod dot double dsplit
dstack dtype e ediff1d einsum empty empty_like equal euler_gamma exceptions exp exp2 expand_dims
expm1 extract eye fabs fft fill_diagonal finfo fix flatiter flatnonzero flip fliplr flipud float16
float32 float64 float_power floating floor floor_divide fmax fmin fmod format_float_positional
format_float_scientific frexp from_dlpack frombuffer fromfile fromfunction fromiter fromstring full
full_like gcd generic genfromtxt get_printoptions gradient greater greater_equal half hamming
hanning heaviside histogram histogram2d histogramdd hsplit hstack hypot i0 identity iinfo imag
index_exp indices inexact inf inner int16 int32 int64 int8 int_ intc integer interp intersect1d intp
invert isclose iscomplex iscomplexobj isdtype isfinite isfortran isin isinf isnan isneginf isposinf
isreal isrealobj isscalar issubdtype iterable ix_ kaiser kron lcm ldexp left_shift less less_equal
lexsort lib linalg linspace load loadtxt log log10 log1p log2 logaddexp logaddexp2 logical_and
logical_not logical_or logical_xor logspace long longlong mask_indices matmul matrix_transpose max
maximum may_share_memory mean median meshgrid mgrid min min_scalar_type minimum mintypecode mod modf
moveaxis multiply nan nan_to_num nanargmax nanargmin nancumprod nancumsum nanmax nanmean nanmedian
nanmin nanprod nanstd nansum nanvar ndarray ndim ndindex negative newaxis nextafter nonzero
not_equal number ogrid ones ones_like outer packbits pad partition percentile permute_dims pi
piecewise place poly poly1d polyadd polyfit polymul polynomial polysub polyval positive pow power
printoptions prod promote_types ptp put put_along_axis putmask quantile r_ rad2deg radians random
ravel ravel_multi_index real real_if_close reciprocal remainder repeat require reshape resize
result_type right_shift rint roll rollaxis roots rot90 round row_stack s_ save savetxt savez
savez_compressed searchsorted select set_printoptions setdiff1d setxor1d shape shares_memory short
show_config sign signbit signedinteger sin sinc single sinh size sort sort_complex split sqrt square
squeeze stack std subtract sum swapaxes take take_along_axis tan tanh tensordot testing tile trace
transpose trapezoid tri tril tril_indices tril_indices_from trim_zeros triu triu_indices
triu_indices_from true_divide trunc typename typing ubyte ufunc uint uint16 uint32 uint64 uint8
uintc uintp ulong ulonglong union1d unique unique_all unique_counts unique_inverse unique_values
unpackbits unravel_index unsignedinteger unwrap ushort vander var vdot vectorize vsplit vstack where
zeros zeros_like
""".split())

#: Public names that ``cupy.linalg`` and ``numpy.linalg`` share (CuPy 14.2).
SNAPSHOT_LINALG = frozenset("""
LinAlgError cholesky cond cross det eig eigh eigvals eigvalsh inv lstsq matmul matrix_power
matrix_rank matrix_transpose norm pinv qr slogdet solve svd tensorinv tensorsolve
""".split())


def installed_cupy_names() -> tuple[frozenset, frozenset, frozenset] | None:
    """(ndarray, module, linalg) public names of the installed CuPy, or None without one.

    Importing CuPy needs no GPU.  Only names numpy also has count for the two
    namespaces (the others are never reached through numpy-like code).
    """
    try:
        import cupy
    except Exception:  # not installed, or its CUDA libraries are missing
        return None
    if isinstance(cupy, types.ModuleType) and getattr(cupy, "_FAKE", False):
        return None

    def public(names):
        return frozenset(n for n in names if not n.startswith("_"))

    return (public(dir(cupy.ndarray)), public(set(dir(cupy)) & set(dir(np))),
            public(set(dir(cupy.linalg)) & set(dir(np.linalg))))


def _names() -> tuple[frozenset, frozenset, frozenset]:
    snap = (SNAPSHOT_NDARRAY, SNAPSHOT_MODULE, SNAPSHOT_LINALG)
    real = installed_cupy_names()
    return snap if real is None else tuple(s & r for s, r in zip(snap, real))


NDARRAY_NAMES, MODULE_NAMES, LINALG_NAMES = _names()

#: Functions that copy host data to the device, so they take numpy arrays.
_HOST_INPUT = frozenset({"array", "asarray", "asanyarray"})
#: Methods that make a view or a host copy: no kernel, so the array may be on any device.
_NO_KERNEL = frozenset({"reshape", "view", "transpose", "swapaxes", "squeeze", "diagonal", "item", "tolist",
                        "tobytes"})

# --------------------------------------------------------------------------- devices and streams

_state = threading.local()
_device_count = 1


def _current() -> int:
    return getattr(_state, "device", 0)


class CUDARuntimeError(RuntimeError):
    """What CuPy raises for an invalid device ordinal."""


class Device:
    """``cupy.cuda.Device``: a device ordinal; ``with Device(i):`` makes it current."""

    def __init__(self, device: Any = None) -> None:
        if device is None:
            device = _current()
        if isinstance(device, (bool, np.bool_)) or not isinstance(device, (int, np.integer)):
            raise TypeError(f"[fake cupy] Device() takes an int ordinal, got {device!r}")
        if not 0 <= int(device) < _device_count:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device} "
                                   f"([fake cupy] {_device_count} device(s))")
        self.id = int(device)
        self._saved: list[int] = []

    def __enter__(self) -> "Device":
        self._saved.append(_current())
        _state.device = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.device = self._saved.pop()

    def use(self) -> None:
        _state.device = self.id

    def synchronize(self) -> None:
        pass

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Stream:
    """The current stream: work is synchronous here, so there is nothing to wait for."""

    ptr = 0

    def synchronize(self) -> None:
        pass


class MemoryPointer:
    """``ndarray.data``: the address of the first element and its device."""

    def __init__(self, a: np.ndarray, device_id: int) -> None:
        self.ptr = int(a.__array_interface__["data"][0])
        self.device_id = device_id
        self.device = Device(device_id)


class Flags:
    """``ndarray.flags``: CuPy has these three and nothing else (no ``writeable``)."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray) -> None:
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, name: str) -> bool:
        key = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous", "OWNDATA": "owndata"}
        return getattr(self, key[name])

    def __repr__(self) -> str:
        return "\n".join(f"  {n.upper()} : {getattr(self, n)}" for n in self.__slots__)


# --------------------------------------------------------------------------- wrapping


def _refuse_host(what: str, values: Any) -> None:
    """CuPy functions take CuPy arrays and scalars, never numpy arrays."""
    for v in values:
        if isinstance(v, np.ndarray):
            raise TypeError(f"[fake cupy] {what}: Unsupported type {type(v)} (a host numpy array; "
                            "copy it with cupy.asarray first)")
        if isinstance(v, (list, tuple)):
            _refuse_host(what, v)


def _check_devices(what: str, values: Any) -> None:
    """Arrays of another device than the current one need peer access (and race): refuse."""
    for v in values:
        if isinstance(v, ndarray) and v._dev != _current():
            raise ValueError(f"[fake cupy] {what}: array on device {v._dev} used while device "
                             f"{_current()} is current")
        if isinstance(v, (list, tuple)):
            _check_devices(what, v)


def _unwrap(x: Any) -> Any:
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _originals(values: Any, found: dict[int, ndarray]) -> dict[int, ndarray]:
    for v in values:
        if isinstance(v, ndarray):
            found[id(v._a)] = v
        elif isinstance(v, (list, tuple)):
            _originals(v, found)
    return found


def _wrap(x: Any, inputs: dict[int, ndarray] | None = None, device: int | None = None) -> Any:
    """numpy results as fake CuPy arrays (on ``device``, default the current one).

    An input array returned as it is (``asarray`` of a CuPy array) stays itself.
    """
    if isinstance(x, np.ndarray):
        if inputs and id(x) in inputs and inputs[id(x)]._a is x:
            return inputs[id(x)]
        return ndarray(x, device)
    if isinstance(x, np.generic):  # CuPy reductions give 0-d arrays
        return ndarray(np.asarray(x), device)
    if isinstance(x, tuple):  # including numpy's named results (CuPy gives plain tuples)
        return tuple(_wrap(v, inputs, device) for v in x)
    if isinstance(x, list):
        return [_wrap(v, inputs, device) for v in x]
    return x


def _call(what: str, fn: Any, args: tuple, kwargs: dict, *, host_input: bool = False) -> Any:
    """Run a numpy function as CuPy would run its namesake on these arguments.

    ``host_input``: numpy arrays are data to copy to the current device (the
    creation functions); otherwise they are refused, and CuPy arrays must be
    on the current device.
    """
    if not host_input:
        _refuse_host(what, args)
        _refuse_host(what, kwargs.values())
        _check_devices(what, args)
        _check_devices(what, kwargs.values())
    out = kwargs.get("out")
    result = fn(*_unwrap(args), **_unwrap(kwargs))
    if out is not None:
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out
    if host_input and args and isinstance(result, np.ndarray):
        source = args[0]
        if not isinstance(source, ndarray) or source._dev != _current():
            # Host data, or another device's array: copied to the current device, never aliased.
            return ndarray(result.copy(order="K") if np.may_share_memory(result, _unwrap(source)) else result)
    return _wrap(result, _originals((*args, *kwargs.values()), {}))


def _is_basic_index(key: Any) -> bool:
    basic = (int, np.integer, slice, type(Ellipsis), type(None))
    if isinstance(key, tuple):
        return all(isinstance(k, basic) and not isinstance(k, (bool, np.bool_)) for k in key)
    return isinstance(key, basic) and not isinstance(key, (bool, np.bool_))


class ndarray:  # CuPy's name
    """A numpy array presented as a ``cupy.ndarray`` of the device current at its creation."""

    __slots__ = ("_a", "_dev")
    __array_priority__ = 100

    def __init__(self, a: np.ndarray, device_id: int | None = None) -> None:
        if not isinstance(a, np.ndarray):
            raise TypeError("[fake cupy] the fake ndarray wraps a numpy array; use cupy.empty/asarray")
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "_dev", _current() if device_id is None else device_id)

    # -- what differs from numpy ----------------------------------------------------
    @property
    def flags(self) -> Flags:
        return Flags(self._a)

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self._a, self._dev)

    @property
    def device(self) -> Device:
        return Device(self._dev)

    @property
    def base(self) -> Any:
        b = self._a.base
        return ndarray(b, self._dev) if isinstance(b, np.ndarray) else None

    @property
    def __cuda_array_interface__(self) -> Any:
        raise NotImplementedError("[fake cupy] __cuda_array_interface__ is not simulated")

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        """Copy to the host (a new numpy array, or into ``out``)."""
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """Copy host data of the same shape and dtype in."""
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("[fake cupy] set() needs a numpy array of the same shape and dtype")
        self._a[...] = arr

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self._dev)  # kDLCUDA

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("[fake cupy] DLPack export of simulated device memory is not simulated")

    # -- numpy's protocols: only for what CuPy also has -----------------------------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if ufunc.__name__ not in MODULE_NAMES:
            return NotImplemented
        return _call(f"numpy.{ufunc.__name__}.{method}", getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func: Any, types_: Any, args: tuple, kwargs: dict) -> Any:
        module = func.__module__ or "numpy"
        names = LINALG_NAMES if module.endswith("linalg") else MODULE_NAMES if module == "numpy" else ()
        if func.__name__ not in names:
            return NotImplemented  # numpy then raises TypeError, as with CuPy
        if module.endswith("linalg"):
            return getattr(_LINALG, func.__name__)(*args, **kwargs)
        return _call(f"numpy.{func.__name__}", func, args, kwargs)

    # -- everything else that cupy.ndarray has, delegated to numpy ----------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in NDARRAY_NAMES:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        try:
            attr = getattr(self._a, name)
        except AttributeError:
            raise NotImplementedError(f"[fake cupy] cupy.ndarray.{name} is not simulated") from None
        if not callable(attr):
            return _wrap(attr, device=self._dev)  # T, real, ...: views

        def method(*args: Any, **kwargs: Any) -> Any:
            view = name in _NO_KERNEL
            what = f"cupy.ndarray.{name}"
            _refuse_host(what, args)
            _refuse_host(what, kwargs.values())
            if not view and name != "copy":  # copy() reads any device, writes the current one
                _check_devices(what, (self,) + args)
                _check_devices(what, kwargs.values())
            result = attr(*_unwrap(args), **_unwrap(kwargs))
            return _wrap(result, _originals((self, *args, *kwargs.values()), {}), self._dev if view else None)

        return method

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"[fake cupy] setting cupy.ndarray.{name} is not simulated")

    def __getitem__(self, key: Any) -> Any:
        if _is_basic_index(key):  # a view: no kernel
            return _wrap(self._a[key], device=self._dev)
        _check_devices("cupy.ndarray.__getitem__", [self, key])
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_devices("cupy.ndarray.__setitem__", [self, value])
        if isinstance(value, np.ndarray) and value.ndim and _is_basic_index(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray(row, self._dev) for row in self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __repr__(self) -> str:
        return repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a, spec)

    def __copy__(self) -> "ndarray":
        return ndarray(self._a.copy(), self._dev)

    def __deepcopy__(self, memo: Any) -> "ndarray":
        return ndarray(self._a.copy(), self._dev)

    __hash__ = None  # type: ignore[assignment]

    def __neg__(self) -> Any:
        return _call("negative", np.negative, (self,), {})

    def __pos__(self) -> Any:
        return _call("positive", np.positive, (self,), {})

    def __abs__(self) -> Any:
        return _call("absolute", np.absolute, (self,), {})

    def __invert__(self) -> Any:
        return _call("invert", np.invert, (self,), {})


def _binary(name: str, op: Any, reflected: bool = False, inplace: bool = False) -> Any:
    def method(self: ndarray, other: Any) -> Any:
        what = f"cupy.ndarray.{name}"
        if inplace:
            _refuse_host(what, [other])
            _check_devices(what, [self, other])
            op(self._a, _unwrap(other))
            return self
        args = (other, self) if reflected else (self, other)
        return _call(what, op, args, {})

    method.__name__ = name
    return method


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
                   ("pow", operator.pow), ("and", operator.and_), ("or", operator.or_),
                   ("xor", operator.xor), ("lshift", operator.lshift), ("rshift", operator.rshift)]:
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__", _op))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__", _op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binary(f"__i{_name}__", getattr(operator, f"i{_name}"), inplace=True))
ndarray.__matmul__ = _binary("__matmul__", operator.matmul)  # no __imatmul__: CuPy has none
ndarray.__rmatmul__ = _binary("__rmatmul__", operator.matmul, reflected=True)
ndarray.__divmod__ = _binary("__divmod__", divmod)
ndarray.__rdivmod__ = _binary("__rdivmod__", divmod, reflected=True)
for _name, _op in [("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                   ("eq", operator.eq), ("ne", operator.ne)]:
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__", _op))

# --------------------------------------------------------------------------- namespaces


def _function(name: str, fn: Any) -> Any:
    if not callable(fn) or isinstance(fn, type):
        return fn  # dtypes, constants, finfo: CuPy re-exports numpy's

    def call(*args: Any, **kwargs: Any) -> Any:
        return _call(f"cupy.{name}", fn, args, kwargs, host_input=name in _HOST_INPUT)

    call.__name__ = call.__qualname__ = name
    return call


class _LinalgModule(types.ModuleType):
    """``cupy.linalg``, with cuSOLVER's answers where they differ from LAPACK's."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in LINALG_NAMES:
            raise AttributeError(f"module 'cupy.linalg' has no attribute {name!r}")
        if name == "LinAlgError":
            return np.linalg.LinAlgError
        fn = _CUSOLVER.get(name, getattr(np.linalg, name))
        return _function(f"linalg.{name}", fn)


def _nan_if_singular(fn: Any) -> Any:
    def call(a: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(a, *args, **kwargs)
        except np.linalg.LinAlgError:  # cuSOLVER reports it in devInfo, which CuPy ignores by default
            eye = np.broadcast_to(np.eye(a.shape[-1], dtype=a.dtype), a.shape)
            return np.full_like(fn(eye, *args, **kwargs), np.nan)

    return call


def _matrix_power(a: Any, n: int) -> Any:
    if n < 0:
        return np.linalg.matrix_power(_nan_if_singular(np.linalg.inv)(a), -n)
    return np.linalg.matrix_power(a, n)


def _eig(a: Any) -> Any:
    w, v = np.linalg.eig(a)
    complex_dtype = np.result_type(w.dtype, np.complex64)
    return w.astype(complex_dtype), v.astype(complex_dtype)


_CUSOLVER = {"eig": _eig, "inv": _nan_if_singular(np.linalg.inv), "solve": _nan_if_singular(np.linalg.solve),
             "matrix_power": _matrix_power}
_LINALG = _LinalgModule("cupy.linalg")


# --------------------------------------------------------------------------- device properties, RawModule

#: What ``cuda.runtime.getDeviceProperties`` answers for every simulated device (an H200's values).
DEVICE_PROPERTIES: dict[str, Any] = {
    "name": b"NVIDIA H200 (fake cupy)",
    "totalGlobalMem": 150_754_820_096,
    "sharedMemPerBlock": 48 * 1024,
    "sharedMemPerBlockOptin": 227 * 1024,
    "sharedMemPerMultiprocessor": 228 * 1024,
    "regsPerBlock": 65536,
    "regsPerMultiprocessor": 65536,
    "warpSize": 32,
    "maxThreadsPerBlock": 1024,
    "maxThreadsPerMultiProcessor": 2048,
    "maxThreadsDim": (1024, 1024, 64),
    "maxGridSize": (2**31 - 1, 65535, 65535),
    "multiProcessorCount": 132,
    "major": 9,
    "minor": 0,
}

#: Dynamic shared memory a kernel may use without raising ``max_dynamic_shared_size_bytes``.
DEFAULT_DYNAMIC_SHARED = 48 * 1024


class CUDADriverError(RuntimeError):
    """What CuPy raises for a failed driver call (``cupy.cuda.driver.CUDADriverError``)."""


def _ordinal(device: Any, what: str) -> int:
    if isinstance(device, (bool, np.bool_)) or not isinstance(device, (int, np.integer)):
        raise TypeError(f"[fake cupy] {what} takes an int device ordinal, got {device!r}")
    if not 0 <= int(device) < _device_count:
        raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device} "
                               f"([fake cupy] {_device_count} device(s))")
    return int(device)


class _RuntimeModule(types.ModuleType):
    """``cupy.cuda.runtime``: device count, current device and properties."""

    CUDARuntimeError = CUDARuntimeError

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"[fake cupy] cupy.cuda.runtime.{name} is not simulated")

    @staticmethod
    def getDeviceCount() -> int:
        return _device_count

    @staticmethod
    def getDevice() -> int:
        return _current()

    @staticmethod
    def getDeviceProperties(device: int) -> dict[str, Any]:
        _ordinal(device, "getDeviceProperties")
        return dict(DEVICE_PROPERTIES)


class _DriverModule(types.ModuleType):
    """``cupy.cuda.driver``: only its error type."""

    CUDADriverError = CUDADriverError

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"[fake cupy] cupy.cuda.driver.{name} is not simulated")


class RawCalls:
    """What the fake's ``RawModule``/``RawKernel`` were asked, in order (cleared by :func:`make`).

    Attributes
    ----------
    modules
        ``(name_expressions, options, current device)`` per ``RawModule(...)``.
    compiles
        ``(name_expressions, device)`` per load of a module on a device
        (``compile()`` or a first ``get_function`` there).
    lookups
        ``(name, device)`` per ``get_function``.
    attributes
        ``(name, device, attribute, value)`` per attribute set.
    launches
        ``(name, device, grid, block, shared_mem)`` per kernel launch.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.modules: list[tuple[tuple[str, ...], tuple[str, ...], int]] = []
        self.compiles: list[tuple[tuple[str, ...], int]] = []
        self.lookups: list[tuple[str, int]] = []
        self.attributes: list[tuple[str, int, str, int]] = []
        self.launches: list[tuple[str, int, tuple, tuple, int]] = []


RAW_CALLS = RawCalls()

#: The dtype of every array ``cupy.from_dlpack`` made (cleared by :func:`make`).
DLPACK_IMPORTS: list[np.dtype] = []

#: Emulator builds by (code, name expressions, options), shared by every RawModule of the process.
_EMULATOR_MODULES: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}
_EMULATOR_LOCK = threading.Lock()


def _emulator_module(code: str, name_expressions: tuple[str, ...], options: tuple[str, ...]) -> Any:
    key = (code, name_expressions, options)
    with _EMULATOR_LOCK:
        module = _EMULATOR_MODULES.get(key)
        if module is None:
            from liam_gpu.emulator import EmulatorModule

            module = _EMULATOR_MODULES[key] = EmulatorModule(code, name_expressions=name_expressions,
                                                             options=options)
        return module


class RawModule:
    """``cupy.RawModule`` from source and name expressions, compiled by the CUDA emulator.

    Like CuPy's: the arguments are keyword-only, ``options`` must be a tuple
    (CuPy's parameter is typed ``tuple``), ``name_expressions`` needs
    ``code`` and the NVRTC backend, and compiling happens at ``compile()`` or
    at the first ``get_function``, once per device.  Loading from a cubin/PTX
    ``path`` is not simulated.
    """

    def __init__(self, *, code: str | None = None, path: str | None = None, options: tuple = (),
                 backend: str = "nvrtc", translate_cucomplex: bool = False,
                 enable_cooperative_groups: bool = False, name_expressions: Any = None,
                 jitify: bool = False) -> None:
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if path is not None:
            raise NotImplementedError("[fake cupy] RawModule(path=...) is not simulated")
        if not isinstance(code, str):
            raise TypeError(f"Argument 'code' has incorrect type (expected str, got {type(code).__name__})")
        if not isinstance(options, tuple):
            raise TypeError(f"Argument 'options' has incorrect type (expected tuple, got {type(options).__name__})")
        if not all(isinstance(o, str) for o in options):
            raise TypeError(f"[fake cupy] compile options must be str, got {options!r}")
        if backend != "nvrtc":
            raise ValueError("only nvrtc supports retrieving the mangled names for the given name expressions")
        if name_expressions is None:
            raise NotImplementedError("[fake cupy] a RawModule without name_expressions is not simulated "
                                      "(the emulator exports only listed kernels)")
        if isinstance(name_expressions, str):
            raise TypeError("[fake cupy] name_expressions must be a sequence of str, not one str")
        names = tuple(name_expressions)
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"[fake cupy] name_expressions must be a non-empty sequence of str, got {names!r}")
        if translate_cucomplex or enable_cooperative_groups or jitify:
            raise NotImplementedError("[fake cupy] translate_cucomplex, enable_cooperative_groups and jitify "
                                      "are not simulated")
        self.code = code
        self.options = options
        self.backend = backend
        self.name_expressions = names
        self._devices: set[int] = set()  # devices where the module is loaded
        RAW_CALLS.modules.append((names, options, _current()))

    def _module(self) -> Any:
        """The emulator module, loaded on the current device (compiling once per process)."""
        module = _emulator_module(self.code, self.name_expressions, self.options)
        device = _current()
        if device not in self._devices:
            self._devices.add(device)
            RAW_CALLS.compiles.append((self.name_expressions, device))
        return module

    def compile(self, log_stream: Any = None) -> None:
        """Compile (and load on the current device), as CuPy does on first use."""
        self._module()

    def get_function(self, name: str) -> RawKernel:
        """The kernel of one name expression, bound to the current device."""
        if not isinstance(name, str):
            raise TypeError(f"Argument 'name' has incorrect type (expected str, got {type(name).__name__})")
        module = self._module()
        device = _current()
        RAW_CALLS.lookups.append((name, device))
        if name not in self.name_expressions:  # CuPy's mapping is exact; the driver then finds nothing
            raise CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found ([fake cupy] {name!r} is not "
                                  f"among the module's name_expressions {list(self.name_expressions)})")
        return RawKernel._bound(name, module.get_function(name), device)


class RawKernel:
    """``cupy.RawKernel`` as :meth:`RawModule.get_function` gives it, on the emulator.

    Bound to the device current at the lookup: launching it, or setting its
    ``max_dynamic_shared_size_bytes``, while another device is current is
    refused.  Only kernels from a :class:`RawModule` are simulated.
    """

    __slots__ = ("_device", "_kernel", "_max_dynamic_shared", "name")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("[fake cupy] only RawKernels from RawModule.get_function are simulated")

    @classmethod
    def _bound(cls, name: str, kernel: Any, device: int) -> RawKernel:
        self = object.__new__(cls)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_kernel", kernel)
        object.__setattr__(self, "_device", device)
        object.__setattr__(self, "_max_dynamic_shared", DEFAULT_DYNAMIC_SHARED)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "max_dynamic_shared_size_bytes":
            raise AttributeError(f"[fake cupy] setting cupy.RawKernel.{name} is not simulated")
        object.__setattr__(self, name, value)  # the property below

    def _check_device(self, what: str) -> None:
        if _current() != self._device:
            raise ValueError(f"[fake cupy] {what} of kernel {self.name!r} while device {_current()} is current; "
                             f"it was looked up on device {self._device} (CuPy would load the module again "
                             "there, without this kernel's attributes)")

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        self._check_device("reading max_dynamic_shared_size_bytes")
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        self._check_device("setting max_dynamic_shared_size_bytes")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"[fake cupy] max_dynamic_shared_size_bytes takes an int, got {value!r}")
        if not 0 <= int(value) <= DEVICE_PROPERTIES["sharedMemPerBlockOptin"]:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: invalid argument ([fake cupy] "
                                  f"max_dynamic_shared_size_bytes={value} is outside "
                                  f"[0, {DEVICE_PROPERTIES['sharedMemPerBlockOptin']}])")
        RAW_CALLS.attributes.append((self.name, self._device, "max_dynamic_shared_size_bytes", int(value)))
        object.__setattr__(self, "_max_dynamic_shared", int(value))

    def __call__(self, grid: tuple, block: tuple, args: Any, *, shared_mem: int = 0, stream: Any = None) -> None:
        """Launch on the emulator, checked as CuPy's launcher and the driver would check it."""
        if not isinstance(grid, tuple) or not isinstance(block, tuple):
            raise TypeError(f"[fake cupy] grid and block must be tuples (CuPy's Function is typed so), "
                            f"got {type(grid).__name__} and {type(block).__name__}")
        if isinstance(shared_mem, (bool, np.bool_)) or not isinstance(shared_mem, (int, np.integer)) \
                or shared_mem < 0:
            raise TypeError(f"[fake cupy] shared_mem must be a non-negative int, got {shared_mem!r}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"[fake cupy] kernel args must be a tuple or list, got {type(args).__name__}")
        self._check_device("a launch")
        if int(shared_mem) > self._max_dynamic_shared:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: invalid argument ([fake cupy] kernel {self.name!r} "
                                  f"launched with {shared_mem} bytes of dynamic shared memory; "
                                  f"max_dynamic_shared_size_bytes is {self._max_dynamic_shared})")
        converted = kernel_args(tuple(args), self._device)
        RAW_CALLS.launches.append((self.name, self._device, grid, block, int(shared_mem)))
        self._kernel(grid, block, converted, shared_mem=int(shared_mem))

    def __repr__(self) -> str:
        return f"<fake cupy RawKernel {self.name!r} on device {self._device}>"


class _CudaModule(types.ModuleType):
    """``cupy.cuda``: devices and the current stream."""

    Device = Device
    CUDARuntimeError = CUDARuntimeError
    runtime = _RuntimeModule("cupy.cuda.runtime")
    driver = _DriverModule("cupy.cuda.driver")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"[fake cupy] cupy.cuda.{name} is not simulated")

    @staticmethod
    def get_current_stream(device: Any = None) -> Stream:
        return Stream()


class _FakeCupy(types.ModuleType):
    """The module installed as ``cupy``."""

    _FAKE = True
    ndarray = ndarray
    linalg = _LINALG
    cuda = _CudaModule("cupy.cuda")
    RawModule = RawModule
    RawKernel = RawKernel
    __version__ = "14.2.0+fake"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in MODULE_NAMES:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        if name in ("fft", "random", "testing", "lib", "typing", "exceptions", "polynomial"):
            raise NotImplementedError(f"[fake cupy] cupy.{name} is not simulated")
        return _function(name, getattr(np, name))

    @staticmethod
    def get_array_module(*args: Any) -> Any:
        return _MODULE if any(isinstance(a, ndarray) for a in args) else np

    @staticmethod
    def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
        return a.get(order=order, out=out) if isinstance(a, ndarray) else np.asarray(a, order=order)

    @staticmethod
    def from_dlpack(x: Any, *, device: Any = None, copy: Any = None) -> ndarray:
        """The producer's memory as an array of the current device, shared (no copy).

        numpy's DLPack importer stands in for CuPy's.  A torch bfloat16 tensor
        (DLPack's ``kDLBfloat``, 16 bits), which numpy refuses, comes in as an
        ``ml_dtypes.bfloat16`` array, as CuPy 14 imports it when ml_dtypes is
        installed (CuPy PR 9670); without ml_dtypes it is CuPy's
        ``NotImplementedError``.  :data:`DLPACK_IMPORTS` records the dtype of
        each import.
        """
        _refuse_host("cupy.from_dlpack", [x])
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16:
            try:
                import ml_dtypes
            except ImportError:
                raise NotImplementedError("CuPy does not support bfloat16. Please install ml_dtypes "
                                          "to use bfloat16.") from None
            a = np.from_dlpack(x.view(torch.int16)).view(ml_dtypes.bfloat16)
        else:
            a = np.from_dlpack(x)
        DLPACK_IMPORTS.append(np.dtype(a.dtype))
        return ndarray(a)


_MODULE = _FakeCupy("cupy")


def make(device_count: int = 1) -> types.ModuleType:
    """The fake ``cupy`` module, with ``device_count`` devices and device 0 current."""
    global _device_count
    _device_count = int(device_count)
    _state.device = 0
    RAW_CALLS.clear()
    DLPACK_IMPORTS.clear()
    SPARSE_DENSIFIED.clear()
    return _MODULE


def kernel_args(args: tuple, device_id: int) -> tuple:
    """A ``RawKernel`` argument tuple as the emulator takes it, checked as CuPy's launcher would.

    CuPy passes its arrays by device pointer (they must be on the launching
    device), numpy scalars of the C types as they are, and Python
    ``int``/``float``/``bool``/``complex`` as 64-bit numpy scalars; anything
    else, a numpy array above all, is ``TypeError('Unsupported type ...')``.
    """
    converted = []
    for a in args:
        if isinstance(a, ndarray):
            if a._dev != device_id:
                raise ValueError(f"[fake cupy] kernel argument on device {a._dev}, launched on {device_id}")
            converted.append(a._a)
        elif type(a) in _KERNEL_SCALARS:
            converted.append(a)
        elif isinstance(a, bool):
            converted.append(np.bool_(a))
        elif isinstance(a, int):
            converted.append(np.int64(a))
        elif isinstance(a, float):
            converted.append(np.float64(a))
        elif isinstance(a, complex):
            converted.append(np.complex128(a))
        else:
            raise TypeError(f"Unsupported type {type(a)} ([fake cupy] kernel argument)")
    return tuple(converted)


_KERNEL_SCALARS = frozenset(np.dtype(c).type for c in "?bhilqBHILQefdFD")


# --------------------------------------------------------------------------- cupyx.scipy.sparse

#: Public attributes of cupyx's ``csr_matrix``/``csc_matrix``/``coo_matrix`` (CuPy 14.2); those the fake
#: does not simulate raise ``NotImplementedError``, any other name ``AttributeError``.
SNAPSHOT_SPARSE = frozenset("""
A H T arcsin arcsinh arctan arctanh argmax argmin asformat asfptype astype ceil conj conjugate coords copy
count_nonzero deg2rad device diagonal dot dtype eliminate_zeros expm1 floor format get getH get_shape getcol
getformat getmaxprint getnnz getrow has_canonical_format has_sorted_indices imag log1p mT max maximum maxprint
mean min minimum multiply ndim nnz nonzero power prune rad2deg real reshape rint set_shape setdiag shape sign sin
sinh size sort_indices sorted_indices sqrt sum sum_duplicates tan tanh toarray tobsr tocoo tocsc tocsr todense
todia todok tolil trace transpose trunc data indices indptr row col
""".split())

#: The value dtypes cupyx's sparse matrices take (``_sputils.is_sparse_data_dtype``): no integers, no float16.
SPARSE_DTYPES = frozenset(np.dtype(t) for t in (np.bool_, np.float32, np.float64, np.complex64, np.complex128))

#: Every whole-matrix densification (``toarray``/``todense``) of a fake sparse matrix: ``(shape, device)``
#: (cleared by :func:`make`).
SPARSE_DENSIFIED: list[tuple[tuple[int, int], int]] = []


def _scipy_sparse() -> Any:
    import scipy.sparse

    return scipy.sparse


def _index_dtype(maxval: int, *arrays: np.ndarray) -> np.dtype:
    """cupyx's choice: int32 where the shape and the indices fit, else int64."""
    limit = np.iinfo(np.int32).max
    fits = maxval <= limit and all(a.size == 0 or int(a.max()) <= limit for a in arrays)
    return np.dtype(np.int32 if fits else np.int64)


class _SparseMatrix:
    """A scipy.sparse matrix of one format presented as a ``cupyx.scipy.sparse`` matrix of one device.

    Strict like the rest of the fake: constructors take fake device arrays
    (numpy arrays are refused, as cupyx refuses them), value dtypes are
    cupyx's (no integers, no float16), operations that run a kernel need the
    matrix's device to be current, ``@`` takes fake dense arrays and fake
    sparse matrices only (a numpy operand is ``TypeError``), and a product
    sums duplicates in place first (cupyx's SpMM needs canonical CSR and
    canonicalises the matrix it is called on).  The host ``scipy.sparse``
    matrix ``_s`` holds the entries; ``.data``/``.indices``/``.indptr``
    (``.row``/``.col`` for COO) are fake arrays sharing its memory.
    """

    format = ""
    _compressed = True

    def __init__(self, arg1: Any, shape: Any = None, dtype: Any = None, copy: bool = False) -> None:
        host = self._host_of(arg1, shape, bool(copy))
        dt = np.dtype(host.dtype if dtype is None else dtype)
        if dt not in SPARSE_DTYPES:
            raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
        if host.dtype != dt:
            host = host.astype(dt)
        object.__setattr__(self, "_s", host)
        object.__setattr__(self, "_dev", _current())

    @classmethod
    def _wrap(cls, host: Any, device: int) -> "_SparseMatrix":
        """A fake matrix around a host matrix already in this format (no checks, no copy)."""
        self = object.__new__(_SPARSE_CLASSES[host.format])
        object.__setattr__(self, "_s", host)
        object.__setattr__(self, "_dev", device)
        return self

    def _host_of(self, arg1: Any, shape: Any, copy: bool) -> Any:
        sp = _scipy_sparse()
        fmt = self.format
        if isinstance(arg1, _SparseMatrix):
            arg1._on_device(f"cupyx.scipy.sparse.{fmt}_matrix()")
            return arg1._s.asformat(fmt, copy=copy)
        if sp.issparse(arg1):  # host data: copied to the current device
            return sp.coo_matrix(arg1).asformat(fmt, copy=True) if fmt == "coo" else \
                getattr(sp, f"{fmt}_matrix")(arg1, copy=True)
        if isinstance(arg1, tuple) and len(arg1) == 2 and all(isinstance(d, (int, np.integer)) for d in arg1):
            return getattr(sp, f"{fmt}_matrix")(tuple(int(d) for d in arg1))
        if isinstance(arg1, tuple) and len(arg1) == 3 and self._compressed:
            data, indices, indptr = arg1
            if not all(isinstance(x, ndarray) and x.ndim == 1 for x in (data, indices, indptr)):
                raise ValueError("data, indices, and indptr must be 1-D cupy arrays")
            _check_devices(f"cupyx.scipy.sparse.{fmt}_matrix()", [data, indices, indptr])
            if len(data) != len(indices):
                raise ValueError("indices and data should have the same size")
            if indptr.size and int(indptr._a[0]) != 0:
                raise ValueError(f"index pointer should start with 0 (got {int(indptr._a[0])})")
            if shape is None:
                major, minor = len(indptr) - 1, (int(indices._a.max()) + 1 if indices.size else 0)
                shape = (major, minor) if fmt == "csr" else (minor, major)
            idx = _index_dtype(max(shape), indices._a, indptr._a)
            # As cupyx: values and indices are shared unless a copy or another index dtype is asked for.
            parts = (data._a.copy() if copy else data._a, indices._a.astype(idx, copy=copy),
                     indptr._a.astype(idx, copy=copy))
            return getattr(sp, f"{fmt}_matrix")(parts, shape=tuple(shape), copy=False)
        if isinstance(arg1, tuple) and len(arg1) == 2:
            data, ij = arg1
            if not (isinstance(ij, tuple) and len(ij) == 2):
                raise ValueError("Unsupported initializer format")
            row, col = ij
            if not all(isinstance(x, ndarray) and x.ndim == 1 for x in (data, row, col)):
                raise ValueError("row, column, and data arrays must be 1-D cupy arrays")
            _check_devices(f"cupyx.scipy.sparse.{fmt}_matrix()", [data, row, col])
            if shape is None:
                shape = (int(row._a.max()) + 1, int(col._a.max()) + 1)
            idx = _index_dtype(max(shape), row._a, col._a)
            coo = sp.coo_matrix((data._a.copy() if copy else data._a,
                                 (row._a.astype(idx, copy=copy), col._a.astype(idx, copy=copy))),
                                shape=tuple(shape), copy=False)
            return coo if fmt == "coo" else coo.asformat(fmt)
        if isinstance(arg1, ndarray):
            _check_devices(f"cupyx.scipy.sparse.{fmt}_matrix()", [arg1])
            if arg1.ndim != 2:
                raise ValueError("expected dimension <= 2 array or matrix")
            return getattr(sp, f"{fmt}_matrix")(arg1._a)
        raise ValueError("Unsupported initializer format")

    # -- checks -------------------------------------------------------------------------
    def _on_device(self, what: str) -> None:
        """A kernel on this matrix while another device is current: refused, as for fake arrays."""
        if self._dev != _current():
            raise ValueError(f"[fake cupy] {what}: sparse matrix on device {self._dev} used while device "
                             f"{_current()} is current")

    def _arr(self, a: np.ndarray) -> ndarray:
        return ndarray(a, self._dev)

    # -- attributes -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(d) for d in self._s.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._s.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nnz(self) -> int:
        return int(self._s.nnz)

    @property
    def size(self) -> int:
        return int(self._s.nnz)

    @property
    def device(self) -> Device:
        return Device(self._dev)

    @property
    def data(self) -> ndarray:
        return self._arr(self._s.data)

    @property
    def has_canonical_format(self) -> bool:
        return bool(self._s.has_canonical_format)

    @property
    def has_sorted_indices(self) -> bool:
        return bool(self._s.has_sorted_indices) if self._compressed else bool(self._s.has_canonical_format)

    # -- conversions ------------------------------------------------------------------
    def get(self, stream: Any = None) -> Any:
        """A scipy.sparse copy on the host, of the same format."""
        return self._s.copy()

    def copy(self) -> "_SparseMatrix":
        self._on_device(f"cupyx.scipy.sparse.{self.format}_matrix.copy")
        return _SparseMatrix._wrap(self._s.copy(), self._dev)

    def astype(self, dtype: Any, copy: bool = True) -> "_SparseMatrix":
        dt = np.dtype(dtype)
        if dt not in SPARSE_DTYPES:
            raise ValueError("Only bool, float32, float64, complex64 and complex128 are supported")
        if dt == self.dtype and not copy:
            return self
        self._on_device(f"cupyx.scipy.sparse.{self.format}_matrix.astype")
        return _SparseMatrix._wrap(self._s.astype(dt, copy=True), self._dev)

    def asformat(self, format: str) -> "_SparseMatrix":
        if format is None or format == self.format:
            return self
        if format not in _SPARSE_CLASSES:
            raise NotImplementedError(f"[fake cupy] conversion to {format!r} is not simulated")
        self._on_device(f"cupyx.scipy.sparse.{self.format}_matrix.to{format}")
        return _SparseMatrix._wrap(self._s.asformat(format), self._dev)

    def tocsr(self, copy: bool = False) -> "_SparseMatrix":
        return self.copy() if copy and self.format == "csr" else self.asformat("csr")

    def tocsc(self, copy: bool = False) -> "_SparseMatrix":
        return self.copy() if copy and self.format == "csc" else self.asformat("csc")

    def tocoo(self, copy: bool = False) -> "_SparseMatrix":
        return self.copy() if copy and self.format == "coo" else self.asformat("coo")

    def transpose(self, axes: Any = None, copy: bool = False) -> "_SparseMatrix":
        """CSR <-> CSC sharing the arrays (no kernel); COO with its row and column arrays swapped."""
        if axes is not None:
            raise ValueError("Sparse matrices do not support an 'axes' parameter because swapping dimensions "
                             "is the only logical permutation.")
        return _SparseMatrix._wrap(self._s.transpose(copy=copy), self._dev)

    @property
    def T(self) -> "_SparseMatrix":
        return self.transpose()

    def sum_duplicates(self) -> None:
        """In place, as cupyx's (a no-op on canonical matrices)."""
        if self._s.has_canonical_format:
            return
        self._on_device(f"cupyx.scipy.sparse.{self.format}_matrix.sum_duplicates")
        self._s.sum_duplicates()

    def toarray(self, order: str | None = None, out: Any = None) -> ndarray:
        if out is not None:
            raise NotImplementedError("[fake cupy] toarray(out=...) is not supported by cupyx")
        self._on_device(f"cupyx.scipy.sparse.{self.format}_matrix.toarray")
        SPARSE_DENSIFIED.append((self.shape, self._dev))
        return ndarray(self._s.toarray(order="C" if order is None else order.upper()))

    def todense(self, order: str | None = None, out: Any = None) -> ndarray:
        return self.toarray(order, out)

    def __getitem__(self, key: Any) -> "_SparseMatrix":
        rows = key[0] if isinstance(key, tuple) and len(key) == 2 and key[1] == slice(None) else key
        if self.format != "csr" or not isinstance(rows, slice) or rows.step not in (None, 1):
            raise NotImplementedError("[fake cupy] only row slices a[lo:hi] of a csr_matrix are simulated")
        self._on_device("cupyx.scipy.sparse.csr_matrix.__getitem__")
        return _SparseMatrix._wrap(self._s[rows], self._dev)

    # -- products ---------------------------------------------------------------------
    def __matmul__(self, other: Any) -> Any:
        what = f"cupyx.scipy.sparse.{self.format}_matrix.__matmul__"
        if np.isscalar(other):
            raise ValueError("Scalar operands are not allowed, use '*' instead")
        if isinstance(other, np.ndarray):
            raise TypeError(f"[fake cupy] {what}: Unsupported type {type(other)} (a host numpy array; copy it "
                            "with cupy.asarray first)")
        self._on_device(what)
        if isinstance(other, _SparseMatrix):
            other._on_device(what)
            return _SparseMatrix._wrap((self._s @ other._s).tocsr(), self._dev)
        if not isinstance(other, ndarray):
            return NotImplemented
        _check_devices(what, [other])
        if other.ndim not in (1, 2):
            raise ValueError("could not interpret dimensions")
        if other.shape[0] != self.shape[1]:
            raise ValueError("dimension mismatch")
        # cupyx's SpMM/SpMV canonicalise the CSR/CSC matrix they are called on, in place.
        a = self if self._compressed else self.tocsr()
        a.sum_duplicates()
        dt = np.promote_types(self.dtype, other.dtype)
        out = a._s.astype(dt) @ other._a.astype(dt)
        return ndarray(np.asfortranarray(out) if out.ndim == 2 else np.asarray(out))

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, np.ndarray):
            raise TypeError(f"[fake cupy] cupyx.scipy.sparse.{self.format}_matrix.__rmatmul__: Unsupported type "
                            f"{type(other)} (a host numpy array)")
        if not isinstance(other, ndarray):
            return NotImplemented
        return (self.T @ other.T).T

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("[fake cupy] a cupyx sparse matrix has no implicit conversion to numpy; use .get()")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in SNAPSHOT_SPARSE:
            raise AttributeError(f"'cupyx.scipy.sparse.{self.format}_matrix' object has no attribute {name!r}")
        raise NotImplementedError(f"[fake cupy] cupyx.scipy.sparse.{self.format}_matrix.{name} is not simulated")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"[fake cupy] setting cupyx.scipy.sparse.{self.format}_matrix.{name} is not simulated")

    def __repr__(self) -> str:
        return f"<fake cupyx {self.format}_matrix {self.shape} {self.dtype}, nnz={self.nnz}, device {self._dev}>"


class _Compressed(_SparseMatrix):
    @property
    def indices(self) -> ndarray:
        return self._arr(self._s.indices)

    @property
    def indptr(self) -> ndarray:
        return self._arr(self._s.indptr)


class csr_matrix(_Compressed):  # cupyx's name
    format = "csr"


class csc_matrix(_Compressed):  # cupyx's name
    format = "csc"


class coo_matrix(_SparseMatrix):  # cupyx's name
    format = "coo"
    _compressed = False

    @property
    def row(self) -> ndarray:
        return self._arr(self._s.row)

    @property
    def col(self) -> ndarray:
        return self._arr(self._s.col)


_SPARSE_CLASSES = {"csr": csr_matrix, "csc": csc_matrix, "coo": coo_matrix}


class _SparseModule(types.ModuleType):
    """``cupyx.scipy.sparse``: CSR, CSC and COO matrices and ``issparse``."""

    csr_matrix = csr_matrix
    csc_matrix = csc_matrix
    coo_matrix = coo_matrix
    spmatrix = _SparseMatrix

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"[fake cupy] cupyx.scipy.sparse.{name} is not simulated")

    @staticmethod
    def issparse(x: Any) -> bool:
        return isinstance(x, _SparseMatrix)

    @staticmethod
    def isspmatrix_csr(x: Any) -> bool:
        return isinstance(x, csr_matrix)

    @staticmethod
    def isspmatrix_csc(x: Any) -> bool:
        return isinstance(x, csc_matrix)

    @staticmethod
    def isspmatrix_coo(x: Any) -> bool:
        return isinstance(x, coo_matrix)


class _Namespace(types.ModuleType):
    """``cupyx`` and ``cupyx.scipy``: only the way down to ``sparse``."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"[fake cupy] {self.__name__}.{name} is not simulated")


SPARSE = _SparseModule("cupyx.scipy.sparse")
_CUPYX_SCIPY = _Namespace("cupyx.scipy")
_CUPYX_SCIPY.sparse = SPARSE
_CUPYX = _Namespace("cupyx")
_CUPYX.scipy = _CUPYX_SCIPY


def modules(device_count: int = 1) -> dict[str, types.ModuleType]:
    """The fake modules by their ``sys.modules`` names (``cupy``, ``cupyx``, ``cupyx.scipy``,
    ``cupyx.scipy.sparse``), :func:`make` run for ``device_count`` devices."""
    return {"cupy": make(device_count), "cupyx": _CUPYX, "cupyx.scipy": _CUPYX_SCIPY, "cupyx.scipy.sparse": SPARSE}


def install(monkeypatch: Any, device_count: int = 1) -> types.ModuleType:
    """Put the fake ``cupy`` and ``cupyx.scipy.sparse`` in ``sys.modules`` for one test; returns ``cupy``."""
    installed = modules(device_count)
    for name, module in installed.items():
        monkeypatch.setitem(sys.modules, name, module)
    return installed["cupy"]
