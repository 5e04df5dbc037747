"""The package installs as a wheel that carries its kernels and finds them from anywhere."""
from __future__ import annotations

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


def test_installed_package_finds_its_kernels_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
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
