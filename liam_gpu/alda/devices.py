"""Scheduler device names (the device the calling chunk runs on lives in :mod:`liam_gpu.backends.current`).

A scheduler device is ``"<kind>:<i>"``:

``"cuda:i"``
    The CUDA device ``i`` (a worker thread with its own streams).
``"cpu:i"``
    A virtual CPU device: one worker thread computing with the ``cpu``
    backend.  Several of them run the whole scheduler without a GPU.
``"emulator:i"``
    A virtual device computing with the ``emulator`` backend (our CUDA
    kernels on the CPU emulator), to test the kernel path under the scheduler.

``"cpu:fallback"`` is the worker the scheduler adds when every listed device
has failed and ``cpu_fallback`` is on.
"""
from __future__ import annotations

import re
from typing import Any

#: The name of the worker that finishes the work when every device has failed.
FALLBACK = "cpu:fallback"

_NAME = re.compile(r"^(cuda|cpu|emulator)(?::(\d+))?$")


def backend_name(device: str) -> str:
    """The ``device=`` value of the backend behind a scheduler device.

    ``"cpu:2"`` and ``"cpu:fallback"`` → ``"cpu"``, ``"emulator:0"`` →
    ``"emulator"``, ``"cuda:1"`` → ``"cuda:1"``.
    """
    kind = device.partition(":")[0]
    return device if kind == "cuda" else kind


def is_cuda(device: str) -> bool:
    """Whether a scheduler device is a real CUDA device."""
    return device.startswith("cuda:")


def cuda_index(device: str) -> int:
    """The CUDA ordinal of a ``"cuda:i"`` scheduler device."""
    return int(device.split(":", 1)[1])


def resolve_devices(devices: Any) -> tuple[str, ...]:
    """Canonical, validated device names from the ``devices=`` argument.

    ``"all"`` means every CUDA device CuPy can see, in ordinal order, or
    ``("cpu:0",)`` when there is none.  A single name or a sequence of names is
    accepted; a bare kind means index 0 (``"cuda"`` → ``"cuda:0"``).

    Raises
    ------
    TypeError
        ``devices`` is neither ``"all"``, a name, nor a sequence of names.
    ValueError
        An unknown or repeated name, an empty list, a CUDA device that does
        not exist, or an emulator device without a C++ compiler.
    """
    from .. import backends

    if isinstance(devices, str):
        if devices.strip().lower() == "all":
            count = backends.cuda_device_count()
            return tuple(f"cuda:{i}" for i in range(count)) or ("cpu:0",)
        devices = [devices]
    if not isinstance(devices, (list, tuple)):
        raise TypeError(
            f"devices must be 'all', a device name or a list of names like ['cuda:0', 'cpu:1'], got {devices!r}"
        )
    if not devices:
        raise ValueError("devices is empty; give at least one device, e.g. ['cpu:0'], or 'all'")
    names: list[str] = []
    for entry in devices:
        if not isinstance(entry, str):
            raise TypeError(f"devices must hold device names (str), got {entry!r}")
        match = _NAME.match(entry.strip().lower())
        if match is None:
            raise ValueError(
                f"devices: {entry!r} is not a scheduler device; expected 'cuda:i', 'cpu:i' or 'emulator:i'"
            )
        name = f"{match.group(1)}:{int(match.group(2) or 0)}"
        if name in names:
            raise ValueError(f"devices: {name!r} is listed twice; each device gets one worker")
        names.append(name)
    count = None
    for name in names:
        if is_cuda(name):
            count = backends.cuda_device_count() if count is None else count
            if cuda_index(name) >= count:
                have = "no CUDA device is visible to CuPy" if count == 0 else f"only {count} CUDA device(s) exist"
                raise ValueError(f"devices: {name!r} is not available: {have}")
        elif name.startswith("emulator") and not backends.emulator_available():
            raise ValueError(f"devices: {name!r} needs the CUDA emulator, which needs a C++ compiler (g++)")
    return tuple(names)
