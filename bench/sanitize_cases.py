"""Run every kernel family once on small inputs, for ``compute-sanitizer``.

``bench/device_check.sh`` runs this under ``compute-sanitizer --tool memcheck``
(and racecheck/synccheck): each case calls the public API on ``device="cuda"``
with small, ragged and aligned shapes, every dtype and every activation, so that
the launch layer drives each family's entry points the way users do.

Correctness is the GPU tests' job (``pytest -m gpu``); here a case only has to
run, return finite values of the right shape, and launch kernels.  To make the
memory checker see an out-of-bounds access by even one element, CuPy's memory
pool is switched off: every array is then its own ``cudaMalloc`` instead of a
slice of a larger pooled block.

Every launch is recorded (by wrapping ``Runtime.function``), and the run fails
when a registered kernel family was never launched: a new family without a
case here is noticed, not silently unchecked.

Usage::

    PYTHONPATH=. python3 bench/sanitize_cases.py                 # device "cuda"
    PYTHONPATH=. python3 bench/sanitize_cases.py --device emulator   # a dry run on the CPU
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import defaultdict
from typing import Any, Callable

import numpy as np

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")
#: bfloat16 runs as torch tensors (numpy has no such dtype), when torch is importable.
TRANSFORM_DTYPES = ("float32", "float64", "float16", "bfloat16")

#: (family, entry point) -> launches, filled by the wrapper around Runtime.function.
LAUNCHES: dict[tuple[str, str], int] = defaultdict(int)


def record_launches() -> None:
    """Count every kernel launch by family and entry point.

    Wraps ``function`` of each concrete runtime class (its own or the inherited
    one); ``CudaRuntime.function`` reaches the base through ``super()``, which
    stays unwrapped, so no launch is counted twice.
    """
    from liam_gpu.launch import runtime

    for cls in (runtime.CudaRuntime, runtime.EmulatorRuntime):
        original = cls.function
        if getattr(original, "_records_launches", False):
            continue

        def function(self: Any, family: Any, name_expression: str, _original=original) -> Callable[..., None]:
            launch = _original(self, family, name_expression)

            def counted(*args: Any, **kwargs: Any) -> None:
                LAUNCHES[(family.name, name_expression)] += 1
                return launch(*args, **kwargs)

            return counted

        function._records_launches = True  # type: ignore[attr-defined]
        cls.function = function


def random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Any:
    """Random data, never zeros (zeros hide unwritten outputs); bfloat16 as a torch tensor."""
    values = rng.standard_normal(shape)
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(values).to(torch.bfloat16)
    return values.astype(dtype)


def check_output(name: str, value: Any, shape: tuple[int, ...] | None = None) -> None:
    """A case's result must be finite and of the expected shape."""
    if hasattr(value, "float") and hasattr(value, "numpy"):  # a torch tensor (bfloat16 has no numpy dtype)
        value = value.float().cpu().numpy()
    host = np.asarray(value.get() if hasattr(value, "get") else value, dtype=np.float64)
    if shape is not None and host.shape != shape:
        raise AssertionError(f"{name}: shape {host.shape}, expected {shape}")
    if not np.isfinite(host).all():
        raise AssertionError(f"{name}: {int((~np.isfinite(host)).sum())} non-finite values")


