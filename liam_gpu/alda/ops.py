"""The package's operations over a :class:`~liam_gpu.Scheduler`.

``liam_gpu.transform_matrix``, ``liam_gpu.svd_compress`` and
``liam_gpu.randomized_svd`` with ``device=sched`` land here.  Each splits its batch
with :meth:`Scheduler.map` and calls the ordinary operation per chunk with
``device=`` set to the worker's backend (``cpu:i`` → ``"cpu"``,
``emulator:i`` → ``"emulator"``, ``cuda:i`` → ``"cuda:i"``), so a chunk is
computed exactly as it would be on its own.

Bad input is reported as the operation itself reports it (``ValueError`` /
``TypeError`` naming the argument), not wrapped in
:class:`~liam_gpu.alda.errors.ChunkError`: the scheduler is an execution
detail, and the same call must fail the same way on any ``device=``.
"""
from __future__ import annotations

from typing import Any, Callable

from .. import arrays
from ..backends.current import current_device
from .devices import backend_name, cuda_index, is_cuda
from .errors import ChunkError


def _on_device(device: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Parameters shared by every chunk, as arrays on ``device`` (copied once per device)."""
    if is_cuda(device):
        import cupy

        with cupy.cuda.Device(cuda_index(device)):
            return tuple(None if v is None else cupy.asarray(v) for v in values)
    return tuple(v if v is None or not arrays.is_cupy(v) else v.get() for v in values)


def _per_device(values: tuple[Any, ...]) -> Callable[[], tuple[Any, ...]]:
    """``get()`` → ``values`` on the calling worker's device, each device's copy made once."""
    copies: dict[str, tuple[Any, ...]] = {}

    def get() -> tuple[Any, ...]:
        device = current_device()
        found = copies.get(device)
        if found is None:
            # One worker per device: no two threads fill the same key.
            found = copies[device] = _on_device(device, values)
        return found

    return get


def _unwrap_bad_input(err: ChunkError) -> BaseException:
    """The operation's own ValueError/TypeError (noting the chunk), or the ChunkError itself."""
    cause = err.__cause__
    if isinstance(cause, (ValueError, TypeError)):
        note = getattr(cause, "add_note", None)
        if note is not None:
            note(f"(raised for {err.chunk.describe()} on scheduler device {err.device})")
        return cause
    return err


def transform_matrix(sched, data, weights, bias=None, activation=None, *, out=None, check_finite=True,
                     precision=None):
    """``act(data @ weights.T + bias)`` with the rows (or batch items) split over ``sched``.

    Non-batched weights ``(d_out, d_in)``: the rows of ``data`` (all leading
    axes flattened) are the batch, and every device holds its own copy of the
    weights and bias.  Batched weights ``(B, d_out, d_in)``: data, weights and
    bias are split together along ``B``.  ``out`` receives the joined result.
    Arguments, results and errors are as for :func:`liam_gpu.transform_matrix`:
    the call is checked by the core's :func:`liam_gpu.transform.prepare`, here
    in the caller's memory and without a cast, and every chunk is cast to the
    result dtype and computed on its worker by
    :func:`liam_gpu.transform.compute_part` (an integer or float16 input is
    never widened whole in the caller's memory, and crosses to a device at
    its own size).
    """
    from .. import transform
    from ..activations import activation_code

    code = activation_code(activation)
    tf32 = transform.allows_tf32(precision)
    kind = arrays.common_kind(data=data, weights=weights, bias=bias, out=out)
    # Every conversion, in and out, on the caller's stream and device (torch refuses
    # to export a tensor of another device than its current one).
    with arrays.caller_stream(kind):
        # All of the input and out are checked here, before any chunk writes out: a NaN
        # in the last chunk must not leave the first ones written (as on every device=).
        # Uncast: each chunk is cast on its worker (a float16 or integer input crosses at its own size).
        call = transform.prepare(data, weights, bias, out, kind, check_finite=check_finite, cast=False)

        def run(x: Any, w: Any, b: Any = None) -> Any:
            return transform.compute_part(call, x, w, b, code, backend_name(current_device()), tf32)

        if call.batched:
            batch = (call.x, call.w) if call.b is None else (call.x, call.w, call.b)
            fn = run
        else:
            params = _per_device((call.w, call.b))
            batch = call.x.reshape(-1, call.x.shape[-1])

            def fn(rows: Any) -> Any:
                return run(rows, *params())

        dest, target = call.dest, None
        # A contiguous out receives the rows directly (each worker writes its own),
        # unless it overlaps an input: then a chunk's rows could overwrite another
        # chunk's input before it is read, so out is written once every chunk is done.
        if dest is not None and dest.flags.c_contiguous and not call.separate:
            target = dest if call.batched else dest.reshape(-1, call.out_shape[-1])
        try:
            y = sched.map(fn, batch, out=target)
        except ChunkError as err:
            raise _unwrap_bad_input(err) from None
        if dest is None:
            return call.result(y.reshape(call.out_shape), kind)
        if target is None:
            dest[...] = y.reshape(call.out_shape)
        return out


def _one_seed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``random_state`` resolved once, in the caller: every chunk gets the same integer seed.

    (A generator or ``None`` drawn from inside the workers would give each
    chunk a different seed, in an order that depends on the timing.)
    """
    from ..svd import seed_from_random_state

    return {**kwargs, "random_state": seed_from_random_state(kwargs.get("random_state", 0))}


def _single(sched, call: Callable[[Any], Any], a: Any) -> Any:
    """A single matrix: one chunk, on the first healthy device, with the same fault handling."""
    return sched.map(lambda items: [call(items[0])], [a], combine=lambda parts: parts[0][0])


def randomized_svd(sched, a, n_components, **kwargs):
    """:func:`liam_gpu.randomized_svd` of a stack ``(B, m, n)``, its items split over ``sched``.

    Each chunk is factored by ``randomized_svd(chunk, ..., device=<the
    worker's backend>)`` with the one seed resolved here, and ``U``, ``S``,
    ``Vt`` are concatenated along ``B``.  Every item of a stack is factored on
    its own with the same seed, so chunking changes nothing.
    """
    from .. import svd

    kwargs = _one_seed(kwargs)
    kind = arrays.kind_of(a)
    # Every conversion, in and out, on the caller's stream and device (torch refuses
    # to export a tensor of another device than its current one).
    with arrays.caller_stream(kind):
        x = arrays.to_compute(a, kind)

        def factor(m: Any) -> Any:
            return svd.randomized_svd(m, n_components, device=backend_name(current_device()), **kwargs)

        try:
            if getattr(x, "ndim", 0) != 3:
                return _single(sched, factor, a)
            u, s, vt = sched.map(factor, x)
        except ChunkError as err:
            raise _unwrap_bad_input(err) from None
        return tuple(arrays.from_compute(f, kind) for f in (u, s, vt))


def svd_compress(sched, a, k=None, *, tol=None, **kwargs):
    """:func:`liam_gpu.svd_compress` of a stack ``(B, m, n)``, its items split over ``sched``.

    Each chunk of the stack is compressed by ``svd_compress(chunk, ...,
    device=<the worker's backend>)`` with one seed resolved here; the factors
    come home and the parts are joined by :meth:`liam_gpu.LowRank.concatenate`.
    A single matrix is one chunk.

    With ``tol``, a stack gets one rank, the largest any chunk chose (as
    ``svd_compress`` gives a stack one rank); chunks that chose less are
    compressed again at that rank in a second map.  The result is the same on
    any number of devices, though not always bitwise the unscheduled call's,
    whose rank is chosen over the whole stack at once.
    """
    from .. import svd
    from ..lowrank import LowRank

    kwargs = _one_seed(kwargs)
    kind = arrays.kind_of(a)
    # Every conversion, in and out, on the caller's stream and device (torch refuses
    # to export a tensor of another device than its current one).
    with arrays.caller_stream(kind):
        x = arrays.to_compute(a, kind)

        def compress(m: Any, rank: Any = k, target: Any = tol, **extra: Any) -> Any:
            device = backend_name(current_device())
            return svd.svd_compress(m, rank, tol=target, device=device, **{**kwargs, **extra})

        def factors(m: Any) -> tuple[Any, ...]:
            low = compress(m)
            return (low.U, low.S, low.Vt, low.relative_error)

        try:
            if getattr(x, "ndim", 0) != 3:
                return _single(sched, compress, a)
            parts = sched.map(factors, x, combine=list)
            if tol is not None:
                parts = _one_rank(sched, x, parts, compress)
            joined = LowRank.concatenate([LowRank(u, s, vt, relative_error=e) for u, s, vt, e in parts])
        except ChunkError as err:
            raise _unwrap_bad_input(err) from None
        if kind.library != "torch":
            return joined
        return LowRank(
            *(arrays.from_compute(f, kind) for f in (joined.U, joined.S, joined.Vt)),
            relative_error=joined.relative_error,
        )


def _one_rank(sched, x: Any, parts: list[tuple[Any, ...]], compress: Callable[..., Any]) -> list[tuple[Any, ...]]:
    """Raise every part of a ``tol``-mode stack to the largest rank any part chose."""
    rank = max(int(p[1].shape[-1]) for p in parts)
    ranges, start = [], 0
    for p in parts:
        ranges.append((start, start + int(p[0].shape[0])))
        start = ranges[-1][1]
    redo = [i for i, p in enumerate(parts) if int(p[1].shape[-1]) < rank]
    if not redo:
        return parts

    def again(indices: list[int]) -> list[tuple[Any, ...]]:
        lo, hi = ranges[indices[0]]
        low = compress(x[lo:hi], rank=rank, target=None, max_rank=None)
        return [(low.U, low.S, low.Vt, low.relative_error)]

    redone = sched.map(again, redo, chunk_size=1)
    parts = list(parts)
    for i, part in zip(redo, redone):
        parts[i] = part
    return parts
