"""The package installs as a wheel that carries its kernels and finds them from anywhere."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (path,) = out.glob("liam_gpu-*.whl")
    return path


def test_wheel_ships_every_kernel_source_and_the_emulator_header(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh")}
    assert sources, "kernels/ is empty"
    for name in sources:
        assert f"liam_gpu/kernels/{name}" in names
    headers = {p.name for p in (ROOT / "liam_gpu" / "emulator").glob("*.h")}
    assert "cuda_emu.h" in headers
    for name in headers:  # the umbrella header and every part it includes
        assert f"liam_gpu/emulator/{name}" in names


def _unpacked(wheel: Path, tmp_path: Path) -> Path:
    """The wheel extracted as a site-packages folder."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_installed_package_finds_its_kernels_from_another_directory(wheel, tmp_path):
    site = _unpacked(wheel, tmp_path)
    code = (
        "import liam_gpu, pathlib; from liam_gpu.launch import families; from liam_gpu.launch.family import kernel_dir;"
        "d = kernel_dir(); assert pathlib.Path(liam_gpu.__file__).parent in d.parents, d;"
        "fs = families(); assert fs; [f.code() for f in fs.values()]; print(d)"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "site/liam_gpu/kernels" in proc.stdout


def test_cpu_install_does_not_require_cupy_or_torch():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.M | re.S).group(1)
    assert "cupy" not in deps and "torch" not in deps


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci and all(line in readme for line in ci)


def test_readme_quick_start_runs(monkeypatch):
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"## Quick start\s+```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setenv("LIAM_GPU_BACKEND", "cpu")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    import numpy as np

    np.testing.assert_allclose(namespace["y"], namespace["data"] @ namespace["weights"].T, rtol=1e-5)
    assert namespace["approx"].shape == namespace["data"].shape


def test_the_wheel_carries_the_benchmark_suite_and_not_its_results(wheel, tmp_path):
    suite = _unpacked(wheel, tmp_path) / "liam_gpu" / "bench"
    assert (suite / "conftest.py").is_file()
    for path in (ROOT / "bench").glob("bench_*.py"):
        assert (suite / path.name).is_file(), path.name
    assert not (suite / "results").exists()


def test_bench_runs_from_the_installed_copy_in_any_folder(wheel, tmp_path):
    from liam_gpu import benchmarks

    site = _unpacked(wheel, tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), LIAM_BENCH_QUICK_BUDGET="0")  # collect and skip: quick
    env.pop(benchmarks.BENCH_DIR_ENV, None)
    before = sorted(p.name for p in (site / "liam_gpu" / "bench").iterdir())
    proc = subprocess.run([sys.executable, "-m", "liam_gpu.benchmarks", "--quick", "--backend", "cpu",
                           "--out", "res"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: nothing timed, by the budget
    doc = json.loads((work / "res" / "results.json").read_text())
    tested = {o["test"].split("::")[0] for o in doc["outcomes"]}
    assert tested >= {f"bench.{p.stem}" for p in (ROOT / "bench").glob("bench_*.py")}, tested
    assert all("budget of 0 s was spent" in o["message"] for o in doc["outcomes"])
    assert sorted(p.name for p in (site / "liam_gpu" / "bench").iterdir() if p.name != "__pycache__") == \
        [n for n in before if n != "__pycache__"]  # nothing written beside the installed suite
    assert not (site / "liam_gpu" / ".pytest_cache").exists() and not (site / "liam_gpu" / ".benchmarks").exists()
