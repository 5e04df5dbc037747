"""The ALDA scheduler on virtual CPU devices: order, determinism, faults, cancellation.

Virtual ``cpu:i`` devices are real worker threads, so everything here runs the
same scheduling, retry and shutdown code as on GPUs; only the transport differs
(the CUDA transport's own tests are marked ``gpu``).
"""
from __future__ import annotations

import _thread
import logging
import threading
import time
from collections import Counter

import numpy as np
import pytest

from liam_gpu.alda import (
    AllDevicesFailed,
    Chunk,
    ChunkError,
    DeviceFault,
    Scheduler,
    current_device,
)
from liam_gpu.alda import chunking
from liam_gpu.alda.chunking import Batch
from liam_gpu.alda.errors import classify
from liam_gpu.alda.run import Run
from liam_gpu.alda.transport import HostTransport
from liam_gpu.alda.worker import THREAD_PREFIX
from liam_gpu.api import transform_matrix

CPUS = {n: [f"cpu:{i}" for i in range(n)] for n in (1, 2, 3, 4)}


def alda_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """Every test must leave no worker thread behind."""
    yield
    assert alda_threads() == []


def row_tag(chunk: np.ndarray) -> np.ndarray:
    """A row-separable function whose result also says which device computed each row."""
    device = current_device()
    index = -1 if device == "cpu:fallback" else int(device.split(":")[1])
    out = np.empty((chunk.shape[0], 2))
    out[:, 0] = chunk[:, 0] * 3.0 + 1.0
    out[:, 1] = index
    return out


def expected_rows(x: np.ndarray) -> np.ndarray:
    return x[:, 0] * 3.0 + 1.0


# -- chunking and assignment -----------------------------------------------------------
def test_plan_depends_on_batch_and_chunk_size_only():
    x = np.zeros((1000, 8))
    plans = [[c for c, _ in Scheduler(CPUS[n]).plan(x, chunk_size=64)] for n in (1, 2, 3, 4)]
    assert all(p == plans[0] for p in plans)
    assert [(c.start, c.stop) for c in plans[0]][-2:] == [(896, 960), (960, 1000)]
    default = [[c for c, _ in Scheduler(CPUS[n]).plan(x)] for n in (1, 3)]
    assert default[0] == default[1]


def test_assignment_is_round_robin_over_devices_in_order():
    sched = Scheduler(CPUS[3], chunk_size=10)
    x = np.arange(95.0).reshape(-1, 1)
    planned = sched.plan(x)
    assert [d for _, d in planned] == ["cpu:0", "cpu:1", "cpu:2"] * 3 + ["cpu:0"]
    y = sched.map(row_tag, x)
    for chunk, device in planned:
        assert np.all(y[chunk.start:chunk.stop, 1] == int(device[-1]))


def test_default_chunk_size_rule():
    # ceil(n / 64) items, but at least 256 KiB and at most 32 MiB of input per chunk.
    assert chunking.default_chunk_size(64_000, item_bytes=8 << 10) == 1000
    assert chunking.default_chunk_size(64_000, item_bytes=8) == 32768  # 256 KiB / 8 B
    assert chunking.default_chunk_size(6_400, item_bytes=1 << 20) == 32  # 32 MiB / 1 MiB
    assert chunking.default_chunk_size(10, item_bytes=None) == 1
    assert chunking.default_chunk_size(3, item_bytes=8) == 3
    assert chunking.plan(0, 5) == [Chunk(0, 0, 0)]


def test_chunk_halves_cover_the_chunk():
    first, second = Chunk(3, 10, 17).halves()
    assert (first, second) == (Chunk(3, 10, 14), Chunk(3, 14, 17))


# -- ordering and results ------------------------------------------------------------------
def test_results_come_back_in_input_order_whatever_finishes_first():
    rng = np.random.default_rng(1)
    delays = rng.uniform(0, 0.004, size=40)
    x = np.arange(400.0).reshape(-1, 1)

    def slow(chunk):
        time.sleep(delays[int(chunk[0, 0]) // 10])
        return row_tag(chunk)

    y = Scheduler(CPUS[4], chunk_size=10).map(slow, x)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))


def test_tuple_batch_is_split_together_and_list_batch_is_sliced():
    sched = Scheduler(CPUS[2], chunk_size=3)
    a = np.arange(10.0)
    b = np.arange(10.0) * 10
    s, d = sched.map(lambda u, v: (u + v, v - u), (a, b))
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(d, b - a)
    words = [f"w{i}" for i in range(8)]
    assert sched.map(lambda part: [w.upper() for w in part], words) == [w.upper() for w in words]


