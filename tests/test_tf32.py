"""TF32 tensor cores for float32 transforms (``precision="tf32"``, issue 17).

* the emulator's ``cvt.rna.tf32.f32`` against an arithmetic numpy rounding
  (ties away from zero, infinities, NaN, overflow, subnormals), and its
  ``mma.sync m16n8k8 .tf32`` against numpy through fragments built straight
  from the PTX ISA layout, and through ``ldmatrix`` the way the tile loads
  them; a lane that skips the mma is a fault;
* the TF32 tile through the launch layer on the emulator: every tile, ragged
  shapes, bias and every activation, batched, degenerate shapes, against
  the float64 reference at the TF32 bound (inputs rounded to 10 mantissa
  bits: ``2 * 2**-11 * sum |x| |w|`` more than float32's bound), and against
  the reference of the tf32-rounded inputs at float32's bound (so the
  arithmetic is exactly "round each input once, accumulate in float32");
* inputs where TF32 must lose: the result is *not* within float32's bound
  (the TF32 path really ran), and ties round away from zero (cvt.rna, not
  truncation nor round-to-even);
* a planted lane swap fails the comparison;
* which path runs: only with ``tf32=True``; d_in % 4 and misaligned views
  fall back to the SIMT kernel in full float32; a large float32 shape on a
  cc 8.0 GPU takes the TF32 tile instead of cuBLAS SGEMM, and cuBLAS again
  when its inputs are misaligned;
* the public ``precision=`` keyword: values, the ValueError naming it,
  the CPU backend computing full float32, float64 / float16 / bfloat16
  ignoring it, BinaryAlgebra, the torch autograd layer, a Scheduler and the
  simulated CUDA path.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu.activations import ACTIVATIONS
from liam_gpu.backends import emulator_available
from liam_gpu.launch import transform as T
from liam_gpu.launch.family import compile_options
from liam_gpu.launch.runtime import EmulatorRuntime

from test_cuda_path_simulated import cp  # noqa: F401  (the simulated-CuPy fixture)
from test_transform import reference, tolerance
from test_transform_mma import PLANT, aligned_empty

pytestmark = pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++")

#: Unit roundoff of tf32 (10 stored mantissa bits, round to nearest).
U_TF32 = 2.0 ** -11


# --------------------------------------------------------------------------- references


def tf32_round(values) -> np.ndarray:
    """float32 values rounded to tf32 as cvt.rna does, computed arithmetically in float64.

    The spacing of tf32 at ``|v|`` is ``2**(e - 11)`` for ``|v| = m 2**e``,
    ``m`` in [0.5, 1), and never below the subnormal spacing ``2**-136``;
    halfway cases go away from zero; what rounds past the largest float is
    infinity.
    """
    v = np.asarray(values, np.float32).astype(np.float64)
    out = v.copy()
    finite = np.isfinite(v) & (v != 0)
    _, e = np.frexp(v[finite])
    ulp = np.maximum(np.ldexp(1.0, e - 11), 2.0 ** -136)
    mag = np.floor(np.abs(v[finite]) / ulp + 0.5) * ulp
    r = np.copysign(mag, v[finite])
    r[np.abs(r) > np.finfo(np.float32).max] = np.copysign(np.inf, r[np.abs(r) > np.finfo(np.float32).max])
    out[finite] = r
    return out


def tf32_tolerance(x, w, b, ref) -> np.ndarray:
    """Elementwise bound of a correct TF32 transform.

    Each product of inputs rounded with relative error <= u = 2**-11 errs by
    at most ``(2u + u**2) |x||w|``; the activation's slope is <= 1.13; on top
    of that, float32 accumulation and output rounding as in
    ``test_transform.tolerance``.
    """
    ax, aw = np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64))
    scale = np.matmul(ax, np.swapaxes(aw, -1, -2))
    return 1.2 * (2 * U_TF32 + U_TF32 ** 2) * scale + tolerance(np.float32, x, w, b, ref)


def check_tf32(out, x, w, b, activation):
    """``out`` is a correct TF32 result: near the float64 truth and exactly the rounded inputs' product."""
    x64, w64, b64 = (None if a is None else np.asarray(a, np.float64) for a in (x, w, b))
    ref = reference(x64, w64, b64, activation)
    got = np.asarray(out, np.float64)
    assert np.all(np.isfinite(got)), "some outputs are not finite (unwritten or overflowed)"
    err, tol = np.abs(got - ref), tf32_tolerance(x64, w64, b64, ref)
    assert np.all(err <= tol), f"max excess {np.max(err - tol):.3e} over the TF32 bound"
    # The same result is float32-accurate for the tf32-rounded inputs (bias is added in float32).
    xr, wr = tf32_round(x), tf32_round(w)
    ref_r = reference(xr, wr, b64, activation)
    err_r, tol_r = np.abs(got - ref_r), tolerance(np.float32, xr, wr, b64, ref_r)
    assert np.all(err_r <= tol_r), f"max excess {np.max(err_r - tol_r):.3e} over float32's bound of rounded inputs"


