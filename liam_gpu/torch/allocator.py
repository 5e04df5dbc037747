"""One CUDA memory pool for torch and CuPy: :func:`use_torch_allocator`."""
from __future__ import annotations

import torch

__all__ = ["use_torch_allocator"]


def use_torch_allocator() -> None:
    """Make CuPy allocate device memory from torch's CUDA caching allocator.

    By default results computed on the GPU come from CuPy's memory pool and go
    back to it when the tensor that aliases them dies, so the two libraries
    each cache memory the other cannot reuse.  After this call there is one
    pool (torch's): ``torch.cuda.memory_allocated()`` counts our results and
    ``torch.cuda.empty_cache()`` releases them.  Allocations are made on CuPy's
    current stream, which inside a liam-gpu call is the caller's torch stream.
    Process-wide; affects every CuPy allocation from then on.
    """
    import cupy

    def malloc(size: int, device_id: int) -> int:
        return torch.cuda.caching_allocator_alloc(size, device_id, cupy.cuda.get_current_stream().ptr)

    def free(ptr: int, device_id: int) -> None:
        torch.cuda.caching_allocator_delete(ptr)

    cupy.cuda.set_allocator(cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc)
