"""SASS checks: disassemble a cubin with ``cuobjdump -sass`` and inspect it.

The ptxas report says how many registers a kernel uses, but not *which*
instructions it runs.  Some kernels are only fast with 128-bit loads
(``LDG.E.128``) or on tensor cores (``HMMA`` fed by ``LDSM``, see
:func:`hmma_loop`), and none may touch local memory (``LDL``/``STL``).  Those
facts live in the SASS, which ``cuobjdump`` (pip ``nvidia-cuda-cuobjdump``,
which calls ``nvdisasm`` from ``nvidia-cuda-nvdisasm``) prints without a GPU.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from liam_gpu.launch.family import KernelBudget
from liam_gpu.toolchain.results import CompileResult, Problem

#: Local memory loads/stores: always forbidden (spills or local arrays).
LOCAL_MEMORY: tuple[str, ...] = ("LDL", "STL")


class CuobjdumpNotFound(RuntimeError):
    """``cuobjdump`` (or the ``nvdisasm`` it runs) is not installed."""


def _packaged_tool(dist_name: str, tool: str) -> Path | None:
    """The executable ``tool`` shipped inside the pip distribution ``dist_name``."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name in (tool, tool + ".exe"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    return None


@functools.lru_cache(maxsize=1)
def find_tools() -> tuple[Path, Path]:
    """Locate ``cuobjdump`` and ``nvdisasm``.

    The pip packages ``nvidia-cuda-cuobjdump`` / ``nvidia-cuda-nvdisasm`` are
    searched first (through their installed file lists), then ``PATH``.

    Raises
    ------
    CuobjdumpNotFound
        When either tool is missing.
    """
    found = []
    for dist, tool in (("nvidia-cuda-cuobjdump", "cuobjdump"), ("nvidia-cuda-nvdisasm", "nvdisasm")):
        path = _packaged_tool(dist, tool) or (Path(p) if (p := shutil.which(tool)) else None)
        if path is None:
            raise CuobjdumpNotFound(
                f"{dist} not installed: the SASS check needs {tool} "
                f"(pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"
            )
        found.append(path)
    return found[0], found[1]


def have_cuobjdump() -> bool:
    """Whether :func:`find_tools` succeeds."""
    try:
        find_tools()
    except CuobjdumpNotFound:
        return False
    return True


_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s*(.*?)\s*;")