def excess32(out, x, w, b, activation) -> float:
    """max(|error| - float32 tolerance) against the float64 truth (> 0: not float32-accurate)."""
    x64, w64, b64 = (None if a is None else np.asarray(a, np.float64) for a in (x, w, b))
    ref = reference(x64, w64, b64, activation)
    return float(np.max(np.abs(np.asarray(out, np.float64) - ref) - tolerance(np.float32, x64, w64, b64, ref)))


@pytest.fixture(scope="module")
def rt():
    from liam_gpu.launch.runtime import emulator_runtime

    return emulator_runtime()


def inputs(rng, batch, n, d_in, d_out, *, bias=True, x_offset=0, w_offset=0):
    """Aligned float32 x, w, bias and a NaN-poisoned out; weights scaled like a trained layer."""
    lead = (batch,) if batch else ()

    def make(shape, scale=1.0, offset=0):
        a = aligned_empty(shape, np.float32, offset_bytes=offset)
        a[...] = rng.standard_normal(shape) * scale
        return a

    x = make(lead + (n, d_in), offset=x_offset)
    w = make(lead + (d_out, d_in), 1 / np.sqrt(max(d_in, 1)), offset=w_offset)
    b = make(lead + (d_out,)) if bias else None
    out = np.full(lead + (n, d_out), np.nan, np.float32)
    return x, w, b, out


def run(rt, x, w, b, activation, out, **kw):
    fn = T.batched_linear if x.ndim == 3 else T.linear
    return fn(rt, x, w, b, ACTIVATIONS[activation], out, **kw)


def losing_inputs(rng, n, d_in, d_out):
    """Inputs TF32 must round: x = (1 + 3 * 2**-13) 2**e rounds to 2**e, w small integers (exact).

    The TF32 product is then exactly ``sum 2**e w``, and the float64 truth is
    ``1 + 3 * 2**-13`` times that: a relative error of 3.7e-4, far above
    float32's bound for ``d_in + 2 < 2**11 * 3 / 1.2``.
    """
    e = rng.integers(-3, 4, (n, d_in)).astype(np.float64)
    x = aligned_empty((n, d_in), np.float32)
    x[...] = (1 + 3 * 2.0 ** -13) * 2.0 ** e
    w = aligned_empty((d_out, d_in), np.float32)
    w[...] = rng.integers(1, 9, (d_out, d_in))
    return x, w, 2.0 ** e @ w.astype(np.float64).T


# --------------------------------------------------------------------------- the emulated primitives

PRIMITIVES = r"""
#include "mma.cuh"

__global__ void cvt_tf32(const unsigned* in, unsigned* out, long long n) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) out[i] = lg_cvt_rna_tf32(in[i]);
}

// One m16n8k8 tf32 with the fragments built straight from the PTX ISA layout:
// a 16x8 row-major, b 8x8 (k, n) row-major, c and d 16x8 (float bits in a, b).
__global__ void mma_direct_tf32(const unsigned* a, const unsigned* b, const float* c, float* d, long long skip_lane) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned af[4], bf[2];
    float acc[4];
    for (int i = 0; i < 4; ++i) af[i] = a[(g + 8 * (i & 1)) * 8 + t + 4 * (i >> 1)];
    for (int i = 0; i < 2; ++i) bf[i] = b[(t + 4 * i) * 8 + g];
    for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    if (lane == skip_lane) return;  // a lane that leaves the warp before the mma
    lg_mma_1688_tf32(acc, af, bf);
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// The composition the tile uses: A (16x8 floats) and W (8x8 floats, w's
// layout: n rows of k) in shared memory with 48-byte rows, ldmatrix.x4 for A
// and .x2 for B (pairs of b16 columns are the 32-bit columns), one mma; d = A W^T.
__global__ void ldsm_mma_tf32(const float* a, const float* wt, float* d) {
    alignas(16) __shared__ float sa[16][12];
    alignas(16) __shared__ float sb[8][12];
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    for (int e = lane; e < 128; e += 32) sa[e / 8][e % 8] = a[e];
    for (int e = lane; e < 64; e += 32) sb[e / 8][e % 8] = wt[e];
    __syncwarp();
    unsigned af[4], bf[2];
    lg_ldmatrix_x4(af, &sa[lane & 15][(lane >> 4) * 4]);
    lg_ldmatrix_x2(bf, &sb[lane & 7][((lane >> 3) & 1) * 4]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    lg_mma_1688_tf32(acc, af, bf);
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}
"""


@pytest.fixture(scope="module")
def prim():
    from liam_gpu.emulator import EmulatorModule

    return EmulatorModule(PRIMITIVES, name_expressions=["cvt_tf32", "mma_direct_tf32", "ldsm_mma_tf32"],
                          options=compile_options())


def bits(values) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, np.float32)).view(np.uint32)


