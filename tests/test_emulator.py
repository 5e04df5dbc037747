"""Tests of the CUDA emulator (liam_gpu.emulator): CUDA C++ run on the CPU.

Every test compiles an inline kernel source.  To keep the file fast (each g++
build takes a second or more), the kernels that need no module of their own are
compiled together into one module (the ``kernels`` fixture); the build cache is
a private temporary folder so the cache test sees a real first build.
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from liam_gpu.emulator import EmulatorError, EmulatorKernel, EmulatorModule, KernelFault
from liam_gpu.emulator import build
from liam_gpu.emulator.build import sanitizer_available

SHUFFLE_SRC = r"""
// Per-warp sums three ways: xor butterfly (all lanes), shfl_down (lane 0), and
// an inclusive shfl_up scan; plus a ballot of the positive inputs.
extern "C" __global__ void warp_ops(const float* x, float* xor_sum, float* down_sum,
                                    float* scan, unsigned* ballot, int n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned lane = threadIdx.x & 31;
    float v = i < n ? x[i] : 0.0f;
    float a = v;
    for (int off = 16; off > 0; off >>= 1) a += __shfl_xor_sync(0xffffffffu, a, off);
    if (__shfl_sync(0xffffffffu, a, 0) != a) __trap();  // every lane holds the same sum
    float d = v;
    for (int off = 16; off > 0; off >>= 1) d += __shfl_down_sync(0xffffffffu, d, off);
    float s = v;
    for (int off = 1; off < 32; off <<= 1) {
        float u = __shfl_up_sync(0xffffffffu, s, off);
        if (lane >= off) s += u;
    }
    unsigned b = __ballot_sync(0xffffffffu, v > 0.5f);
    __syncwarp();
    if (i < n) scan[i] = s;
    if (lane == 0) {
        xor_sum[i / 32] = a;
        down_sum[i / 32] = d;
        ballot[i / 32] = b;
    }
}
"""

GEMM_SRC = r"""
// Tiled GEMM, C = A @ B (row-major), with ragged edges handled by zero padding.
template <typename T, int TILE>
__global__ void __launch_bounds__(TILE * TILE)
gemm(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N, int K) {
    __shared__ T As[TILE][TILE];
    __shared__ T Bs[TILE][TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    T acc = 0;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : T(0);
        Bs[ty][tx] = (col < N && k0 + ty < K) ? B[(k0 + ty) * N + col] : T(0);
        __syncthreads();
        #pragma unroll
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}
"""

DYNSMEM_SRC = r"""
// Reverses each block's chunk through dynamic shared memory; a second view of
// the same buffer (after blockDim.x floats) counts the block's threads.
extern "C" __global__ void reverse_chunks(const float* x, float* y, int n, int* counts) {
    extern __shared__ __align__(16) float buf[];
    int* count = reinterpret_cast<int*>(buf + blockDim.x);
    unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    if (t == 0) *count = 0;
    buf[t] = i < n ? x[i] : -1.0f;
    __syncthreads();
    atomicAdd(count, 1);
    __syncthreads();
    unsigned src = blockDim.x - 1 - t;
    if (i < n) y[i] = buf[src];
    if (t == 0) counts[blockIdx.x] = *count;
}

// Reads dynamic shared memory that nobody wrote: must not be zero (a GPU
// promises nothing, the emulator fills it with 0xFF bytes).
extern "C" __global__ void read_uninitialised(unsigned* out) {
    extern __shared__ unsigned raw[];
    out[threadIdx.x] = raw[threadIdx.x];
}
"""

HISTOGRAM_SRC = r"""
// Histogram privatised in shared memory, then merged with global atomics;
// exercises every atomic flavour the kernels use.
extern "C" __global__ void histogram(const int* x, int n, unsigned* bins, int nbins,
                                     float* fsum, double* dsum, unsigned long long* total,
                                     int* vmax, int* vmin, int* claimed, int* winners) {
    __shared__ unsigned local[64];
    for (int j = threadIdx.x; j < nbins; j += blockDim.x) local[j] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int v = x[i];
        atomicAdd(&local[v % nbins], 1u);
        atomicAdd(fsum, 0.5f);
        atomicAdd(dsum, (double)v);
        atomicAdd(total, 1ull);
        atomicMax(vmax, v);
        atomicMin(vmin, v);
    }
    if (atomicCAS(claimed, 0, 1) == 0) atomicAdd(winners, 1);
    __syncthreads();
    for (int j = threadIdx.x; j < nbins; j += blockDim.x) atomicAdd(&bins[j], local[j]);
}
"""

SCALARS_SRC = r"""
struct Pair { float a; int b; };
// Echoes every scalar parameter so that mis-marshalled bytes show.
extern "C" __global__ void echo(int a, unsigned int b, long long c, unsigned long long d, float e,
                                double f, bool g, signed char h, short k, Pair p,
                                long long* out_i, double* out_f) {
    out_i[0] = a; out_i[1] = b; out_i[2] = c; out_i[3] = (long long)(d >> 1); out_i[4] = g;
    out_i[5] = h; out_i[6] = k; out_i[7] = p.b;
    out_f[0] = e; out_f[1] = f; out_f[2] = p.a;
}

