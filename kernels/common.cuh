// Shared device helpers for every liam-gpu kernel family (transform, sketch,
// gram, batched_svd all include this file).
//
// Self-contained CUDA C++: NVRTC here has no cuda_fp16.h and no standard
// headers, and the CPU emulator (which defines LIAM_EMULATOR) compiles this
// same text with g++.  Everything below is therefore plain C++ that both
// compilers accept; GPU-only fast paths (inline PTX) sit under
// `#ifndef LIAM_EMULATOR` next to a plain path that computes the same bits.
//
// Contents:
//   * 64-bit index helpers and the grid-stride loops (grid sizes and element
//     counts can pass 2^31);
//   * lg_half: IEEE binary16 storage with bit-exact round-to-nearest-even
//     conversion from float (the same rule as numpy's float16 cast);
//   * lg_bf16: bfloat16 storage (the top half of a float), round-to-nearest-even
//     from float (the same rule as torch's bfloat16 cast);
//   * lg_math: float/double overloads of the math functions and limits that
//     templated code needs (one name for both precisions);
//   * lg_act: the activations as functor types, and the one dispatch from a
//     launch's activation index to its functor.
#pragma once

// ------------------------------------------------------------------ 64-bit indexing

// This thread's index in a 1-D grid, as a 64-bit value.
__device__ __forceinline__ long long lg_global_thread_1d() {
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}

// Threads in a 1-D grid (the stride of a grid-stride loop), as a 64-bit value.
__device__ __forceinline__ long long lg_grid_threads_1d() {
    return (long long)gridDim.x * (long long)blockDim.x;
}

// Ceiling division for non-negative 64-bit sizes.
__device__ __forceinline__ long long lg_ceil_div(long long a, long long b) {
    return (a + b - 1) / b;
}

// Threads of a warp (a hardware constant; `warpSize` is a variable in CUDA).
constexpr int LG_WARP = 32;

// A strided range of 64-bit indices, for grid-stride loops that run over any
// amount of work with whatever grid the launcher chose:
//   for (const long long i : lg_grid_stride(n))   this thread's elements
//   for (const long long b : lg_block_stride(n))  this block's work items
struct lg_stride_range {
    long long first, limit, step;
    struct iterator {
        long long i, limit, step;
        __device__ __forceinline__ long long operator*() const { return i; }
        __device__ __forceinline__ iterator& operator++() {
            i += step;
            return *this;
        }
        // Every iterator compares against the end by the limit alone.
        __device__ __forceinline__ bool operator!=(const iterator&) const { return i < limit; }
    };
    __device__ __forceinline__ iterator begin() const { return iterator{first, limit, step}; }
    __device__ __forceinline__ iterator end() const { return iterator{limit, limit, step}; }
};

// Indices i = this thread, + all threads of the grid, ... below n.
__device__ __forceinline__ lg_stride_range lg_grid_stride(long long n) {
    return lg_stride_range{lg_global_thread_1d(), n, lg_grid_threads_1d()};
}

// Indices b = this block, + all blocks of the grid, ... below n.
__device__ __forceinline__ lg_stride_range lg_block_stride(long long n) {
    return lg_stride_range{(long long)blockIdx.x, n, (long long)gridDim.x};
}

// ------------------------------------------------------------------ 16-bit storage

// IEEE binary16 as stored in memory (numpy float16): two bytes, no arithmetic.
// Kernels load it, convert to float, compute in float and convert back once.
struct alignas(2) lg_half {
    unsigned short bits;
};

