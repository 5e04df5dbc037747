// cuda_emu.h -- run CUDA C++ kernels on the CPU (liam_gpu.emulator, tier 2).
//
// This header is force-included (g++ -include) in front of a kernel's .cu
// source, which is then compiled as ordinary C++20 into a shared library.  It
// turns the CUDA keywords into plain C++, provides the built-in variables,
// vector types, intrinsics, warp operations and atomics that our kernels use,
// and implements a small "GPU": every thread of a block runs as a fiber
// (ucontext) on the calling OS thread -- or, when LIAM_EMU_THREADS is defined
// (the sanitizer builds), as a real OS thread -- and blocks run one after
// another.
//
// Faults that a real GPU turns into hangs or silent garbage -- a __syncthreads()
// that not every thread reaches, lanes that disagree about a warp operation,
// __trap(), a failed assert, an uncaught C++ exception -- are recorded with
// the block and thread that caused them and reported back to Python, which
// raises KernelFault.  See docs/emulator.md for the design and the limits.
//
// Kernel sources can test `#ifdef LIAM_EMULATOR` to leave out what only the
// GPU can compile (inline PTX, their own __half definition, ...).
#pragma once
#define LIAM_EMULATOR 1

// Every standard header the engine needs comes first: the CUDA keyword macros
// below (notably __noinline__) would break system headers included after them.
// The list is kept short because parsing it is most of a build's time; the
// threading headers are only needed by the thread engine.
#include <atomic>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <exception>
#include <limits>
#include <new>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>
#include <math.h>  // puts the float overloads (sqrt(float), ...) in the global namespace, as CUDA does
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#ifdef LIAM_EMU_THREADS
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <pthread.h>
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#define LIAM_EMU_SANITIZED 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

