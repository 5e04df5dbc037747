"""Launch wrapper of ``kernels/transform.cu``: the fused ``act(x @ w.T + bias)``.

Three paths compute the same thing:

``"kernel"``
    Our tiled SIMT GEMM with the bias and activation fused into its epilogue
    (``linear_kernel``), one of several tile configurations chosen by shape.
``"mma"``
    The same fused GEMM on tensor cores (``linear_mma_kernel``: warp-level
    ``mma.sync`` m16n8k16 with ``ldmatrix`` loads, float32 accumulation) for
    float16 and bfloat16 storage on compute capability 8.0 and newer (the
    emulator counts as such and executes the instructions' documented
    semantics).  Taken when ``d_in % 8 == 0`` and x and w start on 16-byte
    boundaries; any other 16-bit launch runs on the SIMT kernel.  With
    ``tf32=True`` float32 storage takes it too (m16n8k8 on TF32 tensor cores,
    operands rounded by ``cvt.rna.tf32.f32``) when ``d_in % 4 == 0`` and the
    same alignment holds; without ``tf32`` float32 never does.
``"blas+epilogue"``
    The array module's matmul (cuBLAS on a GPU) into the output, then our
    ``epilogue_kernel`` applies bias and activation in place: one extra pass
    over the output, worth it where the vendor GEMM is much faster than ours
    (large near-square float32 GEMMs, float16 on tensor cores).

:func:`plan` says which path and tile configuration a shape gets, by the
rules of :mod:`liam_gpu.launch.transform_plan`.  :func:`last_launch` tells
what the latest call on this thread actually launched (path, configuration,
vector or scalar loads, grid), so benchmarks and tests can report it.

The checks here are the kernel's own needs (storage dtype, contiguity,
alignment, no overlap, 32-bit k); shapes and activation names are
validated at the public edge (:mod:`liam_gpu.transform`).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..activations import kernel_list
from .family import KernelBudget, KernelFamily
from .runtime import Runtime, blocks_for, i64, is_aligned, require_contiguous
from .transform_plan import (  # noqa: F401  (re-exported: the planning API of this wrapper)
    BLAS_RULES,
    MIN_TILE_FILL,
    MMA_CONFIGS,
    MMA_K_MULTIPLES,
    MMA_MIN_CAPABILITY,
    MMA_OPT_IN,
    PATH_BLAS,
    PATH_KERNEL,
    PATH_MMA,
    TILE_CONFIGS,
    BlasRule,
    MmaConfig,
    Plan,
    TileConfig,
    choose_config,
    choose_mma_config,
    mma_refusal,
    plan_shape,
    takes_mma,
)

# --------------------------------------------------------------------------- the family

#: Storage dtype -> the C++ type the kernels see it as.  ``"bfloat16"`` has no
#: numpy/CuPy dtype: its arrays are carried as ``uint16`` holding the bits
#: (see :mod:`liam_gpu.bfloat16`), and the caller says so with ``storage=``.
CTYPES: dict[str, str] = {"float32": "float", "float64": "double", "float16": "lg_half", "bfloat16": "lg_bf16"}

#: Elements per 16-byte load (the VEC path) per storage dtype.
VECTOR_WIDTH: dict[str, int] = {"float32": 4, "float64": 2, "float16": 8, "bfloat16": 8}

#: Elements per 16-byte group of the compute type (output vector stores).
GROUP_WIDTH: dict[str, int] = {"float32": 4, "float64": 2, "float16": 4, "bfloat16": 4}

#: Bytes of the compute type per storage dtype (the 16-bit types compute in float).
COMPUTE_ITEMSIZE: dict[str, int] = {"float32": 4, "float64": 8, "float16": 4, "bfloat16": 4}

#: The array dtype that carries each storage dtype.
CARRIERS: dict[str, np.dtype] = {name: np.dtype(np.uint16 if name == "bfloat16" else name) for name in CTYPES}

#: The epilogue-only kernel is a simple grid-stride loop.
EPILOGUE_MAX_REGISTERS = 64

#: Threads per block of the epilogue-only kernel (its launch bounds).
EPILOGUE_THREADS = 256


#: The activation functors' template argument, built once (every launch names its entry).
_ACTS = kernel_list()


def _cbool(flag: bool) -> str:
    return "true" if flag else "false"


def linear_entry(dtype: str, config: TileConfig, vec: bool) -> str:
    """The name expression of one ``linear_kernel`` instantiation.

    The tile shape and the activation functors (:func:`liam_gpu.activations.kernel_list`)
    are template arguments: this table and that list are their only copies.
    """
    min_blocks = config.min_blocks(COMPUTE_ITEMSIZE[dtype])
    return (f"linear_kernel<{CTYPES[dtype]}, {config.bm}, {config.bn}, {config.bk}, {config.tm}, "
            f"{config.tn}, {_cbool(vec)}, {min_blocks}, {_ACTS}>")


def linear_mma_entry(dtype: str, config: MmaConfig) -> str:
    """The name expression of one ``linear_mma_kernel`` instantiation (tensor cores; float32 = TF32)."""
    return (f"linear_mma_kernel<{CTYPES[dtype]}, {config.bm}, {config.bn}, {config.bk}, {config.wm}, "
            f"{config.wn}, {config.min_blocks()}, {_ACTS}>")


#: SASS every tensor-core entry must hold: the mma (HMMA), the ldmatrix
#: shared loads (LDSM) and the 16-byte global loads of its tiles.
MMA_SASS_REQUIRE: tuple[str, ...] = ("HMMA", "LDSM", "LDG.E.128")


def epilogue_entry(dtype: str, vec: bool) -> str:
    """The name expression of one ``epilogue_kernel`` instantiation."""
    return f"epilogue_kernel<{CTYPES[dtype]}, {_cbool(vec)}, {EPILOGUE_THREADS}, {_ACTS}>"


def _family() -> KernelFamily:
    budgets: dict[str, KernelBudget] = {}
    # A GPU compiles one module per storage dtype: a call needs only its own.
    groups: dict[str, str] = {}
    for dtype, configs in TILE_CONFIGS.items():
        compute_itemsize = COMPUTE_ITEMSIZE[dtype]
        for config in configs.values():
            for vec in (True, False):
                name = linear_entry(dtype, config, vec)
                groups[name] = dtype
                budgets[name] = KernelBudget(
                    max_registers=config.max_registers(compute_itemsize),
                    max_shared_bytes=config.shared_bytes(compute_itemsize),
                    # 16-byte loads are the point of the vector path.
                    sass_require=("LDG.E.128",) if vec else (),
                )
        for mma in MMA_CONFIGS.get(dtype, {}).values():
            name = linear_mma_entry(dtype, mma)
            groups[name] = dtype
            budgets[name] = KernelBudget(max_registers=mma.max_registers(), max_shared_bytes=mma.shared_bytes(),
                                         sass_require=MMA_SASS_REQUIRE)
        if dtype not in BLAS_RULES:
            continue  # no vendor-GEMM path (bfloat16), so no epilogue-only kernel
        for vec in (True, False):
            name = epilogue_entry(dtype, vec)
            groups[name] = dtype
            budgets[name] = KernelBudget(max_registers=EPILOGUE_MAX_REGISTERS, max_shared_bytes=0)
    return KernelFamily("transform", "transform.cu", name_expressions=tuple(groups), budgets=budgets,
                        module_groups=groups)


FAMILY = _family()

#: Hardware grid limits (x, y, z).  The kernels use 1-D grids and loop over
#: their work with the grid size as stride, so a launch clamps grid.x to this
#: and stays complete; tests lower it to exercise that loop.
MAX_GRID: tuple[int, int, int] = (2**31 - 1, 65535, 65535)

#: Largest d_in: the k-loop counts in 32 bits (rows, columns and every
#: offset are 64-bit), with room for one k-tile past the end.
MAX_D_IN = 2**31 - 1 - 64


def compute_capability(runtime: Runtime) -> tuple[int, int]:
    """The runtime's device compute capability; the emulator stands for an sm_90 device.

    A runtime that does not say (a test double of kind "cuda") counts as
    having no tensor cores, so nothing takes a path it cannot run.
    """
    cc = getattr(runtime, "compute_capability", None)
    if cc is not None:
        return (int(cc[0]), int(cc[1]))
    return (9, 0) if runtime.kind == "emulator" else (0, 0)


def has_tensor_cores(runtime: Runtime) -> bool:
    """Whether the runtime executes mma.sync m16n8k16 for float16/bfloat16 and m16n8k8 for tf32 (cc >= 8.0)."""
    return compute_capability(runtime) >= MMA_MIN_CAPABILITY


def plan(runtime: Runtime, n: int, d_in: int, d_out: int, dtype: Any, batch: int = 1, *,
         tf32: bool = False) -> Plan:
    """The path and tile configuration :func:`linear` uses for a shape.

    ``dtype`` is a numpy dtype or a storage name (``"bfloat16"``); ``tf32``
    allows float32 on TF32 tensor cores.  Cached per
    (runtime kind, SM count, tensor cores, shape, dtype, tf32) by
    :func:`~liam_gpu.launch.transform_plan.plan_shape`.  The emulator always
    plans a fused kernel (its "GEMM library" would be numpy), with the same
    tile choice a GPU of the same SM count would make.  A ``"mma"`` plan
    becomes the SIMT kernel at launch when x or w is not 16-byte aligned.
    """
    name = dtype if isinstance(dtype, str) and dtype in CTYPES else _dtype_name("x", dtype)
    return plan_shape(runtime.kind, int(runtime.sm_count), int(n), int(d_in), int(d_out), name, int(batch),
                      has_tensor_cores(runtime), bool(tf32))


@dataclass(frozen=True)
class Launch:
    """What one :func:`linear` / :func:`batched_linear` call launched.

    ``path`` is ``"kernel"``, ``"mma"`` or ``"blas+epilogue"``; ``vec`` says
    whether x and w were read with 16-byte loads (always on ``"mma"``).
    """

    path: str
    config: str | None
    vec: bool | None
    vec_out: bool
    grid: tuple[int, int, int]
    block: tuple[int, int, int]


_last = threading.local()


def last_launch() -> Launch | None:
    """The :class:`Launch` of this thread's latest linear call (None before any)."""
    return getattr(_last, "launch", None)


