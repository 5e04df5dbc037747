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
#define GR_TILE 64     // G / Q tile edge
#define GR_BK 16       // rows of Y (or of R) per step
#define GR_THREADS 256 // 16 x 16 threads, 4 x 4 outputs each

// acc[a][b] += sum_kk A[kk][ty + 16a] * B[kk][tx + 16b]: one GR_BK-deep step of a
// thread's 4 x 4 output block, shared by the Gram and the triangular-apply tiles.
template <typename Acc, int LDA, int LDB>
__device__ __forceinline__ void tile_update(Acc (&acc)[4][4], Acc (*A)[LDA], Acc (*B)[LDB], int ty, int tx)
{
#pragma unroll
    for (int kk = 0; kk < GR_BK; ++kk) {
        Acc av[4];
        Acc bv[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) av[a] = A[kk][ty + 16 * a];
#pragma unroll
        for (int b = 0; b < 4; ++b) bv[b] = B[kk][tx + 16 * b];
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
            for (int b = 0; b < 4; ++b) acc[a][b] += av[a] * bv[b];
        }
    }
}

// out[r0 + 16a, c0 + 16b] = acc[a][b] for the entries inside a rows x cols
// row-major matrix: a thread's 4 x 4 block, stored once, converted to Out.
template <typename Out, typename Acc>
__device__ __forceinline__ void store_block(Out* out, long long rows, long long cols, long long r0, long long c0,
                                            const Acc (&acc)[4][4]) {
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const long long r = r0 + 16 * a;
        if (r >= rows) continue;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const long long c = c0 + 16 * b;
            if (c < cols) out[r * cols + c] = (Out)acc[a][b];
        }
    }
}


// ------------------------------------------------------------------ Gram, pass 1

// partial[s] (l x l, row-major) += Y[rows of chunk s]^T Y[rows of chunk s] for the
// tile pair (bi, bj), bi <= bj, numbered row by row of the upper triangle of tiles.
// Grid: (pairs, chunks).  Tiles below the diagonal are never computed nor written.
template <typename T, typename Acc>
__device__ __forceinline__ void gram_partial_body(const T* __restrict__ y, Acc* __restrict__ partial, long long m,
                                                  long long l, long long chunk_rows) {
    __shared__ Acc yi[GR_BK][GR_TILE];
    __shared__ Acc yj[GR_BK][GR_TILE];

    // Decode the tile pair of this block (tiles per side <= 8 for l <= 512: a short loop).
    const long long tiles = (l + GR_TILE - 1) / GR_TILE;
    long long p = blockIdx.x;
    long long bi = 0;
    while (p >= tiles - bi) {
        p -= tiles - bi;
        ++bi;
    }
    const long long bj = bi + p;
    const long long i0 = bi * GR_TILE;
    const long long j0 = bj * GR_TILE;
    const long long s = blockIdx.y;
    const long long r_begin = s * chunk_rows;
    const long long r_end = (r_begin + chunk_rows < m) ? r_begin + chunk_rows : m;

    const int tid = (int)threadIdx.x;
    const int tx = tid % 16;
    const int ty = tid / 16;
    Acc acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = Acc(0);
    }

    for (long long r0 = r_begin; r0 < r_end; r0 += GR_BK) {
        const int col = tid % GR_TILE;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const int kk = tid / GR_TILE + 4 * t;
            const long long r = r0 + kk;
            const bool row_ok = r < r_end;
            yi[kk][col] = (row_ok && i0 + col < l) ? (Acc)y[r * l + i0 + col] : Acc(0);
            yj[kk][col] = (row_ok && j0 + col < l) ? (Acc)y[r * l + j0 + col] : Acc(0);
        }
        __syncthreads();
        tile_update<Acc, GR_TILE, GR_TILE>(acc, yi, yj, ty, tx);
        __syncthreads();
    }

    store_block(partial + s * l * l, l, l, i0 + ty, j0 + tx, acc);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(GR_THREADS)