// ---------------------------------------------------------------------------
// CUDA keywords as plain C++
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__
#define __noinline__ __attribute__((noinline))
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Shared memory is per block; blocks of a launch run one after another (in
// both engines), so a function-local static is exactly one block's copy.
#define __shared__ static
#define __constant__ static
// __restrict__ is a GNU extension already.

// In the fiber engine all threads of a launch live on one OS thread, so the
// per-thread variables can be plain globals that the scheduler rewrites at each
// switch; the thread engine needs them thread_local.
#ifdef LIAM_EMU_THREADS
#define LIAM_EMU_TLS thread_local
#else
#define LIAM_EMU_TLS
#endif

// ---------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------
// Same size and alignment as CUDA's (vector_types.h), so that reinterpret_cast
// loads such as float4 from a float array keep their meaning.
#define LIAM_EMU_VEC2(T, NAME, AL)                                                          \
    struct __attribute__((aligned(AL))) NAME { T x, y; };                                   \
    inline constexpr NAME make_##NAME(T x, T y) { return NAME{x, y}; }
#define LIAM_EMU_VEC3(T, NAME)                                                              \
    struct NAME { T x, y, z; };                                                             \
    inline constexpr NAME make_##NAME(T x, T y, T z) { return NAME{x, y, z}; }
#define LIAM_EMU_VEC4(T, NAME, AL)                                                          \
    struct __attribute__((aligned(AL))) NAME { T x, y, z, w; };                             \
    inline constexpr NAME make_##NAME(T x, T y, T z, T w) { return NAME{x, y, z, w}; }

LIAM_EMU_VEC2(float, float2, 8)
LIAM_EMU_VEC3(float, float3)
LIAM_EMU_VEC4(float, float4, 16)
LIAM_EMU_VEC2(double, double2, 16)
LIAM_EMU_VEC3(double, double3)
LIAM_EMU_VEC4(double, double4, 16)
LIAM_EMU_VEC2(int, int2, 8)
LIAM_EMU_VEC3(int, int3)
LIAM_EMU_VEC4(int, int4, 16)
LIAM_EMU_VEC2(unsigned int, uint2, 8)
LIAM_EMU_VEC3(unsigned int, uint3)
LIAM_EMU_VEC4(unsigned int, uint4, 16)
LIAM_EMU_VEC2(long long, longlong2, 16)
LIAM_EMU_VEC2(unsigned long long, ulonglong2, 16)
LIAM_EMU_VEC2(short, short2, 4)
LIAM_EMU_VEC2(unsigned short, ushort2, 4)
LIAM_EMU_VEC4(char, char4, 4)
LIAM_EMU_VEC4(unsigned char, uchar4, 4)
#undef LIAM_EMU_VEC2
#undef LIAM_EMU_VEC3
#undef LIAM_EMU_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ---------------------------------------------------------------------------
// Built-in variables
// ---------------------------------------------------------------------------
inline LIAM_EMU_TLS uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------
// The engine's slow paths (fault messages, bookkeeping) are compiled at -O1:
// at -O2 their code generation took half of every module's build time, and
// the hot path is dominated by the context switch anyway.  (Kernel code
// outside this region keeps -O2.)
#pragma GCC push_options
#pragma GCC optimize("O1")
namespace liam_emu {

inline constexpr unsigned kMaxThreads = 1024;
inline constexpr std::size_t kMaxDynSmem = 227 * 1024;
// Passes of the fiber scheduler in which every runnable thread only spun
// (failed atomicCAS, __nanosleep) before the block is declared livelocked.
inline constexpr unsigned kLivelockPasses = 2000;

// Thrown inside a thread to unwind it after a fault elsewhere in its block.
struct Abort {};
// Thrown by __trap() and a failed assert.
struct Trap {
    std::string message;
};

enum class St : unsigned char { Run, Bar, Warp, Done };
enum class Op : unsigned char {
    Sync, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, MatchAny, MatchAll,
    RedAdd, RedMin, RedMax, RedAnd, RedOr, RedXor
};

inline const char* op_name(Op op) {
    switch (op) {
        case Op::Sync: return "__syncwarp";
        case Op::Shfl: return "__shfl_sync";
        case Op::ShflUp: return "__shfl_up_sync";
        case Op::ShflDown: return "__shfl_down_sync";
        case Op::ShflXor: return "__shfl_xor_sync";
        case Op::Ballot: return "__ballot_sync";
        case Op::Any: return "__any_sync";
        case Op::All: return "__all_sync";
        case Op::MatchAny: return "__match_any_sync";
        case Op::MatchAll: return "__match_all_sync";
        case Op::RedAdd: return "__reduce_add_sync";
        case Op::RedMin: return "__reduce_min_sync";
        case Op::RedMax: return "__reduce_max_sync";
        case Op::RedAnd: return "__reduce_and_sync";
        case Op::RedOr: return "__reduce_or_sync";
        case Op::RedXor: return "__reduce_xor_sync";
    }
    return "?";
}

// ---- ThreadSanitizer: only the synchronisation CUDA promises ----------------
// The thread engine's own mutexes would give TSan happens-before edges that a
// GPU does not have (a thread that finished early "synchronises" with one that
// starts late), hiding exactly the races we look for.  So the engine runs with
// TSan's view of its memory accesses and synchronisation switched off (Hide),
// and states the CUDA edges explicitly: block start, __syncthreads(), warp
// operations among their lanes, block end.
#if defined(__SANITIZE_THREAD__)
extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
inline void hide_begin() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
}
inline void hide_end() {
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
struct Hide {
    Hide() { hide_begin(); }
    ~Hide() { hide_end(); }
    Hide(const Hide&) = delete;
};
struct Unhide {
    Unhide() { hide_end(); }
    ~Unhide() { hide_begin(); }
    Unhide(const Unhide&) = delete;
};
inline void sync_release(void* token) { __tsan_release(token); }
inline void sync_acquire(void* token) { __tsan_acquire(token); }
#else
struct Hide {};
struct Unhide {};
inline void sync_release(void*) {}
inline void sync_acquire(void*) {}
#endif

#ifndef LIAM_EMU_THREADS
// ---- fiber context switch ---------------------------------------------------
// glibc's swapcontext makes two signal-mask system calls per switch, which was
// most of the run time of a barrier-heavy kernel.  On x86-64 a switch only has
// to save the callee-saved registers, the stack pointer and the FP control
// words (System V ABI); elsewhere (or with -DLIAM_EMU_UCONTEXT) ucontext is used.
#if defined(__x86_64__) && !defined(LIAM_EMU_UCONTEXT)
#define LIAM_EMU_ASM_SWITCH 1
struct FiberContext {
    void* sp = nullptr;
};
#else
struct FiberContext {
    ucontext_t uc;
};
#endif
#endif

// One emulated GPU thread.
struct Thread {
    uint3 tid{};
    unsigned linear = 0, lane = 0, warp = 0;
    St st = St::Run;
    bool started = false;
    std::source_location where;  // call site of the barrier / warp op it waits at
    // __syncthreads
    int pred = 0;
    int bar_count = 0;
    // warp operation
    Op op = Op::Sync;
    unsigned mask = 0;
    int arg = 0;
    int width = 32;
    std::uint64_t in = 0, out = 0;
#ifndef LIAM_EMU_THREADS
    FiberContext ctx;
#endif
#if defined(__SANITIZE_THREAD__)
    // Happens-before bookkeeping (see Hide): barriers passed, warp ops done,
    // this thread's release tokens (alternating, so a fast thread's next release
    // cannot leak into a slow thread's acquire), the token of the pending warp
    // op, and the tokens of the lanes it completed with.
    unsigned bars = 0, wops = 0;
    char wtok[2] = {0, 0};
    char* wcur = nullptr;
    unsigned peers = 0;
    char* peer[32] = {};
#endif
};

// The block being run.  Blocks run one at a time, so one instance suffices.
struct Block {
    std::vector<Thread> t;
    unsigned n = 0;
    unsigned running = 0;  // threads neither waiting nor done
    unsigned n_bar = 0;    // threads waiting at __syncthreads
    unsigned n_done = 0;
    unsigned long long progress = 0;  // bumped by every arrival/exit (livelock check)
    bool fault = false;
    std::string message;
    int fault_thread = -1;
#ifdef LIAM_EMU_THREADS
    std::mutex m;
    std::condition_variable cv;
#endif
    char bar_tok[2] = {0, 0};  // __syncthreads release tokens, by barrier count parity
    char start_tok = 0, done_tok = 0;
};

struct Kernel {
    void (*thunk)(void*) = nullptr;
    void* ctx = nullptr;
};

inline Block g_block;
inline Kernel g_kernel;
inline LIAM_EMU_TLS Thread* t_self = nullptr;

// Dynamic shared memory (`extern __shared__ T name[];` is rewritten to point
// here).  16-byte aligned like CUDA's; refilled with 0xFF bytes (NaN / -1) per
// block because a GPU gives no guarantee about its content either.
alignas(16) inline unsigned char g_dyn_smem[kMaxDynSmem];

#ifdef LIAM_EMU_THREADS
using Guard = std::unique_lock<std::mutex>;
inline Guard guard() { return Guard(g_block.m); }
inline void notify() { g_block.cv.notify_all(); }
#else
struct Guard {};
inline Guard guard() { return {}; }
inline void notify() {}
inline FiberContext g_sched;  // the scheduler's own context

#ifdef LIAM_EMU_ASM_SWITCH
}  // namespace liam_emu
// void liam_emu_ctx_switch(void** save_sp, void* load_sp): push the callee-saved
// registers and FP control words, store rsp in *save_sp, continue on load_sp.
extern "C" void liam_emu_ctx_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .hidden liam_emu_ctx_switch
    .type liam_emu_ctx_switch, @function
liam_emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size liam_emu_ctx_switch, .-liam_emu_ctx_switch
)");
namespace liam_emu {
inline void ctx_switch(FiberContext& from, FiberContext& to) { liam_emu_ctx_switch(&from.sp, to.sp); }
#else
inline void ctx_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.uc, &to.uc); }
#endif
#endif

