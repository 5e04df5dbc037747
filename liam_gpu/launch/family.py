"""Kernel families: which ``.cu`` file, which template instantiations, which budgets.

A *family* is one ``kernels/*.cu`` file holding one algorithm (one templated
``__device__`` body and thin typed ``__global__`` entry points).  Each family's
Python launch wrapper declares its :class:`KernelFamily` as ``FAMILY``, and
:func:`liam_gpu.launch.families` lists them by name, so that the loaders (CuPy
on a GPU, the emulator on the CPU) and the NVRTC compile check
(``liam_gpu.toolchain``) all see the same list of entry points.  Nothing
registers itself on import.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

#: Compile options shared by every loader (CuPy, the NVRTC check, the emulator).
#: The include path is added per call by :func:`compile_options`.
BASE_OPTIONS: tuple[str, ...] = ("-std=c++17",)


@dataclass(frozen=True)
class KernelBudget:
    """Resource budget of one entry point, checked against the ptxas report.

    Parameters
    ----------
    max_registers
        Registers per thread that ptxas may use (``Used N registers``).
    max_shared_bytes
        Static shared memory per block (``N bytes smem``).
    sass_require
        SASS mnemonics that must appear (e.g. ``"LDG.E.128"`` for a kernel whose
        speed depends on 128-bit loads).
    sass_forbid
        SASS mnemonics that must not appear.  Local memory (``LDL``/``STL``) is
        always forbidden; spills are always an error.
    """

    max_registers: int = 255
    max_shared_bytes: int = 48 * 1024
    sass_require: tuple[str, ...] = ()
    sass_forbid: tuple[str, ...] = ()


@dataclass(frozen=True)
class KernelFamily:
    """One ``.cu`` file and the entry points instantiated from it.

    Parameters
    ----------
    name
        Short name, e.g. ``"transform"``.
    source
        File name inside the kernel folder, e.g. ``"transform.cu"``.
    name_expressions
        Every ``__global__`` entry point as a C++ name expression
        (``"transform_kernel<float, 64, 64>"``), or a plain name for
        ``extern "C"`` kernels.
    budgets
        Budget per name expression; missing ones get :attr:`default_budget`.
    module_groups
        Group name per name expression (missing ones: ``""``).  A GPU loader
        compiles one module per group, when its first entry point is asked
        for, so a call pays NVRTC only for the instantiations it may use
        (e.g. one storage dtype of the transform family).
    """

    name: str
    source: str
    name_expressions: tuple[str, ...]
    budgets: dict[str, KernelBudget] = field(default_factory=dict)
    default_budget: KernelBudget = KernelBudget()
    module_groups: dict[str, str] = field(default_factory=dict)

    def code(self) -> str:
        """The family's CUDA C++ source text."""
        return read_kernel_source(self.source)

    def budget(self, name_expression: str) -> KernelBudget:
        """The budget that applies to one entry point."""
        return self.budgets.get(name_expression, self.default_budget)

    def group(self, name_expression: str) -> str:
        """The module group of one entry point (see ``module_groups``)."""
        return self.module_groups.get(name_expression, "")

    def group_members(self, group: str) -> tuple[str, ...]:
        """The entry points of one module group, in declaration order."""
        return tuple(n for n in self.name_expressions if self.group(n) == group)

    def fingerprint(self) -> str:
        """A hash of the source and every header it may include (for build caches)."""
        h = hashlib.sha256(self.code().encode())
        for header in sorted(kernel_dir().glob("*.cuh")):
            h.update(header.read_bytes())
        h.update("\0".join(self.name_expressions).encode())
        return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def kernel_dir() -> Path:
    """The folder holding ``*.cu`` / ``*.cuh``.

    An installed wheel carries them as the package data ``liam_gpu/kernels``;
    a source checkout has them in the top-level ``kernels/`` folder.
    """
    package = Path(__file__).resolve().parents[1]
    packaged = package / "kernels"
    if any(packaged.glob("*.cu")):
        return packaged
    checkout = package.parent / "kernels"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        "liam_gpu cannot find its CUDA kernel sources: neither the package data "
        "'liam_gpu/kernels' nor a checkout's 'kernels/' folder exists"
    )


def read_kernel_source(file_name: str) -> str:
    """Read one kernel file from :func:`kernel_dir`."""
    return (kernel_dir() / file_name).read_text()


def compile_options(*extra: str) -> tuple[str, ...]:
    """Options for NVRTC (through CuPy or cuda-bindings) and for the emulator."""
    return BASE_OPTIONS + (f"--include-path={kernel_dir()}",) + tuple(extra)
