// emu_fibers.h -- the fiber engine: the threads of a block as fibers on one OS thread (default)
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
#pragma once

#ifndef LIAM_EMU_THREADS
namespace liam_emu {

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

}  // namespace liam_emu
#endif  // !LIAM_EMU_THREADS
