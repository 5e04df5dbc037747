"""Shared machinery of the benchmark suite (pytest-benchmark underneath).

Every ``bench/bench_*.py`` file uses these fixtures so that all numbers are
taken the same way: the device is synchronised before the clock stops, the
first call (kernel compilation, handle creation, caches) stays out of the
numbers, inputs that fit in the cache are rotated, and each result carries the
metadata that ``liam-gpu bench`` turns into a table and plots.

Fixtures
--------
``describe``
    ``describe(benchmark, op=..., impl=..., backend=..., shape=..., dtype=..., flops=..., bytes=...)``
    labels a benchmark (see :func:`describe`).
``measure``
    ``measure(benchmark, fn, inputs, backend=...)`` warms up, rotates and
    synchronises, then times ``fn(*inputs())`` (see :func:`measure`).
``rotation``
    ``rotation(make, nbytes=..., backend=...)`` builds enough copies of an input
    set that cycling through them does not run from the cache (see :func:`rotation`).
``sync``
    ``sync(backend)`` waits for the device of ``backend`` (see :func:`sync`).
``peer``
    ``peer("sklearn")`` imports an optional peer library or skips the test with
    the reason ``"peer sklearn is not installed"`` (see :func:`peer`).
``quick``
    ``True`` when ``LIAM_BENCH_QUICK=1``: use small sizes (``liam-gpu bench --quick``).

A complete benchmark::

    import os

    import numpy as np
    import pytest

    import liam_gpu as lg

    QUICK = os.environ.get("LIAM_BENCH_QUICK") == "1"
    SIZES = [(2000, 256)] if QUICK else [(20000, 256), (100000, 256)]

    @pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
    @pytest.mark.parametrize("m, n", SIZES)
    def test_transform(benchmark, describe, measure, rotation, backend, m, n):
        rng = np.random.default_rng(0)
        w = rng.standard_normal((n, n), dtype=np.float32)
        make = lambda: (rng.standard_normal((m, n), dtype=np.float32), w)
        inputs = rotation(make, nbytes=4 * (m * n + n * n), backend=backend)
        describe(benchmark, op="transform gelu(x@W.T+b)", impl="liam_gpu", backend=backend,
                 shape=(m, n, n), dtype="float32", flops=2 * m * n * n,
                 bytes=4 * (m * n + n * n + m * n))
        measure(benchmark, lambda x, w: lg.transform_matrix(x, w, None, "gelu", device=backend),
                inputs, backend=backend)

Backends
--------
A benchmark is a *GPU benchmark* when it carries the ``gpu`` marker or one of
its parameters is a string starting with ``"cuda"``; GPU benchmarks are skipped
when no device is visible.  ``LIAM_BENCH_BACKEND=cpu`` (``liam-gpu bench
--backend cpu``) deselects them; ``LIAM_BENCH_BACKEND=cuda`` keeps only them.
They run before the CPU benchmarks, so that a run stopped at a time limit
(``bench/device_check.sh``) has the GPU numbers.

Quick mode
----------
With ``LIAM_BENCH_QUICK=1`` the files take turns (round robin), and once
``LIAM_BENCH_QUICK_BUDGET`` seconds (35) of benchmarking are spent the
remaining benchmarks are skipped with that reason, so ``liam-gpu bench
--quick`` stays near a minute.  That budget is a safety net: the quick sizes
are chosen so that every quick benchmark runs, 25-30 s of benchmarking on a
2-core machine (35-40 s for the whole command, ceilings included), and
``tests/test_benchmarks.py`` fails when one was skipped for the budget.  Keep
each quick case well under a second per call (the dask ones share one
cluster for that reason), or the budget cuts off the files' last cases.

File names
----------
Benchmark files are named ``bench_*.py``; this conftest collects them even
though pytest's default ``python_files`` pattern is ``test_*.py``, so plain
``pytest bench/`` and ``pytest bench/ --benchmark-compare`` find them.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
import itertools
import math
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pytest

#: ``LIAM_BENCH_QUICK=1``: small sizes, the whole suite under a minute on a CPU.
QUICK: bool = os.environ.get("LIAM_BENCH_QUICK", "") == "1"

#: Which benchmarks to keep: ``cpu``, ``cuda`` or ``all`` (``liam-gpu bench --backend``).
BACKEND_FILTER: str = os.environ.get("LIAM_BENCH_BACKEND", "all")

#: Cap on the memory the copies of one rotation may take, whatever the cache size.
ROTATION_MEMORY_CAP = 1 << 30

#: Rotation copies at most; beyond this the next copy is far outside any cache anyway.
ROTATION_MAX_COPIES = 16

#: Keys of ``benchmark.extra_info`` written by :func:`describe` and read by the report.
INFO_KEYS = ("op", "impl", "backend", "shape", "dtype", "flops", "bytes", "size")


# --------------------------------------------------------------------------- labels


def describe(
    benchmark: Any,
    *,
    op: str,
    impl: str,
    backend: str,
    shape: Sequence[int] | str,
    dtype: Any,
    flops: float | None = None,
    bytes: float | None = None,  # noqa: A002  (the report's column name)
    size: float | None = None,
    **extra: Any,
) -> None:
    """Label one benchmark for the report (``benchmark.extra_info``) and group it.

    Parameters
    ----------
    benchmark
        The pytest-benchmark fixture of the test.
    op
        The operation, the same string for every implementation that computes
        the same thing (``"randomized_svd k=32 q=2"``), so that they are compared.
    impl
        Who computes it: ``"liam_gpu"`` or a peer (``"numpy"``, ``"sklearn"``,
        ``"torch"``, ``"fbpca"``, ``"cupy"``).
    backend
        Where it runs: ``"cpu"``, ``"cuda"`` (``"cuda:N"`` is shortened to
        ``"cuda"``) or ``"emulator"``.
    shape
        The problem's dimensions, e.g. ``(m, n, k)``; a string is kept as is.
    dtype
        The element type (anything ``numpy.dtype`` accepts, or a name).
    flops
        Floating-point operations of one call (a multiply-add counts as 2), for
        GFLOP/s; ``None`` when the count is not meaningful.
    bytes
        The fewest bytes one call must move (each input read once, each output
        written once), for GB/s; ``None`` when unknown.
    size
        The x coordinate of the time-vs-size plot; defaults to the product of
        ``shape``.
    **extra
        More JSON-serialisable facts to keep (``q=2``, ``k=32``, an error measured
        once outside timing, ...).

    Notes
    -----
    Benchmarks of the same ``op``, ``shape`` and ``dtype`` form one pytest-benchmark
    group (unless the test set ``benchmark.group`` itself), so
    ``pytest bench/ --benchmark-compare`` and the report both put them side by
    side, and the report's "ratio to best" is taken inside that group.
    """
    if not isinstance(op, str) or not op:
        raise ValueError(f"op must be a non-empty string, got {op!r}")
    if not isinstance(impl, str) or not impl:
        raise ValueError(f"impl must be a non-empty string, got {impl!r}")
    backend = _backend_kind(backend)
    shape_value: list[int] | str
    if isinstance(shape, str):
        shape_value = shape
    else:
        try:
            shape_value = [int(d) for d in shape]
        except TypeError as err:
            raise TypeError(f"shape must be a sequence of ints or a string, got {shape!r}") from err
    dtype_name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    for name, value in (("flops", flops), ("bytes", bytes), ("size", size)):
        if value is not None and (not np.isfinite(value) or value < 0):
            raise ValueError(f"{name} must be a finite non-negative number or None, got {value!r}")
    if size is None and not isinstance(shape_value, str):
        size = float(math.prod(shape_value))
    info = benchmark.extra_info
    info.update(extra)
    info.update(
        op=op,
        impl=impl,
        backend=backend,
        shape=shape_value,
        dtype=dtype_name,
        flops=None if flops is None else float(flops),
        bytes=None if bytes is None else float(bytes),
        size=None if size is None else float(size),
    )
    if benchmark.group is None:
        shape_text = shape_value if isinstance(shape_value, str) else "x".join(map(str, shape_value))
        benchmark.group = f"{op} {shape_text} {dtype_name}"


def _backend_kind(backend: str) -> str:
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be a non-empty string such as 'cpu' or 'cuda', got {backend!r}")
    return "cuda" if backend.startswith("cuda") else backend


# --------------------------------------------------------------------------- devices


@functools.lru_cache(maxsize=1)
def cuda_present() -> bool:
    """Whether CuPy sees a CUDA device (cached; ``False`` without CuPy or a driver)."""
    try:
        from liam_gpu.backends import cuda_device_count

        return cuda_device_count() > 0
    except ImportError:
        return False


def sync(backend: str = "cuda") -> None:
    """Wait until the devices of ``backend`` have finished all queued work.

    A CPU backend returns at once.  For ``cuda`` this synchronises every
    visible device (``cudaDeviceSynchronize`` covers all streams of a device,
    so CuPy's and torch's work both count, and multi-GPU runs of the scheduler
    are complete).
    """
    if _backend_kind(backend) != "cuda":
        return
    if not cuda_present():
        raise RuntimeError(f"sync({backend!r}) called but no CUDA device is visible to CuPy")
    import cupy

    for index in range(cupy.cuda.runtime.getDeviceCount()):
        with cupy.cuda.Device(index):  # current for the call, restored after
            cupy.cuda.runtime.deviceSynchronize()


# --------------------------------------------------------------------------- rotation


@functools.lru_cache(maxsize=None)
def cache_bytes(backend: str) -> int:
    """The last-level cache in bytes of the device behind ``backend``.

    CPU: the largest ``cache/index*/size`` of cpu0 in sysfs (32 MiB when sysfs
    does not say).  CUDA: the device's L2 size.
    """
    if _backend_kind(backend) == "cuda":
        import cupy

        return int(cupy.cuda.Device().attributes["L2CacheSize"])
    largest = 0
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = size_file.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest or 32 << 20


class Rotation:
    """Cycles through several copies of one input set: call it for the next copy.

    Attributes
    ----------
    copies
        The input sets (tuples of arguments).
    """

    def __init__(self, copies: Sequence[tuple[Any, ...]]) -> None:
        if not copies:
            raise ValueError("copies must hold at least one input set")
        self.copies = list(copies)
        self._cycle = itertools.cycle(self.copies)

    def __call__(self) -> tuple[Any, ...]:
        return next(self._cycle)

    def __len__(self) -> int:
        return len(self.copies)


def rotation(
    make: Callable[[], Any],
    *,
    nbytes: int,
    backend: str,
    cache: int | None = None,
) -> Rotation:
    """Make enough input sets that cycling through them misses the cache.

    Parameters
    ----------
    make
        Returns one fresh input set (a tuple of arguments, or one argument) as
        numpy arrays; each call should draw new random data.  Never zeros:
        they hide unwritten outputs and can run faster than real data.
    nbytes
        Bytes of one input set.
    backend
        ``"cpu"`` keeps numpy arrays; ``"cuda"`` moves every numpy array of the
        set to the current device with CuPy (outside timing).
    cache
        The cache to defeat in bytes; by default :func:`cache_bytes` of the backend.

    Returns
    -------
    Rotation
        ``copies`` holds ``ceil(2 * cache / nbytes)`` sets (at least one, at
        most ``ROTATION_MAX_COPIES``, and no more than ``ROTATION_MEMORY_CAP``
        bytes in all); a set already twice the cache is used alone.
    """
    if nbytes <= 0:
        raise ValueError(f"nbytes must be positive, got {nbytes!r}")
    cache = cache_bytes(backend) if cache is None else int(cache)
    wanted = max(1, math.ceil(2 * cache / nbytes))
    allowed = max(1, ROTATION_MEMORY_CAP // nbytes)
    count = min(wanted, allowed, ROTATION_MAX_COPIES)
    copies = []
    for _ in range(count):
        made = make()
        items = made if isinstance(made, tuple) else (made,)
        copies.append(tuple(_to_backend(a, backend) for a in items))
    return Rotation(copies)


def _to_backend(value: Any, backend: str) -> Any:
    if _backend_kind(backend) == "cuda" and isinstance(value, np.ndarray):
        import cupy

        return cupy.asarray(value)
    return value


# --------------------------------------------------------------------------- timing


def measure(
    benchmark: Any,
    fn: Callable[..., Any],
    inputs: Rotation | Callable[[], tuple[Any, ...]] | tuple[Any, ...] = (),
    *,
    backend: str,
    warmup: int = 1,
) -> Any:
    """Time ``fn(*inputs())`` with pytest-benchmark, the device synchronised each call.

    Parameters
    ----------
    benchmark
        The pytest-benchmark fixture.
    fn
        The call to time.
    inputs
        A :class:`Rotation` (a different input set each call), any callable
        returning the argument tuple, or a fixed argument tuple.
    backend
        Where ``fn`` runs; ``"cuda"`` synchronises the device before each call
        returns, so the clock stops after the GPU work, not after the launch.
    warmup
        Untimed calls first, one per rotation copy at most, so that compilation,
        module loading and handle creation stay out of the numbers.

    Returns
    -------
    Any
        What the last timed call returned.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    if isinstance(inputs, tuple):
        fixed = inputs
        next_inputs: Callable[[], tuple[Any, ...]] = lambda: fixed  # noqa: E731
    elif callable(inputs):
        next_inputs = inputs
    else:
        raise TypeError(f"inputs must be a Rotation, a callable or a tuple, got {type(inputs).__name__}")

    def call() -> Any:
        out = fn(*next_inputs())
        sync(backend)
        return out

    for _ in range(warmup):
        call()
    return benchmark(call)


