// Tall-skinny kernels of CholeskyQR: the Gram matrix G = Y^T Y, the
// triangular apply Q = Y R^-1, and the sum of squares ||A||_F^2.
//
// Y is m x l row-major with m large and l small (l <= ~512).  Everything is
// deterministic: each block sums a fixed range of rows in a fixed order into
// its own slot of a partial buffer, and a second pass (or the host) adds the
// slots in index order.  There are no atomics, so the same inputs give the
// same bits on every run (the partition depends on the sizes only).
//
// Precision: the accumulator type Acc is a template parameter.  CholeskyQR
// accumulates float32 data in double: the product of two floats is exact in
// double, so G is the Gram matrix of the stored Y to double rounding, and the
// Cholesky factor (computed on the host in double) stays accurate up to
// cond(Y) ~ 1e8 -- beyond what float32 data can resolve at all.
//
// Tile shape (template parameters, passed by liam_gpu/launch/gram.py, which
// holds the one copy; its values in brackets): G and Q are computed in
// TILE x TILE (64 x 64) tiles by (TILE / TT)^2 (256) threads, each owning a
// TT x TT (4 x 4) block of outputs, BK (16) rows of Y (or of R) per step.
#include "common.cuh"

// acc[a][b] += sum_kk A[kk][ty + SIDE a] * B[kk][tx + SIDE b]: one BK-deep step
// of a thread's TT x TT output block (SIDE = threads per tile edge), shared by
// the Gram and the triangular-apply tiles.
template <typename Acc, int BK, int TT, int SIDE, int LDA, int LDB>
__device__ __forceinline__ void tile_update(Acc (&acc)[TT][TT], Acc (*A)[LDA], Acc (*B)[LDB], int ty, int tx)
{
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        Acc av[TT];
        Acc bv[TT];
#pragma unroll
        for (int a = 0; a < TT; ++a) av[a] = A[kk][ty + SIDE * a];
#pragma unroll
        for (int b = 0; b < TT; ++b) bv[b] = B[kk][tx + SIDE * b];
#pragma unroll
        for (int a = 0; a < TT; ++a) {
#pragma unroll
            for (int b = 0; b < TT; ++b) acc[a][b] += av[a] * bv[b];
        }
    }
}

// out[r0 + SIDE a, c0 + SIDE b] = acc[a][b] for the entries inside a rows x cols
// row-major matrix: a thread's TT x TT block, stored once, converted to Out.
template <int SIDE, typename Out, typename Acc, int TT>
__device__ __forceinline__ void store_block(Out* out, long long rows, long long cols, long long r0, long long c0,
                                            const Acc (&acc)[TT][TT]) {
#pragma unroll
    for (int a = 0; a < TT; ++a) {
        const long long r = r0 + SIDE * a;
        if (r >= rows) continue;
#pragma unroll
        for (int b = 0; b < TT; ++b) {
            const long long c = c0 + SIDE * b;
            if (c < cols) out[r * cols + c] = (Out)acc[a][b];
        }
    }
}

// The thread layout of a TILE x TILE tile with TT x TT outputs per thread.
template <int TILE, int BK, int TT>
struct GramShape {
    static constexpr int SIDE = TILE / TT;       // threads per tile edge
    static constexpr int THREADS = SIDE * SIDE;
    static constexpr int ROW_LOADS = BK * TILE / THREADS;  // elements per thread per BK x TILE slice
    static_assert(TILE % TT == 0, "the tile must split evenly into thread blocks");
    static_assert(THREADS % TILE == 0 && THREADS % BK == 0 && (BK * TILE) % THREADS == 0,
                  "a BK x TILE slice must split evenly over the threads");
};

// ------------------------------------------------------------------ Gram, pass 1

// partial[s] (l x l, row-major) += Y[rows of chunk s]^T Y[rows of chunk s] for the
// tile pair (bi, bj), bi <= bj, numbered row by row of the upper triangle of tiles.
// Grid: (pairs, chunks).  Tiles below the diagonal are never computed nor written.
template <typename T, typename Acc, int TILE, int BK, int TT>
__device__ __forceinline__ void gram_partial_body(const T* __restrict__ y, Acc* __restrict__ partial, long long m,
                                                  long long l, long long chunk_rows) {
    typedef GramShape<TILE, BK, TT> S;
    __shared__ Acc yi[BK][TILE];
    __shared__ Acc yj[BK][TILE];

    // Decode the tile pair of this block (tiles per side <= 8 for l <= 512: a short loop).
    const long long tiles = lg_ceil_div(l, TILE);
    long long p = blockIdx.x;
    long long bi = 0;
    while (p >= tiles - bi) {
        p -= tiles - bi;
        ++bi;
    }
    const long long bj = bi + p;
    const long long i0 = bi * TILE;
    const long long j0 = bj * TILE;
    const long long s = blockIdx.y;
    const long long r_begin = s * chunk_rows;
    const long long r_end = (r_begin + chunk_rows < m) ? r_begin + chunk_rows : m;

    const int tid = (int)threadIdx.x;
    const int tx = tid % S::SIDE;
    const int ty = tid / S::SIDE;
    Acc acc[TT][TT];
#pragma unroll
    for (int a = 0; a < TT; ++a) {
#pragma unroll
        for (int b = 0; b < TT; ++b) acc[a][b] = Acc(0);
    }

    for (long long r0 = r_begin; r0 < r_end; r0 += BK) {
        const int col = tid % TILE;
#pragma unroll
        for (int t = 0; t < S::ROW_LOADS; ++t) {
            const int kk = tid / TILE + (S::THREADS / TILE) * t;
            const long long r = r0 + kk;
            const bool row_ok = r < r_end;
            yi[kk][col] = (row_ok && i0 + col < l) ? (Acc)y[r * l + i0 + col] : Acc(0);
            yj[kk][col] = (row_ok && j0 + col < l) ? (Acc)y[r * l + j0 + col] : Acc(0);
        }
        __syncthreads();
        tile_update<Acc, BK, TT, S::SIDE, TILE, TILE>(acc, yi, yj, ty, tx);
        __syncthreads();
    }

    store_block<S::SIDE>(partial + s * l * l, l, l, i0 + ty, j0 + tx, acc);
}

