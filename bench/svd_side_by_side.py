"""Side-by-side CPU comparison on the peers.md reference matrix (8000x2000 float32, k=32, p=10, q=2).

Run: PYTHONPATH=. python bench/svd_side_by_side.py  -- prints one Markdown row per library.
"""
import time, numpy as np, torch, liam_gpu as lg
from sklearn.utils.extmath import randomized_svd as sk
rng = np.random.default_rng(12345)
m, n, k, p, q = 8000, 2000, 32, 10, 2
U, _ = np.linalg.qr(rng.standard_normal((m, n))); V, _ = np.linalg.qr(rng.standard_normal((n, n)))
s = np.exp(-np.arange(n) / 20) + 1e-3
A64 = (U * s) @ V.T; A = A64.astype(np.float32); At = torch.from_numpy(A)
def err(u, S, vt):
    R = A64 - (np.asarray(u, np.float64) * np.asarray(S, np.float64)) @ np.asarray(vt, np.float64)
    return np.linalg.norm(R, 2) / s[k], np.max(np.abs(np.asarray(S)[:k] - s[:k]) / s[:k])
runs = {
  "liam_gpu (cpu)": lambda: lg.randomized_svd(A, k, n_oversamples=p, n_iter=q, device="cpu"),
  "torch.svd_lowrank": lambda: (lambda r: (r[0].numpy()[:, :k], r[1].numpy()[:k], r[2].numpy()[:, :k].T))(torch.svd_lowrank(At, q=k + p, niter=q)),
  "sklearn": lambda: sk(A, k, n_oversamples=p, n_iter=q, random_state=0),
}
times = {name: [] for name in runs}; res = {}
for rep in range(5):
    for name, f in runs.items():
        t = time.perf_counter(); r = f(); times[name].append(time.perf_counter() - t); res[name] = r
for name in runs:
    e2, es = err(*res[name])
    print(f"| {name} | {np.median(times[name]):.3f} | {min(times[name]):.3f} | {e2:.6f} | {es:.1e} |")
