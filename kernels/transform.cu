// Fused matrix transform: out = act(x @ w^T + bias), one pass over the output.
//
//   x    (batch, n, d_in)      row-major, C-contiguous
//   w    (batch, d_out, d_in)  row-major (the torch.nn.Linear layout)
//   bias (batch, d_out)        optional
//   out  (batch, n, d_out)
//
// Both operands are K-major (d_in contiguous), so a block streams a BM x BK
// tile of x and a BN x BK tile of w through shared memory, stored transposed
// (k-major) so that each thread reads its TM rows and TN columns as 16-byte
// groups.  Each thread accumulates a TM x TN block in registers.  After the
// k-loop the block passes through shared memory one row group at a time, so
// that consecutive threads add the bias, apply the activation and store
// consecutive 16-byte groups of a row: coalesced, each output element stored
// exactly once, and each activation's code emitted once per group rather than
// once per register.  All sums accumulate in the compute type (float for
// float/half/bfloat16 storage, double for double).
//
// Template parameters, all passed by liam_gpu/launch/transform.py in the name
// expressions (it holds the one table of tile shapes): the storage type T, the
// block tile BM x BN, the k-tile depth BK, the per-thread register block
// TM x TN, the load path VEC, the blocks per SM of the launch bounds
// MIN_BLOCKS, and Acts, the lg_act::List of activations (the epilogue
// functors) whose index a launch passes as `act`.
//
// Tiles are double-buffered: while the block computes on one shared-memory
// buffer, each thread's global loads for the next k-tile are in flight into
// registers, then written to the other buffer; one barrier per k-tile.
//
// VEC=true loads 16 bytes at a time (4 float, 2 double, 8 half or bfloat16); the launcher
// sets it only when d_in is a multiple of that width and x and w start on a
// 16-byte boundary (then every row and every k-chunk is aligned and a chunk is
// wholly inside or wholly outside the matrix).  VEC=false loads element by
// element and works for any shape and alignment.
//
// The grid is 1-D over all tiles (batch items x column tiles x row tiles),
// looping with the grid size as stride, so any tile count fits the hardware
// grid limit (2^31 - 1 blocks on x) and the launch is still complete.  All offsets are
// 64-bit except the k index (the launcher bounds d_in below 2^31).
//
// Tensor cores (linear_mma_kernel, MmaTile): for float16 and bfloat16 storage
// on sm_80+, the launcher takes a warp-level mma.sync path when d_in % 8 == 0
// and x and w start on 16-byte boundaries; for float32 storage the same tile
// runs on TF32 tensor cores (m16n8k8, operands cvt.rna'd to tf32) when the
// caller allows it (precision="tf32"), d_in % 4 == 0 and the same alignment.
// A block stages BM x BK tiles of x and BN x BK tiles of w in shared memory
// as they are (k contiguous, rows padded by 16 bytes so that ldmatrix reads
// are free of bank conflicts), double-buffered through registers as above;
// each warp loads its A and B fragments with ldmatrix.x4 and accumulates
// (WM/16) x (WN/8) mma tiles (m16n8k16, or m16n8k8 for tf32: lg_mma_atom in
// mma.cuh) in float32.  The epilogue stages one m16 slice of every warp
// (WARPS_M x 16 rows) at a time in shared memory and ends in the same
// lg_finish_rows as the SIMT tile.  Whatever the MMA path cannot take runs on
// the SIMT kernel.
//
// Also here: epilogue_kernel, bias + activation in place over a GEMM result
// (used after cuBLAS where that path is faster).
#include "common.cuh"
#include "mma.cuh"

// ------------------------------------------------------------------ vector access

// A if C else B (no <type_traits> under NVRTC here).
template <bool C, typename A, typename B> struct lg_select { typedef A type; };
template <typename A, typename B> struct lg_select<false, A, B> { typedef B type; };

// Per storage type: WIDTH elements per 16-byte global access, and GROUP
// elements per 16-byte access of the compute type (shared-memory reads of a
// thread's rows/columns, and output stores of one group).
template <typename T> struct lg_vec;