def test_torch_batch_comes_back_as_torch():
    torch = pytest.importorskip("torch")
    x = torch.arange(12.0).reshape(6, 2)
    y = Scheduler(CPUS[2], chunk_size=2).map(lambda c: c * 2, x)
    assert isinstance(y, torch.Tensor)
    assert torch.equal(y, x * 2)


def test_empty_batch_gives_an_empty_result_of_the_function_shape():
    sched = Scheduler(CPUS[3])
    y = sched.map(lambda c: np.zeros((c.shape[0], 5), np.float32), np.empty((0, 3)))
    assert y.shape == (0, 5) and y.dtype == np.float32
    assert sched.map(lambda part: list(part), []) == []


def test_current_device_is_none_outside_workers():
    assert current_device() is None
    seen = Scheduler(CPUS[2], chunk_size=1).map(lambda part: [current_device()], [0, 1, 2])
    assert seen == ["cpu:0", "cpu:1", "cpu:0"]


def test_array_results_are_gathered_into_out_or_a_fresh_array():
    x = np.arange(40.0).reshape(-1, 2)
    sched = Scheduler(CPUS[3], chunk_size=3)
    out = np.zeros((20, 2), np.float32)
    assert sched.map(lambda c: c * 2, x, out=out) is out
    np.testing.assert_array_equal(out, x * 2)
    with pytest.raises(ChunkError, match="does not fit"):
        sched.map(lambda c: c[:1], x, out=out)  # not one row per item: the function's error
    with pytest.raises(ValueError, match="20 rows"):
        sched.map(lambda c: c, x, out=np.zeros((19, 2)))
    # Results that stop fitting half way are joined by concatenation instead.
    ragged = sched.map(lambda c: c if c[0, 0] < 20 else c.astype(np.float32), x)
    np.testing.assert_array_equal(ragged, x)


def test_an_out_that_cannot_receive_the_results_is_outs_error_and_untouched():
    """A bad ``out=`` dtype or row shape is a TypeError/ValueError naming out, not a ChunkError.

    It is found with the first result, before that result is written.
    """
    x = np.arange(40.0).reshape(-1, 2)
    sched = Scheduler(CPUS[2], chunk_size=3)
    out = np.zeros((20, 2), np.int32)
    with pytest.raises(TypeError, match="out has dtype int32, which cannot receive the function's float64"):
        sched.map(lambda c: c * 2, x, out=out)
    assert not out.any()
    wide = np.zeros((20, 3))
    with pytest.raises(ValueError, match=r"out has rows of shape \(3,\)"):
        sched.map(lambda c: c * 2, x, out=wide)
    assert not wide.any()
    with pytest.raises(ValueError, match="out overlaps batch"):
        sched.map(lambda c: c * 2, x, out=x)
    with pytest.raises(ValueError, match=r"out overlaps batch\[1\]"):
        sched.map(lambda a, b: a + b, (x.copy(), x), out=x)


def test_custom_combine_and_unjoinable_results():
    sched = Scheduler(CPUS[2], chunk_size=2)
    total = sched.map(lambda c: float(c.sum()), np.arange(6.0), combine=sum)
    assert total == 15.0
    with pytest.raises(TypeError, match="combine="):
        sched.map(lambda c: float(c.sum()), np.arange(6.0))


# -- determinism through the operations -------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_is_bitwise_identical_on_1_2_3_devices(dtype, rng):
    x = rng.standard_normal((4, 150, 48)).astype(dtype)
    w = rng.standard_normal((24, 48)).astype(dtype)
    b = rng.standard_normal(24).astype(dtype)
    results = [
        transform_matrix(x, w, b, "gelu", device=Scheduler(CPUS[n], chunk_size=37)) for n in (1, 2, 3)
    ]
    assert results[0].shape == (4, 150, 24) and results[0].dtype == dtype
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
    # Against the unscheduled call: BLAS may block 37-row chunks differently from
    # 600 rows, so only rounding may differ: a few ulps of the dot products.
    direct = transform_matrix(x, w, b, "gelu", device="cpu")
    scale = np.abs(x).reshape(-1, 48) @ np.abs(w).T + np.abs(b)
    tol = 8 * 48 * np.finfo(dtype).eps * scale.reshape(direct.shape)
    assert np.all(np.abs(results[0] - direct) <= tol)


def test_batched_transform_splits_data_weights_and_bias_together(rng):
    x = rng.standard_normal((7, 20, 16))
    w = rng.standard_normal((7, 5, 16))
    b = rng.standard_normal((7, 5))
    results = [transform_matrix(x, w, b, "relu", device=Scheduler(CPUS[n], chunk_size=2)) for n in (1, 2, 3)]
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
    # Per-item calls are exactly what each chunk computes.
    for i in range(7):
        np.testing.assert_array_equal(results[0][i], transform_matrix(x[i], w[i], b[i], "relu", device="cpu"))