def test_emulated_cvt_rna_tf32_matches_numpy(prim, rng):
    f32 = np.finfo(np.float32)
    special = [0.0, -0.0, 1.0, 1 + 2.0 ** -11, -(1 + 2.0 ** -11), 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -23,
               1 + 2.0 ** -11 - 2.0 ** -23, 1 + 3 * 2.0 ** -13, np.inf, -np.inf, f32.max, -f32.max, f32.tiny,
               f32.tiny * (1 + 2.0 ** -11), f32.smallest_subnormal, 2.0 ** -137, 3 * 2.0 ** -137, 2.0 ** -136,
               1.5 * 2.0 ** -136, 65504.0, 2.0 ** 127 * (2 - 2.0 ** -11)]
    values = np.concatenate([np.array(special, np.float32),
                             (rng.standard_normal(3000) * 2.0 ** rng.integers(-140, 128, 3000)).astype(np.float32),
                             rng.standard_normal(1000).astype(np.float32)])
    out = np.zeros(values.size, np.uint32)
    prim.get_function("cvt_tf32")((1,), (128,), (bits(values), out, values.size))
    got = out.view(np.float32)
    assert np.all(out & 0x1FFF == 0), "a tf32 value keeps only 10 mantissa bits"
    np.testing.assert_array_equal(got.astype(np.float64), tf32_round(values))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(values))  # -0 stays -0
    assert got[3] == 1 + 2.0 ** -10 and got[4] == -(1 + 2.0 ** -10)  # ties away from zero
    assert got[5] == 1 + 2.0 ** -9  # 1 + 3 * 2**-11: a tie between 1 + 2**-10 and 1 + 2**-9, away
    assert got[11] == np.inf and got[12] == -np.inf  # the largest float rounds up past it
    # Infinity and NaN are only masked, as ptxas's SASS for sm_80/sm_90 does: a NaN
    # with payload in the top bits stays that NaN (unquieted), one with payload only
    # in the low 13 bits becomes an infinity of its sign.
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7FA00000, 0x7FA01234, 0x7F800001, 0xFF800FFF, 0x7F800000],
                        np.uint32)
    out = np.zeros(nan_bits.size, np.uint32)
    prim.get_function("cvt_tf32")((1,), (32,), (nan_bits, out, nan_bits.size))
    np.testing.assert_array_equal(out, [0x7FC00000, 0xFFC00000, 0x7FA00000, 0x7FA00000, 0x7F800000, 0xFF800000,
                                        0x7F800000])


