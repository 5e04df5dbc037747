// emu_sync.h -- __syncthreads() and the warp intrinsics, over the engine
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
#pragma once

// ---------------------------------------------------------------------------
// Synchronisation and warp intrinsics
// ---------------------------------------------------------------------------
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    liam_emu::barrier(0, loc);
}
inline int __syncthreads_count(int pred, std::source_location loc = std::source_location::current()) {
    return liam_emu::barrier(pred, loc);
}
inline int __syncthreads_and(int pred, std::source_location loc = std::source_location::current()) {
    return liam_emu::barrier(pred, loc) == static_cast<int>(liam_emu::g_block.n);
}
inline int __syncthreads_or(int pred, std::source_location loc = std::source_location::current()) {
    return liam_emu::barrier(pred, loc) > 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
    liam_emu::warp_op(liam_emu::Op::Sync, mask, 0, 0, 32, loc);
}
// Lanes of the warp that have not exited.  (A GPU reports the lanes converged
// at this point; fibers have no such notion.)
inline unsigned __activemask() {
    liam_emu::Thread& me = liam_emu::self();
    [[maybe_unused]] liam_emu::Hide hide;
    liam_emu::Guard g = liam_emu::guard();
    unsigned m = 0, base = me.warp * 32, exist = liam_emu::existing_lanes(me.warp);
    for (unsigned lane = 0; lane < 32; ++lane)
        if (((exist >> lane) & 1u) && liam_emu::g_block.t[base + lane].st != liam_emu::St::Done) m |= 1u << lane;
    return m;
}

namespace liam_emu {
template <class T>
inline T* dyn_smem() { return reinterpret_cast<T*>(g_dyn_smem); }
template <class T>
inline std::uint64_t to_bits(const T& v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
    std::uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T>
inline T from_bits(std::uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}
}  // namespace liam_emu

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
                     std::source_location loc = std::source_location::current()) {
    return liam_emu::from_bits<T>(liam_emu::warp_op(liam_emu::Op::Shfl, mask, liam_emu::to_bits(var), srcLane, width, loc));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        std::source_location loc = std::source_location::current()) {
    return liam_emu::from_bits<T>(
        liam_emu::warp_op(liam_emu::Op::ShflUp, mask, liam_emu::to_bits(var), static_cast<int>(delta), width, loc));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          std::source_location loc = std::source_location::current()) {
    return liam_emu::from_bits<T>(
        liam_emu::warp_op(liam_emu::Op::ShflDown, mask, liam_emu::to_bits(var), static_cast<int>(delta), width, loc));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         std::source_location loc = std::source_location::current()) {
    return liam_emu::from_bits<T>(liam_emu::warp_op(liam_emu::Op::ShflXor, mask, liam_emu::to_bits(var), laneMask, width, loc));
}
inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
    return static_cast<unsigned>(liam_emu::warp_op(liam_emu::Op::Ballot, mask, pred != 0, 0, 32, loc));
}
inline int __any_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
    return static_cast<int>(liam_emu::warp_op(liam_emu::Op::Any, mask, pred != 0, 0, 32, loc));
}
inline int __all_sync(unsigned mask, int pred, std::source_location loc = std::source_location::current()) {
    return static_cast<int>(liam_emu::warp_op(liam_emu::Op::All, mask, pred != 0, 0, 32, loc));
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value, std::source_location loc = std::source_location::current()) {
    return static_cast<unsigned>(liam_emu::warp_op(liam_emu::Op::MatchAny, mask, liam_emu::to_bits(value), 0, 32, loc));
}
template <class T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred,
                                 std::source_location loc = std::source_location::current()) {
    std::uint64_t r = liam_emu::warp_op(liam_emu::Op::MatchAll, mask, liam_emu::to_bits(value), 0, 32, loc);
    *pred = static_cast<int>(r >> 32);
    return static_cast<unsigned>(r);
}
#define LIAM_EMU_REDUCE(NAME, OP)                                                                                \
    inline unsigned NAME(unsigned mask, unsigned v, std::source_location loc = std::source_location::current()) { \
        return static_cast<unsigned>(liam_emu::warp_op(liam_emu::Op::OP, mask, v, 0, 32, loc));                  \
    }                                                                                                            \
    inline int NAME(unsigned mask, int v, std::source_location loc = std::source_location::current()) {           \
        return static_cast<int>(static_cast<std::uint32_t>(                                                      \
            liam_emu::warp_op(liam_emu::Op::OP, mask, static_cast<std::uint32_t>(v), 1, 32, loc)));             \
    }
LIAM_EMU_REDUCE(__reduce_add_sync, RedAdd)
LIAM_EMU_REDUCE(__reduce_min_sync, RedMin)
LIAM_EMU_REDUCE(__reduce_max_sync, RedMax)
#undef LIAM_EMU_REDUCE
inline unsigned __reduce_and_sync(unsigned mask, unsigned v, std::source_location loc = std::source_location::current()) {
    return static_cast<unsigned>(liam_emu::warp_op(liam_emu::Op::RedAnd, mask, v, 0, 32, loc));
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v, std::source_location loc = std::source_location::current()) {
    return static_cast<unsigned>(liam_emu::warp_op(liam_emu::Op::RedOr, mask, v, 0, 32, loc));
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v, std::source_location loc = std::source_location::current()) {
    return static_cast<unsigned>(liam_emu::warp_op(liam_emu::Op::RedXor, mask, v, 0, 32, loc));
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) { liam_emu::spin_yield(); }
[[noreturn]] inline void __trap() { throw liam_emu::Trap{"__trap() called"}; }
[[noreturn]] inline void __brkpt() { throw liam_emu::Trap{"__brkpt() called"}; }
inline long long clock64() {  // nanoseconds, monotonic
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