// float -> __half / __nv_bfloat16 bits and back.
extern "C" __global__ void to_16bit(const float* x, unsigned short* h, unsigned short* bf,
                                    float* h_back, float* bf_back, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half hv = __float2half_rn(x[i]);
    __nv_bfloat16 bv = __float2bfloat16_rn(x[i]);
    h[i] = __half_as_ushort(hv);
    bf[i] = __bfloat16_as_ushort(bv);
    h_back[i] = __half2float(hv);
    bf_back[i] = __bfloat162float(bv);
}
"""

FAULTS_SRC = r"""
#include <stdexcept>
// Planted bug: threads past n return before the barrier the others wait at.
extern "C" __global__ void early_exit(float* x, int n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] *= 2.0f;
    __syncthreads();
    x[i] += 1.0f;
}
// Planted bug: half a warp shuffles with a full mask, the other half waits at a barrier.
extern "C" __global__ void half_warp_deadlock(int* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
    else __syncthreads();
}
extern "C" __global__ void trap_in_block_1(int* out) {
    if (blockIdx.x == 1 && threadIdx.x == 3) __trap();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}
extern "C" __global__ void bounded(const int* x, int limit) {
    assert(x[threadIdx.x] < limit);
}
extern "C" __global__ void throws(int* out) {
    if (threadIdx.x == 5) throw std::runtime_error("kernel-side failure");
}
"""


def _run(fn, timeout: float = 60.0):
    """Run ``fn`` in a daemon thread; fail instead of hanging past ``timeout``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["exc"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), f"kernel launch did not return within {timeout} s (hang)"
    if "exc" in box:
        raise box["exc"]
    return box.get("value")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LIAM_GPU_EMU_CACHE", str(tmp_path_factory.mktemp("emulator_cache")))
    mp.delenv("LIAM_GPU_EMU_SANITIZE", raising=False)
    yield
    mp.undo()


ALL_SRC = SHUFFLE_SRC + GEMM_SRC + DYNSMEM_SRC + HISTOGRAM_SRC + SCALARS_SRC + FAULTS_SRC
ALL_NAMES = (
    "warp_ops", "gemm<float, 16>", "gemm<double, 8>", "reverse_chunks", "read_uninitialised", "histogram",
    "echo", "to_16bit", "early_exit", "half_warp_deadlock", "trap_in_block_1", "bounded", "throws",
)


@pytest.fixture(scope="module")
def kernels(_private_cache) -> EmulatorModule:
    return EmulatorModule(ALL_SRC, name_expressions=ALL_NAMES, options=("-std=c++17", "--gpu-architecture=sm_90"))


# ---------------------------------------------------------------------------
def test_warp_shuffle_reduction(kernels):
    rng = np.random.default_rng(0)
    n = 200  # ragged: the last warp is partly past n
    x = rng.random(n, dtype=np.float32)
    nwarps = 256 // 32
    xor_sum, down_sum = np.zeros(nwarps, np.float32), np.zeros(nwarps, np.float32)
    scan, ballot = np.zeros(n, np.float32), np.zeros(nwarps, np.uint32)
    kernels.get_function("warp_ops")((2,), (128,), (x, xor_sum, down_sum, scan, ballot, np.int32(n)))
    padded = np.zeros(256, np.float32)
    padded[:n] = x
    per_warp = padded.reshape(nwarps, 32)
    np.testing.assert_allclose(xor_sum, per_warp.sum(1), rtol=1e-5)
    np.testing.assert_allclose(down_sum, per_warp.sum(1), rtol=1e-5)
    np.testing.assert_allclose(scan, np.cumsum(per_warp, axis=1).ravel()[:n], rtol=1e-5)
    expect = [sum(1 << j for j in range(32) if w[j] > 0.5) for w in per_warp]
    np.testing.assert_array_equal(ballot, np.array(expect, np.uint32))