def test_emulated_mma_tf32_matches_numpy(prim, rng):
    # Values exact in tf32 (small integers times powers of two) whose products
    # and sums are exact in float32; plus a row of arbitrary tf32 values,
    # where only float32 rounding of the sum may differ.
    a = rng.integers(-8, 9, (16, 8)) * 2.0 ** rng.integers(-4, 5, (16, 8))
    b = rng.integers(-8, 9, (8, 8)) * 2.0 ** rng.integers(-4, 5, (8, 8))
    a[15] = tf32_round(rng.standard_normal(8))
    c = rng.integers(-100, 101, (16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    prim.get_function("mma_direct_tf32")((1,), (32,), (bits(a), bits(b), c, d, -1))
    want = a @ b + c
    np.testing.assert_array_equal(d[:15], want[:15].astype(np.float32))
    np.testing.assert_allclose(d[15], want[15], rtol=2 ** -24, atol=0)


def test_emulated_mma_reads_only_the_tf32_bits(prim):
    # Registers that are not tf32 (no cvt): the mma drops the low 13 bits, so
    # 1 + 2**-11 (a tie that cvt.rna rounds up) counts as 1.
    a = np.zeros((16, 8))
    a[:, 0] = 1 + 2.0 ** -11
    b = np.zeros((8, 8))
    b[0] = 1.0
    d = np.full((16, 8), np.nan, np.float32)
    prim.get_function("mma_direct_tf32")((1,), (32,), (bits(a), bits(b), np.zeros((16, 8), np.float32), d, -1))
    np.testing.assert_array_equal(d, np.ones((16, 8), np.float32))


def test_ldmatrix_then_tf32_mma_computes_a_times_w_transposed(prim, rng):
    a = rng.integers(-4, 5, (16, 8)).astype(np.float32)
    w = rng.integers(-4, 5, (8, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    prim.get_function("ldsm_mma_tf32")((1,), (32,), (a, w, d))
    np.testing.assert_array_equal(d, (a.astype(np.float64) @ w.T).astype(np.float32))


def test_a_lane_that_skips_the_tf32_mma_is_a_fault(prim):
    from liam_gpu.emulator import KernelFault

    z, c = np.zeros((16, 8), np.uint32), np.zeros((16, 8), np.float32)
    with pytest.raises(KernelFault, match=r"mma\.sync\.aligned\.m16n8k8\.tf32.* waits for lane 5, which has exited"):
        prim.get_function("mma_direct_tf32")((1,), (32,), (z, z[:8].copy(), c, c.copy(), 5))


# --------------------------------------------------------------------------- the TF32 tile: values


@pytest.mark.parametrize("config", list(T.MMA_CONFIGS["float32"]))
def test_every_tf32_tile_ragged_shapes(rt, rng, config):
    c = T.MMA_CONFIGS["float32"][config]
    # Ragged in m and n; d_in a multiple of 4 but not of BK, two and a bit k-tiles.
    n, d_in, d_out = c.bm + 3, 2 * c.bk + 4, c.bn + 5
    x, w, b, out = inputs(rng, None, n, d_in, d_out)
    run(rt, x, w, b, "gelu", out, config=config, tf32=True)
    launch = T.last_launch()
    assert (launch.path, launch.config, launch.vec) == ("mma", config, True)
    assert launch.block == (c.threads, 1, 1)
    check_tf32(out, x, w, b, "gelu")


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS), ids=str)
def test_every_activation_with_and_without_bias(rt, rng, activation, with_bias):
    x, w, b, out = inputs(rng, None, 37, 44, 45, bias=with_bias)
    run(rt, x, w, b, activation, out, tf32=True)
    assert T.last_launch().path == "mma"
    check_tf32(out, x, w, b, activation)


@pytest.mark.parametrize("config", list(T.MMA_CONFIGS["float32"]))
def test_batched_each_item_its_own_weights(rt, rng, config):
    x, w, b, out = inputs(rng, 3, 21, 28, 19)
    run(rt, x, w, b, "silu", out, config=config, tf32=True)
    assert T.last_launch().path == "mma"
    check_tf32(out, x, w, b, "silu")


def test_long_accumulation(rt, rng):
    x, w, b, out = inputs(rng, None, 20, 1000, 24)
    run(rt, x, w, b, None, out, tf32=True)
    assert T.last_launch().path == "mma"
    check_tf32(out, x, w, b, None)


def test_degenerate_shapes(rt, rng):
    x, w, b, out = inputs(rng, None, 5, 0, 3)  # d_in = 0: act(bias), exactly
    run(rt, x, w, b, "tanh", out, tf32=True)
    assert T.last_launch().path == "mma"
    check_tf32(out, x, w, b, "tanh")
    x, w, b, out = inputs(rng, None, 1, 4, 1)
    run(rt, x, w, b, None, out, tf32=True)
    check_tf32(out, x, w, b, None)
    x, w, b, out = inputs(rng, None, 0, 8, 4)
    run(rt, x, w, b, None, out, tf32=True)
    assert T.last_launch().grid == (0, 0, 0)


def test_inputs_are_not_modified(rt, rng):
    # The rounding to tf32 happens on the way into shared memory, never in place.
    x, w, b, out = inputs(rng, None, 33, 16, 17)
    before = [a.copy() for a in (x, w, b)]
    run(rt, x, w, b, "gelu", out, tf32=True)
    for a, a0 in zip((x, w, b), before):
        np.testing.assert_array_equal(a, a0)


def test_non_finite_inputs_propagate(rt, rng):
    x, w, _, out = inputs(rng, None, 4, 16, 8, bias=False)
    x[1, 3] = np.inf
    x[2, 5] = np.nan
    run(rt, x, w, None, None, out, tf32=True)
    ref = reference(x.astype(np.float64), w.astype(np.float64), None, None)
    np.testing.assert_array_equal(np.isnan(out[1:3]), np.isnan(ref[1:3]))
    np.testing.assert_array_equal(out[1:3][np.isinf(ref[1:3])], ref[1:3][np.isinf(ref[1:3])])
    check_tf32(out[[0, 3]], x[[0, 3]], w, None, None)


# --------------------------------------------------------------------------- TF32 must lose


def test_tf32_loses_where_it_must_and_float32_does_not(rt, rng):
    x, w, exact_tf32 = losing_inputs(rng, 40, 64, 24)
    out = np.full((40, 24), np.nan, np.float32)
    run(rt, x, w, None, None, out, tf32=True)
    assert T.last_launch().path == "mma"
    np.testing.assert_array_equal(out, exact_tf32.astype(np.float32))  # inputs rounded, sums exact
    check_tf32(out, x, w, None, None)
    assert excess32(out, x, w, None, None) > 0  # not float32-accurate: the TF32 path ran
    full = np.full_like(out, np.nan)
    run(rt, x, w, None, None, full)  # the default: full float32
    assert T.last_launch().path == "kernel"
    assert excess32(full, x, w, None, None) <= 0


def test_ties_round_away_from_zero(rt):
    # 1 + 2**-11 lies halfway between the tf32 values 1 and 1 + 2**-10:
    # cvt.rna gives 1 + 2**-10 (truncation, or round to even, would give 1).
    d_in = 32
    x = aligned_empty((16, d_in), np.float32)
    x[...] = 1 + 2.0 ** -11
    x[8:] *= -1
    w = aligned_empty((8, d_in), np.float32)
    w[...] = 1.0
    out = np.full((16, 8), np.nan, np.float32)
    run(rt, x, w, None, None, out, tf32=True)
    want = np.where(np.arange(16)[:, None] < 8, 1.0, -1.0) * d_in * (1 + 2.0 ** -10)
    np.testing.assert_array_equal(out, np.broadcast_to(want, (16, 8)).astype(np.float32))


# --------------------------------------------------------------------------- which path runs


def test_without_tf32_float32_never_takes_tensor_cores(rt, rng):
    x, w, b, out = inputs(rng, None, 37, 44, 45)
    run(rt, x, w, b, "relu", out)
    assert T.last_launch().path == "kernel"
    assert excess32(out, x, w, b, "relu") <= 0
    assert T.plan(rt, 4096, 4096, 4096, np.float32).path == "kernel"
    assert T.plan(rt, 4096, 4096, 4096, np.float32, tf32=True) == T.Plan("mma", "mma_large")


def test_fallback_to_simt_float32_for_d_in_not_a_multiple_of_4(rt, rng):
    x, w, b, out = inputs(rng, None, 20, 34, 18)
    run(rt, x, w, b, "gelu", out, tf32=True)
    assert T.last_launch().path == "kernel"
    assert excess32(out, x, w, b, "gelu") <= 0  # full float32
    with pytest.raises(ValueError, match="path='mma' cannot run this launch: d_in=34 is not a multiple of 4"):
        run(rt, x, w, b, "gelu", out, path="mma", tf32=True)


@pytest.mark.parametrize("which", ["x", "w"])
def test_fallback_to_simt_float32_for_misaligned_views(rt, rng, which):
    x, w, b, out = inputs(rng, None, 20, 32, 18, x_offset=4 * (which == "x"), w_offset=4 * (which == "w"))
    run(rt, x, w, b, "relu", out, tf32=True)
    launch = T.last_launch()
    assert (launch.path, launch.vec) == ("kernel", False)
    assert excess32(out, x, w, b, "relu") <= 0
    with pytest.raises(ValueError, match=f"{which} does not start on a 16-byte boundary"):
        run(rt, x, w, b, "relu", out, config="mma_medium", tf32=True)


class _Runtime(EmulatorRuntime):
    """An emulator runtime that reports another kind and compute capability (plans only)."""

    def __init__(self, cc, kind="emulator"):
        super().__init__()
        self.compute_capability = cc
        self.kind = kind


def test_plan_of_float32_with_tf32():
    sm80 = _Runtime((8, 0), kind="cuda")
    # Large float32 goes to cuBLAS SGEMM in float32, but to our TF32 tile when allowed.
    assert T.plan(sm80, 4096, 4096, 4096, np.float32).path == "blas+epilogue"
    assert T.plan(sm80, 4096, 4096, 4096, np.float32, tf32=True) == T.Plan("mma", "mma_large")
    assert T.plan(sm80, 4096, 4094, 4096, np.float32, tf32=True).path == "blas+epilogue"  # d_in % 4
    assert T.plan(sm80, 65536, 256, 256, np.float32, tf32=True) == T.Plan("mma", "mma_large")
    assert T.plan(sm80, 100000, 256, 8, np.float32, tf32=True) == T.Plan("mma", "mma_skinny")
    # No TF32 before compute capability 8.0: the permission changes nothing.
    sm75 = _Runtime((7, 5), kind="cuda")
    assert T.plan(sm75, 4096, 4096, 4096, np.float32, tf32=True).path == "blas+epilogue"
    assert T.plan(sm75, 100, 64, 50, np.float32, tf32=True).path == "kernel"
    # Other dtypes ignore it.
    assert T.plan(sm80, 100, 64, 50, np.float64, tf32=True).path == "kernel"
    assert T.plan(sm80, 100, 64, 50, np.float16, tf32=True) == T.plan(sm80, 100, 64, 50, np.float16)


def test_tf32_configs_mirror_the_16_bit_tiles():
    for name, c in T.MMA_CONFIGS["float32"].items():
        h = T.MMA_CONFIGS["float16"][name]
        assert (c.bm, c.bn, c.wm, c.wn, c.threads) == (h.bm, h.bn, h.wm, h.wn, h.threads)
        assert (c.mma_k, c.itemsize, c.bk * 4) == (8, 4, h.bk * 2)
        assert c.shared_bytes() == h.shared_bytes() and c.mma_per_k_tile == h.mma_per_k_tile
        assert c.ldmatrix_per_k_tile == h.ldmatrix_per_k_tile


# --------------------------------------------------------------------------- a planted layout bug


class PlantedRuntime(EmulatorRuntime):
    """The emulator runtime, with the tensor-core entries built with ``-DLG_PLANT_MMA_LANE_SWAP``."""

    def _load(self, family, name_expressions):
        from liam_gpu.emulator import EmulatorModule

        names = [n for n in name_expressions if n.startswith("linear_mma_kernel<float,")]
        return EmulatorModule(family.code(), name_expressions=names, options=compile_options(PLANT))


def test_planted_lane_swap_fails_the_comparison(rt, rng):
    x, w, b, out = inputs(rng, None, 37, 44, 45)
    run(rt, x, w, b, "gelu", out, tf32=True)
    check_tf32(out, x, w, b, "gelu")  # the real kernel passes ...
    planted = np.zeros_like(out)
    run(PlantedRuntime(), x, w, b, "gelu", planted, tf32=True)
    assert T.last_launch().path == "mma"
    with pytest.raises(AssertionError, match="over the TF32 bound"):  # ... the swapped fragments do not
        check_tf32(planted, x, w, b, "gelu")


# --------------------------------------------------------------------------- the public keyword


def test_public_precision_values(rng):
    x = rng.standard_normal((33, 48)).astype(np.float32)
    w = (rng.standard_normal((20, 48)) / 7).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    default = lg.transform_matrix(x, w, b, "gelu", device="emulator")
    assert T.last_launch().path == "kernel"
    same = lg.transform_matrix(x, w, b, "gelu", device="emulator", precision="float32")
    np.testing.assert_array_equal(same, default)
    got = lg.transform_matrix(x, w, b, "gelu", device="emulator", precision="tf32")
    assert T.last_launch().path == "mma"
    assert got.dtype == np.float32
    check_tf32(got, x, w, b, "gelu")
    algebra = lg.BinaryAlgebra(device="emulator")
    np.testing.assert_array_equal(algebra.transform_matrix(x, w, b, "gelu", precision="tf32"), got)


@pytest.mark.parametrize("bad", ["fp32", "TF32", "bfloat16", "", 32, True])
def test_unknown_precision_is_a_value_error_naming_it(rng, bad):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="precision=.* is unknown; expected None, 'float32' or 'tf32'"):
        lg.transform_matrix(x, w, device="cpu", precision=bad)
    with pytest.raises(ValueError, match="precision="):
        lg.BinaryAlgebra(device="emulator").transform_matrix(x, w, precision=bad)


def test_unknown_precision_is_refused_on_the_torch_and_scheduler_routes(rng):
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 8)
    w = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(ValueError, match="precision='half' is unknown"):  # autograd
        lg.transform_matrix(x, w, precision="half")
    with pytest.raises(ValueError, match="precision='half' is unknown"):  # torch CPU tensors (torch's GEMM)
        lg.transform_matrix(x, w.detach(), precision="half")
    with pytest.raises(ValueError, match="precision='half' is unknown"):
        lg.transform_matrix(x.numpy(), w.detach().numpy(), device=lg.Scheduler(["cpu"]), precision="half")


