"""PyTorch layers: ``liam_gpu.torch.Linear`` and ``LowRankLinear`` against ``nn.Linear``.

Inference latency (``torch.no_grad``) of one ``d x d`` layer on a batch, float32:

* ``torch`` -- ``nn.Linear`` followed by ``F.gelu`` (what a model does today);
* ``liam_gpu`` -- :class:`liam_gpu.torch.Linear` with the GELU fused into the transform;
* ``liam_gpu lowrank r=R`` -- :class:`liam_gpu.torch.LowRankLinear` built from the
  same layer by ``from_linear(rank=R)`` (two thin transforms);
* ``torch lowrank r=R`` -- the same two factors as two ``nn.Linear``, so that the
  saving from the factorisation and the speed of our kernels can be told apart.

The dense weight has a power-law spectrum (``s_i ~ 1 / i``, as trained layers
roughly do) rather than a random one, whose flat spectrum no rank could
compress; each low-rank row records its parameter reduction and its relative
output error on the benchmark batch (``extra_info``).  CPU here; CUDA where torch
and CuPy both see a GPU.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import liam_gpu.torch as lt  # noqa: E402  (after the importorskip)

QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"

#: (batch, d): a transformer-MLP-sized layer, smaller with LIAM_BENCH_QUICK=1.
CPU_SHAPES = [(64, 512)] if QUICK else [(256, 1024), (1024, 2048)]
GPU_SHAPES = [(1024, 2048)] if QUICK else [(4096, 4096), (16384, 4096)]
RANK_FRACTIONS = (1 / 16, 1 / 4)
DTYPE = np.float32

#: (backend, batch, d) cases: CPU sizes here, GPU sizes on a device.
CASES = [pytest.param("cpu", b, d, id=f"cpu-{b}x{d}") for b, d in CPU_SHAPES] + [
    pytest.param("cuda", b, d, id=f"cuda-{b}x{d}", marks=pytest.mark.gpu) for b, d in GPU_SHAPES
]


def _device(backend: str) -> str:
    if backend.startswith("cuda"):
        if not torch.cuda.is_available():
            pytest.skip("peer torch has no CUDA device")
        return "cuda:0"
    return "cpu"


def _dense_layer(d: int, device: str) -> nn.Linear:
    """A ``d x d`` layer whose weight has singular values ``1 / i`` (scaled like nn.Linear's)."""
    g = torch.Generator().manual_seed(d)
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = 1.0 / torch.arange(1, d + 1, dtype=torch.float64)
    s *= (d / 3) ** 0.5 / torch.linalg.vector_norm(s) / d**0.5  # Frobenius norm of nn.Linear's init
    layer = nn.Linear(d, d)
    with torch.no_grad():
        layer.weight.copy_((q1 * s) @ q2.T)
    return layer.to(device).eval()


def _inputs(rotation, batch: int, d: int, backend: str, device: str):
    """Rotated input batches as tensors on ``device`` (DLPack views of the rotation's arrays)."""
    rng = np.random.default_rng(0)
    copies = rotation(lambda: rng.standard_normal((batch, d), dtype=DTYPE), nbytes=batch * d * 4, backend=backend)
    tensors = itertools.cycle([(torch.from_dlpack(a).to(device),) for (a,) in copies.copies])
    return lambda: next(tensors)


def _label(describe, benchmark, impl, backend, batch, d, flops, **extra):
    weights = extra.pop("weights", d * d)
    describe(
        benchmark, op=f"linear+gelu {d}->{d}", impl=impl, backend=backend, shape=(batch, d, d), dtype=DTYPE,
        flops=flops, bytes=4 * (2 * batch * d + weights), **extra,
    )


def _timed(benchmark, measure, module, inputs, backend):
    def call(x):
        with torch.no_grad():
            return module(x)

    return measure(benchmark, call, inputs, backend=backend)


@pytest.mark.parametrize("backend, batch, d", CASES)
@pytest.mark.parametrize("impl", ["torch", "liam_gpu"])
def test_dense_layer(benchmark, describe, measure, rotation, backend, batch, d, impl):
    device = _device(backend)
    dense = _dense_layer(d, device)
    if impl == "torch":
        module = nn.Sequential(dense, nn.GELU())
    else:
        module = lt.Linear.from_linear(dense, activation="gelu").eval()
    _label(describe, benchmark, impl, backend, batch, d, flops=2 * batch * d * d)
    _timed(benchmark, measure, module, _inputs(rotation, batch, d, backend, device), backend)


@pytest.mark.parametrize("backend, batch, d", CASES)
@pytest.mark.parametrize("fraction", RANK_FRACTIONS, ids=lambda f: f"d/{round(1 / f)}")
@pytest.mark.parametrize("impl", ["liam_gpu lowrank", "torch lowrank"])
def test_low_rank_layer(benchmark, describe, measure, rotation, backend, batch, d, fraction, impl):
    device = _device(backend)
    rank = max(1, int(d * fraction))
    dense = _dense_layer(d, device)
    compressed = lt.LowRankLinear.from_linear(dense, rank=rank, activation="gelu").eval()
    inputs = _inputs(rotation, batch, d, backend, device)
    sample = inputs()[0]
    with torch.no_grad():
        report = compressed.report(sample, nn.Sequential(dense, nn.GELU()))
    if impl == "torch lowrank":
        first = nn.Linear(d, rank, bias=False).to(device)
        second = nn.Linear(rank, d).to(device)
        with torch.no_grad():
            first.weight.copy_(compressed.weight_in)
            second.weight.copy_(compressed.weight_out)
            second.bias.copy_(compressed.bias)
        module = nn.Sequential(first, second, nn.GELU()).eval()
    else:
        module = compressed
    _label(
        describe, benchmark, f"{impl} r={rank}", backend, batch, d, flops=2 * batch * rank * 2 * d,
        weights=2 * d * rank, rank=rank, parameter_reduction=report.parameter_reduction,
        output_error=report.output_error,
    )
    _timed(benchmark, measure, module, inputs, backend)