# --------------------------------------------------------------------------- argument checks


def _dtype_name(name: str, dtype: Any, storage: str | None = None, *, storage_hint: bool = True) -> str:
    """The storage name of an array dtype (``storage`` names a carried type such as bfloat16).

    ``storage_hint``: mention ``storage='bfloat16'`` in the error (callers that take it).
    """
    dt = np.dtype(dtype)
    if storage is not None:
        if storage not in CARRIERS:
            raise ValueError(f"storage={storage!r} is unknown; expected one of {', '.join(CARRIERS)}")
        if dt != CARRIERS[storage]:
            raise TypeError(f"{name} has dtype {dt}; {storage} storage is carried as {CARRIERS[storage]}")
        return storage
    if dt.name not in CTYPES or dt != CARRIERS[dt.name]:
        hint = " (and bfloat16 as uint16 bits with storage='bfloat16')" if storage_hint else ""
        raise TypeError(f"{name} has dtype {dt}; the transform kernels take float32, float64 or float16{hint}")
    return dt.name


def _extent(runtime: Runtime, a: Any) -> tuple[int, int]:
    start = runtime.data_ptr(a)
    return start, start + int(a.nbytes)


def _check_no_overlap(runtime: Runtime, out: Any, **inputs: Any) -> None:
    lo, hi = _extent(runtime, out)
    for name, a in inputs.items():
        if a is None or int(a.nbytes) == 0:
            continue
        a_lo, a_hi = _extent(runtime, a)
        if a_lo < hi and lo < a_hi:
            raise ValueError(f"out overlaps {name}; the kernel needs a separate output buffer")