template <> struct lg_vec<float> {
    enum { WIDTH = 4, GROUP = 4 };
    typedef float4 raw;
    static __device__ __forceinline__ raw load(const float* p) { return *reinterpret_cast<const float4*>(p); }
    static __device__ __forceinline__ void zero(raw& r) { r.x = 0.f; r.y = 0.f; r.z = 0.f; r.w = 0.f; }
    static __device__ __forceinline__ void unpack(const raw& r, float* v) {
        v[0] = r.x; v[1] = r.y; v[2] = r.z; v[3] = r.w;
    }
    static __device__ __forceinline__ void store_width(float* p, const float* v) {
        float4 r; r.x = v[0]; r.y = v[1]; r.z = v[2]; r.w = v[3];
        *reinterpret_cast<float4*>(p) = r;
    }
    static __device__ __forceinline__ void store_group(float* p, const float* v) { store_width(p, v); }
};

template <> struct lg_vec<double> {
    enum { WIDTH = 2, GROUP = 2 };
    typedef double2 raw;
    static __device__ __forceinline__ raw load(const double* p) { return *reinterpret_cast<const double2*>(p); }
    static __device__ __forceinline__ void zero(raw& r) { r.x = 0.0; r.y = 0.0; }
    static __device__ __forceinline__ void unpack(const raw& r, double* v) { v[0] = r.x; v[1] = r.y; }
    static __device__ __forceinline__ void store_width(double* p, const double* v) {
        double2 r; r.x = v[0]; r.y = v[1];
        *reinterpret_cast<double2*>(p) = r;
    }
    static __device__ __forceinline__ void store_group(double* p, const double* v) { store_width(p, v); }
};

// The 16-bit storage types (lg_half, lg_bf16): 8 per 16-byte load, computed
// in float, so 4 per compute group.
template <typename H>
struct lg_vec16 {
    enum { WIDTH = 8, GROUP = 4 };
    typedef uint4 raw;
    static __device__ __forceinline__ raw load(const H* p) { return *reinterpret_cast<const uint4*>(p); }
    static __device__ __forceinline__ void zero(raw& r) { r.x = 0u; r.y = 0u; r.z = 0u; r.w = 0u; }
    // Two values per 32-bit word, the lower address in the low bits (little endian).
    static __device__ __forceinline__ void split(unsigned int word, float* v) {
        H lo, hi;
        lo.bits = (unsigned short)(word & 0xffffu);
        hi.bits = (unsigned short)(word >> 16);
        v[0] = lg_to_compute(lo);
        v[1] = lg_to_compute(hi);
    }
    static __device__ __forceinline__ unsigned int join(float a, float b) {
        return (unsigned int)lg_storage<H>::from(a).bits | ((unsigned int)lg_storage<H>::from(b).bits << 16);
    }
    static __device__ __forceinline__ void unpack(const raw& r, float* v) {
        split(r.x, v); split(r.y, v + 2); split(r.z, v + 4); split(r.w, v + 6);
    }
    static __device__ __forceinline__ void store_width(H* p, const float* v) {
        uint4 r;
        r.x = join(v[0], v[1]); r.y = join(v[2], v[3]); r.z = join(v[4], v[5]); r.w = join(v[6], v[7]);
        *reinterpret_cast<uint4*>(p) = r;
    }
    static __device__ __forceinline__ void store_group(H* p, const float* v) {
        uint2 r;
        r.x = join(v[0], v[1]); r.y = join(v[2], v[3]);
        *reinterpret_cast<uint2*>(p) = r;
    }
};
template <> struct lg_vec<lg_half> : lg_vec16<lg_half> {};
template <> struct lg_vec<lg_bf16> : lg_vec16<lg_bf16> {};

// One element as a "vector" of width 1: the scalar path shares the tile code.
template <typename T> struct lg_scalar {
    enum { WIDTH = 1 };
    typedef T raw;
    static __device__ __forceinline__ raw load(const T* p) { return *p; }
    static __device__ __forceinline__ void zero(raw& r) { r = lg_storage<T>::from(0.0f); }
    static __device__ __forceinline__ void unpack(const raw& r, typename lg_storage<T>::compute* v) {
        v[0] = lg_to_compute(r);
    }
};

// GROUP consecutive compute values from 16-byte-aligned shared memory.
__device__ __forceinline__ void lg_smem_group(const float* p, float* v) {
    const float4 r = *reinterpret_cast<const float4*>(p);
    v[0] = r.x; v[1] = r.y; v[2] = r.z; v[3] = r.w;
}
__device__ __forceinline__ void lg_smem_group(const double* p, double* v) {
    const double2 r = *reinterpret_cast<const double2*>(p);
    v[0] = r.x; v[1] = r.y;
}

