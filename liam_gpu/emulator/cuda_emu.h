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

// The parts, in dependency order (each is one seam of the emulator):
//   emu_builtins.h          CUDA keywords, vector types, built-in variables
//   emu_engine.h            block state, faults, barriers, warp operations
//   emu_fibers.h            the fiber engine (default)
//   emu_threads.h           the thread engine (LIAM_EMU_THREADS: sanitizer builds)
//   emu_launch.h            a launch over the grid; the typed entry points (entry ABI)
//   emu_sync.h              __syncthreads() and the warp intrinsics
//   emu_device_functions.h  atomics, loads, min/max, math, conversions, 16-bit types, assert
//   emu_mma.h               the tensor-core warp instructions (mma.sync m16n8k16, ldmatrix)
#include "emu_builtins.h"

// The engine's slow paths (fault messages, bookkeeping) are compiled at -O1:
// at -O2 their code generation took half of every module's build time, and
// the hot path is dominated by the context switch anyway.  (Kernel code
// outside this region keeps -O2.)
#pragma GCC push_options
#pragma GCC optimize("O1")
#include "emu_engine.h"
#include "emu_fibers.h"
#include "emu_threads.h"
#include "emu_launch.h"
#pragma GCC pop_options

#include "emu_sync.h"
#include "emu_device_functions.h"
#include "emu_mma.h"