// binary16 -> binary32 (exact: every half value is a float value).
__device__ __forceinline__ float lg_half_to_float(lg_half h) {
#ifndef LIAM_EMULATOR
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
#else
    const unsigned int sign = (unsigned int)(h.bits & 0x8000u) << 16;
    const unsigned int exp = (h.bits >> 10) & 0x1fu;
    const unsigned int man = h.bits & 0x3ffu;
    if (exp == 0x1fu) {  // inf / nan: keep the payload
        return __uint_as_float(sign | 0x7f800000u | (man << 13));
    }
    if (exp == 0u) {  // zero or subnormal: man * 2^-24, exact in float
        const float mag = (float)man * 5.9604644775390625e-8f;
        return sign ? -mag : mag;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}

// binary32 -> binary16, round to nearest, ties to even; overflow gives inf and
// NaN stays NaN.  Both branches give identical bits for every non-NaN input
// (the hardware returns one canonical NaN, this path keeps the payload).
__device__ __forceinline__ lg_half lg_float_to_half(float f) {
    lg_half h;
#ifndef LIAM_EMULATOR
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
    const unsigned int u = __float_as_uint(f);
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int a = u & 0x7fffffffu;
    unsigned int r;
    if (a > 0x7f800000u) {  // NaN: quiet it, keep the top payload bits
        r = 0x7e00u | ((a >> 13) & 0x3ffu);
    } else if (a >= 0x477ff000u) {  // >= 65520 (halfway above 65504) rounds to inf
        r = 0x7c00u;
    } else if (a >= 0x38800000u) {  // normal half: rebias, round 13 dropped bits
        r = (a - 0x38000000u) >> 13;
        const unsigned int rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r += 1u;  // a carry into the exponent is right
    } else if (a > 0x33000000u) {  // subnormal half: value / 2^-24, rounded
        const unsigned int e = a >> 23;  // 102 .. 112
        const unsigned int m = (a & 0x7fffffu) | 0x800000u;
        const unsigned int shift = 126u - e;  // 14 .. 24
        r = m >> shift;
        const unsigned int rem = m & ((1u << shift) - 1u);
        const unsigned int halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) r += 1u;
    } else {  // <= 2^-25: rounds to (signed) zero
        r = 0u;
    }
    h.bits = (unsigned short)(sign | r);
#endif
    return h;
}

// bfloat16 as stored in memory (torch.bfloat16): the top 16 bits of a float.
struct alignas(2) lg_bf16 {
    unsigned short bits;
};

// bfloat16 -> binary32: exact, the bits are the float's top half.
__device__ __forceinline__ float lg_bf16_to_float(lg_bf16 h) {
    return __uint_as_float((unsigned int)h.bits << 16);
}