inline std::string fmt_idx(const uint3& v) {
    return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
inline std::string fmt_site(const std::source_location& s) {
    return std::string(s.file_name()) + ":" + std::to_string(s.line()) + ":" + std::to_string(s.column());
}
inline std::string hex(unsigned v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}
inline bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// Records the first fault of the block (later ones are consequences).
inline void fault_locked(const Thread* who, std::string msg) {
    Block& b = g_block;
    if (!b.fault) {
        b.fault = true;
        b.message = std::move(msg);
        b.fault_thread = who ? static_cast<int>(who->linear) : -1;
    }
    notify();
}

// Throws Abort when the block has faulted, unless the thread is already
// unwinding (a destructor that syncs must not throw a second exception).
inline void abort_if_faulted() {
    if (g_block.fault && std::uncaught_exceptions() == 0) throw Abort{};
}

inline std::string describe_stall_locked() {
    Block& b = g_block;
    // Group the waiting threads by what they wait at, keeping the first thread.
    struct Group {
        std::string what;
        unsigned count, first;
    };
    std::vector<Group> groups;
    for (const Thread& t : b.t) {
        std::string key;
        if (t.st == St::Bar) key = "__syncthreads() at " + fmt_site(t.where);
        else if (t.st == St::Warp) key = std::string(op_name(t.op)) + "(mask=" + hex(t.mask) + ") at " + fmt_site(t.where);
        else continue;
        bool found = false;
        for (Group& gr : groups)
            if (gr.what == key) { gr.count++; found = true; break; }
        if (!found) groups.push_back(Group{key, 1u, t.linear});
    }
    std::string s = "deadlock: no thread of the block can proceed;";
    for (const Group& gr : groups)
        s += " " + std::to_string(gr.count) + " thread(s) wait at " + gr.what + " (first: thread " + fmt_idx(b.t[gr.first].tid) + ");";
    s += " " + std::to_string(b.n_done) + " thread(s) have exited";
    return s;
}

inline void check_stall_locked() {
    Block& b = g_block;
    if (!b.fault && b.running == 0 && b.n_done < b.n) fault_locked(nullptr, describe_stall_locked());
}

inline void try_release_barrier_locked() {
    Block& b = g_block;
    if (b.fault || b.n_bar == 0 || b.n_bar + b.n_done < b.n) return;
    const Thread* waiter = nullptr;
    for (const Thread& t : b.t)
        if (t.st == St::Bar) { waiter = &t; break; }
    if (b.n_done > 0) {
        // On a GPU this hangs or silently miscounts; CUDA calls it undefined.
        fault_locked(waiter, "divergent __syncthreads(): " + std::to_string(b.n_done) +
                                 " thread(s) of the block exited while " + std::to_string(b.n_bar) +
                                 " wait at " + fmt_site(waiter->where));
        return;
    }
    for (const Thread& t : b.t) {
        if (!same_site(t.where, waiter->where)) {
            fault_locked(&t, "divergent __syncthreads(): thread " + fmt_idx(waiter->tid) + " waits at " +
                                 fmt_site(waiter->where) + " but thread " + fmt_idx(t.tid) + " at " +
                                 fmt_site(t.where) + " (the branch around a barrier must be uniform)");
            return;
        }
    }
    int count = 0;
    for (const Thread& t : b.t) count += t.pred;
    for (Thread& t : b.t) {
        t.st = St::Run;
        t.bar_count = count;
    }
    b.running += b.n_bar;
    b.n_bar = 0;
    notify();
}

// Blocks the calling thread until the block releases it (or faults).
inline void wait_locked([[maybe_unused]] Guard& g, Thread& me) {
#ifdef LIAM_EMU_THREADS
    g_block.cv.wait(g, [&] { return me.st == St::Run || g_block.fault; });
#else
    while (me.st != St::Run && !g_block.fault) ctx_switch(me.ctx, g_sched);
#endif
    abort_if_faulted();
}

inline Thread& self() {
    Thread* me = t_self;
    if (!me) {
        std::fprintf(stderr, "liam_emu: a CUDA block-level intrinsic was called outside a kernel launch\n");
        std::abort();
    }
    return *me;
}

inline int barrier(int pred, const std::source_location& loc) {
    Thread& me = self();
#if defined(__SANITIZE_THREAD__)
    char* token = &g_block.bar_tok[me.bars & 1];
    sync_release(token);
#endif
    int count;
    {
        [[maybe_unused]] Hide hide;
        Guard g = guard();
        abort_if_faulted();
        Block& b = g_block;
        me.st = St::Bar;
        me.where = loc;
        me.pred = pred != 0;
        b.n_bar++;
        b.running--;
        b.progress++;
        try_release_barrier_locked();
        check_stall_locked();
        wait_locked(g, me);
        count = me.bar_count;
    }
#if defined(__SANITIZE_THREAD__)
    me.bars++;
    sync_acquire(token);
#endif
    return count;
}

// Mask of the lanes of warp `w` that exist (the last warp may be partial).
inline unsigned existing_lanes(unsigned w) {
    unsigned first = w * 32, n = g_block.n;
    if (first + 32 <= n) return 0xffffffffu;
    return (1u << (n - first)) - 1u;
}

// Completes the warp operation of the lanes in `me.mask` if they have all
// arrived; faults if a lane named in the mask exited or disagrees.
inline void try_complete_warp_locked(const Thread& me) {
    Block& b = g_block;
    const unsigned base = me.warp * 32;
    const unsigned exist = existing_lanes(me.warp);
    bool all = true;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!((exist >> lane) & 1u)) continue;
        const Thread& o = b.t[base + lane];
        const bool named = (me.mask >> lane) & 1u;
        if (o.st == St::Warp && (named || ((o.mask >> me.lane) & 1u)) && (o.op != me.op || o.mask != me.mask)) {
            fault_locked(&me, std::string("warp lanes disagree: lane ") + std::to_string(me.lane) + " calls " +
                                  op_name(me.op) + "(mask=" + hex(me.mask) + ") at " + fmt_site(me.where) +
                                  " but lane " + std::to_string(lane) + " calls " + op_name(o.op) + "(mask=" +
                                  hex(o.mask) + ") at " + fmt_site(o.where));
            return;
        }
        if (!named) continue;
        if (o.st == St::Done) {
            fault_locked(&me, std::string(op_name(me.op)) + "(mask=" + hex(me.mask) + ") at " + fmt_site(me.where) +
                                  " waits for lane " + std::to_string(lane) + ", which has exited");
            return;
        }
        if (o.st != St::Warp) all = false;
    }
    if (!all) return;

    const unsigned parts = me.mask & exist;
    auto in_of = [&](unsigned lane) { return b.t[base + lane].in; };
    unsigned ballot = 0;
    for (unsigned lane = 0; lane < 32; ++lane)
        if (((parts >> lane) & 1u) && in_of(lane) != 0) ballot |= 1u << lane;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!((parts >> lane) & 1u)) continue;
        Thread& o = b.t[base + lane];
        const unsigned w = static_cast<unsigned>(o.width);
        // A lane that reads from a lane outside the operation gets its own value
        // (the GPU gives an undefined one).
        auto read = [&](unsigned src) { return (src < 32 && ((parts >> src) & 1u)) ? in_of(src) : o.in; };
        switch (o.op) {
            case Op::Sync: break;
            case Op::Shfl: o.out = read((lane & ~(w - 1)) + (static_cast<unsigned>(o.arg) & (w - 1))); break;
            case Op::ShflUp: {
                unsigned d = static_cast<unsigned>(o.arg);
                o.out = (lane & (w - 1)) >= d ? read(lane - d) : o.in;
                break;
            }
            case Op::ShflDown: {
                unsigned d = static_cast<unsigned>(o.arg);
                o.out = (lane & (w - 1)) + d < w ? read(lane + d) : o.in;
                break;
            }
            case Op::ShflXor: {
                unsigned src = lane ^ static_cast<unsigned>(o.arg);
                // Lanes may read from earlier width-groups but not later ones.
                o.out = (src >= 32 || src / w > lane / w) ? o.in : read(src);
                break;
            }
            case Op::Ballot: o.out = ballot; break;
            case Op::Any: o.out = ballot != 0; break;
            case Op::All: o.out = ballot == parts; break;
            case Op::MatchAny: {
                unsigned m = 0;
                for (unsigned j = 0; j < 32; ++j)
                    if (((parts >> j) & 1u) && in_of(j) == o.in) m |= 1u << j;
                o.out = m;
                break;
            }
            case Op::MatchAll: {
                bool eq = true;
                for (unsigned j = 0; j < 32; ++j)
                    if (((parts >> j) & 1u) && in_of(j) != o.in) eq = false;
                o.out = eq ? (std::uint64_t{1} << 32) | parts : 0;
                break;
            }
            case Op::RedAdd: case Op::RedMin: case Op::RedMax:
            case Op::RedAnd: case Op::RedOr: case Op::RedXor: {
                const bool sgn = o.arg != 0;
                std::uint32_t acc = 0;
                bool first = true;
                for (unsigned j = 0; j < 32; ++j) {
                    if (!((parts >> j) & 1u)) continue;
                    std::uint32_t v = static_cast<std::uint32_t>(in_of(j));
                    if (first) { acc = v; first = false; continue; }
                    switch (o.op) {
                        case Op::RedAdd: acc += v; break;
                        case Op::RedMin:
                            acc = sgn ? (static_cast<std::int32_t>(v) < static_cast<std::int32_t>(acc) ? v : acc)
                                      : (v < acc ? v : acc);
                            break;
                        case Op::RedMax:
                            acc = sgn ? (static_cast<std::int32_t>(acc) < static_cast<std::int32_t>(v) ? v : acc)
                                      : (acc < v ? v : acc);
                            break;
                        case Op::RedAnd: acc &= v; break;
                        case Op::RedOr: acc |= v; break;
                        default: acc ^= v; break;
                    }
                }
                o.out = acc;
                break;
            }
        }
