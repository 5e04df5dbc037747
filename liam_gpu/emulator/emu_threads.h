// emu_threads.h -- the thread engine: the threads of a block as OS threads (sanitizer builds)
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
#pragma once

#ifdef LIAM_EMU_THREADS
namespace liam_emu {

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

}  // namespace liam_emu
#endif  // LIAM_EMU_THREADS
