"""``liam-gpu bench``: run the benchmark suite, measure the machine's ceilings, write the report.

The suite itself lives in a source checkout's ``bench/`` folder (pytest-benchmark
files, see ``bench/conftest.py``), which the wheel also carries as
``liam_gpu/bench`` so that ``pip install 'liam-gpu[bench]'`` then ``liam-gpu
bench`` works from any folder.  This module runs it in a child pytest,
measures in the same run what the machine can do at best (a large memory copy
for bandwidth, a large matrix product for the arithmetic rate), and writes into
the output folder:

``results.json``
    Every benchmark with every timed round (pytest-benchmark's own JSON under
    ``"pytest_benchmark"``), the table rows, the ceilings, skips and failures,
    and the header (date, machine, versions, command).
``results.md``
    The same as a Markdown table (:mod:`liam_gpu.bench_report`).
``*.png``
    Time against size per operation, and the speed-up of the GPU path over the
    CPU path (needs matplotlib: ``pip install 'liam-gpu[bench]'``).
``pytest.log``, ``junit.xml``
    The child run's output, for when something failed.

Also runnable as ``python -m liam_gpu.benchmarks [--quick] [--backend ...] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import bench_report

#: Environment variable naming the bench folder explicitly (overrides the search).
BENCH_DIR_ENV = "LIAM_BENCH_DIR"

#: Modules the suite cannot run without, and the extra that installs them.
REQUIRED_MODULES = {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark"}
EXTRA = "liam-gpu[bench]"

#: Distributions whose versions go into the report header (absent ones are left out).
VERSIONED = (
    "numpy", "scipy", "pytest", "pytest-benchmark", "scikit-learn", "torch",
    "cupy-cuda13x", "cupy-cuda12x", "cupy", "fbpca", "dask", "distributed", "matplotlib",
)


# --------------------------------------------------------------------------- locating the suite


def find_bench_dir() -> Path:
    """The ``bench/`` folder of the suite.

    Looked for in this order: ``$LIAM_BENCH_DIR``; the checkout this package
    was imported from (``<checkout>/bench``); ``./bench`` under the current
    directory; the copy installed with the package (``liam_gpu/bench``).  A
    folder counts when it holds ``conftest.py``.

    Raises
    ------
    FileNotFoundError
        When none exists (a package installed from an older wheel, or a
        damaged installation).
    """
    candidates = []
    if os.environ.get(BENCH_DIR_ENV):
        candidates.append(Path(os.environ[BENCH_DIR_ENV]))
    candidates.append(Path(__file__).resolve().parents[1] / "bench")
    candidates.append(Path.cwd() / "bench")
    candidates.append(installed_bench_dir())
    for folder in candidates:
        if (folder / "conftest.py").is_file():
            return folder.resolve()
    raise FileNotFoundError(
        "the benchmark suite (bench/ with conftest.py and bench_*.py) was not found: it is not installed with "
        "the package here, and this is not a source checkout; looked in "
        + ", ".join(str(c) for c in candidates)
        + f". Reinstall with 'pip install \"{EXTRA}\"' (the wheel carries it as liam_gpu/bench), or set "
        f"{BENCH_DIR_ENV} to a bench/ folder."
    )


def installed_bench_dir() -> Path:
    """Where the wheel puts the suite: ``liam_gpu/bench`` beside this module."""
    return Path(__file__).resolve().parent / "bench"


def missing_requirements() -> list[str]:
    """Distributions of :data:`REQUIRED_MODULES` that are not installed."""
    import importlib.util

    return [dist for module, dist in REQUIRED_MODULES.items() if importlib.util.find_spec(module) is None]


# --------------------------------------------------------------------------- ceilings


def _best_seconds(run: Callable[[], None], repeats: int) -> float:
    """Fastest of ``repeats`` host-timed calls after one untimed call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_ceilings(quick: bool) -> dict[str, Any]:
    """Copy bandwidth and GEMM rate of the CPU through numpy.

    The copy moves an array several times the last-level cache (128 MiB quick,
    512 MiB otherwise) and counts bytes read plus bytes written; the GEMM is an
    ``n×n×n`` product of random matrices (n = 1536 quick, 3072 otherwise) in
    float32 and float64.  Each is the fastest of a few repeats after a warm-up,
    so it estimates what the machine can reach, not what it usually does.  Quick
    sizes keep one measurement near a second (``run_cli`` takes two, before and
    after the suite): 128 MiB is still four times a 32 MiB L3, and a 1536³ GEMM
    reaches the rate of a 2048³ one on a few cores.
    """
    rng = np.random.default_rng(0)
    n_copy = (128 if quick else 512) * (1 << 20) // 8
    src = rng.random(n_copy)
    dst = np.empty_like(src)
    copy_s = _best_seconds(lambda: np.copyto(dst, src), 3 if quick else 5)
    copy_gbps = 2 * src.nbytes / copy_s / 1e9
    del src, dst
    n = 1536 if quick else 3072
    gemm: dict[str, float] = {}
    for dtype in (np.float32, np.float64):  # float32 first: the rate most benchmarks are read against
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype=dtype)
        seconds = _best_seconds(lambda: np.matmul(a, b, out=c), 2 if quick else 3)
        gemm[np.dtype(dtype).name] = 2.0 * n**3 / seconds / 1e9
    return {
        "copy_gbps": copy_gbps,
        "gemm_gflops": gemm,
        "how": {
            "copy": f"numpy copyto of {n_copy * 8 >> 20} MiB, read + write counted, fastest of repeats",
            "gemm": f"numpy matmul {n}×{n}×{n}, random data, fastest of repeats",
        },
    }


