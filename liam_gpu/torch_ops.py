"""``transform_matrix`` on torch CPU tensors with torch's own GEMM (issue 18).

On CPU tensors ``F.linear`` (MKL, torch's thread pool) is the fastest GEMM in
the process, and numpy's BLAS beside torch's pool makes the two fight for the
cores; so :mod:`liam_gpu.dispatch` sends dense CPU tensors of one float dtype
here, after the core's own checks (the same errors as the core path).  The
result keeps liam-gpu's numerical contract, not torch's: gelu is
``0.5 x erfc(-x / sqrt 2)`` with relative accuracy in the tail (torch's
``F.gelu`` computes ``1 + erf`` and loses it below about -4), computed with
torch's vectorised ``erfc`` by L2-sized row blocks (:func:`gelu_`, which the
torch layers share).  The other activations are torch's in-place functions.

Imported lazily by :mod:`liam_gpu.dispatch` only; the core never imports it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import activations, arrays, backends, transform, validation

__all__ = ["takes", "transform_matrix"]

_DTYPES = (torch.float32, torch.float64)
#: Elements per row block of the gelu epilogue: its float32 temporary (512 KiB) stays in L2.
_BLOCK_ELEMENTS = 1 << 17
#: -1/sqrt(2): gelu's erfc argument scale (shared with the torch layers).
NEG_SQRT_HALF = -math.sqrt(0.5)


def _dense_cpu(t: Any, dtype: Any) -> bool:
    return (isinstance(t, torch.Tensor) and t.dtype == dtype and t.device.type == "cpu"
            and t.layout == torch.strided and t.is_contiguous() and t.numel() > 0)


def takes(data: Any, weights: Any, bias: Any, out: Any, device: Any) -> bool:
    """Whether this path computes the call: C-contiguous, non-empty CPU tensors of one float
    dtype, 2-D weights, ``out`` None or such a tensor, and ``device`` resolving to the CPU."""
    if not isinstance(data, torch.Tensor) or data.dtype not in _DTYPES:
        return False
    if not all(t is None or _dense_cpu(t, data.dtype) for t in (data, weights, bias, out)):
        return False
    if weights.dim() != 2 or data.dim() < 1 or not (device is None or isinstance(device, str)):
        return False
    try:
        return backends.resolve(device, arrays.kind_of(data)).name == "cpu"
    except (ValueError, TypeError, RuntimeError):
        return False  # the core reports a bad device


def transform_matrix(data: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None,
                     activation: str | None, *, out: torch.Tensor | None, check_finite: bool) -> Any:
    """``act(data @ weights.T + bias)`` with ``F.linear``, for a call :func:`takes` accepted.

    Returns None where the core must run it after all (``out`` overlapping an
    input), having raised exactly what the core raises for bad input.
    """
    code = activations.activation_code(activation)
    kind = arrays.common_kind(data=data, weights=weights, bias=bias, out=out)
    named = {"data": data, "weights": weights} | ({} if bias is None else {"bias": bias})
    views = {name: arrays.to_compute(t, kind, name=name) for name, t in named.items()}
    transform.check_shapes(views["data"], views["weights"], views.get("bias"))

    out_shape = tuple(data.shape[:-1]) + (weights.shape[0],)
    if out is not None:
        if check_finite:
            validation.check_all_finite(**views)  # before out is written, as the core does
        dest = arrays.to_compute(out, kind, name="out", writable=True)
        transform.check_out(dest, out_shape, np.dtype(views["data"].dtype))  # takes(): one dtype for all
        if validation.overlapping(dest, **views):
            return None  # the core writes through a separate buffer
    x2 = data.reshape(-1, data.shape[-1])
    with torch.no_grad():
        if out is None:
            y = torch.nn.functional.linear(x2, weights, bias)
            # NaN/Inf in an input reaches its whole row or column of x W^T + b (inf * 0 is NaN
            # too), so a finite sum of the product clears the inputs: one read of the output
            # instead of all of them (the weights are 16x the output at 256 x 4096 -> 4096).
            # A non-finite sum (or an overflow of finite values) takes the core's exact checks.
            if check_finite:
                with np.errstate(over="ignore", invalid="ignore"):
                    finite = np.isfinite(np.sum(y.numpy()))
                if not finite:  # the core's checks, in its order, with its messages
                    validation.check_all_finite(**views)
        else:
            y = out.view(-1, weights.shape[0])
            if bias is None:
                torch.matmul(x2, weights.t(), out=y)
            else:
                torch.addmm(bias, x2, weights.t(), out=y)
        _activate(y, code)
    return out if out is not None else y.reshape(out_shape)


def _activate(y: torch.Tensor, code: int) -> None:
    """The activation in place on the 2-D output ``y``, with liam-gpu's meaning and accuracy."""
    name = activations.TABLE[code].name
    if name is None:
        return
    if name == "relu":
        y.relu_()
    elif name == "gelu":
        gelu_(y)
    elif name == "gelu_tanh":  # no in-place form: by blocks, so the temporary stays small
        step = max(1, _BLOCK_ELEMENTS // max(1, y.shape[1]))
        for start in range(0, y.shape[0], step):
            part = y[start:start + step]
            part.copy_(torch.nn.functional.gelu(part, approximate="tanh"))
    elif name == "silu":
        torch.nn.functional.silu(y, inplace=True)
    elif name == "sigmoid":
        y.sigmoid_()
    else:
        y.tanh_()


def gelu_(y: torch.Tensor) -> torch.Tensor:
    """``0.5 y erfc(-y / sqrt 2)`` in place on a C-contiguous tensor, returned.

    Row blocks of ``_BLOCK_ELEMENTS`` pass through one temporary that stays in
    L2: ``t = -y / sqrt 2``, torch's vectorised ``erfc`` (SLEEF) on ``t``,
    ``y *= t / 2``.  Rounding ``-y / sqrt 2`` to the working precision moves
    ``erfc`` by a relative ``y^2 u`` in the tail, inside gelu's bound of
    ``4 + 3 y^2`` ulps (tests/test_activations.py, tests/test_transform.py).
    Measured side by side on torch CPU tensors (float32, one thread, median
    of 15): 0.63 ms at 512 x 1024 and 5.2 ms at 4096 x 1024, against 1.43 and
    11.9 ms for the numba epilogue of the numpy path and 0.25 and 6.1 ms for
    ``F.gelu`` (which allocates its output and computes ``1 + erf``).
    """
    flat = y.view(-1, y.shape[-1]) if y.dim() > 1 else y.view(1, -1)
    rows, cols = flat.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, cols))
    buf = torch.empty(min(rows, step) * cols, dtype=y.dtype, device=y.device)
    for start in range(0, rows, step):
        part = flat[start:start + step]
        t = buf[:part.numel()].view(part.shape)
        torch.mul(part, NEG_SQRT_HALF, out=t)
        t.erfc_()
        t.mul_(0.5)
        part.mul_(t)
    return y