def _check_extents(x: Any, w: Any, bias: Any, out: Any, batched: bool) -> None:
    """Each buffer holds exactly the elements the kernel touches.

    The kernel takes its sizes from fixed axes of x and w (batch, n, d_in,
    d_out) and addresses every buffer with them, so a buffer of another size
    would be read or written out of bounds.  Which shapes a caller may pass,
    and the messages that explain a mismatch, are the public edge's
    (:func:`liam_gpu.transform.check_shapes`).
    """
    lead = 1 if batched else 0
    for name, a, ndim in (("x", x, 2 + lead), ("w", w, 2 + lead), ("out", out, 2 + lead)):
        if a.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
    batch = int(x.shape[0]) if batched else 1
    n, d_in, d_out = int(x.shape[-2]), int(x.shape[-1]), int(w.shape[-2])
    want = {"w": batch * d_out * d_in, "out": batch * n * d_out, "bias": batch * d_out}
    for name, a in (("w", w), ("out", out), ("bias", bias)):
        if a is not None and int(a.size) != want[name]:
            raise ValueError(f"{name} of shape {tuple(a.shape)} does not fit the launch's sizes "
                             f"(batch={batch}, n={n}, d_in={d_in}, d_out={d_out} from x and w)")


def _check(runtime: Runtime, x: Any, w: Any, bias: Any, out: Any, batched: bool, storage: str | None) -> str:
    """The kernel's own needs of one launch; return the storage dtype name.

    One storage dtype (it picks the instantiation), buffers that fit the
    sizes, k within 32 bits, contiguity and no overlap.  Shapes, dtypes,
    the activation and a read-only ``out`` are the public edge's checks
    (:mod:`liam_gpu.transform`), made once per call there.
    """
    dtype = _dtype_name("x", x.dtype, storage)
    for name, a in (("w", w), ("bias", bias), ("out", out)):
        if a is not None and np.dtype(a.dtype) != np.dtype(x.dtype):
            raise TypeError(f"{name} has dtype {a.dtype} but x has {x.dtype}; one dtype per launch")
    _check_extents(x, w, bias, out, batched)
    if int(x.shape[-1]) > MAX_D_IN:
        raise ValueError(f"d_in={x.shape[-1]} is too large: the kernels index k with 32 bits "
                         f"(at most {MAX_D_IN})")
    for name, a in (("x", x), ("w", w), ("bias", bias), ("out", out)):
        if a is not None:
            require_contiguous(name, a)
    _check_no_overlap(runtime, out, x=x, w=w, bias=bias)
    return dtype