// binary32 -> bfloat16, round to nearest, ties to even.  Overflow rounds to
// inf by itself (the exponent field is the float's); NaN stays a quiet NaN.
// Both branches give identical bits for every non-NaN input.  cvt.rn.bf16.f32
// needs sm_80: older GPUs (and the emulator) take the integer rounding.
__device__ __forceinline__ lg_bf16 lg_float_to_bf16(float f) {
    lg_bf16 h;
#if !defined(LIAM_EMULATOR) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: quiet it, keep the top payload bits
        h.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {  // adding 0x7fff plus the kept lowest bit rounds half to even
        h.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
#endif
    return h;
}

// ------------------------------------------------------------------ math by precision

// float and double overloads, so templated code calls one name for both.
__device__ __forceinline__ float lg_exp(float x) { return expf(x); }
__device__ __forceinline__ double lg_exp(double x) { return exp(x); }
__device__ __forceinline__ float lg_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double lg_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float lg_erfc(float x) { return erfcf(x); }
__device__ __forceinline__ double lg_erfc(double x) { return erfc(x); }
__device__ __forceinline__ float lg_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double lg_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float lg_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double lg_abs(double x) { return fabs(x); }
__device__ __forceinline__ float lg_frexp(float x, int* e) { return frexpf(x, e); }
__device__ __forceinline__ double lg_frexp(double x, int* e) { return frexp(x, e); }
__device__ __forceinline__ float lg_ldexp(float x, int e) { return ldexpf(x, e); }
__device__ __forceinline__ double lg_ldexp(double x, int e) { return ldexp(x, e); }

// Floating-point limits by precision (no <limits> under NVRTC here).
template <typename F> struct lg_limits;
template <> struct lg_limits<float> {
    // Machine epsilon (2^-23), the smallest normal number (2^-126), the largest finite.
    static __device__ __forceinline__ float eps() { return 1.1920928955078125e-7f; }
    static __device__ __forceinline__ float tiny() { return 1.1754943508222875e-38f; }
    static __device__ __forceinline__ float huge() { return 3.4028234663852886e+38f; }
};
template <> struct lg_limits<double> {
    static __device__ __forceinline__ double eps() { return 2.220446049250313080847e-16; }
    static __device__ __forceinline__ double tiny() { return 2.2250738585072013830903e-308; }
    static __device__ __forceinline__ double huge() { return 1.7976931348623157081452e+308; }
};

// Storage <-> compute conversions, overloaded so that templates over the
// storage type read one name.  The compute type of the 16-bit types is float.
__device__ __forceinline__ float lg_to_compute(float x) { return x; }
__device__ __forceinline__ double lg_to_compute(double x) { return x; }
__device__ __forceinline__ float lg_to_compute(lg_half x) { return lg_half_to_float(x); }
__device__ __forceinline__ float lg_to_compute(lg_bf16 x) { return lg_bf16_to_float(x); }

template <typename T> struct lg_storage;
template <> struct lg_storage<float> {
    typedef float compute;
    static __device__ __forceinline__ float from(float x) { return x; }
};
template <> struct lg_storage<double> {
    typedef double compute;
    static __device__ __forceinline__ double from(double x) { return x; }
};
template <> struct lg_storage<lg_half> {
    typedef float compute;
    static __device__ __forceinline__ lg_half from(float x) { return lg_float_to_half(x); }
};
template <> struct lg_storage<lg_bf16> {
    typedef float compute;
    static __device__ __forceinline__ lg_bf16 from(float x) { return lg_float_to_bf16(x); }
};

// ------------------------------------------------------------------ activations

// Each activation is a functor type, the epilogue of a kernel: operator()
// maps one value in F = float or double.  The list of activations and their
// order live once, in liam_gpu/activations.py: the launch layer passes them
// to a kernel as the template argument lg_act::List<...> (in that order) and
// a launch selects one by its index in the list.
namespace lg_act {

struct Identity {
    template <typename F> __device__ __forceinline__ F operator()(F x) const { return x; }
};

struct Relu {
    // NaN passes through, as np.maximum(x, 0).
    template <typename F> __device__ __forceinline__ F operator()(F x) const { return x < F(0) ? F(0) : x; }
};

// Exact gelu: 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2); erfc keeps
// relative accuracy where 1 + erf cancels (x << 0).
struct Gelu {
    template <typename F> __device__ __forceinline__ F operator()(F x) const {
        return F(0.5) * x * lg_erfc(x * F(-0.70710678118654752440));
    }
};

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), torch's approximate="tanh".
struct GeluTanh {
    template <typename F> __device__ __forceinline__ F operator()(F x) const {
        const F inner = F(0.79788456080286535588) * (x + F(0.044715) * x * x * x);
        return F(0.5) * x * (F(1) + lg_tanh(inner));
    }
};

// x * sigmoid(x).
struct Silu {
    template <typename F> __device__ __forceinline__ F operator()(F x) const { return x / (F(1) + lg_exp(-x)); }
};

// 1 / (1 + exp(-x)).
struct Sigmoid {
    template <typename F> __device__ __forceinline__ F operator()(F x) const { return F(1) / (F(1) + lg_exp(-x)); }
};

struct Tanh {
    template <typename F> __device__ __forceinline__ F operator()(F x) const { return lg_tanh(x); }
};

// The activations a kernel is instantiated with, in the launch layer's order.
template <typename... Acts> struct List {};

// The one dispatch: body(Act()) for the Act at position `index` of the list;
// any index outside 1 .. size - 1 takes the first functor (the launch layer
// puts Identity first), so each functor is instantiated exactly once.
// `index` is uniform over the grid, so every thread takes the same branch.
template <int I, typename First, typename Body>
__device__ __forceinline__ void dispatch_from(List<>, int, const Body& body) {
    body(First());
}
template <int I, typename First, typename Body, typename Act, typename... Rest>
__device__ __forceinline__ void dispatch_from(List<Act, Rest...>, int index, const Body& body) {
    if (index == I) {
        body(Act());
    } else {
        dispatch_from<I + 1, First>(List<Rest...>(), index, body);
    }
}
template <typename Body, typename First, typename... Rest>
__device__ __forceinline__ void dispatch_list(List<First, Rest...>, int index, const Body& body) {
    dispatch_from<1, First>(List<Rest...>(), index, body);
}
template <typename Acts, typename Body>
__device__ __forceinline__ void dispatch(int index, const Body& body) {
    dispatch_list(Acts(), index, body);
}

}  // namespace lg_act
