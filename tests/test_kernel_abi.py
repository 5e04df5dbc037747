"""The house rule that keeps kernels correct past 2**31 elements.

Every ``__global__`` entry point takes only pointers, 64-bit integers
(``long long`` / ``unsigned long long``) and floating-point scalars.  A 32-bit
``int`` size or offset would wrap for a matrix of more than 2**31 elements, so
it is refused here for every declared entry point, read from the signature
that NVRTC actually compiled (the lowered name, demangled by ``c++filt``).
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from liam_gpu.launch import families

nvrtc_check = pytest.importorskip("liam_gpu.toolchain.nvrtc_check")
pytest.importorskip("cuda.bindings.nvrtc")

ALLOWED = re.compile(
    r"^(?:(?:const\s+)?[\w:]+(?:\s+const)?\s*\*(?:\s*__restrict__)?|long long|unsigned long long|float|double)$"
)


def _parameters(signature: str) -> list[str]:
    """The parameter types of a demangled ``void name<...>(types)`` signature."""
    depth, start = 0, None
    for i in range(len(signature) - 1, -1, -1):
        ch = signature[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            depth -= 1
            if depth == 0:
                start = i
                break
    inner = signature[start + 1:-1]
    params, depth, current = [], 0, ""
    for ch in inner:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        params.append(current.strip())
    return params


def test_parameter_parser_and_rule():
    sig = "void gemm<float, 64, (Act)2>(float const*, float*, long long, long long, float)"
    assert _parameters(sig) == ["float const*", "float*", "long long", "long long", "float"]
    assert all(ALLOWED.match(p) for p in _parameters(sig))
    assert not ALLOWED.match("int") and not ALLOWED.match("unsigned int")


def _cases():
    # liam_gpu.launch.FAMILIES is written out, never empty: no fallback case is needed.
    return [(f, e) for f in families().values() for e in f.name_expressions]


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) not installed")
@pytest.mark.parametrize("family,entry", _cases(), ids=lambda v: getattr(v, "name", v))
def test_entry_points_take_64_bit_sizes(family, entry):
    result = _compiled(family.name)
    lowered = result.entries[entry].lowered_name
    signature = subprocess.run(["c++filt", lowered], capture_output=True, text=True, check=True).stdout.strip()
    bad = [p for p in _parameters(signature) if not ALLOWED.match(p)]
    assert not bad, f"{family.name}: {signature} has parameters {bad}; sizes and offsets must be long long"


def _compiled(name: str):
    # sm_90: the same (memoized) compile that tests/test_compile.py checks.
    result = nvrtc_check.compile_family(families()[name], "sm_90")
    assert result.success, result.log
    return result


def test_tile_shapes_are_template_parameters_not_macros():
    # Tile shapes and block sizes reach the kernels as template arguments of
    # the name expressions (one copy, in the launch wrappers); a kernel file
    # that #defines them would be a second copy.
    from liam_gpu.launch.family import kernel_dir

    for path in sorted(kernel_dir().glob("*.cu")):
        defines = re.findall(r"^\s*#\s*define\s+(\w+)", path.read_text(), flags=re.M)
        assert not defines, f"{path.name} defines {defines}"