#if defined(__SANITIZE_THREAD__)
        o.peers = parts;
        for (unsigned j = 0; j < 32; ++j)
            if ((parts >> j) & 1u) o.peer[j] = b.t[base + j].wcur;
#endif
        o.st = St::Run;
        b.running++;
    }
    notify();
}

inline std::uint64_t warp_op(Op op, unsigned mask, std::uint64_t in, int arg, int width,
                             const std::source_location& loc) {
    Thread& me = self();
#if defined(__SANITIZE_THREAD__)
    char* token = &me.wtok[me.wops & 1];
    sync_release(token);
    unsigned peers = 0;
    char* peer[32];
#endif
    std::uint64_t result;
    {
        [[maybe_unused]] Hide hide;
        Guard g = guard();
        abort_if_faulted();
        if (!((mask >> me.lane) & 1u)) {
            fault_locked(&me, std::string(op_name(op)) + " at " + fmt_site(loc) + " called by lane " +
                                  std::to_string(me.lane) + " with mask " + hex(mask) + ", which does not include it");
            throw Abort{};
        }
        if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
            fault_locked(&me, std::string(op_name(op)) + " at " + fmt_site(loc) + ": width " + std::to_string(width) +
                                  " is not a power of two in [1, 32]");
            throw Abort{};
        }
        Block& b = g_block;
        me.st = St::Warp;
        me.op = op;
        me.mask = mask;
        me.in = in;
        me.arg = arg;
        me.width = width;
        me.where = loc;
#if defined(__SANITIZE_THREAD__)
        me.wcur = token;
#endif
        b.running--;
        b.progress++;
        try_complete_warp_locked(me);
        check_stall_locked();
        wait_locked(g, me);
        result = me.out;
#if defined(__SANITIZE_THREAD__)
        peers = me.peers;
        for (unsigned j = 0; j < 32; ++j) peer[j] = me.peer[j];
#endif
    }
#if defined(__SANITIZE_THREAD__)
    me.wops++;
    for (unsigned j = 0; j < 32; ++j)
        if ((peers >> j) & 1u) sync_acquire(peer[j]);
#endif
    return result;
}

inline void thread_exit_locked(Thread& me) {
    Block& b = g_block;
    me.st = St::Done;
    b.n_done++;
    b.running--;
    b.progress++;
    if (!b.fault) {
        const unsigned base = me.warp * 32, exist = existing_lanes(me.warp);
        for (unsigned lane = 0; lane < 32; ++lane) {
            if (!((exist >> lane) & 1u)) continue;
            const Thread& o = b.t[base + lane];
            if (o.st == St::Warp && ((o.mask >> me.lane) & 1u)) {
                fault_locked(&o, std::string(op_name(o.op)) + "(mask=" + hex(o.mask) + ") at " + fmt_site(o.where) +
                                     " waits for lane " + std::to_string(me.lane) + ", which has exited");
                break;
            }
        }
    }
    try_release_barrier_locked();
    check_stall_locked();
}

inline std::string demangle(const char* name) {
    int status = 0;
    char* s = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string out = (status == 0 && s) ? s : name;
    std::free(s);
    return out;
}

// Runs the kernel body for one thread and turns anything it throws into a fault.
inline void run_thread(Thread& me) {
    try {
        [[maybe_unused]] Unhide unhide;  // the kernel itself is what TSan must watch
        g_kernel.thunk(g_kernel.ctx);
    } catch (const Abort&) {
    } catch (const Trap& e) {
        Guard g = guard();
        fault_locked(&me, e.message);
    } catch (const std::exception& e) {
        Guard g = guard();
        fault_locked(&me, "uncaught C++ exception " + demangle(typeid(e).name()) + ": " + e.what());
    } catch (...) {
        Guard g = guard();
        fault_locked(&me, "uncaught C++ exception of unknown type");
    }
    Guard g = guard();
    thread_exit_locked(me);
}

// Lets other threads run while this one spins (failed atomicCAS, __nanosleep),
// so that spin locks between threads of one block work in the fiber engine.
inline void spin_yield() {
#ifdef LIAM_EMU_THREADS
    std::this_thread::yield();
#else
    Thread* me = t_self;
    if (!me) return;
    ctx_switch(me->ctx, g_sched);
    abort_if_faulted();
#endif
}