def cuda_ceilings(quick: bool) -> dict[str, Any]:
    """Device-to-device copy bandwidth and cuBLAS GEMM rates through CuPy.

    The copy moves 512 MiB (quick) or 2 GiB, far beyond the L2, counting bytes
    read plus written; the GEMMs are ``n×n×n`` (n = 4096 quick, 8192 otherwise)
    on random data in float32 (CuPy's default, no TF32), float64 and float16.
    Timed with CUDA events, fastest of several after a warm-up.
    """
    import cupy

    def best_ms(run: Callable[[], None], repeats: int) -> float:
        run()
        cupy.cuda.Device().synchronize()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        best = float("inf")
        for _ in range(repeats):
            start.record()
            run()
            stop.record()
            stop.synchronize()
            best = min(best, cupy.cuda.get_elapsed_time(start, stop))
        return best

    nbytes = (512 if quick else 2048) << 20
    src = cupy.random.random(nbytes // 8, dtype=cupy.float64)
    dst = cupy.empty_like(src)
    copy_ms = best_ms(lambda: dst.data.copy_from_device_async(src.data, nbytes), 10)
    copy_gbps = 2 * nbytes / (copy_ms * 1e-3) / 1e9
    del src, dst
    n = 4096 if quick else 8192
    gemm: dict[str, float] = {}
    for dtype in (cupy.float32, cupy.float64, cupy.float16):
        a = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(dtype)
        b = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(dtype)
        c = cupy.empty((n, n), dtype=dtype)
        ms = best_ms(lambda: cupy.matmul(a, b, out=c), 5)
        gemm[np.dtype(dtype).name] = 2.0 * n**3 / (ms * 1e-3) / 1e9
        del a, b, c
    cupy.get_default_memory_pool().free_all_blocks()
    return {
        "copy_gbps": copy_gbps,
        "gemm_gflops": gemm,
        "how": {
            "copy": f"cudaMemcpy device-to-device of {nbytes >> 20} MiB, read + write counted, CUDA events",
            "gemm": f"cuBLAS (cupy.matmul) {n}×{n}×{n}, random data, CUDA events, fastest of 5",
        },
    }


def gpu_present() -> bool:
    """Whether CuPy sees a CUDA device."""
    from .backends import cuda_device_count

    return cuda_device_count() > 0


def measure_ceilings(backend: str, quick: bool) -> dict[str, dict[str, Any]]:
    """The ceilings of every backend the run covers (``cuda`` only with a GPU)."""
    ceilings: dict[str, dict[str, Any]] = {}
    if backend in ("cpu", "all"):
        ceilings["cpu"] = cpu_ceilings(quick)
    if backend in ("cuda", "all") and gpu_present():
        ceilings["cuda"] = cuda_ceilings(quick)
    return ceilings


def best_ceilings(*measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per backend and quantity, the highest of several measurements.

    ``run_cli`` measures before and after the suite: on a shared machine one
    measurement can land in a busy moment, and a ceiling that is too low makes
    results look better than they are.  Every single measurement is kept under
    ``"samples"``.
    """
    best: dict[str, dict[str, Any]] = {}
    for ceilings in measured:
        for backend, c in ceilings.items():
            b = best.setdefault(backend, {"copy_gbps": 0.0, "gemm_gflops": {}, "how": c.get("how", {}),
                                          "samples": []})
            b["samples"].append({"copy_gbps": c["copy_gbps"], "gemm_gflops": dict(c["gemm_gflops"])})
            b["copy_gbps"] = max(b["copy_gbps"], c["copy_gbps"])
            for dtype, rate in c["gemm_gflops"].items():
                b["gemm_gflops"][dtype] = max(b["gemm_gflops"].get(dtype, 0.0), rate)
    for b in best.values():
        if len(b["samples"]) > 1:
            b["how"] = {k: f"{v}; best of {len(b['samples'])} measurements (before and after the suite)"
                        for k, v in b["how"].items()}
    return best


# --------------------------------------------------------------------------- header facts


def versions() -> dict[str, str]:
    """Python, liam_gpu and every installed distribution of :data:`VERSIONED`."""
    from ._version import __version__

    found = {"liam_gpu": __version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> str:
    """CPU model, cores, memory, BLAS and GPUs, in one line."""
    parts = []
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts.append(f"{model}, {os.cpu_count()} cores")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                parts.append(f"{int(line.split()[1]) / (1 << 20):.0f} GiB RAM")
                break
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                parts.append(
                    f"BLAS {pool.get('internal_api')} {pool.get('architecture') or ''} "
                    f"{pool.get('num_threads')} threads".replace("  ", " ")
                )
                break
    except ImportError:
        pass
    if gpu_present():
        import cupy

        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            parts.append(
                f"GPU {i} {props['name'].decode()} ({props['totalGlobalMem'] / (1 << 30):.0f} GiB, "
                f"{props['multiProcessorCount']} SMs)"
            )
        parts.append(f"CUDA driver {cupy.cuda.runtime.driverGetVersion()}")
    else:
        parts.append("no GPU visible")
    parts.append(f"{platform.system()} {platform.release()}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- the run


def pytest_command(bench_dir: Path, out: Path, quick: bool, installed: bool = False) -> list[str]:
    """The child pytest command line (pytest-benchmark JSON and JUnit XML into ``out``).

    For the suite installed with the package (``installed``), nothing is
    written beside it (site-packages may be read-only, and is not the user's):
    no pytest cache, and pytest-benchmark's saved runs go under ``out``; the
    root stays the suite's parent folder, so test names read ``bench/...`` as
    in a checkout.
    """
    cmd = [
        sys.executable, "-m", "pytest", str(bench_dir), "-q", "-rs",
        f"--benchmark-json={out / 'pytest-benchmark.json'}",
        f"--junitxml={out / 'junit.xml'}",
        "--benchmark-columns=min,median,max,rounds",
        "--benchmark-autosave",  # so that a later 'pytest bench/ --benchmark-compare' has a baseline
    ]
    if installed:
        cmd += [f"--rootdir={bench_dir.parent}", "-p", "no:cacheprovider",
                f"--benchmark-storage=file://{out / '.benchmarks'}"]
    if quick:
        cmd += ["-m", "not slow", "--benchmark-min-rounds=3", "--benchmark-max-time=0.1"]
    return cmd


#: Seconds the child pytest gets to write its results and exit after an interrupt.
INTERRUPT_GRACE_S = 8.0


def _run_streaming(cmd: Sequence[str], env: dict[str, str], cwd: Path, log: Path) -> int:
    """Run ``cmd``, echoing its output and keeping a copy in ``log``.

    On Ctrl-C or ``timeout -s INT`` (which signals the whole process group)
    the child pytest stops by itself and pytest-benchmark still writes the
    JSON of what it measured; this waits :data:`INTERRUPT_GRACE_S` for that,
    then kills the child, so the report covers the benchmarks that finished.
    A thread copies the output, so that a grandchild process keeping the pipe
    open cannot hold the report back.
    """
    with open(log, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

        def pump() -> None:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    sys.stdout.write(line)
                    sink.write(line)
            except ValueError:  # the log was closed after the child ended; a grandchild still writes
                return

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            print("liam-gpu bench: interrupted; reporting the benchmarks that finished", file=sys.stderr)
            try:
                rc = proc.wait(timeout=INTERRUPT_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                rc = proc.wait()
        reader.join(timeout=2.0)
        sys.stdout.flush()
        return rc


def _read_pytest_benchmark(path: Path) -> dict[str, Any]:
    """pytest-benchmark's JSON, or an empty document when the run wrote none (or a partial one)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"benchmarks": []}
    return raw if isinstance(raw, dict) and isinstance(raw.get("benchmarks"), list) else {"benchmarks": []}


def build_report(
    raw: dict[str, Any],
    ceilings: dict[str, Any],
    meta: dict[str, Any],
    outcomes: Sequence[bench_report.Outcome],
    out: Path,
) -> tuple[list[bench_report.Row], str]:
    """Rows, plots, ``results.md`` and ``results.json`` in ``out``; returns the rows and the Markdown."""
    rows = bench_report.rows_from_pytest_benchmark(raw)
    bench_report.add_ratios(rows)
    bench_report.add_rates(rows, ceilings)
    rows = bench_report.sort_rows(rows)
    plots = bench_report.write_plots(rows, out)
    markdown = bench_report.render_markdown(rows, ceilings, meta, outcomes, plots)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    document = {
        "meta": meta,
        "ceilings": ceilings,
        "rows": [r.to_dict() for r in rows],
        "outcomes": [vars(o) for o in outcomes],
        "plots": plots,
        "pytest_benchmark": raw,
    }
    (out / "results.json").write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    return rows, markdown


def run_cli(args: argparse.Namespace) -> int:
    """``liam-gpu bench``: run the suite and write the report into ``args.out``.

    Parameters
    ----------
    args
        ``quick`` (bool), ``backend`` (``"cpu"``, ``"cuda"`` or ``"all"``) and
        ``out`` (folder, created if missing).

    Returns
    -------
    int
        The child pytest's exit status (0 when every benchmark passed or was
        skipped), 1 when no benchmark produced a timing.
    """
    if args.backend not in ("cpu", "cuda", "all"):
        raise ValueError(f"--backend must be cpu, cuda or all, got {args.backend!r}")
    missing = missing_requirements()
    if missing:  # said before anything is measured, not after a minute of ceilings
        print(f"liam-gpu bench: error: the benchmark suite needs {' and '.join(missing)}, which "
              f"{'is' if len(missing) == 1 else 'are'} not installed; install the bench extra: "
              f"pip install \"{EXTRA}\" (or, in a checkout, pip install \".[bench]\")", file=sys.stderr)
        return 2
    if args.backend == "cuda" and not gpu_present():
        raise ValueError("--backend cuda needs a CUDA device visible to CuPy, and none is; "
                         "use --backend cpu (or all) here")
    bench_dir = find_bench_dir()
    installed = bench_dir == installed_bench_dir()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkout = out if installed else bench_dir.parent  # the child's working folder
    package_root = Path(__file__).resolve().parents[1]

    command = "liam-gpu bench" + (" --quick" if args.quick else "") + f" --backend {args.backend} --out {args.out}"
    budget = os.environ.get("LIAM_BENCH_QUICK_BUDGET")
    if args.quick and budget:  # it changes which benchmarks ran, so it belongs to the command
        command = f"LIAM_BENCH_QUICK_BUDGET={budget} {command}"
    meta: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command,
        "backend": args.backend,
        "quick": bool(args.quick),
        "versions": versions(),
    }
    started = time.perf_counter()
    print(f"liam-gpu bench: measuring the ceilings ({args.backend}) ...", flush=True)
    ceilings_before = measure_ceilings(args.backend, args.quick)
    print(bench_report.render_ceilings(ceilings_before), flush=True)

    cmd = pytest_command(bench_dir, out, args.quick, installed)
    env = dict(os.environ)
    env["LIAM_BENCH_QUICK"] = "1" if args.quick else "0"
    env["LIAM_BENCH_BACKEND"] = args.backend
    if (package_root / "pyproject.toml").is_file():  # a checkout: the child imports this same liam_gpu
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    meta["pytest"] = shlex.join(cmd)
    print(f"liam-gpu bench: {meta['pytest']}", flush=True)
    json_path = out / "pytest-benchmark.json"
    json_path.unlink(missing_ok=True)
    rc = _run_streaming(cmd, env, checkout, out / "pytest.log")

    raw = _read_pytest_benchmark(json_path)
    print(f"liam-gpu bench: measuring the ceilings again ({args.backend}) ...", flush=True)
    try:
        ceilings = best_ceilings(ceilings_before, measure_ceilings(args.backend, args.quick))
    except KeyboardInterrupt:  # stopped at a time limit: report with what was measured first
        ceilings = best_ceilings(ceilings_before)
    outcomes = bench_report.outcomes_from_junit(out / "junit.xml")
    meta["seconds"] = round(time.perf_counter() - started, 1)
    rows, markdown = build_report(raw, ceilings, meta, outcomes, out)
    print()
    print(markdown)
    print(f"liam-gpu bench: wrote {out / 'results.md'} and {out / 'results.json'} "
          f"({len(rows)} results, {meta['seconds']} s)")
    if not rows:
        print("liam-gpu bench: no benchmark produced a timing", file=sys.stderr)
        return rc or 1
    return rc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``liam-gpu bench`` (and of ``python -m liam_gpu.benchmarks``)."""
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute on a CPU")
    parser.add_argument("--backend", choices=("cpu", "cuda", "all"), default="all",
                        help="which backends to measure (default: %(default)s)")
    parser.add_argument("--out", default="bench/results/latest",
                        help="folder for the tables, plots and logs, created if missing (default: %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m liam_gpu.benchmarks``: the same options and exit codes as ``liam-gpu bench``."""
    parser = argparse.ArgumentParser(prog="python -m liam_gpu.benchmarks", description="liam-gpu bench")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except (ValueError, TypeError, OSError) as err:  # as liam_gpu.cli.main (which imports this module)
        print(f"liam-gpu bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
