"""The two torch CPU routes (issue 18): one activation table, one cheap finite check, the core's errors.

``liam_gpu.transform_matrix`` on torch CPU tensors (:mod:`liam_gpu.torch_ops`)
and the torch layers (:func:`liam_gpu.torch.functional.host_linear`) compute
with torch's own ops.  Both take their activations from
``torch_ops.TORCH_ACTIVATIONS`` and clear their inputs from the sum of the
pre-activation output; every bad input must still be refused exactly as the
core (``liam_gpu.transform.transform_matrix``) refuses it, and every input the
core accepts must still be accepted.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import liam_gpu as lg  # noqa: E402  (after the importorskip)
import liam_gpu.dispatch  # noqa: E402
import liam_gpu.torch as lt  # noqa: E402
from liam_gpu import activations, torch_ops, transform  # noqa: E402
from liam_gpu.torch.functional import host_linear  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in matmul:RuntimeWarning")  # the core on bad input

NAMES = [a.name for a in activations.TABLE]
INF, NAN = math.inf, math.nan


# --- one activation table ----------------------------------------------------------------

def test_the_torch_table_has_every_activation_of_the_core_and_no_other():
    assert list(torch_ops.TORCH_ACTIVATIONS) == NAMES
    for name, entry in torch_ops.TORCH_ACTIVATIONS.items():
        assert entry.name == name
        assert (entry.inplace is None) == (entry.function is None) == (name is None)


def _values(dtype: torch.dtype) -> torch.Tensor:
    """37 x 29 values over every regime: gelu's tail, zeros of both signs, saturation, and +-inf, NaN."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(37, 29, generator=g, dtype=torch.float64) * 6
    y.view(-1)[:40] = torch.linspace(-14, 14, 40, dtype=torch.float64)
    y.view(-1)[40:46] = torch.tensor([0.0, -0.0, INF, -INF, NAN, 1e30], dtype=torch.float64)
    return y.to(dtype)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_in_place_and_autograd_forms_give_the_same_bits_at_every_block_size(monkeypatch, name, dtype, block):
    # One concept, two forms: what the layers record under autograd is what the in-place
    # epilogue writes, whatever the block (ragged last blocks included).
    monkeypatch.setattr(torch_ops, "_BLOCK_ELEMENTS", block)
    z = _values(dtype)
    before = z.clone()
    functional = torch_ops.activate(z, name)
    np.testing.assert_array_equal(z.numpy(), before.numpy())  # the input is not modified
    inplace = z.clone()
    assert torch_ops.activate_(inplace, name) is inplace
    np.testing.assert_array_equal(inplace.numpy(), functional.numpy())  # NaN where NaN, bit for bit elsewhere


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_the_torch_table_computes_each_activation_within_its_bound(name, dtype):
    # Against the float64 reference of liam_gpu.activations (the core's meaning): gelu within
    # its 4 + 3 z^2 ulps (tests/test_activations.py) in the tail, where F.gelu's 1 + erf is lost;
    # the others within 4 ulps of the result plus 4 ulps of the argument times the slope (<= 1.13).
    z = _values(dtype)
    finite = torch.isfinite(z) & (z.abs() < 100)
    z = torch.where(finite, z, torch.zeros((), dtype=dtype))
    got = torch_ops.activate(z, name).double().numpy()
    pre = z.double().numpy()
    ref = activations.reference(pre, name)
    u = torch.finfo(dtype).eps / 2  # the unit roundoff; one ulp is at most 2u relative
    if name == "gelu":
        allowed = (4 + 3 * pre ** 2) * 2 * u * np.abs(ref)
    else:
        allowed = 4 * 2 * u * (np.abs(ref) + 1.13 * np.abs(pre))
    allowed += torch.finfo(dtype).tiny  # subnormal results (gelu far in its tail)
    assert np.all(np.abs(got - ref) <= allowed), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_16_bit_tensors_are_activated_in_float32_and_rounded_once(monkeypatch, name, dtype):
    monkeypatch.setattr(torch_ops, "_BLOCK_ELEMENTS", 64)  # several float32 blocks, a ragged last one
    z = _values(dtype)
    want = torch_ops.activate(z.float(), name).to(dtype)  # one rounding of the float32 value
    got = torch_ops.activate(z, name)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.float().numpy(), want.float().numpy())
    inplace = z.clone()
    torch_ops.activate_(inplace, name)
    np.testing.assert_array_equal(inplace.float().numpy(), want.float().numpy())