#ifndef LIAM_EMU_THREADS
// ---- fiber engine ---------------------------------------------------------
// Stacks are mmap'ed once with a guard page below each (an overflow faults
// instead of corrupting the neighbour) and reused by every later launch.
struct Stacks {
    std::vector<void*> base;
    std::size_t size = 0;  // usable bytes per stack
    std::size_t page = 0;
    ~Stacks() { release(); }
    void release() {
        for (void* p : base) munmap(p, size + page);
        base.clear();
    }
    void ensure(unsigned n, std::size_t want) {
        if (!page) page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
        want = (want + page - 1) / page * page;
        if (want != size) {
            release();
            size = want;
        }
        while (base.size() < n) {
            void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) throw std::bad_alloc();
            mprotect(p, page, PROT_NONE);
            base.push_back(p);
        }
    }
    void* top(unsigned i) const { return static_cast<char*>(base[i]) + page + size; }
};
inline Stacks g_stacks;

[[noreturn]] inline void fiber_main() {
    run_thread(*t_self);
    ctx_switch(t_self->ctx, g_sched);  // a finished fiber is never resumed
    __builtin_unreachable();
}

// Prepares `t` to start in fiber_main on the stack whose top is `top`.
inline void fiber_init(Thread& t, void* top, std::size_t size) {
#ifdef LIAM_EMU_ASM_SWITCH
    (void)size;
    void** sp = reinterpret_cast<void**>(reinterpret_cast<std::uintptr_t>(top) & ~std::uintptr_t{15});
    *--sp = nullptr;                                      // fiber_main's (never used) return address
    *--sp = reinterpret_cast<void*>(&fiber_main);          // where liam_emu_ctx_switch returns to
    for (int r = 0; r < 6; ++r) *--sp = nullptr;          // rbp rbx r12 r13 r14 r15
    std::uint32_t csr[2] = {0, 0};
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));  // inherit the caller's FP modes
    --sp;
    std::memcpy(sp, csr, sizeof csr);
    t.ctx.sp = sp;
#else
    getcontext(&t.ctx.uc);
    t.ctx.uc.uc_stack.ss_sp = static_cast<char*>(top) - size;
    t.ctx.uc.uc_stack.ss_size = size;
    t.ctx.uc.uc_link = nullptr;
    makecontext(&t.ctx.uc, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

inline void switch_to(Thread& t) {
    t_self = &t;
    threadIdx = t.tid;
    t.started = true;
    ctx_switch(g_sched, t.ctx);
    t_self = nullptr;
}

inline void run_block(std::size_t stack_bytes) {
    Block& b = g_block;
    g_stacks.ensure(b.n, stack_bytes);
    for (unsigned i = 0; i < b.n; ++i) fiber_init(b.t[i], g_stacks.top(i), g_stacks.size);
    unsigned idle_passes = 0;
    while (!b.fault && b.n_done < b.n) {
        const unsigned long long before = b.progress;
        bool ran = false;
        for (unsigned i = 0; i < b.n && !b.fault; ++i) {
            if (b.t[i].st != St::Run) continue;
            ran = true;
            switch_to(b.t[i]);
        }
        if (b.fault || b.n_done == b.n) break;
        if (!ran) {  // cannot happen (check_stall catches it first); never spin silently
            fault_locked(nullptr, describe_stall_locked());
            break;
        }
        if (b.progress != before) idle_passes = 0;
        else if (++idle_passes >= kLivelockPasses)
            fault_locked(nullptr, "livelock: the block's running threads only spin (failed atomicCAS / __nanosleep) "
                                  "without progress; note that the emulator runs blocks one after another, so a "
                                  "block cannot wait for a later one");
    }
    if (b.fault) {
        // Unwind every started thread (destructors run); each resumes inside a
        // wait or spin_yield, sees the fault and throws Abort.
        for (Thread& t : b.t) {
            if (t.st == St::Done) continue;
            if (!t.started) { t.st = St::Done; continue; }
            switch_to(t);
        }
    }
}

#else
// ---- thread engine (sanitizer builds) --------------------------------------
// One OS thread per block thread, created once per launch and reused for every
// block; a generation counter starts each block.
struct Pool {
    std::mutex m;
    std::condition_variable start, done;
    unsigned long long gen = 0;
    unsigned remaining = 0;
    bool stop = false;
    std::vector<pthread_t> threads;
};
inline Pool* g_pool = nullptr;

inline void* worker_main(void* arg) {
    [[maybe_unused]] Hide hide;  // see Hide: only the kernel (run_thread) is watched
    const unsigned i = static_cast<unsigned>(reinterpret_cast<std::uintptr_t>(arg));
    Pool& p = *g_pool;
    unsigned long long seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(p.m);
            p.start.wait(lk, [&] { return p.gen != seen || p.stop; });
            if (p.stop) return nullptr;
            seen = p.gen;
        }
        Thread& me = g_block.t[i];
        t_self = &me;
        threadIdx = me.tid;
        me.started = true;
        {
            [[maybe_unused]] Unhide unhide;
            sync_acquire(&g_block.start_tok);  // the block starts after the launch set-up
        }
        run_thread(me);
        {
            [[maybe_unused]] Unhide unhide;
            sync_release(&g_block.done_tok);  // ...and ends before the next block
        }
        t_self = nullptr;
        std::lock_guard<std::mutex> lk(p.m);
        if (--p.remaining == 0) p.done.notify_all();
    }
}

inline void pool_start(unsigned n, std::size_t stack_bytes) {
    g_pool = new Pool();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    // Sanitizers make frames larger; be generous (it is virtual memory).
    const std::size_t stack = stack_bytes * 8 > (std::size_t{1} << 20) ? stack_bytes * 8 : std::size_t{1} << 20;
    pthread_attr_setstacksize(&attr, stack);
    for (unsigned i = 0; i < n; ++i) {
        pthread_t th;
        if (pthread_create(&th, &attr, worker_main, reinterpret_cast<void*>(static_cast<std::uintptr_t>(i))) != 0) {
            pthread_attr_destroy(&attr);
            throw std::runtime_error("could not create " + std::to_string(n) + " threads for the block");
        }
        g_pool->threads.push_back(th);
    }
    pthread_attr_destroy(&attr);
}

inline void pool_stop() {
    if (!g_pool) return;
    {
        std::lock_guard<std::mutex> lk(g_pool->m);
        g_pool->stop = true;
    }
    g_pool->start.notify_all();
    for (pthread_t th : g_pool->threads) pthread_join(th, nullptr);
    delete g_pool;
    g_pool = nullptr;
}

inline void run_block(std::size_t) {
    Pool& p = *g_pool;
    {
        [[maybe_unused]] Unhide unhide;
        sync_release(&g_block.start_tok);
    }
    {
        std::lock_guard<std::mutex> lk(p.m);
        p.remaining = g_block.n;
        p.gen++;
    }
    p.start.notify_all();
    std::unique_lock<std::mutex> lk(p.m);
    p.done.wait(lk, [&] { return p.remaining == 0; });
    lk.unlock();
    [[maybe_unused]] Unhide unhide;
    sync_acquire(&g_block.done_tok);
}
#endif

