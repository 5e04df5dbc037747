"""Tier-1 verification: every kernel compiles cleanly for real GPUs, no GPU needed.

(a) every registered family x entry point x arch passes the NVRTC/ptxas check
    and, where cuobjdump is installed, the SASS check;
(b) planted faults show that the check catches what it claims to catch, with a
    message naming the kernel and the reason.
"""
from __future__ import annotations


import pytest

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) not installed")

from liam_gpu.launch import families  # noqa: E402
from liam_gpu.launch.family import KernelBudget  # noqa: E402
from liam_gpu.toolchain import (  # noqa: E402
    ARCHS,
    CUBIN_ARCHS,
    check_family,
    check_source,
    compile_entry_points,
    compile_family,
)
from liam_gpu.toolchain import sass  # noqa: E402
from liam_gpu.toolchain.__main__ import main  # noqa: E402

needs_cuobjdump = pytest.mark.skipif(not sass.have_cuobjdump(), reason="nvidia-cuda-cuobjdump not installed")

# --------------------------------------------------------------------------- (a) declared families


def _cases(archs: tuple[str, ...]) -> list:
    # liam_gpu.launch.FAMILIES is written out, never empty: no fallback case is needed.
    return [pytest.param(fam.name, entry, arch, id=f"{fam.name}-{entry}-{arch}")
            for fam in families().values() for entry in fam.name_expressions for arch in archs]


def _compiled(family: str, arch: str):
    # compile_family is memoized: one compile per (family, arch) serves every test.
    return compile_family(families()[family], arch)


@pytest.mark.parametrize(("family", "entry", "arch"), _cases(ARCHS))
def test_family_compiles_cleanly(family: str, entry: str, arch: str) -> None:
    fam = families()[family]
    problems = [p for p in check_family(fam, arch, result=_compiled(family, arch)) if p.entry in (entry, None)]
    assert not problems, "\n\n".join(map(str, problems))


@needs_cuobjdump
@pytest.mark.parametrize(("family", "entry", "arch"), _cases(CUBIN_ARCHS))
def test_family_sass(family: str, entry: str, arch: str) -> None:
    fam = families()[family]
    result = _compiled(family, arch)
    if not result.success:
        pytest.fail(f"family {family!r}, arch {arch}: does not compile (see test_family_compiles_cleanly)")
    budgets = {name: fam.budget(name) for name in fam.name_expressions}
    problems = [p for p in sass.check_sass(family, result, budgets) if p.entry == entry]
    assert not problems, "\n\n".join(map(str, problems))


# --------------------------------------------------------------------------- (b) planted faults

CLEAN = r"""
template <typename T, int N>
__global__ void scale(const T* __restrict__ x, T* __restrict__ y, T a) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) y[i] = a * x[i];
}
"""


def _kinds(problems) -> set[str]:
    return {p.kind for p in problems}


#: The oldest architecture CUDA 13 still builds for (Turing: T4, RTX 20xx).
OLDEST_ARCH = "sm_75"


def _groups() -> list:
    return [pytest.param(fam.name, group, id=f"{fam.name}-{group or 'all'}")
            for fam in families().values() for group in dict.fromkeys(map(fam.group, fam.name_expressions))]


@pytest.mark.parametrize(("family", "group"), _groups())
def test_every_module_group_compiles_for_the_oldest_gpu(family: str, group: str) -> None:
    # A GPU loader compiles one module per group with every entry of it, so one
    # sm_80-only instruction (mma.sync, cvt.rna.tf32, cvt.rn.bf16) outside a
    # __CUDA_ARCH__ guard would take down every entry of the group on a T4, even
    # those the launcher picks there (the SIMT kernels).
    fam = families()[family]
    from liam_gpu.launch.family import compile_options

    result = compile_entry_points(fam.code(), fam.group_members(group), arch=OLDEST_ARCH, options=compile_options())
    assert result.success, result.log


@pytest.mark.parametrize("arch", ARCHS)
def test_clean_kernel_passes(arch: str) -> None:
    result = compile_entry_points(CLEAN, ["scale<float, 256>"], arch=arch, options=("-std=c++17",))
    assert result.success, result.log
    info = result.entries["scale<float, 256>"]
    assert info.lowered_name.startswith("_Z5scaleIfLi256EEvPKT_PS0_S0_")
    if arch in CUBIN_ARCHS:
        assert result.output == "cubin" and result.binary[:4] == b"\x7fELF"
        assert 0 < info.registers < 64 and info.shared_bytes == 0
        assert info.spill_store_bytes == info.spill_load_bytes == info.stack_frame_bytes == 0
    else:
        assert result.output == "ptx" and b".entry _Z5scale" in result.binary
        assert info.registers is None
    assert check_source("planted", CLEAN, ["scale<float, 256>"], arch=arch) == []