__device__ __forceinline__ void lg_smem_store_group(float* p, const float* v) {
    float4 r; r.x = v[0]; r.y = v[1]; r.z = v[2]; r.w = v[3];
    *reinterpret_cast<float4*>(p) = r;
}
__device__ __forceinline__ void lg_smem_store_group(double* p, const double* v) {
    double2 r; r.x = v[0]; r.y = v[1];
    *reinterpret_cast<double2*>(p) = r;
}

// ------------------------------------------------------------------ tile numbering

// Output tile number `tile` of a BM x BN tiling, in (batch item, column tile,
// row tile) order, row tiles fastest so that consecutive blocks share w's
// tile: its first output row and column, with x, w, bias and out advanced to
// its batch item (64-bit offsets).  Both GEMM tiles (SIMT and tensor-core)
// number their tiles here.
template <int BM, int BN, typename T>
__device__ __forceinline__ void lg_tile_origin(long long tile, long long row_tiles, long long col_tiles,
                                               long long n, long long d_in, long long d_out, bool has_bias,
                                               const T* __restrict__& x, const T* __restrict__& w,
                                               const T* __restrict__& bias, T* __restrict__& out,
                                               long long& row0, long long& col0) {
    const long long item_tiles = row_tiles * col_tiles;
    const long long z = tile / item_tiles;
    const long long in_item = tile - z * item_tiles;
    col0 = (in_item / row_tiles) * BN;
    row0 = (in_item % row_tiles) * BM;
    x += z * n * d_in;
    w += z * d_out * d_in;
    out += z * n * d_out;
    if (has_bias) bias += z * d_out;
}

// ------------------------------------------------------------------ the k-loop

// The double-buffered k-loop of both GEMM tiles: tile t is computed from one
// shared buffer (compute(buf)) while each thread's global loads of its parts
// pa (x) and pb (w) for tile t + 1 are in flight into registers, then written
// to the other buffer; one barrier per k-tile.  The last barrier retires every
// read of the tiles, so the epilogue may reuse the shared memory.  k is 32-bit:
// the launcher bounds d_in below 2^31.
template <int BK, typename Shared, typename PartA, typename PartB, typename Compute>
__device__ __forceinline__ void lg_k_loop(Shared& sh, PartA& pa, PartB& pb, int kdim, const Compute& compute) {
    const int k_tiles = (kdim + BK - 1) / BK;
    pa.load(0, kdim);
    pb.load(0, kdim);
    pa.store(sh.t.a[0]);
    pb.store(sh.t.b[0]);
    __syncthreads();
    for (int t = 0; t < k_tiles; ++t) {
        const int buf = (int)(t & 1);
        const bool more = t + 1 < k_tiles;
        if (more) {  // in flight during compute
            pa.load((t + 1) * BK, kdim);
            pb.load((t + 1) * BK, kdim);
        }
        compute(buf);
        if (more) {
            pa.store(sh.t.a[buf ^ 1]);
            pb.store(sh.t.b[buf ^ 1]);
        }
        __syncthreads();
    }
}

// ------------------------------------------------------------------ the fused epilogue

// Bias + the activation functor Act over ROWS staged rows of an output tile
// (c: ROWS x BN compute values, row stride LDC, 16-byte aligned rows), which
// are output rows [row0, row0 + ROWS) and columns [col0, col0 + BN); then the
// single store of each element.  Consecutive threads take consecutive 16-byte
// groups of a row, so the stores coalesce; the loop is not unrolled, so each
// activation is emitted once per GROUP elements.  Both GEMM tiles (SIMT and
// tensor-core) end here: one source of truth for the epilogue.
template <typename T, int BN, int LDC, int ROWS, int THREADS, typename Act>
__device__ __forceinline__ void lg_finish_rows(
    const typename lg_storage<T>::compute (*c)[LDC], const T* bias, T* out, long long row0, long long col0,
    long long n, long long d_out, int has_bias, bool vec_out, int tid) {
    typedef typename lg_storage<T>::compute Acc;
    constexpr int G = lg_vec<T>::GROUP;
    constexpr int GROUPS_PER_ROW = BN / G;
    static_assert(BN % G == 0 && LDC % G == 0, "staged rows must be whole 16-byte groups");
    const Act act;
#pragma unroll 1
    for (int idx = tid; idx < ROWS * GROUPS_PER_ROW; idx += THREADS) {
        const int r = idx / GROUPS_PER_ROW;
        const int cc = (idx % GROUPS_PER_ROW) * G;
        const long long row = row0 + r;
        const long long col = col0 + cc;
        if (row >= n || col >= d_out) continue;
        Acc v[G];
        lg_smem_group(&c[r][cc], v);
#pragma unroll
        for (int e = 0; e < G; ++e) {
            Acc t = v[e];
            if (has_bias && col + e < d_out) t += lg_to_compute(bias[col + e]);
            v[e] = act(t);
        }
        T* dst = out + row * d_out + col;
        if (vec_out && col + G <= d_out) {
            lg_vec<T>::store_group(dst, v);
        } else {
#pragma unroll
            for (int e = 0; e < G; ++e) {
                if (col + e < d_out) dst[e] = lg_storage<T>::from(v[e]);
            }
        }
    }
}

