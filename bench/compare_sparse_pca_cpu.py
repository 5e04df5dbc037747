"""Sparse randomized SVD and PCA on the CPU: liam_gpu against scikit-learn and torch, each in its own process.

    PYTHONPATH=. python bench/compare_sparse_pca_cpu.py

Cases of the sparse-and-PCA issue: a 100000 x 50000 CSR float32 matrix with
density 1e-3 and power-law column frequencies (TF-IDF-like), k = 100, q = 2,
p = 10 -- ours, scikit-learn's ``randomized_svd`` (its default normalizer at
``n_iter=2`` is none; with LU for equal error) and ``torch.svd_lowrank`` on
the COO tensor; ``pca`` of a dense 20000 x 2000 float32 matrix at k = 50
against ``sklearn.decomposition.PCA(svd_solver="randomized")``; and ``pca``
of the sparse matrix at k = 100 (centred implicitly) against scikit-learn's
only sparse PCA that fits in memory, ``svd_solver="arpack"`` (its randomized
solver refuses sparse input; ``covariance_eigh`` would form a 50000 x 50000
matrix), ours at the defaults and at ``n_oversamples=50``.  Best of 2;
the Frobenius error of each result is measured (sparse: through ``U^T A``,
never densified), peak RSS is the child process's.
"""
from __future__ import annotations

import subprocess
import sys

CHILD = r'''
import resource, sys, time
import numpy as np, scipy.sparse as sp
which = sys.argv[1]
rng = np.random.default_rng(0)
if which.startswith("pca"):
    m, n, k = 20000, 2000, 50
    u, _ = np.linalg.qr(rng.standard_normal((m, 200)))
    x = ((u * np.exp(-np.arange(200) / 30.0)) @ rng.standard_normal((200, n)) + 0.01 * rng.standard_normal((m, n))
         + 5.0).astype(np.float32)
    def run():
        if which == "pca-ours":
            import liam_gpu as lg
            r = lg.pca(x, k)
            return r.explained_variance
        from sklearn.decomposition import PCA
        return PCA(k, svd_solver="randomized", random_state=0).fit(x).explained_variance_
else:
    m, n, density, k = 100000, 50000, 1e-3, 100
    nnz = int(m * n * density)
    p = 1.0 / np.arange(1, n + 1) ** 1.1
    p /= p.sum()
    a = sp.csr_matrix((rng.random(nnz).astype(np.float32) + 0.1, (rng.integers(0, m, nnz), rng.choice(n, nnz, p=p))),
                      shape=(m, n))
    a.sum_duplicates()
    def run():
        if which.startswith("spca-ours"):
            import liam_gpu as lg
            return lg.pca(a, k, n_oversamples=50 if which.endswith("50") else 10).explained_variance
        if which == "spca-arpack":
            from sklearn.decomposition import PCA
            return PCA(k, svd_solver="arpack", random_state=0).fit(a).explained_variance_
        if which == "ours":
            import liam_gpu as lg
            return lg.randomized_svd(a, k, n_iter=2, n_oversamples=10)
        if which.startswith("sklearn"):
            from sklearn.utils.extmath import randomized_svd
            norm = "LU" if which == "sklearn-lu" else "auto"
            return randomized_svd(a, k, n_iter=2, n_oversamples=10, power_iteration_normalizer=norm, random_state=0)
        import torch
        c = a.tocoo()
        t = torch.sparse_coo_tensor(np.vstack([c.row, c.col]), c.data, (m, n))
        u, s, v = torch.svd_lowrank(t, q=k + 10, niter=2)
        return u.numpy()[:, :k], s.numpy()[:k], v.numpy()[:, :k].T
best = 1e9
for _ in range(2):
    t = time.perf_counter()
    out = run()
    best = min(best, time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if which.startswith(("pca", "spca")):
    print(f"| {which} | {best:.2f} s | explained variance[0] {out[0]:.6g}, [-1] {out[-1]:.6g} | {rss:.0f} MB |")
else:
    u, s, vt = out
    uta = np.asarray((a.T.tocsr() @ u.astype(np.float64)).T)
    norm2 = float(np.dot(a.data.astype(np.float64), a.data.astype(np.float64)))
    cross = float(np.einsum("ij,ij->i", uta, vt.astype(np.float64)) @ s.astype(np.float64))
    err = np.sqrt(max(norm2 - 2 * cross + float(np.sum(s.astype(np.float64) ** 2)), 0.0) / norm2)
    print(f"| {which} | {best:.2f} s | relative error {err:.6f}, sigma_100 {s[-1]:.3f} | {rss:.0f} MB |")
'''


def main() -> None:
    print("| implementation | time | result | peak RSS |")
    print("|---|---|---|---|")
    for which in ("ours", "sklearn", "sklearn-lu", "torch", "pca-ours", "pca-sklearn", "spca-ours", "spca-ours-50",
                  "spca-arpack"):
        out = subprocess.run([sys.executable, "-c", CHILD, which], capture_output=True, text=True)
        print(out.stdout.strip() or f"| {which} | failed: {out.stderr.strip().splitlines()[-1:]} |", flush=True)


if __name__ == "__main__":
    main()