@functools.lru_cache(maxsize=64)
def dump_sass(cubin: bytes) -> str:
    """The text of ``cuobjdump -sass`` for a cubin (memoized: one run per cubin)."""
    cuobjdump, nvdisasm = find_tools()
    env = dict(os.environ)
    # cuobjdump runs nvdisasm, looked up via NVDISASM_PATH (a folder) or PATH.
    env["NVDISASM_PATH"] = str(nvdisasm.parent)
    env["PATH"] = f"{nvdisasm.parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([str(cuobjdump), "-sass", str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def split_functions(sass_text: str) -> dict[str, list[str]]:
    """Instructions per function (mangled name), without addresses or encodings."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in sass_text.splitlines():
        if m := _FUNCTION.match(line):
            current = out.setdefault(m.group(1), [])
        elif current is not None and (m := _INSTRUCTION.match(line)):
            current.append(m.group(1))
    for instructions in out.values():
        while instructions and instructions[-1] == "NOP":  # alignment padding after the end
            instructions.pop()
    return out


def mnemonic(instruction: str) -> str:
    """The opcode with its modifiers, e.g. ``"@!P0 LDG.E.128 R4, [R2.64]"`` → ``"LDG.E.128"``."""
    parts = instruction.split()
    if parts and parts[0].startswith("@"):  # predicate guard
        parts = parts[1:]
    return parts[0] if parts else ""


def mnemonic_histogram(instructions: Iterable[str]) -> Counter[str]:
    """Count each full mnemonic (``FFMA``, ``LDG.E.128``...) in a function."""
    return Counter(mnemonic(i) for i in instructions)


def matches(pattern: str, mnem: str) -> bool:
    """Whether a mnemonic satisfies a pattern from a budget.

    Same opcode, and every modifier of the pattern present in any order:
    ``"LDG.E.128"`` matches ``LDG.E.128`` and ``LDG.E.128.CONSTANT``;
    ``"LDL"`` matches ``LDL.LU`` and ``LDL.64``.
    """
    p_op, *p_mods = pattern.split(".")
    m_op, *m_mods = mnem.split(".")
    return p_op == m_op and set(p_mods) <= set(m_mods)


#: Bytes per SASS instruction from Volta on (sm_70+), so instruction i sits at 16 * i.
INSTRUCTION_BYTES = 16
_BRANCH_TARGET = re.compile(r"\bBRA\b.*?\b0x([0-9a-f]+)\b")
_FMA = ("FFMA", "DFMA")


def loops(instructions: list[str]) -> list[tuple[int, int]]:
    """``(first, last)`` instruction indices of every loop: a branch back to an earlier address."""
    found = []
    for last, instruction in enumerate(instructions):
        if (m := _BRANCH_TARGET.search(instruction)) is not None:
            first = int(m.group(1), 16) // INSTRUCTION_BYTES
            if first <= last:
                found.append((first, last))
    return found


def fma_loop(instructions: list[str], min_fma: int) -> list[str] | None:
    """The shortest loop body with at least ``min_fma`` FFMA/DFMA: a GEMM's k-loop (None if none).

    A tiled GEMM's innermost loop over k-tiles holds one k-tile's
    multiply-adds; its density (FMAs over all instructions) is what the
    arithmetic units see between shared-memory loads and bookkeeping.
    """
    best: list[str] | None = None
    for first, last in loops(instructions):
        body = instructions[first:last + 1]
        if sum(mnemonic(i) in _FMA for i in body) >= min_fma and (best is None or len(body) < len(best)):
            best = body
    return best


def count_opcode(instructions: Iterable[str], opcode: str) -> int:
    """How many instructions have the opcode ``opcode`` (any modifiers): ``"HMMA"`` counts ``HMMA.16816.F32``."""
    return sum(mnemonic(i).split(".")[0] == opcode for i in instructions)


def hmma_loop(instructions: list[str], min_hmma: int) -> list[str] | None:
    """The shortest loop body with at least ``min_hmma`` HMMA: a tensor-core GEMM's k-loop (None if none).

    The tensor-core analogue of :func:`fma_loop`: one k-tile of a warp's
    ``mma.sync`` instructions (``HMMA.16816.F32``, ``HMMA.16816.F32.BF16``),
    with the ``ldmatrix`` loads (``LDSM``) that feed them.
    """
    best: list[str] | None = None
    for first, last in loops(instructions):
        body = instructions[first:last + 1]
        if count_opcode(body, "HMMA") >= min_hmma and (best is None or len(body) < len(best)):
            best = body
    return best


def function_sass(result: CompileResult) -> dict[str, list[str]]:
    """SASS instructions per *name expression* of a successful cubin compile."""
    if not result.success or result.output != "cubin":
        raise ValueError("SASS needs a successful cubin compile")
    by_mangled = split_functions(dump_sass(result.binary))
    return {name: by_mangled[info.lowered_name]
            for name, info in result.entries.items()
            if info.lowered_name in by_mangled}


def check_sass(
    family: str,
    result: CompileResult,
    budget: KernelBudget | Mapping[str, KernelBudget] = KernelBudget(),
) -> list[Problem]:
    """Check ``sass_require`` / ``sass_forbid`` and the local-memory ban.

    Parameters
    ----------
    family
        Name used in messages.
    result
        A successful cubin :class:`CompileResult`.
    budget
        One budget for every entry, or one per name expression.
    """
    arch = result.arch
    sass = function_sass(result)
    problems: list[Problem] = []
    for name, info in result.entries.items():
        where = f"family {family!r}, kernel {name!r}, arch {arch}"
        if name not in sass:
            problems.append(Problem(family, name, arch, "sass",
                                    f"{where}: {info.lowered_name!r} not found in the cuobjdump SASS"))
            continue
        hist = mnemonic_histogram(sass[name])
        b = budget.get(name, KernelBudget()) if isinstance(budget, Mapping) else budget
        for pattern in LOCAL_MEMORY + tuple(b.sass_forbid):
            hits = {m: n for m, n in hist.items() if matches(pattern, m)}
            if hits:
                why = "local memory is forbidden" if pattern in LOCAL_MEMORY else "its budget forbids it"
                found = ", ".join(f"{m} x{n}" for m, n in sorted(hits.items()))
                problems.append(Problem(family, name, arch, "sass",
                                        f"{where}: SASS has {pattern} ({found}); {why}"))
        for pattern in b.sass_require:
            if not any(matches(pattern, m) for m in hist):
                op = pattern.split(".")[0]
                alike = sorted(m for m in hist if m.split(".")[0] == op) or ["none"]
                problems.append(Problem(family, name, arch, "sass",
                                        f"{where}: SASS lacks required {pattern} "
                                        f"({op} forms present: {', '.join(alike)})"))
    return problems