def test_syntax_error_is_reported() -> None:
    src = "__global__ void broken(float* y) { y[0] = 1.0f }\n"  # missing ';'
    problems = check_source("planted", src, ["broken"], arch="sm_90")
    assert _kinds(problems) == {"error"}
    msg = str(problems[0])
    assert msg.startswith("family 'planted', kernel 'broken', arch sm_90: NVRTC compile failed:")
    assert 'error: expected a ";"' in msg


def test_unknown_name_expression_is_reported() -> None:
    problems = check_source("planted", CLEAN, ["scale<float, 256>", "nope"], arch="sm_90")
    assert any(p.kind == "error" for p in problems)
    assert "'nope'" in str(problems[0])


# Sixty-four live accumulators under __launch_bounds__(1024, 2) leave ptxas
# 32 registers per thread: it has to spill on sm_80 and sm_90.
SPILLER = r"""
__global__ void __launch_bounds__(1024, 2) pressure(const float* __restrict__ in, float* out, int n) {
    float acc[64];
#pragma unroll
    for (int j = 0; j < 64; ++j) acc[j] = in[j * n + threadIdx.x];
    for (int k = 0; k < n; ++k) {
#pragma unroll
        for (int j = 0; j < 64; ++j) acc[j] = acc[j] * acc[(j + 1) % 64] + in[k];
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 64; ++j) s += acc[j];
    out[threadIdx.x] = s;
}
"""


@pytest.mark.parametrize("arch", CUBIN_ARCHS)
def test_spills_are_reported(arch: str) -> None:
    result = compile_entry_points(SPILLER, ["pressure"], arch=arch)
    info = result.entries["pressure"]
    assert result.success and info.spill_store_bytes > 0 and info.spill_load_bytes > 0
    problems = check_source("planted", SPILLER, ["pressure"], arch=arch, result=result)
    spill = [p for p in problems if p.kind == "spill"]
    assert spill and spill[0].entry == "pressure"
    assert f"family 'planted', kernel 'pressure', arch {arch}: registers spill to local memory" in spill[0].message
    assert f"{info.spill_store_bytes} bytes spill stores" in spill[0].message
    # --warn-on-spills also puts a ptxas warning in the log.
    assert "warning" in _kinds(problems)


def test_register_budget_is_enforced() -> None:
    result = compile_entry_points(CLEAN, ["scale<float, 256>"], arch="sm_90")
    used = result.entries["scale<float, 256>"].registers
    problems = check_source("planted", CLEAN, ["scale<float, 256>"], arch="sm_90",
                            budget=KernelBudget(max_registers=4), result=result)
    assert _kinds(problems) == {"registers"}
    assert str(problems[0]) == (f"family 'planted', kernel 'scale<float, 256>', arch sm_90: "
                                f"uses {used} registers, over its budget of 4")


