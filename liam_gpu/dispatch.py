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


transform_matrix = _routed(transform.transform_matrix)
randomized_svd = _routed(svd.randomized_svd)
svd_compress = _routed(svd.svd_compress)
