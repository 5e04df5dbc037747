"""CUDA emulator: the same ``.cu`` source run on the CPU (tier 2 of kernel verification).

The kernel source is compiled by g++ as C++20 together with ``cuda_emu.h`` and
loaded with ctypes; :class:`EmulatorModule` and :class:`EmulatorKernel` mirror
``cupy.RawModule`` / ``cupy.RawKernel``, so the launch layer drives the GPU and
the emulator with the same calls::

    mod = EmulatorModule(code, name_expressions=["gemm<float, 64>"])
    mod.get_function("gemm<float, 64>")((gx, gy), (16, 16), (a, b, c, np.int32(n)))

Environment: ``LIAM_GPU_EMU_CACHE`` (build cache folder), ``LIAM_GPU_EMU_SANITIZE``
(default sanitize mode), ``LIAM_GPU_EMU_STACK_KIB`` (fiber stack size, default
64), ``LIAM_GPU_EMU_TIMEOUT`` (seconds a sanitized launch may take, default 600),
``LIAM_GPU_EMU_CXX`` (compiler, default ``g++``).  See docs/emulator.md.
"""
from .build import EmulatorError, sanitizer_available
from .module import EmulatorKernel, EmulatorModule, KernelFault

__all__ = ["EmulatorModule", "EmulatorKernel", "EmulatorError", "KernelFault", "sanitizer_available"]