#ifdef LIAM_EMU_SANITIZED
// Printed when a sanitizer aborts the process, so Python can name the block.
inline void death_callback() {
    const Thread* me = t_self;
    std::fprintf(stderr, "LIAM_EMU_FAULT_CONTEXT block=(%u,%u,%u) thread=(%d,%d,%d)\n", blockIdx.x, blockIdx.y,
                 blockIdx.z, me ? static_cast<int>(me->tid.x) : -1, me ? static_cast<int>(me->tid.y) : -1,
                 me ? static_cast<int>(me->tid.z) : -1);
}
#endif

inline void copy_error(const std::string& s, char* err, unsigned long errlen) {
    if (!err || errlen == 0) return;
    const std::size_t k = s.size() < errlen - 1 ? s.size() : errlen - 1;
    std::memcpy(err, s.data(), k);
    err[k] = '\0';
}

// Launch configuration as passed from Python (an array of 8 long longs):
//   grid x, y, z, block x, y, z, dynamic shared memory bytes, fiber stack bytes.
// `out` (6 long longs) receives the block and thread index of a fault.
// Returns 0 on success, 1 on a kernel fault, 2 on an emulator error.
inline int run_grid(const long long* cfg, long long* out, char* err, unsigned long errlen) {
    const dim3 grid(static_cast<unsigned>(cfg[0]), static_cast<unsigned>(cfg[1]), static_cast<unsigned>(cfg[2]));
    const dim3 block(static_cast<unsigned>(cfg[3]), static_cast<unsigned>(cfg[4]), static_cast<unsigned>(cfg[5]));
    const std::size_t smem = static_cast<std::size_t>(cfg[6]);
    const std::size_t stack = static_cast<std::size_t>(cfg[7]);
    const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
    for (int i = 0; i < 6; ++i) out[i] = -1;
    if (nthreads == 0 || nthreads > kMaxThreads || smem > kMaxDynSmem || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        copy_error("invalid launch configuration", err, errlen);
        return 2;
    }
    gridDim = grid;
    blockDim = block;
    Block& b = g_block;
    b.n = static_cast<unsigned>(nthreads);
    b.t.assign(b.n, Thread{});
    for (unsigned z = 0, i = 0; z < block.z; ++z)
        for (unsigned y = 0; y < block.y; ++y)
            for (unsigned x = 0; x < block.x; ++x, ++i) {
                Thread& t = b.t[i];
                t.tid = uint3{x, y, z};
                t.linear = i;
                t.lane = i % 32;
                t.warp = i / 32;
            }
#ifdef LIAM_EMU_SANITIZED
    __sanitizer_set_death_callback(death_callback);
#endif
#if defined(__SANITIZE_ADDRESS__)
    // Bytes past the requested dynamic shared memory are out of bounds.
    const std::size_t smem_rounded = (smem + 7) / 8 * 8;
    ASAN_POISON_MEMORY_REGION(g_dyn_smem + smem_rounded, kMaxDynSmem - smem_rounded);
#endif
    int rc = 0;
    [[maybe_unused]] Hide hide;  // the launch machinery is not the kernel's business (see Hide)
    try {
#ifdef LIAM_EMU_THREADS
        pool_start(b.n, stack);
#endif
        for (unsigned bz = 0; bz < grid.z && rc == 0; ++bz)
            for (unsigned by = 0; by < grid.y && rc == 0; ++by)
                for (unsigned bx = 0; bx < grid.x && rc == 0; ++bx) {
                    blockIdx = uint3{bx, by, bz};
                    for (Thread& t : b.t) {
                        t.st = St::Run;
                        t.started = false;
#if defined(__SANITIZE_THREAD__)
                        t.bars = t.wops = 0;
#endif
                    }
                    b.running = b.n;
                    b.n_bar = b.n_done = 0;
                    b.fault = false;
                    b.fault_thread = -1;
                    b.message.clear();
                    std::memset(g_dyn_smem, 0xFF, smem);
                    run_block(stack);
                    if (b.fault) {
                        out[0] = bx;
                        out[1] = by;
                        out[2] = bz;
                        if (b.fault_thread >= 0) {
                            const uint3& tid = b.t[static_cast<unsigned>(b.fault_thread)].tid;
                            out[3] = tid.x;
                            out[4] = tid.y;
                            out[5] = tid.z;
                        }
                        copy_error(b.message, err, errlen);
                        rc = 1;
                    }
                }
    } catch (const std::exception& e) {
        copy_error(std::string("emulator error: ") + e.what(), err, errlen);
        rc = 2;
    }
#ifdef LIAM_EMU_THREADS
    pool_stop();
#endif
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(g_dyn_smem, kMaxDynSmem);
#endif
    return rc;
}

// ---- typed entry points (instantiated by the generated extern "C" code) ----
template <class... A>
struct Params {
    void (*kernel)(A...);
    std::tuple<A...> values;
};

// Each thread gets its own copies of the parameters, as on a GPU.  (Unpacked
// by hand rather than with std::apply: fewer frames in sanitizer reports.)
template <class... A, std::size_t... I>
inline void call_unpacked(Params<A...>& p, std::index_sequence<I...>) {
    p.kernel(std::get<I>(p.values)...);
}
template <class... A>
inline void call_kernel(void* p) {
    call_unpacked(*static_cast<Params<A...>*>(p), std::index_sequence_for<A...>{});
}

template <class... A, std::size_t... I>
inline Params<A...> unpack(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    return Params<A...>{kernel, std::tuple<A...>(*static_cast<A*>(args[I])...)};
}

// Runs `kernel` over the grid.  `args[i]` points at the bytes of parameter i.
template <class... A>
inline int launch(void (*kernel)(A...), const long long* cfg, void** args, long long* out, char* err,
                  unsigned long errlen) {
    auto params = unpack(kernel, args, std::index_sequence_for<A...>{});
    g_kernel = Kernel{&call_kernel<A...>, &params};
    int rc = run_grid(cfg, out, err, errlen);
    g_kernel = Kernel{};
    return rc;
}

template <class T>
concept Complete = requires { sizeof(T); };

// Describes a parameter type as "<kind><bytes>": i/u signed/unsigned integer,
// f floating point, b bool, o other (struct), v void, p pointer.
template <class T>
inline std::string type_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_void_v<U>) return "v0";
    else if constexpr (std::is_pointer_v<U>) return "p8";
    else if constexpr (std::is_same_v<U, bool>) return "b1";
    else if constexpr (std::is_enum_v<U>) return type_code<std::underlying_type_t<U>>();
    else if constexpr (std::is_integral_v<U>) return (std::is_signed_v<U> ? "i" : "u") + std::to_string(sizeof(U));
    else if constexpr (std::is_floating_point_v<U>) return "f" + std::to_string(sizeof(U));
    else if constexpr (Complete<U>) return "o" + std::to_string(sizeof(U));
    else return "v0";  // pointer to an incomplete type: like void*
}