// lg_finish_rows with its arguments bound: the body that lg_act::dispatch
// calls with the launch's activation functor.
template <typename T, int BN, int LDC, int ROWS, int THREADS>
struct LgFinishRows {
    const typename lg_storage<T>::compute (*c)[LDC];
    const T* bias;
    T* out;
    long long row0, col0, n, d_out;
    int has_bias;
    bool vec_out;
    int tid;
    template <typename Act>
    __device__ __forceinline__ void operator()(Act) const {
        lg_finish_rows<T, BN, LDC, ROWS, THREADS, Act>(c, bias, out, row0, col0, n, d_out, has_bias, vec_out, tid);
    }
};

// ------------------------------------------------------------------ the GEMM tile

template <typename T, int BM, int BN, int BK, int TM, int TN, bool VEC, typename Acts>
struct LinearTile {
    typedef typename lg_storage<T>::compute Acc;
    // The global-load path: 16-byte vectors or single elements.
    typedef typename lg_select<VEC, lg_vec<T>, lg_scalar<T> >::type Load;

    static constexpr int THREADS_M = BM / TM;
    static constexpr int THREADS_N = BN / TN;
    static constexpr int THREADS = THREADS_M * THREADS_N;
    static constexpr int G = lg_vec<T>::GROUP;
    static constexpr int V = Load::WIDTH;
    static constexpr int KV = BK / V;  // loads per tile row
    // Padding keeps rows 16-byte aligned and spreads the transposed stores over banks.
    static constexpr int PAD = G;
    // A thread's rows (columns) come in groups of G, strided so that the
    // threads of a warp read adjacent 16-byte groups of shared memory.
    static constexpr int ROW_STRIDE = THREADS_M * G;
    static constexpr int COL_STRIDE = THREADS_N * G;

    static_assert(BM % TM == 0 && BN % TN == 0, "tile must split evenly into thread blocks");
    static_assert(TM % G == 0 && TN % G == 0, "per-thread block must be whole 16-byte groups");
    static_assert(BK % V == 0, "k-tile must be whole vectors");

    // Shared memory: the double-buffered k-tiles; after the k-loop the same
    // bytes stage one row group (ROW_STRIDE rows) of the output tile at a time.
    struct Tiles {
        alignas(16) Acc a[2][BK][BM + PAD];
        alignas(16) Acc b[2][BK][BN + PAD];
    };
    struct Staging {
        alignas(16) Acc c[ROW_STRIDE][BN + PAD];
    };
    union Shared {
        Tiles t;
        Staging o;
    };

    // One operand's (x's or w's) share of a k-tile for this thread: L
    // consecutive load units (16-byte vectors or elements) of a single row, so
    // one pointer addresses them all and few registers stay live across the
    // k-loop.  The loads for tile t+1 wait in `stage` while tile t is computed.
    template <int ROWS>
    struct Part {
        static constexpr int UNITS = ROWS * KV;
        static constexpr int L = (UNITS + THREADS - 1) / THREADS;
        static_assert(KV % L == 0, "a thread's loads must lie in one row of the tile");

        const T* ptr;  // first unit of this thread in k-tile 0; null for rows outside the matrix
        int row;       // row within the tile (x row or w row = output column)
        int k;         // first k within the k-tile
        bool active;   // false for the idle threads when the tile has fewer units than threads
        typename Load::raw stage[L];

        __device__ __forceinline__ void init(const T* base, long long row0, long long rows, long long d_in,
                                             int tid) {
            const int q = tid * L;
            active = q < UNITS;
            row = q / KV;
            k = (q % KV) * V;
            ptr = (active && row0 + row < rows) ? base + (row0 + row) * d_in + k : 0;
        }