# --------------------------------------------------------------------------- peers


def peer(name: str) -> ModuleType:
    """Import an optional peer library, or skip the test saying which one is missing.

    The skip reason is ``"peer <name> is not installed"``; ``liam-gpu bench``
    lists such skips in its report instead of counting them as failures.
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        pytest.skip(f"peer {name} is not installed ({err})")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(name="describe")
def describe_fixture() -> Callable[..., None]:
    """:func:`describe`: label a benchmark (op, impl, backend, shape, dtype, flops, bytes)."""
    return describe


@pytest.fixture(name="measure")
def measure_fixture() -> Callable[..., Any]:
    """:func:`measure`: warm up, then time with the device synchronised."""
    return measure


@pytest.fixture(name="rotation")
def rotation_fixture() -> Callable[..., Rotation]:
    """:func:`rotation`: input copies that do not fit in the cache together."""
    return rotation


@pytest.fixture(name="sync")
def sync_fixture() -> Callable[[str], None]:
    """:func:`sync`: wait for the device of a backend."""
    return sync


@pytest.fixture(name="peer")
def peer_fixture() -> Callable[[str], ModuleType]:
    """:func:`peer`: import an optional peer or skip."""
    return peer


@pytest.fixture(name="quick")
def quick_fixture() -> bool:
    """Whether ``LIAM_BENCH_QUICK=1`` asks for small sizes."""
    return QUICK


# --------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` files that pytest's ``python_files`` patterns would miss."""
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, "bench_*.py"):
        return None
    if parent.session.isinitpath(file_path):
        return None  # given on the command line: pytest collects it already
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None  # the project's own patterns already include it
    return pytest.Module.from_parent(parent, path=file_path)