@pytest.mark.parametrize("name,dtype,tile", [("gemm<float, 16>", np.float32, 16), ("gemm<double, 8>", np.float64, 8)])
@pytest.mark.parametrize("mnk", [(37, 53, 29), (64, 16, 80)])
def test_tiled_gemm_ragged_edges(kernels, name, dtype, tile, mnk):
    m, n, k = mnk
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = np.full((m, n), np.nan, dtype)
    grid = ((n + tile - 1) // tile, (m + tile - 1) // tile)
    kernels.get_function(name)(grid, (tile, tile), (a, b, c, np.int32(m), np.int32(n), np.int32(k)))
    np.testing.assert_allclose(c, a @ b, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


def test_gemm_speed_128_cubed(kernels):
    a = np.ones((128, 128), np.float32)
    c = np.zeros((128, 128), np.float32)
    t0 = time.perf_counter()
    kernels.get_function("gemm<float, 16>")((8, 8), (16, 16), (a, a, c, np.int32(128), np.int32(128), np.int32(128)))
    assert np.all(c == 128)
    assert time.perf_counter() - t0 < 5.0  # ~0.05 s unloaded; generous for busy CI


def test_template_name_expressions(kernels):
    k = kernels.get_function("gemm<float,16>")  # whitespace-insensitive, like the same expression
    assert isinstance(k, EmulatorKernel) and k.name == "gemm<float, 16>"
    assert [p.ctype for p in k.params] == ["float const*", "float const*", "float*", "int", "int", "int"]
    with pytest.raises(KeyError, match="name_expressions"):
        kernels.get_function("gemm<float, 32>")


def test_dynamic_shared_memory(kernels):
    n, block = 300, 128
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    counts = np.zeros(3, np.int32)
    kernels.get_function("reverse_chunks")((3,), (block,), (x, y, np.int32(n), counts), shared_mem=block * 4 + 16)
    padded = np.full(3 * block, -1.0, np.float32)
    padded[:n] = x
    np.testing.assert_array_equal(y, padded.reshape(3, block)[:, ::-1].ravel()[:n])
    np.testing.assert_array_equal(counts, [block] * 3)

    out = np.zeros(32, np.uint32)
    kernels.get_function("read_uninitialised")(1, 32, (out,), shared_mem=128)
    assert np.all(out == 0xFFFFFFFF)


def test_atomics_histogram(kernels):
    rng = np.random.default_rng(2)
    n, nbins = 5000, 37
    x = rng.integers(0, 1000, n).astype(np.int32)
    bins = np.zeros(nbins, np.uint32)
    fsum, dsum = np.zeros(1, np.float32), np.zeros(1, np.float64)
    total = np.zeros(1, np.uint64)
    vmax, vmin = np.array([-1], np.int32), np.array([1 << 30], np.int32)
    claimed, winners = np.zeros(1, np.int32), np.zeros(1, np.int32)
    kernels.get_function("histogram")(
        (7,), (96,), (x, np.int32(n), bins, np.int32(nbins), fsum, dsum, total, vmax, vmin, claimed, winners)
    )
    np.testing.assert_array_equal(bins, np.bincount(x % nbins, minlength=nbins))
    assert fsum[0] == 0.5 * n and dsum[0] == x.sum() and total[0] == n
    assert vmax[0] == x.max() and vmin[0] == x.min()
    assert winners[0] == 1


def test_scalar_marshalling(kernels):
    echo = kernels.get_function("echo")
    out_i, out_f = np.zeros(8, np.int64), np.zeros(3, np.float64)
    pair = np.array((2.5, -77), dtype=[("a", "<f4"), ("b", "<i4")])[()]
    args = [np.int32(-123456789), np.uint32(4_000_000_000), np.int64(2**40 + 3), np.uint64(2**63 + 10),
            np.float32(1.25e-3), np.float64(1 / 3), np.bool_(True), np.int8(-7), np.int16(-30000), pair,
            out_i, out_f]
    echo(1, 1, tuple(args))
    np.testing.assert_array_equal(out_i, [-123456789, 4_000_000_000, 2**40 + 3, (2**63 + 10) >> 1, 1, -7, -30000, -77])
    assert out_f[0] == np.float32(1.25e-3) and out_f[1] == 1 / 3 and out_f[2] == 2.5

    # Python scalars: int as long long (or any integer type it fits), float as double, bool as bool.
    out_i[:] = 0
    echo(1, 1, (5, 7, 2**40 + 3, 2**63 + 10, np.float32(0.5), 0.25, False, -1, 2, pair, out_i, out_f))
    assert out_i[2] == 2**40 + 3 and out_i[0] == 5 and out_i[4] == 0 and out_f[1] == 0.25

    def bad(index, value, match):
        wrong = list(args)
        wrong[index] = value
        with pytest.raises(TypeError, match=match):
            echo(1, 1, tuple(wrong))

    bad(0, np.int64(1), "argument 0")          # 8 bytes for a 4-byte int: garbage on a GPU
    bad(0, 2**40, "argument 0")                # does not fit an int
    bad(2, np.float64(1.0), "argument 2")
    bad(4, 0.5, "argument 4.*np.float32")      # a Python float is a double
    bad(4, np.float64(0.5), "argument 4")
    bad(6, 1, "argument 6")
    bad(10, np.zeros(8, np.int32), "argument 10")  # int32 array for long long*
    bad(11, np.zeros(3, np.float32), "argument 11")  # float32 array for double*
    bad(10, [1, 2], "argument 10")
    bad(0, np.zeros(1, np.int32), "argument 0")
    bad(9, np.int64(0), "argument 9")          # a struct needs a structured scalar of its size
    with pytest.raises(TypeError, match="12 argument"):
        echo(1, 1, tuple(args[:-1]))


def test_16bit_conversions_round_to_nearest_even(kernels):
    rng = np.random.default_rng(3)
    special = [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-10,
               1.0 + 2**-11, 1.0 + 3 * 2**-11, 1.0 + 2**-8, 1.0 + 3 * 2**-8, np.inf, -np.inf, np.nan]
    x = np.concatenate([np.array(special, np.float32), rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 2000)]).astype(np.float32)
    n = x.size
    h, bf = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    h_back, bf_back = np.zeros(n, np.float32), np.zeros(n, np.float32)
    kernels.get_function("to_16bit")(((n + 255) // 256,), (256,), (x, h, bf, h_back, bf_back, np.int32(n)))
    with np.errstate(over="ignore"):
        ref_h = x.astype(np.float16)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(h[finite], ref_h.view(np.uint16)[finite])
    np.testing.assert_array_equal(h_back[finite], ref_h.astype(np.float32)[finite])
    u = x.view(np.uint32).astype(np.uint64)
    ref_bf = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bf[finite], ref_bf[finite])
    np.testing.assert_array_equal(bf_back[finite], (bf[finite].astype(np.uint32) << 16).view(np.float32))
    assert np.isnan(h_back[~finite]).all() and np.isnan(bf_back[~finite]).all()


# ---------------------------------------------------------------------------
def test_divergent_barrier_is_a_fault_not_a_hang(kernels):
    k = kernels.get_function("early_exit")
    x = np.ones(192, np.float32)
    with pytest.raises(KernelFault) as info:
        _run(lambda: k((3,), (64,), (x, np.int32(150))))
    msg = str(info.value)
    assert "early_exit" in msg and "block (2, 0, 0)" in msg and "divergent __syncthreads()" in msg
    assert info.value.kernel == "early_exit" and info.value.block == (2, 0, 0)
    # The module is still usable, and the correct launch works.
    x[:] = 1
    _run(lambda: k((3,), (64,), (x, np.int32(192))))
    assert np.all(x == 3)


def test_deadlock_is_a_fault(kernels):
    with pytest.raises(KernelFault, match=r"half_warp_deadlock.*deadlock.*__shfl_sync.*__syncthreads"):
        _run(lambda: kernels.get_function("half_warp_deadlock")(1, 32, (np.zeros(32, np.int32),)))


def test_trap_assert_and_exception_are_faults(kernels):
    with pytest.raises(KernelFault, match=r"trap_in_block_1' faulted in block \(1, 0, 0\), thread \(3, 0, 0\).*__trap"):
        _run(lambda: kernels.get_function("trap_in_block_1")(3, 8, (np.zeros(24, np.int32),)))
    x = np.arange(32, dtype=np.int32)
    with pytest.raises(KernelFault, match=r"bounded.*thread \(20, 0, 0\).*assertion failed: x\[threadIdx.x\] < limit"):
        _run(lambda: kernels.get_function("bounded")(1, 32, (x, np.int32(20))))
    _run(lambda: kernels.get_function("bounded")(1, 32, (x, np.int32(32))))
    with pytest.raises(KernelFault, match=r"throws.*thread \(5, 0, 0\).*runtime_error: kernel-side failure"):
        _run(lambda: kernels.get_function("throws")(1, 8, (np.zeros(1, np.int32),)))


def test_invalid_launch_configuration(kernels):
    k = kernels.get_function("read_uninitialised")
    out = np.zeros(2048, np.uint32)
    with pytest.raises(ValueError, match="1024"):
        k(1, 2048, (out,))
    with pytest.raises(ValueError, match="2048 threads"):
        k(1, (32, 32, 2), (out,))
    with pytest.raises(ValueError, match="shared_mem"):
        k(1, 32, (out,), shared_mem=227 * 1024 + 1)
    with pytest.raises(ValueError, match="grid"):
        k((1, 0), 32, (out,))
    with pytest.raises(TypeError, match="block"):
        k(1, (1, 2, 3, 4), (out,))


def test_compile_error_carries_the_log():
    with pytest.raises(EmulatorError) as info:
        EmulatorModule('extern "C" __global__ void broken(int* x) { x[0] = ; }', name_expressions=["broken"])
    assert "error" in info.value.log and "expected primary-expression" in str(info.value)
    with pytest.raises(EmulatorError, match="name expression"):
        EmulatorModule('extern "C" __global__ void present(int* x) {}', name_expressions=["absent"])
    # Locals that would overflow the fiber stack are refused at build time, not a crash later.
    with pytest.raises(EmulatorError, match="LIAM_GPU_EMU_STACK_KIB"):
        EmulatorModule('extern "C" __global__ void big(float* x) { float a[20000]; for (int i = 0; i < 20000; ++i)'
                       ' a[i] = x[i]; x[threadIdx.x] = a[(int)x[0]]; }', name_expressions=["big"])


def test_build_cache_is_reused(kernels):
    t0 = time.perf_counter()
    again = EmulatorModule(ALL_SRC, name_expressions=ALL_NAMES, options=("-std=c++17", "--gpu-architecture=sm_90"))
    assert again.cached and time.perf_counter() - t0 < 1.0
    assert again.library == kernels.library
    out = np.zeros(32, np.uint32)
    again.get_function("read_uninitialised")(1, 32, (out,), shared_mem=128)


def test_options_and_header_changes_invalidate_the_cache(tmp_path):
    (tmp_path / "inc").mkdir()
    header = tmp_path / "inc" / "offset.cuh"
    header.write_text("#define OFFSET 10\n")
    src = '#include "offset.cuh"\nextern "C" __global__ void f(int* out) { out[threadIdx.x] = OFFSET * SCALE + threadIdx.x; }'
    out = np.zeros(4, np.int32)
    mod = EmulatorModule(src, name_expressions=["f"], options=["-I", str(tmp_path / "inc"), "-DSCALE=3"])
    mod.get_function("f")(1, 4, (out,))
    np.testing.assert_array_equal(out, [30, 31, 32, 33])
    header.write_text("#define OFFSET 100\n")  # same source text, changed include
    mod2 = EmulatorModule(src, name_expressions=["f"], options=[f"--include-path={tmp_path / 'inc'}", "-DSCALE=3"])
    assert not mod2.cached
    mod2.get_function("f")(1, 4, (out,))
    np.testing.assert_array_equal(out, [300, 301, 302, 303])


def test_umbrella_header_includes_every_part_and_the_cache_key_covers_them():
    # cuda_emu.h is what the build force-includes; its parts sit beside it.
    parts = sorted(p.name for p in build.HEADER.parent.glob("emu_*.h"))
    included = re.findall(r'^#include "(emu_\w+\.h)"', build.HEADER.read_text(), flags=re.M)
    assert parts and sorted(included) == parts
    key = build.header_bytes()
    for name in parts:
        assert (build.HEADER.parent / name).read_bytes() in key


def test_two_modules_with_the_same_kernel_names():
    template = r"""
    __device__ int calls;  // module-global state must not be shared between modules
    extern "C" __global__ void value(int* out) {
        __shared__ int s;
        if (threadIdx.x == 0) s = VALUE;
        __syncthreads();
        out[threadIdx.x] = s + 1000 * atomicAdd(&calls, 1);
    }
    """
    # Built concurrently (also checks that parallel builds into one cache work).
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda v: EmulatorModule(template.replace("VALUE", v), name_expressions=["value"]), "12")
    out = np.zeros(1, np.int32)
    for expect in ([1], [2], [1001], [1002]):
        (one if expect[0] % 2 else two).get_function("value")(1, 1, (out,))
        np.testing.assert_array_equal(out, expect)


# ---------------------------------------------------------------------------
# Sanitizer modes.  Launches run in a child process with the runtime preloaded.
SANITIZE_SRC = r"""
extern "C" __global__ void scale(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 2.0f * x[i < n ? i : 0];   // planted off-by-one: i == n writes past y
}
// Shared-memory tree reduction; `racy` leaves out the barrier between steps.
template <int BLOCK>
__global__ void block_sum(const float* x, float* out, int n, bool racy) {
    __shared__ float s[BLOCK];
    unsigned t = threadIdx.x, i = blockIdx.x * BLOCK + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        if (!racy) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}
"""

needs_asan = pytest.mark.skipif(not sanitizer_available("address"), reason="g++ has no libasan runtime")
needs_tsan = pytest.mark.skipif(not sanitizer_available("thread"), reason="g++ has no libtsan runtime")


@needs_asan
def test_address_sanitizer_catches_out_of_bounds_write():
    mod = EmulatorModule(SANITIZE_SRC, name_expressions=["scale"], sanitize="address")
    x = np.arange(100, dtype=np.float32)
    y = np.zeros(100, np.float32)
    mod.get_function("scale")(1, 128, (x, y, np.int32(99)))  # in bounds: runs, results come back
    np.testing.assert_array_equal(y[:99], 2 * x[:99])
    with pytest.raises(KernelFault) as info:
        mod.get_function("scale")(1, 128, (x, y, np.int32(100)))
    msg = str(info.value)
    assert "scale" in msg and "SUMMARY: AddressSanitizer: heap-buffer-overflow" in msg
    assert info.value.block == (0, 0, 0) and info.value.thread == (100, 0, 0)


@needs_tsan
def test_thread_sanitizer_catches_a_race_and_passes_the_fixed_kernel():
    mod = EmulatorModule(SANITIZE_SRC, name_expressions=["block_sum<64>"], sanitize="thread")
    k = mod.get_function("block_sum<64>")
    x = np.random.default_rng(4).random(256, dtype=np.float32)
    out = np.zeros(4, np.float32)
    k(4, 64, (x, out, np.int32(256), False))
    np.testing.assert_allclose(out, x.reshape(4, 64).sum(1), rtol=1e-5)
    with pytest.raises(KernelFault) as info:
        k(4, 64, (x, out, np.int32(256), True))
    msg = str(info.value)
    assert "block_sum<64>" in msg and "SUMMARY: ThreadSanitizer: data race" in msg


def test_options_keep_includes_and_macros_in_order(tmp_path):
    from liam_gpu.emulator.build import parse_options

    parsed = parse_options([
        "-std=c++17", f"--include-path={tmp_path}", "-I", "rel", "-Iother", "--gpu-architecture=sm_90",
        "-DA=1", "-U", "A", "--define-macro=B", "--undefine-macro=C", "-D", "E", "-UF", "-lineinfo",
    ])
    assert parsed.include_dirs == (str(tmp_path), str((tmp_path.cwd() / "rel").resolve()),
                                   str((tmp_path.cwd() / "other").resolve()))
    assert parsed.macro_flags == ("-DA=1", "-UA", "-DB", "-UC", "-DE", "-UF")  # -D/-U order is meaning
    with pytest.raises(TypeError, match="not a string"):
        parse_options(["-DA", 3])
