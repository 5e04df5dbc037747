"""EmulatorModule / EmulatorKernel: CUDA kernels run on the CPU, called like CuPy.

``EmulatorModule(code, name_expressions=..., options=...)`` mirrors
``cupy.RawModule`` and ``EmulatorKernel.__call__(grid, block, args,
shared_mem=...)`` mirrors ``cupy.RawKernel``, so a launch layer can drive the GPU
and the emulator through the same code.  "Device memory" is numpy memory: an
array argument is passed as a pointer to its data.

Unlike the GPU, the emulator checks each argument against the kernel's C++
parameter type (the library reports its signature) and raises ``TypeError`` for
what would silently pass wrong bytes on a GPU, e.g. a float64 array for a
``float*`` or a ``np.int64`` for an ``int``.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import build as _build
from .build import EmulatorError

__all__ = ["EmulatorModule", "EmulatorKernel", "EmulatorError", "KernelFault", "Param"]

#: CUDA's limits (compute capability 9.0) checked before a launch.
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
MAX_SHARED_MEM = 227 * 1024

_RUNNER = Path(__file__).with_name("run_sanitized.py")
_SANITIZER_NAME = {"address": "AddressSanitizer/UBSan", "thread": "ThreadSanitizer"}


class KernelFault(EmulatorError):
    """A kernel failed while running in the emulator.

    Raised for a divergent ``__syncthreads()``, a deadlock, lanes that disagree
    about a warp operation, ``__trap()``, a failed ``assert``, an uncaught C++
    exception, or a sanitizer report.

    Attributes
    ----------
    kernel : str
        The kernel's name expression.
    block : tuple of int or None
        The block index (x, y, z) where the fault happened, when known.
    thread : tuple of int or None
        The thread index (x, y, z) that faulted, when one thread is to blame.
    report : str
        The full sanitizer report (sanitized runs), else ``""``.
    """

    def __init__(
        self,
        message: str,
        *,
        kernel: str,
        block: tuple[int, int, int] | None = None,
        thread: tuple[int, int, int] | None = None,
        report: str = "",
    ) -> None:
        super().__init__(message)
        self.kernel = kernel
        self.block = block
        self.thread = thread
        self.report = report


@dataclass(frozen=True)
class Param:
    """One kernel parameter, as reported by the compiled library.

    Attributes
    ----------
    pointer : bool
        True for a pointer parameter (takes an ndarray).
    kind : str
        ``i``/``u`` signed/unsigned integer, ``f`` float, ``b`` bool, ``o``
        struct, ``v`` void or incomplete, ``p`` pointer -- of the parameter, or
        of the pointee for a pointer.
    size : int
        ``sizeof`` of the parameter (or of the pointee).
    ctype : str
        The C++ type, for messages.
    """

    pointer: bool
    kind: str
    size: int
    ctype: str


def parse_signature(sig: str) -> tuple[Param, ...]:
    """Parse the ``"code:type;code:type;"`` string a library reports."""
    params = []
    for item in filter(None, sig.split(";")):
        code, ctype = item.split(":", 1)
        pointer = code.startswith("p") and len(code) > 2 and code[1].isalpha()
        if pointer:
            code = code[1:]
        params.append(Param(pointer, code[0], int(code[1:]), ctype))
    return tuple(params)


# ---------------------------------------------------------------------------
# launch configuration and argument checks
# ---------------------------------------------------------------------------
def _dim3(value: Any, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        dims = [int(value)]
    elif isinstance(value, (tuple, list)) and 1 <= len(value) <= 3 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        dims = [int(v) for v in value]
    else:
        raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims += [1] * (3 - len(dims))
    return dims[0], dims[1], dims[2]


def check_launch(grid: Any, block: Any, shared_mem: Any) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """Normalise and check a launch configuration against CUDA's limits.

    Raises
    ------
    TypeError
        If grid/block/shared_mem have the wrong type.
    ValueError
        Where CUDA would fail the launch (``CUDA_ERROR_INVALID_VALUE``).
    """
    g, b = _dim3(grid, "grid"), _dim3(block, "block")
    if not isinstance(shared_mem, (int, np.integer)) or isinstance(shared_mem, (bool, np.bool_)):
        raise TypeError(f"shared_mem must be an int, got {shared_mem!r}")
    smem = int(shared_mem)
    problems = []
    for axis, (n, hi) in enumerate(zip(g, MAX_GRID_DIM)):
        if not 1 <= n <= hi:
            problems.append(f"grid dimension {'xyz'[axis]}={n} is outside [1, {hi}]")
    for axis, (n, hi) in enumerate(zip(b, MAX_BLOCK_DIM)):
        if not 1 <= n <= hi:
            problems.append(f"block dimension {'xyz'[axis]}={n} is outside [1, {hi}]")
    if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
        problems.append(f"block {b} has {b[0] * b[1] * b[2]} threads, more than {MAX_THREADS_PER_BLOCK}")
    if not 0 <= smem <= MAX_SHARED_MEM:
        problems.append(f"shared_mem={smem} bytes is outside [0, {MAX_SHARED_MEM}]")
    if problems:
        raise ValueError("invalid launch configuration (CUDA_ERROR_INVALID_VALUE): " + "; ".join(problems))
    return g, b, smem


def _int_range(kind: str, size: int) -> tuple[int, int]:
    bits = 8 * size
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind == "i" else (0, (1 << bits) - 1)


def _int_bytes(value: int, p: Param, what: str) -> bytes:
    lo, hi = _int_range(p.kind, p.size)
    if not lo <= value <= hi:
        raise TypeError(f"{what}: value {value} does not fit parameter type {p.ctype}")
    return value.to_bytes(p.size, sys.byteorder, signed=p.kind == "i")


def _check_array(arr: np.ndarray, p: Param, what: str) -> None:
    dt = arr.dtype
    if dt.hasobject:
        raise TypeError(f"{what}: an object array cannot be passed to a kernel")
    if p.kind == "f":
        ok = (dt.kind == "f" and dt.itemsize == p.size) or (dt.kind == "c" and dt.itemsize == 2 * p.size)
    elif p.kind in "iub" and p.size > 1:
        # Integers of the same width (signedness may differ); float16 storage
        # read through unsigned short is common enough to allow.
        ok = dt.itemsize == p.size and (dt.kind in "iub" or (dt.kind == "f" and p.size == 2))
    else:  # bytes, structs (float4*, __half*), void*, pointers to pointers
        ok = True
    if not ok:
        raise TypeError(f"{what}: a {dt} array does not match parameter type {p.ctype}")


def marshal_args(kernel: str, params: Sequence[Param], args: Any) -> list[tuple[str, Any]]:
    """Check ``args`` against the kernel's parameters and convert them.

    Returns
    -------
    list
        ``("ptr", ndarray)`` for each pointer argument and ``("val", bytes)``
        (exactly the parameter's bytes) for each value argument.

    Raises
    ------
    TypeError
        Naming the argument index, for a wrong count, type, size or value range.
    """
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"kernel '{kernel}': args must be a tuple, got {type(args).__name__}")
    if len(args) != len(params):
        raise TypeError(f"kernel '{kernel}' takes {len(params)} argument(s), {len(args)} given")
    out: list[tuple[str, Any]] = []
    for i, (a, p) in enumerate(zip(args, params)):
        what = f"kernel '{kernel}' argument {i}"
        if p.pointer:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{what} must be a numpy.ndarray for parameter type {p.ctype}, got {type(a).__name__}")
            _check_array(a, p, what)
            out.append(("ptr", a))
            continue
        if isinstance(a, np.ndarray):
            raise TypeError(f"{what} is an array but parameter type {p.ctype} is passed by value")
        if isinstance(a, (bool, np.bool_)):
            if p.kind != "b":
                raise TypeError(f"{what}: a bool cannot be passed as {p.ctype}")
            out.append(("val", bytes([bool(a)])))
        elif isinstance(a, np.generic):
            dt = a.dtype
            if p.kind in "iu" and dt.kind in "iu":
                if dt.itemsize != p.size:
                    raise TypeError(f"{what}: a {dt} scalar ({dt.itemsize} bytes) for {p.ctype} ({p.size} bytes)")
                out.append(("val", _int_bytes(int(a), p, what)))
            elif p.kind == "f" and dt.kind == "f" and dt.itemsize == p.size:
                out.append(("val", a.tobytes()))
            elif p.kind == "o" and dt.kind == "V" and dt.itemsize == p.size:
                out.append(("val", a.tobytes()))  # a struct passed as a numpy structured scalar
            else:
                raise TypeError(f"{what}: a {dt} scalar does not match parameter type {p.ctype}")
        elif isinstance(a, int):
            if p.kind not in "iu":
                raise TypeError(f"{what}: a Python int cannot be passed as {p.ctype}")
            out.append(("val", _int_bytes(a, p, what)))
        elif isinstance(a, float):
            if p.kind != "f" or p.size != 8:
                raise TypeError(
                    f"{what}: a Python float is passed as double, but the parameter is {p.ctype}"
                    + ("; use np.float32(...)" if p.kind == "f" else "")
                )
            out.append(("val", struct.pack("=d", a)))
        else:
            raise TypeError(f"{what}: unsupported argument type {type(a).__name__} for parameter type {p.ctype}")
    return out


def _slots(values: Sequence[tuple[str, Any]], addresses: Sequence[int]) -> tuple[ctypes.Array, ctypes.Array]:
    """Pack argument bytes into one 16-byte aligned buffer; return (buffer, void* array)."""
    blobs = []
    it = iter(addresses)
    for kind, v in values:
        blobs.append(struct.pack("=Q", next(it)) if kind == "ptr" else v)
    sizes = [(len(b) + 15) // 16 * 16 for b in blobs]
    buf = ctypes.create_string_buffer(sum(sizes) + 16)
    base = ctypes.addressof(buf)
    off = (-base) % 16
    argv = (ctypes.c_void_p * max(len(blobs), 1))()
    for i, (blob, size) in enumerate(zip(blobs, sizes)):
        ctypes.memmove(base + off, blob, len(blob))
        argv[i] = base + off
        off += size
    return buf, argv


def _fault_location(out: Sequence[int]) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
    block = tuple(int(v) for v in out[0:3]) if out[0] >= 0 else None
    thread = tuple(int(v) for v in out[3:6]) if out[3] >= 0 else None
    return block, thread  # type: ignore[return-value]


def _fault(kernel: str, message: str, block: Any, thread: Any, report: str = "", prefix: str = "") -> KernelFault:
    where = ""
    if block is not None:
        where += f" in block {block}"
    if thread is not None:
        where += f", thread {thread}"
    return KernelFault(f"kernel '{kernel}'{prefix} faulted{where}: {message}", kernel=kernel, block=block,
                       thread=thread, report=report)


def _timeout() -> float:
    return float(os.environ.get("LIAM_GPU_EMU_TIMEOUT", "600"))


# A library loaded twice (same file) is the same dlopen handle; a lock per
# library keeps launches on it from different Python threads apart, since its
# block state and shared memory are globals.  Libraries are keyed by inode: a
# rebuild (changed include) replaces the file under the same name, and dlopen
# would hand back the stale library for that name.
_LIBS: dict[tuple[int, int], tuple[ctypes.CDLL, threading.Lock]] = {}
_LIBS_LOCK = threading.Lock()


def _load(path: Path) -> tuple[ctypes.CDLL, threading.Lock]:
    with _LIBS_LOCK:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key not in _LIBS:
            # dlopen through a fresh name so glibc matches loaded objects by file
            # identity rather than by the (reused) path.
            alias = path.with_name(f".{path.stem}.{os.getpid()}.{time.monotonic_ns()}.load.so")
            try:
                try:
                    os.link(path, alias)
                except OSError:
                    shutil.copyfile(path, alias)
                _LIBS[key] = (ctypes.CDLL(str(alias), mode=os.RTLD_NOW | os.RTLD_LOCAL), threading.Lock())
            except OSError as exc:
                raise EmulatorError(f"could not load the emulator module {path}: {exc}") from exc
            finally:
                alias.unlink(missing_ok=True)
        return _LIBS[key]


def _name_key(expr: str) -> str:
    """Whitespace-insensitive form of a name expression ("f<float,64>")."""
    return re.sub(r"\s*([<>,()*&:\[\]])\s*", r"\1", " ".join(expr.split()))


# ---------------------------------------------------------------------------
class EmulatorModule:
    """CUDA C++ source compiled for the CPU; the emulator's ``cupy.RawModule``.

    Parameters
    ----------
    code
        CUDA C++ source text.
    name_expressions
        C++ name expressions of the ``__global__`` functions to make callable,
        e.g. ``"gemm<float, 64>"`` or ``"my_extern_c_kernel"``.
    options
        NVRTC-style options; ``--include-path=DIR``, ``-IDIR``, ``-I DIR``,
        ``-DNAME`` and ``-DNAME=VAL`` are honoured, the rest ignored.
    sanitize
        None (fibers, in process), ``"address"`` (ASan + UBSan) or ``"thread"``
        (one OS thread per GPU thread + TSan); sanitized launches run in a child
        process.  Defaults to ``$LIAM_GPU_EMU_SANITIZE`` when that is set.

    Raises
    ------
    EmulatorError
        If the source does not compile (the message holds the compiler log).

    Attributes
    ----------
    library : pathlib.Path
        The compiled shared library (in the build cache).
    source_path : pathlib.Path
        The C++ source that was compiled; compiler messages and sanitizer
        reports refer to it, with the original line numbers.
    cached : bool
        Whether the build came from the cache.
    """

    def __init__(
        self,
        code: str,
        *,
        name_expressions: Sequence[str] = (),
        options: Sequence[str] = (),
        sanitize: str | None = None,
    ) -> None:
        if not isinstance(code, str):
            raise TypeError("code must be a str of CUDA C++ source")
        if sanitize is None:
            sanitize = os.environ.get("LIAM_GPU_EMU_SANITIZE") or None
        if sanitize not in _build.SANITIZE_MODES:
            raise ValueError(f"sanitize must be None, 'address' or 'thread', got {sanitize!r}")
        self.code = code
        self.name_expressions = _build.check_name_expressions(name_expressions)
        self.options = tuple(options)
        self.sanitize: str | None = sanitize
        # Read once: the build checks frame sizes against the same stack size.
        self.stack_bytes = _build.fiber_stack_bytes()
        result = _build.build(code, self.name_expressions, self.options, sanitize)
        self.library = result.library
        self.source_path = result.source
        self.cached = result.cached
        self.build_seconds = result.seconds
        self._lib: ctypes.CDLL | None = None
        self._lock: threading.Lock | None = None
        if sanitize is None:
            self._lib, self._lock = _load(self.library)
            signatures = []
            for i in range(len(self.name_expressions)):
                fn = getattr(self._lib, f"liam_emu_signature_{i}")
                fn.restype = ctypes.c_char_p
                fn.argtypes = []
                signatures.append(fn().decode())
        else:
            signatures = self._sanitized_signatures()
        self._params = [parse_signature(s) for s in signatures]
        self._kernels: dict[str, EmulatorKernel] = {}

    def __repr__(self) -> str:
        mode = f", sanitize={self.sanitize!r}" if self.sanitize else ""
        return f"EmulatorModule({list(self.name_expressions)!r}{mode}, library={str(self.library)!r})"

    def get_function(self, name: str) -> EmulatorKernel:
        """The kernel for one of the module's name expressions.

        Raises
        ------
        KeyError
            If ``name`` was not among ``name_expressions`` (compared ignoring
            whitespace, so ``"f<float,64>"`` finds ``"f<float, 64>"``).
        """
        if name not in self._kernels:
            index = None
            for i, expr in enumerate(self.name_expressions):
                if expr == name or _name_key(expr) == _name_key(name):
                    index = i
                    break
            if index is None:
                raise KeyError(
                    f"kernel {name!r} is not in this module's name_expressions {list(self.name_expressions)}; "
                    "add it there (the emulator, like NVRTC, only exports the listed kernels)"
                )
            self._kernels[name] = EmulatorKernel(self, index, self.name_expressions[index], self._params[index])
        return self._kernels[name]

    # -- sanitized modules: everything that touches the library runs in a child
    def _child(self, mode: str, request: dict, workdir: str) -> tuple[subprocess.CompletedProcess | None, dict | None, str]:
        """Run ``run_sanitized.py`` with the sanitizer runtime preloaded.

        Returns the process (None on timeout), its result dict (None when it
        died first) and its stderr.
        """
        req_path = os.path.join(workdir, "request.json")
        request = dict(request, library=str(self.library), result=os.path.join(workdir, "result.json"))
        with open(req_path, "w") as f:
            json.dump(request, f)
        runtime = _build.sanitizer_runtime(self.sanitize)  # type: ignore[arg-type]
        if runtime is None:
            raise EmulatorError(f"the sanitizer runtime for sanitize={self.sanitize!r} is missing")
        env = dict(os.environ)
        env["LD_PRELOAD"] = str(runtime)
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:print_summary=1:allocator_may_return_null=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:print_summary=1"
        env["TSAN_OPTIONS"] = "halt_on_error=1:report_signal_unsafe=0:print_summary=1"
        cmd = [sys.executable, "-S", "-E", str(_RUNNER), mode, req_path]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, timeout=_timeout())
        except subprocess.TimeoutExpired as exc:
            err = (exc.stderr or b"").decode(errors="replace")
            return None, None, err
        stderr = proc.stderr.decode(errors="replace")
        try:
            with open(request["result"]) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = None
        return proc, result, stderr

    def _sanitized_signatures(self) -> list[str]:
        """Signatures of a sanitized library, asked of a child once per build."""
        sig_path = self.library.with_suffix(".sig.json")
        st = os.stat(self.library)
        stamp = [st.st_ino, st.st_mtime_ns]  # a rebuilt library invalidates the record
        try:
            record = json.loads(sig_path.read_text())
            if record.get("stamp") == stamp and len(record.get("signatures", ())) == len(self.name_expressions):
                return record["signatures"]
        except (OSError, ValueError, AttributeError):
            pass
        with tempfile.TemporaryDirectory(prefix="liam_emu_") as td:
            _proc, result, stderr = self._child("describe", {"count": len(self.name_expressions)}, td)
        if result is None or result.get("status") != "ok":
            detail = result.get("message", "") if result else stderr[-4000:]
            raise EmulatorError(f"could not load the sanitized module {self.library} in a child process:\n{detail}")
        sigs = result["signatures"]
        tmp = sig_path.with_name(f".{sig_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "signatures": sigs}))
        os.replace(tmp, sig_path)
        return sigs


class EmulatorKernel:
    """One kernel of an :class:`EmulatorModule`; the emulator's ``cupy.RawKernel``.

    Attributes
    ----------
    name : str
        The name expression.
    params : tuple of Param
        The C++ parameters, as compiled.
    """

    def __init__(self, module: EmulatorModule, index: int, name: str, params: tuple[Param, ...]) -> None:
        self.module = module
        self.index = index
        self.name = name
        self.params = params
        self._fn = None
        if module._lib is not None:
            fn = getattr(module._lib, f"liam_emu_launch_{index}")
            fn.restype = ctypes.c_int
            fn.argtypes = [
                ctypes.POINTER(ctypes.c_longlong),
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_longlong),
                ctypes.c_char_p,
                ctypes.c_ulong,
            ]
            self._fn = fn

    def __repr__(self) -> str:
        return f"EmulatorKernel({self.name!r}, ({', '.join(p.ctype for p in self.params)}))"

    @property
    def num_params(self) -> int:
        """Number of kernel parameters."""
        return len(self.params)

    def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0) -> None:
        """Run the kernel over ``grid`` blocks of ``block`` threads, to completion.

        Parameters
        ----------
        grid, block
            An int or a tuple of up to 3 ints, as for CuPy.
        args
            Tuple of ndarrays (passed as pointers to their data) and scalars:
            numpy scalars are passed with exactly their C type, a Python int as
            a ``long long`` (or any integer type it fits), a Python float as a
            ``double``, a Python bool as a ``bool``.
        shared_mem
            Bytes of dynamic shared memory (``extern __shared__``).

        Raises
        ------
        TypeError
            For an argument that does not match the kernel's parameter (the
            message names its index).
        ValueError
            For a launch configuration CUDA would reject.
        KernelFault
            When the kernel faults (divergent barrier, deadlock, trap, assert,
            C++ exception, sanitizer report).
        """
        g, b, smem = check_launch(grid, block, shared_mem)
        values = marshal_args(self.name, self.params, args)
        cfg = (ctypes.c_longlong * 8)(*g, *b, smem, self.module.stack_bytes)
        if self._fn is None:
            self._call_sanitized(cfg, values)
            return
        addresses = [v.__array_interface__["data"][0] for k, v in values if k == "ptr"]
        keep, argv = _slots(values, addresses)
        out = (ctypes.c_longlong * 6)()
        err = ctypes.create_string_buffer(8192)
        assert self.module._lock is not None
        with self.module._lock:
            rc = self._fn(cfg, argv, out, err, len(err))
        del keep
        if rc == 1:
            block_idx, thread_idx = _fault_location(out)
            raise _fault(self.name, err.value.decode(errors="replace"), block_idx, thread_idx)
        if rc != 0:
            raise EmulatorError(f"kernel '{self.name}': {err.value.decode(errors='replace')}")

    # -- sanitized launch in a child process --------------------------------
    def _call_sanitized(self, cfg: ctypes.Array, values: list[tuple[str, Any]]) -> None:
        """Copy the arrays to the child, launch there, copy them back.

        The arrays' memory is grouped into regions (overlapping arrays share
        one, so aliasing is kept); the child copies each region into its own
        malloc'ed buffer, where the address sanitizer sees its bounds.
        """
        spans = []  # (low, high, array index in values)
        for i, (kind, arr) in enumerate(values):
            if kind == "ptr":
                low, high = _byte_bounds(arr)
                spans.append((low, high, i))
        regions: list[list[int]] = []  # [low, high]
        for low, high, _ in sorted(spans):
            if regions and low < regions[-1][1]:
                regions[-1][1] = max(regions[-1][1], high)
            else:
                regions.append([low, high])

        def region_of(addr: int) -> int:
            for r, (lo, hi) in enumerate(regions):
                if lo <= addr <= hi:
                    return r
            raise AssertionError("array outside every region")

        args_desc: list[list[Any]] = []
        for kind, v in values:
            if kind == "ptr":
                data = v.__array_interface__["data"][0]
                r = region_of(data)
                args_desc.append(["ptr", r, data - regions[r][0]])
            else:
                args_desc.append(["val", v.hex()])
        with tempfile.TemporaryDirectory(prefix="liam_emu_") as td:
            data_path = os.path.join(td, "data.bin")
            region_desc = []
            with open(data_path, "wb") as f:
                offset = 0
                for lo, hi in regions:
                    f.write(ctypes.string_at(lo, hi - lo))
                    region_desc.append({"offset": offset, "size": hi - lo, "pad": lo % 16})
                    offset += hi - lo
            request = {"index": self.index, "name": self.name, "cfg": list(cfg), "args": args_desc,
                       "regions": region_desc, "data": data_path}
            proc, result, stderr = self.module._child("launch", request, td)
            tool = _SANITIZER_NAME[self.module.sanitize]  # type: ignore[index]
            prefix = f" (sanitize={self.module.sanitize!r})"
            if proc is None:
                raise KernelFault(
                    f"kernel '{self.name}'{prefix} did not finish within {_timeout():g} s "
                    "(a deadlock or an endless loop?); set LIAM_GPU_EMU_TIMEOUT to allow more",
                    kernel=self.name, report=stderr)
            summary = [ln for ln in stderr.splitlines() if ln.startswith("SUMMARY: ")]
            if summary or "WARNING: ThreadSanitizer" in stderr or "runtime error:" in stderr:
                m = re.search(r"LIAM_EMU_FAULT_CONTEXT block=\((\d+),(\d+),(\d+)\) thread=\((-?\d+),(-?\d+),(-?\d+)\)",
                              stderr)
                block = tuple(int(x) for x in m.groups()[:3]) if m else None
                thread = tuple(int(x) for x in m.groups()[3:]) if m and int(m.group(4)) >= 0 else None
                text = summary[0] if summary else f"{tool} reported an error"
                raise _fault(self.name, text + "\n" + _excerpt(stderr), block, thread, report=stderr, prefix=prefix)
            if result is None:
                raise KernelFault(
                    f"kernel '{self.name}'{prefix}: the child process died (exit code {proc.returncode}) "
                    f"without a sanitizer report:\n{stderr[-4000:]}", kernel=self.name, report=stderr)
            status = result.get("status")
            if status == "fault":
                raise _fault(self.name, result["message"], *_fault_location(result["out"]), report=stderr,
                             prefix=prefix)
            if status != "ok":
                raise EmulatorError(f"kernel '{self.name}'{prefix}: {result.get('message', stderr[-4000:])}")
            with open(data_path, "rb") as f:
                new = f.read()
        # Write back only regions the kernel changed (an unchanged read-only
        # array must not be written to).
        for (lo, hi), desc in zip(regions, region_desc):
            chunk = new[desc["offset"]: desc["offset"] + desc["size"]]
            if chunk != ctypes.string_at(lo, hi - lo):
                ctypes.memmove(lo, chunk, hi - lo)


def _byte_bounds(arr: np.ndarray) -> tuple[int, int]:
    """[low, high) addresses of the memory an array's elements occupy."""
    data = arr.__array_interface__["data"][0]
    if arr.size == 0:
        return data, data
    low = high = data
    for n, s in zip(arr.shape, arr.strides):
        if s < 0:
            low += (n - 1) * s
        else:
            high += (n - 1) * s
    return low, high + arr.itemsize


def _excerpt(stderr: str, limit: int = 60) -> str:
    """The sanitizer report part of a child's stderr, at most ``limit`` lines."""
    lines = stderr.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("==") or "Sanitizer" in ln
                  or "runtime error:" in ln), 0)
    out = lines[start: start + limit]
    if len(lines) - start > limit:
        out.append(f"... ({len(lines) - start - limit} more lines in KernelFault.report)")
    return "\n".join(out)