def _vector_flags(runtime: Runtime, dtype: str, x: Any, w: Any, out: Any) -> tuple[bool, bool]:
    """(16-byte loads of x and w allowed, group stores of out allowed)."""
    d_in, d_out = int(x.shape[-1]), int(out.shape[-1])
    width, group = VECTOR_WIDTH[dtype], GROUP_WIDTH[dtype]
    vec = d_in % width == 0 and is_aligned(runtime, x, 16) and is_aligned(runtime, w, 16)
    vec_out = d_out % group == 0 and is_aligned(runtime, out, group * out.itemsize)
    return vec, vec_out


# --------------------------------------------------------------------------- launches


def _grid(config: TileConfig | MmaConfig, batch: int, n: int, d_out: int) -> tuple[int, int, int]:
    """One block per output tile (all batch items), capped at grid.x's limit; the kernel loops over the rest."""
    tiles = max(1, batch) * blocks_for(n, config.bm) * blocks_for(d_out, config.bn)
    return (min(tiles, MAX_GRID[0]), 1, 1)


def _run_kernel(runtime, dtype, config_name, x, w, bias, activation, out, batch, n, d_in, d_out) -> Launch:
    config = TILE_CONFIGS[dtype][config_name]
    vec, vec_out = _vector_flags(runtime, dtype, x, w, out)
    grid = _grid(config, batch, n, d_out)
    block = (config.threads, 1, 1)
    fn = runtime.function(FAMILY, linear_entry(dtype, config, vec))
    # Without a bias the kernel never reads that pointer; x stands in for it.
    fn(grid, block, (x, w, x if bias is None else bias, out, i64(batch), i64(n), i64(d_in), i64(d_out),
                     i64(bias is not None), i64(activation), i64(vec_out)))
    return Launch(PATH_KERNEL, config_name, vec, vec_out, grid, block)