def test_cpu_backend_computes_full_float32_under_tf32(rng):
    x = rng.standard_normal((40, 64)).astype(np.float32)
    w = rng.standard_normal((24, 64)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    for activation in (None, "silu"):
        want = lg.transform_matrix(x, w, b, activation, device="cpu")
        got = lg.transform_matrix(x, w, b, activation, device="cpu", precision="tf32")
        np.testing.assert_array_equal(got, want)
    xl, wl, _ = losing_inputs(rng, 8, 64, 8)
    assert excess32(lg.transform_matrix(xl, wl, device="cpu", precision="tf32"), xl, wl, None, None) <= 0


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_other_dtypes_ignore_tf32(rng, dtype):
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x = rng.standard_normal((33, 48)).astype(np_dtype)
    w = (rng.standard_normal((20, 48)) / 7).astype(np_dtype)
    want = lg.transform_matrix(x, w, None, "relu", device="emulator")
    path = T.last_launch().path
    got = lg.transform_matrix(x, w, None, "relu", device="emulator", precision="tf32")
    assert T.last_launch().path == path == ("kernel" if dtype == "float64" else "mma")
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_mixed_float16_and_float32_computes_float32_under_tf32(rng):
    # float16 data with float32 weights computes (and returns) float32: tf32 applies.
    x = rng.standard_normal((20, 32)).astype(np.float16)
    w = rng.standard_normal((12, 32)).astype(np.float32)
    got = lg.transform_matrix(x, w, device="emulator", precision="tf32")
    assert T.last_launch().path == "mma" and got.dtype == np.float32
    check_tf32(got, x.astype(np.float32), w, None, None)


def test_torch_autograd_with_tf32(rng):
    torch = pytest.importorskip("torch")
    x64 = rng.standard_normal((24, 32))
    w64 = rng.standard_normal((16, 32)) / 6
    x = torch.tensor(x64, dtype=torch.float32, requires_grad=True)
    w = torch.tensor(w64, dtype=torch.float32, requires_grad=True)
    y = lg.transform_matrix(x, w, activation=None, device="emulator", precision="tf32")
    assert T.last_launch().path == "mma"
    check_tf32(y.detach().numpy(), x.detach().numpy(), w.detach().numpy(), None, None)
    g = torch.ones_like(y)
    y.backward(g)
    assert T.last_launch().path == "mma"  # the backward products run under tf32 as well
    # dL/dx = g @ W: a transform of g (24 x 16) with weights W.T (32 x 16).
    gx_ref = reference(np.ones((24, 16)), w.detach().numpy().astype(np.float64).T, None, None)
    tol = tf32_tolerance(np.ones((24, 16)), w.detach().numpy().T, None, gx_ref)
    assert np.all(np.abs(x.grad.numpy() - gx_ref) <= tol)


def test_scheduler_forwards_tf32():
    rng = np.random.default_rng(5)
    x, w, exact = losing_inputs(rng, 24, 32, 8)
    got = lg.transform_matrix(x, w, device=lg.Scheduler(["emulator:0", "emulator:1"], chunk_size=8),
                              precision="tf32")
    np.testing.assert_array_equal(got, exact.astype(np.float32))
    full = lg.transform_matrix(x, w, device=lg.Scheduler(["emulator:0"], chunk_size=8))
    assert excess32(full, x, w, None, None) <= 0


# --------------------------------------------------------------------------- simulated CUDA


def test_simulated_cuda_float32_takes_tf32_only_when_allowed(cp, rng):  # noqa: F811  (cp: the fixture)
    x, w, exact = losing_inputs(rng, 37, 32, 45)
    got = lg.transform_matrix(x, w, device="cuda", precision="tf32")
    assert (T.last_launch().path, T.last_launch().config) == ("mma", "mma_medium")
    assert type(got) is np.ndarray and got.dtype == np.float32
    np.testing.assert_array_equal(got, exact.astype(np.float32))
    full = lg.transform_matrix(x, w, device="cuda")
    assert T.last_launch().path == "kernel"
    assert excess32(full, x, w, None, None) <= 0


def test_simulated_cuda_large_misaligned_float32_goes_back_to_cublas(cp, rng):  # noqa: F811
    # A BLAS-sized float32 shape under tf32 plans the TF32 tile; a misaligned
    # view cannot take it and goes where float32 would go without tensor
    # cores: cuBLAS SGEMM (the fake CuPy's matmul), in float32.
    from liam_gpu import backends

    runtime = backends.get_backend("cuda:0").runtime
    n, d_in, d_out = 1024, 512, 1024
    assert T.plan(runtime, n, d_in, d_out, np.float32, tf32=True).path == "mma"
    xs = (rng.standard_normal(n * d_in + 1) / 8).astype(np.float32)
    ws = (rng.standard_normal((d_out, d_in)) / 8).astype(np.float32)
    xd = cp.asarray(xs)[1:].reshape(n, d_in)  # 4 bytes past the allocation's alignment
    wd = cp.asarray(ws)
    out = cp.empty((n, d_out), dtype=cp.float32)
    T.linear(runtime, xd, wd, None, 0, out, tf32=True)
    assert T.last_launch().path == "blas+epilogue"
    x = xs[1:].reshape(n, d_in)
    assert excess32(out.get(), x, ws, None, None) <= 0


# --------------------------------------------------------------------------- the randomized SVD's passes


def near_low_rank(rng, m, n, k, tail):
    """float32 ``A = U diag(s) V^T`` with ``s`` = k values in (1, 2], then ``tail``; and its float64 value."""
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.where(np.arange(n) < k, 1.0 + np.arange(n)[::-1] / n, tail)
    a = ((u * s) @ v.T).astype(np.float32)
    return a, a.astype(np.float64)


def svd_error(a64, u, s, vt) -> float:
    return float(np.linalg.norm(a64 - (np.asarray(u, np.float64) * np.asarray(s, np.float64)) @ vt))


@pytest.mark.parametrize("wide", [False, True], ids=["tall", "wide"])
def test_svd_tf32_error_over_the_optimum(rng, wide):
    # The range finder's passes multiply by A rounded to tf32 (|E| <= u |A|
    # elementwise, u = 2**-11) and by a rounded basis: the basis is that of a
    # matrix within (2u + u**2) ||A||_F of A, so the error of the projection
    # onto it exceeds the float32 run's by at most about 2 (2u + u**2) ||A||_F.
    # On a matrix whose optimal rank-k error (1e-5 ||A||) is below that,
    # TF32 is measurably worse; with q = 0 there is no TF32 product at all
    # (the Philox sketch runs in float32), so the result is the default's.
    a, a64 = near_low_rank(rng, 600, 300, 10, 1e-5)
    if wide:
        a, a64 = np.ascontiguousarray(a.T), np.ascontiguousarray(a64.T)
    k = 10
    opt = float(np.sqrt(np.sum(np.linalg.svd(a64, compute_uv=False)[k:] ** 2)))
    norm = float(np.linalg.norm(a64))
    full = svd_error(a64, *lg.randomized_svd(a, k, n_iter=2, device="emulator"))
    tf32 = svd_error(a64, *lg.randomized_svd(a, k, n_iter=2, device="emulator", precision="tf32"))
    assert full <= 1.01 * opt
    assert full < tf32 <= full + 2 * (2 * U_TF32 + U_TF32 ** 2) * norm
    # Recorded in docs/api.md: 1.0001 and 1.76 on this matrix (tall and wide).
    print(f"error / optimal: float32 {full / opt:.4f}, tf32 {tf32 / opt:.4f}")
    same = lg.randomized_svd(a, k, n_iter=0, device="emulator", precision="tf32")
    for x, y in zip(same, lg.randomized_svd(a, k, n_iter=0, device="emulator")):
        np.testing.assert_array_equal(x, y)


def test_svd_tf32_final_projection_stays_float32(rng):
    # A well-separated spectrum: the TF32 basis spans the same dominant
    # subspace to ~u, and the factors come from B = Q^T A in float32, so the
    # singular values are float32-accurate to second order in u.
    a, a64 = near_low_rank(rng, 400, 200, 8, 1e-3)
    s_true = np.linalg.svd(a64, compute_uv=False)[:8]
    _, s, _ = lg.randomized_svd(a, 8, n_iter=4, device="emulator", precision="tf32")
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, s_true, rtol=(2 * U_TF32) ** 2 + 64 * 2.0 ** -24)


