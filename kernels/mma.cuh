// Warp-level tensor-core instructions (sm_80+): m16n8k16 for the 16-bit
// storage types, m16n8k8 TF32 for float32 storage (precision="tf32").
//
// One small __device__ function per PTX instruction.  On a GPU its body is the
// inline PTX; under the CPU emulator (LIAM_EMULATOR) it calls the emulator's
// implementation of the same instruction (liam_gpu/emulator/emu_mma.h), which
// follows the PTX ISA's fragment layouts, so one source runs in both places.
//
//   lg_mma_16816<T>(d, a, b)     d += A B for one m16n8k16 tile, float32
//                                accumulators; T = lg_half or lg_bf16 picks the
//                                input type of the A and B fragments.
//   lg_mma_1688_tf32(d, a, b)    d += A B for one m16n8k8 tile, TF32 A and B
//                                (the .b32 registers hold tf32 values), float32
//                                accumulators.
//   lg_cvt_rna_tf32(x)           cvt.rna.tf32.f32: float32 bits rounded to tf32
//                                (10 mantissa bits, nearest, ties away from 0).
//   lg_ldmatrix_x{1,2,4}<TRANS>  1, 2 or 4 8x8 16-bit matrices from shared
//                                memory; lanes 8m .. 8m + 7 name the rows
//                                (16 bytes each, 16-byte aligned) of matrix m.
//   lg_mma_atom<T>               what the tensor-core tile issues per storage
//                                type T: the mma, its k, and the conversion of
//                                staged operands (cvt to tf32 for float).
//
// Every lane of the warp must execute each of them (.sync.aligned): the
// emulator faults ("lanes disagree", a lane that exited, a deadlock) where a
// GPU's behaviour would be undefined.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
// point type"), with g = lane / 4 and t = lane % 4:
//   a[i]: A row g + 8 (i % 2), columns 2t + 8 (i / 2) and + 1 (low half first)
//   b[i]: B rows (k) 2t + 8 i and + 1, column (n) g
//   d[i]: D row g + 8 (i / 2), column 2t + i % 2
// and ("Matrix Fragments for mma.m16n8k8", .tf32), one 32-bit value a register:
//   a[i]: A row g + 8 (i % 2), column t + 4 (i / 2)
//   b[i]: B row (k) t + 4 i, column (n) g
//   d[i]: as for m16n8k16
#pragma once
#include "common.cuh"

// mma.sync m16n8k16 / m16n8k8.tf32 and cvt.rna.tf32 exist from sm_80 on.  A
// dtype's module holds every entry of that dtype (liam_gpu/launch/runtime.py),
// so on an older GPU these bodies must still compile: there they trap, and the
// launcher never picks a tensor-core entry below compute capability 8.0.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define LG_TENSOR_CORES 0
#else
#define LG_TENSOR_CORES 1
#endif

// Under the emulator each wrapper takes its caller's source location, so that
// lanes reaching the same instruction from different call sites (undefined
// for .aligned instructions on a GPU) fault instead of being merged, and
// faults name the kernel's line rather than this header's.
#ifdef LIAM_EMULATOR
#define LG_SITE_PARAM , std::source_location lg_site
#define LG_SITE_DEFAULT , std::source_location lg_site = std::source_location::current()
#define LG_SITE , lg_site
#else
#define LG_SITE_PARAM
#define LG_SITE_DEFAULT
#define LG_SITE
#endif

#ifndef LIAM_EMULATOR
// The 32-bit shared-window address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned lg_smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
#endif

// d = A B + d, m16n8k16, A row-major and B column-major 16-bit, float32 d.
template <typename T>
__device__ __forceinline__ void lg_mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]
                                             LG_SITE_DEFAULT);

template <>
__device__ __forceinline__ void lg_mma_16816<lg_half>(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]
                                                LG_SITE_PARAM) {
#ifdef LIAM_EMULATOR
    liam_emu::mma_m16n8k16(liam_emu::kMmaF16, d, a, b, d LG_SITE);
#elif !LG_TENSOR_CORES
    __trap();
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <>
__device__ __forceinline__ void lg_mma_16816<lg_bf16>(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]
                                                LG_SITE_PARAM) {
#ifdef LIAM_EMULATOR
    liam_emu::mma_m16n8k16(liam_emu::kMmaBF16, d, a, b, d LG_SITE);
#elif !LG_TENSOR_CORES
    __trap();
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// d = A B + d, m16n8k8, A row-major and B column-major tf32, float32 d.
__device__ __forceinline__ void lg_mma_1688_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]
                                                 LG_SITE_DEFAULT) {
#ifdef LIAM_EMULATOR
    liam_emu::mma_m16n8k8_tf32(d, a, b, d LG_SITE);
#elif !LG_TENSOR_CORES
    __trap();
#else
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// cvt.rna.tf32.f32 of the float32 whose bits are `x`: the tf32 value's bits
// (the low 13 bits zero).  Overflow rounds to infinity; infinities and NaN are
// only masked (a NaN with payload only in the low 13 bits becomes infinity).
__device__ __forceinline__ unsigned lg_cvt_rna_tf32(unsigned x) {
#ifdef LIAM_EMULATOR
    return liam_emu::cvt_rna_tf32(x);
#elif !LG_TENSOR_CORES
    __trap();
    return x;
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(__uint_as_float(x)));
    return r;
#endif
}