def test_transform_through_scheduler_writes_out(rng):
    x = rng.standard_normal((90, 12))
    w = rng.standard_normal((6, 12))
    out = np.full((90, 6), np.nan)
    got = transform_matrix(x, w, device=Scheduler(CPUS[3], chunk_size=20), out=out)
    assert got is out
    np.testing.assert_array_equal(out, transform_matrix(x, w, device=Scheduler(CPUS[1], chunk_size=20)))
    with pytest.raises(ValueError, match="out must have shape"):
        transform_matrix(x, w, device=Scheduler(CPUS[2]), out=np.empty((90, 5)))


def test_transform_bad_input_raises_the_operations_own_error(rng):
    x = rng.standard_normal((40, 8))
    x[33, 2] = np.nan
    ran = []
    sched = Scheduler(CPUS[2], chunk_size=10, fault_injector=lambda device, chunk: ran.append(chunk))
    # The whole input is checked before any chunk runs (and so before any writes out).
    with pytest.raises(ValueError, match="data contains NaN"):
        transform_matrix(x, rng.standard_normal((3, 8)), device=sched)
    assert ran == []
    with pytest.raises(ValueError, match="d_in"):
        transform_matrix(x, np.ones((3, 9)), device=Scheduler(CPUS[2]))


_NAN = np.array([[1.0, np.nan], [2.0, 3.0]])
BAD_TRANSFORMS = {
    # Two faults at once: the core reports the inputs' NaN before it looks at out.
    "nan-data-and-out-shape": ((_NAN, np.ones((3, 2))), {"out": np.empty((2, 4))}),
    "nan-weights-and-out-dtype": ((np.ones((2, 2)), _NAN), {"out": np.empty((2, 2), np.float32)}),
    "no-features": ((np.ones((4, 0)), np.ones((3, 0))), {}),
    "no-rows": ((np.ones((0, 2)), np.ones((3, 2))), {}),
    "empty-weights": ((np.ones((4, 2)), np.ones((0, 2))), {}),
    "empty-bias-of-empty-weights": ((np.ones((4, 2)), np.ones((0, 2)), np.ones(0)), {}),
    "bias-shape": ((np.ones((4, 2)), np.ones((3, 2)), np.ones(2)), {}),
    "complex-weights": ((np.ones((4, 2)), np.ones((3, 2), complex)), {}),
    "complex-bias-and-nan-data": ((_NAN, np.ones((3, 2)), np.ones(3, complex)), {}),
    "read-only-out": ((np.ones((4, 2)), np.ones((3, 2))), {"out": np.broadcast_to(np.empty(3), (4, 3))}),
    "batched-batch": ((np.ones((2, 4, 2)), np.ones((3, 5, 2))), {}),
}


@pytest.mark.parametrize("case", list(BAD_TRANSFORMS))
def test_transform_refuses_what_the_core_refuses_with_its_error_before_any_chunk(case):
    args, kwargs = BAD_TRANSFORMS[case]
    with pytest.raises((ValueError, TypeError)) as core:
        transform_matrix(*args, device="cpu", **kwargs)
    ran = []
    sched = Scheduler(CPUS[2], chunk_size=1, fault_injector=lambda device, chunk: ran.append(chunk))
    with pytest.raises(type(core.value)) as scheduled:
        transform_matrix(*args, device=sched, **kwargs)
    assert str(scheduled.value) == str(core.value)
    assert ran == []  # found by the one preparation, not by a chunk


@pytest.mark.parametrize("route", ["dtype", "bits"])
def test_lists_among_bfloat16_tensors_round_once_as_on_the_core(route, monkeypatch):
    # 1 + 2^-8 + 2^-30 rounded once to bfloat16 is 1 + 2^-7; through float32 first it
    # is the tie 1 + 2^-8, which goes to even (1.0).  The scheduler used to compute the
    # list in float64 and round through float32 at the end.
    torch = pytest.importorskip("torch")
    from liam_gpu import bfloat16

    if route == "bits":
        monkeypatch.setattr(bfloat16, "has_dtype", lambda on_gpu: False)
    x = torch.ones(3, 1, dtype=torch.bfloat16)
    w = [[1 + 2.0 ** -8 + 2.0 ** -30], [1 + 2.0 ** -8]]
    y = transform_matrix(x, w, device=Scheduler(CPUS[2], chunk_size=1))
    assert y.dtype == torch.bfloat16
    assert y.view(torch.int16).tolist() == [[0x3F81, 0x3F80]] * 3
    assert torch.equal(y.view(torch.int16), transform_matrix(x, w, device="cpu").view(torch.int16))


