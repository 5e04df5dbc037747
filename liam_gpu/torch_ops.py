"""Torch's own ops with liam-gpu's numerical contract, for torch CPU tensors (issue 18).

Two routes compute ``act(x @ W.T + b)`` on CPU tensors with torch's ops
instead of numpy's BLAS (numpy's pool beside torch's makes the two fight for
the cores, and ``F.linear`` is the fastest GEMM in such a process):

* :func:`transform_matrix` here, which :mod:`liam_gpu.dispatch` sends dense
  CPU tensors of one float dtype to (no autograd, the result activated in
  place);
* :func:`liam_gpu.torch.functional.host_linear`, the torch layers (autograd).

Both take their activations from :data:`TORCH_ACTIVATIONS`, the one statement
of how torch computes each activation of :mod:`liam_gpu.activations` with
liam-gpu's meaning: gelu is ``0.5 x erfc(-x / sqrt 2)`` with relative
accuracy in the tail (torch's ``F.gelu`` computes ``1 + erf`` and loses it
below about -4), 16-bit tensors are activated in float32 and rounded once.
Each has an in-place form (:func:`activate_`: no autograd, L2-sized row
blocks where a temporary is needed) and an out-of-place one that autograd
can record (:func:`activate`); the two give the same bits.

Both check finiteness the same way (:func:`sum_is_finite`): NaN/Inf in an
input reaches its whole row or column of ``x W^T + b``, so a finite sum of
the pre-activation output clears every input with one read of the output,
and only a non-finite sum takes the exact checks with the core's messages;
where the inputs are the smaller side (:func:`inputs_are_smaller`), their
own sums are read instead, before the product.

Imported lazily by :mod:`liam_gpu.dispatch` (torch tensors only) and by
:mod:`liam_gpu.torch`; the core never imports it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import activations, arrays, backends, transform, validation

__all__ = ["TORCH_ACTIVATIONS", "TorchActivation", "activate", "activate_", "gelu_", "inputs_are_smaller",
           "sum_is_finite", "takes", "transform_matrix"]

_DTYPES = (torch.float32, torch.float64)
#: 16-bit dtypes: activated in float32, rounded once.
_HALF_DTYPES = (torch.float16, torch.bfloat16)
#: Elements per row block of the blocked in-place activations: a float32 temporary (512 KiB) stays in L2.
_BLOCK_ELEMENTS = 1 << 17
#: -1/sqrt(2): gelu's erfc argument scale.
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
    name = activations.TABLE[activations.activation_code(activation)].name
    kind = arrays.common_kind(data=data, weights=weights, bias=bias, out=out)
    named = {"data": data, "weights": weights} | ({} if bias is None else {"bias": bias})
    views = {key: arrays.to_compute(t, kind, name=key) for key, t in named.items()}
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
            # The smaller side is read: the inputs (each by its sum) where the output is larger
            # (a widening layer), else the output's sum, before the activation (relu(-inf) is 0):
            # one read of 1M outputs instead of 17M inputs at 256 x 4096 -> 4096.
            early = check_finite and inputs_are_smaller(x2.shape[0] * weights.shape[0], *named.values())
            if early and not all(sum_is_finite(t) for t in named.values()):
                validation.check_all_finite(**views)  # the core's checks, in its order, with its messages
            y = torch.nn.functional.linear(x2, weights, bias)
            if check_finite and not early and not sum_is_finite(y):
                validation.check_all_finite(**views)
        else:
            y = out.view(-1, weights.shape[0])
            if bias is None:
                torch.matmul(x2, weights.t(), out=y)
            else:
                torch.addmm(bias, x2, weights.t(), out=y)
        activate_(y, name)
    return out if out is not None else y.reshape(out_shape)


# --- the finite check ----------------------------------------------------------------

#: Elements from which :func:`sum_is_finite` sums with torch: below, numpy's sum has less overhead.
_TORCH_SUM_MIN = 1 << 14


def sum_is_finite(y: torch.Tensor) -> bool:
    """Whether the sum of the float CPU tensor ``y`` is finite (a non-finite element makes it not).

    For ``y = x @ W.T + b`` (a chain of such products too) a finite sum proves
    every input finite: NaN/Inf in ``x[i, k]`` makes every ``y[i, :]`` non-finite
    (``inf * 0`` is NaN, ``inf - inf`` too), one in ``W[j, k]`` every ``y[:, j]``,
    one in ``b[j]`` the column ``j``; a non-finite element stays non-finite in
    any sum.  The converse does not hold: finite inputs whose products or sum
    overflow give a non-finite sum (16-bit sums overflow early), so a caller
    runs the exact input checks then, which decide.

    Sums with torch from :data:`_TORCH_SUM_MIN` elements and with numpy
    below, the faster of the two on each side (measured, float32, medians:
    4096 x 1024 0.70 against 1.17 ms at one thread and 0.37 against 0.91 ms
    at two, where torch's pool shares the sum; 16K elements 6.1 against
    6.2 us, the crossover; 1K elements 5.6 against 3.8 us, torch's dispatch).
    """
    with torch.no_grad():
        y = y.detach()
        if y.numel() < _TORCH_SUM_MIN and y.dtype in _DTYPES and y.is_contiguous():
            with np.errstate(over="ignore", invalid="ignore"):
                return bool(np.isfinite(np.sum(y.numpy())))
        return bool(torch.isfinite(y.sum()))


def inputs_are_smaller(out_elements: int, *inputs: torch.Tensor | None) -> bool:
    """Whether the inputs of a product hold fewer elements than its ``out_elements`` outputs.

    Either side's sums clear the inputs (:func:`sum_is_finite`); the routes
    read the smaller one: the output for a narrowing or square layer, the
    inputs for a widening one (``n x d -> 4d``: about a quarter of the reads).
    """
    return sum(t.numel() for t in inputs if t is not None) < out_elements


# --- the activations ------------------------------------------------------------------

def gelu_(y: torch.Tensor) -> torch.Tensor:
    """``0.5 y erfc(-y / sqrt 2)`` in place on a C-contiguous float32/float64 tensor, returned.

    Row blocks of ``_BLOCK_ELEMENTS`` pass through one temporary that stays in
    L2: ``t = -y / sqrt 2``, torch's vectorised ``erfc`` (SLEEF) on ``t``,
    ``y *= t / 2``.  Each step is elementwise and torch's ``erfc`` gives an
    element the same bits in a vector lane and in a loop's scalar tail (no
    difference over 64K random values, where sigmoid, silu and the tanh GELU
    differ in 4-6%), so the bits do not depend on the block size
    (tests/test_transform.py, tests/test_torch_routes.py).  Rounding
    ``-y / sqrt 2`` to the working precision moves ``erfc`` by a relative
    ``y^2 u`` in the tail, inside gelu's bound of ``4 + 3 y^2`` ulps
    (tests/test_activations.py, tests/test_transform.py).  Measured side by
    side on torch CPU tensors (float32, one thread, median of 15): 0.63 ms at
    512 x 1024 and 5.2 ms at 4096 x 1024, against 1.43 and 11.9 ms for the
    numba epilogue of the numpy path and 0.25 and 6.1 ms for ``F.gelu``
    (which allocates its output and computes ``1 + erf``).
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


