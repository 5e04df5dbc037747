// emu_launch.h -- a launch over the grid, and the typed entry points the generated code calls (the entry ABI)
//
// Part of cuda_emu.h (the umbrella header that the build force-includes);
// not meant to be included on its own.
#pragma once

namespace liam_emu {

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

}  // namespace liam_emu