        // Global -> registers for the k-tile starting at k0 (zeros past the edges).
        // k is 32-bit: the launcher refuses d_in that would overflow it.
        __device__ __forceinline__ void load(int k0, int d_in) {
#pragma unroll
            for (int l = 0; l < L; ++l) {
                if (ptr != 0 && k0 + k + l * V < d_in) {
                    stage[l] = Load::load(ptr + k0 + l * V);
                } else {
                    Load::zero(stage[l]);
                }
            }
        }

        // Registers -> one shared buffer, transposed to k-major.
        __device__ __forceinline__ void store(Acc (*tile)[ROWS + PAD]) const {
            if (!active) return;
#pragma unroll
            for (int l = 0; l < L; ++l) {
                Acc v[V];
                Load::unpack(stage[l], v);
#pragma unroll
                for (int j = 0; j < V; ++j) tile[k + l * V + j][row] = v[j];
            }
        }
    };

    // acc += the outer products of one shared k-tile.
    static __device__ __forceinline__ void compute(const Shared& sh, int buf, int ty, int tx, Acc (&acc)[TM][TN]) {
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            Acc a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < TM / G; ++g) lg_smem_group(&sh.t.a[buf][k][g * ROW_STRIDE + ty * G], a + g * G);
#pragma unroll
            for (int g = 0; g < TN / G; ++g) lg_smem_group(&sh.t.b[buf][k][g * COL_STRIDE + tx * G], b + g * G);
#pragma unroll
            for (int i = 0; i < TM; ++i) {
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
            }
        }
    }

    // The epilogue over ROW_STRIDE staged rows (lg_finish_rows), bound for lg_act::dispatch.
    typedef LgFinishRows<T, BN, BN + PAD, ROW_STRIDE, THREADS> FinishRows;

    // One BM x BN output tile, number `tile` (lg_tile_origin).  Only `tile`
    // stays live across the k-loop; the rest is derived from it.
    static __device__ __forceinline__ void run(
        Shared& sh, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
        T* __restrict__ out, long long n, long long d_in, long long d_out, long long tile,
        long long row_tiles, long long col_tiles, int has_bias, int act, bool vec_out) {
        long long row0, col0;
        lg_tile_origin<BM, BN>(tile, row_tiles, col_tiles, n, d_in, d_out, has_bias, x, w, bias, out, row0, col0);
        const int tid = threadIdx.x;
        const int tx = tid % THREADS_N;
        const int ty = tid / THREADS_N;

        Part<BM> pa;  // rows of x
        Part<BN> pb;  // rows of w, i.e. output columns
        pa.init(x, row0, n, d_in, tid);
        pb.init(w, col0, d_out, d_in, tid);

        Acc acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);
        }

        lg_k_loop<BK>(sh, pa, pb, (int)d_in, [&](int buf) { compute(sh, buf, ty, tx, acc); });

        // Epilogue, one row group at a time: registers -> staging -> global.
        // The k-loop's final barrier has retired every read of the tiles.
#pragma unroll
        for (int p = 0; p < TM / G; ++p) {
#pragma unroll
            for (int e = 0; e < G; ++e) {
#pragma unroll
                for (int g = 0; g < TN / G; ++g) {
                    lg_smem_store_group(&sh.o.c[ty * G + e][g * COL_STRIDE + tx * G], &acc[p * G + e][g * G]);
                }
            }
            __syncthreads();
            const FinishRows finish{sh.o.c, bias, out, row0 + p * ROW_STRIDE, col0, n, d_out, has_bias, vec_out, tid};
            lg_act::dispatch<Acts>(act, finish);
            __syncthreads();  // the staging area is rewritten by the next pass or tile
        }
    }
};

// Entry point: a 1-D grid over every tile of every batch item, a strided loop
// when there are more tiles than blocks.
//   act: index of the activation in Acts.
//   vec_out: out starts on a GROUP * sizeof(T) boundary and d_out % GROUP == 0.
//   MIN_BLOCKS: blocks per SM the launch bounds ask of ptxas (TileConfig.min_blocks).
template <typename T, int BM, int BN, int BK, int TM, int TN, bool VEC, int MIN_BLOCKS, typename Acts>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), MIN_BLOCKS)
linear_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
              T* __restrict__ out, long long batch, long long n, long long d_in, long long d_out,
              long long has_bias, long long act, long long vec_out) {
    typedef LinearTile<T, BM, BN, BK, TM, TN, VEC, Acts> Tile;
    __shared__ typename Tile::Shared sh;
    const long long row_tiles = lg_ceil_div(n, BM);
    const long long col_tiles = lg_ceil_div(d_out, BN);
    for (const long long tile : lg_block_stride(batch * row_tiles * col_tiles)) {
        Tile::run(sh, x, w, bias, out, n, d_in, d_out, tile, row_tiles, col_tiles, has_bias != 0, (int)act,
                  vec_out != 0);
    }
}