gram_partial_kernel(const T* __restrict__ y, Acc* __restrict__ partial, long long m, long long l,
                    long long chunk_rows) {
    gram_partial_body<T, Acc>(y, partial, m, l, chunk_rows);
}

// ------------------------------------------------------------------ Gram, pass 2

// g[i, j] = sum over s = 0, 1, ... of partial[s][i', j'], where (i', j') is
// (i, j) or (j, i), whichever lies in a computed (upper) tile.  Summing in
// index order makes G bitwise symmetric and reproducible.  Grid-stride over l*l.
template <typename Acc>
__global__ void __launch_bounds__(GR_THREADS)
gram_reduce_kernel(const Acc* __restrict__ partial, Acc* __restrict__ g, long long l, long long chunks) {
    const long long total = l * l;
    const long long stride = (long long)gridDim.x * (long long)blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        long long i = idx / l;
        long long j = idx - i * l;
        if (i / GR_TILE > j / GR_TILE) {
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
// accumulated in Acc and rounded once to T.  Column tile j0 .. j0 + 63 only
// needs rows i < j0 + 64 of rinv: the tiles below the diagonal are skipped.
// Grid: (ceil(m / 64), ceil(l / 64)).  q must not alias y.
template <typename T, typename Acc>
__device__ __forceinline__ void tri_apply_body(const T* __restrict__ y, const Acc* __restrict__ rinv,
                                               T* __restrict__ q, long long m, long long l) {
    __shared__ Acc ys[GR_BK][GR_TILE + 1];  // +1: transposing store without bank conflicts
    __shared__ Acc rs[GR_BK][GR_TILE];

    const int tid = (int)threadIdx.x;
    const int tx = tid % 16;
    const int ty = tid / 16;
    const long long row0 = (long long)blockIdx.x * GR_TILE;
    const long long j0 = (long long)blockIdx.y * GR_TILE;
    const long long k_end = (j0 + GR_TILE < l) ? j0 + GR_TILE : l;

    Acc acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = Acc(0);
    }

    for (long long k0 = 0; k0 < k_end; k0 += GR_BK) {
        {
            const int kk = tid % GR_BK;
            const long long gk = k0 + kk;
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const int r = tid / GR_BK + 16 * t;
                const long long gr = row0 + r;
                ys[kk][r] = (gr < m && gk < l) ? (Acc)y[gr * l + gk] : Acc(0);
            }
        }
        {
            const int c = tid % GR_TILE;
            const long long gc = j0 + c;
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const int kk = tid / GR_TILE + 4 * t;
                const long long gk = k0 + kk;
                rs[kk][c] = (gk < l && gc < l) ? rinv[gk * l + gc] : Acc(0);
            }
        }
        __syncthreads();
        tile_update<Acc, GR_TILE + 1, GR_TILE>(acc, ys, rs, ty, tx);
        __syncthreads();
    }

    store_block(q, m, l, row0 + ty, j0 + tx, acc);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(GR_THREADS)
tri_apply_kernel(const T* __restrict__ y, const Acc* __restrict__ rinv, T* __restrict__ q, long long m,
                 long long l) {
    tri_apply_body<T, Acc>(y, rinv, q, m, l);
}

// ------------------------------------------------------------------ ||A||_F^2

// partial[b] = sum of a[i]^2 over i in [b * chunk, min(total, (b + 1) * chunk)), in
// double: each thread sums a fixed strided subset in order, then a fixed
// shared-memory tree adds the 256 thread sums.  The host adds the partials in
// order.  Grid: ceil(total / chunk) blocks.
template <typename T>
__global__ void __launch_bounds__(GR_THREADS)
sumsq_partial_kernel(const T* __restrict__ a, double* __restrict__ partial, long long total, long long chunk) {
    __shared__ double red[GR_THREADS];
    const long long begin = (long long)blockIdx.x * chunk;
    const long long end = (begin + chunk < total) ? begin + chunk : total;
    double sum = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += GR_THREADS) {
        const double v = (double)a[i];
        sum += v * v;
    }
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int half = GR_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}