def test_svd_compress_tf32_estimate_measures_what_tf32_cost(rng):
    a, a64 = near_low_rank(rng, 500, 250, 12, 1e-5)
    low = lg.svd_compress(a, 12, device="emulator", precision="tf32")
    true = svd_error(a64, low.U, low.S, low.Vt) / float(np.linalg.norm(a64))
    assert true / 2 <= low.relative_error <= 2 * true  # the estimate's factor-2 promise holds
    tol_low = lg.svd_compress(a, tol=1e-3, device="emulator", precision="tf32")
    assert tol_low.S.shape[0] == 12 and tol_low.relative_error <= 1e-3
    assert svd_error(a64, tol_low.U, tol_low.S, tol_low.Vt) / float(np.linalg.norm(a64)) <= 1e-3  # the truth too


def test_svd_tf32_ignored_by_the_cpu_float64_and_sparse(rng):
    import scipy.sparse

    a, a64 = near_low_rank(rng, 200, 100, 6, 1e-4)
    for x, dev in ((a, "cpu"), (a64, "emulator")):
        want = lg.randomized_svd(x, 6, device=dev)
        got = lg.randomized_svd(x, 6, device=dev, precision="tf32")
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    sp = scipy.sparse.random(300, 120, density=0.05, format="csr", dtype=np.float32, random_state=3)
    want = lg.randomized_svd(sp, 5, device="cpu")
    got = lg.randomized_svd(sp, 5, device="cpu", precision="tf32")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_svd_centred_tf32(rng):
    # Centring wraps the dense operator: its passes take TF32 too, the float32 bound holds.
    a, a64 = near_low_rank(rng, 300, 120, 6, 1e-5)
    a = a + np.float32(3.0)
    a64 = a.astype(np.float64)
    c64 = a64 - a64.mean(axis=0)
    opt = float(np.sqrt(np.sum(np.linalg.svd(c64, compute_uv=False)[6:] ** 2)))
    u, s, vt = lg.randomized_svd(a, 6, n_iter=2, center=True, device="emulator", precision="tf32")
    full = svd_error(c64, *lg.randomized_svd(a, 6, n_iter=2, center=True, device="emulator"))
    assert svd_error(c64, u, s, vt) <= full + 2 * (2 * U_TF32 + U_TF32 ** 2) * float(np.linalg.norm(a64))
    assert full <= 1.01 * opt + 1e-6 * float(np.linalg.norm(a64))


