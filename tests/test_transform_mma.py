"""The tensor-core transform path (``linear_mma_kernel``) and the emulated mma/ldmatrix under it.

* the emulator's ``mma.sync m16n8k16`` and ``ldmatrix`` against numpy, through
  tiny kernels that build the fragments from the PTX ISA's layouts, and the
  faults of a warp that does not execute them together;
* the MMA path through the launch layer on the emulator, float16 and
  bfloat16, against a float64 reference within the bound of
  ``tests/test_transform.py`` (float32 accumulation over ``d_in`` terms, the
  activation's rounding, the 16-bit output rounding): every tile, bias or
  not, every activation, batched, ragged shapes, d_in a multiple of 8 but
  not of the k-tile;
* which path a launch takes (MMA, or the SIMT kernel for d_in % 8 != 0 or
  misaligned views) and the errors of a forced path that cannot run;
* a planted layout bug (lanes 0 and 1 swap their A fragments, built with
  ``-DLG_PLANT_MMA_LANE_SWAP``) fails the comparison;
* the simulated CUDA path (fake CuPy, compute capability 9.0) takes the MMA
  path for 16-bit inputs.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu.activations import ACTIVATIONS
from liam_gpu.backends import emulator_available
from liam_gpu.launch import transform as T
from liam_gpu.launch.family import compile_options, kernel_dir
from liam_gpu.launch.runtime import EmulatorRuntime

from test_cuda_path_simulated import cp  # noqa: F401  (the simulated-CuPy fixture)
from test_transform import assert_close, reference, tolerance

pytestmark = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

DTYPES = ["float16", "bfloat16"]
PLANT = "-DLG_PLANT_MMA_LANE_SWAP"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def rt():
    from liam_gpu.launch.runtime import emulator_runtime

    return emulator_runtime()


def aligned_empty(shape, dtype, *, offset_bytes=0):
    """A C-contiguous array starting ``offset_bytes`` past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.empty(count * dtype.itemsize + 64 + offset_bytes, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_bytes
    return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def carrier(values, dtype, *, offset_bytes=0):
    """``values`` rounded to the storage dtype, in the array the launch layer takes (uint16 bits for bfloat16)."""
    a = aligned_empty(values.shape, np.uint16 if dtype == "bfloat16" else dtype, offset_bytes=offset_bytes)
    if dtype == "bfloat16":
        a[...] = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    else:
        a[...] = values.astype(dtype)
    return a


def widen(a, dtype):
    """A carrier array's values as float64 (None stays None)."""
    if a is None:
        return None
    return (a.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else a).astype(np.float64)


def storage(dtype):
    return "bfloat16" if dtype == "bfloat16" else None


def inputs(rng, dtype, batch, n, d_in, d_out, *, bias=True, x_offset=0, w_offset=0):
    """Device-layout x, w, bias and a NaN-poisoned out; weights scaled like a trained layer."""
    lead = (batch,) if batch else ()
    x = carrier(rng.standard_normal(lead + (n, d_in)), dtype, offset_bytes=x_offset)
    w = carrier(rng.standard_normal(lead + (d_out, d_in)) / np.sqrt(max(d_in, 1)), dtype, offset_bytes=w_offset)
    b = carrier(rng.standard_normal(lead + (d_out,)), dtype) if bias else None
    out = carrier(np.full(lead + (n, d_out), np.nan), dtype)
    return x, w, b, out


def run(rt, dtype, x, w, b, activation, out, **kw):
    fn = T.batched_linear if x.ndim == 3 else T.linear
    return fn(rt, x, w, b, ACTIVATIONS[activation], out, storage=storage(dtype), **kw)


def check(out, x, w, b, activation, dtype):
    assert_close(widen(out, dtype), widen(x, dtype), widen(w, dtype), widen(b, dtype), activation,
                 np.float16 if dtype == "float16" else dtype)


def excess(out, x, w, b, activation, dtype):
    """max(|error| - tolerance) of a result (> 0: the comparison fails)."""
    xs, ws, bs = widen(x, dtype), widen(w, dtype), widen(b, dtype)
    ref = reference(xs, ws, bs, activation)
    tol = tolerance(np.float16 if dtype == "float16" else dtype, xs, ws, bs, ref)
    return float(np.max(np.abs(widen(out, dtype) - ref) - tol))


# --------------------------------------------------------------------------- the emulated primitives

PRIMITIVES = r"""
#include "mma.cuh"

// One m16n8k16 with the fragments built straight from the PTX ISA layout
// (no ldmatrix): a 16x16 row-major, b 16x8 (k, n) row-major, c and d 16x8.
template <typename T>
__global__ void mma_direct(const unsigned short* a, const unsigned short* b, const float* c, float* d,
                           long long skip_lane) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned af[4], bf[2];
    float acc[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i & 1), col = 2 * t + 8 * (i >> 1);
        af[i] = (unsigned)a[row * 16 + col] | ((unsigned)a[row * 16 + col + 1] << 16);
    }
    for (int i = 0; i < 2; ++i) {
        const int k = 2 * t + 8 * i;
        bf[i] = (unsigned)b[k * 8 + g] | ((unsigned)b[(k + 1) * 8 + g] << 16);
    }
    for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    if (lane == skip_lane) return;  // a lane that leaves the warp before the mma
    lg_mma_16816<T>(acc, af, bf);
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// NUM 8x8 matrices m (NUM x 8 x 8) through shared memory (rows 48 bytes apart)
// and ldmatrix; r[lane * NUM + i] = register i of the lane.  `shift` moves
// every row address by that many bytes (a misaligned row when not 0 mod 16).
template <int NUM, bool TRANS>
__global__ void ldsm(const unsigned short* m, unsigned* r, long long shift) {
    alignas(16) __shared__ unsigned short s[4][8][24];
    const int lane = threadIdx.x;
    for (int e = lane; e < NUM * 64; e += 32) s[e / 64][(e / 8) % 8][e % 8] = m[e];
    __syncwarp();
    const char* row = reinterpret_cast<const char*>(&s[(lane / 8) % NUM][lane % 8][0]) + shift;
    unsigned out[NUM];
    if constexpr (NUM == 4) lg_ldmatrix_x4<TRANS>(out, row);
    if constexpr (NUM == 2) lg_ldmatrix_x2<TRANS>(out, row);
    if constexpr (NUM == 1) lg_ldmatrix_x1<TRANS>(out, row);
    for (int i = 0; i < NUM; ++i) r[lane * NUM + i] = out[i];
}

// Lanes 0..15 and 16..31 reach ldmatrix.x1 with the same arguments from two
// different lines: two instructions, which .aligned forbids.
__global__ void ldsm_two_sites(const unsigned short* m, unsigned* r) {
    alignas(16) __shared__ unsigned short s[8][8];
    const int lane = threadIdx.x;
    for (int e = lane; e < 64; e += 32) s[e / 8][e % 8] = m[e];
    __syncwarp();
    unsigned out[1];
    if (lane < 16) {
        lg_ldmatrix_x1(out, &s[lane % 8][0]);
    } else {
        lg_ldmatrix_x1(out, &s[lane % 8][0]);
    }
    r[lane] = out[0];
}

// The composition the transform uses: A (16x16) and W (8x16, w's layout) in
// shared memory, ldmatrix.x4 for A and .x2 for B, one mma; d = A W^T.
// Lanes 16..31 call ldmatrix.x2 for A when `split` (they disagree).
template <typename T>
__global__ void ldsm_mma(const unsigned short* a, const unsigned short* wt, float* d, long long split) {
    alignas(16) __shared__ unsigned short sa[16][24];
    alignas(16) __shared__ unsigned short sb[8][24];
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    for (int e = lane; e < 256; e += 32) sa[e / 16][e % 16] = a[e];
    for (int e = lane; e < 128; e += 32) sb[e / 16][e % 16] = wt[e];
    __syncwarp();
    unsigned af[4], bf[2];
    if (split && lane >= 16) {
        unsigned half[2];
        lg_ldmatrix_x2(half, &sa[lane % 16][0]);
    } else {
        lg_ldmatrix_x4(af, &sa[lane & 15][(lane >> 4) * 8]);
    }
    lg_ldmatrix_x2(bf, &sb[lane & 7][((lane >> 3) & 1) * 8]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    lg_mma_16816<T>(acc, af, bf);
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}
"""

PRIMITIVE_NAMES = ["mma_direct<lg_half>", "mma_direct<lg_bf16>", "ldsm_mma<lg_half>", "ldsm_mma<lg_bf16>",
                   "ldsm_two_sites"] + [
    f"ldsm<{num}, {'true' if trans else 'false'}>" for num in (1, 2, 4) for trans in (False, True)]


@pytest.fixture(scope="module")
def prim():
    from liam_gpu.emulator import EmulatorModule

    return EmulatorModule(PRIMITIVES, name_expressions=PRIMITIVE_NAMES, options=compile_options())


def bits16(values, dtype):
    return (values.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else values.astype(np.float16)).view(np.uint16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_mma_matches_numpy(prim, rng, dtype):
    # Values whose products and sums are exact in float32 (small integers
    # times powers of two), so the expected D is exact; plus one row of
    # random values, where only float32 rounding of the sum may differ.
    a = rng.integers(-8, 9, (16, 16)) * 2.0 ** rng.integers(-4, 5, (16, 16))
    b = rng.integers(-8, 9, (16, 8)) * 2.0 ** rng.integers(-4, 5, (16, 8))
    a[15] = rng.standard_normal(16)
    c = rng.integers(-100, 101, (16, 8)).astype(np.float32)
    ab, bb = bits16(a, dtype), bits16(b, dtype)
    a_val = (ab.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else ab.view(np.float16)).astype(np.float64)
    b_val = (bb.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else bb.view(np.float16)).astype(np.float64)
    d = np.full((16, 8), np.nan, np.float32)
    kernel = "mma_direct<lg_bf16>" if dtype == "bfloat16" else "mma_direct<lg_half>"
    prim.get_function(kernel)((1,), (32,), (ab, bb, c, d, -1))
    want = a_val @ b_val + c
    np.testing.assert_array_equal(d[:15], want[:15].astype(np.float32))
    # The sum of 16 exact products plus c, rounded once to float32.
    np.testing.assert_allclose(d[15], want[15], rtol=2 ** -24, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ldmatrix_then_mma_computes_a_times_w_transposed(prim, rng, dtype):
    a = rng.integers(-4, 5, (16, 16)).astype(np.float64)
    w = rng.integers(-4, 5, (8, 16)).astype(np.float64)
    d = np.full((16, 8), np.nan, np.float32)
    kernel = "ldsm_mma<lg_bf16>" if dtype == "bfloat16" else "ldsm_mma<lg_half>"
    prim.get_function(kernel)((1,), (32,), (bits16(a, dtype), bits16(w, dtype), d, 0))
    np.testing.assert_array_equal(d, (a @ w.T).astype(np.float32))


@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_emulated_ldmatrix_fragment_layout(prim, num, trans):
    m = np.arange(num * 64, dtype=np.uint16).reshape(num, 8, 8) * 7 + 1  # every element distinct
    r = np.zeros((32, num), np.uint32)
    prim.get_function(f"ldsm<{num}, {'true' if trans else 'false'}>")((1,), (32,), (m.ravel().copy(), r, 0))
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    for i in range(num):
        src = m[i].T if trans else m[i]  # .trans: the lane's pair comes from the transposed matrix
        lo, hi = src[g, 2 * t].astype(np.uint32), src[g, 2 * t + 1].astype(np.uint32)
        np.testing.assert_array_equal(r[:, i], lo | (hi << 16), err_msg=f"matrix {i}")


def test_a_lane_that_skips_the_mma_is_a_fault(prim):
    from liam_gpu.emulator import KernelFault

    z16, c = np.zeros((16, 16), np.uint16), np.zeros((16, 8), np.float32)
    with pytest.raises(KernelFault, match=r"mma\.sync\.aligned\.m16n8k16.* waits for lane 5, which has exited"):
        prim.get_function("mma_direct<lg_half>")((1,), (32,), (z16, z16[:, :8].copy(), c, c.copy(), 5))


def test_lanes_that_disagree_about_ldmatrix_are_a_fault(prim):
    from liam_gpu.emulator import KernelFault

    z = np.zeros(256, np.uint16)
    with pytest.raises(KernelFault, match="warp lanes disagree.*ldmatrix"):
        prim.get_function("ldsm_mma<lg_half>")((1,), (32,), (z, z[:128].copy(), np.zeros(128, np.float32), 1))


def test_the_same_ldmatrix_from_two_call_sites_is_a_fault(prim):
    # Same variant, same arguments, different instructions: a GPU's behaviour is
    # undefined; the emulator must not merge them into one.
    from liam_gpu.emulator import KernelFault

    with pytest.raises(KernelFault, match=r"warp lanes disagree.*ldmatrix"):
        prim.get_function("ldsm_two_sites")((1,), (32,), (np.zeros(64, np.uint16), np.zeros(32, np.uint32)))


def test_mma_needs_a_whole_warp(prim):
    from liam_gpu.emulator import KernelFault

    z16, c = np.zeros((16, 16), np.uint16), np.zeros((16, 8), np.float32)
    with pytest.raises(KernelFault, match="needs all 32 lanes of a warp"):
        prim.get_function("mma_direct<lg_half>")((1,), (16,), (z16, z16[:, :8].copy(), c, c.copy(), -1))


def test_misaligned_ldmatrix_row_is_a_fault(prim):
    from liam_gpu.emulator import KernelFault

    m = np.zeros(256, np.uint16)
    with pytest.raises(KernelFault, match="not 16-byte aligned"):
        prim.get_function("ldsm<4, false>")((1,), (32,), (m, np.zeros(128, np.uint32), 2))


# --------------------------------------------------------------------------- the MMA path: values


@pytest.mark.parametrize("config", list(T.MMA_CONFIGS["float16"]))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_mma_tile_ragged_shapes(rt, rng, dtype, config):
    c = T.MMA_CONFIGS[dtype][config]
    # Ragged against the tile in m and n; d_in a multiple of 8 but not of BK,
    # two and a bit k-tiles deep (the double buffer swaps both ways).
    n, d_in, d_out = c.bm + 3, 2 * c.bk + 8, c.bn + 5
    x, w, b, out = inputs(rng, dtype, None, n, d_in, d_out)
    run(rt, dtype, x, w, b, "gelu", out, config=config)
    launch = T.last_launch()
    assert (launch.path, launch.config, launch.vec) == ("mma", config, True)
    assert launch.block == (c.threads, 1, 1)
    assert launch.grid == ((-(-n // c.bm)) * (-(-d_out // c.bn)), 1, 1)
    check(out, x, w, b, "gelu", dtype)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_activation_with_and_without_bias(rt, rng, dtype, activation, with_bias):
    x, w, b, out = inputs(rng, dtype, None, 37, 40, 45, bias=with_bias)
    run(rt, dtype, x, w, b, activation, out)
    assert T.last_launch().path == "mma"
    check(out, x, w, b, activation, dtype)


@pytest.mark.parametrize("config", list(T.MMA_CONFIGS["float16"]))
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_each_item_its_own_weights(rt, rng, dtype, config):
    batch, n, d_in, d_out = 3, 21, 24, 19
    x, w, b, out = inputs(rng, dtype, batch, n, d_in, d_out)
    run(rt, dtype, x, w, b, "silu", out, config=config)
    c = T.MMA_CONFIGS[dtype][config]
    assert T.last_launch().grid == (batch * (-(-n // c.bm)) * (-(-d_out // c.bn)), 1, 1)
    check(out, x, w, b, "silu", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_accumulation(rt, rng, dtype):
    # 1000 terms: the bound's d_in * eps32 part dominates the output rounding's.
    x, w, b, out = inputs(rng, dtype, None, 20, 1000, 24)
    run(rt, dtype, x, w, b, None, out)
    assert T.last_launch().path == "mma"
    check(out, x, w, b, None, dtype)


def test_grid_larger_than_the_limits_loops_inside_the_kernel(rt, rng, monkeypatch):
    monkeypatch.setattr(T, "MAX_GRID", (2, 65535, 65535))
    x, w, b, out = inputs(rng, "float16", 3, 70, 16, 40)
    run(rt, "float16", x, w, b, "relu", out, config="mma_medium")
    assert T.last_launch().grid == (2, 1, 1)
    check(out, x, w, b, "relu", "float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_shapes(rt, rng, dtype):
    # d_in = 0: out = act(bias); a single row and column; nothing to compute.
    x, w, b, out = inputs(rng, dtype, None, 5, 0, 3)
    run(rt, dtype, x, w, b, "tanh", out)
    assert T.last_launch().path == "mma"
    check(out, x, w, b, "tanh", dtype)
    x, w, b, out = inputs(rng, dtype, None, 1, 8, 1)
    run(rt, dtype, x, w, b, None, out)
    check(out, x, w, b, None, dtype)
    x, w, b, out = inputs(rng, dtype, None, 0, 8, 4)
    run(rt, dtype, x, w, b, None, out)
    assert T.last_launch().grid == (0, 0, 0)


def test_inputs_are_not_modified(rt, rng):
    x, w, b, out = inputs(rng, "bfloat16", None, 33, 16, 17)
    before = [a.copy() for a in (x, w, b)]
    run(rt, "bfloat16", x, w, b, "gelu", out)
    for a, a0 in zip((x, w, b), before):
        np.testing.assert_array_equal(a, a0)


def test_non_finite_inputs_propagate(rt, rng):
    x, w, b, out = inputs(rng, "float16", None, 4, 16, 8, bias=False)
    x[1, 3] = np.inf
    x[2, 5] = np.nan
    run(rt, "float16", x, w, None, None, out)
    ref = reference(widen(x, "float16"), widen(w, "float16"), None, None)
    np.testing.assert_array_equal(np.isnan(out[1:3]), np.isnan(ref[1:3]))
    np.testing.assert_array_equal(out[1:3][np.isinf(ref[1:3])], ref[1:3][np.isinf(ref[1:3])])
    check(out[[0, 3]], x[[0, 3]], w, None, None, "float16")


# --------------------------------------------------------------------------- which path runs


@pytest.mark.parametrize("dtype", DTYPES)
def test_fallback_to_simt_for_d_in_not_a_multiple_of_8(rt, rng, dtype):
    x, w, b, out = inputs(rng, dtype, None, 20, 36, 18)
    run(rt, dtype, x, w, b, "gelu", out)
    assert T.last_launch().path == "kernel"
    check(out, x, w, b, "gelu", dtype)
    with pytest.raises(ValueError, match="path='mma' cannot run this launch: d_in=36 is not a multiple of 8"):
        run(rt, dtype, x, w, b, "gelu", out, path="mma")


@pytest.mark.parametrize("which", ["x", "w"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fallback_to_simt_for_misaligned_views(rt, rng, dtype, which):
    # 2 bytes past a 16-byte boundary: every row of the view is misaligned.
    x, w, b, out = inputs(rng, dtype, None, 20, 32, 18, x_offset=2 * (which == "x"), w_offset=2 * (which == "w"))
    run(rt, dtype, x, w, b, "relu", out)
    launch = T.last_launch()
    assert (launch.path, launch.vec) == ("kernel", False)
    check(out, x, w, b, "relu", dtype)
    with pytest.raises(ValueError, match=f"{which} does not start on a 16-byte boundary"):
        run(rt, dtype, x, w, b, "relu", out, config="mma_medium")


def test_forced_simt_and_simt_configs_on_16_bit(rt, rng):
    x, w, b, out = inputs(rng, "float16", None, 20, 32, 18)
    run(rt, "float16", x, w, b, None, out, path="kernel")
    assert T.last_launch().path == "kernel"
    check(out, x, w, b, None, "float16")
    run(rt, "float16", x, w, b, None, out, config="medium")
    assert (T.last_launch().path, T.last_launch().config) == ("kernel", "medium")
    with pytest.raises(ValueError, match="config='large' is a SIMT tile; path='mma' takes one of"):
        run(rt, "float16", x, w, b, None, out, path="mma", config="large")
    with pytest.raises(ValueError, match="config='mma_large' is a tensor-core tile; path='kernel' takes"):
        run(rt, "float16", x, w, b, None, out, path="kernel", config="mma_large")


def test_mma_refuses_other_dtypes(rt, rng):
    # float32 takes the tensor cores only as TF32, when the caller allows it
    # (tests/test_tf32.py); float64 never.
    x = aligned_empty((8, 16), np.float32)
    x[...] = rng.standard_normal((8, 16))
    w, out = x.copy(), np.empty((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"float32 runs on tensor cores only as TF32, which needs tf32=True"):
        T.linear(rt, x, w, None, 0, out, path="mma")
    with pytest.raises(ValueError, match=r"path='mma' cannot run this launch: float32 .* needs tf32=True"):
        T.linear(rt, x, w, None, 0, out, config="mma_large")
    with pytest.raises(ValueError, match="path='warp' is unknown"):
        T.linear(rt, x, w, None, 0, out, path="warp")
    x64, out64 = x.astype(np.float64), np.empty((8, 8), np.float64)
    with pytest.raises(ValueError, match="takes float16, bfloat16 and \\(with tf32=True\\) float32, not float64"):
        T.linear(rt, x64, x64.copy(), None, 0, out64, path="mma", tf32=True)
    with pytest.raises(ValueError, match="config='mma_large' is unknown for float64"):
        T.linear(rt, x64, x64.copy(), None, 0, out64, config="mma_large")


class _Runtime(EmulatorRuntime):
    """An emulator runtime that reports another compute capability (nothing is launched)."""

    def __init__(self, cc, kind="emulator"):
        super().__init__()
        self.compute_capability = cc
        self.kind = kind


def test_plan_table_for_tensor_cores(rt):
    assert T.plan(rt, 65536, 256, 256, np.float16) == T.Plan("mma", "mma_large")
    assert T.plan(rt, 64, 64, 64, "bfloat16", batch=1024) == T.Plan("mma", "mma_medium")
    assert T.plan(rt, 100000, 256, 8, np.float16) == T.Plan("mma", "mma_skinny")
    assert T.plan(rt, 37, 40, 45, "bfloat16") == T.Plan("mma", "mma_medium")
    assert T.plan(rt, 100, 36, 50, np.float16).path == "kernel"  # d_in % 8
    assert T.plan(rt, 100, 64, 50, np.float32).path == "kernel"
    assert T.plan(_Runtime((7, 5)), 100, 64, 50, np.float16).path == "kernel"  # no mma.sync for 16-bit
    sm80 = _Runtime((8, 0), kind="cuda")
    assert T.plan(sm80, 4096, 4096, 4096, np.float16).path == "blas+epilogue"  # cuBLAS HGEMM (tensor cores)
    assert T.plan(sm80, 4096, 4096, 4096, "bfloat16") == T.Plan("mma", "mma_large")  # no bfloat16 matmul
    assert T.plan(sm80, 4096, 4096, 4096, np.float16, batch=2).path == "mma"


def test_every_mma_choice_is_a_declared_entry_point():
    assert set(T.MMA_CONFIGS) == {"float16", "bfloat16", "float32"}  # float32: the TF32 tiles
    for dtype, configs in T.MMA_CONFIGS.items():
        for c in configs.values():
            name = T.linear_mma_entry(dtype, c)
            assert name in T.FAMILY.name_expressions and T.FAMILY.group(name) == dtype
            budget = T.FAMILY.budget(name)
            assert budget.sass_require == T.MMA_SASS_REQUIRE
            assert (budget.max_registers, budget.max_shared_bytes) == (c.max_registers(), c.shared_bytes())
            assert c.shared_bytes() <= 48 * 1024  # static shared memory
            assert c.mma_per_k_tile == (c.bk // c.mma_k) * (c.wm // 16) * (c.wn // 8)
            assert c.bk * c.itemsize == 64  # one k-tile: 64 bytes of every row, for every atom


# --------------------------------------------------------------------------- a planted layout bug


class PlantedRuntime(EmulatorRuntime):
    """The emulator runtime, with the tensor-core entries built with ``-DLG_PLANT_MMA_LANE_SWAP``."""

    def _load(self, family, name_expressions):
        from liam_gpu.emulator import EmulatorModule

        names = [n for n in name_expressions if n.startswith("linear_mma_kernel<")]
        return EmulatorModule(family.code(), name_expressions=names, options=compile_options(PLANT))


@pytest.mark.parametrize("dtype", DTYPES)
def test_planted_lane_swap_fails_the_comparison(rt, rng, dtype):
    x, w, b, out = inputs(rng, dtype, None, 37, 40, 45)
    run(rt, dtype, x, w, b, "gelu", out)
    assert excess(out, x, w, b, "gelu", dtype) <= 0  # the real kernel passes ...
    planted = np.full_like(out, 0)
    run(PlantedRuntime(), dtype, x, w, b, "gelu", planted)
    assert T.last_launch().path == "mma"
    assert excess(planted, x, w, b, "gelu", dtype) > 0  # ... the swapped fragments do not
    with pytest.raises(AssertionError, match="max error"):
        check(planted, x, w, b, "gelu", dtype)


def test_the_planted_macro_is_not_in_production_builds():
    assert not any("LG_PLANT" in o for o in compile_options())
    source = (kernel_dir() / "mma.cuh").read_text() + T.FAMILY.code()
    # Every use sits under #ifdef LG_PLANT_MMA_LANE_SWAP.
    lines = source.splitlines()
    uses = [i for i, line in enumerate(lines) if "lg_plant_lane_swap(" in line and "__device__" not in line]
    assert uses
    for i in uses:
        assert lines[i - 1].strip() in ("#ifdef LG_PLANT_MMA_LANE_SWAP", "#pragma unroll")
        guard = next(lines[j].strip() for j in range(i, -1, -1) if lines[j].startswith("#if"))
        assert guard == "#ifdef LG_PLANT_MMA_LANE_SWAP"


# --------------------------------------------------------------------------- the public API and simulated CUDA


def test_public_float16_on_the_emulator_takes_mma(rng):
    x = rng.standard_normal((33, 48)).astype(np.float16)
    w = (rng.standard_normal((20, 48)) / 7).astype(np.float16)
    b = rng.standard_normal(20).astype(np.float16)
    got = lg.transform_matrix(x, w, b, "gelu", device="emulator")
    assert T.last_launch().path == "mma"
    assert got.dtype == np.float16
    assert_close(got, x, w, b, "gelu", np.float16)


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_simulated_cuda_float16_takes_mma(cp, rng, activation):  # noqa: F811  (cp: the fixture)
    from liam_gpu import backends

    x = rng.standard_normal((37, 32)).astype(np.float16)
    w = (rng.standard_normal((45, 32)) / 6).astype(np.float16)
    b = rng.standard_normal(45).astype(np.float16)
    got = lg.transform_matrix(x, w, b, activation, device="cuda")
    launch = T.last_launch()
    assert (launch.path, launch.config) == ("mma", "mma_medium")
    assert backends.get_backend("cuda:0").runtime.compute_capability == (9, 0)
    assert type(got) is np.ndarray and got.dtype == np.float16
    assert_close(got, x, w, b, activation, np.float16)


def test_simulated_cuda_bfloat16_takes_mma(cp, rng):  # noqa: F811
    from liam_gpu import backends

    runtime = backends.get_backend("cuda:0").runtime
    x, w, b, out = inputs(rng, "bfloat16", 2, 19, 24, 21)
    xd, wd, bd, outd = (cp.asarray(a) for a in (x, w, b, out))
    T.batched_linear(runtime, xd, wd, bd, ACTIVATIONS["gelu_tanh"], outd, storage="bfloat16")
    assert T.last_launch().path == "mma"
    check(outd.get(), x, w, b, "gelu_tanh", "bfloat16")


@pytest.mark.parametrize("mode", ["address", "thread"])
def test_ldmatrix_and_mma_under_the_sanitizers(rng, mode):
    # The thread engine runs each lane as an OS thread: the collective reads
    # and writes the other lanes' operands while they wait, which neither
    # sanitizer may report.
    from liam_gpu.emulator import EmulatorModule, sanitizer_available

    if not sanitizer_available(mode):
        pytest.skip(f"the compiler has no {mode} sanitizer runtime")
    module = EmulatorModule(PRIMITIVES, name_expressions=["ldsm_mma<lg_bf16>"], options=compile_options(),
                            sanitize=mode)
    a = rng.integers(-4, 5, (16, 16)).astype(np.float64)
    w = rng.integers(-4, 5, (8, 16)).astype(np.float64)
    d = np.full((16, 8), np.nan, np.float32)
    module.get_function("ldsm_mma<lg_bf16>")((1,), (32,), (bits16(a, "bfloat16"), bits16(w, "bfloat16"), d, 0))
    np.testing.assert_array_equal(d, (a @ w.T).astype(np.float32))
