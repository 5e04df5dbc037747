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


def scheduler_of(device: Any) -> Any | None:
    """``device`` when it is a :class:`~liam_gpu.Scheduler`, else None."""
    module = sys.modules.get(_SCHEDULER_MODULE)
    return device if module is not None and isinstance(device, module.Scheduler) else None


def _routed(core: Callable[..., Any]) -> Callable[..., Any]:
    """``core`` on ``device=``, a backend; or the scheduler's operation of the same name on a Scheduler.

    The result carries ``core``'s name and docstring, and its signature
    through ``__wrapped__``.
    """

    def route(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        sched = scheduler_of(device)
        if sched is not None:
            from .alda import ops

            return getattr(ops, core.__name__)(sched, *args, **kwargs)
        return core(*args, device=device, **kwargs)

    return functools.update_wrapper(route, core, assigned=("__doc__", "__name__", "__qualname__"), updated=())


_core_transform = _routed(transform.transform_matrix)


def _torch_cpu(data: Any, weights: Any, bias: Any, out: Any, device: Any) -> Any | None:
    """:mod:`liam_gpu.torch_ops` when it computes this call (torch CPU tensors), else None."""
    if "torch" not in sys.modules or type(data).__module__.split(".")[0] != "torch":
        return None
    from . import torch_ops

    return torch_ops if torch_ops.takes(data, weights, bias, out, device) else None


def transform_matrix(data: Any, weights: Any, bias: Any = None, activation: Any = None, *,
                     out: Any = None, device: Any = None, check_finite: bool = True,
                     precision: str | None = None) -> Any:
    transform.allows_tf32(precision)  # an unknown precision is a ValueError on every route
    # Dense torch CPU tensors: torch's GEMM, after the core's checks (issue 18); the rest: _routed.
    # (The CPU has no TF32: precision changes nothing there.)
    ops = _torch_cpu(data, weights, bias, out, device)
    if ops is not None:
        result = ops.transform_matrix(data, weights, bias, activation, out=out, check_finite=check_finite)
        if result is not None:
            return result
    return _core_transform(data, weights, bias, activation, out=out, device=device, check_finite=check_finite,
                           precision=precision)


functools.update_wrapper(transform_matrix, transform.transform_matrix,
                         assigned=("__doc__", "__name__", "__qualname__"), updated=())
randomized_svd = _routed(svd.randomized_svd)
svd_compress = _routed(svd.svd_compress)