def _emulator_ready() -> str | None:
    """Why the emulator backend cannot run here, or None when it can."""
    from liam_gpu import backends

    if not backends.emulator_available():
        return "the emulator needs g++"
    try:
        backends.get_backend("emulator")
    except ImportError as exc:
        return f"the emulator backend does not import yet ({exc})"
    return None


def test_transform_on_virtual_emulator_devices_runs_the_kernel_path(rng):
    reason = _emulator_ready()
    if reason:
        pytest.skip(reason)
    x = rng.standard_normal((24, 16)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    one = transform_matrix(x, w, None, "silu", device=Scheduler(["emulator:0"], chunk_size=6))
    two = transform_matrix(x, w, None, "silu", device=Scheduler(["emulator:0", "emulator:1"], chunk_size=6))
    assert np.array_equal(one, two)
    np.testing.assert_array_equal(one, transform_matrix(x, w, None, "silu", device="emulator"))


def test_batched_svd_is_bitwise_identical_on_1_2_3_devices(rng):
    from liam_gpu.api import svd_compress

    stack = rng.standard_normal((9, 30, 12))
    lows = [svd_compress(stack, k=4, device=Scheduler(CPUS[n], chunk_size=2)) for n in (1, 2, 3)]
    for low in lows[1:]:
        for name in ("U", "S", "Vt", "relative_error"):
            assert np.array_equal(getattr(low, name), getattr(lows[0], name))
    assert lows[0].U.shape == (9, 30, 4) and lows[0].S.shape == (9, 4) and lows[0].Vt.shape == (9, 4, 12)
    # Every item is factored on its own with one seed: the unscheduled call agrees bit for bit.
    direct = svd_compress(stack, k=4)
    assert np.array_equal(lows[0].U, direct.U) and np.array_equal(lows[0].S, direct.S)


def test_randomized_svd_of_a_stack_and_a_single_matrix_through_the_scheduler(rng):
    from liam_gpu.api import randomized_svd, svd_compress

    stack = rng.standard_normal((5, 40, 20))
    got = randomized_svd(stack, 3, random_state=7, device=Scheduler(CPUS[2], chunk_size=2))
    want = randomized_svd(stack, 3, random_state=7)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    single = svd_compress(stack[0], k=3, device=Scheduler(CPUS[2]))
    assert np.array_equal(single.S, svd_compress(stack[0], k=3).S)


def test_svd_compress_tol_gives_a_stack_one_rank_on_any_device_count(rng):
    from liam_gpu.api import svd_compress

    def low_rank(r):
        return rng.standard_normal((60, r)) @ rng.standard_normal((r, 30)) + 1e-6 * rng.standard_normal((60, 30))

    # Chunk 0 needs rank 2, the others rank 9: chunk 0 is compressed again at rank 9.
    stack = np.stack([low_rank(2), low_rank(2), low_rank(9), low_rank(9), low_rank(9), low_rank(9)])
    lows = [svd_compress(stack, tol=1e-3, device=Scheduler(CPUS[n], chunk_size=2)) for n in (1, 3)]
    assert lows[0].rank == svd_compress(stack, tol=1e-3).rank == 9
    assert np.array_equal(lows[0].U, lows[1].U) and np.array_equal(lows[0].S, lows[1].S)
    assert np.all(lows[0].relative_error <= 1e-3)
    dense = np.einsum("bik,bk,bkj->bij", lows[0].U, lows[0].S, lows[0].Vt)
    errors = np.linalg.norm(stack - dense, axis=(1, 2)) / np.linalg.norm(stack, axis=(1, 2))
    assert np.all(errors <= 1e-3)


# -- faults ----------------------------------------------------------------------------------
class CountingFn:
    """Counts successful computations per chunk start (thread-safe)."""

    def __init__(self, inner=row_tag):
        self.inner = inner
        self.calls = Counter()
        self.lock = threading.Lock()

    def __call__(self, chunk):
        out = self.inner(chunk)
        with self.lock:
            self.calls[int(chunk[0, 0]) if len(chunk) else -1] += 1
        return out


def test_a_device_that_always_faults_is_retired_and_its_chunks_done_elsewhere(caplog):
    caplog.set_level(logging.INFO, logger="liam_gpu.alda")

    def broken_cpu1(device, chunk):
        if device == "cpu:1":
            raise DeviceFault("cpu:1 is broken")

    sched = Scheduler(CPUS[3], chunk_size=5, max_faults=3, fault_injector=broken_cpu1)
    x = np.arange(100.0).reshape(-1, 1)
    fn = CountingFn()
    y = sched.map(fn, x)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))
    assert not np.any(y[:, 1] == 1)
    assert sorted(fn.calls) == list(range(0, 100, 5)) and set(fn.calls.values()) == {1}
    assert sched.health == {"cpu:0": True, "cpu:1": False, "cpu:2": True}
    assert sched.last_stats["cpu:1"].chunks == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("faulted on cpu:1" in m and "retrying on cpu:2" in m for m in messages)
    assert any("cpu:1 is unhealthy after 3 faults" in m for m in messages)
    # Health is remembered: the next map plans without cpu:1 until reset.
    assert {d for _, d in sched.plan(x)} == {"cpu:0", "cpu:2"}
    sched.reset_health()
    assert all(sched.health.values())