template <class T>
inline std::string param_code() {
    std::string name = demangle(typeid(T).name());
    if constexpr (std::is_pointer_v<T>) return "p" + type_code<std::remove_pointer_t<T>>() + ":" + name;
    else return type_code<T>() + ":" + name;
}

// "code:name;code:name;..." for Python's argument checks and marshalling.
template <class... A>
inline const char* signature(void (*)(A...)) {
    static const std::string sig = [] {
        std::string s;
        ((s += param_code<A>() + ";"), ...);
        return s;
    }();
    return sig.c_str();
}

[[noreturn]] inline void assert_fail(const char* expr, const char* file, unsigned int line, const char* func) {
    throw Trap{std::string("assertion failed: ") + expr + " (" + file + ":" + std::to_string(line) + " in " + func +
               ")"};
}

}  // namespace liam_emu

#pragma GCC pop_options

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

// ---------------------------------------------------------------------------
// Atomics (sequentially consistent, which is at least as strong as CUDA's)
// ---------------------------------------------------------------------------
// Non-template overloads, as in CUDA, so atomicAdd(&unsigned_counter, 1) converts.
#define LIAM_EMU_ATOMIC_RMW(NAME, T, EXPR)                         \
    inline T NAME(T* address, T val) {                             \
        std::atomic_ref<T> ref(*address);                          \
        return EXPR;                                               \
    }
LIAM_EMU_ATOMIC_RMW(atomicAdd, int, ref.fetch_add(val))
LIAM_EMU_ATOMIC_RMW(atomicAdd, unsigned int, ref.fetch_add(val))
LIAM_EMU_ATOMIC_RMW(atomicAdd, unsigned long long, ref.fetch_add(val))
LIAM_EMU_ATOMIC_RMW(atomicAdd, float, ref.fetch_add(val))
LIAM_EMU_ATOMIC_RMW(atomicAdd, double, ref.fetch_add(val))
LIAM_EMU_ATOMIC_RMW(atomicSub, int, ref.fetch_sub(val))
LIAM_EMU_ATOMIC_RMW(atomicSub, unsigned int, ref.fetch_sub(val))
LIAM_EMU_ATOMIC_RMW(atomicExch, int, ref.exchange(val))
LIAM_EMU_ATOMIC_RMW(atomicExch, unsigned int, ref.exchange(val))
LIAM_EMU_ATOMIC_RMW(atomicExch, unsigned long long, ref.exchange(val))
LIAM_EMU_ATOMIC_RMW(atomicExch, float, ref.exchange(val))
LIAM_EMU_ATOMIC_RMW(atomicAnd, int, ref.fetch_and(val))
LIAM_EMU_ATOMIC_RMW(atomicAnd, unsigned int, ref.fetch_and(val))
LIAM_EMU_ATOMIC_RMW(atomicAnd, unsigned long long, ref.fetch_and(val))
LIAM_EMU_ATOMIC_RMW(atomicOr, int, ref.fetch_or(val))
LIAM_EMU_ATOMIC_RMW(atomicOr, unsigned int, ref.fetch_or(val))
LIAM_EMU_ATOMIC_RMW(atomicOr, unsigned long long, ref.fetch_or(val))
LIAM_EMU_ATOMIC_RMW(atomicXor, int, ref.fetch_xor(val))
LIAM_EMU_ATOMIC_RMW(atomicXor, unsigned int, ref.fetch_xor(val))
LIAM_EMU_ATOMIC_RMW(atomicXor, unsigned long long, ref.fetch_xor(val))
#undef LIAM_EMU_ATOMIC_RMW

namespace liam_emu {
// Read-modify-write through a CAS loop (max, min, inc, dec).
template <class T, class F>
inline T atomic_update(T* address, F f) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (!ref.compare_exchange_weak(old, f(old))) {
    }
    return old;
}
}  // namespace liam_emu

#define LIAM_EMU_ATOMIC_MINMAX(T)                                                                           \
    inline T atomicMax(T* a, T v) { return liam_emu::atomic_update(a, [v](T o) { return o < v ? v : o; }); } \
    inline T atomicMin(T* a, T v) { return liam_emu::atomic_update(a, [v](T o) { return v < o ? v : o; }); }
LIAM_EMU_ATOMIC_MINMAX(int)
LIAM_EMU_ATOMIC_MINMAX(unsigned int)
LIAM_EMU_ATOMIC_MINMAX(long long)
LIAM_EMU_ATOMIC_MINMAX(unsigned long long)
#undef LIAM_EMU_ATOMIC_MINMAX

inline unsigned int atomicInc(unsigned int* a, unsigned int limit) {
    return liam_emu::atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1; });
}
inline unsigned int atomicDec(unsigned int* a, unsigned int limit) {
    return liam_emu::atomic_update(a, [limit](unsigned o) { return (o == 0 || o > limit) ? limit : o - 1; });
}

// A failed CAS yields: it is how spin locks wait for the thread holding them.
#define LIAM_EMU_ATOMIC_CAS(T)                                       \
    inline T atomicCAS(T* address, T compare, T val) {               \
        std::atomic_ref<T> ref(*address);                            \
        T expected = compare;                                        \
        if (!ref.compare_exchange_strong(expected, val)) liam_emu::spin_yield(); \
        return expected;                                             \
    }
LIAM_EMU_ATOMIC_CAS(int)
LIAM_EMU_ATOMIC_CAS(unsigned int)
LIAM_EMU_ATOMIC_CAS(unsigned long long)
LIAM_EMU_ATOMIC_CAS(unsigned short)
#undef LIAM_EMU_ATOMIC_CAS

// Scoped variants: on the CPU every scope is the whole machine.
#define LIAM_EMU_ATOMIC_SCOPED(NAME)                                                       \
    template <class... X> inline auto NAME##_block(X... x) { return NAME(x...); }          \
    template <class... X> inline auto NAME##_system(X... x) { return NAME(x...); }
LIAM_EMU_ATOMIC_SCOPED(atomicAdd)
LIAM_EMU_ATOMIC_SCOPED(atomicSub)
LIAM_EMU_ATOMIC_SCOPED(atomicExch)
LIAM_EMU_ATOMIC_SCOPED(atomicMax)
LIAM_EMU_ATOMIC_SCOPED(atomicMin)
LIAM_EMU_ATOMIC_SCOPED(atomicCAS)
LIAM_EMU_ATOMIC_SCOPED(atomicAnd)
LIAM_EMU_ATOMIC_SCOPED(atomicOr)
LIAM_EMU_ATOMIC_SCOPED(atomicXor)
#undef LIAM_EMU_ATOMIC_SCOPED