def test_layers_activate_in_place_without_autograd_and_out_of_place_with_it(monkeypatch):
    # The same bits both ways; the in-place form is used only on the layer's own fresh output.
    calls = []
    real_inplace, real_function = torch_ops.activate_, torch_ops.activate
    monkeypatch.setattr(torch_ops, "activate_", lambda z, a: calls.append("inplace") or real_inplace(z, a))
    monkeypatch.setattr(torch_ops, "activate", lambda z, a: calls.append("function") or real_function(z, a))
    torch.manual_seed(1)
    layer = lt.Linear(6, 5, activation="gelu")
    x = torch.randn(4, 6) * 4
    x_before = x.clone()
    with torch.no_grad():
        y0 = layer(x)
    y1 = layer(x)
    assert calls == ["inplace", "function"] and y1.requires_grad
    assert torch.equal(y0, y1.detach()) and torch.equal(x, x_before)
    y1.sum().backward()
    assert layer.weight.grad is not None


# --- the finite check ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [5, torch_ops._TORCH_SUM_MIN + 3])  # numpy's sum and torch's
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_sum_is_finite_is_false_for_any_nan_or_inf_and_for_an_overflowing_sum(size, dtype):
    y = torch.ones(size, 3, dtype=dtype)
    assert torch_ops.sum_is_finite(y) and torch_ops.sum_is_finite(y.t())  # strided view too
    for where in (0, size // 2, size - 1):
        for bad in (NAN, INF, -INF):
            z = y.clone()
            z[where, 2] = bad
            assert not torch_ops.sum_is_finite(z) and not torch_ops.sum_is_finite(z.t())
    big = torch.full((size, 3), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not torch_ops.sum_is_finite(big)  # finite terms: the caller's exact checks decide
    assert torch_ops.sum_is_finite(torch.zeros(size, 3, dtype=dtype, requires_grad=True))


def _outcome(call):
    """(exception type, message) of a call, or ("ok", where the result is finite)."""
    try:
        y = call()
    except (ValueError, TypeError, RuntimeError) as exc:
        return type(exc), str(exc)
    return "ok", torch.isfinite(y.detach()).numpy().tolist()


def _base(n=6, d_in=5, d_out=4):
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, d_in, generator=g), torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)


def _put(t, index, value):
    t = t.clone()
    t[index] = value
    return t


#: (n, d_in, d_out): a narrowing product, checked from its output's sum, and a widening one
#: (more outputs than inputs), checked from its inputs' sums.
SHAPES = {"narrowing": (6, 5, 4), "widening": (64, 2, 40)}


