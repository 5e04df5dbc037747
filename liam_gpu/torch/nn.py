"""Drop-in PyTorch layers computed by liam-gpu: :class:`Linear` and :class:`LowRankLinear`.

:class:`Linear` is an ``nn.Module`` whose ``state_dict`` is that of
``nn.Linear`` (plus a fused activation); :class:`LowRankLinear` is a dense
layer replaced by its truncated SVD (two thin transforms).  Both run their
transforms through :func:`liam_gpu.torch.functional.transform_matrix`, so they
have autograd and trace under ``torch.compile``; ``backend`` is their
``device=`` (a backend name or a :class:`~liam_gpu.Scheduler`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import dispatch, validation
from .functional import activation_name, host_linear, transform_matrix

__all__ = ["CompressionReport", "Linear", "LowRankLinear"]


class _FusedLayer(nn.Module):
    """What :class:`Linear` and :class:`LowRankLinear` share: sizes, activation, backend and bias."""

    in_features: int
    out_features: int

    def _set_sizes(self, in_features: int, out_features: int, activation: str | None, backend: Any,
                   check_finite: bool) -> None:
        _check_features("in_features", in_features)
        _check_features("out_features", out_features)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation_name(activation)
        self.backend = backend
        self.check_finite = bool(check_finite)

    def _add_bias(self, bias: bool, factory: dict[str, Any]) -> None:
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)

    def _reset_bias(self) -> None:
        """``nn.Linear``'s bias initialisation: uniform in ``±1 / sqrt(in_features)``."""
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def _sizes_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def extra_repr(self) -> str:
        text = f"{self._sizes_repr()}, bias={self.bias is not None}"
        return text + (f", activation={self.activation!r}" if self.activation else "")


