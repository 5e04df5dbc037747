"""``transform_matrix``: the fused ``relu(x @ W.T + b)`` against the unfused pipelines.

One group per shape (``--benchmark-group-by=group`` is the default grouping of
``describe``), float32:

* CPU, for no activation, relu and gelu (relu alone with ``LIAM_BENCH_QUICK=1``):
  ``liam_gpu`` (``device="cpu"``: the GEMM by row or column blocks, bias and
  activation applied to each block while it is in cache) against hand-written
  numpy (``np.matmul``, ``+ b``, the activation: full passes over the output)
  and torch's ``F.linear`` + ``relu``/``F.gelu`` on the same memory;
* GPU (skipped without one): ``liam_gpu`` (``device="cuda"``, whichever path
  :func:`liam_gpu.launch.transform.plan` picks), ``liam_gpu fused-kernel``
  (our kernel forced, where the plan picked cuBLAS, so the table in
  ``liam_gpu/launch/transform_plan.py`` can be re-derived), the unfused CuPy
  pipeline, ``torch.nn.functional.linear`` + ``relu``, and cuBLAS alone
  (``x @ W.T``) on the square shape; and on bfloat16 tensors, ours against
  ``torch.nn.functional.linear`` + ``relu``;
* GPU, 16-bit (issue 17's goals, ``test_cuda_16bit_gelu``): float16 and bfloat16
  torch tensors with bias + GELU on a 4096-cube, 65536×256→256 and a batch of
  1024 64×64 products, ours against ``F.gelu(F.linear(...))``, with the
  fraction of the data-sheet dense 16-bit peak recorded (``fraction_of_peak``);
* GPU, TF32 (``test_cuda_tf32_gelu``): float32 tensors with bias + GELU on a
  4096-cube, ours with ``precision="tf32"`` against ``F.gelu(F.linear(...))``
  with ``torch.backends.cuda.matmul.allow_tf32`` (restored afterwards), with
  the fraction of the dense TF32 peak.

Every GPU call synchronises before the clock stops (the ``measure`` fixture).
``extra_info`` records the path and tile configuration that ran and the GFLOP/s
of the median round.  ``LIAM_BENCH_QUICK=1`` shrinks every shape.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu.activations import ACTIVATIONS
from liam_gpu.launch import transform as transform_launch

QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"

DTYPE = np.float32

#: (batch or None, n, d_in, d_out): the issue's shapes, or small ones with LIAM_BENCH_QUICK=1.
SHAPES = (
    [(None, 512, 256, 256), (None, 4096, 128, 128), (None, 64, 1024, 1024), (128, 64, 64, 64)]
    if QUICK
    else [(None, 4096, 1024, 1024), (None, 65536, 256, 256), (None, 256, 4096, 4096), (1024, 64, 64, 64)]
)


def _id(case) -> str:
    batch, n, d_in, d_out = case
    return (f"b{batch}x" if batch else "") + f"{n}x{d_in}-{d_out}"


def _shape(case) -> tuple[int, ...]:
    batch, n, d_in, d_out = case
    return (batch, n, d_in, d_out) if batch else (n, d_in, d_out)


def _flops(case) -> int:
    batch, n, d_in, d_out = case
    return 2 * (batch or 1) * n * d_in * d_out


def _bytes(case) -> int:
    batch, n, d_in, d_out = case
    b = batch or 1
    return 4 * b * (n * d_in + d_out * d_in + d_out + n * d_out)


def _make(case, seed: int = 0):
    """One input set (x, W, b), never zeros, weights scaled like a trained layer."""
    batch, n, d_in, d_out = case
    rng = np.random.default_rng(seed)
    lead = (batch,) if batch else ()
    x = rng.standard_normal(lead + (n, d_in), dtype=DTYPE)
    w = rng.standard_normal(lead + (d_out, d_in), dtype=DTYPE) * DTYPE(d_in ** -0.5)
    b = rng.standard_normal(lead + (d_out,), dtype=DTYPE)
    return x, w, b


def _label(describe, benchmark, case, impl, backend, **extra):
    describe(benchmark, op="transform relu(x@W.T+b)", impl=impl, backend=backend, shape=_shape(case),
             dtype=DTYPE, flops=_flops(case), bytes=_bytes(case), **extra)


def _record_rate(benchmark, case) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info["gflops"] = _flops(case) / stats.stats.median / 1e9


# --------------------------------------------------------------------------- CPU

#: Activations of the CPU group: the issue-18 table's (relu alone with LIAM_BENCH_QUICK=1).
CPU_ACTIVATIONS = ["relu"] if QUICK else [None, "relu", "gelu"]


def _op(activation) -> str:
    return {None: "transform x@W.T+b", "relu": "transform relu(x@W.T+b)",
            "gelu": "transform gelu(x@W.T+b)"}[activation]


def _cpu_label(describe, benchmark, case, impl, activation, **extra):
    describe(benchmark, op=_op(activation), impl=impl, backend="cpu", shape=_shape(case),
             dtype=DTYPE, flops=_flops(case), bytes=_bytes(case), **extra)


@pytest.mark.parametrize("activation", CPU_ACTIVATIONS, ids=lambda a: a or "none")
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_cpu_liam_gpu(benchmark, describe, measure, rotation, case, activation):
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cpu")
    _cpu_label(describe, benchmark, case, "liam_gpu", activation,
               path="GEMM by row/column blocks, bias + activation while in cache")
    measure(benchmark, lambda x, w, b: lg.transform_matrix(x, w, b, activation, device="cpu", check_finite=False),
            inputs, backend="cpu")
    _record_rate(benchmark, case)


def _numpy_unfused(x, w, b, activation="relu"):
    """``np.matmul``, then bias, then the activation: separate passes over the output."""
    y = np.matmul(x, w.transpose(0, 2, 1)) + b[:, None, :] if w.ndim == 3 else x @ w.T + b
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "gelu":
        from scipy import special

        return 0.5 * y * special.erfc(y * DTYPE(-np.sqrt(0.5)))
    return y


@pytest.mark.parametrize("activation", CPU_ACTIVATIONS, ids=lambda a: a or "none")
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_cpu_numpy_unfused(benchmark, describe, measure, rotation, case, activation):
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cpu")
    _cpu_label(describe, benchmark, case, "numpy", activation, path="unfused: matmul, +b, activation")
    measure(benchmark, lambda x, w, b: _numpy_unfused(x, w, b, activation), inputs, backend="cpu")
    _record_rate(benchmark, case)


def _torch_linear(torch, activation):
    F = torch.nn.functional

    def run(x, w, b):
        with torch.no_grad():
            y = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)) if w.dim() == 3 else F.linear(x, w, b)
            return y if activation is None else torch.relu(y) if activation == "relu" else F.gelu(y)

    return run


def _cpu_torch(benchmark, describe, measure, rotation, peer, case, activation):
    torch = peer("torch")
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cpu")
    tensors = itertools.cycle([tuple(torch.from_numpy(a) for a in copy) for copy in inputs.copies])
    _cpu_label(describe, benchmark, case, "torch", activation, path="F.linear + activation (exact gelu)")
    measure(benchmark, _torch_linear(torch, activation), lambda: next(tensors), backend="cpu")
    _record_rate(benchmark, case)


if not QUICK:  # torch's CPU peer at full sizes only: ``--quick`` keeps its time budget for the machinery
    test_cpu_torch = pytest.mark.parametrize("activation", CPU_ACTIVATIONS, ids=lambda a: a or "none")(
        pytest.mark.parametrize("case", SHAPES, ids=_id)(_cpu_torch))


# --------------------------------------------------------------------------- GPU


def _plan_info(case) -> dict:
    batch, n, d_in, d_out = case
    from liam_gpu.launch.runtime import cuda_runtime

    p = transform_launch.plan(cuda_runtime(0), n, d_in, d_out, DTYPE, batch or 1)
    return {"path": p.path, "config": p.config}


def _cuda_torch(peer):
    """The peer torch, or a skip when it has no CUDA device."""
    torch = peer("torch")
    if not torch.cuda.is_available():
        pytest.skip("peer torch has no CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_cuda_liam_gpu(benchmark, describe, measure, rotation, case):
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cuda")
    _label(describe, benchmark, case, "liam_gpu", "cuda", **_plan_info(case))
    measure(benchmark, lambda x, w, b: lg.transform_matrix(x, w, b, "relu", device="cuda", check_finite=False),
            inputs, backend="cuda")
    _record_rate(benchmark, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_cuda_liam_gpu_fused_kernel(benchmark, describe, measure, rotation, case):
    if _plan_info(case)["path"] == transform_launch.PATH_KERNEL:
        pytest.skip("the plan already runs the fused kernel for this shape (see test_cuda_liam_gpu)")
    import cupy

    from liam_gpu.launch.runtime import cuda_runtime

    runtime = cuda_runtime(0)
    batch, n, d_in, d_out = case
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cuda")
    out = cupy.empty(((batch,) if batch else ()) + (n, d_out), DTYPE)
    run = transform_launch.batched_linear if batch else transform_launch.linear
    code = ACTIVATIONS["relu"]
    run(runtime, *inputs(), code, out, path=transform_launch.PATH_KERNEL)
    launch = transform_launch.last_launch()
    _label(describe, benchmark, case, "liam_gpu fused-kernel", "cuda", path=launch.path, config=launch.config)
    measure(benchmark, lambda x, w, b: run(runtime, x, w, b, code, out, path=transform_launch.PATH_KERNEL),
            inputs, backend="cuda")
    _record_rate(benchmark, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_cuda_cupy_unfused(benchmark, describe, measure, rotation, peer, case):
    cupy = peer("cupy")
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cuda")
    _label(describe, benchmark, case, "cupy", "cuda", path="unfused: matmul, +b, maximum")

    def unfused(x, w, b):
        if w.ndim == 3:
            return cupy.maximum(cupy.matmul(x, w.transpose(0, 2, 1)) + b[:, None, :], 0)
        return cupy.maximum(x @ w.T + b, 0)

    measure(benchmark, unfused, inputs, backend="cuda")
    _record_rate(benchmark, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", SHAPES, ids=_id)
def test_cuda_torch(benchmark, describe, measure, rotation, peer, case):
    torch = _cuda_torch(peer)
    F = torch.nn.functional
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cuda")
    tensors = itertools.cycle([tuple(torch.from_dlpack(a) for a in copy) for copy in inputs.copies])
    _label(describe, benchmark, case, "torch", "cuda", path="F.linear + F.relu")

    def run(x, w, b):
        with torch.no_grad():
            if w.ndim == 3:
                return F.relu(torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)))
            return F.relu(F.linear(x, w, b))

    measure(benchmark, run, lambda: next(tensors), backend="cuda")
    _record_rate(benchmark, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in SHAPES if c[0] is None][:1], ids=_id)
def test_cuda_cublas_alone(benchmark, describe, measure, rotation, peer, case):
    # The ceiling for the square shape: the GEMM with no bias and no activation.
    peer("cupy")
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cuda")
    _label(describe, benchmark, case, "cublas (GEMM only)", "cuda", path="cupy x @ W.T")
    measure(benchmark, lambda x, w, b: x @ w.T, inputs, backend="cuda")
    _record_rate(benchmark, case)


# --------------------------------------------------------------------------- GPU, bfloat16 tensors


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["liam_gpu", "torch"])
@pytest.mark.parametrize("case", [c for c in SHAPES if c[0] is None], ids=_id)
def test_cuda_bfloat16_tensors(benchmark, describe, measure, rotation, peer, case, impl):
    # bfloat16 storage, float32 accumulation: our fused kernel (bfloat16 has no
    # cuBLAS path here) against torch's F.linear + relu, which uses tensor cores.
    torch = _cuda_torch(peer)
    F = torch.nn.functional
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case) // 2, backend="cuda")
    tensors = itertools.cycle([tuple(torch.from_dlpack(a).to(torch.bfloat16) for a in copy)
                               for copy in inputs.copies])
    batch, n, d_in, d_out = case
    describe(benchmark, op="transform relu(x@W.T+b)", impl=impl, backend="cuda", shape=_shape(case),
             dtype="bfloat16", flops=_flops(case), bytes=_bytes(case) // 2,
             path="fused kernel, lg_bf16" if impl == "liam_gpu" else "F.linear + F.relu")

    def ours(x, w, b):
        return lg.transform_matrix(x, w, b, "relu", check_finite=False)

    def theirs(x, w, b):
        with torch.no_grad():
            return F.relu(F.linear(x, w, b))

    measure(benchmark, ours if impl == "liam_gpu" else theirs, lambda: next(tensors), backend="cuda")
    _record_rate(benchmark, case)


# --------------------------------------------------------------------------- GPU, 16-bit with bias + GELU (issue 17)

#: (batch or None, n, d_in, d_out): the tensor-core goals' shapes (a large square GEMM, where the
#: dense rate is the goal, and two skinny ones, where fusing bias and GELU should win).
TENSOR_CORE_SHAPES = (
    [(None, 1024, 1024, 1024), (None, 8192, 256, 256), (128, 64, 64, 64)]
    if QUICK
    else [(None, 4096, 4096, 4096), (None, 65536, 256, 256), (1024, 64, 64, 64)]
)

#: Dense (no sparsity) 16-bit tensor-core peak in TFLOP/s from NVIDIA's data sheets, by a
#: substring of the device name; the goal "60% of the GPU's dense bf16 peak" is read against it.
DENSE_16BIT_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.5, "H100 PCIe": 756.0,
                           "H100": 756.0, "A100": 312.0, "L40S": 362.05, "L4": 121.0}


def dense_16bit_peak(name: str) -> float | None:
    """The data-sheet dense float16/bfloat16 peak (TFLOP/s) of a device name, or None if unknown."""
    for key, tflops in DENSE_16BIT_PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return tflops
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["liam_gpu", "torch"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", TENSOR_CORE_SHAPES, ids=_id)
def test_cuda_16bit_gelu(benchmark, describe, measure, rotation, peer, case, dtype, impl):
    # Goals: ours <= 1.1x torch's gelu(F.linear) on the square shape and <= 0.8x on the
    # skinny ones, and >= 60% of the dense 16-bit peak on the square shape.
    torch = _cuda_torch(peer)
    F = torch.nn.functional
    tdtype = getattr(torch, dtype)
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case) // 2, backend="cuda")
    tensors = itertools.cycle([tuple(torch.from_dlpack(a).to(tdtype) for a in copy) for copy in inputs.copies])
    batch, n, d_in, d_out = case
    x, w, b = next(tensors)
    extra = {}
    if impl == "liam_gpu":
        lg.transform_matrix(x, w, b, "gelu", check_finite=False)
        launch = transform_launch.last_launch()  # which path and tile configuration ran (MMA or SIMT)
        extra = {"path": launch.path, "config": launch.config} if launch is not None else {}
    else:
        extra = {"path": "torch: F.gelu(F.linear) / baddbmm"}
    peak = dense_16bit_peak(torch.cuda.get_device_name())
    describe(benchmark, op="transform gelu(x@W.T+b) 16-bit", impl=impl, backend="cuda", shape=_shape(case),
             dtype=dtype, flops=_flops(case), bytes=_bytes(case) // 2, peak_tflops=peak, **extra)

    def ours(x, w, b):
        return lg.transform_matrix(x, w, b, "gelu", check_finite=False)

    def theirs(x, w, b):
        with torch.no_grad():
            y = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2)) if w.dim() == 3 else F.linear(x, w, b)
            return F.gelu(y)

    measure(benchmark, ours if impl == "liam_gpu" else theirs, lambda: next(tensors), backend="cuda")
    _record_rate(benchmark, case)
    if peak is not None and "gflops" in benchmark.extra_info:
        benchmark.extra_info["fraction_of_peak"] = benchmark.extra_info["gflops"] / (peak * 1e3)


# --------------------------------------------------------------------------- GPU, float32 on TF32 (issue 17)

#: (batch, n, d_in, d_out) of the TF32 comparison: the large square GEMM.
TF32_SHAPES = [(None, 1024, 1024, 1024)] if QUICK else [(None, 4096, 4096, 4096)]

#: Dense (no sparsity) TF32 tensor-core peak in TFLOP/s from NVIDIA's data sheets, by a substring
#: of the device name (most specific first).
DENSE_TF32_PEAK_TFLOPS = {"H200": 494.7, "H100 SXM": 494.7, "H100 NVL": 417.5, "H100 PCIe": 378.0,
                          "H100": 378.0, "A100": 156.0}


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["liam_gpu", "torch"])
@pytest.mark.parametrize("case", TF32_SHAPES, ids=_id)
def test_cuda_tf32_gelu(benchmark, describe, measure, rotation, peer, case, impl):
    # float32 CUDA tensors, bias + GELU, both allowed TF32: ours with precision="tf32" (our
    # TF32 tile at every size) against gelu(F.linear) with torch.backends.cuda.matmul.allow_tf32.
    torch = _cuda_torch(peer)
    F = torch.nn.functional
    inputs = rotation(lambda: _make(case), nbytes=_bytes(case), backend="cuda")
    tensors = itertools.cycle([tuple(torch.from_dlpack(a) for a in copy) for copy in inputs.copies])
    x, w, b = next(tensors)
    if impl == "liam_gpu":
        lg.transform_matrix(x, w, b, "gelu", check_finite=False, precision="tf32")
        launch = transform_launch.last_launch()
        extra = {"path": launch.path, "config": launch.config} if launch is not None else {}
    else:
        extra = {"path": "torch: F.gelu(F.linear), allow_tf32"}
    peak = next((t for k, t in DENSE_TF32_PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    describe(benchmark, op="transform gelu(x@W.T+b) tf32", impl=impl, backend="cuda", shape=_shape(case),
             dtype="float32", flops=_flops(case), bytes=_bytes(case), peak_tflops=peak, **extra)

    def ours(x, w, b):
        return lg.transform_matrix(x, w, b, "gelu", check_finite=False, precision="tf32")

    def theirs(x, w, b):
        with torch.no_grad():
            return F.gelu(F.linear(x, w, b))

    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        measure(benchmark, ours if impl == "liam_gpu" else theirs, lambda: next(tensors), backend="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    _record_rate(benchmark, case)
    if peak is not None and "gflops" in benchmark.extra_info:
        benchmark.extra_info["fraction_of_peak"] = benchmark.extra_info["gflops"] / (peak * 1e3)


# --------------------------------------------------------------------------- the issue-18 table

#: (n, d_in, d_out) of the CPU table in docs/benchmarks.md.
TABLE_SHAPES = [(4096, 1024, 1024), (65536, 256, 256), (256, 4096, 4096)]


def cpu_table(reps: int = 9, threads: tuple[int, ...] = (1, 2), pause: float = 0.15) -> list[dict]:
    """Ours against torch and unfused numpy, side by side, at each thread count; print and return rows.

    Per cell, the implementations alternate ``reps`` times (median kept) on the
    same inputs, float32: ``liam_gpu`` on numpy arrays (checks on, as called by
    default, and off), on torch CPU tensors, torch's ``F.linear`` +
    activation, and the unfused numpy pipeline.  ``threadpoolctl`` limits
    numpy's BLAS and ``torch.set_num_threads`` torch's pool.  Each timed call
    starts after ``pause`` seconds, so that no pool's spinning threads from the
    previous call (OpenBLAS spins about 0.1 s) slow the next one.
    """
    import statistics
    import time

    import torch
    from threadpoolctl import threadpool_limits

    rows = []
    for n, d_in, d_out in TABLE_SHAPES:
        x, w, b = _make((None, n, d_in, d_out))
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        for activation in (None, "relu", "gelu"):
            impls = {
                "ours": lambda: lg.transform_matrix(x, w, b, activation, device="cpu"),
                "ours_nocheck": lambda: lg.transform_matrix(x, w, b, activation, device="cpu", check_finite=False),
                "ours_torch": lambda: lg.transform_matrix(tx, tw, tb, activation, device="cpu"),
                "torch": lambda: _torch_linear(torch, activation)(tx, tw, tb),
                "numpy": lambda: _numpy_unfused(x, w, b, activation),
            }
            for t in threads:
                torch.set_num_threads(t)
                times: dict[str, list[float]] = {k: [] for k in impls}
                with threadpool_limits(t):
                    for f in impls.values():
                        f()
                    for _ in range(reps):
                        for k, f in impls.items():
                            time.sleep(pause)
                            start = time.perf_counter()
                            f()
                            times[k].append(time.perf_counter() - start)
                med = {k: statistics.median(v) for k, v in times.items()}
                row = {"shape": f"{n}, {d_in} -> {d_out}", "activation": activation or "none", "threads": t,
                       **{f"{k}_ms": v * 1e3 for k, v in med.items()}}
                rows.append(row)
                print(f"{row['shape']:>20} {row['activation']:>5} t={t}  "
                      + "  ".join(f"{k} {v * 1e3:7.1f}" for k, v in med.items())
                      + f"  | ours/torch {med['ours'] / med['torch']:.2f}  ours/numpy {med['ours'] / med['numpy']:.2f}"
                      f"  nocheck/torch {med['ours_nocheck'] / med['torch']:.2f}"
                      f"  nocheck/numpy {med['ours_nocheck'] / med['numpy']:.2f}"
                      f"  tensors/torch {med['ours_torch'] / med['torch']:.2f}", flush=True)
    return rows


if __name__ == "__main__":  # python bench/bench_transform.py [REPS]: the CPU table of docs/benchmarks.md
    import sys

    cpu_table(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
