"""Philox4x32-10, the counter-based generator behind every random test matrix.

This is the numpy reference of ``kernels/philox.cuh``: the same integer stream
bit for bit, and the same float formulas, so that the CPU backend, the
emulator and a GPU build the same Gaussian sketch matrix for the same seed.

The generator (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC'11) maps a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit
key ``(k0, k1)`` to four 32-bit words through ten rounds of::

    (hi0, lo0) = M0 * c0          (M0 = 0xD2511F53, 64-bit product split in halves)
    (hi1, lo1) = M1 * c2          (M1 = 0xCD9E8D57)
    c = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)

with the key bumped by ``(0x9E3779B9, 0xBB67AE85)`` (mod 2**32) before every
round but the first.  No state is carried from one call to the next, so any
element of the stream is computed independently of every other.

The Gaussian test matrix ``Omega`` (rows x columns) is defined element by
element: ``Omega[j, c]`` is output ``c % 4`` of the call with

* counter ``(c // 4, j mod 2**32, j // 2**32, 0)``,
* key ``(seed mod 2**32, seed // 2**32)`` for a 64-bit ``seed``,

so it depends on ``(seed, j, c)`` only: not on the matrix size, the sketch
width, the batch item, the chunking or the backend.  Widening the sketch from
``l`` to ``l'`` columns keeps the first ``l`` columns.

The four words ``(x0, x1, x2, x3)`` of a call become four normals by the
Box-Muller transform on the pairs ``(x0, x1)`` and ``(x2, x3)``::

    r = sqrt(-2 log u(x0)),  z0 = r cos(pi 2u(x1)),  z1 = r sin(pi 2u(x1))

(and likewise ``z2, z3`` from ``x2, x3``).  The uniform ``u`` is formed in the
output dtype so that it is exact, and never 0 or 1:

* float32: ``u(x) = ((x >> 9) + 0.5) * 2**-23``, i.e. ``(2k + 1) 2**-24`` for
  the top 23 bits ``k``: 24 significant bits, exact in float32, in
  ``[2**-24, 1 - 2**-24]``;
* float64: ``u(x) = (x + 0.5) * 2**-32``: exact in float64, in
  ``[2**-33, 1 - 2**-33]``.

So the radius is finite (at most 5.8 in float32, 6.8 in float64; the
truncated tail has probability below 1e-8, irrelevant for a sketch), and the
uniforms are bitwise equal on every backend.  ``sin(pi x)``/``cos(pi x)`` are
evaluated after an exact reduction of ``x`` (:func:`sincospi`; CUDA's
``sincospi`` on a GPU); ``log``, ``sqrt``, ``sin`` and ``cos`` are the
platform's own (numpy here, libdevice on a GPU, the C library in the
emulator), so the normals agree to a few units in the last place, not bit for
bit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Round multipliers and key increments of Philox4x32 (Random123).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
#: Rounds of the standard variant.
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_U64 = np.uint64
_U32 = np.uint32


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key ``(k0, k1)`` of a 64-bit seed: its low and high 32-bit words.

    Raises
    ------
    ValueError
        ``seed`` is negative or does not fit in 64 bits.
    """
    seed = int(seed)
    if not 0 <= seed <= _MASK64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return seed & _MASK32, seed >> 32


def _rounds(c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, key: tuple[int, int],
            rounds: int) -> None:
    """Philox rounds in place on uint64 arrays holding 32-bit words.

    uint64 makes the 32 x 32-bit products exact, and every step is one
    in-place numpy operation on the whole batch of counters.
    """
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1, low, shift = _U64(PHILOX_M0), _U64(PHILOX_M1), _U64(_MASK32), _U64(32)
    p0, p1 = np.empty_like(c0), np.empty_like(c0)
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        np.multiply(c0, m0, out=p0)
        np.multiply(c2, m1, out=p1)
        # (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
        np.right_shift(p1, shift, out=c0)
        c0 ^= c1
        c0 ^= _U64(k0)
        np.right_shift(p0, shift, out=c2)
        c2 ^= c3
        c2 ^= _U64(k1)
        np.bitwise_and(p1, low, out=c1)
        np.bitwise_and(p0, low, out=c3)


def philox4x32(counter: Any, key: tuple[int, int], rounds: int = PHILOX_ROUNDS) -> np.ndarray:
    """Philox4x32 of many counters under one key.

    Parameters
    ----------
    counter
        ``(4, N)`` array-like of 32-bit words ``(c0, c1, c2, c3)`` (or a
        4-sequence of equal-length arrays / scalars).
    key
        ``(k0, k1)``, 32-bit words.
    rounds
        Number of rounds (10 for Philox4x32-10).

    Returns
    -------
    numpy.ndarray
        ``(4, N)`` uint32: the four output words per counter.
    """
    words = [np.atleast_1d(np.asarray(c)) for c in counter]
    if len(words) != 4:
        raise ValueError(f"counter must have 4 words, got {len(words)}")
    state = [w.astype(_U32).astype(_U64) for w in np.broadcast_arrays(*words)]
    _rounds(*state, key, rounds)
    out = np.empty((4,) + state[0].shape, dtype=_U32)
    for t, word in enumerate(state):
        out[t] = word  # exact: every word is below 2**32
    return out


def _omega_words(seed: int, rows: int, groups: int, row0: int, group0: int) -> list[np.ndarray]:
    """The four output words (uint64 arrays of shape (rows, groups)) behind a block of Omega."""
    j = np.arange(row0, row0 + rows, dtype=_U64)
    state = [
        np.tile(np.arange(group0, group0 + groups, dtype=_U64), rows),
        np.repeat(j & _U64(_MASK32), groups),
        np.repeat(j >> _U64(32), groups),
        np.zeros(rows * groups, dtype=_U64),
    ]
    _rounds(*state, seed_key(seed), PHILOX_ROUNDS)
    return [w.reshape(rows, groups) for w in state]


