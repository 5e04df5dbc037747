"""Shared fixtures: run one test body on every backend present.

``backend_name`` is parametrized over ``cpu``, ``emulator`` (when g++ exists)
and ``cuda:0`` (marked ``gpu``; skipped unless CuPy sees a device).
"""
from __future__ import annotations

import pytest

from liam_gpu.backends import cuda_device_count, emulator_available


def _gpu_present() -> bool:
    return cuda_device_count() > 0


def pytest_collection_modifyitems(config, items):
    if _gpu_present():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device visible to CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "emulator",
        id="emulator",
        marks=pytest.mark.skipif(not emulator_available(), reason="the emulator needs g++"),
    ),
    pytest.param("cuda:0", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    """A device name accepted by ``device=``: every backend present, one at a time."""
    return request.param


@pytest.fixture
def rng():
    """A seeded generator, so failures reproduce."""
    import numpy as np

    return np.random.default_rng(20261128)