@pytest.mark.parametrize("bad", ["fp32", "tf16", 1])
def test_svd_unknown_precision_is_a_value_error(rng, bad):
    a = rng.standard_normal((20, 10)).astype(np.float32)
    with pytest.raises(ValueError, match="precision=.* is unknown"):
        lg.randomized_svd(a, 3, device="cpu", precision=bad)
    with pytest.raises(ValueError, match="precision=.* is unknown"):
        lg.svd_compress(a, 3, device="cpu", precision=bad)


def test_simulated_cuda_svd_sets_cublas_tf32_math_for_the_passes_only(cp, rng, monkeypatch):  # noqa: F811
    # On a GPU the passes ask cuBLAS for TF32 through the math mode of CuPy's
    # handle, as torch's allow_tf32 does, and restore it after each product;
    # the final projection runs with the handle's own mode.
    import types

    DEFAULT, TF32 = 0, 3
    state = {"mode": DEFAULT, "handle": 1234}
    seen = []

    def get(handle):
        assert handle == state["handle"]
        return state["mode"]

    def set_(handle, mode):
        assert handle == state["handle"]
        state["mode"] = mode

    cublas = types.SimpleNamespace(getMathMode=get, setMathMode=set_, CUBLAS_DEFAULT_MATH=DEFAULT,
                                   CUBLAS_TF32_TENSOR_OP_MATH=TF32)
    monkeypatch.setattr(cp.cuda, "cublas", cublas, raising=False)
    monkeypatch.setattr(cp.cuda, "get_cublas_handle", lambda: state["handle"], raising=False)
    real = cp.matmul

    def matmul(x, y, *args, **kwargs):
        if min(x.shape) > 40:  # a product with A (the small ones involve only l x l matrices)
            seen.append(state["mode"])
        return real(x, y, *args, **kwargs)

    monkeypatch.setattr(cp, "matmul", matmul)
    a, _ = near_low_rank(rng, 300, 120, 6, 1e-4)
    lg.randomized_svd(a, 6, n_iter=2, device="cuda", precision="tf32")
    assert state["mode"] == DEFAULT  # restored
    assert seen.count(TF32) >= 4 and seen[-1] == DEFAULT  # the passes TF32, B = Q^T A not
    seen.clear()
    lg.randomized_svd(a, 6, n_iter=2, device="cuda")
    assert seen and set(seen) == {DEFAULT}
