// The randomized sketch Y = op(A) @ Omega, with Omega generated in the kernel.
//
// op(A) is m x n: A itself (TRANS = 0, A stored m x n row-major) or A^T
// (TRANS = 1, A stored n x m row-major, i.e. the wide matrix of a wide
// problem read as its tall transpose without a copy).  Omega is the n x l
// Gaussian test matrix of kernels/philox.cuh, columns col0 .. col0 + l - 1
// (col0 a multiple of 4), never stored: every thread block generates the
// BK x BN tile of Omega it multiplies next into shared memory, from (seed,
// row, column) alone.  Y is m x l row-major.
//
// Tiling (template parameters, passed by liam_gpu/launch/sketch.py, which
// holds the one copy of the tile shape; its values in brackets): a block
// computes a BM x BN (128 x 64) tile of Y with (BM / TM) x (BN / TN) (16 x 16
// = 256) threads, each owning a TM x TN (8 x 4) register tile (rows
// ty + 16 i, columns tx + 16 j, so that a warp reads two broadcast A values
// and 16 consecutive Omega values per step, conflict-free).  Per BK (16) slice
// of the inner dimension a block loads BM x BK of A (coalesced along A's
// contiguous axis in both layouts) and generates BK x BN normals: one Philox
// call (4 normals) per thread, so the generator costs ~1/3 of the
// multiply-adds and Omega costs no memory traffic at all.  Ragged edges are
// zero-filled; every offset is 64-bit.
//
// The inner loop is plain FMA (no tensor cores): the sketch is one of the
// 2q + 2 passes over A, the others run in cuBLAS.
#include "common.cuh"
#include "philox.cuh"

template <typename T, int TRANS, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void sketch_body(const T* __restrict__ a, T* __restrict__ y, long long m, long long n,
                                            long long l, unsigned long long seed, long long col0) {
    constexpr int THREADS_M = BM / TM;        // distinct thread rows: a thread's rows are THREADS_M apart
    constexpr int THREADS_N = BN / TN;        // distinct thread columns: its columns are THREADS_N apart
    constexpr int THREADS = THREADS_M * THREADS_N;
    constexpr int A_LOADS = BM * BK / THREADS;  // elements of A each thread loads per slice
    constexpr int GROUPS = BN / 4;            // Philox groups (4 normals) per row of the Omega tile
    static_assert(BM % TM == 0 && BN % TN == 0, "the tile must split evenly into register tiles");
    static_assert(THREADS % BK == 0 && THREADS % BM == 0 && (BM * BK) % THREADS == 0,
                  "the A tile must split evenly over the threads in both layouts");
    static_assert(BN % 4 == 0 && BK * GROUPS == THREADS, "one Philox call per thread fills the Omega tile");

    __shared__ T a_tile[BK][BM + 1];  // +1: the transposing store of TRANS = 0 hits distinct banks
    __shared__ T w_tile[BK][BN];

    const int tid = (int)threadIdx.x;
    const int tx = tid % THREADS_N;
    const int ty = tid / THREADS_N;
    const long long row0 = (long long)blockIdx.x * BM;
    const long long c0 = (long long)blockIdx.y * BN;

    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
    }

    for (long long k0 = 0; k0 < n; k0 += BK) {
        if (TRANS == 0) {
            // A is m x n: BK consecutive threads read BK consecutive elements of a row.
            const int kk = tid % BK;
            const long long gk = k0 + kk;
#pragma unroll
            for (int i = 0; i < A_LOADS; ++i) {
                const int r = tid / BK + (THREADS / BK) * i;
                const long long gr = row0 + r;
                a_tile[kk][r] = (gr < m && gk < n) ? a[gr * n + gk] : T(0);
            }
        } else {
            // A is n x m: BM consecutive threads read BM consecutive elements of a row.
            const int r = tid % BM;
            const long long gr = row0 + r;
#pragma unroll
            for (int i = 0; i < A_LOADS; ++i) {
                const int kk = tid / BM + (THREADS / BM) * i;
                const long long gk = k0 + kk;
                a_tile[kk][r] = (gr < m && gk < n) ? a[gk * m + gr] : T(0);
            }
        }
        {
            // Omega rows k0 .. k0 + BK - 1, columns c0 .. c0 + BN - 1: one group of 4 per thread.
            const int kk = tid / GROUPS;
            const int g = tid % GROUPS;
            const long long gk = k0 + kk;
            const long long gc = c0 + 4 * g;
            T z[4] = {T(0), T(0), T(0), T(0)};
            if (gk < n && gc < l) {
                lg_omega4<T>(seed, (unsigned long long)gk, (unsigned long long)((col0 + gc) / 4), z);
            }
#pragma unroll
            for (int t = 0; t < 4; ++t) w_tile[kk][4 * g + t] = z[t];
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T av[TM];
            T bv[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) av[i] = a_tile[kk][ty + THREADS_M * i];
#pragma unroll
            for (int j = 0; j < TN; ++j) bv[j] = w_tile[kk][tx + THREADS_N * j];
#pragma unroll
            for (int i = 0; i < TM; ++i) {
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const long long r = row0 + ty + THREADS_M * i;
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const long long c = c0 + tx + THREADS_N * j;
            if (c < l) y[r * l + c] = acc[i][j];
        }
    }
}

// Grid: (ceil(m / BM), ceil(l / BN)); block: (BM / TM) * (BN / TN) threads.
// Two blocks per SM for float (<= 128 registers); one for double, whose 8 x 4
// register tile of doubles alone takes 64 registers.
template <typename T, int TRANS, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), sizeof(T) == 4 ? 2 : 1)
sketch_kernel(const T* __restrict__ a, T* __restrict__ y, long long m, long long n, long long l,
              unsigned long long seed, long long col0) {
    sketch_body<T, TRANS, BM, BN, BK, TM, TN>(a, y, m, n, l, seed, col0);
}

// The raw Philox words of Omega: out[(i * groups + g)] = words of row row0 + i,
// column group group0 + g (for the bit-for-bit test against liam_gpu/philox.py).
// Grid-stride over rows * groups; THREADS is the launcher's block size.
template <int THREADS>
__global__ void __launch_bounds__(THREADS)
philox_words_kernel(lg_philox_words* __restrict__ out, long long rows, long long groups, long long row0,
                    long long group0, unsigned long long seed) {
    for (const long long idx : lg_grid_stride(rows * groups)) {
        const long long i = idx / groups;
        const long long g = idx - i * groups;
        out[idx] = lg_omega_words(seed, (unsigned long long)(row0 + i), (unsigned long long)(group0 + g));
    }
}

// A block of Omega, stored: out (rows x cols, row-major) = Omega[row0 : row0 + rows, col0 : col0 + cols],
// col0 a multiple of 4.  One thread per group of 4 columns, grid-stride.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
omega_kernel(T* __restrict__ out, long long rows, long long cols, long long row0, long long col0,
             unsigned long long seed) {
    const long long groups = (cols + 3) / 4;
    for (const long long idx : lg_grid_stride(rows * groups)) {
        const long long i = idx / groups;
        const long long g = idx - i * groups;
        T z[4];
        lg_omega4<T>(seed, (unsigned long long)(row0 + i), (unsigned long long)(col0 / 4 + g), z);
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const long long c = 4 * g + t;
            if (c < cols) out[i * cols + c] = z[t];
        }
    }
}