def _run_blas(runtime, dtype, x, w, bias, activation, out, batched: bool) -> Launch:
    xp = runtime.xp
    wt = w.transpose(0, 2, 1) if batched else w.T
    # cuBLAS runs on the current device: make it the runtime's.
    device = xp.cuda.Device(runtime.device_id) if runtime.kind == "cuda" else contextlib.nullcontext()
    with device:
        xp.matmul(x, wt, out=out)
    launch = Launch(PATH_BLAS, None, None, False, (0, 0, 0), (0, 0, 0))
    if bias is not None or activation != 0:
        launch = epilogue(runtime, out, bias, activation)
        launch = Launch(PATH_BLAS, None, None, launch.vec_out, launch.grid, launch.block)
    return launch


def _mma_refusal(runtime: Runtime, dtype: str, x: Any, w: Any, tf32: bool) -> str | None:
    """Why the tensor-core kernel cannot take a launch (None when it can): the plan's reasons, then alignment."""
    cc = compute_capability(runtime)
    reason = mma_refusal(dtype, int(x.shape[-1]), cc >= MMA_MIN_CAPABILITY, tf32)
    if reason is not None and cc < MMA_MIN_CAPABILITY:
        reason += f"; this device is {cc[0]}.{cc[1]}"
    if reason is None:
        for name, a in (("x", x), ("w", w)):
            if not is_aligned(runtime, a, 16):
                return f"{name} does not start on a 16-byte boundary"
    return reason


def _run_mma(runtime, dtype, config_name, x, w, bias, activation, out, batch, n, d_in, d_out) -> Launch:
    config = MMA_CONFIGS[dtype][config_name]
    _, vec_out = _vector_flags(runtime, dtype, x, w, out)
    grid = _grid(config, batch, n, d_out)
    block = (config.threads, 1, 1)
    fn = runtime.function(FAMILY, linear_mma_entry(dtype, config))
    # Without a bias the kernel never reads that pointer; x stands in for it.
    fn(grid, block, (x, w, x if bias is None else bias, out, i64(batch), i64(n), i64(d_in), i64(d_out),
                     i64(bias is not None), i64(activation), i64(vec_out)))
    return Launch(PATH_MMA, config_name, True, vec_out, grid, block)