template <typename T, typename Acc, int TILE, int BK, int TT>
__global__ void __launch_bounds__(GramShape<TILE, BK, TT>::THREADS)
gram_partial_kernel(const T* __restrict__ y, Acc* __restrict__ partial, long long m, long long l,
                    long long chunk_rows) {
    gram_partial_body<T, Acc, TILE, BK, TT>(y, partial, m, l, chunk_rows);
}

// ------------------------------------------------------------------ Gram, pass 2

// g[i, j] = sum over s = 0, 1, ... of partial[s][i', j'], where (i', j') is
// (i, j) or (j, i), whichever lies in a computed (upper) tile.  Summing in
// index order makes G bitwise symmetric and reproducible.  Grid-stride over l*l;
// THREADS is the launcher's block size.
template <typename Acc, int TILE, int THREADS>
__global__ void __launch_bounds__(THREADS)
gram_reduce_kernel(const Acc* __restrict__ partial, Acc* __restrict__ g, long long l, long long chunks) {
    for (const long long idx : lg_grid_stride(l * l)) {
        long long i = idx / l;
        long long j = idx - i * l;
        if (i / TILE > j / TILE) {
            const long long t = i;
            i = j;
            j = t;
        }
        Acc sum = Acc(0);
        for (long long s = 0; s < chunks; ++s) sum += partial[(s * l + i) * l + j];
        g[idx] = sum;
    }
}

// ------------------------------------------------------------------ Q = Y R^-1

// q (m x l) = y (m x l) @ rinv (l x l, upper triangular, row-major, in Acc),
// accumulated in Acc and rounded once to T.  Column tile j0 .. j0 + TILE - 1 only
// needs rows i < j0 + TILE of rinv: the tiles below the diagonal are skipped.
// Grid: (ceil(m / TILE), ceil(l / TILE)).  q must not alias y.
template <typename T, typename Acc, int TILE, int BK, int TT>
__device__ __forceinline__ void tri_apply_body(const T* __restrict__ y, const Acc* __restrict__ rinv,
                                               T* __restrict__ q, long long m, long long l) {
    typedef GramShape<TILE, BK, TT> S;
    __shared__ Acc ys[BK][TILE + 1];  // +1: transposing store without bank conflicts
    __shared__ Acc rs[BK][TILE];

    const int tid = (int)threadIdx.x;
    const int tx = tid % S::SIDE;
    const int ty = tid / S::SIDE;
    const long long row0 = (long long)blockIdx.x * TILE;
    const long long j0 = (long long)blockIdx.y * TILE;
    const long long k_end = (j0 + TILE < l) ? j0 + TILE : l;

    Acc acc[TT][TT];
#pragma unroll
    for (int a = 0; a < TT; ++a) {
#pragma unroll
        for (int b = 0; b < TT; ++b) acc[a][b] = Acc(0);
    }

    for (long long k0 = 0; k0 < k_end; k0 += BK) {
        {
            const int kk = tid % BK;
            const long long gk = k0 + kk;
#pragma unroll
            for (int t = 0; t < S::ROW_LOADS; ++t) {
                const int r = tid / BK + (S::THREADS / BK) * t;
                const long long gr = row0 + r;
                ys[kk][r] = (gr < m && gk < l) ? (Acc)y[gr * l + gk] : Acc(0);
            }
        }
        {
            const int c = tid % TILE;
            const long long gc = j0 + c;
#pragma unroll
            for (int t = 0; t < S::ROW_LOADS; ++t) {
                const int kk = tid / TILE + (S::THREADS / TILE) * t;
                const long long gk = k0 + kk;
                rs[kk][c] = (gk < l && gc < l) ? rinv[gk * l + gc] : Acc(0);
            }
        }
        __syncthreads();
        tile_update<Acc, BK, TT, S::SIDE, TILE + 1, TILE>(acc, ys, rs, ty, tx);
        __syncthreads();
    }

    store_block<S::SIDE>(q, m, l, row0 + ty, j0 + tx, acc);
}

template <typename T, typename Acc, int TILE, int BK, int TT>
__global__ void __launch_bounds__(GramShape<TILE, BK, TT>::THREADS)
tri_apply_kernel(const T* __restrict__ y, const Acc* __restrict__ rinv, T* __restrict__ q, long long m,
                 long long l) {
    tri_apply_body<T, Acc, TILE, BK, TT>(y, rinv, q, m, l);
}

// ------------------------------------------------------------------ ||A||_F^2

// partial[b] = sum of a[i]^2 over i in [b * chunk, min(total, (b + 1) * chunk)), in
// double: each thread sums a fixed strided subset in order, then a fixed
// shared-memory tree adds the THREADS thread sums.  The host adds the partials in
// order.  Grid: ceil(total / chunk) blocks of THREADS (a power of two) threads.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
sumsq_partial_kernel(const T* __restrict__ a, double* __restrict__ partial, long long total, long long chunk) {
    static_assert((THREADS & (THREADS - 1)) == 0, "the reduction tree halves THREADS");
    __shared__ double red[THREADS];
    const long long begin = (long long)blockIdx.x * chunk;
    const long long end = (begin + chunk < total) ? begin + chunk : total;
    double sum = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += THREADS) {
        const double v = (double)a[i];
        sum += v * v;
    }
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}
