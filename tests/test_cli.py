"""The liam-gpu command: info, demo, compress/decompress, and its errors."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liam_gpu import cli

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_backends_and_caches(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "devices" in out and "cpu" in out
    assert "kernel sources" in out and "CuPy kernel cache" in out


def test_demo_prints_a_table_next_to_numpy(capsys):
    assert cli.main(["demo", "--device", "cpu", "--samples", "3000", "--channels", "24",
                     "--sources", "4", "--features", "8", "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert "| operation | time (s) |" in out
    assert "numpy.linalg.svd" in out and "svd_compress" in out
    ours, best = (float(v) for v in re.findall(r"\| rel err (\d+\.\d+)", out))
    assert ours <= best * 1.05  # rank-4 signal: randomized SVD is within 5% of the optimum


def test_demo_signals_are_low_rank_plus_noise():
    x = cli.demo_signals(4000, 32, 5)
    s = np.linalg.svd(x, compute_uv=False)
    assert x.dtype == np.float32 and s[4] > 10 * s[5]


def test_compress_decompress_round_trip(tmp_path, rng):
    a = (rng.standard_normal((60, 5)) @ rng.standard_normal((5, 40))).astype(np.float32)
    src, packed, back = tmp_path / "a.npy", tmp_path / "a.npz", tmp_path / "b.npy"
    np.save(src, a)
    assert cli.main(["compress", str(src), "-k", "5", "-o", str(packed), "--device", "cpu"]) == 0
    assert cli.main(["decompress", str(packed), "-o", str(back)]) == 0
    np.testing.assert_allclose(np.load(back), a, atol=1e-4 * np.abs(a).max())


@pytest.mark.parametrize("content", [b"", b"not a numpy file at all", b"PK\x03\x04truncated"])
def test_decompress_of_a_foreign_or_truncated_file_is_a_clear_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    assert cli.main(["decompress", str(bad), "-o", str(tmp_path / "x.npy")]) == 2
    assert "bad.npz" in capsys.readouterr().err


def test_compress_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["compress", str(tmp_path / "nope.npy"), "-k", "2", "-o", str(tmp_path / "o.npz")]) == 2
    assert "nope.npy" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "liam_gpu.cli", "info"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "liam_gpu" in proc.stdout