def _choose_path(runtime, dtype, x, w, chosen: Plan, config, path, tf32: bool,
                 without_mma: Plan) -> tuple[str, str | None]:
    """The (path, configuration) a launch runs: forced, implied by ``config``, or planned.

    A configuration name implies its kernel (the SIMT and tensor-core names
    differ); a planned ``"mma"`` that the inputs' alignment refuses becomes
    what the shape would plan without tensor cores (``without_mma``: the
    SIMT kernel, or cuBLAS for a large float32 shape that TF32 had taken);
    a forced ``path="mma"`` that cannot run is an error.
    """
    known = (PATH_KERNEL, PATH_MMA, PATH_BLAS)
    if path is not None and path not in known:
        raise ValueError(f"path={path!r} is unknown; expected one of {', '.join(repr(p) for p in known)}")
    mma_names = MMA_CONFIGS.get(dtype, {})
    forced = path is not None or config in mma_names
    if config is not None and config not in TILE_CONFIGS[dtype] and config not in mma_names:
        names = ", ".join(repr(c) for c in (*TILE_CONFIGS[dtype], *mma_names))
        raise ValueError(f"config={config!r} is unknown for {dtype}; expected one of {names}")
    if path is None:
        if config is not None and config in mma_names:
            path = PATH_MMA
        elif config is not None and chosen.path == PATH_MMA:
            path = PATH_KERNEL
        else:
            path = chosen.path
    if path == PATH_BLAS and dtype not in BLAS_RULES:
        raise ValueError(f"path={PATH_BLAS!r} cannot compute {dtype}: the array module's matmul has no such dtype")
    if path == PATH_MMA:
        refusal = _mma_refusal(runtime, dtype, x, w, tf32)
        if refusal is not None:
            if forced:
                raise ValueError(f"path={PATH_MMA!r} cannot run this launch: {refusal}")
            # Planned, but the inputs are misaligned: what the shape plans without
            # tensor cores (the SIMT kernel takes any alignment).
            path, chosen = without_mma.path, without_mma
    if path == PATH_MMA:
        if config is not None and config not in mma_names:
            raise ValueError(f"config={config!r} is a SIMT tile; path={PATH_MMA!r} takes one of "
                             f"{', '.join(repr(c) for c in mma_names)}")
        return path, config or (chosen.config if chosen.path == PATH_MMA else None)
    if path == PATH_KERNEL:
        if config is not None and config not in TILE_CONFIGS[dtype]:
            raise ValueError(f"config={config!r} is a tensor-core tile; path={PATH_KERNEL!r} takes one of "
                             f"{', '.join(repr(c) for c in TILE_CONFIGS[dtype])}")
        return path, config or (chosen.config if chosen.path == PATH_KERNEL else None)
    return path, None


def _linear(runtime, x, w, bias, activation, out, batched, config, path, storage, tf32) -> Any:
    dtype = _check(runtime, x, w, bias, out, batched, storage)
    batch = int(x.shape[0]) if batched else 1
    n, d_in, d_out = (int(s) for s in (x.shape[-2], x.shape[-1], w.shape[-2]))
    chosen = plan(runtime, n, d_in, d_out, dtype, batch, tf32=tf32)
    without_mma = plan_shape(runtime.kind, int(runtime.sm_count), n, d_in, d_out, dtype, batch, False, False)
    path, name = _choose_path(runtime, dtype, x, w, chosen, config, path, tf32, without_mma)
    if out.size == 0:
        launch = Launch(path, None, None, False, (0, 0, 0), (0, 0, 0))
    elif path == PATH_BLAS:
        launch = _run_blas(runtime, dtype, x, w, bias, activation, out, batched)
    elif path == PATH_MMA:
        name = name or choose_mma_config(n, d_out, dtype, batch, runtime.sm_count)
        launch = _run_mma(runtime, dtype, name, x, w, bias, int(activation), out, batch, n, d_in, d_out)
    else:
        name = name or choose_config(n, d_out, dtype, batch, runtime.sm_count)
        launch = _run_kernel(runtime, dtype, name, x, w, bias, int(activation), out, batch, n, d_in, d_out)
    _last.launch = launch
    return out


def linear(runtime: Runtime, x: Any, w: Any, bias: Any | None, activation: int, out: Any, *,
           config: str | None = None, path: str | None = None, storage: str | None = None,
           tf32: bool = False) -> Any:
    """``out[:] = act(x @ w.T + bias)`` on ``runtime``.

    Parameters
    ----------
    runtime
        The :class:`~liam_gpu.launch.runtime.Runtime` that executes the launch.
    x
        ``(n, d_in)``, C-contiguous, float32 / float64 / float16, or uint16
        holding bfloat16 bits with ``storage="bfloat16"``.
    w
        ``(d_out, d_in)``, same dtype.
    bias
        ``(d_out,)`` or None.
    activation
        A code from :data:`liam_gpu.activations.ACTIVATIONS`.
    out
        ``(n, d_out)``, same dtype, writeable, not overlapping the inputs.
    config
        Force a tile configuration (tests, benchmarks): a SIMT name of
        :data:`TILE_CONFIGS` or a tensor-core name of :data:`MMA_CONFIGS`,
        which also picks that kernel; default from :func:`plan`.
    path
        Force ``"kernel"`` (SIMT), ``"mma"`` (tensor cores; a ValueError
        says why when the launch does not qualify) or ``"blas+epilogue"``;
        default from :func:`plan`.
    storage
        ``"bfloat16"`` when the arrays are ``uint16`` bfloat16 bits; None
        reads the storage type from the dtype.
    tf32
        Allow float32 on TF32 tensor cores (the ``"mma"`` path, inputs
        rounded to 10 mantissa bits, float32 accumulation) where the device
        has them and the launch qualifies; ignored for other dtypes.  False
        (default): float32 is computed in float32 throughout.

    Returns
    -------
    array
        ``out``.  :func:`last_launch` describes what ran.
    """
    return _linear(runtime, x, w, bias, activation, out, False, config, path, storage, tf32)


