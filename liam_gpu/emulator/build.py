"""Turn CUDA C++ source into a CPU shared library for the emulator.

The kernel source is compiled as C++20 by g++ with ``cuda_emu.h`` force-included
(``-include``), so line numbers in compiler messages and sanitizer reports are
those of the original source.  Two things need more than the header's macros:

* ``extern __shared__ T name[];`` (dynamic shared memory) is rewritten into a
  pointer to the module's dynamic shared memory buffer (:func:`rewrite_source`);
* the launch entry points: for every name expression an ``extern "C"`` function
  is appended that takes the kernel's address, deduces its parameter types and
  unpacks a ``void**`` argument array (:func:`generate_entries`).

Builds are cached on disk (:func:`cache_dir`) under a hash of everything that
affects the result, and written atomically (temporary name, then rename) so
that concurrent processes never see half a library.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The emulation header, shipped as package data next to this file.  It is the
#: umbrella of the ``emu_*.h`` parts beside it (see its opening comment).
HEADER = Path(__file__).with_name("cuda_emu.h")


def header_bytes() -> bytes:
    """The umbrella header and every part it includes, for the build cache key."""
    return b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in sorted(HEADER.parent.glob("*.h")))

#: Bump when the generated code or the flags change in a way the hash misses.
BUILD_VERSION = "1"

#: Accepted values of ``sanitize``.
SANITIZE_MODES: tuple[str | None, ...] = (None, "address", "thread")

_BASE_FLAGS = (
    "-std=c++20",
    "-fPIC",
    "-shared",
    # Hidden visibility and no STB_GNU_UNIQUE: without them two loaded modules
    # share the header's inline globals (the block state) and crash.
    "-fvisibility=hidden",
    "-fno-gnu-unique",
    # nvcc contracts a*b+c into FMAs; do the same to stay close to the GPU.
    "-ffp-contract=fast",
    # CUDA code reinterprets freely (float4 loads from float arrays).
    "-fno-strict-aliasing",
    "-pthread",
)
_MODE_FLAGS: dict[str | None, tuple[str, ...]] = {
    None: ("-O2",),
    "address": (
        "-O1",
        "-g1",  # line tables are all a report needs; full -g costs 30% more build time
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-DLIAM_EMU_THREADS=1",
    ),
    "thread": ("-O1", "-g1", "-fsanitize=thread", "-DLIAM_EMU_THREADS=1"),
}
_RUNTIME = {"address": "libasan.so", "thread": "libtsan.so"}


class EmulatorError(RuntimeError):
    """The emulator could not build or run a module (compile error, missing tool).

    Attributes
    ----------
    log : str
        The compiler's output, when the error is a failed compile; else ``""``.
    """

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class BuildResult:
    """A compiled module.

    Attributes
    ----------
    library : Path
        The shared library.
    source : Path
        The C++ source that was compiled (rewritten kernel + entry points).
    key : str
        The cache key.
    cached : bool
        True when the library came from the cache.
    seconds : float
        Time spent in this call (compile or cache lookup).
    """

    library: Path
    source: Path
    key: str
    cached: bool
    seconds: float


@dataclass(frozen=True)
class ParsedOptions:
    """The NVRTC-style options that matter on the CPU (``-I``, ``-D``, ``-U``)."""

    include_dirs: tuple[str, ...]
    macro_flags: tuple[str, ...]  # "-DNAME", "-DNAME=VAL", "-UNAME" in order


def parse_options(options: Sequence[str]) -> ParsedOptions:
    """Keep include paths and macro definitions; ignore everything else.

    Accepted: ``--include-path=DIR``, ``-IDIR``, ``-I DIR``, ``-DNAME[=VAL]``,
    ``-D NAME[=VAL]``, ``--define-macro=NAME[=VAL]``, ``-UNAME``,
    ``--undefine-macro=NAME``.  GPU-only options (``-std=c++17``,
    ``--gpu-architecture=...``, ``-lineinfo``, ...) are ignored: the emulator
    always compiles C++20.

    Parameters
    ----------
    options
        The options as given to NVRTC / CuPy.

    Returns
    -------
    ParsedOptions
        Include directories made absolute (relative to the current directory,
        as NVRTC resolves them) and the macro flags for g++.
    """
    if isinstance(options, str):
        raise TypeError("options must be a sequence of strings, not a string")
    long_forms = {"-I": "--include-path", "-D": "--define-macro", "-U": "--undefine-macro"}
    found: list[tuple[str, str]] = []  # (flag, value) in command-line order: -D/-U order matters
    opts = list(options)
    i = 0
    while i < len(opts):
        opt = opts[i]
        if not isinstance(opt, str):
            raise TypeError(f"option {opt!r} is not a string")
        nxt = opts[i + 1] if i + 1 < len(opts) else None
        for flag, long_form in long_forms.items():
            if opt.startswith(long_form + "="):  # --define-macro=X
                found.append((flag, opt.split("=", 1)[1]))
            elif opt in (flag, long_form) and nxt is not None:  # -D X, --define-macro X
                found.append((flag, nxt))
                i += 1
            elif opt.startswith(flag) and len(opt) > 2:  # -DX
                found.append((flag, opt[2:]))
            else:
                continue
            break
        i += 1
    includes = tuple(str(Path(value).resolve()) for flag, value in found if flag == "-I")
    return ParsedOptions(includes, tuple(flag + value for flag, value in found if flag != "-I"))


# `extern __shared__ [attributes] T name[];` -- the type may carry __align__(n).
_EXTERN_SHARED = re.compile(
    r"\b(?:extern\s+__shared__|__shared__\s+extern)\s+(?P<type>[^;{}\[\]]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;"
)
_ATTRIBUTES = re.compile(r"__align__\s*\([^)]*\)|alignas\s*\([^)]*\)|__attribute__\s*\(\(.*?\)\)")


def rewrite_source(code: str) -> str:
    """Rewrite dynamic shared memory declarations for the CPU.

    ``extern __shared__ T name[];`` becomes ``T* const name =
    ::liam_emu::dyn_smem<T>();``, a pointer to the module's 16-byte aligned
    buffer that each launch sizes to its ``shared_mem`` -- as on a GPU, every
    such array starts at the same address.  Line breaks are kept so line
    numbers stay those of the original.

    Parameters
    ----------
    code
        CUDA C++ source.

    Returns
    -------
    str
        The rewritten source.
    """

    def repl(m: re.Match[str]) -> str:
        ctype = " ".join(_ATTRIBUTES.sub(" ", m["type"]).split())
        name = m["name"]
        return f"{ctype}* const {name} = ::liam_emu::dyn_smem<{ctype}>();" + "\n" * m.group(0).count("\n")

    return _EXTERN_SHARED.sub(repl, code)


_BAD_EXPRESSION = re.compile(r"[;{}\n\r]|//|/\*")


def check_name_expressions(name_expressions: Sequence[str]) -> tuple[str, ...]:
    """Validate name expressions and drop duplicates (keeping the order).

    Raises
    ------
    TypeError
        If ``name_expressions`` is a string or holds a non-string.
    ValueError
        If an expression is empty or could not be a C++ name expression.
    """
    if isinstance(name_expressions, str):
        raise TypeError("name_expressions must be a sequence of strings, not a string")
    out: list[str] = []
    for expr in name_expressions:
        if not isinstance(expr, str):
            raise TypeError(f"name expression {expr!r} is not a string")
        if not expr.strip() or _BAD_EXPRESSION.search(expr):
            raise ValueError(f"invalid name expression {expr!r}")
        if expr not in out:
            out.append(expr)
    return tuple(out)


def generate_entries(name_expressions: Sequence[str]) -> str:
    """C++ for the exported launch and signature functions of each kernel.

    Entry ``i`` is ``int liam_emu_launch_i(const long long* cfg, void** args,
    long long* out, char* err, unsigned long errlen)`` and
    ``const char* liam_emu_signature_i()``; ``&(expr)`` lets the compiler deduce
    the parameter types, so Python never needs to know them in advance.
    """
    lines = ["", "", "// ---- launch entry points generated by liam_gpu.emulator ----"]
    export = 'extern "C" __attribute__((visibility("default")))'
    for i, expr in enumerate(name_expressions):
        lines += [
            f"// [{i}] name expression: {expr}",
            f"{export} int liam_emu_launch_{i}(const long long* cfg, void** args, long long* out, char* err,",
            "                                  unsigned long errlen) {",
            f"    return ::liam_emu::launch(&({expr}), cfg, args, out, err, errlen);",
            "}",
            f"{export} const char* liam_emu_signature_{i}() {{ return ::liam_emu::signature(&({expr})); }}",
        ]
    return "\n".join(lines) + "\n"


def fiber_stack_bytes() -> int:
    """Stack size of each emulated thread: ``$LIAM_GPU_EMU_STACK_KIB`` KiB (default 64, at least 16)."""
    kib = os.environ.get("LIAM_GPU_EMU_STACK_KIB", "64")
    try:
        return max(16, int(kib)) * 1024
    except ValueError:
        raise ValueError(f"LIAM_GPU_EMU_STACK_KIB must be an integer, got {kib!r}") from None


def compiler() -> str:
    """The C++ compiler: ``$LIAM_GPU_EMU_CXX`` or ``g++``."""
    return os.environ.get("LIAM_GPU_EMU_CXX") or "g++"


@functools.lru_cache(maxsize=None)
def compiler_version(cxx: str) -> str:
    """The first line of ``cxx --version`` (part of the cache key).

    Raises
    ------
    EmulatorError
        If the compiler cannot be run.
    """
    try:
        proc = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmulatorError(f"the CUDA emulator needs a C++20 compiler; could not run {cxx!r}: {exc}") from exc
    if proc.returncode != 0:
        raise EmulatorError(f"{cxx} --version failed:\n{proc.stderr}")
    return proc.stdout.splitlines()[0] if proc.stdout else cxx


@functools.lru_cache(maxsize=None)
def sanitizer_runtime(mode: str, cxx: str | None = None) -> Path | None:
    """Path of the sanitizer runtime for ``mode`` ("address"/"thread"), or None.

    The runtime must be preloaded into the process that loads a sanitized
    module; g++ reports where its own copy is (``-print-file-name``).
    """
    cxx = cxx or compiler()
    try:
        proc = subprocess.run([cxx, f"-print-file-name={_RUNTIME[mode]}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(proc.stdout.strip())
    return path.resolve() if path.is_absolute() and path.exists() else None


def sanitizer_available(mode: str) -> bool:
    """Whether the compiler has the runtime for sanitize mode ``mode``."""
    return mode in _RUNTIME and sanitizer_runtime(mode) is not None


def cache_dir() -> Path:
    """The build cache: ``$LIAM_GPU_EMU_CACHE`` or ``~/.cache/liam_gpu/emulator``.

    The libraries in it are loaded into this process, so it must be private
    (:func:`check_private_dir`).  When the home directory is not writable the
    cache falls back to ``$TMPDIR/liam_gpu_emulator_<uid>``, a predictable name
    another user could have created first: it is used only if it passes the
    same check.

    Raises
    ------
    EmulatorError
        When the folder cannot be created or is not private.
    """
    env = os.environ.get("LIAM_GPU_EMU_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "liam_gpu" / "emulator"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        if env:
            raise EmulatorError(f"cannot create the emulator build cache {path} (LIAM_GPU_EMU_CACHE): {exc}") from exc
        # A read-only home must not stop the emulator; fall back to the temporary folder.
        path = Path(tempfile.gettempdir()) / f"liam_gpu_emulator_{os.getuid()}"
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc2:
            raise EmulatorError(f"cannot create the emulator build cache {path}: {exc2}; "
                                "set LIAM_GPU_EMU_CACHE to a private folder") from exc2
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Make sure only this user can put files into ``path`` (whose libraries get loaded).

    ``path`` must be a real directory (not a symbolic link) owned by this
    user, and no one else may write to it.  A folder of ours that others can
    only read or enter (an older cache created under the umask) is narrowed to
    mode 0700; one that others could write to has contents that cannot be
    trusted, and is refused.

    Raises
    ------
    EmulatorError
        Naming the folder, what is wrong and how to fix it.
    """
    fix = "remove it or set LIAM_GPU_EMU_CACHE to a private folder (a directory of yours, mode 0700)"
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise EmulatorError(f"cannot inspect the emulator build cache {path}: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise EmulatorError(f"the emulator build cache {path} is a symbolic link, so its libraries could be "
                            f"anyone's; {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise EmulatorError(f"the emulator build cache {path} is not a directory; {fix}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise EmulatorError(f"the emulator build cache {path} belongs to user id {st.st_uid}, not to this user "
                            f"({os.getuid()}), so its libraries could be anyone's; {fix}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EmulatorError(f"the emulator build cache {path} can be written by other users (mode {mode:04o}), "
                            f"so its libraries could be anyone's; {fix}")
    if mode != 0o700:
        try:
            os.chmod(path, 0o700, follow_symlinks=False)
        except (OSError, NotImplementedError) as exc:
            raise EmulatorError(f"cannot make the emulator build cache {path} private (mode {mode:04o}): {exc}; "
                                f"{fix}") from exc


def _sha256_file(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _parse_depfile(text: str) -> list[str]:
    """File names from a make-style dependency file (``g++ -MMD``)."""
    body = text.replace("\\\n", " ")
    body = body.split(":", 1)[1] if ":" in body else ""
    names = re.split(r"(?<!\\)\s+", body.strip())
    return [n.replace("\\ ", " ") for n in names if n]


def _deps_unchanged(meta: dict) -> bool:
    return all(_sha256_file(p) == h for p, h in meta.get("deps", {}).items())


def build(
    code: str,
    name_expressions: Sequence[str],
    options: Sequence[str] = (),
    sanitize: str | None = None,
) -> BuildResult:
    """Compile ``code`` (or find it in the cache) into a shared library.

    Parameters
    ----------
    code
        CUDA C++ source text.
    name_expressions
        The ``__global__`` functions to export (already validated).
    options
        NVRTC-style options (see :func:`parse_options`).
    sanitize
        None, "address" or "thread".

    Returns
    -------
    BuildResult

    Raises
    ------
    EmulatorError
        On a compile error (with the compiler log) or a missing compiler.
    """
    if sanitize not in SANITIZE_MODES:
        raise ValueError(f"sanitize must be one of {SANITIZE_MODES}, got {sanitize!r}")
    t0 = time.perf_counter()
    cxx = compiler()
    parsed = parse_options(options)
    header = header_bytes()
    flags = list(_BASE_FLAGS) + list(_MODE_FLAGS[sanitize])
    if sanitize is None:
        # A frame that does not fit the fiber stack would hit its guard page and
        # kill the process; refuse it at build time instead (16 KiB headroom for
        # the engine, printf and nested device functions).
        flags.append(f"-Werror=frame-larger-than={fiber_stack_bytes() - 16 * 1024}")
    flags += [f"-I{d}" for d in parsed.include_dirs] + list(parsed.macro_flags)

    h = hashlib.sha256()
    for part in (BUILD_VERSION, cxx, compiler_version(cxx), repr(flags), repr(sanitize), repr(tuple(name_expressions))):
        h.update(part.encode() + b"\0")
    h.update(header + b"\0")
    h.update(code.encode())
    key = h.hexdigest()[:32]
    tag = {None: "", "address": "-asan", "thread": "-tsan"}[sanitize]

    root = cache_dir()
    lib = root / f"{key}{tag}.so"
    src = root / f"{key}{tag}.cu"
    meta_path = root / f"{key}{tag}.json"
    if lib.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if meta is not None and _deps_unchanged(meta):
            return BuildResult(lib, src, key + tag, True, time.perf_counter() - t0)

    if shutil.which(cxx) is None and not Path(cxx).exists():
        raise EmulatorError(f"the CUDA emulator needs a C++20 compiler, but {cxx!r} was not found")
    if sanitize is not None and sanitizer_runtime(sanitize, cxx) is None:
        raise EmulatorError(f"{cxx} has no {_RUNTIME[sanitize]}; sanitize={sanitize!r} is unavailable")

    rewritten = rewrite_source(code)
    user_lines = rewritten.count("\n") + 1
    _write_atomic(src, (rewritten + generate_entries(name_expressions)).encode())
    stem = f".{key}{tag}.{os.getpid()}.{time.monotonic_ns()}"
    tmp_lib = root / f"{stem}.so"
    dep_file = root / f"{stem}.d"
    cmd = [cxx, *flags, "-include", str(HEADER), "-MMD", "-MF", str(dep_file), "-x", "c++", str(src), "-o", str(tmp_lib)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            log = proc.stderr + proc.stdout
            msg = f"g++ could not compile the kernel source ({src}):\n{log}"
            if "frame-larger-than" in log:
                msg += (
                    "\nhint: a function's local variables do not fit the emulator's per-thread stack of "
                    f"{fiber_stack_bytes() // 1024} KiB; set LIAM_GPU_EMU_STACK_KIB to a larger value"
                )
            late = [int(n) for n in re.findall(re.escape(src.name) + r":(\d+):\d+: error", log)]
            if any(n > user_lines for n in late):
                msg += (
                    "\nhint: an error in the generated entry points means a name expression in "
                    f"{list(name_expressions)} does not name a __global__ function (or names an overload set)"
                )
            raise EmulatorError(msg, log=log)
        deps = [p for p in _parse_depfile(dep_file.read_text()) if Path(p).resolve() != src.resolve()]
        meta = {"deps": {p: _sha256_file(p) for p in deps}, "name_expressions": list(name_expressions)}
        os.replace(tmp_lib, lib)
        _write_atomic(meta_path, json.dumps(meta, indent=1).encode())
    except subprocess.TimeoutExpired as exc:
        raise EmulatorError(f"g++ did not finish compiling {src} within {exc.timeout} s") from exc
    finally:
        for p in (tmp_lib, dep_file):
            p.unlink(missing_ok=True)
    return BuildResult(lib, src, key + tag, False, time.perf_counter() - t0)
