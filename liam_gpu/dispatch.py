"""Where an operation runs: over a :class:`~liam_gpu.Scheduler`'s devices, or on one backend.

``device=`` of the public operations is a backend name or a Scheduler.  This
module tells them apart and hands the call to the scheduler's operations
(:mod:`liam_gpu.alda.ops`) or to the core (:mod:`liam_gpu.transform`,
:mod:`liam_gpu.svd`).  It knows nothing of autograd: the front door
(:mod:`liam_gpu.api`) sends tensors that need it to the torch layer first,
and the torch layer comes back here for the computations themselves.

The scheduler is never imported to ask: a ``Scheduler`` can only exist once
its module has been imported.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from . import svd, transform

_SCHEDULER_MODULE = "liam_gpu.alda.scheduler"


def public_face(core: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a routing function ``core``'s name and docstring, and its signature through ``__wrapped__``."""

    def give(fn: Callable[..., Any]) -> Callable[..., Any]:
        return functools.update_wrapper(fn, core, assigned=("__doc__", "__name__", "__qualname__"), updated=())

    return give


def scheduler_of(device: Any) -> Any | None:
    """``device`` when it is a :class:`~liam_gpu.Scheduler`, else None."""
    module = sys.modules.get(_SCHEDULER_MODULE)
    return device if module is not None and isinstance(device, module.Scheduler) else None


def transform_matrix(
    data: Any,
    weights: Any,
    bias: Any = None,
    activation: str | None = None,
    *,
    out: Any = None,
    device: Any = None,
    check_finite: bool = True,
) -> Any:
    """:func:`liam_gpu.transform_matrix` without autograd: on ``device``, a backend or a Scheduler."""
    sched = scheduler_of(device)
    if sched is not None:
        from .alda import ops

        return ops.transform_matrix(sched, data, weights, bias, activation, out=out, check_finite=check_finite)
    return transform.transform_matrix(
        data, weights, bias, activation, out=out, device=device, check_finite=check_finite
    )


@public_face(svd.randomized_svd)
def randomized_svd(a: Any, n_components: int, *, device: Any = None, **options: Any) -> tuple[Any, Any, Any]:
    # On ``device``, a backend or a Scheduler (a stack's items split); the docstring is the core's.
    sched = scheduler_of(device)
    if sched is not None:
        from .alda import ops

        return ops.randomized_svd(sched, a, n_components, **options)
    return svd.randomized_svd(a, n_components, device=device, **options)


@public_face(svd.svd_compress)
def svd_compress(a: Any, k: int | None = None, *, device: Any = None, **options: Any) -> Any:
    # On ``device``, a backend or a Scheduler (a stack's items split); the docstring is the core's.
    sched = scheduler_of(device)
    if sched is not None:
        from .alda import ops

        return ops.svd_compress(sched, a, k, **options)
    return svd.svd_compress(a, k, device=device, **options)
