"""BLAS threads of the CPU backend: how many numpy's BLAS may use, and a limit for one call.

The fused CPU transform (:mod:`liam_gpu.backends.cpu`) runs its own threads,
each calling BLAS single-threaded, so that BLAS's pool and ours are never busy
at once.  The count and the limit come from ``threadpoolctl`` (the ``fast``
extra); without it the transform keeps one thread of ours and BLAS's own.
The limit is set around one call and restored after it, never left set.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_lock = threading.Lock()
_controllers: list[Any] | None = None
_pool: ThreadPoolExecutor | None = None
_holders = 0  # calls inside blas_limited now
_saved: list[int] = []  # the limits they replaced


def _blas() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries loaded (numpy's among them), or []."""
    global _controllers
    if _controllers is None:
        with _lock:
            if _controllers is None:
                try:
                    import numpy  # noqa: F401  (its BLAS is loaded before we look)
                    from threadpoolctl import ThreadpoolController
                except ImportError:
                    _controllers = []
                else:
                    _controllers = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _controllers


_own: tuple[list[Any], list[Any]] | None = None  # (controllers, numpy's among them), found once


def _numpys(libs: list[Any]) -> list[Any]:
    """numpy's own libraries among ``libs`` (by path: ``realpath`` costs 34 us a call, so once)."""
    global _own
    if _own is None or _own[0] is not libs:
        import os

        import numpy

        home = os.path.dirname(os.path.realpath(numpy.__file__))
        roots = (home + os.sep, home + ".libs" + os.sep)
        _own = (libs, [lib for lib in libs if os.path.realpath(lib.filepath).startswith(roots)])
    return _own[1]


def blas_threads() -> int:
    """Threads numpy's BLAS may use now (the caller's limits included); 1 without threadpoolctl.

    numpy's own library where it can be told apart (a wheel's, in numpy's
    directory or its ``numpy.libs`` beside it); else the fewest of those loaded.  Not the most: a library
    loaded after the caller's ``threadpool_limits`` (scipy's, imported by a
    later call) keeps its default and would override the caller's limit.
    """
    libs = _blas()
    if not libs:
        return 1
    own = _numpys(libs)
    return max(lib.num_threads for lib in own) if own else min(lib.num_threads for lib in libs)


@contextlib.contextmanager
def blas_limited(threads: int) -> Iterator[None]:
    """BLAS limited to ``threads`` for the ``with`` block, then restored.

    Calls that overlap (the scheduler's CPU devices are threads of one process)
    share one limit: the first sets it, the last restores what was there before.
    """
    global _holders, _saved
    libs = _blas()
    with _lock:
        if _holders == 0:
            _saved = [lib.num_threads for lib in libs]
            for lib in libs:
                lib.set_num_threads(threads)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                for lib, n in zip(libs, _saved):
                    lib.set_num_threads(n)


def pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads (grown when asked for more)."""
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < workers:  # noqa: SLF001  (no public size)
            # The smaller pool is not shut down: a concurrent call may still be about to
            # submit to it.  Once nothing holds it, its idle threads exit with it.
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="liam-gpu-cpu")
        return _pool
