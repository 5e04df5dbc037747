"""The transform kernels through the launch layer: on the emulator, and on a GPU when one is present.

Every tile configuration on its vector and scalar paths, the epilogue-only
kernel, the forced "blas+epilogue" path, grids larger than the hardware
limits, 64-bit sizes, alignment detection, and the planning table.  Results are
compared with a float64 numpy reference within the dtype-derived bound of
``tests/test_transform.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from liam_gpu.activations import ACTIVATIONS
from liam_gpu.backends import emulator_available
from liam_gpu.launch import transform as T
from liam_gpu.launch.runtime import Runtime

from test_transform import assert_close  # tests/ is on sys.path (pytest prepend mode)

DTYPES = ["float32", "float64", "float16"]
CONFIG_NAMES = ["large", "medium", "skinny", "short"]

RUNTIMES = [
    pytest.param("emulator", id="emulator",
                 marks=pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=RUNTIMES, scope="module")
def rt(request):
    """The runtime that executes the launches: the emulator, or CUDA device 0."""
    from liam_gpu.launch.runtime import cuda_runtime, emulator_runtime

    return emulator_runtime() if request.param == "emulator" else cuda_runtime(0)


def aligned_empty(rt, shape, dtype, *, offset_bytes=0):
    """A C-contiguous device array starting ``offset_bytes`` past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = rt.xp.empty(count * dtype.itemsize + 64 + offset_bytes, np.uint8)
    start = (-rt.data_ptr(raw)) % 64 + offset_bytes
    return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def filled(rt, rng, shape, dtype, *, offset_bytes=0, scale=1.0):
    a = aligned_empty(rt, shape, dtype, offset_bytes=offset_bytes)
    a[...] = rt.xp.asarray((rng.standard_normal(shape) * scale).astype(dtype))
    return a


def poisoned(rt, shape, dtype):
    out = aligned_empty(rt, shape, dtype)
    out[...] = np.nan
    return out


def host(a):
    """A device array as numpy (a no-op on the emulator)."""
    return a if a is None or isinstance(a, np.ndarray) else a.get()


def close(out, x, w, b, activation, dtype):
    assert_close(host(out), host(x), host(w), host(b), activation, dtype)


# --------------------------------------------------------------------------- every configuration


