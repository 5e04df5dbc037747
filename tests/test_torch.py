"""PyTorch drop-in: tensors in and out, zero-copy, autograd, layers, torch.compile, streams."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import liam_gpu.torch as lt  # noqa: E402  (after the importorskip)
from liam_gpu import arrays  # noqa: E402
from liam_gpu.backends.cpu import CpuBackend  # noqa: E402
from liam_gpu.api import transform_matrix as public_transform  # noqa: E402  (the front door)

ACTIVATIONS = [None, "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"]

#: torch's own definition of each activation, the reference for values and gradients.
TORCH_ACT = {
    None: lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA build of torch and a visible GPU"
)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon: the relative error of one rounding in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def transform_bound(x, w, b, ref, dtype, compute=torch.float32):
    """Elementwise error bound of ``act(x @ w.T + b)`` computed in ``compute`` and stored in ``dtype``.

    ``(d_in + 2) * u_compute * (|x| @ |w|.T + |b|)`` bounds the accumulation
    (the standard ``gamma_n`` bound, plus the bias add and the activation, whose
    slope is at most about 1.13 -- rounded up to 2 units), and one rounding of
    the result to ``dtype`` adds ``u_dtype * |ref|``.
    """
    x64, w64 = x.double(), w.double()
    mag = x64.abs() @ w64.abs().T
    if b is not None:
        mag = mag + b.double().abs()
    acc = (w.shape[-1] + 2) * unit_roundoff(compute) * 2 * mag
    return acc + unit_roundoff(dtype) * ref.abs() + torch.finfo(dtype).tiny


def reference(x, w, b, activation):
    """float64 ``act(x @ w.T + b)`` from the (already rounded) inputs."""
    z = x.double() @ w.double().T
    if b is not None:
        z = z + b.double()
    return TORCH_ACT[activation](z)


# --- tensors in, tensors out -----------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_cpu_tensors_in_tensors_out_same_dtype_and_device(dtype, activation):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 33, generator=g).to(dtype)
    w = torch.randn(5, 33, generator=g).to(dtype)
    b = torch.randn(5, generator=g).to(dtype)
    y = public_transform(x, w, b, activation, device="cpu")
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.device.type == "cpu"
    assert y.shape == (7, 5)
    ref = reference(x, w, b, activation)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    err = (y.double() - ref).abs()
    assert bool((err <= transform_bound(x, w, b, ref, dtype, compute)).all()), float(err.max())


def test_input_memory_is_shared_and_output_aliases_the_computed_array(monkeypatch):
    seen = {}
    real = CpuBackend.linear

    def spy(self, x, w, bias, activation, out, *, storage=None):
        seen.update(x=x.ctypes.data, w=w.ctypes.data, b=bias.ctypes.data, out=out.ctypes.data)
        return real(self, x, w, bias, activation, out, storage=storage)

    monkeypatch.setattr(CpuBackend, "linear", spy)
    x = torch.randn(6, 4)
    w = torch.randn(3, 4)
    b = torch.randn(3)
    # The core path (the front door sends dense CPU tensors to torch's own GEMM, liam_gpu/torch_ops.py).
    from liam_gpu.transform import transform_matrix as core_transform

    y = core_transform(x, w, b, device="cpu")
    assert seen["x"] == x.data_ptr() and seen["w"] == w.data_ptr() and seen["b"] == b.data_ptr()
    assert seen["out"] == y.data_ptr()


def test_to_compute_and_from_compute_share_memory_with_tensors():
    t = torch.arange(12.0).reshape(3, 4)
    kind = arrays.kind_of(t)
    view = arrays.to_compute(t, kind)
    assert isinstance(view, np.ndarray) and view.ctypes.data == t.data_ptr()
    result = np.ones((2, 5), np.float32)
    back = arrays.from_compute(result, kind)
    assert isinstance(back, torch.Tensor) and back.data_ptr() == result.ctypes.data


def test_requires_grad_inputs_compute_without_buffer_error():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(2, 3, requires_grad=True)
    y = public_transform(x, w, device="cpu")
    torch.testing.assert_close(y.detach(), (x @ w.T).detach())
    with torch.no_grad():
        z = public_transform(x, w, device="cpu")
    assert not z.requires_grad


def test_liam_gpu_transform_matrix_records_autograd_on_tensors_that_require_grad():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64)
    y = public_transform(x, w, None, "tanh", device="cpu")
    assert y.requires_grad and y.grad_fn is not None
    y.sum().backward()
    expected = ((1 - torch.tanh(x.detach() @ w.T) ** 2) @ w)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: t.T, id="transposed"),
        pytest.param(lambda t: t[:, ::2], id="strided-columns"),
        pytest.param(lambda t: t[1::3], id="strided-rows"),
        pytest.param(lambda t: t[0].expand(5, t.shape[1]), id="broadcast-zero-stride"),
    ],
)
def test_non_contiguous_tensors(make):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = make(base)
    assert not x.is_contiguous()
    w = torch.randn(5, x.shape[-1], generator=g, dtype=torch.float64)
    y = public_transform(x, w, device="cpu")
    ref = reference(x, w, None, None)
    assert bool(((y - ref).abs() <= transform_bound(x, w, None, ref, torch.float64, torch.float64)).all())


def test_out_tensor_is_written_in_place():
    x = torch.randn(4, 3)
    w = torch.randn(2, 3)
    out = torch.empty(4, 2)
    result = public_transform(x, w, out=out, device="cpu")
    assert result is out
    ref = reference(x, w, None, None)
    assert bool(((out.double() - ref).abs() <= transform_bound(x, w, None, ref, torch.float32)).all())


def test_bfloat16_out_is_written_in_place():
    # bfloat16 is computed from its bits (a uint16 view), so out= needs no copy.
    x = torch.randn(4, 3, dtype=torch.bfloat16)
    w = torch.randn(2, 3, dtype=torch.bfloat16)
    out = torch.zeros(4, 2, dtype=torch.bfloat16)
    assert public_transform(x, w, out=out, device="cpu") is out
    ref = reference(x, w, None, None)
    assert bool(((out.double() - ref).abs() <= transform_bound(x, w, None, ref, torch.bfloat16)).all())


def test_mixed_bfloat16_and_float32_computes_and_returns_float32():
    x = torch.randn(4, 3, dtype=torch.bfloat16)
    w = torch.randn(2, 3, dtype=torch.float32)
    y = public_transform(x, w, device="cpu")
    assert y.dtype == torch.float32 == lt.result_dtype(x, w)
    ref = reference(x, w, None, None)
    assert bool(((y.double() - ref).abs() <= transform_bound(x, w, None, ref, torch.float32)).all())


def test_negative_view_tensor_keeps_its_sign():
    t = torch.arange(1.0, 7.0).reshape(2, 3)
    negative = t._neg_view()  # torch's lazy negation: a view with the neg bit set
    assert negative.is_neg()
    np.testing.assert_array_equal(arrays.to_compute(negative), -t.numpy())


def test_negatively_strided_result_is_copied_not_aliased():
    y = np.arange(6.0)[::-1]
    back = arrays.from_compute(y, arrays.ArrayKind("torch", "cpu"))
    np.testing.assert_array_equal(back.numpy(), y)


def test_sparse_tensor_is_a_type_error_naming_the_argument():
    x = torch.eye(3).to_sparse()
    with pytest.raises(TypeError, match="data is a torch.sparse_coo tensor"):
        public_transform(x, torch.ones(2, 3), device="cpu")


def test_mixed_torch_and_numpy_is_a_type_error():
    with pytest.raises(TypeError, match="mixed array types"):
        public_transform(torch.ones(2, 3), np.ones((4, 3)), device="cpu")
    with pytest.raises(TypeError, match="mixed array types"):
        lt.transform_matrix(torch.ones(2, 3, requires_grad=True), np.ones((4, 3)), device="cpu")


def test_out_with_requires_grad_is_a_value_error():
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="out="):
        lt.transform_matrix(x, torch.randn(4, 3), out=torch.empty(2, 4))


def test_every_backend_returns_tensors(backend_name):
    if backend_name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch")
    dev = "cuda:0" if backend_name.startswith("cuda") else "cpu"
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 16, generator=g).to(dev)
    w = torch.randn(6, 16, generator=g).to(dev)
    b = torch.randn(6, generator=g).to(dev)
    y = public_transform(x, w, b, "silu", device=backend_name)
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == torch.float32
    ref = reference(x, w, b, "silu")
    assert bool(((y.double() - ref).abs() <= transform_bound(x, w, b, ref, torch.float32)).all())


# --- autograd ----------------------------------------------------------------------

@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=[str(a) for a in ACTIVATIONS])
def test_gradcheck_float64(activation, with_bias):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    if with_bias:
        assert torch.autograd.gradcheck(
            lambda x, w, b: lt.transform_matrix(x, w, b, activation, device="cpu"), (x, w, b)
        )
    else:
        assert torch.autograd.gradcheck(lambda x, w: lt.transform_matrix(x, w, None, activation, device="cpu"), (x, w))


def test_gradcheck_batched_weights_and_leading_axes():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: lt.transform_matrix(x, w, b, "gelu", device="cpu"), (x, w, b))
    w2 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: lt.transform_matrix(x, w, b, "silu", device="cpu"), (x, w2, b2))
    v = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)  # one sample, 1-D
    assert torch.autograd.gradcheck(lambda v, w, b: lt.transform_matrix(v, w, b, "tanh", device="cpu"), (v, w2, b2))


def test_gradients_on_every_backend_match_torch(backend_name):
    if backend_name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch")
    dev = "cuda:0" if backend_name.startswith("cuda") else "cpu"
    g = torch.Generator().manual_seed(6)
    shapes = [(6, 8), (5, 8), (5,)]
    leaves = [torch.randn(*s, generator=g, dtype=torch.float64).to(dev).requires_grad_() for s in shapes]
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    lt.transform_matrix(*leaves, "gelu", device=backend_name).square().sum().backward()
    TORCH_ACT["gelu"](F.linear(*twins)).square().sum().backward()
    for ours, theirs in zip(leaves, twins):
        # float64 products of length <= 8 and one erf: a few hundred ulps at most.
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e3 * torch.finfo(torch.float64).eps, atol=0)


def test_float16_gradients_stay_float16_and_are_close_to_float32():
    g = torch.Generator().manual_seed(7)
    x32 = torch.randn(8, 16, generator=g)
    w32 = torch.randn(4, 16, generator=g)
    x, w = x32.half().requires_grad_(), w32.half().requires_grad_()
    lt.transform_matrix(x, w, None, "relu", device="cpu").float().sum().backward()
    assert x.grad.dtype == torch.float16 and w.grad.dtype == torch.float16
    xr, wr = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    F.relu(xr @ wr.T).sum().backward()
    # one float16 rounding of a float32 sum of <= 16 terms
    torch.testing.assert_close(x.grad.float(), xr.grad, rtol=2 * unit_roundoff(torch.float16), atol=0)
    torch.testing.assert_close(w.grad.float(), wr.grad, rtol=2 * unit_roundoff(torch.float16), atol=0)


def test_backward_propagates_inf_gradients_instead_of_raising():
    # Mixed-precision loss scaling detects overflow by the Inf it leaves in the gradients.
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(2, 4, requires_grad=True)
    y = lt.transform_matrix(x, w, None, "gelu", device="cpu")
    y.backward(torch.full_like(y, math.inf))
    assert not bool(torch.isfinite(w.grad).all()) and not bool(torch.isfinite(x.grad).all())


def test_lists_with_tensors_that_require_grad():
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    y = lt.transform_matrix(x, [[1.0, 2.0]], [0.5], "tanh", device="cpu")
    y.sum().backward()
    w = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    expected = (1 - torch.tanh(x.detach() @ w.T + 0.5) ** 2) * w
    torch.testing.assert_close(x.grad, expected)


def test_custom_operator_registration_passes_opcheck():
    g = torch.Generator().manual_seed(8)
    tensors = (torch.randn(4, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(2, generator=g))
    args = (*tensors, "gelu", "cpu", True)
    torch.library.opcheck(torch.ops.liam_gpu.transform_matrix.default, args)


# --- layers ------------------------------------------------------------------------

def test_linear_loads_an_nn_linear_state_dict_and_matches_its_outputs():
    torch.manual_seed(9)
    dense = nn.Linear(12, 7).double()
    ours = lt.Linear(12, 7, dtype=torch.float64)
    ours.load_state_dict(dense.state_dict())
    x = torch.randn(10, 12, dtype=torch.float64)
    ref = dense(x).detach()
    y = ours(x).detach()
    bound = transform_bound(x, dense.weight.detach(), dense.bias.detach(), ref, torch.float64, torch.float64)
    assert bool(((y - ref).abs() <= bound).all())
    back = nn.Linear(12, 7).double()
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back.weight, dense.weight, rtol=0, atol=0)


def test_linear_propagates_nan_like_nn_linear_unless_asked_to_check():
    layer = lt.Linear(3, 2)
    x = torch.tensor([[math.nan, 0.0, 1.0]])
    assert bool(torch.isnan(layer(x)).all())
    layer.check_finite = True
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        layer(x)


def test_linear_without_bias_and_its_state_dict_keys():
    ours = lt.Linear(4, 3, bias=False)
    assert set(ours.state_dict()) == {"weight"} == set(nn.Linear(4, 3, bias=False).state_dict())
    assert set(lt.Linear(4, 3).state_dict()) == set(nn.Linear(4, 3).state_dict())


def test_linear_from_linear_with_activation_matches_torch_and_its_gradients():
    torch.manual_seed(10)
    dense = nn.Linear(6, 5).double()
    ours = lt.Linear.from_linear(dense, activation="gelu_tanh")
    assert "activation='gelu_tanh'" in repr(ours)
    assert ours.weight.data_ptr() != dense.weight.data_ptr()  # a copy, not shared parameters
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ours(x).sum().backward()
    TORCH_ACT["gelu_tanh"](dense(x2)).sum().backward()
    tol = 1e3 * torch.finfo(torch.float64).eps
    torch.testing.assert_close(x.grad, x2.grad, rtol=tol, atol=0)
    torch.testing.assert_close(ours.weight.grad, dense.weight.grad, rtol=tol, atol=0)
    torch.testing.assert_close(ours.bias.grad, dense.bias.grad, rtol=tol, atol=0)


def test_linear_initialisation_has_nn_linear_scale():
    torch.manual_seed(11)
    ours = lt.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    weight, bias = ours.weight.detach(), ours.bias.detach()
    assert float(weight.abs().max()) <= bound and float(bias.abs().max()) <= bound
    # uniform(-b, b) has variance b**2/3: within 5 % for 120000 samples (sd of the estimate ~0.4 %)
    assert abs(float(weight.var()) / (bound**2 / 3) - 1) < 0.05


@pytest.mark.parametrize("bad, error", [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_linear_rejects_bad_sizes(bad, error):
    with pytest.raises(error, match="in_features"):
        lt.Linear(bad, 3)


def test_from_linear_rejects_modules_without_a_weight():
    with pytest.raises(TypeError, match="module must be an nn.Linear"):
        lt.Linear.from_linear(nn.ReLU())


def _low_rank_dense(d_in, d_out, rank, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    dense = nn.Linear(d_in, d_out).to(dtype)
    with torch.no_grad():
        left = torch.randn(d_out, rank, generator=g, dtype=dtype)
        dense.weight.copy_(left @ torch.randn(rank, d_in, generator=g, dtype=dtype))
    return dense


def test_low_rank_linear_is_exact_for_a_low_rank_weight_and_reports_the_saving():
    d_in, d_out, rank = 64, 48, 8
    dense = _low_rank_dense(d_in, d_out, rank, seed=12)
    sample = torch.randn(32, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    layer = lt.LowRankLinear.from_linear(dense, rank=rank, sample=sample)
    assert (layer.weight_in.shape, layer.weight_out.shape) == ((rank, d_in), (d_out, rank))
    report = layer.compression
    assert report.rank == rank
    assert report.dense_parameters == d_in * d_out + d_out
    assert report.parameters == rank * (d_in + d_out) + d_out
    assert report.parameter_reduction == pytest.approx(1 - report.parameters / report.dense_parameters)
    # An exactly rank-8 weight is reproduced to rounding: a few hundred float64 ulps times the sizes.
    eps = torch.finfo(torch.float64).eps
    assert report.weight_error <= 100 * d_in * eps
    assert report.output_error <= 100 * d_in * eps
    y, ref = layer(sample), dense(sample)
    assert y.dtype == ref.dtype == torch.float64


def test_low_rank_linear_error_follows_the_spectrum():
    d, rank = 40, 5
    g = torch.Generator().manual_seed(14)
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = 0.5 ** torch.arange(d, dtype=torch.float64)
    dense = nn.Linear(d, d, bias=False).double()
    with torch.no_grad():
        dense.weight.copy_(q1 * s @ q2.T)
    layer = lt.LowRankLinear.from_linear(dense, rank=rank)
    best = float(torch.linalg.vector_norm(s[rank:]) / torch.linalg.vector_norm(s))  # Eckart-Young
    assert best * (1 - 1e-9) <= layer.compression.weight_error <= 1.5 * best
    report = layer.report(torch.randn(64, d, dtype=torch.float64, generator=g), dense)
    assert 0 < report.output_error <= 4 * best


def test_low_rank_linear_with_tol_picks_the_rank():
    d = 40
    g = torch.Generator().manual_seed(15)
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = 0.1 ** torch.arange(d, dtype=torch.float64)
    dense = nn.Linear(d, d).double()
    with torch.no_grad():
        dense.weight.copy_(q1 * s @ q2.T)
    layer = lt.LowRankLinear.from_linear(dense, tol=1e-4)
    assert 1 <= layer.rank < d // 2
    assert layer.compression.weight_error <= 1e-4


def test_low_rank_linear_keeps_dtype_activation_and_trains():
    dense = lt.Linear(16, 12, activation="relu")
    layer = lt.LowRankLinear.from_linear(dense, rank=4)
    assert layer.activation == "relu" and layer.weight_in.dtype == torch.float32
    x = torch.randn(5, 16)
    out = layer(x)
    assert bool((out >= 0).all())
    out.sum().backward()
    assert layer.weight_in.grad is not None and layer.weight_out.grad is not None and layer.bias.grad is not None


def test_low_rank_linear_rejects_a_rank_out_of_range():
    with pytest.raises(ValueError, match="rank=7"):
        lt.LowRankLinear.from_linear(nn.Linear(6, 5), rank=7)


def test_low_rank_linear_warns_when_the_rank_saves_nothing():
    dense = nn.Linear(6, 6)
    with pytest.warns(UserWarning, match="saves no parameters"):
        layer = lt.LowRankLinear.from_linear(dense, rank=5)
    assert layer.parameter_reduction <= 0


def _layers(activation, dtype, seed=21):
    torch.manual_seed(seed)
    dense = lt.Linear(24, 20, activation=activation, dtype=dtype)
    low = lt.LowRankLinear(24, 20, rank=6, activation=activation, dtype=dtype)
    return dense, low


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_layers_on_cpu_tensors_compute_with_torchs_ops(monkeypatch, activation, dtype):
    """On CPU tensors the layers use F.linear and torch's activations, not numpy's BLAS.

    numpy's OpenBLAS pool and torch's fought: LowRankLinear was 1.5x-18x and
    Linear up to 80x slower than nn.Linear with the same weights.  The liam-gpu
    path must not be called, and the result keeps the numerical contract:
    the same dtype, 16-bit types accumulated in float32 and rounded once.
    """
    import liam_gpu.dispatch

    dense, low = _layers(activation, dtype)
    x = torch.randn(9, 24).to(dtype)

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU layer went through liam-gpu's numpy path")

    monkeypatch.setattr(liam_gpu.dispatch, "transform_matrix", refuse)
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    for layer, w in ((dense, dense.weight), (low, None)):
        y = layer(x)
        assert y.dtype == dtype and y.device.type == "cpu"
        with torch.no_grad():
            w = w if w is not None else low.weight_out.double() @ low.weight_in.double()
            ref = reference(x, w, layer.bias, activation)
            bound = transform_bound(x, w, layer.bias, ref, dtype, compute)
            if w is not dense.weight:  # two products: the rounded hidden layer adds its own error
                bound = bound + 2 * 24 * unit_roundoff(compute) * (
                    x.double().abs() @ low.weight_in.double().abs().T) @ low.weight_out.double().abs().T
        assert bool(((y.double() - ref).abs() <= bound).all()), activation


def test_cpu_layers_keep_gelus_relative_accuracy_in_the_tail():
    """gelu is the exact erf form with relative accuracy where 1 + erf(z) cancels (z << 0).

    As the kernels, the CPU backend and ``liam_gpu.transform_matrix`` on torch
    CPU tensors compute it (``F.gelu`` returns 0 or a wrong value here); with
    autograd too.
    """
    layer = lt.Linear(1, 1, bias=False, activation="gelu")
    with torch.no_grad():
        layer.weight.fill_(1.0)
    z = torch.tensor([[-12.0], [-8.0], [-5.0], [-1.0], [0.5], [3.0]])
    ref = z.double() * 0.5 * torch.special.erfc(-z.double() / math.sqrt(2))
    # The rounding of the argument -z/sqrt(2) moves erfc by a relative z^2 u (its
    # logarithmic slope is about -2t at t = -z/sqrt(2)); a few more u for the rest.
    bound = 2 * (z.double() ** 2 + 4) * unit_roundoff(torch.float32) * ref.abs()
    for grad in (False, True):
        x = z.clone().requires_grad_(grad)
        y = layer(x).double()
        assert bool(((y - ref).abs() <= bound).all()), (grad, y, ref)
    x = z.clone().requires_grad_()
    layer(x).sum().backward()
    dref = 0.5 * torch.special.erfc(-z.double() / math.sqrt(2)) + z.double() * torch.exp(-0.5 * z.double() ** 2) / math.sqrt(2 * math.pi)
    grad_bound = 2 * (z.double() ** 2 + 4) * unit_roundoff(torch.float32) * dref.abs()  # the same argument
    assert bool(((x.grad.double() - dref).abs() <= grad_bound).all()), (x.grad, dref)


def test_cpu_layers_match_nn_linear_and_train():
    torch.manual_seed(22)
    dense, low = _layers("silu", torch.float64)
    x = torch.randn(7, 24, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: dense(t), (x,))
    torch.autograd.gradcheck(lambda t: low(t), (x,))
    y = low(x)
    y.sum().backward()
    assert all(p.grad is not None for p in low.parameters())
    nn_dense = nn.Linear(24, 20).double()
    nn_dense.load_state_dict(dense.state_dict())
    torch.testing.assert_close(dense(x), F.silu(nn_dense(x)), rtol=1e-13, atol=1e-13)


def test_cpu_layers_keep_their_checks_and_other_backends():
    layer = lt.Linear(3, 2, check_finite=True)
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        layer(torch.tensor([[math.nan, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="data has 4 features"):
        layer(torch.ones(2, 4))
    with pytest.raises(ValueError, match="data is empty"):
        layer(torch.ones(0, 3))
    with pytest.raises(ValueError, match="data must have at least 1 dimensions"):
        layer(torch.tensor(1.0))
    low = lt.LowRankLinear(3, 2, rank=1)
    with torch.no_grad():
        low.bias = nn.Parameter(torch.ones(1))  # F.linear would broadcast it
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        low(torch.ones(2, 3))
    # a float64 batch into a float32 layer promotes, as before (liam-gpu's rule)
    assert layer(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float64
    # an explicit other backend still computes there
    emulated = lt.Linear(3, 2, backend="emulator") if shutil.which("g++") else None
    if emulated is not None:
        with torch.no_grad():
            emulated.weight.copy_(layer.weight)
            emulated.bias.copy_(layer.bias)
        torch.testing.assert_close(emulated(torch.ones(2, 3)), layer(torch.ones(2, 3)))


def test_svd_compress_on_a_tensor_returns_tensors():
    from liam_gpu.svd import svd_compress

    a = torch.randn(20, 12, dtype=torch.float64)
    lr = svd_compress(a, 3)
    for part in (lr.U, lr.S, lr.Vt):
        assert isinstance(part, torch.Tensor) and part.dtype == torch.float64 and part.device == a.device


# --- torch.compile -----------------------------------------------------------------

def _small_model():
    torch.manual_seed(16)
    return nn.Sequential(lt.Linear(8, 16, activation="gelu"), lt.LowRankLinear(16, 4, rank=2))


def test_torch_compile_traces_our_layers_without_a_graph_break():
    model = _small_model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = compiled(x)
    torch.testing.assert_close(y, model(x2), rtol=0, atol=0)
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
    for ours, eager in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(ours, eager, rtol=0, atol=0)


def test_torch_compile_of_the_public_function_on_plain_tensors():
    w = torch.randn(4, 3)
    b = torch.randn(4)

    def f(x):
        return public_transform(x, w, b, "relu").sum(dim=-1)

    x = torch.randn(5, 3)
    torch.testing.assert_close(torch.compile(f, backend="aot_eager", fullgraph=True)(x), f(x), rtol=0, atol=0)


def test_torch_compile_default_backend_inference():
    if shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile's default (inductor) CPU backend needs a C++ compiler")
    model = _small_model().eval()
    compiled = torch.compile(model, fullgraph=True)  # no graph break
    x = torch.randn(3, 8)
    with torch.no_grad():
        # On CPU tensors the layers are F.linear and torch's activations, which inductor
        # fuses into code of its own: equal to rounding (a few float32 units), not bitwise.
        tol = 64 * unit_roundoff(torch.float32)
        torch.testing.assert_close(compiled(x), model(x), rtol=tol, atol=tol)


# --- CUDA --------------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_cuda_tensors_are_zero_copy_both_ways(monkeypatch):
    from liam_gpu.backends.kernel import CudaBackend

    seen = {}
    real = CudaBackend.linear

    def spy(self, x, w, bias, activation, out):
        seen.update(x=x.data.ptr, w=w.data.ptr, out=out.data.ptr)
        return real(self, x, w, bias, activation, out)

    monkeypatch.setattr(CudaBackend, "linear", spy)
    x = torch.randn(64, 32, device="cuda")
    w = torch.randn(16, 32, device="cuda")
    y = public_transform(x, w)
    assert y.device == x.device and y.dtype == x.dtype
    assert (seen["x"], seen["w"], seen["out"]) == (x.data_ptr(), w.data_ptr(), y.data_ptr())


@pytest.mark.gpu
@needs_cuda
def test_cuda_work_is_ordered_on_the_callers_side_stream_without_synchronize(monkeypatch):
    import cupy

    from liam_gpu.backends.kernel import CudaBackend
    from liam_gpu.launch.runtime import CudaRuntime

    streams = []
    real = CudaBackend.linear

    def spy(self, x, w, bias, activation, out):
        streams.append(cupy.cuda.get_current_stream().ptr)
        return real(self, x, w, bias, activation, out)

    def forbidden(*args, **kwargs):
        raise AssertionError("synchronize() on the hot path")

    w = torch.randn(64, 256, device="cuda")
    x = torch.zeros(512, 256, device="cuda")
    fresh = torch.randn(512, 256, device="cuda")
    torch.cuda.synchronize()  # test set-up only
    side = torch.cuda.Stream()
    monkeypatch.setattr(CudaBackend, "linear", spy)
    monkeypatch.setattr(CudaRuntime, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
    with torch.cuda.stream(side):
        # Keep the side stream busy, then overwrite x on it: work on any other
        # stream would read the zeros before the copy lands.
        torch.cuda._sleep(20_000_000)
        x.copy_(fresh)
        # check_finite=False: the NaN/Inf check reads its answer back to the host.
        y = public_transform(x, w, None, "relu", check_finite=False)
        expected = F.relu(F.linear(x, w))
    monkeypatch.undo()
    side.synchronize()
    assert streams == [side.cuda_stream]
    err = (y.double() - expected.double()).abs()
    assert bool((err <= transform_bound(x, w, None, expected.double(), torch.float32)).all())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_tensors(dtype):
    g = torch.Generator().manual_seed(17)
    x = torch.randn(33, 40, generator=g).to("cuda", dtype)
    w = torch.randn(24, 40, generator=g).to("cuda", dtype)
    b = torch.randn(24, generator=g).to("cuda", dtype)
    y = public_transform(x, w, b, "gelu")
    assert y.dtype == dtype and y.device == x.device
    ref = reference(x, w, b, "gelu")
    assert bool(((y.double() - ref).abs() <= transform_bound(x, w, b, ref, dtype)).all())


@pytest.mark.gpu
@needs_cuda
def test_cuda_linear_trains_like_nn_linear():
    torch.manual_seed(18)
    dense = nn.Linear(32, 16).cuda().double()
    ours = lt.Linear.from_linear(dense)
    x = torch.randn(8, 32, device="cuda", dtype=torch.float64)
    ours(x).square().sum().backward()
    dense(x).square().sum().backward()
    tol = 1e3 * torch.finfo(torch.float64).eps
    torch.testing.assert_close(ours.weight.grad, dense.weight.grad, rtol=tol, atol=0)
    torch.testing.assert_close(ours.bias.grad, dense.bias.grad, rtol=tol, atol=0)


@pytest.mark.gpu
@needs_cuda
def test_use_torch_allocator_puts_results_in_torchs_pool():
    import cupy

    x = torch.randn(256, 128, device="cuda")
    w = torch.randn(512, 128, device="cuda")
    try:
        lt.use_torch_allocator()
        before = torch.cuda.memory_allocated()
        y = public_transform(x, w)
        assert torch.cuda.memory_allocated() - before >= y.numel() * y.element_size()
    finally:
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


# --- torch.svd_lowrank / torch.pca_lowrank's contract (liam_gpu.torch.lowrank) ----------------


def test_svd_lowrank_and_pca_lowrank_have_torchs_signatures():
    import inspect

    for ours, theirs in ((lt.svd_lowrank, torch.svd_lowrank), (lt.pca_lowrank, torch.pca_lowrank)):
        mine = [(p.name, p.default) for p in inspect.signature(ours).parameters.values()]
        torchs = [(p.name, p.default) for p in inspect.signature(theirs).parameters.values()]
        assert mine == torchs


def _lowrank_matrix(m, n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, dtype=torch.float64, generator=g) @ torch.randn(r, n, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
@pytest.mark.parametrize("mean", ["row", "column", "scalar", "full"])
def test_svd_lowrank_subtracts_m_as_a_dense_a_minus_m(layout, mean):
    a = _lowrank_matrix(40, 15, 4)
    m = {"row": a.mean(0, keepdim=True), "column": a.mean(1, keepdim=True),
         "scalar": torch.tensor(0.7, dtype=torch.float64), "full": _lowrank_matrix(40, 15, 2, seed=1)}[mean]
    given = {"dense": a, "coo": a.to_sparse(), "csr": a.to_sparse_csr()}[layout]
    # A - M has rank <= 4 + 2 and q = 8 (sketch 18 >= 15): the factors reproduce it to rounding.
    u, s, v = lt.svd_lowrank(given, q=8, M=m)
    assert (u.shape, s.shape, v.shape) == ((40, 8), (8,), (15, 8))
    expected = a - m
    tol = 64 * torch.finfo(torch.float64).eps * math.sqrt(40 * 15) * float(torch.linalg.matrix_norm(expected, 2))
    assert float((u @ torch.diag(s) @ v.mT - expected).abs().max()) <= tol
    torch.testing.assert_close(s, torch.linalg.svdvals(expected)[:8], rtol=0, atol=tol)


@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("mean", ["row", "column", "full"])
@pytest.mark.parametrize("grad", ["A", "M"])
def test_svd_lowrank_sparse_a_with_grad_is_refused_the_same_way_on_every_m_route(layout, mean, grad):
    # The centring operator, its transpose and the dense copy alike: one error naming A and M.
    a = _lowrank_matrix(40, 15, 4)
    m = {"row": a.mean(0, keepdim=True), "column": a.mean(1, keepdim=True), "full": _lowrank_matrix(40, 15, 2)}[mean]
    given = {"coo": a.to_sparse(), "csr": a.to_sparse_csr()}[layout]
    (given if grad == "A" else m).requires_grad_()
    with pytest.raises(ValueError, match="A is a sparse tensor and A or M requires grad"):
        lt.svd_lowrank(given, q=4, M=m)


def test_svd_lowrank_repeats_under_torch_manual_seed_and_leaves_a_alone():
    a = torch.randn(300, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = a.clone()
    torch.manual_seed(5)
    first = lt.svd_lowrank(a, q=5, niter=1)
    torch.manual_seed(5)
    again = lt.svd_lowrank(a, q=5, niter=1)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert torch.equal(a, before)


def test_pca_lowrank_is_svd_lowrank_of_the_centred_matrix_and_defaults_q_to_six():
    a = _lowrank_matrix(50, 20, 9) + 3.0
    u, s, v = lt.pca_lowrank(a)
    assert (u.shape, s.shape, v.shape) == ((50, 6), (6,), (20, 6))
    expected = torch.linalg.svdvals(a - a.mean(0))[:6]
    tol = 64 * torch.finfo(torch.float64).eps * math.sqrt(50 * 20) * float(expected[0])
    torch.testing.assert_close(s, expected, rtol=0, atol=tol)
    _, s_raw, _ = lt.pca_lowrank(a, center=False)
    torch.testing.assert_close(s_raw, torch.linalg.svdvals(a)[:6], rtol=0, atol=tol * 10)


@pytest.mark.parametrize("call,error,match", [
    (lambda a: lt.svd_lowrank(a.numpy(), 2), TypeError, "A must be a torch.Tensor"),
    (lambda a: lt.svd_lowrank(a[0], 2), ValueError, "A must have at least 2 dimensions"),
    (lambda a: lt.svd_lowrank(a, 11), ValueError, "q must be between 0 and min"),
    (lambda a: lt.svd_lowrank(a, 2.5), TypeError, "q must be an integer"),
    (lambda a: lt.svd_lowrank(a, 2, niter=-1), ValueError, "niter must be >= 0"),
    (lambda a: lt.svd_lowrank(a, 2, M=torch.zeros(3, 10, dtype=torch.float64)), ValueError, "M of shape"),
    (lambda a: lt.svd_lowrank(a, 2, M=torch.zeros(2, 12, 10, dtype=torch.float64)), ValueError, "M of shape"),
    (lambda a: lt.pca_lowrank(a, 2, center=1), TypeError, "center must be a bool"),
    (lambda a: lt.pca_lowrank(a, 13), ValueError, "q must be between 0 and min"),
    (lambda a: lt.svd_lowrank(a * float("nan"), 2), ValueError, "NaN or Inf"),
])
def test_svd_lowrank_bad_input_names_the_argument(call, error, match):
    a = torch.randn(12, 10, dtype=torch.float64)
    with pytest.raises(error, match=match):
        call(a)


def test_svd_lowrank_q_zero_gives_empty_factors_as_torch():
    u, s, v = lt.svd_lowrank(torch.randn(2, 7, 5, dtype=torch.float64), q=0)
    ref = torch.svd_lowrank(torch.randn(2, 7, 5, dtype=torch.float64), q=0)
    assert (u.shape, s.shape, v.shape) == tuple(t.shape for t in ref) == ((2, 7, 0), (2, 0), (2, 5, 0))


@pytest.mark.gpu
@needs_cuda
def test_cuda_randomized_svd_records_gradients_like_torchs_svd():
    import liam_gpu as lg

    g = torch.Generator(device="cuda").manual_seed(3)
    a = torch.randn(200, 6, device="cuda", dtype=torch.float64, generator=g) @ torch.randn(
        6, 80, device="cuda", dtype=torch.float64, generator=g)
    ours = a.clone().requires_grad_()
    u, s, vt = lg.randomized_svd(ours, 6)
    assert u.is_cuda and u.requires_grad
    (s.sum() + vt.abs().sum()).backward()
    ref = a.clone().requires_grad_()
    _, s_ref, vh_ref = torch.linalg.svd(ref, full_matrices=False)
    (s_ref[:6].sum() + vh_ref[:6].abs().sum()).backward()
    # Rounding of an SVD gradient: u sqrt(mn) relative, amplified by (sigma_max / gap)^2 (the
    # rank-6 spectrum's smallest gap, sigma_6 itself against the zeros included).
    sv = torch.cat([s_ref[:6].detach(), s_ref.new_zeros(1)])
    gap = float((sv[:-1] - sv[1:]).min())
    tol = 64 * torch.finfo(torch.float64).eps * math.sqrt(200 * 80) * (float(sv[0]) / gap) ** 2
    torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=tol * float(ref.grad.abs().max()))