def _present(dtypes: Any) -> list[str]:
    """The dtypes this machine can make inputs of: bfloat16 needs torch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return [d for d in dtypes if d != "bfloat16"]
    return list(dtypes)


def transform_cases(device: str, heavy: bool) -> list[tuple[str, Callable[[], None]]]:
    """transform_matrix: ragged and aligned shapes, bias or not, batched, every dtype and activation."""
    import liam_gpu as lg

    rng = np.random.default_rng(3)
    cases = []
    shapes = [
        ((37, 29), (19, 29), True),        # ragged everywhere: edge tiles, scalar loads
        ((64, 32), (48, 32), False),       # multiples of 8: 16-byte vector loads
        ((2, 5, 24), (16, 24), True),      # leading batch dimensions, shared weights
        ((3, 17, 24), (3, 16, 24), True),  # each batch item with its own weights
        ((1, 1), (1, 1), True),            # the smallest problem
    ]
    for dtype in _present(TRANSFORM_DTYPES):
        for activation in ACTIVATIONS:
            for x_shape, w_shape, with_bias in shapes:
                def run(x_shape=x_shape, w_shape=w_shape, with_bias=with_bias, dtype=dtype, act=activation):
                    x = random(rng, x_shape, dtype)
                    w = random(rng, w_shape, dtype)
                    b = random(rng, (w_shape[-2],), dtype) if with_bias else None
                    if len(w_shape) == 3:  # batched weights carry one bias row per item
                        b = random(rng, (w_shape[0], w_shape[1]), dtype) if with_bias else None
                    y = lg.transform_matrix(x, w, b, act, device=device)
                    check_output("transform_matrix", y, x_shape[:-1] + (w_shape[-2],))

                cases.append((f"transform {dtype} {activation} x{x_shape} w{w_shape} bias={with_bias}", run))
    if heavy:
        cases += _transform_path_cases(device, rng)
    return cases


def _transform_path_cases(device: str, rng: np.random.Generator) -> list[tuple[str, Callable[[], None]]]:
    """Shapes that make the launch layer pick each tile configuration and the cuBLAS + epilogue path.

    Sized from the launch layer's own tables, so they follow its rules: a
    batch of one block per SM for the "large" and "medium" tiles, and each
    dtype's smallest cuBLAS shape (a GPU only; the emulator always fuses).
    """
    import liam_gpu as lg
    from liam_gpu.backends import get_backend
    from liam_gpu.launch import transform as launch

    backend = get_backend("cuda:0" if device == "cuda" else device)
    sm_count = backend.runtime.sm_count
    cases = []
    for dtype in _present(launch.TILE_CONFIGS):
        configs = launch.TILE_CONFIGS[dtype]
        for name in ("large", "medium"):
            c = configs[name]
            for d_in in (16, 13):  # 16: vector loads; 13: the scalar path
                def run(c=c, d_in=d_in, dtype=dtype):
                    x = random(rng, (sm_count, c.bm, d_in), dtype)
                    w = random(rng, (sm_count, c.bn, d_in), dtype)
                    b = random(rng, (sm_count, c.bn), dtype)
                    check_output("transform_matrix", lg.transform_matrix(x, w, b, "gelu", device=device),
                                 (sm_count, c.bm, c.bn))

                cases.append((f"transform {dtype} tile {name} batch {sm_count} d_in {d_in}", run))
        rule = launch.BLAS_RULES.get(dtype)
        if backend.runtime.kind == "cuda" and rule is not None:
            def run_blas(rule=rule, dtype=dtype):
                x = random(rng, (rule.min_rows, rule.min_d_in + 1), dtype)
                w = random(rng, (rule.min_d_out + 3, rule.min_d_in + 1), dtype)
                b = random(rng, (rule.min_d_out + 3,), dtype)
                check_output("transform_matrix", lg.transform_matrix(x, w, b, "silu", device=device),
                             (rule.min_rows, rule.min_d_out + 3))

            cases.append((f"transform {dtype} cuBLAS + epilogue {rule}", run_blas))
    return cases


def svd_cases(device: str, heavy: bool) -> list[tuple[str, Callable[[], None]]]:
    """randomized_svd and svd_compress: tall, wide, batched (every batched-kernel size class), both dtypes."""
    import liam_gpu as lg

    rng = np.random.default_rng(5)
    cases = []
    for dtype in ("float32", "float64"):
        for shape, k in (((60, 40), 5), ((30, 50), 4), ((2, 30, 8), 3), ((2, 60, 16), 4),
                         ((2, 120, 32), 4), ((2, 250, 64), 8), ((3, 20, 20), 20)):
            def run(shape=shape, k=k, dtype=dtype):
                a = random(rng, shape, dtype)
                u, s, vt = lg.randomized_svd(a, k, random_state=0, device=device)
                batch = shape[:-2]
                check_output("U", u, batch + (shape[-2], k))
                check_output("S", s, batch + (k,))
                check_output("Vt", vt, batch + (k, shape[-1]))

            cases.append((f"randomized_svd {dtype} {shape} k={k}", run))

        def compress(dtype=dtype):
            a = random(rng, (80, 50), dtype)
            check_output("svd_compress k", np.asarray(lg.svd_compress(a, k=6, device=device)), (80, 50))
            check_output("svd_compress tol", np.asarray(lg.svd_compress(a, tol=0.5, device=device)), (80, 50))

        cases.append((f"svd_compress {dtype} (80, 50) k=6 and tol=0.5", compress))
    return cases


def run_cases(device: str, heavy: bool) -> int:
    """Run every case; print a table; return the process exit status."""
    import liam_gpu as lg  # noqa: F401  (imported first so failures name the package)
    from liam_gpu.launch import families

    if device.startswith("cuda"):
        import cupy

        cupy.cuda.set_allocator(None)  # one cudaMalloc per array: memcheck sees every overrun
        cupy.cuda.set_pinned_memory_allocator(None)
    record_launches()

    failed = 0
    cases = []
    for builder in (transform_cases, svd_cases):
        try:
            cases += builder(device, heavy)
        except (ImportError, AttributeError) as err:
            print(f"SKIP  {builder.__name__}: the API is not there ({err})")
    for name, run in cases:
        start = time.perf_counter()
        try:
            run()
            if device.startswith("cuda"):
                import cupy

                cupy.cuda.Device().synchronize()  # a launch error surfaces here, inside this case
            print(f"ok    {name} ({time.perf_counter() - start:.2f} s)")
        except (ImportError, AttributeError, NotImplementedError) as err:
            print(f"SKIP  {name}: {err}")
        except Exception:  # every failure is reported; the other cases still run
            failed += 1
            print(f"FAIL  {name}\n{traceback.format_exc()}")

    print("\nkernel launches per family:")
    missing = []
    for family_name, family in sorted(families().items()):
        used = {entry: n for (fam, entry), n in LAUNCHES.items() if fam == family_name}
        print(f"  {family_name}: {len(used)} of {len(family.name_expressions)} entry points launched, "
              f"{sum(used.values())} launches")
        for entry in sorted(used):
            print(f"    {used[entry]:5d}  {entry}")
        if not used:
            missing.append(family_name)
    if missing:
        print(f"FAIL  kernel families never launched by any case: {', '.join(missing)} "
              "(add a case to bench/sanitize_cases.py)")
    print(f"\n{len(cases)} cases, {failed} failed, {len(missing)} families not launched")
    return 1 if failed or missing else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--device`` (default ``cuda``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or emulator (a CPU dry run)")
    parser.add_argument("--heavy", action=argparse.BooleanOptionalAction, default=None,
                        help="also the larger shapes that pick every tile configuration and the cuBLAS "
                             "path (default: on a GPU only; slow on the emulator)")
    args = parser.parse_args(argv)
    heavy = args.device.startswith("cuda") if args.heavy is None else args.heavy
    return run_cases(args.device, heavy)


if __name__ == "__main__":
    sys.exit(main())
