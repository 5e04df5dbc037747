// Philox4x32-10 and the Gaussian test matrix Omega of the randomized SVD.
//
// The same generator as liam_gpu/philox.py (the numpy reference; its module
// docstring is the specification): the integer stream is identical bit for
// bit, the uniforms are formed exactly in the output type, and Box-Muller uses
// the platform's log/sqrt/cos/sin, so normals agree with numpy to a few ulp.
//
//   Omega[j, c] = normal (c % 4) of philox(counter = (c / 4, j_lo, j_hi, 0),
//                                          key = (seed_lo, seed_hi))
//
// It depends on (seed, j, c) only, never on the matrix size, the block or the
// batch item, so every kernel that needs a tile of Omega generates exactly the
// tile it needs.
//
// Plain C++ (64-bit products instead of __umulhi), so the CPU emulator runs it.
#pragma once

#define LG_PHILOX_M0 0xD2511F53u
#define LG_PHILOX_M1 0xCD9E8D57u
#define LG_PHILOX_W0 0x9E3779B9u
#define LG_PHILOX_W1 0xBB67AE85u

// Four 32-bit words: a counter going in, the random words coming out.
struct lg_philox_words {
    unsigned int x0, x1, x2, x3;
};

// One Philox round: (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)).
__device__ __forceinline__ lg_philox_words lg_philox_round(lg_philox_words c, unsigned int k0, unsigned int k1) {
    const unsigned long long p0 = (unsigned long long)LG_PHILOX_M0 * (unsigned long long)c.x0;
    const unsigned long long p1 = (unsigned long long)LG_PHILOX_M1 * (unsigned long long)c.x2;
    lg_philox_words r;
    r.x0 = (unsigned int)(p1 >> 32) ^ c.x1 ^ k0;
    r.x1 = (unsigned int)p1;
    r.x2 = (unsigned int)(p0 >> 32) ^ c.x3 ^ k1;
    r.x3 = (unsigned int)p0;
    return r;
}

// Philox4x32-10: ten rounds, the key bumped (mod 2^32) before every round but the first.
__device__ __forceinline__ lg_philox_words lg_philox4x32_10(lg_philox_words c, unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += LG_PHILOX_W0;
            k1 += LG_PHILOX_W1;
        }
        c = lg_philox_round(c, k0, k1);
    }
    return c;
}

// The words of Omega's column group g (columns 4g .. 4g+3) in row j.
__device__ __forceinline__ lg_philox_words lg_omega_words(unsigned long long seed, unsigned long long j,
                                                          unsigned long long g) {
    lg_philox_words c;
    c.x0 = (unsigned int)g;
    c.x1 = (unsigned int)(j & 0xFFFFFFFFull);
    c.x2 = (unsigned int)(j >> 32);
    c.x3 = 0u;
    return lg_philox4x32_10(c, (unsigned int)(seed & 0xFFFFFFFFull), (unsigned int)(seed >> 32));
}

// sin(pi x) and cos(pi x).  On a GPU: CUDA's sincospi, whose argument reduction
// is exact, so unlike sinf/cosf it carries no Payne-Hanek slow path (no local
// memory).  The emulator has no sincospi: it reduces x exactly to
// r in [-1/4, 1/4] plus a quadrant and evaluates sin/cos(pi r), which is also
// how liam_gpu/philox.py computes it.
#ifndef LIAM_EMULATOR
__device__ __forceinline__ void lg_sincospi(float x, float* s, float* c) { sincospif(x, s, c); }
__device__ __forceinline__ void lg_sincospi(double x, double* s, double* c) { sincospi(x, s, c); }
#else
template <typename F>
inline void lg_sincospi_reduced(F x, F* s, F* c) {
    const F n = std::nearbyint(F(2) * x);  // ties to even, as numpy's rint
    const F r = x - F(0.5) * n;             // exact
    const F t = F(3.14159265358979323846) * r;
    const F sr = std::sin(t);
    const F cr = std::cos(t);
    const long long q = ((long long)n % 4 + 4) % 4;
    *s = q == 0 ? sr : q == 1 ? cr : q == 2 ? -sr : -cr;
    *c = q == 0 ? cr : q == 1 ? -sr : q == 2 ? -cr : sr;
}
inline void lg_sincospi(float x, float* s, float* c) { lg_sincospi_reduced<float>(x, s, c); }
inline void lg_sincospi(double x, double* s, double* c) { lg_sincospi_reduced<double>(x, s, c); }
#endif

// Box-Muller in T on the word pairs (x0, x1) and (x2, x3).
template <typename T> struct lg_gauss;

template <> struct lg_gauss<float> {
    // ((x >> 9) + 0.5) * 2^-23: exact in float, in [2^-24, 1 - 2^-24].
    static __device__ __forceinline__ float uniform(unsigned int x) {
        return ((float)(x >> 9) + 0.5f) * 1.1920928955078125e-7f;
    }
    static __device__ __forceinline__ void pair(unsigned int a, unsigned int b, float* z) {
        const float radius = sqrtf(-2.0f * logf(uniform(a)));
        float s, c;
        lg_sincospi(2.0f * uniform(b), &s, &c);  // angle 2 pi u; 2u is exact
        z[0] = radius * c;
        z[1] = radius * s;
    }
};

template <> struct lg_gauss<double> {
    // (x + 0.5) * 2^-32: exact in double, in [2^-33, 1 - 2^-33].
    static __device__ __forceinline__ double uniform(unsigned int x) {
        return ((double)x + 0.5) * 2.3283064365386962890625e-10;
    }
    static __device__ __forceinline__ void pair(unsigned int a, unsigned int b, double* z) {
        const double radius = sqrt(-2.0 * log(uniform(a)));
        double s, c;
        lg_sincospi(2.0 * uniform(b), &s, &c);
        z[0] = radius * c;
        z[1] = radius * s;
    }
};

// Omega[j, 4g .. 4g+3] into z[0..3].
template <typename T>
__device__ __forceinline__ void lg_omega4(unsigned long long seed, unsigned long long j, unsigned long long g, T* z) {
    const lg_philox_words w = lg_omega_words(seed, j, g);
    lg_gauss<T>::pair(w.x0, w.x1, z);
    lg_gauss<T>::pair(w.x2, w.x3, z + 2);
}
