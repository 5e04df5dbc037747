"""What a kernel compile gives back: per-entry ptxas numbers, the compile, its problems.

The data shared by the NVRTC check (:mod:`~liam_gpu.toolchain.nvrtc_check`,
which makes it) and the SASS check (:mod:`~liam_gpu.toolchain.sass`, which
reads a compile and reports problems), so that the SASS check does not import
the NVRTC check that calls it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Output = Literal["cubin", "ptx"]


@dataclass(frozen=True)
class EntryInfo:
    """What ptxas reported for one ``__global__`` entry point.

    The numeric fields are ``None`` for PTX output (ptxas did not run).
    """

    name_expression: str
    lowered_name: str | None
    registers: int | None = None
    shared_bytes: int | None = None
    stack_frame_bytes: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None

    @property
    def spills(self) -> bool:
        """Whether ptxas spilled registers to local memory."""
        return bool(self.spill_store_bytes or self.spill_load_bytes)


@dataclass
class CompileResult:
    """The outcome of one NVRTC compile of one source for one architecture."""

    arch: str
    output: Output
    options: tuple[str, ...]
    success: bool
    log: str
    entries: dict[str, EntryInfo] = field(default_factory=dict)
    binary: bytes = b""

    @property
    def warnings(self) -> list[str]:
        """Log lines that are warnings (NVRTC front end or ptxas)."""
        return [line for line in self.log.splitlines() if is_warning_line(line)]


@dataclass(frozen=True)
class Problem:
    """One reason a kernel must not ship.

    ``entry`` is ``None`` when the problem concerns the whole compile (an
    error or a warning NVRTC does not tie to one entry point).
    """

    family: str
    entry: str | None
    arch: str
    kind: str  # error | warning | spill | stack | registers | smem | sass
    message: str

    def __str__(self) -> str:
        return self.message


_WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)


def is_warning_line(line: str) -> bool:
    """Whether a compile log line is a warning (NVRTC front end or ptxas)."""
    # "ptxas info" lines carry kernel names, which must not trip the rule.
    stripped = line.lstrip()
    if stripped.startswith("ptxas info") or stripped.startswith("ptxas         ."):
        return False
    return bool(_WARNING.search(line))
