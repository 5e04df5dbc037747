"""The ``liam-gpu`` command: info, demo, compress, decompress, bench."""
from __future__ import annotations

import argparse
import math
import os
import platform
import stat
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _info(args: argparse.Namespace) -> int:
    """Backends, devices, versions and the kernel caches."""
    import liam_gpu as lg
    from liam_gpu.backends import canonical_device, cuda_device_count
    from liam_gpu.launch import families
    from liam_gpu.launch.family import kernel_dir

    rows = [
        ("liam_gpu", lg.__version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("devices", ", ".join(lg.devices())),
        ("default device", canonical_device(None)),
        ("kernel sources", str(kernel_dir())),
        ("kernel families", ", ".join(sorted(families()))),
        ("CuPy kernel cache", os.environ.get("CUPY_CACHE_DIR", str(Path.home() / ".cupy" / "kernel_cache"))),
        ("emulator build cache", os.environ.get("LIAM_GPU_EMU_CACHE", str(Path.home() / ".cache" / "liam_gpu" / "emulator"))),
    ]
    for module in ("scipy", "cupy", "torch", "cuda.bindings"):
        rows.append((module, _version_of(module)))
    if cuda_device_count():
        import cupy

        for i in range(cuda_device_count()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            rows.append((f"cuda:{i}", f"{props['name'].decode()} sm_{props['major']}{props['minor']}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _version_of(module: str) -> str:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:  # an optional dependency that is absent or broken
        return "not installed"
    return str(getattr(mod, "__version__", "installed"))


def demo_signals(n_samples: int, n_channels: int, n_sources: int, seed: int = 0) -> np.ndarray:
    """A multichannel recording: a few sources mixed into many channels, plus sensor noise.

    Sources are chirps, amplitude-modulated tones and bursts (float32,
    ``(n_samples, n_channels)``), so the matrix is low rank plus noise, like an
    EEG/array-microphone/vibration recording.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 10.0, n_samples, dtype=np.float64)
    sources = []
    for i in range(n_sources):
        f0 = rng.uniform(1.0, 40.0)
        if i % 3 == 0:
            s = np.sin(2 * np.pi * (f0 + 2.0 * t) * t)
        elif i % 3 == 1:
            s = (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t)) * np.sin(2 * np.pi * f0 * t)
        else:
            s = np.exp(-((t % 2.0) - 1.0) ** 2 * 20.0) * np.sin(2 * np.pi * f0 * t)
        sources.append(s)
    mixing = rng.standard_normal((n_sources, n_channels)) / np.sqrt(n_sources)
    clean = np.stack(sources, axis=1) @ mixing
    noise = 0.01 * rng.standard_normal((n_samples, n_channels))
    return (clean + noise).astype(np.float32)


def _demo(args: argparse.Namespace) -> int:
    """The main job: transform and compress a multichannel signal matrix on the best backend."""
    import liam_gpu as lg
    from liam_gpu.backends import canonical_device

    device = canonical_device(args.device)
    print(f"liam-gpu {lg.__version__} demo on {device}", file=sys.stderr)
    x = demo_signals(args.samples, args.channels, args.sources)
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((args.features, args.channels)) / np.sqrt(args.channels)).astype(np.float32)
    b = rng.standard_normal(args.features).astype(np.float32) * 0.1
    k = args.rank
    algebra = lg.BinaryAlgebra(device=device)

    rows = []
    # Warm up once (kernel compilation / caches) so the table shows steady-state times.
    algebra.transform_matrix(x[:64], w, b, "gelu")
    start = time.perf_counter()
    y = algebra.transform_matrix(x, w, b, "gelu")
    t_transform = time.perf_counter() - start
    ref = lg.transform_matrix(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), "gelu", device="cpu")
    err = float(np.abs(np.asarray(y, dtype=np.float64) - ref).max() / np.abs(ref).max())
    flops = 2.0 * x.shape[0] * x.shape[1] * w.shape[0]
    rows.append((f"transform gelu(x@W.T+b) {x.shape}->{y.shape}", t_transform, f"max rel err {err:.1e}",
                 f"{flops / t_transform / 1e9:.1f} GFLOP/s"))

    print(f"compressing {x.shape} to rank {k} ...", file=sys.stderr)
    start = time.perf_counter()
    lr = algebra.svd_compress(x, k=k)
    t_svd = time.perf_counter() - start
    norm = float(np.linalg.norm(x))
    err_ours = float(np.linalg.norm(x - np.asarray(lr)) / norm)
    rows.append((f"svd_compress k={k} ({device})", t_svd, f"rel err {err_ours:.4f}",
                 f"ratio {lr.compression_ratio:.1f}x"))

    print("numpy full SVD for comparison ...", file=sys.stderr)
    start = time.perf_counter()
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    t_full = time.perf_counter() - start
    best = float(np.sqrt((s[k:].astype(np.float64) ** 2).sum()) / norm)
    rows.append((f"numpy.linalg.svd (full), truncated to {k}", t_full, f"rel err {best:.4f}",
                 f"speed-up of ours {t_full / t_svd:.1f}x"))

    print()
    print("| operation | time (s) | accuracy | note |")
    print("|---|---|---|---|")
    for name, secs, acc, note in rows:
        print(f"| {name} | {secs:.4f} | {acc} | {note} |")
    return 0


#: Channel counts of an ``(H, W, C)`` image (grey + alpha, RGB, RGBA), refused as a stack unless --stack.
_IMAGE_CHANNELS = (2, 3, 4)


def _compress(args: argparse.Namespace) -> int:
    """``liam-gpu compress``: a ``.npy`` matrix (or stack) to a LowRank ``.npz``."""
    import liam_gpu as lg
    from liam_gpu.lowrank import _fmt_error

    output = args.output
    if Path(output).suffix.lower() == ".npy":
        raise ValueError(f"-o {output}: compress writes an .npz archive (the three factors), not a .npy array; "
                         f"name the output {Path(output).with_suffix('.npz')}")
    with _Stages(_show_progress(args), "liam-gpu compress", ("reading", "factorizing", "writing")) as stages:
        a = _load_npy(args.input)
        _refuse_image_channels(a, args)
        stages.next()
        lr = lg.svd_compress(a, k=args.k, tol=args.tol, device=args.device)
        lr.source_dtype = a.dtype  # restored by decompress; the ratio counts the input's bytes
        stages.next()
        lr.save(output)
    written = _written_bytes(output, lr.nbytes)
    ratio = a.nbytes / written
    size = f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x LARGER"
    est = "" if lr.relative_error is None else f", estimated relative error {_fmt_error(lr.relative_error)}"
    print(f"{args.input}: {a.shape} {a.dtype} -> rank {lr.rank}, {size} ({a.nbytes} -> {written} bytes){est}; "
          f"wrote {output}")
    if written >= a.nbytes:
        print(f"liam-gpu compress: warning: {output} ({written} bytes) is not smaller than {args.input} "
              f"({a.nbytes} bytes): rank {lr.rank} factors in {lr.dtype} take more room than the {a.dtype} "
              "input; a lower -k (or a larger --tol) makes it smaller", file=sys.stderr)
    return 0


def _decompress(args: argparse.Namespace) -> int:
    """``liam-gpu decompress``: a LowRank ``.npz`` back to a dense ``.npy``, in the input's dtype."""
    import liam_gpu as lg
    from liam_gpu.lowrank import atomic_write, check_fits_in_memory, real_dtype

    lr = lg.LowRank.load(args.input)
    factors = np.dtype(lr.dtype)
    if args.dtype is not None:
        target = real_dtype(args.dtype, "--dtype")
    else:
        target = lr.source_dtype if lr.source_dtype is not None else factors  # old files: the factors'
    # The product in the factors' dtype, plus its conversion when the dtype changes.
    need = math.prod(lr.shape) * (factors.itemsize + (target.itemsize if target != factors else 0))
    check_fits_in_memory(need, f"{args.input}: the dense {lr.shape} matrix")
    dense = _to_dtype(np.asarray(lr), target, args.input)
    with atomic_write(args.output) as f:
        np.save(f, dense)
    print(f"{args.input}: rank {lr.rank} -> {dense.shape} {dense.dtype}; wrote {args.output}")
    return 0


def _to_dtype(dense: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``dense`` in ``dtype``: rounded and clipped to the type's range for integers and booleans.

    ``dense`` is a scratch array: it is rounded and clipped in place, so that
    the peak memory is the reconstruction plus the result (what
    :func:`_decompress` checks before it starts).
    """
    if dtype.kind == "f" or dense.dtype == dtype:
        return dense.astype(dtype, copy=False)
    if not np.isfinite(dense).all():
        raise ValueError(f"{name}: the reconstruction holds NaN or Inf, which {dtype} cannot represent; "
                         "pass --dtype float32 or float64")
    lo, hi = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    # float(2**63 - 1) rounds up to 2**63, which would overflow: clip to the float below instead.
    hi_f = float(hi) if float(hi) <= hi else float(np.nextafter(float(hi), 0.0))
    np.rint(dense, out=dense)
    np.clip(dense, float(lo), hi_f, out=dense)
    return dense.astype(dtype)


def _written_bytes(path: str, fallback: int) -> int:
    """Size of the file written (``fallback`` for a device such as /dev/null)."""
    try:
        st = os.stat(path)
    except OSError:
        return fallback
    return st.st_size if stat.S_ISREG(st.st_mode) else fallback


def _refuse_image_channels(a: np.ndarray, args: argparse.Namespace) -> None:
    """An ``(H, W, 3)`` image would be compressed as H matrices of W x 3: refuse unless --stack."""
    if a.ndim == 3 and a.shape[-1] in _IMAGE_CHANNELS and a.shape[-2] > a.shape[-1] and not args.stack:
        h, w, c = a.shape
        raise ValueError(
            f"{args.input} has shape {a.shape}, like an image with {c} colour channels; compressing it "
            f"would factor {h} separate {w}x{c} matrices, which keeps nothing of the image's structure. "
            f"Save one channel per file (a[..., i]), or the channels as a stack of {c} {h}x{w} matrices "
            f"(np.moveaxis(a, -1, 0)); pass --stack if it really is {h} matrices of {w}x{c}"
        )


def _show_progress(args: argparse.Namespace) -> bool:
    """--progress/--no-progress, else a bar only when stderr is a terminal."""
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


class _Stages:
    """A tqdm bar over the steps of a command, its elapsed time ticking while a step runs.

    The library's factorization reports no progress of its own, so the bar
    shows which step runs and for how long; disabled, it does nothing.
    """

    def __init__(self, enabled: bool, desc: str, steps: Sequence[str]) -> None:
        self.enabled, self.desc, self.steps = enabled, desc, tuple(steps)
        self.index = 0
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> "_Stages":
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.steps), file=sys.stderr, leave=False, mininterval=0,
                             desc=f"{self.desc}: {self.steps[0]}",
                             bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}]")
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._bar.refresh()

    def next(self) -> None:
        """The current step is done; the next one starts."""
        self.index += 1
        if self._bar is not None:
            if self.index < len(self.steps):
                self._bar.set_description_str(f"{self.desc}: {self.steps[self.index]}", refresh=False)
            self._bar.update(1)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._stop.set()
            if self._ticker is not None:
                self._ticker.join()
            if exc[0] is None:
                self._bar.update(len(self.steps) - self._bar.n)
            self._bar.close()


def _load_npy(path: str) -> np.ndarray:
    """A ``.npy`` array, its declared size checked against the file and the memory first."""
    from liam_gpu.lowrank import check_fits_in_memory, read_npy_header

    try:
        with open(path, "rb") as f:
            _, shape, dtype, declared = read_npy_header(f)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        if zipfile.is_zipfile(path):
            raise ValueError(f"{path} is an .npz archive; compress takes one array in a .npy file") from err
        raise ValueError(f"{path} is not a readable .npy array file ({err})") from err
    if not dtype.hasobject and declared > size:
        raise ValueError(f"{path} declares an array of shape {shape} {dtype} ({declared} bytes) "
                         f"but holds {size} bytes: it is truncated or damaged")
    check_fits_in_memory(declared, f"{path}: its {shape} {dtype} array")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array file ({err})") from err


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    from liam_gpu import benchmarks  # the bench options are the benchmark module's own
    from liam_gpu._version import __version__
    from liam_gpu.svd import DEFAULT_RANK

    parser = argparse.ArgumentParser(prog="liam-gpu", description=__doc__)
    parser.add_argument("--version", action="version", version=f"liam-gpu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="backends, devices, versions, kernel caches")
    p.set_defaults(run=_info)

    device_help = "cpu, cuda, cuda:N, emulator (default: the best present, or $LIAM_GPU_BACKEND)"
    p = sub.add_parser("demo", help="transform and compress a multichannel signal matrix")
    p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--samples", type=int, default=50_000, help="rows of the signal (default: %(default)s)")
    p.add_argument("--channels", type=int, default=256, help="columns of the signal (default: %(default)s)")
    p.add_argument("--sources", type=int, default=12, help="sources mixed into it (default: %(default)s)")
    p.add_argument("--features", type=int, default=128, help="outputs of the transform (default: %(default)s)")
    p.add_argument("--rank", type=int, default=16, help="rank of the compression (default: %(default)s)")
    p.set_defaults(run=_demo)

    p = sub.add_parser("compress", help="compress a .npy matrix to a low-rank .npz",
                       description="Compress an (m, n) matrix or a (B, m, n) stack in a .npy file to its "
                                   "truncated SVD factors in an .npz file (the input's dtype is recorded).")
    p.add_argument("input", help="a .npy file")
    p.add_argument("-k", type=int, default=None,
                   help=f"target rank (default: {DEFAULT_RANK}, or min(m, n) if smaller; chosen by --tol when given)")
    p.add_argument("--tol", type=float, default=None,
                   help="target relative error instead of -k: the smallest rank that reaches it")
    p.add_argument("-o", "--output", required=True, help="the .npz file to write (required)")
    p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--stack", action="store_true",
                   help="treat an (H, W, 2-4) array as H matrices of W x C instead of refusing it as an image")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.set_defaults(run=_compress)

    p = sub.add_parser("decompress", help="rebuild the dense matrix of a low-rank .npz",
                       description="Rebuild the dense matrix (or stack) of a low-rank .npz into a .npy file, "
                                   "in the dtype the compressed input had (rounded and clipped for integers).")
    p.add_argument("input", help="an .npz file written by liam-gpu compress")
    p.add_argument("-o", "--output", required=True,
                   help="the .npy file to write, under exactly this name (required)")
    p.add_argument("--dtype", default=None,
                   help="dtype of the output (default: the compressed input's, recorded in the file; "
                        "the factors' for files written before it was recorded)")
    p.set_defaults(run=_decompress)

    p = sub.add_parser("bench", help="run the benchmark suite and write tables and plots")
    benchmarks.add_arguments(p)
    p.set_defaults(run=benchmarks.run_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``liam-gpu`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"liam-gpu {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error as one line: ``PATH: reason`` for an OSError, else its message."""
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err)
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
