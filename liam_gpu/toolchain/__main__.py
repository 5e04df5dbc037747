"""``python -m liam_gpu.toolchain check``: compile-check every kernel family.

Prints one row per (family, entry, arch), then the full text of every
problem, and exits 1 if there is any problem (2 on a usage error).
"""
from __future__ import annotations

import argparse
import sys
import time

from liam_gpu.launch import families
from liam_gpu.toolchain.nvrtc_check import ARCHS, Problem, check_family, compile_family


def _fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


def run_check(names: list[str] | None, archs: list[str], sass: bool) -> int:
    """Check the chosen families; return the process exit status."""
    declared = families()
    if names:
        unknown = sorted(set(names) - set(declared))
        if unknown:
            print(f"unknown kernel family: {', '.join(unknown)} "
                  f"(declared: {', '.join(sorted(declared))})", file=sys.stderr)
            return 2
        chosen = [declared[n] for n in names]
    else:
        chosen = [declared[n] for n in sorted(declared)]
    if sass:
        from liam_gpu.toolchain.sass import CuobjdumpNotFound, find_tools

        try:
            find_tools()
        except CuobjdumpNotFound as exc:
            print(f"{exc}\n(use --no-sass to check without SASS)", file=sys.stderr)
            return 2

    header = ("family", "entry", "arch", "regs", "smem", "spill st/ld", "stack", "status")
    rows: list[tuple[str, ...]] = []
    problems: list[Problem] = []
    start = time.perf_counter()
    for fam in chosen:
        for arch in archs:
            result = compile_family(fam, arch)
            found = check_family(fam, arch, sass=sass, result=result)
            problems += found
            for name in fam.name_expressions:
                info = result.entries.get(name)
                kinds = sorted({p.kind for p in found if p.entry in (name, None)})
                spill = "-" if info is None or info.spill_store_bytes is None else \
                    f"{info.spill_store_bytes}/{info.spill_load_bytes}"
                rows.append((fam.name, name, arch,
                             _fmt(info and info.registers), _fmt(info and info.shared_bytes), spill,
                             _fmt(info and info.stack_frame_bytes),
                             "ok" if not kinds else "FAIL: " + ",".join(kinds)))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\n{len(rows)} checks in {time.perf_counter() - start:.1f} s, {len(problems)} problem(s)")
    for p in problems:
        print(f"\n[{p.kind}] {p.message}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m liam_gpu.toolchain",
                                     description="Tier-1 kernel verification (no GPU needed).")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compile every kernel family with NVRTC and check it")
    check.add_argument("--family", action="append", metavar="NAME",
                       help="only this family (repeatable); default: all registered")
    check.add_argument("--arch", nargs="+", action="extend", metavar="ARCH",
                       help=f"architectures (default: {' '.join(ARCHS)})")
    check.add_argument("--no-sass", action="store_true",
                       help="skip the SASS checks (no cuobjdump needed)")
    args = parser.parse_args(argv)
    return run_check(args.family, args.arch or list(ARCHS), sass=not args.no_sass)


if __name__ == "__main__":
    sys.exit(main())