// ---------------------------------------------------------------------------
// Loads/stores with cache hints: plain memory accesses here
// ---------------------------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------
// min / max for mixed arithmetic types (CUDA provides these as globals)
// ---------------------------------------------------------------------------
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B>)
inline constexpr std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B>)
inline constexpr std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// ---------------------------------------------------------------------------
// Math functions with CUDA names that libm lacks (expf, erff, ... come from it)
// ---------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __fma_rn(double x, double y, double z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float normcdff(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }

namespace liam_emu {
// erfinv: Giles' single-precision approximation refined by Newton steps on erf.
inline double erfinv(double y) {
    if (!(y > -1.0 && y < 1.0)) {
        if (y == 1.0) return std::numeric_limits<double>::infinity();
        if (y == -1.0) return -std::numeric_limits<double>::infinity();
        return std::numeric_limits<double>::quiet_NaN();
    }
    double w = -std::log((1.0 - y) * (1.0 + y)), x;
    if (w < 5.0) {
        w -= 2.5;
        x = 2.81022636e-08;
        x = 3.43273939e-07 + x * w; x = -3.5233877e-06 + x * w; x = -4.39150654e-06 + x * w;
        x = 0.00021858087 + x * w;  x = -0.00125372503 + x * w; x = -0.00417768164 + x * w;
        x = 0.246640727 + x * w;    x = 1.50140941 + x * w;
    } else {
        w = std::sqrt(w) - 3.0;
        x = -0.000200214257;
        x = 0.000100950558 + x * w; x = 0.00134934322 + x * w;  x = -0.00367342844 + x * w;
        x = 0.00573950773 + x * w;  x = -0.0076224613 + x * w;  x = 0.00943887047 + x * w;
        x = 1.00167406 + x * w;     x = 2.83297682 + x * w;
    }
    x *= y;
    for (int i = 0; i < 2; ++i) {  // d/dx erf(x) = 2/sqrt(pi) exp(-x^2)
        double err = std::erf(x) - y;
        x -= err / (1.1283791670955126 * std::exp(-x * x));
    }
    return x;
}
}  // namespace liam_emu
inline double erfinv(double y) { return liam_emu::erfinv(y); }
inline float erfinvf(float y) { return static_cast<float>(liam_emu::erfinv(y)); }
inline double erfcinv(double y) { return liam_emu::erfinv(1.0 - y); }
inline float erfcinvf(float y) { return static_cast<float>(liam_emu::erfinv(1.0 - static_cast<double>(y))); }
inline double normcdfinv(double p) { return 1.4142135623730951 * liam_emu::erfinv(2.0 * p - 1.0); }
inline float normcdfinvf(float p) { return static_cast<float>(normcdfinv(p)); }

// ---------------------------------------------------------------------------
// Type conversions and bit manipulation
// ---------------------------------------------------------------------------
inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __double2hiint(double x) { return static_cast<int>(std::bit_cast<unsigned long long>(x) >> 32); }
inline int __double2loint(double x) { return static_cast<int>(std::bit_cast<unsigned long long>(x)); }
inline double __hiloint2double(int hi, int lo) {
    return std::bit_cast<double>((static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) | static_cast<unsigned>(lo));
}
// Rounding-mode suffixes: rn nearest-even, rz toward zero, rd down, ru up.
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned int __float2uint_rn(float x) { return static_cast<unsigned int>(std::nearbyint(x)); }
inline unsigned int __float2uint_rz(float x) { return static_cast<unsigned int>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(std::nearbyint(x)); }
inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(std::nearbyint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned int x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline double __ll2double_rn(long long x) { return static_cast<double>(x); }

inline int __popc(unsigned int x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned int>(x)) + 1; }
inline int __ffsll(long long x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1; }
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
    return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) {
    return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned int>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int shift) {
    const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
    return static_cast<unsigned int>((v << (shift & 31u)) >> 32);
}
inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int shift) {
    const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
    return static_cast<unsigned int>(v >> (shift & 31u));
}

// ---------------------------------------------------------------------------
// 16-bit storage types (no arithmetic: convert to float to compute)
// ---------------------------------------------------------------------------
// Kernel files that define their own __half must do so under
// `#ifndef LIAM_EMULATOR`, or compile with -DLIAM_EMU_NO_FP16.
#ifndef LIAM_EMU_NO_FP16
struct __attribute__((aligned(2))) __half { unsigned short __x; };
struct __attribute__((aligned(2))) __nv_bfloat16 { unsigned short __x; };
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

namespace liam_emu {
// float -> binary16, round to nearest even; NaN stays NaN (payload kept when it fits).
inline unsigned short float_to_half_bits(float f) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u, x = u & 0x7fffffffu;
    if (x >= 0x7f800000u)  // inf, NaN
        return static_cast<unsigned short>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0u));
    if (x >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // rounds past 65504
    if (x < 0x38800000u) {  // below 2^-14: a half subnormal m * 2^-24 (scaling is exact)
        const float a = std::bit_cast<float>(x);
        return static_cast<unsigned short>(sign | static_cast<std::uint32_t>(std::nearbyint(a * 16777216.0f)));
    }
    // Rebias the exponent (127 -> 15) and round the 13 dropped bits to even;
    // a carry out of the mantissa correctly bumps the exponent.
    const std::uint32_t r = x - 0x38000000u;
    return static_cast<unsigned short>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}
inline float half_bits_to_float(unsigned short h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        const float v = static_cast<float>(m) * 5.9604644775390625e-08f;  // m * 2^-24, exact
        return std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) | sign);
    }
    if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
    return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}
inline unsigned short float_to_bf16_bits(float f) {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);  // quiet NaN
    return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
}  // namespace liam_emu

inline float __half2float(__half h) { return liam_emu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half{liam_emu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short x) { return __half{x}; }
inline float __bfloat162float(__nv_bfloat16 h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h.__x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{liam_emu::float_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }
#endif  // LIAM_EMU_NO_FP16

// ---------------------------------------------------------------------------
// assert: a failing assert in a kernel becomes a fault, not a process abort.
// ---------------------------------------------------------------------------
// glibc's assert() expands to __assert_fail(...); its declaration is guarded by
// _ASSERT_H_DECLS and already seen above, so redirecting the name here also
// covers a kernel that includes <assert.h> again.
#define __assert_fail ::liam_emu::assert_fail
