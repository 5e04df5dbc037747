// emu_engine.h -- the execution engine: block state, faults, barriers, warp operations
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
#pragma once

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
    RedAdd, RedMin, RedMax, RedAnd, RedOr, RedXor,
    // Warp-collective instructions (emu_mma.h): all 32 lanes, one computation.
    Mma, MmaTf32, Ldmatrix
};

// Whether an operation is a warp-collective instruction (see Collective).
inline bool is_collective(Op op) { return op == Op::Mma || op == Op::MmaTf32 || op == Op::Ldmatrix; }

// A warp-collective instruction (mma.sync, ldmatrix.sync): each lane's warp-op
// input is the address of one of these.  When the last of the 32 lanes
// arrives, `run` is called once with every lane's `data` (indexed by lane) and
// the instruction's variant `arg`; all lanes are blocked meanwhile, so their
// operands (on their own stacks) stay put.  A non-empty return is a fault.
struct Collective {
    std::string (*run)(void* const* lanes, int arg);
    void* data;
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
        case Op::Mma: return "mma.sync.aligned.m16n8k16";
        case Op::MmaTf32: return "mma.sync.aligned.m16n8k8.tf32";
        case Op::Ldmatrix: return "ldmatrix.sync.aligned.m8n8";
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
        // Collective instructions must also agree on their variant (type, .num, .trans)
        // and be the same instruction (the same call site).
        if (o.st == St::Warp && (named || ((o.mask >> me.lane) & 1u)) &&
            (o.op != me.op || o.mask != me.mask ||
             (is_collective(me.op) && (o.arg != me.arg || !same_site(o.where, me.where))))) {
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
    if (is_collective(me.op)) {
        // .sync.aligned: the whole warp executes the one instruction.
        if (parts != 0xffffffffu) {
            fault_locked(&me, std::string(op_name(me.op)) + " at " + fmt_site(me.where) +
                                  " needs all 32 lanes of a warp; lanes present: " + hex(parts));
            return;
        }
        void* lanes[32];
        for (unsigned lane = 0; lane < 32; ++lane)
            lanes[lane] = reinterpret_cast<const Collective*>(static_cast<std::uintptr_t>(b.t[base + lane].in))->data;
        const std::string err = reinterpret_cast<const Collective*>(static_cast<std::uintptr_t>(me.in))->run(lanes, me.arg);
        if (!err.empty()) {
            fault_locked(&me, std::string(op_name(me.op)) + " at " + fmt_site(me.where) + ": " + err);
            return;
        }
    }
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
            case Op::Sync: case Op::Mma: case Op::MmaTf32: case Op::Ldmatrix: break;
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

}  // namespace liam_emu
