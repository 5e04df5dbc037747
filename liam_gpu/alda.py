"""ALDA: split a batch into fixed chunks and run them on several devices.

A first, sequential version of the interface (``Scheduler``, ``DeviceFault``,
``current_device``) so that the operations can import it; the threaded,
fault-tolerant scheduler replaces this module.
"""
from __future__ import annotations

import contextvars
from typing import Any, Callable

import numpy as np

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("liam_gpu_alda_device", default=None)


class DeviceFault(RuntimeError):
    """A device failed while computing a chunk; the chunk is retried elsewhere."""


def current_device() -> str | None:
    """The device the calling chunk runs on (``"cpu:0"``, ``"cuda:1"``), or None outside a worker."""
    return _CURRENT.get()


def _backend_name(device: str) -> str:
    kind, _, _ = device.partition(":")
    return device if kind == "cuda" else kind


class Scheduler:
    """Run a function over fixed chunks of a batch on a list of devices."""

    def __init__(self, devices: Any = "all", *, chunk_size: int | None = None, cpu_fallback: bool = True) -> None:
        if devices == "all":
            from .backends import cuda_device_count

            count = cuda_device_count()
            devices = [f"cuda:{i}" for i in range(count)] or ["cpu:0"]
        self.devices = list(devices)
        self.chunk_size = chunk_size
        self.cpu_fallback = cpu_fallback

    def map(self, fn: Callable[[Any], Any], batch: Any, *, chunk_size: int | None = None, progress: bool = False) -> Any:
        n = len(batch)
        size = chunk_size or self.chunk_size or max(1, -(-n // 64))
        parts = []
        for i, start in enumerate(range(0, max(n, 1), size)):
            token = _CURRENT.set(self.devices[i % len(self.devices)])
            try:
                parts.append(fn(batch[start:start + size]))
            finally:
                _CURRENT.reset(token)
        return np.concatenate(parts, axis=0)

    def transform_matrix(self, data, weights, bias=None, activation=None, *, out=None, check_finite=True):
        from . import transform

        def run(chunk):
            return transform.transform_matrix(
                chunk, weights, bias, activation, device=_backend_name(current_device()), check_finite=check_finite
            )

        lead = tuple(np.shape(data)[:-1])
        x = np.asarray(data).reshape(-1, np.shape(data)[-1])
        y = self.map(run, x)
        y = y.reshape(lead + y.shape[-1:])
        if out is not None:
            out[...] = y
            return out
        return y
