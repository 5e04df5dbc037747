"""The launch layer: one small Python wrapper per kernel family.

Each wrapper (``liam_gpu/launch/<family>.py``) declares its
:class:`~liam_gpu.launch.family.KernelFamily` as ``FAMILY``, checks what its
kernel needs (storage dtype, buffer extents, contiguity, alignment, overlap:
shape semantics are the public edge's), converts sizes to 64-bit C types,
picks grid and block, and launches through a
:class:`~liam_gpu.launch.runtime.Runtime`: CuPy on a GPU or the CPU emulator.
Only this package knows kernel names.  :func:`families` is the list of every
family, written out here rather than collected from imports.
"""
from __future__ import annotations

from . import batched_svd, gram, sketch, transform
from .family import KernelFamily

#: Every kernel family, in the order of ``kernels/``' files.
FAMILIES: tuple[KernelFamily, ...] = (batched_svd.FAMILY, gram.FAMILY, sketch.FAMILY, transform.FAMILY)


def families() -> dict[str, KernelFamily]:
    """Every kernel family by name (a new dict each call)."""
    return {family.name: family for family in FAMILIES}