def batched_linear(runtime: Runtime, x: Any, w: Any, bias: Any | None, activation: int, out: Any, *,
                   config: str | None = None, path: str | None = None, storage: str | None = None,
                   tf32: bool = False) -> Any:
    """Per-item :func:`linear`: x ``(B, n, d_in)``, w ``(B, d_out, d_in)``, bias ``(B, d_out)``.

    One launch over every tile of every item (a 1-D grid, see :func:`_grid`).  Parameters as for
    :func:`linear`, with the leading batch axis.
    """
    return _linear(runtime, x, w, bias, activation, out, True, config, path, storage, tf32)


def epilogue(runtime: Runtime, y: Any, bias: Any | None, activation: int) -> Launch:
    """``y[...] = act(y + bias)`` in place, over a finished GEMM result.

    Parameters
    ----------
    runtime
        Where to launch.
    y
        ``(n, d_out)`` with bias ``(d_out,)``, or ``(B, n, d_out)`` with bias
        ``(B, d_out)`` (one bias row per batch item).  C-contiguous, writeable.
    bias
        As above, or None.
    activation
        An activation code.

    Returns
    -------
    Launch
        Grid, block and whether the 16-byte path ran.
    """
    # The kernel's own needs, as for linear: y's layout, a bias that fits it,
    # one dtype, contiguity, no overlap (y is a result the caller just made).
    if y.ndim not in (2, 3):
        raise ValueError(f"y must be 2-D or 3-D, got shape {tuple(y.shape)}")
    dtype = _dtype_name("y", y.dtype, storage_hint=False)
    require_contiguous("y", y)
    if bias is not None:
        want = tuple(y.shape[:-2]) + (y.shape[-1],)
        if tuple(bias.shape) != want:
            raise ValueError(f"bias must have shape {want} for y of shape {tuple(y.shape)}, got {tuple(bias.shape)}")
        if np.dtype(bias.dtype) != np.dtype(y.dtype):
            raise TypeError(f"bias has dtype {bias.dtype} but y has {y.dtype}")
        require_contiguous("bias", bias)
        _check_no_overlap(runtime, y, bias=bias)
    d_out = int(y.shape[-1])
    rows = int(y.size) // max(1, d_out)
    rows_per_item = int(y.shape[-2]) if y.ndim == 3 else rows
    width = VECTOR_WIDTH[dtype]
    vec = d_out % width == 0 and is_aligned(runtime, y, 16)
    steps = y.size // width if vec else y.size
    block = (EPILOGUE_THREADS, 1, 1)
    # A grid-stride loop: enough blocks to fill every SM several times over.
    grid = (min(blocks_for(steps, EPILOGUE_THREADS), 16 * int(runtime.sm_count), MAX_GRID[0]), 1, 1)
    if y.size:
        fn = runtime.function(FAMILY, epilogue_entry(dtype, vec))
        fn(grid, block, (y, y if bias is None else bias, i64(rows), i64(d_out), i64(rows_per_item),
                         i64(bias is not None), i64(activation)))
    return Launch(PATH_BLAS, None, vec, vec, grid, block)
