"""The functional face of liam-gpu for PyTorch: the custom operator and autograd.

* :func:`transform_matrix` -- :func:`liam_gpu.transform_matrix` that is
  differentiable w.r.t. data, weights and bias for every activation, through
  :class:`TransformFunction` (a ``torch.autograd.Function`` whose backward runs
  its matrix products through liam-gpu as well);
* the custom operator ``torch.ops.liam_gpu.transform_matrix``, with a fake
  (meta) implementation, so that ``torch.compile`` traces our layers into its
  graph instead of breaking the graph at every call.

The front door (:mod:`liam_gpu.api`) sends calls here that need autograd or
are being traced; the computations themselves go back down through
:mod:`liam_gpu.dispatch` (a backend or a :class:`~liam_gpu.Scheduler`), never
through the front door again.  Tensors in, tensors out, on the caller's device
and stream; the conversion to numpy/CuPy is zero-copy (see :mod:`liam_gpu.arrays`).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .. import arrays, dispatch, torch_ops, transform
from ..backends import canonical_device
from ..activations import ACTIVATIONS, TABLE, activation_code

__all__ = ["TransformFunction", "activation_name", "host_linear", "result_dtype", "transform_matrix"]

#: Activations whose derivative is a function of the output; the others need
#: the pre-activation, which backward recomputes rather than keeping it alive.
_GRAD_FROM_OUTPUT = {ACTIVATIONS[None], ACTIVATIONS["relu"], ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_CUBIC = 0.044715


# --- the custom operator: what torch.compile sees ----------------------------------

@torch.library.custom_op("liam_gpu::transform_matrix", mutates_args=())
def _transform_op(
    data: torch.Tensor,
    weights: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: Optional[str],
    device: Optional[str],
    check_finite: bool,
) -> torch.Tensor:
    """``activation(data @ weights.T + bias)`` as a torch operator (no autograd of its own)."""
    with torch.no_grad():  # autograd belongs to TransformFunction around the operator
        return dispatch.transform_matrix(data, weights, bias, activation, device=device, check_finite=check_finite)


@_transform_op.register_fake
def _transform_op_fake(data, weights, bias, activation, device, check_finite):
    """Shape and dtype of the result, for tracing (``torch.compile``, meta tensors)."""
    if weights.dim() not in (2, 3):
        raise ValueError(f"weights must be 2-D or 3-D, got shape {tuple(weights.shape)}")
    if data.dim() < 1 or data.shape[-1] != weights.shape[-1]:
        raise ValueError(
            f"data of shape {tuple(data.shape)} does not match weights of shape {tuple(weights.shape)} "
            "(read as (d_out, d_in))"
        )
    dtype = result_dtype(data, weights, bias)
    return data.new_empty((*data.shape[:-1], weights.shape[-2]), dtype=dtype)


def result_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype :func:`liam_gpu.transform_matrix` returns for these inputs.

    float16 (bfloat16) when every input is float16 (bfloat16), the inputs'
    promoted float type otherwise, with 16-bit floats counting as float32 and
    integers as float64 -- the rule of ``liam_gpu.transform``.
    """
    dtypes = [t.dtype for t in tensors if t is not None]
    for half in (torch.float16, torch.bfloat16):
        if all(dt == half for dt in dtypes):
            return half
    out = torch.float32
    for dt in dtypes:
        if dt in (torch.float16, torch.bfloat16):
            dt = torch.float32
        elif not dt.is_floating_point:
            dt = torch.float64
        out = torch.promote_types(out, dt)
    return out


def _linear(x, w, b, activation: str | None, device: Any, check_finite: bool,
            precision: str | None = None) -> torch.Tensor:
    """One transform on tensors: the custom operator under ``torch.compile``, a direct call in eager mode.

    The direct call skips the dispatcher (a few microseconds per call that
    matter for small layers).  A :class:`~liam_gpu.Scheduler` cannot be an
    operator argument, and the operator computes at the default precision;
    under ``torch.compile`` such calls (and ``precision="tf32"``) run in a
    graph break.
    """
    if torch.compiler.is_compiling():
        if (device is None or isinstance(device, str)) and precision in (None, "float32"):
            return _transform_op(x, w, b, activation, device, check_finite)
        return _eager_transform(x, w, b, activation, device, check_finite, precision)
    return dispatch.transform_matrix(x, w, b, activation, device=device, check_finite=check_finite,
                                     precision=precision)


