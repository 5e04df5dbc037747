"""The launch layer: one small Python wrapper per kernel family.

Each wrapper (``liam_gpu/launch/<family>.py``) declares its
:class:`~liam_gpu.launch.family.KernelFamily`, checks arguments (dtype,
contiguity, shapes, alignment), converts sizes to 64-bit C types, picks grid
and block, and launches through a :class:`~liam_gpu.launch.runtime.Runtime`:
CuPy on a GPU or the CPU emulator.  Only this package knows kernel names.
"""
import importlib
import pkgutil

# Import every wrapper so that each registers its kernel family.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("family", "runtime"):
        importlib.import_module(f"{__name__}.{_info.name}")
