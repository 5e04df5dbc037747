"""Randomized SVD on the CPU, side by side in one process: liam_gpu, torch.svd_lowrank, scikit-learn.

    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 1
    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 2
    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 1 --sklearn-defaults
    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 1 --floors
    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 1 --curve

Cases of the SVD engine issue, float32, ``q = 2`` power iterations and
``p = 10`` oversampling for every library (torch: ``q=k+10, niter=2``;
scikit-learn: ``n_oversamples=10, n_iter=2``, its ``"auto"`` normalizer):
peers.md's 8000 x 2000 matrix at k = 32, a 4000 x 1500 power-law spectrum
(``s_i = 1/i``) at k = 128, and scikit-image's 512 x 512 camera image at
k = 100 and 200.  Each call is timed as the median of 5 after one warm-up;
the error column is ``||A - U S Vt||_F`` over the optimal rank-k error (float64
truth), so times compare at the accuracy shown.  ``--sklearn-defaults``:
ours against scikit-learn at scikit-learn's defaults (``n_iter="auto"``, LU
normalizer), ours at the same ``n_iter``.

``--floors``: what the products alone cost.  Any randomized SVD with ``q``
power iterations multiplies by ``A`` or ``A^T`` ``2 q + 2`` times (the sketch,
two per iteration, the projection ``B = Q^T A``); this mode times those
products by themselves, as numpy (its BLAS, at our sketch width) and torch (its
BLAS, at torch's width ``k + p``) compute them, beside each library's whole
call.  ``torch products / torch`` is the share of torch's own time that no
algorithm at these settings can save; ``numpy products / torch`` is the least
ratio our numpy-computed path can reach.

``--curve``: accuracy against time for ``q = 0 .. 4`` and 7 (scikit-learn's default for small ``k``) power iterations, ours,
torch and scikit-learn (its ``"auto"`` normalizer), so ratios can be read at
equal error rather than at equal ``q``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _spectrum(rng, m, n, s):
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return ((u * s) @ v.T).astype(np.float32)


def cases():
    from skimage import data

    rng = np.random.default_rng(0)
    camera = data.camera().astype(np.float32) / 255
    return {
        "8000x2000 peers.md, k=32": (_spectrum(rng, 8000, 2000, np.exp(-np.arange(2000) / 20) + 1e-3), 32),
        "4000x1500 power law, k=128": (_spectrum(rng, 4000, 1500, np.arange(1, 1501) ** -1.0), 128),
        "camera 512x512, k=100": (camera, 100),
        "camera 512x512, k=200": (camera, 200),
    }


def _median_ms(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sklearn-defaults", action="store_true",
                        help="ours against scikit-learn at its defaults (n_iter='auto'), no torch")
    parser.add_argument("--floors", action="store_true", help="the 2q+2 products alone, numpy and torch")
    parser.add_argument("--curve", action="store_true", help="error and time for q = 0 .. 4, every library")
    args = parser.parse_args()
    if args.sklearn_defaults:
        return sklearn_defaults(args.threads)
    if args.floors:
        return floors(args.threads)
    if args.curve:
        return curve(args.threads)
    import threadpoolctl
    import torch
    from sklearn.utils.extmath import randomized_svd as sk_randomized_svd

    import liam_gpu as lg

    torch.set_num_threads(args.threads)
    with threadpoolctl.threadpool_limits(args.threads):
        print(f"| case ({args.threads} thread{'s' if args.threads > 1 else ''}) | liam_gpu | torch | "
              "scikit-learn | liam_gpu / torch | error / optimal: ours, torch, sklearn |")
        print("|---|---|---|---|---|---|")
        for name, (a, k) in cases().items():
            error = _error_over_optimal(a, k)

            t_ours, f_ours = _median_ms(lambda: lg.randomized_svd(a, k, n_iter=2, n_oversamples=10, device="cpu"))
            ta = torch.from_numpy(a)

            def run_torch():
                u, s_, v = torch.svd_lowrank(ta, q=k + 10, niter=2)
                return u[:, :k].numpy(), s_[:k].numpy(), v[:, :k].T.numpy()

            torch.manual_seed(0)
            t_torch, f_torch = _median_ms(run_torch)
            t_sk, f_sk = _median_ms(lambda: sk_randomized_svd(a, k, n_oversamples=10, n_iter=2, random_state=0))
            print(f"| {name} | {t_ours:.1f} ms | {t_torch:.1f} ms | {t_sk:.1f} ms | **{t_ours / t_torch:.2f}** | "
                  f"{error(*f_ours):.4f}, {error(*f_torch):.4f}, {error(*f_sk):.4f} |", flush=True)


def _error_over_optimal(a, k):
    a64 = a.astype(np.float64)
    s = np.linalg.svd(a64, compute_uv=False)
    optimal = np.sqrt(np.sum(s[k:] ** 2))
    return lambda u, s_, vt: np.linalg.norm(a64 - (u.astype(np.float64) * s_) @ vt.astype(np.float64)) / optimal


def sklearn_defaults(threads: int) -> None:
    import threadpoolctl
    from sklearn.utils.extmath import randomized_svd as sk_randomized_svd

    import liam_gpu as lg

    with threadpoolctl.threadpool_limits(threads):
        print(f"| case ({threads} thread{'s' if threads > 1 else ''}) | liam_gpu | scikit-learn | ratio | "
              "error / optimal: ours, sklearn |")
        print("|---|---|---|---|---|")
        for name, (a, k) in cases().items():
            error = _error_over_optimal(a, k)
            t_ours, f_ours = _median_ms(lambda: lg.randomized_svd(a, k, device="cpu"))
            t_sk, f_sk = _median_ms(lambda: sk_randomized_svd(a, k, random_state=0))
            print(f"| {name} | {t_ours:.1f} ms | {t_sk:.1f} ms | **{t_ours / t_sk:.2f}** | "
                  f"{error(*f_ours):.5f}, {error(*f_sk):.5f} |", flush=True)


def _products(matmul, a, width, q, rng):
    """A callable making the ``2 q + 2`` products of a ``q``-iteration randomized SVD of ``a`` at ``width``.

    The tall orientation ``T`` (``A`` or ``A^T``), as every library uses: ``q + 1``
    products ``T X`` and ``q + 1`` products ``T^T Y`` with fresh float32 blocks.
    """
    t = a if a.shape[0] >= a.shape[1] else a.T
    x = rng.standard_normal((t.shape[1], width)).astype(np.float32)
    y = rng.standard_normal((t.shape[0], width)).astype(np.float32)
    return lambda: [(matmul(t, x), matmul(t.T, y)) for _ in range(q + 1)]


def floors(threads: int, q: int = 2, p: int = 10) -> None:
    import threadpoolctl
    import torch

    import liam_gpu as lg
    from liam_gpu.rangefinder import sketch_width

    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    with threadpoolctl.threadpool_limits(threads):
        print(f"| case ({threads} thread{'s' if threads > 1 else ''}) | liam_gpu | numpy products | torch | "
              "torch products | torch products / torch | numpy products / torch | liam_gpu / torch |")
        print("|---|---|---|---|---|---|---|---|")
        for name, (a, k) in cases().items():
            ta = torch.from_numpy(a)
            width = sketch_width(k, p, min(a.shape))
            t_ours, _ = _median_ms(lambda: lg.randomized_svd(a, k, n_iter=q, n_oversamples=p, device="cpu"))
            t_np, _ = _median_ms(_products(np.matmul, a, width, q, rng))
            torch.manual_seed(0)
            t_torch, _ = _median_ms(lambda: torch.svd_lowrank(ta, q=k + p, niter=q))
            t_tprod, _ = _median_ms(_torch_products(torch, a, k + p, q, rng))
            print(f"| {name} | {t_ours:.1f} ms | {t_np:.1f} ms | {t_torch:.1f} ms | {t_tprod:.1f} ms | "
                  f"{t_tprod / t_torch:.2f} | **{t_np / t_torch:.2f}** | {t_ours / t_torch:.2f} |", flush=True)
        print(f"\n| case ({threads} thread{'s' if threads > 1 else ''}): one step, ms | QR numpy | QR torch | "
              "shifted CholeskyQR pass (ours) | SVD of B numpy | SVD of B torch | l x l SVD numpy (ours) |")
        print("|---|---|---|---|---|---|---|")
        for name, (a, k) in cases().items():
            print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in _steps(torch, a, k, p, rng)) + " |", flush=True)


def _steps(torch, a, k, p, rng):
    """One orthonormalization and one small SVD at ``a``'s sizes, as each library computes them.

    torch.svd_lowrank makes ``2 q + 1`` Householder QRs of ``m x (k + p)`` blocks
    and one SVD of ``B`` (``(k + p) x n``); our engine makes shifted CholeskyQR
    passes (:func:`liam_gpu.cholqr.basis_pass`) and an SVD of an ``l x l``
    triangular factor (LAPACK through numpy, the only LAPACK it calls).
    """
    from liam_gpu.backends.cpu import CpuBackend
    from liam_gpu.cholqr import basis_pass, orthonormalize

    m, n = max(a.shape), min(a.shape)
    y = rng.standard_normal((m, k + p)).astype(np.float32)
    b = rng.standard_normal((k + p, n)).astype(np.float32)
    ty, tb = torch.from_numpy(y), torch.from_numpy(b)
    backend = CpuBackend()
    rb = orthonormalize(backend, np.ascontiguousarray(b.T))[1]
    return [_median_ms(f)[0] for f in (
        lambda: np.linalg.qr(y), lambda: torch.linalg.qr(ty), lambda: basis_pass(backend, y),
        lambda: np.linalg.svd(b, full_matrices=False), lambda: torch.linalg.svd(tb, full_matrices=False),
        lambda: np.linalg.svd(rb.T))]


def _torch_products(torch, a, width, q, rng):
    ta = torch.from_numpy(a)
    t = ta if a.shape[0] >= a.shape[1] else ta.T
    x = torch.from_numpy(rng.standard_normal((t.shape[1], width)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((t.shape[0], width)).astype(np.float32))
    return lambda: [(t @ x, t.T @ y) for _ in range(q + 1)]


def curve(threads: int, p: int = 10, qs: tuple[int, ...] = (0, 1, 2, 3, 4, 7)) -> None:
    import threadpoolctl
    import torch
    from sklearn.utils.extmath import randomized_svd as sk_randomized_svd

    import liam_gpu as lg

    torch.set_num_threads(threads)
    with threadpoolctl.threadpool_limits(threads):
        for name, (a, k) in cases().items():
            error = _error_over_optimal(a, k)
            ta = torch.from_numpy(a)
            print(f"\n{name} ({threads} thread{'s' if threads > 1 else ''}): time in ms, error / optimal")
            print("| q | liam_gpu | torch | scikit-learn |")
            print("|---|---|---|---|")
            for q in qs:
                t_ours, f_ours = _median_ms(lambda: lg.randomized_svd(a, k, n_iter=q, n_oversamples=p, device="cpu"))

                def run_torch():
                    u, s_, v = torch.svd_lowrank(ta, q=k + p, niter=q)
                    return u[:, :k].numpy(), s_[:k].numpy(), v[:, :k].T.numpy()

                torch.manual_seed(0)
                t_torch, f_torch = _median_ms(run_torch)
                t_sk, f_sk = _median_ms(lambda: sk_randomized_svd(a, k, n_oversamples=p, n_iter=q, random_state=0))
                print(f"| {q} | {t_ours:.1f}, {error(*f_ours):.4f} | {t_torch:.1f}, {error(*f_torch):.4f} | "
                      f"{t_sk:.1f}, {error(*f_sk):.4f} |", flush=True)


if __name__ == "__main__":
    main()
