"""Planning of the transform: which path and which tile configuration a shape gets.

The rules live here, beside the launch wrapper (:mod:`liam_gpu.launch.transform`)
that carries them out: the tile shapes (the one table of them: the wrapper
passes them to ``kernels/transform.cu`` as template arguments), the
:data:`BLAS_RULES` that send large shapes to the vendor GEMM plus our epilogue,
and :func:`choose_config`'s thresholds; and the tensor-core tiles
(:data:`MMA_CONFIGS`) with :func:`choose_mma_config`.  They are written from reasoning about
an H200 until they are measured there (see ``docs/benchmarks.md``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .runtime import blocks_for

# --------------------------------------------------------------------------- tile configurations


@dataclass(frozen=True)
class TileConfig:
    """One instantiation of ``linear_kernel``: a block computes ``bm x bn`` outputs.

    Attributes
    ----------
    name
        ``"large"``, ``"medium"``, ``"skinny"`` or ``"short"``.
    bm, bn
        Output rows and columns per block.
    bk
        Depth of one shared-memory k-tile.
    tm, tn
        Output rows and columns per thread (the register block).
    """

    name: str
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        """Threads per block."""
        return (self.bm // self.tm) * (self.bn // self.tn)

    def min_blocks(self, itemsize: int) -> int:
        """Blocks per SM asked of ptxas (``linear_kernel``'s ``MIN_BLOCKS`` template argument).

        A thread with 64 float accumulators gets the whole register file
        (capped at 128 registers it spills); smaller tiles ask for 512
        resident threads, i.e. at most 128 registers per thread.
        """
        return 1 if self.tm * self.tn * itemsize >= 256 else 512 // self.threads

    def max_registers(self, itemsize: int) -> int:
        """Registers per thread that the launch bounds leave (the budget ptxas must fit)."""
        return min(255, 65536 // (self.threads * self.min_blocks(itemsize)))

    def shared_bytes(self, itemsize: int) -> int:
        """Static shared memory: the double-buffered tiles, or the output staging rows.

        Mirrors ``LinearTile::Shared`` in transform.cu (a union of the two);
        ``itemsize`` is that of the *compute* type (float for float16).
        """
        group = 16 // itemsize
        tiles = 2 * self.bk * (self.bm + group) + 2 * self.bk * (self.bn + group)
        staging = (self.bm // self.tm) * group * (self.bn + group)
        return max(tiles, staging) * itemsize


# Tile shapes per storage dtype.  The 16-bit types compute in float32, so they
# share the float32 shapes; float64 takes smaller per-thread blocks, so that its
# accumulators (two registers per double) fit the same register target.
_SINGLE = (
    TileConfig("large", 128, 128, 8, 8, 8),   # 256 threads, 64 outputs each: highest FLOP per byte of smem
    TileConfig("medium", 64, 64, 16, 4, 4),   # 256 threads: 4x the blocks of "large" for mid-size outputs
    TileConfig("skinny", 128, 32, 8, 8, 4),   # 128 threads: small d_out, many rows
    TileConfig("short", 16, 64, 16, 4, 4),    # 64 threads: few rows (GEMV-like), long d_in
)
_DOUBLE = (
    TileConfig("large", 64, 64, 8, 4, 4),
    TileConfig("medium", 32, 32, 16, 2, 2),
    TileConfig("skinny", 64, 16, 8, 4, 2),
    TileConfig("short", 16, 32, 16, 2, 2),
)
TILE_CONFIGS: dict[str, dict[str, TileConfig]] = {
    "float32": {c.name: c for c in _SINGLE},
    "float16": {c.name: c for c in _SINGLE},
    "bfloat16": {c.name: c for c in _SINGLE},
    "float64": {c.name: c for c in _DOUBLE},
}



@dataclass(frozen=True)
class MmaConfig:
    """One instantiation of ``linear_mma_kernel``: tensor cores, ``bm x bn`` outputs per block.

    Attributes
    ----------
    name
        ``"mma_large"``, ``"mma_medium"`` or ``"mma_skinny"`` (distinct from the
        SIMT names, so ``config=`` alone says which kernel runs).
    bm, bn
        Output rows and columns per block.
    bk
        Depth of one shared-memory k-tile in elements (a multiple of ``mma_k``;
        ``bk * itemsize`` = 64 bytes of every row for all the tiles here).
    wm, wn
        Output rows and columns per warp: ``(wm / 16) x (wn / 8)`` mma tiles.
    mma_k
        The k of one mma instruction: 16 (m16n8k16, float16/bfloat16) or 8
        (m16n8k8, TF32 for float32 storage).
    itemsize
        Bytes per stored element: 2 for the 16-bit types, 4 for float32 (tf32).
    """

    name: str
    bm: int
    bn: int
    bk: int
    wm: int
    wn: int
    mma_k: int = 16
    itemsize: int = 2

    @property
    def warps(self) -> int:
        """Warps per block."""
        return (self.bm // self.wm) * (self.bn // self.wn)

    @property
    def threads(self) -> int:
        """Threads per block."""
        return 32 * self.warps

    @property
    def mma_per_k_tile(self) -> int:
        """mma.sync instructions one warp issues per k-tile: HMMA in its SASS k-loop.

        One ``HMMA.16816.F32[.BF16]`` per m16n8k16, one ``HMMA.1688.F32.TF32``
        per m16n8k8 tf32 (sm_80 and sm_90, measured: docs/verification.md).
        """
        return (self.bk // self.mma_k) * (self.wm // 16) * (self.wn // 8)

    @property
    def ldmatrix_per_k_tile(self) -> int:
        """ldmatrix.x4 one warp issues per k-tile: one per m16 slice of A, one per two n8 slices of B."""
        return (self.bk // self.mma_k) * (self.wm // 16 + self.wn // 16)

    def min_blocks(self) -> int:
        """Blocks per SM asked of ptxas (``linear_mma_kernel``'s ``MIN_BLOCKS``).

        Two resident 256-thread blocks (128 registers per thread) for the
        8-warp tile, whose 64 accumulators, fragments and staged loads fit
        that; four 128-thread blocks for the 4-warp tiles.
        """
        return 1024 // (2 * self.threads)

    def max_registers(self) -> int:
        """Registers per thread that the launch bounds leave (the budget ptxas must fit)."""
        return min(255, 65536 // (self.threads * self.min_blocks()))

    def shared_bytes(self) -> int:
        """Static shared memory: the double-buffered operand tiles, or the float staging rows.

        Mirrors ``MmaTile::Shared`` in transform.cu: rows of ``bk`` stored
        elements plus one 16-byte chunk of padding, and ``(bm / wm) * 16``
        staged rows of ``bn + 8`` floats.
        """
        tiles = 2 * (self.bm + self.bn) * (self.bk * self.itemsize + 16)
        staging = (self.bm // self.wm) * 16 * (self.bn + 8) * 4
        return max(tiles, staging)


#: The tensor-core tiles, for the 16-bit storage types on compute capability
#: 8.0 and newer (mma.sync m16n8k16 with float32 accumulation).
_MMA = (
    MmaConfig("mma_large", 128, 128, 32, 64, 32),  # 8 warps of 64x32: 16 mma per k16 step and warp
    MmaConfig("mma_medium", 64, 64, 32, 32, 32),   # 4 warps of 32x32: 4x the blocks of "mma_large"
    MmaConfig("mma_skinny", 128, 32, 32, 32, 32),  # 4 warps stacked in m: narrow outputs, many rows
)
#: The same tiles for float32 storage on TF32 tensor cores (m16n8k8): a
#: k-tile of 16 floats is the same 64 bytes a row as 32 16-bit values, so the
#: shared layout, the ldmatrix addressing and the loads per thread are the same.
_MMA_TF32 = tuple(MmaConfig(c.name, c.bm, c.bn, c.bk // 2, c.wm, c.wn, mma_k=8, itemsize=4) for c in _MMA)
MMA_CONFIGS: dict[str, dict[str, MmaConfig]] = {
    "float16": {c.name: c for c in _MMA},
    "bfloat16": {c.name: c for c in _MMA},
    "float32": {c.name: c for c in _MMA_TF32},
}

#: Storage dtypes whose tensor-core path changes the arithmetic (float32 on
#: TF32: inputs rounded to 10 mantissa bits) and so runs only when the caller
#: allows it (``tf32=True``, the public ``precision="tf32"``).
MMA_OPT_IN: frozenset[str] = frozenset({"float32"})

#: Per storage dtype, the multiple of d_in the tensor-core path needs (16 bytes of elements).
MMA_K_MULTIPLES: dict[str, int] = {"float16": 8, "bfloat16": 8, "float32": 4}

#: Oldest compute capability with mma.sync m16n8k16 for float16 and bfloat16, and m16n8k8 for tf32.
MMA_MIN_CAPABILITY = (8, 0)

# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class BlasRule:
    """Shapes (all three sizes at least these) that go to the vendor GEMM + our epilogue."""

    min_rows: int
    min_d_in: int
    min_d_out: int

    def applies(self, n: int, d_in: int, d_out: int) -> bool:
        """Whether a shape is large enough for this rule."""
        return n >= self.min_rows and d_in >= self.min_d_in and d_out >= self.min_d_out


#: Per dtype, when the CUDA runtime prefers cuBLAS + ``epilogue_kernel`` for an
#: unbatched call.  Reasoned defaults, to be replaced by H200 measurements:
#:
#: * float32: cuBLAS SGEMM (no TF32: results must stay float32-accurate;
#:   with ``tf32=True`` and tensor cores the shape takes our TF32 tile instead,
#:   see :func:`plan_shape`)
#:   reaches most of the FP32 peak on large near-square shapes; our SIMT
#:   kernel is expected at 70-80% of it, more than the epilogue's extra pass
#:   (one read + write of the output) costs once the GEMM has >= 512 depth
#:   and a >= 1024 x 1024 output.  Skinny and short shapes stay fused.
#: * float64: cuBLAS DGEMM uses the FP64 tensor cores (2x the FP64 SIMT rate).
#: * float16: cuBLAS HGEMM runs on tensor cores with float32 accumulation,
#:   far beyond any SIMT kernel once the GEMM is non-trivial.
#: * bfloat16 has no entry: CuPy's matmul has no bfloat16 dtype, so it always
#:   takes our fused kernel.
BLAS_RULES: dict[str, BlasRule] = {
    "float32": BlasRule(min_rows=1024, min_d_in=512, min_d_out=1024),
    "float64": BlasRule(min_rows=512, min_d_in=256, min_d_out=512),
    "float16": BlasRule(min_rows=256, min_d_in=256, min_d_out=256),
}

#: A tile configuration is taken only while at least this fraction of its
#: padded tiles holds real outputs (ragged edges waste the rest).
MIN_TILE_FILL = 0.75

PATH_KERNEL = "kernel"
PATH_MMA = "mma"
PATH_BLAS = "blas+epilogue"


@dataclass(frozen=True)
class Plan:
    """Which path computes a shape, and with which tile configuration.

    Attributes
    ----------
    path
        ``"kernel"`` (fused, SIMT), ``"mma"`` (fused, tensor cores) or ``"blas+epilogue"``.
    config
        The tile configuration name on the two kernel paths, else ``None``.
    """

    path: str
    config: str | None


def _tile_fill(n: int, d_out: int, c: TileConfig | MmaConfig) -> float:
    """Fraction of the padded tile grid that holds real outputs."""
    return (n * d_out) / (blocks_for(n, c.bm) * c.bm * blocks_for(d_out, c.bn) * c.bn)


def choose_config(n: int, d_out: int, dtype: str, batch: int, sm_count: int) -> str:
    """The tile configuration for a shape (the default table).

    In order:

    1. ``"large"``, then ``"medium"``: the first whose tiles are at least
       :data:`MIN_TILE_FILL` full and that yields at least one block per SM
       (big tiles reuse each loaded value most, but only pay when every SM is
       busy and little of the tile is padding);
    2. ``"short"`` for few rows (``n`` within one "short" tile);
    3. ``"skinny"`` for a narrow output (``d_out`` within one "skinny" tile);
    4. else ``"medium"`` (the most blocks of the general shapes).
    """
    configs = TILE_CONFIGS[dtype]
    name = _first_filling(configs, ("large", "medium"), n, d_out, batch, sm_count)
    if name is not None:
        return name
    if n <= configs["short"].bm:
        return "short"
    if d_out <= configs["skinny"].bn:
        return "skinny"
    return "medium"


def _first_filling(configs: dict, names: tuple[str, ...], n: int, d_out: int, batch: int,
                   sm_count: int) -> str | None:
    """The first of ``names`` whose tiles are at least :data:`MIN_TILE_FILL` full and
    give every SM a block, or None."""
    for name in names:
        c = configs[name]
        blocks = batch * blocks_for(n, c.bm) * blocks_for(d_out, c.bn)
        if blocks >= sm_count and _tile_fill(n, d_out, c) >= MIN_TILE_FILL:
            return name
    return None


def choose_mma_config(n: int, d_out: int, dtype: str, batch: int, sm_count: int) -> str:
    """The tensor-core tile configuration for a shape (:data:`MMA_CONFIGS`).

    ``"mma_large"``, then ``"mma_medium"``: the first whose tiles are at least
    :data:`MIN_TILE_FILL` full and that yields at least one block per SM; else
    ``"mma_skinny"`` for a narrow output (``d_out`` within one of its tiles),
    else ``"mma_medium"``.
    """
    configs = MMA_CONFIGS[dtype]
    name = _first_filling(configs, ("mma_large", "mma_medium"), n, d_out, batch, sm_count)
    if name is not None:
        return name
    if d_out <= configs["mma_skinny"].bn:
        return "mma_skinny"
    return "mma_medium"


def mma_refusal(dtype: str, d_in: int, tensor_cores: bool, tf32: bool) -> str | None:
    """Why a launch of this dtype and depth cannot take the tensor-core kernel (alignment aside), or None."""
    if dtype not in MMA_CONFIGS:
        return f"the tensor-core kernel takes float16, bfloat16 and (with tf32=True) float32, not {dtype}"
    if dtype in MMA_OPT_IN and not tf32:
        return f"{dtype} runs on tensor cores only as TF32, which needs tf32=True (precision='tf32')"
    if not tensor_cores:
        return "the device's compute capability is below 8.0 (no mma.sync for 16-bit types or tf32)"
    if d_in % MMA_K_MULTIPLES[dtype]:
        return f"d_in={d_in} is not a multiple of {MMA_K_MULTIPLES[dtype]}"
    return None


def takes_mma(dtype: str, d_in: int, tensor_cores: bool, tf32: bool) -> bool:
    """Whether a launch of this dtype and depth goes to the tensor-core kernel (alignment aside)."""
    return mma_refusal(dtype, d_in, tensor_cores, tf32) is None


@functools.lru_cache(maxsize=4096)
def plan_shape(kind: str, sm_count: int, n: int, d_in: int, d_out: int, dtype: str, batch: int,
               tensor_cores: bool = False, tf32: bool = False) -> Plan:
    """The :class:`Plan` of one shape on a runtime of ``kind`` with ``sm_count`` SMs (cached).

    ``dtype`` is a storage name (a key of :data:`TILE_CONFIGS`);
    ``tensor_cores`` says whether the device has mma.sync for 16-bit types
    and TF32 (compute capability >= :data:`MMA_MIN_CAPABILITY`; the emulator
    does); ``tf32`` whether float32 may use TF32 tensor cores.  Float16 and
    bfloat16 with ``d_in % 8 == 0``, and float32 with ``tf32`` and
    ``d_in % 4 == 0``, plan the tensor-core kernel, the rest the SIMT kernel,
    with the same tile choice a GPU of the same SM count would make.  Only
    the CUDA runtime has a vendor GEMM (:data:`BLAS_RULES`); a float32 shape
    allowed TF32 on tensor cores takes our TF32 tile rather than cuBLAS
    SGEMM, so that TF32 means the same arithmetic at every size and on every
    kernel backend.  (The launcher still falls back to the SIMT kernel for
    inputs that are not 16-byte aligned.)
    """
    mma = takes_mma(dtype, d_in, tensor_cores, tf32)
    rule = BLAS_RULES.get(dtype)
    if (kind == "cuda" and batch == 1 and rule is not None and rule.applies(n, d_in, d_out)
            and not (mma and dtype in MMA_OPT_IN)):
        return Plan(PATH_BLAS, None)
    if mma:
        return Plan(PATH_MMA, choose_mma_config(n, d_out, dtype, batch, sm_count))
    return Plan(PATH_KERNEL, choose_config(n, d_out, dtype, batch, sm_count))