@torch.compiler.disable
def _eager_transform(x, w, b, activation, device, check_finite, precision=None):
    """The core function outside any trace (a clean graph break)."""
    return dispatch.transform_matrix(x, w, b, activation, device=device, check_finite=check_finite,
                                     precision=precision)


# --- autograd ----------------------------------------------------------------------

class TransformFunction(torch.autograd.Function):
    """Autograd of ``y = act(x @ W.T + b)``, computed with liam-gpu both ways.

    With ``g = dL/dy * act'(z)`` (``z`` the pre-activation) the gradients are
    ``dL/dx = g @ W``, ``dL/dW = g.T @ x`` (summed over leading axes, or per
    batch item for 3-D weights) and ``dL/db = sum(g)``.  The two products run
    through :func:`liam_gpu.transform_matrix` on the same backend as the
    forward pass; ``act'`` is evaluated with torch in at least float32.

    For relu, sigmoid and tanh ``act'`` is a function of ``y``, which is
    saved; for gelu, gelu_tanh and silu backward recomputes ``z`` with one more
    transform instead of keeping a second activation-sized tensor alive.
    Gradients are not checked for NaN/Inf: they propagate as in torch (mixed
    precision loss scaling relies on that).  Double backward is not supported.
    ``precision`` applies to the forward and the backward products alike (as
    torch's ``allow_tf32`` does).
    """

    @staticmethod
    def forward(ctx, data, weights, bias, activation, device, check_finite, precision=None):
        code = activation_code(activation)
        y = _linear(data, weights, bias, activation, device, check_finite, precision)
        ctx.code = code
        ctx.activation = activation
        ctx.device = device
        ctx.precision = precision
        ctx.has_bias = bias is not None
        keep_y = y if code in _GRAD_FROM_OUTPUT and code != 0 else None
        ctx.save_for_backward(data, weights, bias, keep_y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        data, weights, bias, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = _pre_activation_grad(ctx, grad_y, data, weights, bias, y)
        batched = weights.dim() == 3
        grad_x = grad_w = grad_b = None
        if need_x:
            # g @ W is a transform with weights W.T, (d_in, d_out) read as (d_out, d_in).
            grad_x = _linear(g, weights.transpose(-1, -2), None, None, ctx.device, False, ctx.precision)
            grad_x = grad_x.to(data.dtype)
        if need_w:
            if batched:
                gt, xt = g.transpose(1, 2), data.transpose(1, 2)
            else:
                gt, xt = g.reshape(-1, g.shape[-1]).T, data.reshape(-1, data.shape[-1]).T
            grad_w = _linear(gt, xt, None, None, ctx.device, False, ctx.precision).to(weights.dtype)
        if need_b and ctx.has_bias:
            axes = (1,) if batched else tuple(range(g.dim() - 1))
            grad_b = (g.sum(dim=axes) if axes else g).to(bias.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def _pre_activation_grad(ctx, grad_y, data, weights, bias, y):
    """``dL/dz = dL/dy * act'(z)``, in float32 at least (16-bit inputs)."""
    code = ctx.code
    if code == 0:
        return grad_y
    work = torch.promote_types(grad_y.dtype, torch.float32)
    gy = grad_y.to(work)
    if code in _GRAD_FROM_OUTPUT:
        out = y.to(work)
        if code == ACTIVATIONS["relu"]:
            return gy * (out > 0)
        if code == ACTIVATIONS["sigmoid"]:
            return gy * out * (1.0 - out)
        return gy * (1.0 - out * out)  # tanh
    z = _linear(data, weights, bias, None, ctx.device, False, ctx.precision).to(work)
    if code == ACTIVATIONS["gelu"]:
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        return gy * (cdf + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI)
    if code == ACTIVATIONS["gelu_tanh"]:
        t = torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_TANH_CUBIC * z * z * z))
        inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_CUBIC * z * z)
        return gy * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * inner)
    if code == ACTIVATIONS["silu"]:
        s = torch.sigmoid(z)
        return gy * s * (1.0 + z * (1.0 - s))
    raise ValueError(f"no derivative for activation code {code}")


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
    """Differentiable :func:`liam_gpu.transform_matrix`: ``act(data @ weights.T + bias)``.

    Parameters and result are those of :func:`liam_gpu.transform_matrix`.
    When grad mode is on and a tensor argument requires grad, the call is
    recorded by autograd through :class:`TransformFunction`; under
    ``torch.compile`` it is the operator ``torch.ops.liam_gpu.transform_matrix``.

    Raises
    ------
    ValueError
        ``out=`` together with inputs that require grad (as in torch, an
        in-place result cannot be differentiated), and every error of
        :func:`liam_gpu.transform_matrix`.
    """
    name = activation_name(activation)
    transform.allows_tf32(precision)  # an unknown precision is a ValueError before anything is recorded
    if arrays.needs_autograd(data, weights, bias):
        if out is not None:
            raise ValueError("out= is not supported when data, weights or bias requires grad")
        arrays.common_kind(data=data, weights=weights, bias=bias)  # mixed libraries: TypeError here
        data, weights, bias = _as_tensors(data, weights, bias)
        return TransformFunction.apply(data, weights, bias, name, device, check_finite, precision)
    all_tensors = isinstance(data, torch.Tensor) and isinstance(weights, torch.Tensor)
    if out is None and all_tensors and (bias is None or isinstance(bias, torch.Tensor)):
        return _linear(data, weights, bias, name, device, check_finite, precision)
    return dispatch.transform_matrix(data, weights, bias, name, out=out, device=device, check_finite=check_finite,
                                     precision=precision)