def test_a_device_that_faults_once_retries_the_chunk_on_the_next_device():
    faulted = []

    def once(device, chunk):
        if device == "cpu:0" and chunk.index == 2 and not faulted:
            faulted.append(chunk)
            raise DeviceFault("transient")

    sched = Scheduler(CPUS[2], chunk_size=10, fault_injector=once)
    x = np.arange(60.0).reshape(-1, 1)
    y = sched.map(CountingFn(), x)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))
    assert np.all(y[20:30, 1] == 1)  # chunk 2 (cpu:0's) was finished by cpu:1
    assert np.all(y[40:50, 1] == 0)  # cpu:0 kept its later chunks
    assert sched.health == {"cpu:0": True, "cpu:1": True}


def test_out_of_memory_above_a_size_splits_until_chunks_fit(caplog):
    caplog.set_level(logging.WARNING, logger="liam_gpu.alda")
    sizes = []

    def small_memory(device, chunk):
        if device == "cpu:1":
            sizes.append(chunk.size)
            if chunk.size > 4:
                raise MemoryError(f"{chunk.size} items do not fit")

    x = np.arange(80.0).reshape(-1, 1) + 1 / 7
    fn = CountingFn()
    split = Scheduler(CPUS[2], chunk_size=16, fault_injector=small_memory).map(fn, x)
    whole = Scheduler(CPUS[1], chunk_size=16).map(row_tag, x)
    assert np.array_equal(split[:, 0], whole[:, 0])  # a row-separable function: same bits
    assert max(s for s in sizes if s <= 4) == 4 and 16 in sizes and 8 in sizes
    # cpu:0 computes chunks 0, 2, 4 whole; cpu:1 computes chunks 1 and 3 in quarters.
    assert sum(fn.calls.values()) == 3 + 2 * 4 and set(fn.calls.values()) == {1}
    assert any("ran out of memory on cpu:1" in r.getMessage() for r in caplog.records)


def test_out_of_memory_split_of_a_transform_stays_within_rounding(rng):
    def tight(device, chunk):
        if chunk.size > 8:
            raise MemoryError("tight")

    x = rng.standard_normal((64, 32))
    w = rng.standard_normal((16, 32))
    got = transform_matrix(x, w, device=Scheduler(CPUS[2], chunk_size=32, fault_injector=tight))
    want = transform_matrix(x, w, device="cpu")
    tol = 8 * 32 * np.finfo(np.float64).eps * (np.abs(x) @ np.abs(w).T)
    assert np.all(np.abs(got - want) <= tol)


def test_every_device_failing_is_finished_by_the_cpu_fallback(caplog):
    caplog.set_level(logging.WARNING, logger="liam_gpu.alda")

    def all_broken(device, chunk):
        if device != "cpu:fallback":
            raise DeviceFault(f"{device} down")

    sched = Scheduler(CPUS[3], chunk_size=4, max_faults=2, fault_injector=all_broken)
    x = np.arange(48.0).reshape(-1, 1)
    fn = CountingFn()
    y = sched.map(fn, x)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))
    assert np.all(y[:, 1] == -1)
    assert set(fn.calls.values()) == {1} and len(fn.calls) == 12
    assert not any(sched.health.values())
    assert any("CPU fallback" in r.getMessage() for r in caplog.records)
    # Unhealthy devices stay out: the next map goes to the fallback at once.
    assert {d for _, d in sched.plan(x)} == {"cpu:fallback"}
    np.testing.assert_array_equal(sched.map(row_tag, x)[:, 1], -1)