def test_shared_memory_budget_is_enforced() -> None:
    src = r"""
    __global__ void tiled(float* y) {
        __shared__ float tile[2048];
        tile[threadIdx.x] = y[threadIdx.x];
        __syncthreads();
        y[threadIdx.x] = tile[2047 - threadIdx.x];
    }
    """
    problems = check_source("planted", src, ["tiled"], arch="sm_80",
                            budget={"tiled": KernelBudget(max_shared_bytes=4096)})
    assert _kinds(problems) == {"smem"}
    assert "kernel 'tiled', arch sm_80: uses 8192 bytes of static shared memory, over its budget of 4096" \
        in str(problems[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_warning_is_a_failure(arch: str) -> None:
    # NVRTC 13.0 warns by default: #177-D "variable ... was declared but never referenced".
    src = "__global__ void sloppy(float* y) { int unused = 3; y[0] = 1.0f; }\n"
    problems = check_source("planted", src, ["sloppy"], arch=arch)
    assert _kinds(problems) == {"warning"}
    msg = str(problems[0])
    assert f"family 'planted', kernel 'sloppy', arch {arch}: the compile log has warnings" in msg
    assert 'warning #177-D: variable "unused" was declared but never referenced' in msg


def test_kernel_names_do_not_look_like_warnings() -> None:
    # "ptxas info" lines name kernels; a kernel called "warning" is not a warning.
    src = 'extern "C" __global__ void warning(float* y) { y[0] = 1.0f; }\n'
    assert check_source("planted", src, ["warning"], arch="sm_90") == []


# --------------------------------------------------------------------------- (b) SASS

VECTOR = r"""
extern "C" __global__ void copy4(const float* __restrict__ x, float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    reinterpret_cast<float4*>(y)[i] = reinterpret_cast<const float4*>(x)[i];
}
extern "C" __global__ void copy1(const float* __restrict__ x, float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[i];
}
"""

# A local array indexed by run-time data cannot live in registers.
LOCAL_ARRAY = r"""
extern "C" __global__ void gather(const int* idx, float* y, int n) {
    float table[256];
    for (int i = 0; i < 256; ++i) table[i] = y[i * n];
    y[threadIdx.x] = table[idx[threadIdx.x]];
}
"""


@needs_cuobjdump
@pytest.mark.parametrize("arch", CUBIN_ARCHS)
def test_sass_require_vector_loads(arch: str) -> None:
    need = KernelBudget(sass_require=("LDG.E.128",))
    result = compile_entry_points(VECTOR, ["copy4", "copy1"], arch=arch)
    fns = sass.function_sass(result)
    assert any(sass.matches("LDG.E.128", m) for m in sass.mnemonic_histogram(fns["copy4"]))
    problems = sass.check_sass("planted", result, {"copy4": need, "copy1": need})
    assert [p.entry for p in problems] == ["copy1"]
    assert problems[0].message.startswith(
        f"family 'planted', kernel 'copy1', arch {arch}: SASS lacks required LDG.E.128 (LDG forms present: LDG.E")


@needs_cuobjdump
def test_sass_forbid_from_budget() -> None:
    result = compile_entry_points(VECTOR, ["copy1"], arch="sm_90")
    problems = check_source("planted", VECTOR, ["copy1"], arch="sm_90", sass=True, result=result,
                            budget=KernelBudget(sass_forbid=("STG",)))
    assert _kinds(problems) == {"sass"}
    assert "kernel 'copy1', arch sm_90: SASS has STG (STG.E x1); its budget forbids it" in str(problems[0])


@needs_cuobjdump
def test_local_memory_is_rejected() -> None:
    result = compile_entry_points(LOCAL_ARRAY, ["gather"], arch="sm_90")
    assert result.entries["gather"].stack_frame_bytes == 1024
    problems = check_source("planted", LOCAL_ARRAY, ["gather"], arch="sm_90", sass=True, result=result)
    assert _kinds(problems) == {"warning", "stack", "sass"}
    sass_msgs = sorted(str(p) for p in problems if p.kind == "sass")
    assert len(sass_msgs) == 2
    assert sass_msgs[0].startswith("family 'planted', kernel 'gather', arch sm_90: SASS has LDL (")
    assert sass_msgs[1].startswith("family 'planted', kernel 'gather', arch sm_90: SASS has STL (")
    assert all(m.endswith("local memory is forbidden") for m in sass_msgs)
    assert "uses a 1024-byte stack frame" in next(str(p) for p in problems if p.kind == "stack")


@needs_cuobjdump
def test_histogram_and_templates() -> None:
    result = compile_entry_points(CLEAN, ["scale<float, 256>", "scale<double, 256>"], arch="sm_90")
    fns = sass.function_sass(result)
    assert set(fns) == {"scale<float, 256>", "scale<double, 256>"}
    assert sass.mnemonic_histogram(fns["scale<float, 256>"])["FMUL"] == 1
    assert sass.mnemonic_histogram(fns["scale<double, 256>"])["DMUL"] == 1
    assert fns["scale<float, 256>"][-1] != "NOP"  # alignment padding is dropped


def test_mnemonic_matching() -> None:
    assert sass.mnemonic("@!P0 LDG.E.128.CONSTANT R4, desc[UR4][R2.64]") == "LDG.E.128.CONSTANT"
    assert sass.matches("LDG.E.128", "LDG.E.128.CONSTANT")
    assert sass.matches("LDL", "LDL.LU")
    assert not sass.matches("LDG.E.128", "LDG.E")
    assert not sass.matches("LDL", "LDS")


def test_missing_cuobjdump_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sass, "_packaged_tool", lambda dist, tool: None)
    monkeypatch.setattr(sass.shutil, "which", lambda tool: None)
    sass.find_tools.cache_clear()
    try:
        with pytest.raises(sass.CuobjdumpNotFound, match="nvidia-cuda-cuobjdump not installed"):
            sass.find_tools()
    finally:
        sass.find_tools.cache_clear()


def test_cli_rejects_unknown_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--family", "no-such-family"]) == 2
    assert "unknown kernel family: no-such-family" in capsys.readouterr().err


# --------------------------------------------------------------------------- (c) the transform's inner loop


@needs_cuobjdump
@pytest.mark.parametrize("arch", CUBIN_ARCHS)
def test_transform_k_loop_is_one_dense_k_tile(arch: str) -> None:
    # The speed of the fused GEMM is its k-loop: one k-tile per trip (exactly
    # BK*TM*TN multiply-adds: none duplicated, none missing), shared memory read
    # 16 bytes at a time, and multiply-adds the bulk of the instructions.
    # Measured on NVRTC 13.0 (sm_80, sm_90): 0.84-0.88 for the vectorised
    # "large" tiles, 0.42-0.78 for the others (small double tiles carry the
    # most loads per multiply-add).  A planted fault -- shared rows padded by
    # one float, so no longer 16-byte aligned -- kept "large" at 0.84 but put
    # 16 32-bit and 16 64-bit shared loads in its loop: the LDS check is what
    # catches that.
    from liam_gpu.launch import transform as T

    result = _compiled("transform", arch)
    code = sass.function_sass(result)
    for dtype, configs in T.TILE_CONFIGS.items():
        for config in configs.values():
            for vec in (True, False):
                name = T.linear_entry(dtype, config, vec)
                macs = config.bk * config.tm * config.tn
                body = sass.fma_loop(code[name], macs)
                assert body is not None, f"{name} ({arch}): no loop holds a k-tile's {macs} multiply-adds"
                counts = sass.mnemonic_histogram(body)
                fma = counts["FFMA"] + counts["DFMA"]
                assert fma == macs, f"{name} ({arch}): {fma} multiply-adds in the k-loop, expected {macs}"
                narrow = [m for m in counts if m.startswith("LDS") and ".128" not in m]
                assert not narrow, f"{name} ({arch}): shared loads narrower than 16 bytes in the k-loop: {narrow}"
                floor = 0.8 if (config.name == "large" and dtype != "float64" and vec) else 0.4
                density = fma / len(body)
                assert density >= floor, f"{name} ({arch}): k-loop FMA density {density:.2f} < {floor}"


def test_loops_are_backward_branches() -> None:
    code = ["MOV R1, R2", "FFMA R3, R1, R1, R3", "FFMA R4, R1, R1, R4", "@P0 BRA 0x10", "EXIT", "BRA 0x50"]
    assert sass.loops(code) == [(1, 3), (5, 5)]
    assert sass.fma_loop(code, 2) == code[1:4]
    assert sass.fma_loop(code, 3) is None


# --------------------------------------------------------------------------- (d) the tensor-core k-loop


def _mma_cases() -> list:
    from liam_gpu.launch import transform as T

    return [pytest.param(dtype, name, arch, id=f"{dtype}-{name}-{arch}")
            for dtype, configs in T.MMA_CONFIGS.items() for name in configs for arch in CUBIN_ARCHS]


@needs_cuobjdump
@pytest.mark.parametrize(("dtype", "config", "arch"), _mma_cases())
def test_transform_mma_k_loop_is_hmma_fed_by_ldsm(dtype: str, config: str, arch: str) -> None:
    # Issue 17's speed guard for every 16-bit tensor-core entry: its k-loop
    # holds exactly one k-tile of the warp's mma.sync (HMMA), its shared loads
    # are all ldmatrix.x4 (LDSM.16.M88.4, exactly one per m16 slice of A and
    # per two n8 slices of B), no local memory anywhere, and registers and
    # static shared memory within the budget that the launch bounds and
    # transform_plan.MmaConfig give.  Measured on NVRTC 13.0 (docs/verification.md).
    from liam_gpu.launch import transform as T

    c = T.MMA_CONFIGS[dtype][config]
    name = T.linear_mma_entry(dtype, c)
    result = _compiled("transform", arch)
    code = sass.function_sass(result)[name]
    body = sass.hmma_loop(code, c.mma_per_k_tile)
    assert body is not None, f"{name} ({arch}): no loop holds a k-tile's {c.mma_per_k_tile} HMMA"
    hmma = sass.count_opcode(body, "HMMA")
    assert hmma == c.mma_per_k_tile, f"{name} ({arch}): {hmma} HMMA in the k-loop, expected {c.mma_per_k_tile}"
    # One HMMA per mma.sync: HMMA.16816 for the 16-bit types, HMMA.1688.F32.TF32 per m16n8k8 tf32
    # (float32 storage, precision="tf32"; its operands are cvt.rna'd when staged, see the PTX test below).
    want_hmma = {"bfloat16": "HMMA.16816.F32.BF16", "float16": "HMMA.16816.F32", "float32": "HMMA.1688.F32.TF32"}[dtype]
    assert {sass.mnemonic(i) for i in body if sass.mnemonic(i).startswith("HMMA")} == {want_hmma}
    counts = sass.mnemonic_histogram(body)
    ldsm = {m: k for m, k in counts.items() if m.startswith("LDSM")}
    assert ldsm == {"LDSM.16.M88.4": c.ldmatrix_per_k_tile}, f"{name} ({arch}): ldmatrix in the k-loop: {ldsm}"
    plain = [m for m in counts if m.split(".")[0] == "LDS"]
    assert not plain, f"{name} ({arch}): shared loads other than ldmatrix in the k-loop: {plain}"
    hist = sass.mnemonic_histogram(code)
    assert not [m for m in hist if m.split(".")[0] in sass.LOCAL_MEMORY], f"{name} ({arch}): local memory"
    info = result.entries[name]
    assert info.spill_store_bytes == info.spill_load_bytes == info.stack_frame_bytes == 0
    assert info.registers <= c.max_registers(), f"{name} ({arch}): {info.registers} > {c.max_registers()} registers"
    assert info.shared_bytes == c.shared_bytes(), f"{name} ({arch}): {info.shared_bytes} bytes of shared memory"


@needs_cuobjdump
@pytest.mark.parametrize("arch", CUBIN_ARCHS)
def test_simt_16_bit_entries_have_no_hmma(arch: str) -> None:
    # The check above can fail: the SIMT kernel computes 16-bit storage with
    # FFMA, so hmma_loop finds no tensor-core k-loop there.
    from liam_gpu.launch import transform as T

    code = sass.function_sass(_compiled("transform", arch))
    for dtype in T.MMA_CONFIGS:
        name = T.linear_entry(dtype, T.TILE_CONFIGS[dtype]["large"], True)
        assert sass.count_opcode(code[name], "HMMA") == 0
        assert sass.hmma_loop(code[name], 1) is None


def test_tf32_entries_round_their_operands_in_the_ptx() -> None:
    # cvt.rna.tf32.f32 has no SASS opcode of its own (ptxas lowers it to integer
    # rounding), so the PTX shows that the TF32 entries round each staged operand
    # (round to nearest, ties away) before their m16n8k8 tf32 mma, and that no
    # other entry does.
    from liam_gpu.launch import transform as T

    result = _compiled("transform", "compute_90")
    ptx = result.binary.decode()
    bodies = {}
    for name, info in result.entries.items():
        start = ptx.index(f".entry {info.lowered_name}(")
        end = ptx.find(".entry ", start + 1)
        bodies[name] = ptx[start:end if end >= 0 else len(ptx)]
    tf32 = {T.linear_mma_entry("float32", c) for c in T.MMA_CONFIGS["float32"].values()}
    for name, body in bodies.items():
        if name in tf32:
            assert "cvt.rna.tf32.f32" in body, name
            assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in body, name
        else:
            assert "tf32" not in body, name


def test_hmma_loop_picks_the_shortest_tensor_core_loop() -> None:
    code = ["LDSM.16.M88.4 R4, [R2]", "HMMA.16816.F32 R8, R4, R6, R8", "@P0 BRA 0x0",
            "HMMA.16816.F32.BF16 R8, R4, R6, R8", "HMMA.16816.F32.BF16 R12, R4, R6, R12", "BRA 0x0", "EXIT"]
    assert sass.count_opcode(code, "HMMA") == 3 and sass.count_opcode(code, "LDSM") == 1
    assert sass.hmma_loop(code, 1) == code[:3]
    assert sass.hmma_loop(code, 2) == code[:6]
    assert sass.hmma_loop(code, 4) is None
