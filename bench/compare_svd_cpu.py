"""Randomized SVD on the CPU, side by side in one process: liam_gpu, torch.svd_lowrank, scikit-learn.

    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 1
    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 2
    PYTHONPATH=. python bench/compare_svd_cpu.py --threads 1 --sklearn-defaults

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
    args = parser.parse_args()
    if args.sklearn_defaults:
        return sklearn_defaults(args.threads)
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


if __name__ == "__main__":
    main()
