"""liam_gpu.torch layers against the ``nn`` layers they replace, per activation, on torch CPU tensors.

    PYTHONPATH=. python bench/compare_layers_cpu.py

``Linear.from_linear`` against ``nn.Sequential(linear, activation)``, and
``LowRankLinear.from_linear`` against two ``nn.Linear`` holding the same
factors plus the activation, at 1 and 2 torch threads; the two alternate 41
times per cell (median kept) after 3 warm-up calls, under ``torch.no_grad``.
Each cell prints ``ours/nn=ratio`` in ms.  gelu is the one activation whose
meaning differs: ours is ``0.5 z erfc(-z/sqrt 2)`` (relative accuracy in the
tail), ``nn.GELU`` computes ``1 + erf`` (see docs/torch.md).
"""
import statistics
import time

import torch
from torch import nn

import liam_gpu.torch as lt

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, None: nn.Identity}


def pair(kind, act, d_in, d_out, rank):
    """``(ours, theirs)`` with the same weights."""
    torch.manual_seed(0)
    dense = nn.Linear(d_in, d_out).eval()
    if kind == "dense":
        return lt.Linear.from_linear(dense, activation=act).eval(), nn.Sequential(dense, ACTS[act]()).eval()
    ours = lt.LowRankLinear.from_linear(dense, rank=rank, activation=act).eval()
    first, second = nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out)
    with torch.no_grad():
        first.weight.copy_(ours.weight_in)
        second.weight.copy_(ours.weight_out)
        second.bias.copy_(ours.bias)
    return ours, nn.Sequential(first, second, ACTS[act]()).eval()


def main() -> None:
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch, d_in, d_out, rank in [(512, 512, 1024, 64), (512, 1024, 1024, 128)]:
            x = torch.randn(batch, d_in)
            for kind in ("lowrank", "dense"):
                row = []
                for act in (None, "relu", "silu", "gelu"):
                    ours, theirs = pair(kind, act, d_in, d_out, rank)
                    t = {"ours": [], "nn": []}
                    with torch.no_grad():
                        for _ in range(3):
                            ours(x)
                            theirs(x)
                        for _ in range(41):
                            for k, m in (("ours", ours), ("nn", theirs)):
                                start = time.perf_counter()
                                m(x)
                                t[k].append(time.perf_counter() - start)
                    o, n = statistics.median(t["ours"]), statistics.median(t["nn"])
                    row.append(f"{act or 'none'} {o*1e3:.2f}/{n*1e3:.2f}={o/n:.2f}")
                print(f"t={threads} {kind:7s} {batch}x{d_in}->{d_out} r={rank}: " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
