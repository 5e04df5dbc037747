"""``LowRank``: a matrix (or a stack of matrices) stored as its truncated SVD factors.

``A ~ U diag(S) Vt`` with ``U`` (m, k), ``S`` (k,), ``Vt`` (k, n), or the
batched ``U`` (B, m, k), ``S`` (B, k), ``Vt`` (B, k, n).  The factors stay in
the array type they were given (numpy, CuPy or torch); every computation goes
through :mod:`liam_gpu.arrays`, so this module knows nothing about torch.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import arrays

#: Marker and version stored in every saved file.
FORMAT = "liam_gpu.LowRank"
FORMAT_VERSION = 1
_KEYS = ("format", "version", "U", "S", "Vt", "relative_error")


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

    Attributes
    ----------
    U, S, Vt
        The factors as given.
    relative_error
        The estimate, or None.

    Notes
    -----
    ``np.asarray(low_rank)`` is the dense rank-``k`` reconstruction on the
    host (what the original LIAM returned); :meth:`to_dense` returns it in the
    factors' own array type and device.
    """

    def __init__(self, U: Any, S: Any, Vt: Any, *, relative_error: Any = None) -> None:
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
        """Bytes of the dense matrix (in the factors' dtype) over :attr:`nbytes`."""
        return math.prod(self.shape) * _itemsize(self.U) / self.nbytes

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
                           relative_error=None if err is None else float(err[index]))
        if isinstance(index, slice):
            return LowRank(self.U[index], self.S[index], self.Vt[index],
                           relative_error=None if err is None else err[index])
        raise TypeError(f"a LowRank is indexed by an int or a slice, got {type(index).__name__}")

    # -- dense views -----------------------------------------------------------------
    def to_dense(self) -> Any:
        """``U @ diag(S) @ Vt`` in the factors' array type and device."""
        with arrays.caller_stream(self._kind):
            u, s, vt = (arrays.to_compute(x, self._kind) for x in (self.U, self.S, self.Vt))
            xp = arrays.array_module(u)
            return arrays.from_compute(xp.matmul(u * s[..., None, :], vt), self._kind)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # The reconstruction is computed afresh: there is no stored array that
        # copy=False could refer to, so every value of copy gets this new array.
        with arrays.caller_stream(self._kind):
            u, s, vt = (_host(arrays.to_compute(x, self._kind)) for x in (self.U, self.S, self.Vt))
        dense = np.matmul(u * s[..., None, :], vt)
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def project(self, x: Any) -> Any:
        """Coordinates of new rows in the right singular basis: ``x @ Vt.T``.

        ``x`` is ``(..., n)`` for a single factorization (giving ``(..., k)``),
        or ``(B, p, n)`` for a stack (giving ``(B, p, k)``), of the factors'
        array library.
        """
        kind = arrays.common_kind(x=x, Vt=self.Vt)
        with arrays.caller_stream(kind):
            xc = arrays.to_compute(x, kind, name="x")
            vt = arrays.to_compute(self.Vt, kind)
            n = int(vt.shape[-1])
            if xc.ndim < 1 or int(xc.shape[-1]) != n:
                raise ValueError(f"x must have {n} columns (its last axis), got shape {tuple(xc.shape)}")
            if self.batched and (xc.ndim != 3 or int(xc.shape[0]) != int(vt.shape[0])):
                raise ValueError(f"x must be ({vt.shape[0]}, p, {n}) for this stack, got {tuple(xc.shape)}")
            xp = arrays.array_module(vt)
            return arrays.from_compute(xp.matmul(xc.astype(vt.dtype, copy=False), xp.swapaxes(vt, -1, -2)), kind)

    # -- files -------------------------------------------------------------------------
    def save(self, path: Any) -> None:
        """Write the factors to an ``.npz`` file (uncompressed numpy arrays: lossless)."""
        with arrays.caller_stream(self._kind):
            u, s, vt = (_host(arrays.to_compute(x, self._kind)) for x in (self.U, self.S, self.Vt))
        err = np.asarray(np.nan if self.relative_error is None else self.relative_error, dtype=np.float64)
        with open(path, "wb") as f:
            np.savez(f, format=np.asarray(FORMAT), version=np.asarray(FORMAT_VERSION), U=u, S=s, Vt=vt,
                     relative_error=err)

    @classmethod
    def load(cls, path: Any) -> "LowRank":
        """Read a file written by :meth:`save`; the factors come back as numpy arrays.

        Raises
        ------
        ValueError
            The file is truncated, not an ``.npz``, or not a LowRank file (the
            message names the file).
        """
        name = str(Path(path))
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in _KEYS if k not in data.files]
                if missing:
                    raise ValueError(f"{name} is not a liam_gpu LowRank file (missing {', '.join(missing)})")
                if str(data["format"]) != FORMAT:
                    raise ValueError(f"{name} is not a liam_gpu LowRank file (format {str(data['format'])!r})")
                version = int(data["version"])
                if version > FORMAT_VERSION:
                    raise ValueError(f"{name} was written by a newer liam_gpu (LowRank format {version})")
                u, s, vt, err = data["U"], data["S"], data["Vt"], data["relative_error"]
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"cannot read {name} as a liam_gpu LowRank file: {exc}") from exc
        except ValueError as exc:
            if name in str(exc):
                raise
            raise ValueError(f"cannot read {name} as a liam_gpu LowRank file: {exc}") from exc
        if err.ndim == 0:
            err = None if np.isnan(err) else float(err)
        try:
            return cls(u, s, vt, relative_error=err)
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


# --------------------------------------------------------------------------- helpers


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