# --- torch's own ops for CPU tensors (the layers) ------------------------------------

#: dtypes the layers compute with torch's ops on the CPU; 16-bit ones in float32.
_HOST_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def host_linear(
    data: torch.Tensor, weights: tuple[torch.Tensor, ...], bias: torch.Tensor | None,
    activation: str | None, device: Any, check_finite: bool,
) -> torch.Tensor | None:
    """``act(data @ W1.T @ W2.T ... + bias)`` with torch's own ops, for the layers on CPU tensors.

    On the CPU, numpy's BLAS and torch's thread pool compete when a layer
    runs inside a torch program (1.5x to 18x slower than ``nn.Linear``
    measured), so the layers compute CPU tensors with ``F.linear`` and the
    activations of :data:`liam_gpu.torch_ops.TORCH_ACTIVATIONS`, with
    liam-gpu's numerical contract: one dtype in, the same out, 16-bit types
    accumulated and activated in float32 and rounded once, gelu in the exact
    erf form with relative accuracy in its tail.  Autograd is torch's.

    The errors are those of the layers' liam-gpu path (``transform_matrix``
    of ``data`` and ``W1`` with ``check_finite``, then of each next product
    without it), in its order.  ``check_finite`` reads the pre-activation
    output once (:func:`liam_gpu.torch_ops.sum_is_finite`): NaN/Inf in
    ``data`` or ``W1`` makes whole rows or columns of every later product
    non-finite, so a finite sum clears them; only a non-finite one reads the
    inputs.  Where those inputs hold fewer elements than the output (a
    widening layer) their own sums are read instead, before the product.
    NaN/Inf in a later factor or the bias of a chain is not an error, as on
    that path.

    Returns None (the caller takes the liam-gpu path) unless every tensor is
    a dense CPU tensor of one float dtype, the weights 2-D, and ``device``
    resolves to the CPU backend (and, under ``torch.compile``,
    ``check_finite`` is off).
    """
    dtype = data.dtype
    if dtype not in _HOST_DTYPES:
        return None
    for t in (data, *weights, bias):
        if t is not None and not (
            isinstance(t, torch.Tensor) and t.dtype == dtype and t.is_cpu and t.layout == torch.strided
        ):
            return None
    if any(w.dim() != 2 for w in weights):
        return None  # batched weights: the liam-gpu path
    if device != "cpu":
        if device is not None and not isinstance(device, str):
            return None  # a Scheduler (or a torch.device)
        on_cpu = _computes_on_cpu_traced if torch.compiler.is_compiling() else _computes_on_cpu
        if not on_cpu(device):
            return None  # another backend
    compiling = torch.compiler.is_compiling()
    if check_finite and compiling:
        return None  # the check's answer would break the graph; the operator checks inside
    if not _fits(data, weights, bias):
        _check_host(data, weights, bias, check_finite)  # raises, with the core's message
    if dtype in (torch.float16, torch.bfloat16):
        data, weights = data.float(), tuple(w.float() for w in weights)
        bias = None if bias is None else bias.float()
    # The smaller side is read: the checked inputs (data, W1, a lone bias) where they hold fewer
    # elements than the output (a widening layer), else the pre-activation output's sum
    # (relu(-inf) is 0), with the exact checks only when that sum is not finite.
    out_elements = data.numel() // data.shape[-1] * weights[-1].shape[0]
    early = check_finite and torch_ops.inputs_are_smaller(
        out_elements, data, weights[0], bias if len(weights) == 1 else None)
    if early:
        _check_host(data, weights, bias, True)
    z = data
    for w in weights[:-1]:
        z = torch.nn.functional.linear(z, w)
    z = torch.nn.functional.linear(z, weights[-1], bias)
    if check_finite and not early and not torch_ops.sum_is_finite(z):
        _check_host(data, weights, bias, True)
    # z is this call's own fresh tensor: activated in place unless autograd records it (or a trace,
    # which fuses the out-of-place form anyway).
    if compiling or (z.requires_grad and torch.is_grad_enabled()):
        z = torch_ops.activate(z, activation)
    else:
        z = torch_ops.activate_(z, activation)
    return z if z.dtype == dtype else z.to(dtype)


