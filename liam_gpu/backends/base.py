"""The primitives every backend supplies; the algorithms above are written once over them."""
from __future__ import annotations

from typing import Any

import numpy as np


class Backend:
    """Where a computation runs, and the primitive operations it offers.

    Attributes
    ----------
    name
        ``"cpu"``, ``"emulator"`` or ``"cuda:N"``.
    kind
        ``"cpu"``, ``"emulator"`` or ``"cuda"``.
    xp
        The array module of the backend's arrays (numpy or cupy).
    """

    name: str = ""
    kind: str = ""
    xp: Any = np

    # -- memory ------------------------------------------------------------------
    def asarray(self, x: Any) -> Any:
        """A numpy/CuPy array as this backend's array (copied across host/device if needed)."""
        raise NotImplementedError

    def to_host(self, x: Any) -> np.ndarray:
        """A backend array as a numpy array."""
        raise NotImplementedError

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Uninitialised backend memory."""
        return self.xp.empty(shape, dtype=dtype)

    # -- transform ---------------------------------------------------------------
    def linear(self, x: Any, w: Any, bias: Any | None, activation: int, out: Any) -> Any:
        """``out[:] = act(x @ w.T + bias)``; x (n, d_in), w (d_out, d_in), out (n, d_out).

        All arrays are C-contiguous backend arrays of one dtype; ``activation``
        is a code from :mod:`liam_gpu.activations`.
        """
        raise NotImplementedError

    def batched_linear(self, x: Any, w: Any, bias: Any | None, activation: int, out: Any) -> Any:
        """Per-item :meth:`linear`: x (B, n, d_in), w (B, d_out, d_in), bias (B, d_out), out (B, n, d_out)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<liam_gpu backend {self.name}>"