def _gelu(z: torch.Tensor) -> torch.Tensor:
    """:func:`gelu_` out of place, for autograd: the same operations, so the same bits (``0.5`` is exact)."""
    return z * (0.5 * torch.special.erfc(z * NEG_SQRT_HALF))


def _gelu_tanh_(y: torch.Tensor) -> torch.Tensor:
    # aten's in-place gelu: the kernel of F.gelu(approximate="tanh") (the same bits), no temporary.
    return torch.ops.aten.gelu_(y, approximate="tanh")


def _gelu_tanh(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(z, approximate="tanh")


def _silu_(y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(y, inplace=True)


@dataclass(frozen=True)
class TorchActivation:
    """How torch computes one activation of :data:`liam_gpu.activations.TABLE`, with its meaning and accuracy.

    Attributes
    ----------
    name
        The activation's name in :mod:`liam_gpu.activations` (None: identity).
    inplace
        Overwrites a C-contiguous float32/float64 tensor that nothing records
        (no autograd) and returns it, with no temporary of the tensor's size
        (gelu: one of an L2-sized block).  None for the identity.
    function
        The same values (the same bits) out of place, which autograd records;
        None for the identity.
    """

    name: str | None
    inplace: Callable[[torch.Tensor], torch.Tensor] | None
    function: Callable[[torch.Tensor], torch.Tensor] | None


#: Every activation of :data:`liam_gpu.activations.TABLE`, by name, as torch computes it here.
TORCH_ACTIVATIONS: dict[str | None, TorchActivation] = {a.name: a for a in (
    TorchActivation(None, None, None),
    TorchActivation("relu", torch.Tensor.relu_, torch.relu),
    TorchActivation("gelu", gelu_, _gelu),
    TorchActivation("gelu_tanh", _gelu_tanh_, _gelu_tanh),
    TorchActivation("silu", _silu_, torch.nn.functional.silu),
    TorchActivation("sigmoid", torch.Tensor.sigmoid_, torch.sigmoid),
    TorchActivation("tanh", torch.Tensor.tanh_, torch.tanh),
)}


def activate_(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``activation`` (a canonical name) in place on the C-contiguous tensor ``y``, returned; no autograd.

    The bits of :func:`activate` on the same tensor: gelu by L2-sized row
    blocks whose bits do not depend on the block (:func:`gelu_`), the others
    in one call of torch's kernel over the whole tensor, as the out-of-place
    form (torch's sigmoid, silu and tanh GELU round a vector lane and the
    scalar tail of a loop differently, so blocks would change their bits).
    float16/bfloat16: activated in float32 (a float32 copy) and rounded once.
    """
    entry = TORCH_ACTIVATIONS[activation]
    if entry.inplace is None:
        return y
    if y.dtype in _HALF_DTYPES:
        return y.copy_(entry.inplace(y.float()))
    return entry.inplace(y)


def activate(z: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``activation`` (a canonical name) of ``z`` out of place, recordable by autograd and ``torch.compile``.

    The bits of :func:`activate_`; float16/bfloat16 activated in float32 and rounded once.
    """
    entry = TORCH_ACTIVATIONS[activation]
    if entry.function is None:
        return z
    if z.dtype in _HALF_DTYPES:
        return entry.function(z.float()).to(z.dtype)
    return entry.function(z)
