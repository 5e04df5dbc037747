// emu_mma.h -- the warp-level tensor-core instructions: mma.sync m16n8k16, mma.sync m16n8k8 (tf32),
// ldmatrix m8n8, and cvt.rna.tf32.f32
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
//
// Both are warp collectives (Op::Mma, Op::Ldmatrix in emu_engine.h): each lane
// deposits the address of its operands, and when the 32nd lane arrives the
// instruction is computed once for the whole warp from the fragment layouts of
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type",
// "ldmatrix").  With groupID = lane >> 2 and threadID_in_group = lane % 4 (g, t):
//
//   A (16 x 16, row-major) four .b32 registers, two 16-bit values each (low
//     half = lower column): a_i holds row g + 8 * (i % 2), columns
//     2t + 8 * (i / 2) and that + 1.
//   B (16 x 8, column-major) two registers: b_i holds rows (k) 2t + 8 * i and
//     that + 1 of column (n) g.
//   C, D (16 x 8, float) four floats: c_i is row g + 8 * (i / 2), column
//     2t + i % 2.
//   ldmatrix .x1/.x2/.x4: lanes 8m .. 8m + 7 give the row addresses (16 bytes,
//     16-byte aligned) of matrix m; register m of lane l holds row l / 4,
//     columns 2 (l % 4) and that + 1 of matrix m, or with .trans the same
//     elements of the transposed matrix (rows 2 (l % 4), + 1 of column l / 4).
//
// m16n8k8 with .tf32 A and B ("Matrix Fragments for mma.m16n8k8", .tf32),
// one 32-bit value per register:
//   A (16 x 8, row-major) four registers: a_i holds row g + 8 * (i % 2),
//     column t + 4 * (i / 2).
//   B (8 x 8, column-major) two registers: b_i holds row (k) t + 4 * i of
//     column (n) g.
//   C, D as for m16n8k16.
// A .tf32 operand is a float32 bit pattern of which the mma reads the sign,
// the exponent and the top 10 mantissa bits.  PTX leaves a register that is
// not a valid tf32 value (low 13 bits not zero) unspecified; the emulator
// drops those bits (truncation), so a kernel that forgets cvt.rna computes
// with truncated inputs and the tests can tell (ties and halfway cases round
// differently).
//
// cvt.rna.tf32.f32: round a float32 to tf32 (10 mantissa bits) to nearest,
// ties away from zero; the result's low 13 bits are zero.  Infinities and
// NaN are only masked (as ptxas's SASS does: a NaN with payload only in the
// low 13 bits becomes infinity), a finite value that rounds past the largest
// float becomes infinity (no .satfinite).  Subnormals round the same way.
//
// Arithmetic: 16-bit inputs widen exactly, a product of two is exact in
// double, and each output is C + the 16 products summed in double and rounded
// once to float: a fused dot product.  (The hardware's internal rounding is
// not specified by PTX; it is at least this accurate to within the float32
// accumulation bound the tests use.)  NaN and infinities propagate.
#pragma once

namespace liam_emu {

// The `arg` of an Op::Mma: the input type of A and B.
enum MmaType : int { kMmaF16 = 0, kMmaBF16 = 1 };

inline double mma_half_to_double(std::uint32_t bits) {
    const std::uint32_t sign = bits & 0x8000u, exp = (bits >> 10) & 0x1fu, man = bits & 0x3ffu;
    double v;
    if (exp == 0x1fu) {
        v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    } else if (exp == 0u) {
        v = std::ldexp(static_cast<double>(man), -24);  // subnormal (or zero)
    } else {
        v = std::ldexp(static_cast<double>(man | 0x400u), static_cast<int>(exp) - 25);
    }
    return sign ? -v : v;
}

inline double mma_bf16_to_double(std::uint32_t bits) {
    const std::uint32_t u = bits << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return static_cast<double>(f);
}

struct MmaLane {
    const std::uint32_t* a;  // [4]
    const std::uint32_t* b;  // [2]
    const float* c;          // [4]
    float* d;                // [4] (may be c)
};

// The f32 accumulator fragment of a lane (g = lane / 4, t = lane % 4), the
// same for every shape m16n8kK: c[i] is C row g + 8 (i / 2), column 2t + i % 2.
inline void mma_read_c(const MmaLane& l, unsigned g, unsigned t, double (&C)[16][8]) {
    for (unsigned i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1u)] = static_cast<double>(l.c[i]);
}

// D = C + A B for the whole warp, each output summed in double and rounded once
// to float; every lane's C was read before any D is written (D may alias C).
template <unsigned K>
inline void mma_write_d(void* const* lanes, const double (&A)[16][K], const double (&B)[K][8],
                        const double (&C)[16][8]) {
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaLane& l = *static_cast<const MmaLane*>(lanes[lane]);
        const unsigned g = lane >> 2, t = lane & 3u;
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1u);
            double s = C[row][col];
            for (unsigned k = 0; k < K; ++k) s += A[row][k] * B[k][col];
            l.d[i] = static_cast<float>(s);
        }
    }
}

inline std::string mma_m16n8k16_run(void* const* lanes, int arg) {
    double (*widen)(std::uint32_t) = arg == kMmaBF16 ? mma_bf16_to_double : mma_half_to_double;
    double A[16][16], B[16][8], C[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaLane& l = *static_cast<const MmaLane*>(lanes[lane]);
        const unsigned g = lane >> 2, t = lane & 3u;
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned row = g + 8 * (i & 1u), col = 2 * t + 8 * (i >> 1);
            A[row][col] = widen(l.a[i] & 0xffffu);
            A[row][col + 1] = widen(l.a[i] >> 16);
        }
        for (unsigned i = 0; i < 2; ++i) {
            const unsigned k = 2 * t + 8 * i;
            B[k][g] = widen(l.b[i] & 0xffffu);
            B[k + 1][g] = widen(l.b[i] >> 16);
        }
        mma_read_c(l, g, t, C);
    }
    mma_write_d(lanes, A, B, C);
    return {};
}

