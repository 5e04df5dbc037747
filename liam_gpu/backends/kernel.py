"""The kernel backends: our CUDA kernels, run by CuPy on a GPU or by the CPU emulator.

``cuda`` and ``emulator`` differ only in the :class:`~liam_gpu.launch.runtime.Runtime`
that executes a launch; everything here is shared, so CI (emulator) tests the
same code path that runs on a GPU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..launch import batched_svd as batched_svd_launch
from ..launch import gram as gram_launch
from ..launch import sketch as sketch_launch
from ..launch import transform as transform_launch
from ..launch.runtime import Runtime, cuda_runtime, emulator_runtime
from .. import bfloat16
from ..arrays import is_cupy as _is_cupy
from .base import Backend, upper_inverse


class KernelBackend(Backend):
    """Primitives implemented by launching ``kernels/*.cu`` through a runtime."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.kind = runtime.kind
        self.runtime = runtime
        self.xp = runtime.xp

    def asarray(self, x: Any) -> Any:
        # CuPy arrays refuse implicit conversion (np.asarray raises): copy them explicitly.
        return self.xp.asarray(x.get() if _is_cupy(x) and self.xp is np else x)

    def to_host(self, x: Any) -> np.ndarray:
        return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)

    def linear(self, x, w, bias, activation, out, *, storage=None, tf32=False):
        xb, wb, bb, ob, storage = _kernel_storage(x, w, bias, out, storage)
        transform_launch.linear(self.runtime, xb, wb, bb, activation, ob, storage=storage, tf32=tf32)
        return out

    def batched_linear(self, x, w, bias, activation, out, *, storage=None, tf32=False):
        xb, wb, bb, ob, storage = _kernel_storage(x, w, bias, out, storage)
        transform_launch.batched_linear(self.runtime, xb, wb, bb, activation, ob, storage=storage, tf32=tf32)
        return out

    # -- randomized SVD ----------------------------------------------------------
    # Our kernels do the sketch (Omega never stored), the Gram reductions, the
    # triangular apply and the batched SVD.  The big skinny products go to
    # cuBLAS through the array module's matmul: on the emulator numpy stands in
    # for cuBLAS, so CI checks our kernels and the algorithm, not cuBLAS.
    def sketch(self, a, seed, l, *, trans=False, col0=0):
        rows = a.shape[1] if trans else a.shape[0]
        out = self.empty((rows, int(l)), a.dtype)
        return sketch_launch.sketch(self.runtime, a, seed, l, out, trans=trans, col0=col0)

    def omega(self, seed, rows, cols, dtype, *, col0=0):
        """``Omega[:rows, col0:col0 + cols]`` stored in backend memory, made by our generator kernel.

        For operators whose products are not our sketch kernel (sparse input:
        the library's SpMM), so Omega is generated where the backend computes.
        """
        return sketch_launch.omega(self.runtime, seed, rows, cols, dtype, col0=col0)

    def matmul(self, a, b, *, trans=False, tf32=False):
        op = a.T if trans else a
        if tf32 and a.dtype == np.float32 and b.dtype == np.float32 and transform_launch.has_tensor_cores(
                self.runtime):
            return self._tf32_matmul(op, b)
        return self.xp.ascontiguousarray(self.xp.matmul(op, b))

    def _tf32_matmul(self, op, b):
        """``op @ b`` allowed TF32: on the emulator, numpy's float32 product of the tf32-rounded operands.

        The emulator has no cuBLAS: it models cuBLAS's TF32 GEMM as our
        kernels compute it (each operand rounded once by cvt.rna, float32
        accumulation), so the accuracy effect of TF32 on the engine is
        measured in CI.  :class:`CudaBackend` asks cuBLAS itself.
        """
        return np.ascontiguousarray(np.matmul(tf32_round(op), tf32_round(b)))

    def gram(self, y, *, accumulate=np.float64):
        g = gram_launch.gram(self.runtime, self.xp.ascontiguousarray(y), accumulate=accumulate)
        return self.to_host(g).astype(np.float64, copy=False)

    def tri_apply(self, y, r, *, accumulate=np.float64, rinv=None):
        y = self.xp.ascontiguousarray(y)
        rinv = self.asarray((upper_inverse(r) if rinv is None else rinv).astype(accumulate, copy=False))
        out = self.empty(tuple(y.shape), y.dtype)
        return gram_launch.tri_apply(self.runtime, y, rinv, out)

    def householder_qr(self, y):
        q, r = self.xp.linalg.qr(y)
        return self.xp.ascontiguousarray(q), self.to_host(r).astype(np.float64)

    def sum_squares(self, a):
        return gram_launch.sum_squares(self.runtime, self.xp.ascontiguousarray(a))

    def batched_svd_fits(self, m, n, dtype):
        return batched_svd_launch.fits(self.runtime, m, n, dtype)

    def batched_svd(self, a):
        return batched_svd_launch.batched_svd(self.runtime, self.xp.ascontiguousarray(a))


def tf32_round(a: np.ndarray) -> np.ndarray:
    """A float32 array's values rounded to tf32 as ``cvt.rna.tf32.f32`` does (a new array).

    Ten mantissa bits, to nearest with ties away from zero; NaN stays NaN.
    """
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    out = ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isnan(a), a, out)


def _kernel_storage(x: Any, w: Any, bias: Any, out: Any, storage: str | None) -> tuple:
    """The arrays as the launch layer takes them: bfloat16 arrays as ``uint16`` views of their bits.

    The kernels read bfloat16 as ``lg_bf16`` bits, and the launch layer knows
    bfloat16 only as ``uint16`` carriers with ``storage="bfloat16"``.  The views
    share memory (numpy's and CuPy's ``view`` alike), so the kernel writes the
    bfloat16 ``out`` itself.
    """
    if storage is None and bfloat16.is_bfloat16(out.dtype):
        x, w, out = bfloat16.as_bits(x), bfloat16.as_bits(w), bfloat16.as_bits(out)
        bias = None if bias is None else bfloat16.as_bits(bias)
        storage = "bfloat16"
    return x, w, bias, out, storage


class CudaBackend(KernelBackend):
    """One CUDA device through CuPy; arrays are allocated on that device."""

    def __init__(self, device_id: int) -> None:
        super().__init__(f"cuda:{device_id}", cuda_runtime(device_id))
        self.device_id = device_id

    def activate(self):
        return self.xp.cuda.Device(self.device_id)

    def holds(self, a: Any) -> bool:
        return super().holds(a) and a.device.id == self.device_id

    def asarray(self, x: Any) -> Any:
        with self.xp.cuda.Device(self.device_id):
            return self.xp.asarray(x)

    def empty(self, shape, dtype):
        with self.xp.cuda.Device(self.device_id):
            return self.xp.empty(shape, dtype=dtype)

    def _tf32_matmul(self, op, b):
        """``op @ b`` by cuBLAS with its handle's math mode ``CUBLAS_TF32_TENSOR_OP_MATH`` (restored after).

        What torch's ``allow_tf32`` does: the mode lets cuBLAS run single
        precision GEMMs on TF32 tensor cores.  The handle is CuPy's for this
        thread and device, the one its ``matmul`` uses.
        """
        xp = self.xp
        cublas = xp.cuda.cublas
        with xp.cuda.Device(self.device_id):
            handle = xp.cuda.get_cublas_handle()
            mode = cublas.getMathMode(handle)
            cublas.setMathMode(handle, cublas.CUBLAS_TF32_TENSOR_OP_MATH)
            try:
                return xp.ascontiguousarray(xp.matmul(op, b))
            finally:
                cublas.setMathMode(handle, mode)


class EmulatorBackend(KernelBackend):
    """The CUDA kernels executed on the CPU emulator; numpy arrays stand in for device memory."""

    def __init__(self) -> None:
        super().__init__("emulator", emulator_runtime())