// ------------------------------------------------------------------ the tensor-core tile

// The tensor-core counterpart of LinearTile for 16-bit storage (T = lg_half or
// lg_bf16, m16n8k16) and for float32 storage on TF32 (T = float, m16n8k8):
// the instruction is lg_mma_atom<T> (mma.cuh), everything else is shared, and
// BK counts elements of T (BK * sizeof(T) bytes of every row per k-tile).
// A block of WARPS_M x WARPS_N warps computes a BM x BN output tile;
// warp (wm, wn) owns columns [wn WN, (wn + 1) WN) and the m16 row slices
// mi WARPS_M + wm for mi < MI, so that slice mi of every warp makes up the
// contiguous rows [mi ROWS, (mi + 1) ROWS) staged by one epilogue pass.
//
// Needs (the launcher checks them): d_in a multiple of CHUNK (8 16-bit values,
// 4 floats) and x, w 16-byte aligned, so every 16-byte chunk of a row is
// aligned and lies wholly inside or outside the matrix.
template <typename T, int BM, int BN, int BK, int WM, int WN, typename Acts>
struct MmaTile {
    typedef lg_mma_atom<T> Atom;
    static constexpr int WARPS_M = BM / WM;
    static constexpr int WARPS_N = BN / WN;
    static constexpr int THREADS = WARPS_M * WARPS_N * LG_WARP;
    static constexpr int MI = WM / 16;  // m16 slices per warp
    static constexpr int NI = WN / 8;   // n8 slices per warp
    static constexpr int CHUNK = 16 / (int)sizeof(T);  // elements per 16-byte load (8 16-bit, 4 float)
    static constexpr int KSTEP = Atom::K;              // k of one mma: 2 chunks
    static constexpr int KC = BK / CHUNK;
    // Rows padded by one chunk (80-byte rows for BK * sizeof(T) = 64 bytes):
    // the 8 rows one ldmatrix matrix reads start at 8 distinct multiples of 16
    // bytes modulo 128, i.e. in 8 distinct groups of 4 banks: no bank conflicts.
    static constexpr int LDK = BK + CHUNK;
    static constexpr int G = lg_vec<T>::GROUP;
    static constexpr int ROWS = WARPS_M * 16;  // rows staged per epilogue pass
    // Staged rows padded by 8 floats: the float2 stores of a half-warp (row g,
    // columns 2t, 2t + 1 of each n8 slice) then fall in banks 8g + 2t + {0, 1},
    // all distinct (a 4-float pad put rows g and g + 1 on the same banks).
    static constexpr int LDC = BN + 8;
    static constexpr int RSTEP = THREADS / KC;  // rows between one thread's chunks

    static_assert(sizeof(T) == 2 || sizeof(T) == 4, "tensor-core tile: 16-bit storage or float (tf32)");
    static_assert(KSTEP == 2 * CHUNK, "one mma k-step is two 16-byte ldmatrix columns of every row");
    static_assert(BM % WM == 0 && BN % WN == 0, "block tile must split evenly into warp tiles");
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be whole m16 slices and pairs of n8 slices");
    static_assert(BK % KSTEP == 0, "k-tile must be whole mma k-steps");
    static_assert(THREADS % KC == 0 && BM % RSTEP == 0 && BN % RSTEP == 0,
                  "each thread loads whole rows' chunks of both operands");

    struct Tiles {
        alignas(16) T a[2][BM][LDK];
        alignas(16) T b[2][BN][LDK];
    };
    struct Staging {
        alignas(16) float c[ROWS][LDC];
    };
    union Shared {
        Tiles t;
        Staging o;
    };

    // One operand's (x's or w's) share of a k-tile for this thread: L chunks,
    // RSTEP rows apart, at the same k offset.  Loads for tile t+1 wait in
    // `stage` while tile t is computed.
    template <int ROWS_T>
    struct Operand {
        static constexpr int L = ROWS_T / RSTEP;
        const T* ptr;        // this thread's first chunk in k-tile 0
        long long rows_left; // rows of the matrix from this thread's first row on
        long long step;      // elements between this thread's chunks (RSTEP rows)
        int row, k;          // first row and k offset within the tile
        uint4 stage[L];

