"""``liam-gpu bench`` from an installed wheel: the suite ships as ``liam_gpu/bench``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from liam_gpu import benchmarks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The wheel of this checkout, unpacked as a site-packages folder."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = out.glob("liam_gpu-*.whl")
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_the_wheel_carries_the_suite_and_not_its_results(site):
    suite = site / "liam_gpu" / "bench"
    assert (suite / "conftest.py").is_file()
    for path in (ROOT / "bench").glob("bench_*.py"):
        assert (suite / path.name).is_file(), path.name
    assert not (suite / "results").exists()


def test_bench_runs_from_the_installed_copy_in_any_folder(site, tmp_path):
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


def test_the_installed_suite_is_found_when_there_is_no_checkout(tmp_path, monkeypatch):
    package = tmp_path / "site" / "liam_gpu"
    (package / "bench").mkdir(parents=True)
    (package / "bench" / "conftest.py").write_text("")
    monkeypatch.delenv(benchmarks.BENCH_DIR_ENV, raising=False)
    monkeypatch.setattr(benchmarks, "__file__", str(package / "benchmarks.py"))
    monkeypatch.chdir(tmp_path)
    assert benchmarks.find_bench_dir() == (package / "bench").resolve()
    cmd = benchmarks.pytest_command(package / "bench", tmp_path / "out", True, installed=True)
    assert "-p" in cmd and "no:cacheprovider" in cmd and f"--rootdir={package}" in cmd


def test_without_the_bench_extra_it_says_which_to_install_before_measuring(monkeypatch, capsys):
    monkeypatch.setattr(benchmarks, "missing_requirements", lambda: ["pytest-benchmark"])

    def measured(*args):
        raise AssertionError("measured the ceilings before saying what is missing")

    monkeypatch.setattr(benchmarks, "measure_ceilings", measured)
    rc = benchmarks.run_cli(argparse.Namespace(quick=True, backend="cpu", out="unused"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "pytest-benchmark" in err and 'pip install "liam-gpu[bench]"' in err


def test_missing_requirements_are_read_from_what_is_importable(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pytest_benchmark" else real(name))
    assert benchmarks.missing_requirements() == ["pytest-benchmark"]
