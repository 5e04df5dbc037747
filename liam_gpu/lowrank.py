"""``LowRank``: a matrix (or a stack of matrices) stored as its truncated SVD factors.

``A ~ U diag(S) Vt`` with ``U`` (m, k), ``S`` (k,), ``Vt`` (k, n), or the
batched ``U`` (B, m, k), ``S`` (B, k), ``Vt`` (B, k, n).  The factors stay in
the array type they were given (numpy, CuPy or torch); every computation goes
through :mod:`liam_gpu.arrays`, so this module knows nothing about torch.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import stat
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from . import arrays, bfloat16, validation

#: Marker and version stored in every saved file.
FORMAT = "liam_gpu.LowRank"
FORMAT_VERSION = 1
_KEYS = ("format", "version", "U", "S", "Vt", "relative_error")
#: Keys a file may hold beyond :data:`_KEYS` (absent from files of older versions).
_OPTIONAL_KEYS = ("source_dtype", "factor_dtype")
#: The most a deflated zip member can expand (deflate's limit is about 1032:1).
_DEFLATE_MAX_RATIO = 1100


class LowRank:
    """A rank-``k`` factorization ``U @ diag(S) @ Vt`` of an ``(m, n)`` matrix or ``(B, m, n)`` stack.

    Parameters
    ----------
    U, S, Vt
        The factors, all of one array library and device, shapes
        ``(m, k), (k,), (k, n)`` or ``(B, m, k), (B, k), (B, k, n)``.
    relative_error
        The estimated ``||A - U S Vt||_F / ||A||_F`` (a float, or one value
        per item of a stack), or None when unknown.
    source_dtype
        The dtype of the matrix that was compressed (numpy dtype or its name),
        or None when unknown: saved with the factors, so that ``liam-gpu
        decompress`` gives back that dtype, and used by
        :attr:`compression_ratio`.

    Attributes
    ----------
    U, S, Vt
        The factors as given.
    relative_error
        The estimate, or None.
    source_dtype
        A numpy dtype, or None.

    Notes
    -----
    ``np.asarray(low_rank)`` is the dense rank-``k`` reconstruction on the
    host (what the original LIAM returned); :meth:`to_dense` returns it in the
    factors' own array type and device.
    """

    def __init__(self, U: Any, S: Any, Vt: Any, *, relative_error: Any = None, source_dtype: Any = None) -> None:
        kind = arrays.common_kind(U=U, S=S, Vt=Vt)
        shapes = [tuple(int(d) for d in x.shape) for x in (U, S, Vt)]
        u, s, vt = shapes
        if len(u) not in (2, 3) or len(s) != len(u) - 1 or len(vt) != len(u):
            raise ValueError(
                f"U, S, Vt must be 2-D, 1-D, 2-D (or batched 3-D, 2-D, 3-D), got shapes {u}, {s}, {vt}"
            )
        if not (u[:-2] == s[:-1] == vt[:-2]) or not (u[-1] == s[-1] == vt[-2]):
            raise ValueError(f"U, S, Vt shapes {u}, {s}, {vt} do not form U @ diag(S) @ Vt")
        if u[-1] < 1:
            raise ValueError(f"a LowRank needs rank >= 1, got factors of shapes {u}, {s}, {vt}")
        dtypes = {str(x.dtype) for x in (U, S, Vt)}
        if len(dtypes) != 1:
            raise TypeError(f"U, S, Vt must share one dtype, got {sorted(dtypes)}")
        self.U, self.S, self.Vt = U, S, Vt
        self._kind = kind
        self.relative_error = _error_value(relative_error, u[:-2])
        self.source_dtype = _source_dtype(source_dtype)

    # -- shape and size ------------------------------------------------------------
    @property
    def rank(self) -> int:
        """``k``, the number of singular triplets kept."""
        return int(self.S.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the dense matrix (or stack) this factorization stands for."""
        return tuple(int(d) for d in self.U.shape[:-1]) + (int(self.Vt.shape[-1]),)

    @property
    def batched(self) -> bool:
        """Whether this is a stack of factorizations."""
        return len(self.U.shape) == 3

    @property
    def dtype(self) -> Any:
        """The factors' dtype (numpy/CuPy dtype or torch dtype)."""
        return self.U.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the three factors."""
        return sum(_nbytes(x) for x in (self.U, self.S, self.Vt))

    @property
    def compression_ratio(self) -> float:
        """Bytes of the dense matrix over :attr:`nbytes`.

        The dense matrix counts in :attr:`source_dtype` when it is known (a
        uint8 image compressed to float64 factors can grow: a ratio below 1),
        else in the factors' dtype.
        """
        itemsize = self.source_dtype.itemsize if self.source_dtype is not None else _itemsize(self.U)
        return math.prod(self.shape) * itemsize / self.nbytes

    def __len__(self) -> int:
        if not self.batched:
            raise TypeError("len() of an unbatched LowRank; use .shape")
        return int(self.U.shape[0])

    def __getitem__(self, index: Any) -> "LowRank":
        """Item ``i`` (a 2-D LowRank) or a slice (a batched LowRank) of a stack."""
        if not self.batched:
            raise TypeError("only a batched LowRank can be indexed")
        err = self.relative_error
        if isinstance(index, (int, np.integer)):
            return LowRank(self.U[index], self.S[index], self.Vt[index],
                           relative_error=None if err is None else float(err[index]),
                           source_dtype=self.source_dtype)
        if isinstance(index, slice):
            return LowRank(self.U[index], self.S[index], self.Vt[index],
                           relative_error=None if err is None else err[index], source_dtype=self.source_dtype)
        raise TypeError(f"a LowRank is indexed by an int or a slice, got {type(index).__name__}")

    # -- dense views -----------------------------------------------------------------
    def to_dense(self) -> Any:
        """``U @ diag(S) @ Vt`` in the factors' array type and device.

        bfloat16 factors (``ml_dtypes``) are multiplied in float32 and the
        result rounded once to bfloat16 (numpy and CuPy have no bfloat16 GEMM).
        Factors recorded by autograd are multiplied by torch, so the product is too.
        """
        if arrays.needs_autograd(self.U, self.S, self.Vt):
            return (self.U * self.S[..., None, :]) @ self.Vt
        with arrays.caller_stream(self._kind):
            u, s, vt = (arrays.to_compute(x, self._kind) for x in (self.U, self.S, self.Vt))
            xp = arrays.array_module(u)
            u, s, vt, half = _widened(u, s, vt)
            return arrays.from_compute(_narrowed(xp.matmul(u * s[..., None, :], vt), half), self._kind)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # The reconstruction is computed afresh: there is no stored array that
        # copy=False could refer to, so every value of copy gets this new array.
        with arrays.caller_stream(self._kind):
            u, s, vt = (_host(arrays.to_compute(x, self._kind)) for x in (self.U, self.S, self.Vt))
        u, s, vt, half = _widened(u, s, vt)
        dense = _narrowed(np.matmul(u * s[..., None, :], vt), half)
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def project(self, x: Any) -> Any:
        """Coordinates of new rows in the right singular basis: ``x @ Vt.T``.

        ``x`` is ``(..., n)`` for a single factorization (giving ``(..., k)``),
        or ``(B, p, n)`` for a stack (giving ``(B, p, k)``), of the factors'
        array library: real numbers (booleans and integers are computed in
        the factors' dtype); complex, string or object input is a ``TypeError``.
        """
        kind = arrays.common_kind(x=x, Vt=self.Vt)
        with arrays.caller_stream(kind):
            xc = arrays.to_compute(x, kind, name="x")
            vt = arrays.to_compute(self.Vt, kind)
            n = int(vt.shape[-1])
            validation.float_dtype("x", xc)  # complex, string and object input is a TypeError, never cast
            if xc.ndim < 1 or int(xc.shape[-1]) != n:
                raise ValueError(f"x must have {n} columns (its last axis), got shape {tuple(xc.shape)}")
            if self.batched and (xc.ndim != 3 or int(xc.shape[0]) != int(vt.shape[0])):
                raise ValueError(f"x must be ({vt.shape[0]}, p, {n}) for this stack, got {tuple(xc.shape)}")
            xp = arrays.array_module(vt)
            vt, half = _widened(vt)
            xc = bfloat16.to_float32(xc) if bfloat16.is_bfloat16(xc.dtype) else xc
            y = xp.matmul(xc.astype(vt.dtype, copy=False), xp.swapaxes(vt, -1, -2))
            return arrays.from_compute(_narrowed(y, half), kind)

    # -- files -------------------------------------------------------------------------
    def save(self, path: Any) -> None:
        """Write the factors to an ``.npz`` file (uncompressed numpy arrays: lossless).

        The file is written whole or not at all: into a temporary file in the
        same folder, renamed onto ``path`` once complete, so a failed write
        (full disk, file size limit) leaves an existing ``path`` as it was.

        Raises
        ------
        OSError
            The file could not be written ("cannot write PATH: reason").
        """
        with arrays.caller_stream(self._kind):
            u, s, vt = (_host(arrays.to_compute(x, self._kind)) for x in (self.U, self.S, self.Vt))
        err = np.asarray(np.nan if self.relative_error is None else self.relative_error, dtype=np.float64)
        extra = {} if self.source_dtype is None else {"source_dtype": np.asarray(_dtype_name(self.source_dtype))}
        if bfloat16.is_bfloat16(u.dtype):
            # .npy has no bfloat16 (it would write raw 'V2' records): the bits, and the dtype's name.
            u, s, vt = (bfloat16.as_bits(a) for a in (u, s, vt))
            extra["factor_dtype"] = np.asarray("bfloat16")
        with atomic_write(path) as f:
            np.savez(f, format=np.asarray(FORMAT), version=np.asarray(FORMAT_VERSION), U=u, S=s, Vt=vt,
                     relative_error=err, **extra)

    @classmethod
    def load(cls, path: Any) -> "LowRank":
        """Read a file written by :meth:`save`; the factors come back as numpy arrays.

        Every key's dtype and shape is checked from the file's headers before
        anything is read, and the declared sizes against the file's own size
        and the memory available; nothing is ever unpickled.

        Raises
        ------
        ValueError
            The file is missing, truncated, not an ``.npz``, not a LowRank
            file, holds factors of a wrong dtype or shape, or declares more
            data than the file holds or memory can take (the message names
            the file).
        """
        name = os.fspath(path)
        data = _read_lowrank_file(path)
        err = data["relative_error"]
        if err.ndim == 0:
            err = None if np.isnan(err) else float(err)
        source = data.get("source_dtype")
        if "factor_dtype" in data:
            if bfloat16.dtype() is None:
                raise ValueError(f"{name} holds bfloat16 factors, which need ml_dtypes (pip install ml_dtypes)")
            for key in ("U", "S", "Vt"):
                data[key] = bfloat16.from_bits(data[key])
        try:
            return cls(data["U"], data["S"], data["Vt"], relative_error=err,
                       source_dtype=None if source is None else str(source))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} holds inconsistent LowRank factors: {exc}") from exc

    # -- stacks ------------------------------------------------------------------------
    @classmethod
    def concatenate(cls, parts: Any) -> "LowRank":
        """Join factorizations along the batch axis (a 2-D part counts as one item).

        All parts must have one array library, device, dtype, matrix shape and
        rank; the relative errors are joined too (None if any part lacks one).
        """
        parts = list(parts)
        if not parts:
            raise ValueError("concatenate needs at least one LowRank")
        if not all(isinstance(p, LowRank) for p in parts):
            raise TypeError("concatenate takes LowRank objects only")
        first = parts[0]
        for p in parts[1:]:
            if p.shape[-2:] != first.shape[-2:] or p.rank != first.rank:
                raise ValueError(
                    f"cannot concatenate LowRank of matrix shape {p.shape[-2:]} and rank {p.rank} with "
                    f"shape {first.shape[-2:]} and rank {first.rank}: all parts need the same shape and rank"
                )
        kind = arrays.common_kind(**{f"part{i}": p.U for i, p in enumerate(parts)})
        with arrays.caller_stream(kind):
            stacks = [[_as_stack(arrays.to_compute(f, kind), p.batched) for f in (p.U, p.S, p.Vt)] for p in parts]
            xp = arrays.array_module(stacks[0][0])
            joined = [arrays.from_compute(xp.concatenate([s[i] for s in stacks], axis=0), kind) for i in range(3)]
        errs = [p.relative_error for p in parts]
        err = None if any(e is None for e in errs) else np.concatenate([np.atleast_1d(e) for e in errs])
        return cls(*joined, relative_error=err)

    def __repr__(self) -> str:
        err = "" if self.relative_error is None else f", relative_error={_fmt_error(self.relative_error)}"
        return f"LowRank(shape={self.shape}, rank={self.rank}, dtype={self.dtype}{err})"


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_write(path: Any) -> Iterator[BinaryIO]:
    """Open ``path`` for writing so that it ends up whole or not at all.

    The data goes into a temporary file in the same folder, flushed to disk
    and renamed onto ``path`` (:func:`os.replace`) when the ``with`` block
    ends without an exception; on any failure the temporary file is removed
    and an existing ``path`` is left as it was.  A symbolic link is written
    through (its target is replaced), and a path that is not a regular file
    (``/dev/null``, a FIFO) is written directly, as a rename cannot replace it.

    Parameters
    ----------
    path
        The file to write (str or path-like).

    Yields
    ------
    BinaryIO
        The open file to write to.

    Raises
    ------
    OSError
        Of the class of the underlying error, with the message
        ``"cannot write PATH: reason"`` (a directory, no permission, a full
        disk, a file size limit).
    """
    name = os.fspath(path)
    target = os.path.realpath(name)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _write_error(name, exc) from exc
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {name}: it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            with open(target, "wb") as f:
                yield f
        except OSError as exc:
            raise _write_error(name, exc) from exc
        return
    if st is not None and not os.access(target, os.W_OK):
        # A rename would replace a read-only file that open(path, "w") refuses.
        raise PermissionError(errno.EACCES, f"cannot write {name}: permission denied")
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    mode = 0o666 if st is None else stat.S_IMODE(st.st_mode)  # the umask applies, as for open()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise _write_error(name, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not str(exc).startswith("cannot write "):
            raise _write_error(name, exc) from exc
        raise


def _write_error(name: str, exc: OSError) -> OSError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno:
        return OSError(exc.errno, f"cannot write {name}: {reason}")  # the errno's subclass, e.g. PermissionError
    return OSError(f"cannot write {name}: {reason}")


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate, or None when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` (else the free physical pages),
    capped by the address-space limit (``ulimit -v``) when one is set.
    """
    found: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            found = None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found = soft if found is None else min(found, soft)
    except (ImportError, OSError, ValueError):
        pass
    return found


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise ValueError when ``nbytes`` exceed :func:`available_memory` (``what`` starts the message)."""
    have = available_memory()
    if have is not None and nbytes > have:
        raise ValueError(f"{what} needs {_gib(nbytes)} of memory, and only {_gib(have)} is available")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**26 else f"{nbytes / 2**20:.3g} MiB"


def _read_lowrank_file(path: Any) -> dict[str, np.ndarray]:
    """Every array of a LowRank ``.npz``, checked; the one loader of :meth:`LowRank.load`.

    The arrays' headers are read and checked first (dtype and shape of each
    key, the sizes they declare against the zip members, the file and the
    memory available); only then is the data read, without unpickling.
    Every error is a ValueError naming the file.
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise ValueError(f"cannot read {name}: {exc.strerror or exc}") from exc
    if magic == b"\x93NUMPY":
        raise ValueError(f"{name} is a .npy array, not a liam_gpu LowRank .npz file")
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{name} is not a liam_gpu LowRank file (not an .npz archive, or a truncated one)")
        with zipfile.ZipFile(path) as zf:
            members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
            missing = [k for k in _KEYS if k not in members]
            if missing:
                raise ValueError(f"{name} is not a liam_gpu LowRank file (missing {', '.join(missing)})")
            keys = _KEYS + tuple(k for k in _OPTIONAL_KEYS if k in members)
            size = os.path.getsize(path)
            headers = {k: _member_header(zf, members[k], name, k, size) for k in keys}
            _check_headers(headers, name)
            check_fits_in_memory(sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values()),
                                 f"{name}: reading its factors")
            data = {}
            for key in keys:
                with zf.open(members[key]) as fp:
                    data[key] = np.lib.format.read_array(fp, allow_pickle=False)
    except ValueError as exc:
        if name in str(exc):
            raise
        raise ValueError(f"cannot read {name} as a liam_gpu LowRank file: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise ValueError(f"cannot read {name} as a liam_gpu LowRank file: {exc}") from exc
    except Exception as exc:  # zlib.error and friends from a damaged member
        raise ValueError(f"cannot read {name} as a liam_gpu LowRank file: {type(exc).__name__}: {exc}") from exc
    if str(data["format"]) != FORMAT:
        raise ValueError(f"{name} is not a liam_gpu LowRank file (format {str(data['format'])!r})")
    version = int(data["version"])
    if not 1 <= version <= FORMAT_VERSION:
        newer = " (written by a newer liam_gpu)" if version > FORMAT_VERSION else ""
        raise ValueError(f"{name} has LowRank format version {version}; this liam_gpu reads 1 to "
                         f"{FORMAT_VERSION}{newer}")
    if "source_dtype" in data:
        try:
            _source_dtype(str(data["source_dtype"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: source_dtype: {exc}") from exc
    if "factor_dtype" in data and str(data["factor_dtype"]) != "bfloat16":
        raise ValueError(f"{name}: factor_dtype must be 'bfloat16', got {str(data['factor_dtype'])!r}")
    return data


def read_npy_header(fp: BinaryIO) -> tuple[tuple[int, int], tuple[int, ...], np.dtype, int]:
    """What an ``.npy`` stream declares: format version, shape, dtype and its size in bytes, header included.

    Only the header is read (``fp`` is left at the data), so nothing is
    allocated for a file that declares a huge array.
    """
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fp)
    return version, shape, dtype, fp.tell() + math.prod(shape) * dtype.itemsize


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str,
                   file_size: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype an ``.npy`` member declares, checked against the member's and the file's sizes."""
    with zf.open(info) as fp:
        version, shape, dtype, declared = read_npy_header(fp)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{name}: {key} is in .npy format {version}, which a LowRank file never uses")
    if dtype.hasobject:
        raise ValueError(f"{name}: {key} holds Python objects ({dtype}); they are never unpickled")
    if info.file_size != declared:
        raise ValueError(f"{name}: {key} declares shape {shape} of {dtype} ({declared} bytes with its header), "
                         f"but the archive member holds {info.file_size} bytes")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else (
        info.compress_size * _DEFLATE_MAX_RATIO + 1024)
    if info.file_size > limit or info.header_offset + info.compress_size > file_size:
        raise ValueError(f"{name}: {key} declares shape {shape} of {dtype} ({declared} bytes), "
                         f"more than the file can hold")
    return tuple(int(d) for d in shape), dtype


def _check_headers(headers: dict[str, tuple[tuple[int, ...], np.dtype]], name: str) -> None:
    """Every key's dtype and shape, before any data is read."""
    def fail(key: str, expected: str) -> None:
        shape, dtype = headers[key]
        raise ValueError(f"{name}: {key} must be {expected}, got shape {shape} of dtype {dtype}")

    for key in ("format", "source_dtype", "factor_dtype"):
        if key in headers and (headers[key][1].kind != "U" or headers[key][0] != ()):
            fail(key, "a string (0-d array)")
    if headers["version"][1].kind not in "iu" or headers["version"][0] != ():
        fail("version", "an integer (0-d array)")
    dtypes = {headers[k][1] for k in ("U", "S", "Vt")}
    for key in ("U", "S", "Vt"):
        if "factor_dtype" in headers:  # bfloat16 factors, stored as their bits
            if headers[key][1] != bfloat16.CARRIER:
                fail(key, "uint16 (the bits of bfloat16 factors)")
        elif headers[key][1].kind != "f" or headers[key][1].itemsize not in (2, 4, 8):
            fail(key, "float16, float32 or float64")
    if len(dtypes) != 1:
        raise ValueError(f"{name}: U, S, Vt must share one dtype, got {sorted(str(d) for d in dtypes)}")
    u, s, vt = (headers[k][0] for k in ("U", "S", "Vt"))
    if (len(u) not in (2, 3) or len(s) != len(u) - 1 or len(vt) != len(u) or not u[:-2] == s[:-1] == vt[:-2]
            or not u[-1] == s[-1] == vt[-2] or 0 in u or 0 in vt):
        raise ValueError(f"{name}: U, S, Vt of shapes {u}, {s}, {vt} do not form U @ diag(S) @ Vt")
    err_shape, err_dtype = headers["relative_error"]
    if err_dtype.kind != "f" or err_shape not in ((), u[:-2]):
        fail("relative_error", "a float" + (f" or {u[0]} floats" if len(u) == 3 else ""))


# --------------------------------------------------------------------------- helpers


def _source_dtype(value: Any) -> np.dtype | None:
    if isinstance(value, str) and value == "bfloat16" and bfloat16.dtype() is not None:
        return bfloat16.dtype()  # the name numpy knows only once ml_dtypes is imported
    return None if value is None else real_dtype(value, "source_dtype")


def _dtype_name(dtype: np.dtype) -> str:
    """How a source dtype is saved: its ``str`` (``'<f4'``), or ``'bfloat16'`` (whose ``str`` is a raw ``'|V2'``)."""
    return "bfloat16" if bfloat16.is_bfloat16(dtype) else dtype.str


def _widened(*factors: Any) -> tuple:
    """The factors as float32 when they are bfloat16 (exact), and the bfloat16 dtype (else None) last."""
    if not bfloat16.is_bfloat16(factors[0].dtype):
        return (*factors, None)
    return (*(bfloat16.to_float32(f) for f in factors), factors[0].dtype)


def _narrowed(y: Any, half: Any) -> Any:
    """``y`` rounded once to ``half`` (bfloat16), or ``y`` itself when ``half`` is None."""
    return y if half is None else y.astype(half)


def real_dtype(value: Any, name: str) -> np.dtype:
    """``value`` as a numpy dtype of booleans, integers or floats (what a matrix to compress can hold).

    Raises
    ------
    TypeError
        ``value`` is no dtype (the message starts with ``name``).
    ValueError
        It is another kind: complex, string, datetime, object.
    """
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numpy dtype (e.g. uint8, float32), got {value!r}") from exc
    if dtype.kind not in "biuf" and not bfloat16.is_bfloat16(dtype):
        raise ValueError(f"{name} must be a boolean, integer or float dtype, got {dtype}")
    return dtype


def _error_value(value: Any, batch: tuple[int, ...]) -> Any:
    if value is None:
        return None
    if batch:
        err = np.asarray(value, dtype=np.float64).reshape(-1)
        if err.shape != batch:
            raise ValueError(f"relative_error must hold one value per item ({batch[0]}), got shape {err.shape}")
        return err
    err = np.asarray(value, dtype=np.float64)
    if err.size != 1:
        raise ValueError(f"relative_error of a single matrix must be a number, got shape {err.shape}")
    return float(err.reshape(()))


def _fmt_error(err: Any) -> str:
    if isinstance(err, float):
        return f"{err:.3g}"
    return f"max {float(np.max(err)):.3g}"


def _itemsize(x: Any) -> int:
    return int(x.dtype.itemsize)


def _nbytes(x: Any) -> int:
    return math.prod(int(d) for d in x.shape) * _itemsize(x)


def _host(x: Any) -> np.ndarray:
    return x.get() if arrays.is_cupy(x) else np.asarray(x)


def _as_stack(x: Any, batched: bool) -> Any:
    return x if batched else x[None]
