"""The front door: where each public operation goes.

``liam_gpu.transform_matrix``, ``liam_gpu.randomized_svd`` and
``liam_gpu.svd_compress`` (and :class:`~liam_gpu.BinaryAlgebra`) are the
functions of this module.  Each call is routed once:

1. a torch tensor that needs autograd (grad mode on and ``requires_grad``),
   or any tensor while ``torch.compile`` traces the call, goes to the torch
   layer (:mod:`liam_gpu.torch.functional`), which records it and comes back
   to step 2 for the computation;
2. a :class:`~liam_gpu.Scheduler` as ``device`` goes to the scheduler's
   operations (:mod:`liam_gpu.alda.ops`);
3. everything else goes to the core (:mod:`liam_gpu.transform`,
   :mod:`liam_gpu.svd`).

Steps 2 and 3 are :mod:`liam_gpu.dispatch`.  The SVDs record autograd inside
the core (:mod:`liam_gpu._svd_grad`, on the engine's basis), so they start at
step 2.  Only this module, the torch layer and the scheduler sit above the core;
the core imports none of them (``tests/test_imports.py``).
"""
from __future__ import annotations

from typing import Any

from . import arrays, dispatch, transform
from .dispatch import randomized_svd, svd_compress  # noqa: F401  (steps 2-3 are the whole route)

__all__ = ["randomized_svd", "svd_compress", "transform_matrix"]


def transform_matrix(
    data: Any,
    weights: Any,
    bias: Any = None,
    activation: str | None = None,
    *,
    out: Any = None,
    device: Any = None,
    check_finite: bool = True,
    precision: str | None = None,
) -> Any:
    if arrays.route_to_torch(data, weights, bias):
        from .torch.functional import transform_matrix as recorded

        return recorded(data, weights, bias, activation, out=out, device=device, check_finite=check_finite,
                        precision=precision)
    return dispatch.transform_matrix(
        data, weights, bias, activation, out=out, device=device, check_finite=check_finite, precision=precision
    )


transform_matrix.__doc__ = transform.transform_matrix.__doc__  # one docstring: the core's
