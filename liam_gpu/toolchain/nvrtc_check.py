"""Tier-1 kernel verification: compile with NVRTC and read the ptxas report.

No GPU is needed: NVRTC (``cuda-bindings`` + ``nvidia-cuda-nvrtc``) compiles
CUDA C++ to PTX or to a cubin for a named architecture on any machine.  For a
cubin we ask ptxas for its verbose report (``--ptxas-options=-v``) and turn it
into per-entry numbers (registers, spills, stack frame, static shared memory),
which :func:`check_family` compares with the family's :class:`KernelBudget`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from liam_gpu.launch.family import BASE_OPTIONS, KernelBudget
from liam_gpu.toolchain.results import CompileResult, EntryInfo, Output, Problem

if TYPE_CHECKING:
    from liam_gpu.launch.family import KernelFamily

#: Architectures compiled to a cubin (ptxas runs, its report is checked).
CUBIN_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
#: Virtual architectures compiled to PTX only (front end errors/warnings).
PTX_ARCHS: tuple[str, ...] = ("compute_90",)
#: Every architecture the check covers by default.
ARCHS: tuple[str, ...] = CUBIN_ARCHS + PTX_ARCHS

#: ptxas flags added for every cubin: the verbose report, plus explicit
#: warnings for spills and local memory so they also fail the warning rule.
PTXAS_OPTIONS: tuple[str, ...] = (
    "--ptxas-options=-v",
    "--ptxas-options=--warn-on-spills",
    "--ptxas-options=--warn-on-local-memory-usage",
)

class NvrtcUnavailable(RuntimeError):
    """``cuda-bindings`` / ``nvidia-cuda-nvrtc`` cannot be imported or loaded."""


# --------------------------------------------------------------------------- compile


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise NvrtcUnavailable(
            "the NVRTC compile check needs 'cuda-bindings' and 'nvidia-cuda-nvrtc' "
            "(pip install 'cuda-bindings==13.0.*' 'nvidia-cuda-nvrtc==13.0.*')"
        ) from exc
    return nvrtc


def _ok(nvrtc, ret) -> tuple[bool, tuple]:
    """Split a cuda-bindings return tuple into (success, values)."""
    return ret[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS, tuple(ret[1:])


def _read_log(nvrtc, prog) -> str:
    ok, (size,) = _ok(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog))
    if not ok or size <= 1:
        return ""
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\0").decode(errors="replace").strip()


def _read_output(nvrtc, prog, output: Output) -> bytes:
    if output == "cubin":
        get_size, get = nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN
    else:
        get_size, get = nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX
    ok, (size,) = _ok(nvrtc, get_size(prog))
    if not ok or size == 0:
        return b""
    buf = b" " * size
    get(prog, buf)
    # PTX comes NUL-terminated; a cubin is binary and kept as is.
    return buf.rstrip(b"\0") if output == "ptx" else buf


def compile_entry_points(
    source: str,
    name_expressions: Iterable[str],
    *,
    arch: str,
    options: Iterable[str] = (),
    output: Output | None = None,
    program_name: str = "kernel.cu",
) -> CompileResult:
    """Compile ``source`` with NVRTC and report on each entry point.

    Parameters
    ----------
    source
        CUDA C++ source text.
    name_expressions
        Entry points to instantiate and look up, e.g. ``"k<float, 64>"``.
    arch
        ``"sm_XX"`` (real architecture) or ``"compute_XX"`` (virtual, PTX only).
    options
        Extra NVRTC options (``-std``, ``--include-path=...``, ...).
    output
        ``"cubin"`` (default for ``sm_XX``) or ``"ptx"`` (default and only
        choice for ``compute_XX``).
    program_name
        File name NVRTC uses in its messages.

    Returns
    -------
    CompileResult
        ``success`` is false on any NVRTC failure; ``log`` holds the full
        NVRTC and ptxas output either way.
    """
    nvrtc = _nvrtc()
    names = tuple(name_expressions)
    if output is None:
        output = "ptx" if arch.startswith("compute_") else "cubin"
    if output == "cubin" and not arch.startswith("sm_"):
        raise ValueError(f"a cubin needs a real architecture (sm_XX), not {arch!r}")
    opts = tuple(options) + (f"--gpu-architecture={arch}",)
    if arch.startswith("sm_"):
        opts += PTXAS_OPTIONS

    ok, (prog,) = _ok(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), program_name.encode(), 0, [], []))
    if not ok:
        return CompileResult(arch, output, opts, False, "nvrtcCreateProgram failed")
    try:
        for name in names:
            nvrtc.nvrtcAddNameExpression(prog, name.encode())
        encoded = [o.encode() for o in opts]
        ret = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        success, _ = _ok(nvrtc, ret)
        log = _read_log(nvrtc, prog)
        if not success:
            detail = nvrtc.nvrtcGetErrorString(ret[0])[1].decode()
            return CompileResult(arch, output, opts, False, log or detail)
        lowered: dict[str, str | None] = {}
        for name in names:
            got, vals = _ok(nvrtc, nvrtc.nvrtcGetLoweredName(prog, name.encode()))
            lowered[name] = vals[0].decode() if got and vals[0] else None
        binary = _read_output(nvrtc, prog, output)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)

    report = parse_ptxas_report(log) if arch.startswith("sm_") else {}
    entries = {}
    for name, low in lowered.items():
        info = report.get(low or "", {})
        entries[name] = EntryInfo(name, low, **info)
    return CompileResult(arch, output, opts, True, log, entries, binary)


# --------------------------------------------------------------------------- ptxas report

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_report(log: str) -> dict[str, dict[str, int]]:
    """Per-function numbers from a ``ptxas -v`` report, keyed by mangled name.

    Keys of each dict are :class:`EntryInfo` field names.  Functions that are
    not entries (non-inlined callees) appear with only their stack/spill data.
    """
    out: dict[str, dict[str, int]] = {}
    entry: str | None = None  # the entry whose "Used N registers" comes next
    props: str | None = None  # the function the next "." line describes
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry = m.group(1)
            out.setdefault(entry, {})
        elif m := _PROPS.search(line):
            props = m.group(1)
        elif (m := _FRAME.search(line)) and props is not None:
            d = out.setdefault(props, {})
            d["stack_frame_bytes"], d["spill_store_bytes"], d["spill_load_bytes"] = map(int, m.groups())
            props = None
        elif (m := _REGS.search(line)) and entry is not None:
            d = out[entry]
            d["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            d["shared_bytes"] = int(s.group(1)) if s else 0
    return out


# --------------------------------------------------------------------------- checks


def _where(family: str, entry: str | None, names: Iterable[str], arch: str) -> str:
    names = (entry,) if entry is not None else tuple(names)
    label = "kernel" if len(names) == 1 else "kernels"
    return f"family {family!r}, {label} {', '.join(repr(n) for n in names)}, arch {arch}"


def check_result(
    family: str,
    result: CompileResult,
    names: Iterable[str],
    budget: KernelBudget | Mapping[str, KernelBudget] = KernelBudget(),
) -> list[Problem]:
    """Apply the compile rules to an existing :class:`CompileResult`.

    Rules: any NVRTC error or warning fails (message carries the full log);
    spills or a non-zero stack frame fail; registers or static shared memory
    above the budget fail.
    """
    names = tuple(names)
    arch = result.arch
    problems: list[Problem] = []
    if not result.success:
        problems.append(Problem(family, None, arch, "error",
                                f"{_where(family, None, names, arch)}: NVRTC compile failed:\n{result.log}"))
        return problems
    if result.warnings:
        problems.append(Problem(family, None, arch, "warning",
                                f"{_where(family, None, names, arch)}: the compile log has warnings "
                                f"(warnings are errors here):\n{result.log}"))
    for name in names:
        info = result.entries.get(name)
        where = _where(family, name, names, arch)
        if info is None or info.lowered_name is None:
            problems.append(Problem(family, name, arch, "error",
                                    f"{where}: NVRTC has no lowered name for it (not a valid name expression?)"))
            continue
        if result.output != "cubin" or info.registers is None:
            continue  # PTX only: ptxas did not run
        b = budget.get(name, KernelBudget()) if isinstance(budget, Mapping) else budget
        if info.spills:
            problems.append(Problem(family, name, arch, "spill",
                                    f"{where}: registers spill to local memory "
                                    f"({info.spill_store_bytes} bytes spill stores, "
                                    f"{info.spill_load_bytes} bytes spill loads; "
                                    f"{info.registers} registers used)"))
        elif info.stack_frame_bytes:
            problems.append(Problem(family, name, arch, "stack",
                                    f"{where}: uses a {info.stack_frame_bytes}-byte stack frame "
                                    f"(local memory: a dynamically indexed local array, a call or printf)"))
        if info.registers > b.max_registers:
            problems.append(Problem(family, name, arch, "registers",
                                    f"{where}: uses {info.registers} registers, over its budget "
                                    f"of {b.max_registers}"))
        if (info.shared_bytes or 0) > b.max_shared_bytes:
            problems.append(Problem(family, name, arch, "smem",
                                    f"{where}: uses {info.shared_bytes} bytes of static shared memory, "
                                    f"over its budget of {b.max_shared_bytes}"))
    return problems


def check_source(
    family: str,
    source: str,
    name_expressions: Iterable[str],
    *,
    arch: str,
    budget: KernelBudget | Mapping[str, KernelBudget] = KernelBudget(),
    options: Iterable[str] = BASE_OPTIONS,
    sass: bool = False,
    result: CompileResult | None = None,
) -> list[Problem]:
    """Compile one source for one arch and return every problem found.

    Parameters
    ----------
    family
        Name used in messages.
    source, name_expressions, arch, options
        As for :func:`compile_entry_points`.
    budget
        One budget for every entry, or a mapping from name expression to budget
        (missing entries get the default :class:`KernelBudget`).
    sass
        Also run the SASS checks (:func:`liam_gpu.toolchain.sass.check_sass`)
        on cubin archs; needs ``nvidia-cuda-cuobjdump``.
    result
        A compile of the same source to reuse instead of compiling again.
    """
    names = tuple(name_expressions)
    if result is None:
        result = compile_entry_points(source, names, arch=arch, options=options)
    problems = check_result(family, result, names, budget)
    if sass and result.success and result.output == "cubin":
        from liam_gpu.toolchain.sass import check_sass  # only cubin checks need it

        problems += check_sass(family, result, budget)
    return problems


def compile_family(family: KernelFamily, arch: str) -> CompileResult:
    """Compile every entry point of a registered family for ``arch``.

    Memoized by the family's fingerprint (source, headers, entry points) and
    the architecture: one compile serves every check in a process.
    """
    from liam_gpu.launch.family import compile_options

    key = (family.name, family.fingerprint(), arch)
    if key not in _FAMILY_CACHE:
        _FAMILY_CACHE[key] = compile_entry_points(
            family.code(), family.name_expressions, arch=arch,
            options=compile_options(), program_name=family.source,
        )
    return _FAMILY_CACHE[key]


_FAMILY_CACHE: dict[tuple[str, str, str], CompileResult] = {}


def check_family(
    family: KernelFamily,
    arch: str,
    *,
    sass: bool = False,
    result: CompileResult | None = None,
) -> list[Problem]:
    """Every problem of one family on one architecture.

    Parameters
    ----------
    family
        A registered :class:`~liam_gpu.launch.family.KernelFamily`.
    arch
        One of :data:`ARCHS` (or any arch NVRTC accepts).
    sass
        Also check SASS (cubin archs; needs ``nvidia-cuda-cuobjdump``).
    result
        A :func:`compile_family` result to reuse.

    Returns
    -------
    list[Problem]
        Empty when the family may ship on ``arch``.
    """
    if result is None:
        result = compile_family(family, arch)
    budgets = {name: family.budget(name) for name in family.name_expressions}
    return check_source(family.name, "", family.name_expressions, arch=arch,
                        budget=budgets, sass=sass, result=result)
