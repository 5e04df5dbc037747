// Batched thin SVD of small matrices: one thread block per matrix.
//
// Algorithm: one-sided (Hestenes) Jacobi.  The working matrix W (M x N,
// M >= N) lives in shared memory; plane rotations are applied to pairs of its
// columns until every pair is orthogonal to working precision, accumulating
// the same rotations into V (N x N, starts as I).  Then W = U diag(sigma) with
// sigma_j = ||w_j|| and A = U diag(sigma) V^T.
//
// Why one-sided Jacobi on A and not Jacobi on the Gram matrix A^T A: forming
// the Gram squares the condition number, so in float32 every singular value
// below ~sqrt(eps) * sigma_max (3e-4) would be lost in rounding, and
// U = A V / sigma would lose orthogonality for those columns.  Rotating the
// columns of A itself keeps absolute accuracy eps * sigma_max for every sigma
// (and relative accuracy for column-graded matrices, Demmel & Veselic 1992).
//
// Layout and parallelism:
//   * A wide matrix (m < n) is factored as its transpose: W = A^T, and the
//     roles of U and V swap when the results are written.  Loading W = A^T
//     is a contiguous copy, so no transposition pass is needed.
//   * W is column-major in shared memory with an odd leading dimension (the
//     transposing load/store loops then hit distinct banks); V likewise.
//   * Sweep order: round-robin ("circle method") over N' = N rounded up to
//     even: N' - 1 rounds, each of N'/2 disjoint pairs, every pair exactly
//     once per sweep.  Pairs of one round are independent and go to different
//     warps; one warp rotates one pair (lane l holds rows l, l + 32, ...).
//     The order is fixed, and every sum is a fixed-shape butterfly, so the
//     result is bitwise reproducible (no atomics anywhere).
//   * Convergence: the pair (p, q) is rotated iff
//         |w_p . w_q| > tol * ||w_p|| * ||w_q||,   tol = sqrt(M) * eps(T)
//     (LAPACK xGESVJ's test); the iteration stops after the first sweep with
//     no rotation, or after max_sweeps sweeps.
//   * Before the sweeps the matrix is scaled by an exact power of two so that
//     max |a_ij| is in [0.5, 1): squared norms can then neither overflow nor
//     underflow for any column that matters, whatever the input's magnitude.
//     A column whose squared norm (after that scaling) is below the smallest
//     normal number is numerically zero (its norm is below ~2^-62 max|a| in
//     float32, ~2^-510 max|a| in float64, far under eps * sigma_max): it is
//     never rotated and gets sigma = 0.
//   * V's columns are renormalised at the end (rotation rounding drifts their
//     norms by ~N eps; the cross terms stay O(eps)).
//   * Results: sigma sorted descending (ties keep column order), U and V
//     columns permuted to match.  A column of U whose sigma is zero is an
//     orthonormal completion: the unit vector e_k with the largest residual
//     after projection onto the columns already built, orthogonalised twice
//     (classical Gram-Schmidt, twice is enough).  So U always has orthonormal
//     columns, and the zero matrix gives U = I[:, :r], V = I.
//   * Non-finite input gives NaN/Inf results but never a hang (the sweep
//     count is bounded) and never leaves an output element unwritten.
//
// Shared memory (dynamic; liam_gpu/launch/batched_svd.py:shared_bytes sizes it
// with the same layout), in elements of T, with ldw = M | 1, ldv = N | 1:
//   W  N * ldw,  V  N * ldv,  sigma N,  coef N,  red  nwarps
// followed by ints: order N, inv N, pick nwarps, count nwarps.
//
// Template parameters: T = float | double; R = rows per lane (M <= 32 R);
// COLS = the largest N (V's rows are COLS / 32 per lane); THREADS = the
// largest block; MIN_BLOCKS = blocks per SM the register budget must allow.
// liam_gpu/launch/batched_svd.py holds the one copy of the last three and
// passes them in the name expressions.
#include "common.cuh"

// ------------------------------------------------------------------ warp / block reductions