def omega_bits(seed: int, rows: int, groups: int, row0: int = 0, group0: int = 0) -> np.ndarray:
    """The raw words behind a block of the test matrix.

    Returns
    -------
    numpy.ndarray
        ``(rows, groups, 4)`` uint32: ``[i, g, t]`` is word ``t`` of the call for
        matrix row ``row0 + i`` and column group ``group0 + g`` (columns
        ``4 (group0 + g) .. 4 (group0 + g) + 3``).
    """
    out = np.empty((rows, groups, 4), dtype=_U32)
    for t, word in enumerate(_omega_words(seed, rows, groups, row0, group0)):
        out[..., t] = word
    return out


def uniform(bits: np.ndarray, dtype: Any) -> np.ndarray:
    """Map 32-bit words to uniforms in (0, 1), exactly, as the kernel does (see module docs).

    ``bits`` is an unsigned integer array holding 32-bit values.
    """
    dt = np.dtype(dtype)
    if dt == np.float32:
        top = np.right_shift(bits, bits.dtype.type(9)).astype(np.float32)  # < 2**23: exact
        return (top + np.float32(0.5)) * np.float32(2.0**-23)
    if dt == np.float64:
        return (bits.astype(np.float64) + 0.5) * 2.0**-32
    raise TypeError(f"dtype must be float32 or float64, got {dt}")


def _pair(a: np.ndarray, b: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Box-Muller: the normals ``(r cos, r sin)`` of the words ``(a, b)``."""
    radius = np.sqrt(dt.type(-2.0) * np.log(uniform(a, dt)))
    sin, cos = sincospi(dt.type(2.0) * uniform(b, dt))
    cos *= radius
    sin *= radius
    return cos, sin


def box_muller(bits: np.ndarray, dtype: Any) -> np.ndarray:
    """Four normals from each ``(..., 4)`` group of words: ``(x0, x1) -> (z0, z1)``, ``(x2, x3) -> (z2, z3)``."""
    dt = np.dtype(dtype)
    out = np.empty(bits.shape, dtype=dt)
    out[..., 0], out[..., 1] = _pair(bits[..., 0], bits[..., 1], dt)
    out[..., 2], out[..., 3] = _pair(bits[..., 2], bits[..., 3], dt)
    return out


def sincospi(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sin(pi x), cos(pi x))`` in ``x``'s dtype, for the angles of Box-Muller.

    ``x`` is reduced exactly to ``r`` in ``[-1/4, 1/4]`` plus a quarter-turn
    count ``q``; ``sin``/``cos`` of ``pi r`` are then rotated by ``q`` quarter
    turns (a swap and sign changes, exact).  CUDA's ``sincospi`` does the same
    reduction, which is why the kernels use it rather than ``sinf``/``cosf``
    of ``2 pi u``.
    """
    dt = x.dtype.type
    n = np.rint(dt(2.0) * x)
    r = x - dt(0.5) * n  # exact: x and n / 2 are multiples of the same power of two
    t = dt(np.pi) * r
    sr, cr = np.sin(t), np.cos(t)
    # Quarter turns q = n mod 4 and the swap/sign pattern, in float arithmetic
    # (exact: every factor is 0, 1 or -1), which numpy runs faster than masks.
    q = n - dt(4.0) * np.floor(n * dt(0.25))
    odd = q - dt(2.0) * np.floor(q * dt(0.5))
    even = dt(1.0) - odd
    sin = even * sr + odd * cr  # q = 1, 3: sin(pi r + q pi / 2) is +-cos(pi r)
    cos = even * cr + odd * sr
    sin *= dt(1.0) - dt(2.0) * (q >= 2)                 # negative for q = 2, 3
    cos *= dt(1.0) - dt(2.0) * ((q == 1) | (q == 2))    # negative for q = 1, 2
    return sin, cos


def omega(seed: int, rows: int, cols: int, dtype: Any = np.float64, *, row0: int = 0, col0: int = 0) -> np.ndarray:
    """A block of the Gaussian test matrix: ``Omega[row0:row0+rows, col0:col0+cols]``.

    Parameters
    ----------
    seed
        64-bit seed (the Philox key).
    rows, cols
        Size of the block.
    dtype
        float32 or float64; the uniforms and the Box-Muller transform are
        computed in this dtype, as on a GPU.
    row0, col0
        Offset of the block in the (conceptually infinite) matrix.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` C-contiguous array of standard normals.
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    rows, cols, row0, col0 = int(rows), int(cols), int(row0), int(col0)
    if rows < 0 or cols < 0 or row0 < 0 or col0 < 0:
        raise ValueError("rows, cols, row0 and col0 must be non-negative")
    if rows == 0 or cols == 0:
        return np.empty((rows, cols), dtype=dt)
    group0, skip = divmod(col0, 4)
    groups = -(-(skip + cols) // 4)
    w0, w1, w2, w3 = _omega_words(seed, rows, groups, row0, group0)
    z = np.empty((rows, groups, 4), dtype=dt)
    z[..., 0], z[..., 1] = _pair(w0, w1, dt)
    z[..., 2], z[..., 3] = _pair(w2, w3, dt)
    z = z.reshape(rows, 4 * groups)
    return z if skip == 0 and cols == 4 * groups else np.ascontiguousarray(z[:, skip:skip + cols])