        __device__ __forceinline__ void init(const T* base, long long row0, long long rows, long long d_in, int tid) {
            row = tid / KC;
            k = (tid % KC) * CHUNK;
            rows_left = rows - row0 - row;
            step = (long long)RSTEP * d_in;
            ptr = base + (row0 + row) * d_in + k;
        }

        // Global -> registers for the k-tile starting at k0 (zeros past the edges).
        __device__ __forceinline__ void load(int k0, int d_in) {
#pragma unroll
            for (int l = 0; l < L; ++l) {
                if ((long long)l * RSTEP < rows_left && k0 + k < d_in) {
                    stage[l] = *reinterpret_cast<const uint4*>(ptr + l * step + k0);
                } else {
                    stage[l] = make_uint4(0u, 0u, 0u, 0u);
                }
            }
        }

        // Registers -> one shared buffer, as stored in global memory (k
        // contiguous), in the atom's operand format (tf32 for float).
        __device__ __forceinline__ void store(T (*tile)[LDK]) const {
#pragma unroll
            for (int l = 0; l < L; ++l) {
                *reinterpret_cast<uint4*>(&tile[row + l * RSTEP][k]) = Atom::stage(stage[l]);
            }
        }
    };

    // acc += this warp's products over one shared k-tile.
    static __device__ __forceinline__ void compute(const Shared& sh, int buf, int wm, int wn, int lane,
                                                   float (&acc)[MI][NI][4]) {
#pragma unroll
        for (int ks = 0; ks < BK; ks += KSTEP) {
            unsigned a[MI][4], b[NI][2];
            // A, x4: matrices (rows 0-7, first chunk), (rows 8-15, first chunk),
            // (rows 0-7, second chunk), (rows 8-15, second chunk) of the k-step =
            // a0..a3; lane l names row l % 16, chunk l / 16.  A chunk is k 0-7 of
            // m16n8k16 or k 0-3 of m16n8k8 tf32 (lane l's register: row l / 4,
            // 32-bit column l % 4), the fragment layouts of both (mma.cuh).
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                lg_ldmatrix_x4(a[mi],
                               &sh.t.a[buf][(mi * WARPS_M + wm) * 16 + (lane & 15)][ks + (lane >> 4) * CHUNK]);
            }
            // B, x4 over two n8 slices: (n 0-7, first chunk), (n 0-7, second chunk) =
            // b0, b1 of the first; the same of n 8-15 for the second (w's rows are
            // B's columns).
#pragma unroll
            for (int nj = 0; nj < NI / 2; ++nj) {
                unsigned r[4];
                lg_ldmatrix_x4(r, &sh.t.b[buf][wn * WN + nj * 16 + (lane >> 4) * 8 + (lane & 7)]
                                            [ks + ((lane >> 3) & 1) * CHUNK]);
                b[2 * nj][0] = r[0];
                b[2 * nj][1] = r[1];
                b[2 * nj + 1][0] = r[2];
                b[2 * nj + 1][1] = r[3];
            }
#ifdef LG_PLANT_MMA_LANE_SWAP
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) lg_plant_lane_swap(a[mi]);
#endif
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) Atom::mma(acc[mi][ni], a[mi], b[ni]);
            }
        }
    }

    typedef LgFinishRows<T, BN, LDC, ROWS, THREADS> FinishRows;

    // One BM x BN output tile, number `tile` (lg_tile_origin).
    static __device__ __forceinline__ void run(
        Shared& sh, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
        T* __restrict__ out, long long n, long long d_in, long long d_out, long long tile,
        long long row_tiles, long long col_tiles, int has_bias, int act, bool vec_out) {
        long long row0, col0;
        lg_tile_origin<BM, BN>(tile, row_tiles, col_tiles, n, d_in, d_out, has_bias, x, w, bias, out, row0, col0);
        const int tid = threadIdx.x;
        const int lane = tid & (LG_WARP - 1);
        const int warp = tid / LG_WARP;
        const int wm = warp % WARPS_M;
        const int wn = warp / WARPS_M;

        Operand<BM> pa;  // rows of x
        Operand<BN> pb;  // rows of w, i.e. output columns
        pa.init(x, row0, n, d_in, tid);
        pb.init(w, col0, d_out, d_in, tid);

        float acc[MI][NI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
            }
        }

        lg_k_loop<BK>(sh, pa, pb, (int)d_in, [&](int buf) { compute(sh, buf, wm, wn, lane, acc); });

        // Epilogue, one m16 slice of every warp per pass: accumulators ->
        // staging (d0, d1 in row g, d2, d3 in row g + 8) -> lg_finish_rows.
        // The k-loop's final barrier has retired every read of the tiles.
        const int g = lane >> 2;
        const int c2 = (lane & 3) * 2;
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const int col = wn * WN + ni * 8 + c2;
                *reinterpret_cast<float2*>(&sh.o.c[wm * 16 + g][col]) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
                *reinterpret_cast<float2*>(&sh.o.c[wm * 16 + g + 8][col]) =
                    make_float2(acc[mi][ni][2], acc[mi][ni][3]);
            }
            __syncthreads();
            const FinishRows finish{sh.o.c, bias, out, row0 + mi * ROWS, col0, n, d_out, has_bias, vec_out, tid};
            lg_act::dispatch<Acts>(act, finish);
            __syncthreads();  // the staging area is rewritten by the next pass or tile
        }
    }
};

