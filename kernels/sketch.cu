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
// Tiling: a block computes a BM x BN = 128 x 64 tile of Y with 256 threads,
// each owning an 8 x 4 register tile (rows ty + 16 i, columns tx + 16 j, so
// that a warp reads two broadcast A values and 16 consecutive Omega values
// per step, conflict-free).  Per BK = 16 slice of the inner dimension a block
// loads 128 x 16 of A (coalesced along A's contiguous axis in both layouts)
// and generates 16 x 64 normals: one Philox call (4 normals) per thread, so
// the generator costs ~1/3 of the multiply-adds and Omega costs no memory
// traffic at all.  Ragged edges are zero-filled; every offset is 64-bit.
//
// The inner loop is plain FMA (no tensor cores): the sketch is one of the
// 2q + 2 passes over A, the others run in cuBLAS.
#include "philox.cuh"

#define SK_BM 128
#define SK_BN 64
#define SK_BK 16
#define SK_THREADS 256
#define SK_TM 8  // rows per thread
#define SK_TN 4  // columns per thread

template <typename T, int TRANS>
__device__ __forceinline__ void sketch_body(const T* __restrict__ a, T* __restrict__ y, long long m, long long n,
                                            long long l, unsigned long long seed, long long col0) {
    __shared__ T a_tile[SK_BK][SK_BM + 1];  // +1: the transposing store of TRANS = 0 hits distinct banks
    __shared__ T w_tile[SK_BK][SK_BN];

    const int tid = (int)threadIdx.x;
    const int tx = tid % 16;
    const int ty = tid / 16;
    const long long row0 = (long long)blockIdx.x * SK_BM;
    const long long c0 = (long long)blockIdx.y * SK_BN;

    T acc[SK_TM][SK_TN];
#pragma unroll
    for (int i = 0; i < SK_TM; ++i) {
#pragma unroll
        for (int j = 0; j < SK_TN; ++j) acc[i][j] = T(0);
    }

    for (long long k0 = 0; k0 < n; k0 += SK_BK) {
        if (TRANS == 0) {
            // A is m x n: 16 consecutive threads read 16 consecutive elements of a row.
            const int kk = tid % SK_BK;
            const long long gk = k0 + kk;
#pragma unroll
            for (int i = 0; i < SK_TM; ++i) {
                const int r = tid / SK_BK + 16 * i;
                const long long gr = row0 + r;
                a_tile[kk][r] = (gr < m && gk < n) ? a[gr * n + gk] : T(0);
            }
        } else {
            // A is n x m: 128 consecutive threads read 128 consecutive elements of a row.
            const int r = tid % SK_BM;
            const long long gr = row0 + r;
#pragma unroll
            for (int i = 0; i < SK_TM; ++i) {
                const int kk = tid / SK_BM + 2 * i;
                const long long gk = k0 + kk;
                a_tile[kk][r] = (gr < m && gk < n) ? a[gk * m + gr] : T(0);
            }
        }
        {
            // Omega rows k0 .. k0 + 15, columns c0 .. c0 + 63: one group of 4 per thread.
            const int kk = tid / 16;
            const int g = tid % 16;
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
        for (int kk = 0; kk < SK_BK; ++kk) {
            T av[SK_TM];
            T bv[SK_TN];
#pragma unroll
            for (int i = 0; i < SK_TM; ++i) av[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < SK_TN; ++j) bv[j] = w_tile[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < SK_TM; ++i) {
#pragma unroll
                for (int j = 0; j < SK_TN; ++j) acc[i][j] += av[i] * bv[j];
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < SK_TM; ++i) {
        const long long r = row0 + ty + 16 * i;
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < SK_TN; ++j) {
            const long long c = c0 + tx + 16 * j;
            if (c < l) y[r * l + c] = acc[i][j];
        }
    }
}

// Grid: (ceil(m / 128), ceil(l / 64)); block: 256 threads.
// Two blocks per SM for float (<= 128 registers); one for double, whose 8 x 4
// register tile of doubles alone takes 64 registers.
template <typename T, int TRANS>
__global__ void __launch_bounds__(SK_THREADS, sizeof(T) == 4 ? 2 : 1)
sketch_kernel(const T* __restrict__ a, T* __restrict__ y, long long m, long long n, long long l,
              unsigned long long seed, long long col0) {
    sketch_body<T, TRANS>(a, y, m, n, l, seed, col0);
}

// The raw Philox words of Omega: out[(i * groups + g)] = words of row row0 + i,
// column group group0 + g (for the bit-for-bit test against liam_gpu/philox.py).
// Grid-stride over rows * groups.
__global__ void __launch_bounds__(256)
philox_words_kernel(lg_philox_words* __restrict__ out, long long rows, long long groups, long long row0,
                    long long group0, unsigned long long seed) {
    const long long total = rows * groups;
    const long long stride = (long long)gridDim.x * (long long)blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long i = idx / groups;
        const long long g = idx - i * groups;
        out[idx] = lg_omega_words(seed, (unsigned long long)(row0 + i), (unsigned long long)(group0 + g));
    }
}

// A block of Omega, stored: out (rows x cols, row-major) = Omega[row0 : row0 + rows, col0 : col0 + cols],
// col0 a multiple of 4.  One thread per group of 4 columns, grid-stride.
template <typename T>
__global__ void __launch_bounds__(256)
omega_kernel(T* __restrict__ out, long long rows, long long cols, long long row0, long long col0,
             unsigned long long seed) {
    const long long groups = (cols + 3) / 4;
    const long long total = rows * groups;
    const long long stride = (long long)gridDim.x * (long long)blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
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
