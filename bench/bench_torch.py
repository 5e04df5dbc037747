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

``test_cpu_layers_against_nn`` puts each layer beside the ``nn`` layers it
replaces on CPU tensors, at one torch thread and at torch's default, on the
shapes where numpy's BLAS pool used to fight torch's (issue 15: ``lt.Linear``
512 x 512 -> 1024 took 24 ms against ``nn.Linear``'s 0.29 ms): on the CPU the
layers compute with torch's own ops, so the two of a pair should take the same
time::

    python -m pytest bench/bench_torch.py -k cpu_layers_against_nn \
        --benchmark-columns=median,min,rounds --benchmark-group-by=param:case,param:threads
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


#: (batch, d_in, d_out, rank) of the side-by-side CPU comparison: issue 15's layer, and a square one.
NN_CASES = [(64, 512, 1024, 64)] if QUICK else [(512, 512, 1024, 64), (512, 1024, 1024, 128)]


def _nn_pair(kind: str, d_in: int, d_out: int, rank: int):
    """``(ours, theirs)``: a liam-gpu layer and the ``nn`` layers with the same weights, both with GELU."""
    torch.manual_seed(0)
    dense = nn.Linear(d_in, d_out).eval()
    if kind == "dense":
        return lt.Linear.from_linear(dense, activation="gelu").eval(), nn.Sequential(dense, nn.GELU()).eval()
    ours = lt.LowRankLinear.from_linear(dense, rank=rank, activation="gelu").eval()
    first, second = nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out)
    with torch.no_grad():
        first.weight.copy_(ours.weight_in)
        second.weight.copy_(ours.weight_out)
        second.bias.copy_(ours.bias)
    return ours, nn.Sequential(first, second, nn.GELU()).eval()


@pytest.mark.parametrize("threads", ["default"] if QUICK else ["1", "default"])
@pytest.mark.parametrize("case", [f"{b}x{i}->{o} r={r}" for b, i, o, r in NN_CASES])
@pytest.mark.parametrize("kind", ["dense", "lowrank"])
@pytest.mark.parametrize("impl", ["nn", "liam_gpu"])
def test_cpu_layers_against_nn(benchmark, describe, measure, rotation, impl, kind, case, threads):
    """A liam-gpu layer and the ``nn`` layers it replaces, on the same CPU tensors and threads."""
    batch, d_in, d_out, rank = next(c for c in NN_CASES if f"{c[0]}x{c[1]}->{c[2]} r={c[3]}" == case)
    ours, theirs = _nn_pair(kind, d_in, d_out, rank)
    module = ours if impl == "liam_gpu" else theirs
    before = torch.get_num_threads()
    if threads == "1":
        torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        copies = rotation(lambda: rng.standard_normal((batch, d_in), dtype=DTYPE), nbytes=batch * d_in * 4,
                          backend="cpu")
        tensors = itertools.cycle([(torch.from_numpy(a),) for (a,) in copies.copies])
        weights = d_in * d_out if kind == "dense" else rank * (d_in + d_out)
        flops = 2 * batch * weights
        name = "Linear" if kind == "dense" else f"LowRankLinear r={rank}"
        describe(
            benchmark, op=f"{name} {d_in}->{d_out} gelu, torch threads={torch.get_num_threads()}",
            impl=f"{impl} {kind}", backend="cpu", shape=(batch, d_in, d_out), dtype=DTYPE,
            flops=flops, bytes=4 * (batch * (d_in + d_out) + weights), threads=torch.get_num_threads(),
        )
        _timed(benchmark, measure, module, lambda: next(tensors), "cpu")
    finally:
        torch.set_num_threads(before)