def test_every_device_failing_without_fallback_names_the_chunks():
    def all_broken(device, chunk):
        raise DeviceFault(f"{device} down")

    sched = Scheduler(CPUS[2], chunk_size=4, cpu_fallback=False, max_faults=2, fault_injector=all_broken)
    with pytest.raises(AllDevicesFailed) as info:
        sched.map(row_tag, np.arange(40.0).reshape(-1, 1))
    err = info.value
    assert [(c.start, c.stop) for c in err.chunks] == [(i, i + 4) for i in range(0, 40, 4)]
    assert "chunk 0 (items 0:4)" in str(err) and "chunk 9 (items 36:40)" in str(err)
    assert "cpu_fallback=True" in str(err)
    assert err.faults == {"cpu:0": 2, "cpu:1": 2}
    assert isinstance(err.__cause__, DeviceFault)
    assert {d for _, d in sched.plan(np.zeros(8))} == {None}
    with pytest.raises(AllDevicesFailed, match="2 chunk"):
        sched.map(row_tag, np.zeros((8, 1)))


def test_a_chunk_that_faults_everywhere_goes_to_the_fallback_or_is_named():
    def poison(device, chunk):
        if chunk.index == 3 and device != "cpu:fallback":
            raise DeviceFault("this chunk breaks every device")

    x = np.arange(60.0).reshape(-1, 1)
    y = Scheduler(CPUS[3], chunk_size=6, max_faults=3, fault_injector=poison).map(row_tag, x)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))
    assert np.all(y[18:24, 1] == -1)
    sched = Scheduler(CPUS[3], chunk_size=6, cpu_fallback=False, max_faults=3, fault_injector=poison)
    with pytest.raises(AllDevicesFailed, match=r"chunk 3 \(items 18:24\)") as info:
        sched.map(row_tag, x)
    assert [c.index for c in info.value.chunks] == [3]
    assert all(sched.health.values())  # successes in between: no device faulted 3 times in a row


def test_cuda_errors_count_as_device_faults_and_allocation_failures_as_oom():
    assert classify(DeviceFault("x")) == "device"
    assert classify(MemoryError()) == "oom"
    assert classify(ValueError()) == "user"
    assert classify(KeyboardInterrupt()) == "cancel"
    cupy = pytest.importorskip("cupy")
    from cupy_backends.cuda.api import runtime

    assert classify(cupy.cuda.memory.OutOfMemoryError(1 << 30, 0, 0)) == "oom"
    assert classify(runtime.CUDARuntimeError(700)) == "device"  # cudaErrorIllegalAddress
    assert classify(runtime.CUDARuntimeError(2)) == "oom"  # cudaErrorMemoryAllocation


# -- errors from the function and cancellation -------------------------------------------------
def test_function_error_propagates_with_the_chunk_index():
    def picky(chunk):
        if chunk[0, 0] == 30:
            raise ValueError("no thirties")
        return chunk

    with pytest.raises(ChunkError, match=r"chunk 3 \(items 30:40\) on device cpu:0") as info:
        Scheduler(CPUS[3], chunk_size=10).map(picky, np.arange(60.0).reshape(-1, 1))
    assert info.value.chunk == Chunk(3, 30, 40)
    assert isinstance(info.value.__cause__, ValueError)


def test_keyboard_interrupt_raised_in_a_chunk_stops_every_worker():
    done = CountingFn(lambda c: (time.sleep(0.002), c)[1])

    def interrupting(chunk):
        if chunk[0, 0] == 50:
            raise KeyboardInterrupt
        return done(chunk)

    with pytest.raises(KeyboardInterrupt):
        Scheduler(CPUS[3], chunk_size=1).map(interrupting, np.arange(2000.0).reshape(-1, 1))
    assert alda_threads() == []
    assert sum(done.calls.values()) < 2000


def test_keyboard_interrupt_in_the_waiting_caller_stops_every_worker_promptly():
    done = CountingFn(lambda c: (time.sleep(0.005), c)[1])
    sent = threading.Event()

    def ctrl_c_at_chunk_20(chunk):
        if chunk[0, 0] == 20 and not sent.is_set():
            sent.set()
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread
        return done(chunk)

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        Scheduler(CPUS[2], chunk_size=1).map(ctrl_c_at_chunk_20, np.arange(1000.0).reshape(-1, 1))
    elapsed = time.perf_counter() - start
    assert sent.is_set()
    assert alda_threads() == []
    # 1000 chunks of 5 ms on 2 workers would take 2.5 s; stopping takes a poll period and one chunk.
    assert elapsed < 2.0 and sum(done.calls.values()) < 300


# -- progress, logging, arguments ----------------------------------------------------------------
def test_progress_bar_counts_items(capsys):
    Scheduler(CPUS[2], chunk_size=7).map(lambda c: c, np.zeros((50, 1)), progress=True)
    err = capsys.readouterr().err
    assert "liam_gpu" in err and "50/50" in err