// Entry point of the tensor-core path, with linear_kernel's arguments: a 1-D
// grid over every tile of every batch item, a strided loop when there are
// more tiles than blocks.  WM x WN: one warp's share of the BM x BN tile.
template <typename T, int BM, int BN, int BK, int WM, int WN, int MIN_BLOCKS, typename Acts>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * LG_WARP, MIN_BLOCKS)
linear_mma_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  T* __restrict__ out, long long batch, long long n, long long d_in, long long d_out,
                  long long has_bias, long long act, long long vec_out) {
    typedef MmaTile<T, BM, BN, BK, WM, WN, Acts> Tile;
    __shared__ typename Tile::Shared sh;
    const long long row_tiles = lg_ceil_div(n, BM);
    const long long col_tiles = lg_ceil_div(d_out, BN);
    for (const long long tile : lg_block_stride(batch * row_tiles * col_tiles)) {
        Tile::run(sh, x, w, bias, out, n, d_in, d_out, tile, row_tiles, col_tiles, has_bias != 0, (int)act,
                  vec_out != 0);
    }
}

// ------------------------------------------------------------------ epilogue only

// y[r, c] = act(y[r, c] + bias[r / rows_per_item, c]) in place, W elements per step.
template <typename T, int W, typename Act>
__device__ __forceinline__ void epilogue_loop(T* y, const T* bias, long long rows, long long d_out,
                                              long long rows_per_item, bool has_bias) {
    typedef typename lg_storage<T>::compute Acc;
    const Act act;
    for (const long long q : lg_grid_stride(rows * d_out / W)) {  // W divides d_out
        const long long e0 = q * W;
        const long long row = e0 / d_out;
        const long long col = e0 - row * d_out;
        Acc v[W];
        if constexpr (W == 1) {
            v[0] = lg_to_compute(y[e0]);
        } else {
            lg_vec<T>::unpack(lg_vec<T>::load(y + e0), v);
        }
        const T* b = has_bias ? bias + (row / rows_per_item) * d_out + col : 0;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            const Acc t = has_bias ? v[j] + lg_to_compute(b[j]) : v[j];
            v[j] = act(t);
        }
        if constexpr (W == 1) {
            y[e0] = lg_storage<T>::from(v[0]);
        } else {
            lg_vec<T>::store_width(y + e0, v);
        }
    }
}

// epilogue_loop with its arguments bound, for lg_act::dispatch.
template <typename T, int W>
struct EpilogueLoop {
    T* y;
    const T* bias;
    long long rows, d_out, rows_per_item;
    bool has_bias;
    template <typename Act>
    __device__ __forceinline__ void operator()(Act) const {
        epilogue_loop<T, W, Act>(y, bias, rows, d_out, rows_per_item, has_bias);
    }
};

// VEC: y starts on a 16-byte boundary and d_out is a multiple of the 16-byte width.
// THREADS: the block size the launcher uses.  act: index of the activation in Acts.
template <typename T, bool VEC, int THREADS, typename Acts>
__global__ void __launch_bounds__(THREADS)
epilogue_kernel(T* __restrict__ y, const T* __restrict__ bias, long long rows, long long d_out,
                long long rows_per_item, long long has_bias, long long act) {
    const EpilogueLoop<T, VEC ? (int)lg_vec<T>::WIDTH : 1> loop{y, bias, rows, d_out, rows_per_item, has_bias != 0};
    lg_act::dispatch<Acts>((int)act, loop);
}