// Butterfly sum: every lane ends with the same bits (a + b == b + a exactly).
template <typename T>
__device__ __forceinline__ T svd_warp_sum(T v) {
#pragma unroll
    for (int off = LG_WARP / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <typename T>
__device__ __forceinline__ T svd_warp_max(T v) {
#pragma unroll
    for (int off = LG_WARP / 2; off > 0; off >>= 1) {
        const T o = __shfl_xor_sync(0xffffffffu, v, off);
        v = o > v ? o : v;
    }
    return v;
}

// Block sum over all threads; every thread gets the same value.  `red` holds
// nwarps elements; the trailing barrier lets the caller reuse it at once.
template <typename T>
__device__ __forceinline__ T svd_block_sum(T v, T* red) {
    const int lane = threadIdx.x % LG_WARP, warp = threadIdx.x / LG_WARP;
    const int nwarps = blockDim.x / LG_WARP;
    v = svd_warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    T total = T(0);
    for (int w = 0; w < nwarps; ++w) total += red[w];
    __syncthreads();
    return total;
}

template <typename T>
__device__ __forceinline__ T svd_block_max(T v, T* red) {
    const int lane = threadIdx.x % LG_WARP, warp = threadIdx.x / LG_WARP;
    const int nwarps = blockDim.x / LG_WARP;
    v = svd_warp_max(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    T best = T(0);
    for (int w = 0; w < nwarps; ++w) best = red[w] > best ? red[w] : best;
    __syncthreads();
    return best;
}

// Block argmax of (value, index) over non-negative values: the largest value,
// the smallest index among equal ones.  Every thread gets the same index.
template <typename T>
__device__ __forceinline__ int svd_block_argmax(T v, int idx, T* red, int* pick) {
    const int lane = threadIdx.x % LG_WARP, warp = threadIdx.x / LG_WARP;
    const int nwarps = blockDim.x / LG_WARP;
#pragma unroll
    for (int off = LG_WARP / 2; off > 0; off >>= 1) {
        const T ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    if (lane == 0) { red[warp] = v; pick[warp] = idx; }
    __syncthreads();
    T best = red[0];
    int best_idx = pick[0];
    for (int w = 1; w < nwarps; ++w) {
        if (red[w] > best || (red[w] == best && pick[w] < best_idx)) { best = red[w]; best_idx = pick[w]; }
    }
    __syncthreads();
    return best_idx;
}

// ------------------------------------------------------------------ one rotation

// Orthogonalise columns p and q of W (length M) and rotate V's columns p and q
// (length N) alike; executed by one whole warp.  Returns 1 if it rotated.
template <typename T, int R, int COLS>
__device__ __forceinline__ int svd_rotate_pair(T* __restrict__ wp, T* __restrict__ wq,
                                               T* __restrict__ vp, T* __restrict__ vq,
                                               int M, int N, int lane, T tol) {
    T xp[R], xq[R];
    T app = T(0), aqq = T(0), apq = T(0);
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int i = lane + k * LG_WARP;
        xp[k] = i < M ? wp[i] : T(0);
        xq[k] = i < M ? wq[i] : T(0);
        app += xp[k] * xp[k];
        aqq += xq[k] * xq[k];
        apq += xp[k] * xq[k];
    }
    app = svd_warp_sum(app);
    aqq = svd_warp_sum(aqq);
    apq = svd_warp_sum(apq);
    // Numerically zero columns are orthogonal to everything by convention.
    if (!(app >= lg_limits<T>::tiny() && aqq >= lg_limits<T>::tiny())) return 0;
    if (!(lg_abs(apq) > tol * lg_sqrt(app) * lg_sqrt(aqq))) return 0;

    // The smaller root t of t^2 + 2 zeta t - 1 = 0 zeroes the new inner product
    // (|t| <= 1, the rotation angle is at most pi/4).  sqrt(1 + zeta^2) is
    // written so that it cannot overflow for a huge zeta.
    const T zeta = (aqq - app) / (T(2) * apq);
    const T az = lg_abs(zeta);
    const T root = az > T(1) ? az * lg_sqrt(T(1) + (T(1) / az) * (T(1) / az)) : lg_sqrt(T(1) + az * az);
    const T t = (zeta >= T(0) ? T(1) : T(-1)) / (az + root);
    const T c = T(1) / lg_sqrt(T(1) + t * t);
    const T s = c * t;

#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int i = lane + k * LG_WARP;
        if (i < M) {
            wp[i] = c * xp[k] - s * xq[k];
            wq[i] = s * xp[k] + c * xq[k];
        }
    }
#pragma unroll
    for (int k = 0; k < COLS / LG_WARP; ++k) {
        const int i = lane + k * LG_WARP;
        if (i < N) {
            const T a = vp[i], b = vq[i];
            vp[i] = c * a - s * b;
            vq[i] = s * a + c * b;
        }
    }
    return 1;
}

// ------------------------------------------------------------------ the kernel

// a: (batch, m, n) C-contiguous, m = rows, n = cols.  u: (batch, m, r), s: (batch, r),
// vt: (batch, r, n), r = min(m, n).  Requires max(m, n) <= 32 R,
// min(m, n) <= COLS, blockDim.x a multiple of 32 and <= THREADS, and the
// dynamic shared memory the launcher computes.
template <typename T, int R, int COLS, int THREADS, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
batched_svd_kernel(const T* __restrict__ a, T* __restrict__ u, T* __restrict__ s, T* __restrict__ vt,
                   long long batch, long long rows, long long cols, long long max_sweeps) {
    extern __shared__ unsigned long long svd_shared[];  // 8-byte aligned for double

    // Sizes arrive as 64-bit (the house ABI); the launcher bounds them by
    // 256, so int arithmetic is exact below.
    const int m = (int)rows, n = (int)cols;
    const bool trans = m < n;
    const int M = trans ? n : m;  // rows of W
    const int N = trans ? m : n;  // columns of W (= r)
    const int NP = N + (N & 1);   // even: a dummy column pads odd N
    const int ldw = M | 1;
    const int ldv = N | 1;
    const int tid = threadIdx.x, lane = tid % LG_WARP, warp = tid / LG_WARP;
    const int nthreads = blockDim.x, nwarps = nthreads / LG_WARP;

    T* W = reinterpret_cast<T*>(svd_shared);
    T* V = W + N * ldw;
    T* sig = V + N * ldv;
    T* coef = sig + N;
    T* red = coef + N;
    int* order = reinterpret_cast<int*>(red + nwarps);
    int* inv = order + N;
    int* pick = inv + N;
    int* count = pick + nwarps;

    const T tol = lg_sqrt(T(M)) * lg_limits<T>::eps();
    const int mn = m * n;

    for (const long long b : lg_block_stride(batch)) {
        const T* A = a + b * (long long)mn;

        // ---- load W (A or A^T), find max |a|, V = I
        T amax = T(0);
        #pragma unroll 1
        for (int e = tid; e < mn; e += nthreads) {
            const int row = e / n, col = e - row * n;
            const T x = A[e];
            W[(trans ? row : col) * ldw + (trans ? col : row)] = x;
            const T ax = lg_abs(x);
            amax = ax > amax ? ax : amax;
        }
        #pragma unroll 1
        for (int e = tid; e < N * N; e += nthreads) {
            const int j = e / N, i = e - j * N;
            V[j * ldv + i] = i == j ? T(1) : T(0);
        }
        amax = svd_block_max(amax, red);  // its barriers also publish W and V

        // ---- scale by 2^-ex so that max |w| is in [0.5, 1)
        int ex = 0;
        if (amax > T(0) && amax <= lg_limits<T>::huge()) lg_frexp(amax, &ex);
        if (ex != 0) {
            #pragma unroll 1
            for (int e = tid; e < N * M; e += nthreads) {
                const int j = e / M, i = e - j * M;
                W[j * ldw + i] = lg_ldexp(W[j * ldw + i], -ex);
            }
            __syncthreads();
        }

        // ---- sweeps
        for (int sweep = 0; sweep < max_sweeps; ++sweep) {
            int rotated = 0;
            for (int round = 0; round < NP - 1; ++round) {
                for (int k = warp; k < NP / 2; k += nwarps) {
                    // Circle method: slot 0 stays, slots 1..NP-1 turn by one per round.
                    const int x = k == 0 ? 0 : (k - 1 + round) % (NP - 1) + 1;
                    const int y = (NP - 2 - k + round) % (NP - 1) + 1;
                    const int p = x < y ? x : y, q = x < y ? y : x;
                    if (q >= N) continue;  // the padding column of an odd N
                    rotated += svd_rotate_pair<T, R, COLS>(W + p * ldw, W + q * ldw, V + p * ldv, V + q * ldv,
                                                     M, N, lane, tol);
                }
                __syncthreads();
            }
            // count[] is read after this barrier and rewritten only after the
            // next sweep's first round barrier, so one barrier suffices.
            if (lane == 0) count[warp] = rotated;
            __syncthreads();
            int total = 0;
            for (int w = 0; w < nwarps; ++w) total += count[w];
            if (total == 0) break;
        }

        // ---- sigma_j = ||w_j|| (zero below the smallest normal squared norm),
        // and V's columns renormalised: every rotation changes their norms by
        // O(eps), which adds up to ~N eps over the sweeps and would dominate
        // V's loss of orthogonality (the cross terms stay O(eps)).
        #pragma unroll 1
        for (int j = warp; j < N; j += nwarps) {
            T ss = T(0), vv = T(0);
            #pragma unroll 1
            for (int i = lane; i < M; i += LG_WARP) ss += W[j * ldw + i] * W[j * ldw + i];
            #pragma unroll 1
            for (int i = lane; i < N; i += LG_WARP) vv += V[j * ldv + i] * V[j * ldv + i];
            ss = svd_warp_sum(ss);
            const T vnorm = lg_sqrt(svd_warp_sum(vv));
            #pragma unroll 1
            for (int i = lane; i < N; i += LG_WARP) V[j * ldv + i] = V[j * ldv + i] / vnorm;
            if (lane == 0) sig[j] = ss >= lg_limits<T>::tiny() ? lg_sqrt(ss) : (ss == ss ? T(0) : ss);
        }
        __syncthreads();

        // ---- rank of each column: descending sigma, ties by column index, NaN last
        #pragma unroll 1
        for (int j = tid; j < N; j += nthreads) {
            const T sj = sig[j] == sig[j] ? sig[j] : T(-1);
            int rank = 0;
            #pragma unroll 1
            for (int c = 0; c < N; ++c) {
                const T sc = sig[c] == sig[c] ? sig[c] : T(-1);
                rank += (sc > sj || (sc == sj && c < j)) ? 1 : 0;
            }
            order[j] = rank;
            inv[rank] = j;
        }
        // ---- U columns: w_j / sigma_j where sigma_j > 0
        #pragma unroll 1
        for (int e = tid; e < N * M; e += nthreads) {
            const int j = e / M, i = e - j * M;
            const T sj = sig[j];
            if (sj != T(0)) W[j * ldw + i] = W[j * ldw + i] / sj;
        }
        __syncthreads();

        // ---- orthonormal completion of U for sigma = 0 (these rank last)
        #pragma unroll 1
        for (int rk = 0; rk < N; ++rk) {
            const int j = inv[rk];
            if (sig[j] != T(0)) continue;  // uniform: every thread reads the same sig
            T* wj = W + j * ldw;
            // Row k's residual 1 - sum_c U[k, c]^2 over the columns built so
            // far (ranks < rk); the largest one gives the best-conditioned e_k.
            T best = T(-1);
            int best_row = M;
            #pragma unroll 1
            for (int i = tid; i < M; i += nthreads) {
                T norm2 = T(0);
                #pragma unroll 1
                for (int c = 0; c < N; ++c) {
                    if (order[c] < rk) norm2 += W[c * ldw + i] * W[c * ldw + i];
                }
                const T res = T(1) - norm2;
                if (res > best) { best = res; best_row = i; }
            }
            const int k = svd_block_argmax(best, best_row, red, pick);
            #pragma unroll 1
            for (int i = tid; i < M; i += nthreads) wj[i] = i == k ? T(1) : T(0);
            __syncthreads();
            #pragma unroll 1
            for (int pass = 0; pass < 2; ++pass) {
                #pragma unroll 1
                for (int c = warp; c < N; c += nwarps) {
                    T d = T(0);
                    if (order[c] < rk) {
                        #pragma unroll 1
                        for (int i = lane; i < M; i += LG_WARP) d += W[c * ldw + i] * wj[i];
                        d = svd_warp_sum(d);
                    }
                    if (lane == 0) coef[c] = d;
                }
                __syncthreads();
                #pragma unroll 1
                for (int i = tid; i < M; i += nthreads) {
                    T x = wj[i];
                    #pragma unroll 1
                    for (int c = 0; c < N; ++c) {
                        if (order[c] < rk) x -= coef[c] * W[c * ldw + i];
                    }
                    wj[i] = x;
                }
                __syncthreads();
            }
            T ss = T(0);
            #pragma unroll 1
            for (int i = tid; i < M; i += nthreads) ss += wj[i] * wj[i];
            const T norm = lg_sqrt(svd_block_sum(ss, red));
            #pragma unroll 1
            for (int i = tid; i < M; i += nthreads) wj[i] = wj[i] / norm;
            __syncthreads();
        }

        // ---- write S, U, Vt (coalesced in the outputs' row-major order)
        T* Sb = s + b * (long long)N;
        T* Ub = u + b * (long long)m * N;
        T* Vb = vt + b * (long long)N * n;
        #pragma unroll 1
        for (int r = tid; r < N; r += nthreads) Sb[r] = lg_ldexp(sig[inv[r]], ex);
        // A = W^T's factors when trans: U_out = V (m = N rows), Vt_out = U^T.
        const T* Ufrom = trans ? V : W;
        const int ldu = trans ? ldv : ldw;
        const T* Vfrom = trans ? W : V;
        const int ldvf = trans ? ldw : ldv;
        #pragma unroll 1
        for (int e = tid; e < m * N; e += nthreads) {
            const int i = e / N, r = e - i * N;
            Ub[e] = Ufrom[inv[r] * ldu + i];
        }
        #pragma unroll 1
        for (int e = tid; e < N * n; e += nthreads) {
            const int r = e / n, c = e - r * n;
            Vb[e] = Vfrom[inv[r] * ldvf + c];
        }
        __syncthreads();  // shared memory is reused by the next matrix
    }
}