def _single_cases(n, d_in, d_out):
    x, w, b = _base(n, d_in, d_out)
    k = d_in - 1
    every = slice(None)
    return {
        "nan in data": (_put(x, (n // 2, k), NAN), w, b),
        "inf in data": (_put(x, (n - 1, 0), INF), w, b),
        "-inf in data (relu would clear it)": (_put(x, (0, 0), -INF), w.abs(), b),
        "inf in data, zero weights column": (_put(x, (1, k), INF), _put(w, (every, k), 0.0), b),
        "inf in data, zero weights": (_put(x, (1, k), INF), torch.zeros_like(w), None),
        "+inf and -inf cancel to nan": (_put(_put(x, (1, 0), INF), (1, 1), -INF), torch.ones_like(w), b),
        "nan in weights": (x, _put(w, (d_out - 1, k), NAN), b),
        "inf in weights, zero data column": (_put(x, (every, k), 0.0), _put(w, (0, k), INF), b),
        "-inf in weights": (x, _put(w, (d_out // 2, 0), -INF), None),
        "inf in bias": (x, w, _put(b, d_out - 1, INF)),
        "nan in bias": (x, w, _put(b, 0, NAN)),
        "nan in data and weights: data first": (_put(x, (0, 0), NAN), _put(w, (0, 0), NAN), b),
        "nan in weights and bias: weights first": (x, _put(w, (1, 1), NAN), _put(b, 1, NAN)),
        "huge finite data overflows": (torch.full((n, d_in), 3e38), torch.ones(d_out, d_in), None),
        "only the sums overflow": (torch.full((n, d_in), 3e37), torch.ones(d_out, d_in), None),
        "nan and a shape error: the shape first": (_put(x, (0, 0), NAN), torch.randn(d_out, d_in + 1), b),
        "nan and a bias shape error": (_put(x, (0, 0), NAN), w, torch.randn(d_out + 1)),
        "1-d data with inf": (_put(x[0], k, INF), w, b),
        "3-d data with nan": (_put(x.reshape(2, n // 2, d_in), (1, 2, 0), NAN), w, b),
        "0-d data": (torch.tensor(1.0), w, b),
        "empty data, nan weights": (torch.ones(0, d_in), _put(w, (0, 0), NAN), b),
        "empty weights, nan data": (_put(x, (0, 0), NAN), torch.ones(0, d_in), None),
        "empty weights": (x, torch.ones(0, d_in), None),
        "finite": (x, w, b),
    }


SINGLE = {shape: _single_cases(*dims) for shape, dims in SHAPES.items()}


def test_the_shapes_take_both_sides_of_the_check():
    for shape, (n, d_in, d_out) in SHAPES.items():
        x, w, b = _base(n, d_in, d_out)
        assert torch_ops.inputs_are_smaller(n * d_out, x, w, b) == (shape == "widening")


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("case", list(SINGLE["narrowing"]))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_both_routes_refuse_what_the_core_refuses_with_its_message(shape, case, activation, check_finite):
    x, w, b = SINGLE[shape][case]
    inputs = [t.clone() for t in (x, w, b) if t is not None]
    core = _outcome(lambda: transform.transform_matrix(x, w, b, activation, device="cpu",
                                                       check_finite=check_finite))
    # transform_matrix on tensors: torch_ops whenever takes() accepts the call (non-empty inputs)
    public = _outcome(lambda: lg.transform_matrix(x, w, b, activation, device="cpu", check_finite=check_finite))
    layer = _outcome(lambda: host_linear(x, (w,), b, activation, "cpu", check_finite))
    assert public == core, (case, public, core)
    assert layer == core, (case, layer, core)
    if core[0] is ValueError and "NaN or Inf" in core[1]:
        assert check_finite
    after = [t for t in (x, w, b) if t is not None]
    for before, now in zip(inputs, after):  # never modified
        np.testing.assert_array_equal(before.numpy(), now.numpy())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_check_reads_the_smaller_side_and_the_exact_checks_only_after_a_non_finite_sum(monkeypatch, shape):
    # The saving: a narrowing product sums its output once, a widening one its inputs, and
    # neither runs the exact checks on finite input.  Both routes.
    import liam_gpu.torch.functional as functional
    from liam_gpu import validation

    n, d_in, d_out = SHAPES[shape]
    x, w, b = _base(n, d_in, d_out)
    summed, exact, host_exact = [], [], []
    real_sum, real_exact, real_host = torch_ops.sum_is_finite, validation.check_all_finite, functional._check_host
    monkeypatch.setattr(torch_ops, "sum_is_finite", lambda t: summed.append(tuple(t.shape)) or real_sum(t))
    monkeypatch.setattr(validation, "check_all_finite", lambda **k: exact.append(list(k)) or real_exact(**k))
    monkeypatch.setattr(functional, "_check_host", lambda *a: host_exact.append(a[-1]) or real_host(*a))
    widening = shape == "widening"
    smaller = [(n, d_in), (d_out, d_in), (d_out,)] if widening else [(n, d_out)]

    lg.transform_matrix(x, w, b, "relu")
    assert summed == smaller and exact == []
    summed.clear()
    with pytest.raises(ValueError, match="^bias contains NaN or Inf"):
        lg.transform_matrix(x, w, _put(b, 0, NAN), "relu")
    assert summed == smaller and exact == [["data", "weights", "bias"]]

    summed.clear()
    host_linear(x, (w,), b, "relu", "cpu", True)
    # the widening side runs the layers' checks up front: each input by its sum, nothing more
    assert summed == smaller and host_exact == ([True] if widening else [])
    host_exact.clear()
    with pytest.raises(ValueError, match="^weights contains NaN or Inf"):
        host_linear(x, (_put(w, (0, 0), INF),), b, "relu", "cpu", True)
    assert host_exact == [True]


@pytest.mark.parametrize("case", ["nan in data", "inf in weights, zero data column", "inf in bias",
                                  "huge finite data overflows", "finite"])
def test_out_is_refused_before_it_is_written(case):
    x, w, b = SINGLE["narrowing"][case]
    results = []
    for call in (transform.transform_matrix, lg.transform_matrix):
        out = torch.full((6, 4), 7.0)
        results.append((_outcome(lambda: call(x, w, b, "relu", out=out)), out.clone()))
    (core, core_out), (ours, our_out) = results
    assert ours == core
    if core[0] == "ok":
        torch.testing.assert_close(our_out, core_out)
    else:
        assert bool((our_out == 7.0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["nan in data", "inf in data, zero weights column", "nan in weights",
                                  "inf in bias", "+inf and -inf cancel to nan", "empty weights, nan data",
                                  "nan and a bias shape error", "finite"])
def test_layers_refuse_16_bit_and_float64_input_as_the_core(case, dtype):
    x, w, b = (None if t is None else t.to(dtype) for t in SINGLE["narrowing"][case])
    core = _outcome(lambda: transform.transform_matrix(x, w, b, "relu", device="cpu"))
    assert _outcome(lambda: host_linear(x, (w,), b, "relu", "cpu", True)) == core


# --- chains (LowRankLinear) ----------------------------------------------------------------

def _core_chain(x, w1, w2, b, activation, check_finite):
    """What LowRankLinear's liam-gpu path does: the first product checked, the second not."""
    hidden = transform.transform_matrix(x, w1, None, None, device="cpu", check_finite=check_finite)
    return transform.transform_matrix(hidden, w2, b, activation, device="cpu", check_finite=False)


#: (n, d_in, rank, d_out): the first checked from the output's sum, the second from data's and W1's.
CHAIN_SHAPES = {"narrowing": (6, 5, 3, 4), "widening": (64, 2, 3, 40)}


def _chain_cases(n, d_in, r, d_out):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(n, d_in, generator=g)
    w1 = torch.randn(r, d_in, generator=g)
    w2 = torch.randn(d_out, r, generator=g)
    b = torch.randn(d_out, generator=g)
    k, every = d_in - 1, slice(None)
    return {
        "nan in w1 only": (x, _put(w1, (r - 1, k), NAN), w2, b),
        "inf in w1, zero w2 column": (x, _put(w1, (1, k), INF), _put(w2, (every, 1), 0.0), b),
        "nan in w2 only (not checked, as the core path)": (x, w1, _put(w2, (0, r - 1), NAN), b),
        "nan in the bias of a chain (not checked)": (x, w1, w2, _put(b, d_out - 1, NAN)),
        "inf in data": (_put(x, (n // 2, 1), INF), w1, w2, b),
        "inf in data, zero w1 column": (_put(x, (n // 2, 1), INF), _put(w1, (every, 1), 0.0), w2, b),
        "+inf and -inf in data cancel": (_put(_put(x, (0, 0), INF), (0, 1), -INF), torch.ones(r, d_in), w2, b),
        "huge finite data overflows": (torch.full((n, d_in), 3e38), torch.ones(r, d_in), w2, None),
        "w2 does not fit": (x, w1, torch.randn(d_out, r - 1), b),
        "w2 does not fit, nan in w1: nan first": (x, _put(w1, (0, 0), NAN), torch.randn(d_out, r - 1), b),
        "bias does not fit": (x, w1, w2, torch.randn(d_out - 1)),
        "empty w2": (x, w1, torch.ones(0, r), None),
        "finite": (x, w1, w2, b),
    }


CHAIN = {shape: _chain_cases(*dims) for shape, dims in CHAIN_SHAPES.items()}


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("case", list(CHAIN["narrowing"]))
@pytest.mark.parametrize("shape", list(CHAIN_SHAPES))
def test_chains_refuse_what_the_layers_core_path_refuses(shape, case, activation, check_finite):
    x, w1, w2, b = CHAIN[shape][case]
    n, _, _, d_out = CHAIN_SHAPES[shape]
    assert torch_ops.inputs_are_smaller(n * d_out, x, w1) == (shape == "widening")
    core = _outcome(lambda: _core_chain(x, w1, w2, b, activation, check_finite))
    ours = _outcome(lambda: host_linear(x, (w1, w2), b, activation, "cpu", check_finite))
    assert ours == core, (case, ours, core)


def test_low_rank_layer_checks_through_torchs_ops(monkeypatch):
    monkeypatch.setattr(liam_gpu.dispatch, "transform_matrix",
                        lambda *a, **k: pytest.fail("a CPU layer went through liam-gpu's numpy path"))
    layer = lt.LowRankLinear(5, 4, rank=3, activation="relu", check_finite=True)
    x, w1, w2, _ = CHAIN["narrowing"]["inf in w1, zero w2 column"]
    with torch.no_grad():
        layer.weight_in.copy_(w1)
        layer.weight_out.copy_(w2)
    with pytest.raises(ValueError, match="^weights contains NaN or Inf"):
        layer(x)
    with pytest.raises(ValueError, match="^data contains NaN or Inf"):
        layer(_put(x, (0, 0), -INF))
    layer.check_finite = False
    assert not bool(torch.isfinite(layer(x)).all())


def test_layers_with_autograd_check_the_same_way_and_still_train():
    torch.manual_seed(4)
    layer = lt.Linear(5, 4, activation="relu", check_finite=True).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(layer, (x,))
    with pytest.raises(ValueError, match="^data contains NaN or Inf"):
        layer(_put(x.detach(), (1, 1), -INF).requires_grad_())
    with torch.no_grad():
        layer.bias[2] = NAN
    with pytest.raises(ValueError, match="^bias contains NaN or Inf"):
        layer(x)


def test_under_torch_compile_a_checking_layer_still_leaves_it_to_the_operator(monkeypatch):
    # The sum's answer would break the graph: host_linear declines, as before.
    x, w, b = _base()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert host_linear(x, (w,), b, "relu", "cpu", True) is None
    got = host_linear(x, (w,), b, "gelu", "cpu", False)
    monkeypatch.undo()
    assert torch.equal(got, host_linear(x, (w,), b, "gelu", "cpu", False))