// ldmatrix: the "memory" clobber keeps the compiler from moving shared-memory
// stores across the load (a barrier separates them in the tiles anyway).
template <bool TRANS = false>
__device__ __forceinline__ void lg_ldmatrix_x4(unsigned (&r)[4], const void* row LG_SITE_DEFAULT) {
#ifdef LIAM_EMULATOR
    liam_emu::ldmatrix_m8n8(4, TRANS, r, row LG_SITE);
#else
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(lg_smem_addr(row)) : "memory");
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(lg_smem_addr(row)) : "memory");
    }
#endif
}

template <bool TRANS = false>
__device__ __forceinline__ void lg_ldmatrix_x2(unsigned (&r)[2], const void* row LG_SITE_DEFAULT) {
#ifdef LIAM_EMULATOR
    liam_emu::ldmatrix_m8n8(2, TRANS, r, row LG_SITE);
#else
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(lg_smem_addr(row)) : "memory");
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(lg_smem_addr(row)) : "memory");
    }
#endif
}

template <bool TRANS = false>
__device__ __forceinline__ void lg_ldmatrix_x1(unsigned (&r)[1], const void* row LG_SITE_DEFAULT) {
#ifdef LIAM_EMULATOR
    liam_emu::ldmatrix_m8n8(1, TRANS, r, row LG_SITE);
#else
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];"
                     : "=r"(r[0]) : "r"(lg_smem_addr(row)) : "memory");
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];"
                     : "=r"(r[0]) : "r"(lg_smem_addr(row)) : "memory");
    }
#endif
}

// ------------------------------------------------------------------ the atoms

// Per storage type, the instruction the tensor-core tile (MmaTile in
// transform.cu) is built from:
//   K        the mma's k, in elements: one k-step reads 32 bytes of each row,
//            i.e. two 16-byte ldmatrix columns, for every atom;
//   stage(v) a 16-byte chunk of operand values as the mma takes them: as
//            loaded for the 16-bit types, each value cvt.rna'd to tf32 for float;
//   mma      d += A B.
// The fragments of both come from ldmatrix: an m16n8k8 tf32 fragment (a[i]
// row g + 8 (i % 2), column t + 4 (i / 2); b[i] row t + 4 i of column g) is
// exactly what a plain ldmatrix.x4 of four 8 x 4 float (8 x 8 b16) matrices
// hands out, since a pair of b16 columns is one 32-bit column.  So the tile
// keeps one shared layout, one addressing in bytes and the LDSM loads (one
// instruction for four registers, against four LDS.32 with plain loads).
template <typename T> struct lg_mma_atom;

template <> struct lg_mma_atom<lg_half> {
    enum { K = 16 };
    static __device__ __forceinline__ uint4 stage(uint4 v) { return v; }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        lg_mma_16816<lg_half>(d, a, b);
    }
};

template <> struct lg_mma_atom<lg_bf16> {
    enum { K = 16 };
    static __device__ __forceinline__ uint4 stage(uint4 v) { return v; }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        lg_mma_16816<lg_bf16>(d, a, b);
    }
};

// float32 storage on TF32 tensor cores: each value is rounded once, when its
// chunk is staged in shared memory (once per block rather than once per warp
// that reads it as a fragment).
template <> struct lg_mma_atom<float> {
    enum { K = 8 };
    static __device__ __forceinline__ uint4 stage(uint4 v) {
        return make_uint4(lg_cvt_rna_tf32(v.x), lg_cvt_rna_tf32(v.y), lg_cvt_rna_tf32(v.z), lg_cvt_rna_tf32(v.w));
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        lg_mma_1688_tf32(d, a, b);
    }
};

#ifdef LG_PLANT_MMA_LANE_SWAP
// Test-only fault (tests/test_transform_mma.py builds with -DLG_PLANT_MMA_LANE_SWAP;
// no production build defines it): lanes 0 and 1 exchange their A fragments,
// the layout bug the emulator's fragment semantics must expose.
__device__ __forceinline__ void lg_plant_lane_swap(unsigned (&a)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned other = __shfl_xor_sync(0xffffffffu, a[i], 1);
        if ((threadIdx.x & (LG_WARP - 1)) < 2) a[i] = other;
    }
}
#endif