def test_logger_records_assignment_and_throughput(caplog):
    caplog.set_level(logging.DEBUG, logger="liam_gpu.alda")
    sched = Scheduler(CPUS[2], chunk_size=5)
    sched.map(lambda c: c, np.zeros((20, 1)))
    messages = [r.getMessage() for r in caplog.records if r.name == "liam_gpu.alda"]
    assert "assign cpu:0 <- chunks 0, 2" in messages and "assign cpu:1 <- chunks 1, 3" in messages
    assert any(m.startswith("throughput cpu:0: 2 chunks, 10 items") for m in messages)
    assert sched.last_stats["cpu:1"].items == 10


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"devices": ["gpu:0"]}, ValueError, "not a scheduler device"),
        ({"devices": ["cpu:0", "cpu"]}, ValueError, "listed twice"),
        ({"devices": []}, ValueError, "empty"),
        ({"devices": 3}, TypeError, "devices must be"),
        ({"devices": ["cuda:99"]}, ValueError, "not available"),
        ({"devices": ["cpu:0"], "chunk_size": 0}, ValueError, "chunk_size"),
        ({"devices": ["cpu:0"], "chunk_size": 2.5}, TypeError, "chunk_size"),
        ({"devices": ["cpu:0"], "max_faults": 0}, ValueError, "max_faults"),
        ({"devices": ["cpu:0"], "fault_injector": 1}, TypeError, "fault_injector"),
        ({"devices": ["cpu:0"], "cpu_fallback": "yes"}, TypeError, "cpu_fallback"),
    ],
)
def test_bad_scheduler_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        Scheduler(**kwargs)


def test_bad_map_arguments_are_named():
    sched = Scheduler(CPUS[1])
    with pytest.raises(TypeError, match="fn must be callable"):
        sched.map(None, np.zeros(3))
    with pytest.raises(TypeError, match="batch must be"):
        sched.map(lambda c: c, 42)
    with pytest.raises(ValueError, match="0-d"):
        sched.map(lambda c: c, np.float64(1.0) * np.ones(()))
    with pytest.raises(ValueError, match="one length"):
        sched.map(lambda a, b: a, (np.zeros(3), np.zeros(4)))


def test_devices_all_without_a_gpu_is_one_virtual_cpu():
    from liam_gpu.backends import cuda_device_count

    if cuda_device_count():
        assert Scheduler("all").devices == tuple(f"cuda:{i}" for i in range(cuda_device_count()))
    else:
        assert Scheduler("all").devices == ("cpu:0",)


# -- the pipelined worker loop (the CUDA transport's schedule, run on the host) ---------------------
class PipelinedHostTransport(HostTransport):
    """The host transport with the CUDA transport's overlap schedule, recording its stages."""

    prefetch = True
    lag = 1

    def __init__(self, *args, log, fail_compute_of=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log
        self.fail_compute_of = fail_compute_of

    def stage_in(self, chunk):
        self.log.append(("in", chunk.index))
        return super().stage_in(chunk)

    def compute(self, slot):
        self.log.append(("compute", slot.chunk.index))
        if slot.chunk.index == self.fail_compute_of:
            self.fail_compute_of = None
            raise DeviceFault("fault while chunks are in flight")
        super().compute(slot)

    def finish(self, slot):
        self.log.append(("finish", slot.chunk.index))
        return super().finish(slot)


class PipelinedRun(Run):
    def __init__(self, *args, fail_compute_of=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.logs = {}
        self.fail_compute_of = fail_compute_of

    def _transport(self, device):
        log = self.logs.setdefault(device, [])
        return PipelinedHostTransport(
            self.batch, self._invoke(device), log=log, fail_compute_of=self.fail_compute_of
        )


def _pipelined(devices, x, chunk_size, **kwargs):
    sched = Scheduler(devices, chunk_size=chunk_size)
    batch = Batch(x)
    run = PipelinedRun(sched, batch, row_tag, chunking.plan(batch.length, chunk_size), **kwargs)
    return chunking.combine(run.execute(False)), run


def test_pipeline_copies_next_chunk_in_before_computing_and_finishes_one_behind():
    x = np.arange(50.0).reshape(-1, 1)
    y, run = _pipelined(["cpu:0"], x, 5)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))
    log = run.logs["cpu:0"]
    position = {event: i for i, event in enumerate(log)}
    for k in range(10):
        if k + 1 < 10:
            assert position[("in", k + 1)] < position[("compute", k)]
        if k >= 1:
            assert position[("compute", k)] < position[("finish", k - 1)]
    assert [e for e in log if e[0] == "finish"] == [("finish", k) for k in range(10)]