// The tf32 value (as a double) of a .tf32 operand register: its low 13 bits are ignored.
inline double mma_tf32_to_double(std::uint32_t bits) {
    const std::uint32_t u = bits & 0xffffe000u;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return static_cast<double>(f);
}

// m16n8k8, tf32 A and B: products of 11-bit significands are exact in double,
// and each output is C + the 8 products summed in double, rounded once.
inline std::string mma_m16n8k8_tf32_run(void* const* lanes, int) {
    double A[16][8], B[8][8], C[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaLane& l = *static_cast<const MmaLane*>(lanes[lane]);
        const unsigned g = lane >> 2, t = lane & 3u;
        for (unsigned i = 0; i < 4; ++i) A[g + 8 * (i & 1u)][t + 4 * (i >> 1)] = mma_tf32_to_double(l.a[i]);
        for (unsigned i = 0; i < 2; ++i) B[t + 4 * i][g] = mma_tf32_to_double(l.b[i]);
        mma_read_c(l, g, t, C);
    }
    mma_write_d(lanes, A, B, C);
    return {};
}

// cvt.rna.tf32.f32 on the bits of a float32 (see the header comment).
inline std::uint32_t cvt_rna_tf32(std::uint32_t bits) {
    if ((bits & 0x7fffffffu) >= 0x7f800000u) {
        // Infinity or NaN: only masked, as the SASS that ptxas emits for sm_80 and
        // sm_90 does (FSETP.GEU |x|, +INF skips the rounding add; nothing is
        // quieted): a NaN whose payload lies only in the low 13 bits becomes infinity.
        return bits & 0xffffe000u;
    }
    // Adding half a tf32 ulp to the magnitude and truncating rounds to
    // nearest with ties away from zero; a carry into the exponent is the
    // correct next binade (or infinity).
    return (bits + 0x1000u) & 0xffffe000u;
}

struct LdmatrixLane {
    const void* addr;  // the row this lane names (lanes 8m .. 8m + 7: matrix m)
    std::uint32_t* r;  // [num]
};

// The `arg` of an Op::Ldmatrix: .num (1, 2, 4) plus kLdmatrixTrans for .trans.
inline constexpr int kLdmatrixTrans = 16;

inline std::string ldmatrix_m8n8_run(void* const* lanes, int arg) {
    const unsigned num = static_cast<unsigned>(arg & 7), trans = (arg & kLdmatrixTrans) != 0;
    std::uint16_t M[4][8][8];
    for (unsigned m = 0; m < num; ++m) {
        for (unsigned row = 0; row < 8; ++row) {
            const void* p = static_cast<const LdmatrixLane*>(lanes[8 * m + row])->addr;
            if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) {
                char buf[96];
                std::snprintf(buf, sizeof buf, "lane %u gives row address %p, which is not 16-byte aligned",
                              8 * m + row, p);
                return buf;
            }
            std::memcpy(M[m][row], p, 16);
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        const LdmatrixLane& l = *static_cast<const LdmatrixLane*>(lanes[lane]);
        const unsigned g = lane >> 2, t = lane & 3u;
        for (unsigned m = 0; m < num; ++m) {
            const std::uint32_t lo = trans ? M[m][2 * t][g] : M[m][g][2 * t];
            const std::uint32_t hi = trans ? M[m][2 * t + 1][g] : M[m][g][2 * t + 1];
            l.r[m] = lo | (hi << 16);
        }
    }
    return {};
}

// d = A B + c for one m16n8k16 tile (f32 accumulators; A, B of `type`).
inline void mma_m16n8k16(MmaType type, float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                         const float (&c)[4], std::source_location loc = std::source_location::current()) {
    static_assert(sizeof(unsigned) == sizeof(std::uint32_t), "32-bit fragment registers");
    MmaLane lane{reinterpret_cast<const std::uint32_t*>(a), reinterpret_cast<const std::uint32_t*>(b), c, d};
    Collective op{&mma_m16n8k16_run, &lane};
    warp_op(Op::Mma, 0xffffffffu, reinterpret_cast<std::uintptr_t>(&op), type, 32, loc);
}

// d = A B + c for one m16n8k8 tile with tf32 A and B (f32 accumulators).
inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4],
                             std::source_location loc = std::source_location::current()) {
    MmaLane lane{reinterpret_cast<const std::uint32_t*>(a), reinterpret_cast<const std::uint32_t*>(b), c, d};
    Collective op{&mma_m16n8k8_tf32_run, &lane};
    warp_op(Op::MmaTf32, 0xffffffffu, reinterpret_cast<std::uintptr_t>(&op), 0, 32, loc);
}

// r[0 .. num) = this lane's share of `num` 8x8 16-bit matrices whose rows the
// lanes address (see the layout above).
inline void ldmatrix_m8n8(int num, bool trans, unsigned* r, const void* row,
                          std::source_location loc = std::source_location::current()) {
    LdmatrixLane lane{row, reinterpret_cast<std::uint32_t*>(r)};
    Collective op{&ldmatrix_m8n8_run, &lane};
    warp_op(Op::Ldmatrix, 0xffffffffu, reinterpret_cast<std::uintptr_t>(&op), num | (trans ? kLdmatrixTrans : 0),
            32, loc);
}

}  // namespace liam_emu
