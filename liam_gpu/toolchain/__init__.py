"""Build-time kernel verification without a GPU (tier 1, see docs/verification.md).

:mod:`~liam_gpu.toolchain.nvrtc_check` compiles every kernel family with NVRTC
and checks the ptxas report; :mod:`~liam_gpu.toolchain.sass` checks the
disassembly.  ``python -m liam_gpu.toolchain check`` runs both.
"""
from liam_gpu.toolchain.nvrtc_check import (
    ARCHS,
    CUBIN_ARCHS,
    PTX_ARCHS,
    CompileResult,
    EntryInfo,
    Problem,
    check_family,
    check_source,
    compile_entry_points,
    compile_family,
)

__all__ = [
    "ARCHS",
    "CUBIN_ARCHS",
    "PTX_ARCHS",
    "CompileResult",
    "EntryInfo",
    "Problem",
    "check_family",
    "check_source",
    "compile_entry_points",
    "compile_family",
]
