"""The current device: the scheduler device that the calling chunk runs on.

A :class:`~liam_gpu.Scheduler` worker marks its thread with its device
(``"cuda:1"``, ``"cpu:2"``, ``"emulator:0"``); ``device=None`` inside a
mapped function then means that device (see :func:`liam_gpu.backends.canonical_device`).
It lives here, below the scheduler, so that resolving a default device never
imports the scheduler.
"""
from __future__ import annotations

import contextvars

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("liam_gpu_current_device", default=None)


def current_device() -> str | None:
    """The scheduler device running the calling chunk, e.g. ``"cuda:1"`` or ``"cpu:2"``.

    Returns
    -------
    str or None
        The device name inside a function mapped by
        :meth:`~liam_gpu.Scheduler.map` (and inside its ``fault_injector``);
        ``None`` anywhere else, including threads the function starts itself.
    """
    return _current.get()


def set_current(name: str) -> None:
    """Mark the calling (worker) thread as running on ``name``."""
    _current.set(name)
