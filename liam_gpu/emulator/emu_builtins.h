// emu_builtins.h -- CUDA keywords, vector types and built-in variables as plain C++
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
#pragma once

// ---------------------------------------------------------------------------
// CUDA keywords as plain C++
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__
#define __noinline__ __attribute__((noinline))
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Shared memory is per block; blocks of a launch run one after another (in
// both engines), so a function-local static is exactly one block's copy.
#define __shared__ static
#define __constant__ static
// __restrict__ is a GNU extension already.

// In the fiber engine all threads of a launch live on one OS thread, so the
// per-thread variables can be plain globals that the scheduler rewrites at each
// switch; the thread engine needs them thread_local.
#ifdef LIAM_EMU_THREADS
#define LIAM_EMU_TLS thread_local
#else
#define LIAM_EMU_TLS
#endif

// ---------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------
// Same size and alignment as CUDA's (vector_types.h), so that reinterpret_cast
// loads such as float4 from a float array keep their meaning.
#define LIAM_EMU_VEC2(T, NAME, AL)                                                          \
    struct __attribute__((aligned(AL))) NAME { T x, y; };                                   \
    inline constexpr NAME make_##NAME(T x, T y) { return NAME{x, y}; }
#define LIAM_EMU_VEC3(T, NAME)                                                              \
    struct NAME { T x, y, z; };                                                             \
    inline constexpr NAME make_##NAME(T x, T y, T z) { return NAME{x, y, z}; }
#define LIAM_EMU_VEC4(T, NAME, AL)                                                          \
    struct __attribute__((aligned(AL))) NAME { T x, y, z, w; };                             \
    inline constexpr NAME make_##NAME(T x, T y, T z, T w) { return NAME{x, y, z, w}; }

LIAM_EMU_VEC2(float, float2, 8)
LIAM_EMU_VEC3(float, float3)
LIAM_EMU_VEC4(float, float4, 16)
LIAM_EMU_VEC2(double, double2, 16)
LIAM_EMU_VEC3(double, double3)
LIAM_EMU_VEC4(double, double4, 16)
LIAM_EMU_VEC2(int, int2, 8)
LIAM_EMU_VEC3(int, int3)
LIAM_EMU_VEC4(int, int4, 16)
LIAM_EMU_VEC2(unsigned int, uint2, 8)
LIAM_EMU_VEC3(unsigned int, uint3)
LIAM_EMU_VEC4(unsigned int, uint4, 16)
LIAM_EMU_VEC2(long long, longlong2, 16)
LIAM_EMU_VEC2(unsigned long long, ulonglong2, 16)
LIAM_EMU_VEC2(short, short2, 4)
LIAM_EMU_VEC2(unsigned short, ushort2, 4)
LIAM_EMU_VEC4(char, char4, 4)
LIAM_EMU_VEC4(unsigned char, uchar4, 4)
#undef LIAM_EMU_VEC2
#undef LIAM_EMU_VEC3
#undef LIAM_EMU_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ---------------------------------------------------------------------------
// Built-in variables
// ---------------------------------------------------------------------------
inline LIAM_EMU_TLS uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
inline constexpr int warpSize = 32;
