"""``liam-gpu bench`` from an installed copy: finding the suite, and the bench extra.

The wheel itself (that it carries the suite, and a run from it) is tested in
``tests/test_packaging.py``.
"""
from __future__ import annotations

import argparse

import pytest

from liam_gpu import benchmarks


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