@pytest.mark.parametrize("vec", [True, False], ids=["vec", "scalar"])
@pytest.mark.parametrize("config", CONFIG_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_config_and_load_path(rt, rng, dtype, config, vec):
    c = T.TILE_CONFIGS[dtype][config]
    width = T.VECTOR_WIDTH[dtype]
    # Ragged against the tile in every direction; two and a bit k-tiles deep
    # (double-buffer swaps both ways).  d_in is a multiple of the vector width,
    # so only the misaligned start forces the scalar path.
    n, d_out = c.bm + 3, c.bn + 5
    d_in = 2 * c.bk + width
    offset = 0 if vec else np.dtype(dtype).itemsize
    x = filled(rt, rng, (n, d_in), dtype, offset_bytes=offset)
    w = filled(rt, rng, (d_out, d_in), dtype, scale=d_in ** -0.5)
    b = filled(rt, rng, (d_out,), dtype)
    out = poisoned(rt, (n, d_out), dtype)
    T.linear(rt, x, w, b, 2, out, config=config)
    launch = T.last_launch()
    assert (launch.path, launch.config, launch.vec) == ("kernel", config, vec)
    assert launch.block == (c.threads, 1, 1)
    assert launch.grid == ((-(-n // c.bm)) * (-(-d_out // c.bn)), 1, 1)  # one block per tile
    close(out, x, w, b, "gelu", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_d_in_not_a_multiple_of_the_vector_width_is_scalar(rt, rng, dtype):
    width = T.VECTOR_WIDTH[dtype]
    n, d_in, d_out = 20, 3 * width + 1, 18
    x, w = filled(rt, rng, (n, d_in), dtype), filled(rt, rng, (d_out, d_in), dtype, scale=0.3)
    out = poisoned(rt, (n, d_out), dtype)
    T.linear(rt, x, w, None, 0, out, config="medium")
    assert T.last_launch().vec is False
    close(out, x, w, None, None, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_group_stores_and_their_fallback(rt, rng, dtype):
    group = T.GROUP_WIDTH[dtype]
    for d_out, offset, want in ((4 * group, 0, True), (4 * group + 1, 0, False),
                                (4 * group, np.dtype(dtype).itemsize, False)):
        x, w = filled(rt, rng, (10, 16), dtype), filled(rt, rng, (d_out, 16), dtype, scale=0.25)
        out = aligned_empty(rt, (10, d_out), dtype, offset_bytes=offset)
        out[...] = np.nan
        T.linear(rt, x, w, None, 6, out, config="skinny")
        assert T.last_launch().vec_out is want
        close(out, x, w, None, "tanh", dtype)


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_batched_each_item_its_own_weights(rt, rng, config):
    batch, n, d_in, d_out = 3, 21, 12, 19
    x = filled(rt, rng, (batch, n, d_in), "float32")
    w = filled(rt, rng, (batch, d_out, d_in), "float32", scale=0.3)
    b = filled(rt, rng, (batch, d_out), "float32")
    out = poisoned(rt, (batch, n, d_out), "float32")
    T.batched_linear(rt, x, w, b, 4, out, config=config)
    c = T.TILE_CONFIGS["float32"][config]
    assert T.last_launch().grid == (batch * (-(-n // c.bm)) * (-(-d_out // c.bn)), 1, 1)
    close(out, x, w, b, "silu", np.float32)


def test_d_in_of_one_and_of_many_tiles(rt, rng):
    for d_in in (1, 67):
        x, w = filled(rt, rng, (5, d_in), "float64"), filled(rt, rng, (7, d_in), "float64")
        out = poisoned(rt, (5, 7), "float64")
        T.linear(rt, x, w, None, 0, out)
        np.testing.assert_allclose(host(out), host(x) @ host(w).T, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------- grids past the limits


def test_grid_larger_than_the_limits_loops_inside_the_kernel(rt, rng, monkeypatch):
    # A lowered limit stands in for 2**31 - 1: the kernel strides over the
    # tiles (of every batch item) that the grid does not cover.
    monkeypatch.setattr(T, "MAX_GRID", (2, 65535, 65535))
    batch, n, d_in, d_out = 3, 5 * 16 + 1, 8, 3 * 64 + 7
    x = filled(rt, rng, (batch, n, d_in), "float32")
    w = filled(rt, rng, (batch, d_out, d_in), "float32", scale=0.3)
    b = filled(rt, rng, (batch, d_out), "float32")
    out = poisoned(rt, (batch, n, d_out), "float32")
    T.batched_linear(rt, x, w, b, 1, out, config="short")
    assert T.last_launch().grid == (2, 1, 1)
    close(out, x, w, b, "relu", np.float32)


def test_epilogue_grid_is_capped(rt, rng, monkeypatch):
    monkeypatch.setattr(T, "MAX_GRID", (3, 65535, 65535))
    y = filled(rt, rng, (200, 40), "float32")  # 2000 16-byte steps: 8 blocks of 256 wanted
    want = np.maximum(host(y), 0)
    launch = T.epilogue(rt, y, None, 1)
    assert launch.grid == (3, 1, 1)
    np.testing.assert_array_equal(host(y), want)


# --------------------------------------------------------------------------- epilogue-only kernel


@pytest.mark.parametrize("activation", range(len(ACTIVATIONS)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_kernel(rt, rng, dtype, activation):
    name = [k for k, v in ACTIVATIONS.items() if v == activation][0]
    width = T.VECTOR_WIDTH[dtype]
    for d_out, vec in ((4 * width, True), (4 * width + 1, False)):
        y = filled(rt, rng, (9, d_out), dtype, scale=2.0)
        b = filled(rt, rng, (d_out,), dtype)
        ref = activations_ref(host(y), host(b)[None, :], name)
        launch = T.epilogue(rt, y, b, activation)
        assert launch.vec is vec
        check_epilogue(y, ref, dtype)


def test_activation_index_outside_the_list_takes_the_first_functor(rt, rng):
    # lg_act::dispatch: one branch per functor of activations.TABLE, and any
    # other index takes the first (Identity), as the old switch's default did.
    y = filled(rt, rng, (5, 8), "float32")
    ref = host(y).astype(np.float64)
    T.epilogue(rt, y, None, len(ACTIVATIONS))
    check_epilogue(y, ref, "float32")


def test_epilogue_batched_bias_rows(rt, rng):
    y = filled(rt, rng, (3, 5, 8), "float64")
    b = filled(rt, rng, (3, 8), "float64")
    ref = activations_ref(host(y), host(b)[:, None, :], "sigmoid")
    T.epilogue(rt, y, b, ACTIVATIONS["sigmoid"])
    check_epilogue(y, ref, "float64")


def test_epilogue_without_bias_is_activation_only(rt, rng):
    y = filled(rt, rng, (7, 6), "float32")
    ref = activations_ref(host(y), 0.0, "gelu")
    T.epilogue(rt, y, None, ACTIVATIONS["gelu"])
    check_epilogue(y, ref, "float32")


def activations_ref(y, b, name):
    from liam_gpu import activations

    return activations.reference(np.asarray(y, np.float64) + np.asarray(b, np.float64), name)


def check_epilogue(got, ref, dtype):
    dtype = np.dtype(dtype)
    eps_acc = np.finfo(np.float64 if dtype == np.float64 else np.float32).eps
    tol = 16 * eps_acc * (np.abs(ref) + 1) + np.finfo(dtype).eps * np.abs(ref) + np.finfo(dtype).smallest_subnormal
    assert np.all(np.abs(host(got).astype(np.float64) - ref) <= tol)


# --------------------------------------------------------------------------- the blas+epilogue path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forced_blas_path(rt, rng, dtype):
    x, w = filled(rt, rng, (13, 10), dtype), filled(rt, rng, (11, 10), dtype, scale=0.3)
    b = filled(rt, rng, (11,), dtype)
    out = poisoned(rt, (13, 11), dtype)
    T.linear(rt, x, w, b, 3, out, path="blas+epilogue")
    assert T.last_launch().path == "blas+epilogue"
    close(out, x, w, b, "gelu_tanh", dtype)
    xb, wb = filled(rt, rng, (2, 4, 10), dtype), filled(rt, rng, (2, 6, 10), dtype, scale=0.3)
    bb = filled(rt, rng, (2, 6), dtype)
    outb = poisoned(rt, (2, 4, 6), dtype)
    T.batched_linear(rt, xb, wb, bb, 5, outb, path="blas+epilogue")
    close(outb, xb, wb, bb, "sigmoid", dtype)


# --------------------------------------------------------------------------- float16 rounding


@pytest.mark.parametrize("d_out", [1, 4], ids=["scalar-store", "group-store"])
def test_float16_rounding_is_bit_exact(rt, rng, d_out):
    # out = half(hi + lo) with w = ones: hi and lo are halves at most 13 binades
    # apart, so their float32 sum is exact and only the kernel's float -> half
    # conversion rounds.  It must match numpy's round-to-nearest-even bit for
    # bit: ties (lo = half an ulp of hi), subnormals, overflow to inf, zeros.
    hi = rng.integers(0, 0x7c00, size=3000, dtype=np.uint16).view(np.float16).astype(np.float32)
    hi[:4] = [65504.0, 65504.0, 1.0, 1.0 + 2.0 ** -10]
    ratio = rng.choice(np.float32([2.0 ** -11, 2.0 ** -12, 3 * 2.0 ** -12, 2.0 ** -10, 0.7 * 2.0 ** -10]),
                       size=hi.size)
    lo = (hi * ratio * rng.choice(np.float32([-1, 1]), size=hi.size)).astype(np.float16).astype(np.float32)
    lo[:4] = [16.0, 15.0, 2.0 ** -11, 2.0 ** -11]  # -> inf, 65504, tie to even down, tie to even up
    sign = rng.choice(np.float32([-1, 1]), size=hi.size)
    x = aligned_empty(rt, (hi.size, 2), np.float16)
    x[...] = rt.xp.asarray(np.stack([sign * hi, sign * lo], axis=1).astype(np.float16))
    w = aligned_empty(rt, (d_out, 2), np.float16)
    w[...] = 1
    out = poisoned(rt, (hi.size, d_out), np.float16)
    T.linear(rt, x, w, None, 0, out, config="medium")
    assert T.last_launch().vec_out is (d_out == 4)
    xh, out = host(x), host(out)
    exact = xh[:, :1].astype(np.float32) + xh[:, 1:].astype(np.float32)
    with np.errstate(over="ignore"):  # the first row overflows to inf on purpose
        want = np.broadcast_to(exact.astype(np.float16), out.shape)
    np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16))
    assert np.isinf(out[0, 0]) and abs(out[1, 0]) == 65504
    assert abs(out[2, 0]) == 1 and abs(out[3, 0]) == 1 + 2.0 ** -9


# --------------------------------------------------------------------------- 64-bit sizes and argument checks


@dataclass
class _Flags:
    """CuPy's flags, which the launch layer sees on a GPU: no ``writeable`` (device memory always is)."""

    c_contiguous: bool = True
    f_contiguous: bool = False
    owndata: bool = True


@dataclass
class FakeArray:
    """Shape/dtype/pointer of an array too large to allocate here, with CuPy's ``flags``."""

    shape: tuple
    dtype: np.dtype
    ptr: int

    def __post_init__(self):
        self.dtype = np.dtype(self.dtype)
        self.flags = _Flags()
        self.ndim = len(self.shape)
        self.itemsize = self.dtype.itemsize
        self.size = int(np.prod(self.shape, dtype=object))
        self.nbytes = self.size * self.itemsize


class RecordingRuntime(Runtime):
    """A runtime that records launches instead of running them."""

    kind = "recording"
    sm_count = 132

    def __init__(self):
        super().__init__()
        self.launches = []

    def function(self, family, name_expression):
        assert name_expression in family.name_expressions

        def launch(grid, block, args, shared_mem=0):
            self.launches.append((name_expression, grid, block, args))

        return launch

    def data_ptr(self, a):
        return a.ptr


def test_sizes_past_2_to_the_31_are_passed_as_int64():
    rt = RecordingRuntime()
    n, d_in, d_out = 2**33 + 3, 64, 70000 * 32
    x = FakeArray((n, d_in), np.float32, 1 << 40)
    w = FakeArray((d_out, d_in), np.float32, 1 << 41)
    out = FakeArray((n, d_out), np.float32, 1 << 42)
    T.linear(rt, x, w, None, 1, out, config="skinny")
    name, grid, block, args = rt.launches[-1]
    assert name == T.linear_entry("float32", T.TILE_CONFIGS["float32"]["skinny"], True)
    scalars = args[4:]
    assert all(isinstance(a, np.int64) for a in scalars)
    assert [int(a) for a in scalars[:4]] == [1, n, d_in, d_out]
    # 2**33 / 128 row tiles x 70000 column tiles: far past grid.x, looped over.
    assert grid == (2**31 - 1, 1, 1)


def test_d_in_past_32_bits_is_refused():
    rt = RecordingRuntime()
    d_in = 2**31
    x = FakeArray((2, d_in), np.float32, 1 << 40)
    w = FakeArray((3, d_in), np.float32, 1 << 45)
    out = FakeArray((2, 3), np.float32, 1 << 46)
    with pytest.raises(ValueError, match="d_in=2147483648 is too large"):
        T.linear(rt, x, w, None, 0, out)


def test_alignment_detection():
    rt = RecordingRuntime()
    x = FakeArray((4, 8), np.float32, 4096 + 4)
    w = FakeArray((4, 8), np.float32, 8192)
    out = FakeArray((4, 4), np.float32, 16384)
    assert T._vector_flags(rt, "float32", x, w, out) == (False, True)
    x.ptr = 4096
    assert T._vector_flags(rt, "float32", x, w, out) == (True, True)
    out.ptr = 16384 + 8
    assert T._vector_flags(rt, "float32", x, w, out) == (True, False)
    # float16 groups of 4 need 8-byte alignment of out, 16 bytes for loads.
    xh = FakeArray((4, 16), np.float16, 4096 + 8)
    wh = FakeArray((4, 16), np.float16, 8192)
    oh = FakeArray((4, 4), np.float16, 16384 + 8)
    assert T._vector_flags(rt, "float16", xh, wh, oh) == (False, True)


def test_bad_launch_arguments(rng):
    # The launch layer checks what the kernel itself needs: one storage dtype,
    # buffers that fit the sizes it passes, contiguity, no overlap, and its own
    # options.  Shape semantics, activation names and a read-only out are the
    # public edge's (tests/test_transform.py, tests/test_bad_input.py).
    rt = RecordingRuntime()
    x = FakeArray((4, 8), np.float32, 0)
    w = FakeArray((3, 8), np.float32, 4096)
    out = FakeArray((4, 3), np.float32, 8192)
    with pytest.raises(TypeError, match="w has dtype float64"):
        T.linear(rt, x, FakeArray((3, 8), np.float64, 4096), None, 0, out)
    with pytest.raises(TypeError, match="float32, float64 or float16"):
        T.linear(rt, FakeArray((4, 8), np.int32, 0), w, None, 0, out)
    with pytest.raises(ValueError, match=r"w of shape \(3, 9\) does not fit .*d_in=8, d_out=3"):
        T.linear(rt, x, FakeArray((3, 9), np.float32, 4096), None, 0, out)
    with pytest.raises(ValueError, match=r"out of shape \(4, 4\) does not fit .*n=4, d_in=8, d_out=3"):
        T.linear(rt, x, w, None, 0, FakeArray((4, 4), np.float32, 8192))
    with pytest.raises(ValueError, match=r"bias of shape \(4,\) does not fit"):
        T.linear(rt, x, w, FakeArray((4,), np.float32, 12288), 0, out)
    with pytest.raises(ValueError, match="out overlaps x"):
        T.linear(rt, x, w, None, 0, FakeArray((4, 3), np.float32, 16))
    with pytest.raises(ValueError, match="config='huge'"):
        T.linear(rt, x, w, None, 0, out, config="huge")
    with pytest.raises(ValueError, match="path='cudnn'"):
        T.linear(rt, x, w, None, 0, out, path="cudnn")
    strided = FakeArray((4, 8), np.float32, 0)
    strided.flags.c_contiguous = False
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        T.linear(rt, strided, w, None, 0, out)
    with pytest.raises(ValueError, match="x must be 3-D"):
        T.batched_linear(rt, x, w, None, 0, out)
    assert rt.launches == []


# --------------------------------------------------------------------------- planning


class _FakeCuda(RecordingRuntime):
    kind = "cuda"
    sm_count = 132


def test_plan_table():
    cuda, emu = _FakeCuda(), RecordingRuntime()
    # The benchmark shapes.
    assert T.plan(cuda, 4096, 1024, 1024, np.float32) == T.Plan("blas+epilogue", None)
    assert T.plan(cuda, 65536, 256, 256, np.float32) == T.Plan("kernel", "large")
    assert T.plan(cuda, 256, 4096, 4096, np.float32) == T.Plan("kernel", "medium")
    assert T.plan(cuda, 64, 64, 64, np.float32, batch=1024) == T.Plan("kernel", "medium")
    # Few rows, narrow outputs, half precision on tensor cores.
    assert T.plan(cuda, 1, 4096, 4096, np.float32) == T.Plan("kernel", "short")
    assert T.plan(cuda, 100000, 256, 8, np.float32) == T.Plan("kernel", "skinny")
    assert T.plan(cuda, 512, 512, 512, np.float16).path == "blas+epilogue"
    # Batched calls and non-CUDA runtimes always take the fused kernel.
    assert T.plan(cuda, 4096, 1024, 1024, np.float32, batch=2).path == "kernel"
    assert T.plan(emu, 4096, 1024, 1024, np.float32) == T.Plan("kernel", "large")
    # Cached: the same object for the same question.
    assert T.plan(cuda, 300, 30, 30, np.float64) is T.plan(cuda, 300, 30, 30, np.float64)


def test_every_choice_is_a_registered_entry_point():
    for dtype, configs in T.TILE_CONFIGS.items():
        for config in configs.values():
            for vec in (True, False):
                assert T.linear_entry(dtype, config, vec) in T.FAMILY.name_expressions
        for vec in (True, False):
            # Only dtypes with a vendor-GEMM path need the epilogue-only kernel.
            registered = T.epilogue_entry(dtype, vec) in T.FAMILY.name_expressions
            assert registered is (dtype in T.BLAS_RULES)


def test_shared_memory_formula_matches_the_budget():
    # The budget is the formula; the NVRTC check compares it with ptxas.
    for dtype, configs in T.TILE_CONFIGS.items():
        for config in configs.values():
            budget = T.FAMILY.budget(T.linear_entry(dtype, config, True))
            assert budget.max_shared_bytes == config.shared_bytes(8 if dtype == "float64" else 4)
            assert budget.max_shared_bytes <= 48 * 1024
            assert budget.sass_require == ("LDG.E.128",)


def test_a_gpu_compiles_one_module_per_dtype_on_first_use():
    # CudaRuntime's grouping, without CuPy: a runtime that records what it loads.
    from liam_gpu.launch.runtime import CudaRuntime

    class Recording(Runtime):
        module_group = CudaRuntime.module_group

        def __init__(self):
            super().__init__()
            self.loads = []

        def _load(self, family, names):
            self.loads.append(names)
            return type("Module", (), {"get_function": staticmethod(lambda name: name)})()

    rt = Recording()
    f32 = T.linear_entry("float32", T.TILE_CONFIGS["float32"]["large"], True)
    assert rt.function(T.FAMILY, f32) == f32
    rt.function(T.FAMILY, T.epilogue_entry("float32", False))
    rt.function(T.FAMILY, T.linear_entry("bfloat16", T.TILE_CONFIGS["bfloat16"]["short"], False))
    # float32: 8 SIMT entries + its TF32 tensor-core entries + 2 epilogue; bfloat16: 8 SIMT + its
    # tensor-core entries (no epilogue).
    assert [len(names) for names in rt.loads] == [10 + len(T.MMA_CONFIGS["float32"]),
                                                  8 + len(T.MMA_CONFIGS["bfloat16"])]
    assert all("<float," in n for n in rt.loads[0]) and all("<lg_bf16," in n for n in rt.loads[1])
    # Together the groups are the family, each entry in exactly one.
    groups = [T.FAMILY.group_members(dtype) for dtype in T.TILE_CONFIGS]
    assert sorted(n for g in groups for n in g) == sorted(T.FAMILY.name_expressions)


def test_the_emulator_builds_the_whole_family_once():
    from liam_gpu.launch.runtime import EmulatorRuntime

    loads = []

    class Counting(EmulatorRuntime):
        def _load(self, family, names):
            loads.append(names)
            return type("Module", (), {"get_function": staticmethod(lambda name: name)})()

    rt = Counting()
    for dtype in T.TILE_CONFIGS:
        rt.function(T.FAMILY, T.linear_entry(dtype, T.TILE_CONFIGS[dtype]["medium"], True))
    assert loads == [T.FAMILY.name_expressions]


def test_the_fake_flags_are_cupys():
    # The fakes stand for device arrays: they must offer no more flags than CuPy's do.
    cupy = pytest.importorskip("cupy")
    flags_class = getattr(getattr(getattr(cupy, "_core", None), "flags", None), "Flags", None)
    if flags_class is None:
        pytest.skip("this CuPy keeps its Flags class elsewhere")
    real = {n for n in dir(flags_class) if not n.startswith("_")}
    fake = set(vars(FakeArray((1,), np.float32, 0).flags))
    assert fake <= real and "writeable" not in real


def test_no_writeable_flag_is_read_outside_arrays_is_writeable():
    # CuPy arrays have no flags.writeable: reading it directly crashes every GPU call that does.
    import pathlib

    import liam_gpu

    root = pathlib.Path(liam_gpu.__file__).parent
    offenders = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if ".flags.writeable" in line and "def is_writeable" not in line and "``" not in line]
    assert offenders == [], offenders