def is_gpu_item(item: pytest.Item) -> bool:
    """A GPU benchmark: marked ``gpu``, or parametrized with a ``"cuda..."`` value."""
    if item.get_closest_marker("gpu") is not None:
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    return any(isinstance(v, str) and v.startswith("cuda") for v in _flat(callspec.params.values()))


def _flat(values: Iterable[Any]) -> Iterable[Any]:
    for v in values:
        if isinstance(v, (tuple, list)):
            yield from v
        else:
            yield v


def _is_bench_item(item: pytest.Item) -> bool:
    return Path(__file__).parent in Path(item.fspath).parents


def _round_robin(items: list[pytest.Item]) -> list[pytest.Item]:
    """Interleave the files' benchmarks (first of each file, then second, ...), keeping each file's order."""
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(str(item.fspath), []).append(item)
    queues = list(by_file.values())
    merged = []
    for rank in range(max((len(q) for q in queues), default=0)):
        merged += [q[rank] for q in queues if rank < len(q)]
    return merged


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply ``LIAM_BENCH_BACKEND``, skip GPU benchmarks without a GPU, and order the run.

    GPU benchmarks run first: a run cut short by a time limit
    (``bench/device_check.sh``) then still holds the numbers only a lent GPU
    gives.  With ``LIAM_BENCH_QUICK=1`` the files take turns (round robin), so
    that when the quick budget runs out every file has results.
    """
    if BACKEND_FILTER not in ("cpu", "cuda", "all"):
        raise pytest.UsageError(f"LIAM_BENCH_BACKEND must be cpu, cuda or all, got {BACKEND_FILTER!r}")
    others, gpu_items, cpu_items, drop = [], [], [], []
    for item in items:
        if not _is_bench_item(item):
            others.append(item)  # not a benchmark (e.g. tests/ in the same session)
            continue
        gpu = is_gpu_item(item)
        if (BACKEND_FILTER == "cpu" and gpu) or (BACKEND_FILTER == "cuda" and not gpu):
            drop.append(item)
            continue
        if gpu and not cuda_present():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device visible to CuPy"))
        (gpu_items if gpu else cpu_items).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    if QUICK:
        gpu_items, cpu_items = _round_robin(gpu_items), _round_robin(cpu_items)
    items[:] = others + gpu_items + cpu_items


#: ``LIAM_BENCH_QUICK=1``: seconds of benchmarking after which the remaining
#: benchmarks are skipped (``LIAM_BENCH_QUICK_BUDGET``), so that ``liam-gpu bench
#: --quick`` keeps its one-minute promise whatever the files add.
QUICK_BUDGET_S: float = float(os.environ.get("LIAM_BENCH_QUICK_BUDGET", "35"))

_session_started: list[float] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the quick budget's clock when the benchmarks are about to run."""
    _session_started[:] = [time.perf_counter()]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """In quick mode, skip a benchmark once the quick budget is spent (saying so)."""
    if not (QUICK and _session_started and _is_bench_item(item)):
        return
    spent = time.perf_counter() - _session_started[0]
    if spent > QUICK_BUDGET_S:
        pytest.skip(f"the quick run's budget of {QUICK_BUDGET_S:.0f} s was spent "
                    f"(LIAM_BENCH_QUICK_BUDGET; run without --quick for every benchmark)")