def test_pipeline_fault_hands_back_chunks_in_flight_without_computing_them_twice():
    x = np.arange(60.0).reshape(-1, 1)
    y, run = _pipelined(["cpu:0", "cpu:1"], x, 5, fail_compute_of=4)
    np.testing.assert_array_equal(y[:, 0], expected_rows(x))
    finished = Counter(i for log in run.logs.values() for kind, i in log if kind == "finish")
    assert finished == Counter(range(12))  # every chunk completed exactly once
    assert any(("compute", 4) in log for log in run.logs.values())


# -- CUDA workers (run on a lent GPU by bench/device_check.sh) ---------------------------------------
@pytest.mark.gpu
def test_cuda_worker_gives_the_bits_of_direct_per_chunk_calls(rng):
    import cupy

    x = rng.standard_normal((1000, 64)).astype(np.float32)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    sched = Scheduler(["cuda:0"], chunk_size=100)
    want = np.concatenate(
        [transform_matrix(x[i:i + 100], w, b, "gelu", device="cuda:0") for i in range(0, 1000, 100)]
    )
    assert np.array_equal(transform_matrix(x, w, b, "gelu", device=sched), want)
    import cupyx

    x_pinned = cupyx.empty_pinned(x.shape, x.dtype)  # page-locked: copied from without staging
    x_pinned[...] = x
    assert np.array_equal(transform_matrix(x_pinned, w, b, "gelu", device=sched), want)
    on_gpu = transform_matrix(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), "gelu", device=sched)
    assert isinstance(on_gpu, cupy.ndarray) and on_gpu.device.id == 0
    assert np.array_equal(on_gpu.get(), want)


@pytest.mark.gpu
def test_cuda_and_cpu_workers_share_a_batch_and_cuda_faults_fall_back():
    import cupy

    x = np.arange(300.0).reshape(-1, 3)

    def twice_plus_one(chunk):
        assert isinstance(chunk, cupy.ndarray) == current_device().startswith("cuda")
        return chunk * 2 + 1

    for batch in (x, cupy.asarray(x)):
        y = Scheduler(["cuda:0", "cpu:0"], chunk_size=7).map(twice_plus_one, batch)
        assert type(y) is type(batch)
        np.testing.assert_array_equal(cupy.asnumpy(y), x * 2 + 1)

    def broken_gpu(device, chunk):
        if device == "cuda:0":
            raise DeviceFault("simulated Xid")

    sched = Scheduler(["cuda:0"], chunk_size=7, fault_injector=broken_gpu)
    np.testing.assert_array_equal(sched.map(twice_plus_one, x), x * 2 + 1)
    assert sched.health == {"cuda:0": False}


@pytest.mark.gpu
def test_cuda_out_of_memory_splits_in_the_pipeline():
    def small_gpu(device, chunk):
        if chunk.size > 8:
            raise MemoryError("simulated cudaErrorMemoryAllocation")

    x = np.arange(640.0).reshape(-1, 2)
    y = Scheduler(["cuda:0"], chunk_size=32, fault_injector=small_gpu).map(lambda c: c * 3.0, x)
    np.testing.assert_array_equal(y, x * 3.0)


@pytest.mark.gpu
def test_cupy_batch_is_copied_peer_to_peer_to_other_gpus():
    import cupy

    from liam_gpu.backends import cuda_device_count

    if cuda_device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x = cupy.arange(600.0).reshape(-1, 3)
    y = Scheduler(["cuda:0", "cuda:1"], chunk_size=9).map(lambda c: c * 2, x)
    assert y.device.id == 0
    np.testing.assert_array_equal(y.get(), cupy.asnumpy(x) * 2)


@pytest.mark.parametrize("dtype, widened", [(np.float16, 2), (np.int8, 8)])
def test_narrow_inputs_are_cast_per_chunk_not_widened_whole_in_the_callers_memory(dtype, widened):
    """A float16 or integer input is cast chunk by chunk on the workers (and crosses to a GPU at its
    own size): the call's peak host memory stays below one widened copy of the input."""
    import tracemalloc

    sched = Scheduler(["cpu:0", "cpu:1"], chunk_size=4096)
    x = (np.arange(200_000 * 64) % 7).astype(dtype).reshape(200_000, 64)
    w = np.ones((8, 64), np.float32)
    tracemalloc.start()
    try:
        y = transform_matrix(x, w, device=sched)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(y, x.astype(y.dtype) @ w.T.astype(y.dtype))
    # The output (200000 x 8) and a few chunks in flight, far below the widened copy.
    assert peak < widened * x.nbytes / 2, (peak, x.nbytes)