def _fits(data: torch.Tensor, weights: tuple[torch.Tensor, ...], bias: torch.Tensor | None) -> bool:
    """Whether the chain's shapes fit and nothing is empty (2-D weights): no error but NaN/Inf is possible."""
    if data.dim() < 1 or data.numel() == 0:
        return False
    features = data.shape[-1]
    for w in weights:
        if w.numel() == 0 or w.shape[1] != features:
            return False
        features = w.shape[0]
    return bias is None or tuple(bias.shape) == (features,)


def _computes_on_cpu(device: str | None) -> bool:
    """Whether ``device=`` (None or a name) resolves to the CPU backend for CPU tensors."""
    return canonical_device(device) == "cpu"


#: The same, a constant for ``torch.compile``: it reads ``LIAM_GPU_BACKEND`` and the
#: scheduler's current device (a ContextVar), which dynamo cannot trace.
_computes_on_cpu_traced = torch.compiler.assume_constant_result(_computes_on_cpu)


def _check_host(data: torch.Tensor, weights: tuple[torch.Tensor, ...], bias: torch.Tensor | None,
                check_finite: bool) -> None:
    """The checks of the layers' liam-gpu path, with the core's messages, in its order.

    That path is ``transform_matrix(data, W1, [bias], check_finite=check_finite)``,
    then ``transform_matrix(hidden, W, [bias], check_finite=False)`` for each
    next factor ``W`` (the bias with the last); the core checks the shapes,
    then each input in turn (``data``, ``weights``, ``bias``): empty, then
    NaN/Inf.  Returns when nothing is wrong.
    """
    x = data
    for i, w in enumerate(weights):
        b = bias if i == len(weights) - 1 else None
        transform.check_shapes(x, w, b)
        finite = check_finite and i == 0
        for name, t in (("data", x), ("weights", w), ("bias", b)):
            if t is None:
                continue
            if t.numel() == 0:
                raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); every axis must have length >= 1")
            # A finite sum first (one read, as the core's check_finite; isfinite(t).all() makes
            # temporaries and was 13.5 against 0.7 ms on 4M float32): the exact test decides only
            # where the sum is not finite.
            if finite and not torch_ops.sum_is_finite(t) and not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{name} contains NaN or Inf; pass check_finite=False to skip this check")
        # The next product's data: the shape of this one's result (its values do not matter here).
        x = torch.empty((*x.shape[:-1], w.shape[0]), device="meta")


def _as_tensors(*values: Any) -> list[Any]:
    """Lists and scalars passed with tensors, as tensors on the tensors' device (backward needs tensors)."""
    like = next(v for v in values if isinstance(v, torch.Tensor))
    return [v if v is None or isinstance(v, torch.Tensor) else torch.as_tensor(v, device=like.device) for v in values]


def activation_name(activation: str | None) -> str | None:
    """The canonical name of an activation (what the custom operator takes); ValueError if unknown."""
    return TABLE[activation_code(activation)].name