class Linear(_FusedLayer):
    """``nn.Linear`` computed by liam-gpu, with an optional fused activation.

    ``y = activation(x @ weight.T + bias)`` in one kernel.  Parameters are
    named and shaped as in ``nn.Linear`` (``weight`` ``(out_features,
    in_features)``, ``bias`` ``(out_features,)``) and initialised the same way,
    so ``load_state_dict(linear.state_dict())`` works both ways.

    Parameters
    ----------
    in_features, out_features
        Sizes of each input and output sample.
    bias
        Learn an additive bias.
    activation
        ``None``, ``"relu"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``,
        ``"sigmoid"`` or ``"tanh"``, applied in the kernel's epilogue.
    device, dtype
        Where and in what dtype to create the parameters (as in ``nn.Linear``).
    backend
        The liam-gpu ``device=`` that computes: ``None`` (the tensors' own
        device), ``"cpu"``, ``"cuda:N"``, ``"emulator"`` or a
        :class:`~liam_gpu.Scheduler`.
    check_finite
        Reject NaN/Inf inputs on every call.  Off by default, as in
        ``nn.Linear`` (NaN/Inf propagate): the check is one more read of the
        input and weights and, on a GPU, a wait for its answer on the stream.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str | None = None,
        device: Any = None,
        dtype: Any = None,
        *,
        backend: Any = None,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self._set_sizes(in_features, out_features, activation, backend, check_finite)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self._add_bias(bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Linear`` (Kaiming-uniform weight, uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._reset_bias()

    @classmethod
    def from_linear(cls, module: nn.Module, activation: str | None = None, *, backend: Any = None) -> "Linear":
        """A :class:`Linear` holding a copy of ``module``'s parameters (same device and dtype).

        Parameters
        ----------
        module
            An ``nn.Linear`` (or a :class:`Linear`, whose activation is kept
            unless ``activation`` is given).
        activation, backend
            As in :class:`Linear`.
        """
        weight, bias = _dense_parameters("module", module)
        if activation is None:
            activation = getattr(module, "activation", None)
        layer = cls(
            weight.shape[1], weight.shape[0], bias is not None, activation,
            device=weight.device, dtype=weight.dtype, backend=backend,
        )
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # CPU tensors: torch's own ops (no second thread pool fighting torch's).
        y = host_linear(input, (self.weight,), self.bias, self.activation, self.backend, self.check_finite)
        if y is not None:
            return y
        return transform_matrix(
            input, self.weight, self.bias, self.activation, device=self.backend, check_finite=self.check_finite
        )


@dataclass(frozen=True)
class CompressionReport:
    """What replacing a dense layer by :class:`LowRankLinear` costs and saves.

    Attributes
    ----------
    rank
        Rank of the factorisation.
    dense_parameters, parameters
        Parameter counts (weights and bias) of the dense and the low-rank layer.
    parameter_reduction
        ``1 - parameters / dense_parameters`` (negative when the rank is too
        high to save anything).
    weight_error
        ``||W - U S Vt||_F / ||W||_F``, or None when unknown.
    output_error
        ``||f_lowrank(x) - f_dense(x)||_F / ||f_dense(x)||_F`` on the sample
        batch, or None when no sample was given.
    """

    rank: int
    dense_parameters: int
    parameters: int
    parameter_reduction: float
    weight_error: float | None = None
    output_error: float | None = None


class LowRankLinear(_FusedLayer):
    """A linear layer factored as two thin transforms: ``act((x @ A.T) @ B.T + bias)``.

    ``A`` (``weight_in``, ``(rank, in_features)``) and ``B`` (``weight_out``,
    ``(out_features, rank)``) hold ``rank * (in_features + out_features)``
    weights instead of ``in_features * out_features``; the two products cost
    the same factor fewer multiply-adds.  Build one from a trained layer with
    :meth:`from_linear`.

    Parameters
    ----------
    in_features, out_features, rank
        Layer sizes and the inner dimension.
    bias, activation, device, dtype, backend, check_finite
        As in :class:`Linear`.

    Attributes
    ----------
    compression
        The :class:`CompressionReport` made by :meth:`from_linear` (None for a
        layer built directly).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        activation: str | None = None,
        device: Any = None,
        dtype: Any = None,
        *,
        backend: Any = None,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self._set_sizes(in_features, out_features, activation, backend, check_finite)
        _check_features("rank", rank)
        self.rank = int(rank)
        factory = {"device": device, "dtype": dtype}
        self.weight_in = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.weight_out = nn.Parameter(torch.empty(out_features, rank, **factory))
        self._add_bias(bias, factory)
        self.compression: CompressionReport | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise so that the product ``B @ A`` has the variance of ``nn.Linear``'s weight.

        ``A`` is initialised as ``nn.Linear`` would (variance ``1 / (3 in)``)
        and ``B`` with variance ``1 / rank``, so each entry of ``B @ A``, a sum
        of ``rank`` products, has variance ``1 / (3 in)``.
        """
        nn.init.kaiming_uniform_(self.weight_in, a=math.sqrt(5))
        bound = math.sqrt(3.0 / self.rank)  # U(-b, b) has variance b**2 / 3
        nn.init.uniform_(self.weight_out, -bound, bound)
        self._reset_bias()

    @property
    def parameter_count(self) -> int:
        """Weights and bias of this layer."""
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias is not None else 0)

    @property
    def dense_parameter_count(self) -> int:
        """Weights and bias of the dense layer this one stands for."""
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    @property
    def parameter_reduction(self) -> float:
        """``1 - parameter_count / dense_parameter_count``."""
        return 1.0 - self.parameter_count / self.dense_parameter_count

    @classmethod
    def from_linear(
        cls,
        module: nn.Module,
        rank: int | None = None,
        tol: float | None = None,
        *,
        activation: str | None = None,
        sample: torch.Tensor | None = None,
        backend: Any = None,
        **svd_options: Any,
    ) -> "LowRankLinear":
        """Replace a dense layer by its truncated SVD, ``W ~= U diag(S) Vt``.

        The factors are split evenly, ``A = diag(sqrt(S)) Vt`` and
        ``B = U diag(sqrt(S))``, so that both have the same scale (which keeps
        16-bit layers away from overflow and underflow).

        Parameters
        ----------
        module
            An ``nn.Linear`` or a :class:`Linear` (its activation is kept
            unless ``activation`` is given).
        rank, tol
            Passed to :func:`liam_gpu.svd_compress` as ``k`` and ``tol``: a
            fixed rank, or the accuracy that picks the rank.
        activation
            Overrides the module's activation.
        sample
            A batch of inputs ``(..., in_features)``; when given, the relative
            output error on it is measured into :attr:`compression`.
        backend
            The liam-gpu ``device=`` for the SVD and for the layer's transforms.
        **svd_options
            Further keyword arguments of :func:`liam_gpu.svd_compress`
            (``n_oversamples``, ``n_iter``, ``random_state``, ``max_rank``, ...).

        Returns
        -------
        LowRankLinear
            On the module's device and dtype, with :attr:`compression` set.
            A ``UserWarning`` says when the rank saves no parameters.
        """
        weight, bias = _dense_parameters("module", module)
        if rank is not None:
            validation.check_rank("rank", rank, min(weight.shape))
        if activation is None:
            activation = getattr(module, "activation", None)
        # The SVD runs in float32 at least: 16-bit factors are rounded once, at the end.
        work = weight if weight.dtype in (torch.float32, torch.float64) else weight.float()
        factors = dispatch.svd_compress(work, rank, tol=tol, device=backend, **svd_options)
        root = torch.sqrt(factors.S)
        layer = cls(
            weight.shape[1], weight.shape[0], int(factors.rank), bias is not None, activation,
            device=weight.device, dtype=weight.dtype, backend=backend,
        )
        with torch.no_grad():
            layer.weight_in.copy_(root[:, None] * factors.Vt)
            layer.weight_out.copy_(factors.U * root[None, :])
            if bias is not None:
                layer.bias.copy_(bias)
        weight_error = _relative_error(layer.dense_weight(), weight)
        layer.compression = layer._report(weight_error, None)
        if sample is not None:
            layer.compression = layer.report(sample, module)
        if layer.parameter_reduction <= 0:
            warnings.warn(
                f"rank {layer.rank} saves no parameters for a {layer.out_features}x{layer.in_features} layer "
                f"({layer.parameter_count} >= {layer.dense_parameter_count}); the break-even rank is "
                f"{layer.in_features * layer.out_features // (layer.in_features + layer.out_features)}",
                UserWarning,
                stacklevel=2,
            )
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix ``B @ A`` this layer applies."""
        with torch.no_grad():
            return transform_matrix(self.weight_out, self.weight_in.T, device=self.backend)

    def report(self, sample: torch.Tensor, reference: nn.Module) -> CompressionReport:
        """Measure this layer against the dense ``reference`` on a batch of inputs.

        Parameters
        ----------
        sample
            ``(..., in_features)`` inputs on the layers' device.
        reference
            The dense layer (``nn.Linear``, :class:`Linear`, or any module with
            the same input and output shapes).

        Returns
        -------
        CompressionReport
            With ``output_error`` ``||self(x) - reference(x)||_F / ||reference(x)||_F``
            (computed in float64) and the weight error when ``reference`` has a
            ``weight``.
        """
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
        if sample.dim() < 1 or sample.shape[-1] != self.in_features:
            raise ValueError(
                f"sample must have shape (..., {self.in_features}), got {tuple(sample.shape)}"
            )
        with torch.no_grad():
            dense = reference(sample)
            approx = self(sample)
            output_error = _relative_error(approx, dense)
            ref_weight = getattr(reference, "weight", None)
            weight_error = (
                _relative_error(self.dense_weight(), ref_weight)
                if isinstance(ref_weight, torch.Tensor) and ref_weight.shape == (self.out_features, self.in_features)
                else None
            )
        return self._report(weight_error, output_error)

    def _report(self, weight_error: float | None, output_error: float | None) -> CompressionReport:
        return CompressionReport(
            rank=self.rank,
            dense_parameters=self.dense_parameter_count,
            parameters=self.parameter_count,
            parameter_reduction=self.parameter_reduction,
            weight_error=weight_error,
            output_error=output_error,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # CPU tensors: torch's own ops (no second thread pool fighting torch's).
        y = host_linear(
            input, (self.weight_in, self.weight_out), self.bias, self.activation, self.backend, self.check_finite
        )
        if y is not None:
            return y
        hidden = transform_matrix(input, self.weight_in, device=self.backend, check_finite=self.check_finite)
        return transform_matrix(
            hidden, self.weight_out, self.bias, self.activation, device=self.backend, check_finite=False
        )

    def _sizes_repr(self) -> str:
        return f"{super()._sizes_repr()}, rank={self.rank}"


def _check_features(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _dense_parameters(name: str, module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of an ``nn.Linear``-like module, detached."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, nn.Module) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(
            f"{name} must be an nn.Linear or liam_gpu.torch.Linear (a module with a 2-D weight), "
            f"got {type(module).__name__}"
        )
    bias = getattr(module, "bias", None)
    return weight.detach(), None if bias is None else bias.detach()


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F`` in float64 (0 when both are zero)."""
    a = approx.detach().to(torch.float64)
    e = exact.detach().to(torch.float64)
    denom = torch.linalg.vector_norm(e)
    num = torch.linalg.vector_norm(a - e)
    if denom == 0:
        return 0.0 if num == 0 else math.inf
    return float(num / denom)
