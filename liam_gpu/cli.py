"""The ``liam-gpu`` command: info, demo, compress, decompress, bench."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

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


def _compress(args: argparse.Namespace) -> int:
    import liam_gpu as lg

    a = _load_npy(args.input)
    lr = lg.svd_compress(a, k=args.k, tol=args.tol, device=args.device)
    lr.save(args.output)
    est = "" if lr.relative_error is None else f", estimated relative error {lr.relative_error:.3g}"
    print(f"{args.input}: {a.shape} {a.dtype} -> rank {lr.rank}, {lr.compression_ratio:.1f}x smaller{est}; "
          f"wrote {args.output}")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    import liam_gpu as lg

    lr = lg.LowRank.load(args.input)
    dense = np.asarray(lr)
    np.save(args.output, dense)
    print(f"{args.input}: rank {lr.rank} -> {dense.shape} {dense.dtype}; wrote {args.output}")
    return 0


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array file ({err})") from err


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    from liam_gpu import benchmarks  # the bench options are the benchmark module's own

    parser = argparse.ArgumentParser(prog="liam-gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="backends, devices, versions, kernel caches")
    p.set_defaults(run=_info)

    p = sub.add_parser("demo", help="transform and compress a multichannel signal matrix")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, emulator (default: best present)")
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--sources", type=int, default=12)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--rank", type=int, default=16)
    p.set_defaults(run=_demo)

    p = sub.add_parser("compress", help="compress a .npy matrix to a low-rank .npz")
    p.add_argument("input")
    p.add_argument("-k", type=int, default=None, help="target rank")
    p.add_argument("--tol", type=float, default=None, help="target relative error (adaptive rank)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--device", default=None)
    p.set_defaults(run=_compress)

    p = sub.add_parser("decompress", help="rebuild the dense matrix of a low-rank .npz")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
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
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"liam-gpu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
