"""The liam-gpu command: info, demo, compress/decompress, and its errors."""
from __future__ import annotations

import os
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


# --------------------------------------------------------------------------- writing whole or not at all


def _matrix_file(tmp_path, rng, name="a.npy", shape=(60, 40), dtype=np.float64):
    a = (rng.standard_normal((shape[0], 5)) @ rng.standard_normal((5, shape[1]))).astype(dtype)
    path = tmp_path / name
    np.save(path, a)
    return path, a


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_a_write_past_the_file_size_limit_leaves_the_old_output_whole(tmp_path, rng, command):
    resource = pytest.importorskip("resource")
    src, _ = _matrix_file(tmp_path, rng, shape=(400, 300))
    packed = tmp_path / "a.npz"
    assert cli.main(["compress", str(src), "-k", "40", "-o", str(packed), "--device", "cpu"]) == 0
    if command == "compress":
        out, argv = packed, ["compress", str(src), "-k", "60", "-o", str(packed), "--device", "cpu"]
    else:
        out = tmp_path / "back.npy"
        assert cli.main(["decompress", str(packed), "-o", str(out)]) == 0
        argv = ["decompress", str(packed), "-o", str(out)]
    before = out.read_bytes()
    limit = 64 * 1024  # smaller than every output here
    # The limit is set inside the child (like `ulimit -f`), not by a preexec_fn in this threaded process.
    run = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0})); "
           "sys.argv = ['liam-gpu'] + sys.argv[1:]; runpy.run_module('liam_gpu.cli', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", run.format(limit), *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"cannot write {out}" in proc.stderr, proc.stderr
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("where", ["directory", "/dev/full", "missing folder"])
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_unwritable_outputs_are_one_line_errors_with_status_2(tmp_path, rng, capsys, where, command):
    src, _ = _matrix_file(tmp_path, rng)
    packed = tmp_path / "a.npz"
    assert cli.main(["compress", str(src), "-k", "3", "-o", str(packed), "--device", "cpu"]) == 0
    if where == "/dev/full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = {"directory": str(tmp_path), "/dev/full": "/dev/full", "missing folder": str(tmp_path / "no" / "x")}[where]
    argv = (["compress", str(src), "-k", "3", "--device", "cpu"] if command == "compress"
            else ["decompress", str(packed)])
    capsys.readouterr()
    assert cli.main([*argv, "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"liam-gpu {command}: error: cannot write {out}: ") and err.count("\n") == 1, err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_without_permission_is_a_one_line_error(tmp_path, rng, capsys):
    src, _ = _matrix_file(tmp_path, rng)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["compress", str(src), "-k", "3", "-o", str(locked / "a.npz"), "--device", "cpu"]) == 2
    finally:
        locked.chmod(0o700)
    assert "Permission denied" in capsys.readouterr().err


# --------------------------------------------------------------------------- sizes checked before allocating


def test_decompress_of_a_tiny_file_with_a_huge_dense_product_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from liam_gpu import lowrank

    # Consistent factors of a 200000 x 200000 matrix: 298 GiB dense, a few KiB deflated.
    real = lowrank.available_memory()
    monkeypatch.setattr(lowrank, "available_memory", lambda: min(real or 2**36, 2**36))
    m = 200_000
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, format=np.asarray("liam_gpu.LowRank"), version=np.asarray(1),
                        U=np.zeros((m, 1)), S=np.ones(1), Vt=np.zeros((1, m)), relative_error=np.asarray(np.nan))
    assert path.stat().st_size < 8192
    assert cli.main(["decompress", str(path), "-o", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "bomb.npz" in err and "(200000, 200000)" in err and "GiB" in err and "available" in err
    assert not (tmp_path / "x.npy").exists()


def test_compress_of_a_npy_declaring_more_than_it_holds_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "liar.npy"
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    path.write_bytes(buf.getvalue() + b"\0" * 64)
    assert cli.main(["compress", str(path), "-o", str(tmp_path / "o.npz")]) == 2
    assert "liar.npy declares an array of shape (1000000, 1000000)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the input's dtype


def test_decompress_restores_the_inputs_dtype_rounded_and_clipped(tmp_path, rng, capsys):
    img = np.clip(rng.normal(128, 90, (80, 60)), 0, 255).astype(np.uint8)  # many values at 0 and 255
    src, packed, back = tmp_path / "img.npy", tmp_path / "img.npz", tmp_path / "back.npy"
    np.save(src, img)
    assert cli.main(["compress", str(src), "-k", "10", "-o", str(packed), "--device", "cpu"]) == 0
    assert cli.main(["decompress", str(packed), "-o", str(back)]) == 0
    out = np.load(back)
    assert out.dtype == np.uint8
    from liam_gpu.lowrank import LowRank

    dense = np.asarray(LowRank.load(packed))
    assert dense.min() < 0 and dense.max() > 255  # the reconstruction overshoots; the output is clipped
    np.testing.assert_array_equal(out, np.clip(np.rint(dense), 0, 255).astype(np.uint8))
    assert cli.main(["decompress", str(packed), "-o", str(back), "--dtype", "float32"]) == 0
    assert np.load(back).dtype == np.float32
    assert cli.main(["decompress", str(packed), "-o", str(back), "--dtype", "complex64"]) == 2
    assert "--dtype must be" in capsys.readouterr().err


def test_decompress_of_a_file_without_a_recorded_dtype_gives_the_factors_dtype(tmp_path, rng):
    from liam_gpu.lowrank import LowRank

    old = tmp_path / "old.npz"
    u, s, vt = rng.standard_normal((20, 3)).astype(np.float32), np.ones(3, np.float32), np.ones((3, 10), np.float32)
    np.savez(old, format=np.asarray("liam_gpu.LowRank"), version=np.asarray(1), U=u, S=s, Vt=vt,
             relative_error=np.asarray(np.nan))
    assert cli.main(["decompress", str(old), "-o", str(tmp_path / "b.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.asarray(LowRank(u, s, vt)))


def test_the_ratio_counts_the_inputs_bytes_and_a_file_that_grows_is_warned_about(tmp_path, rng, capsys):
    img = rng.integers(0, 256, (100, 80)).astype(np.uint8)
    src, packed = tmp_path / "img.npy", tmp_path / "img.npz"
    np.save(src, img)
    assert cli.main(["compress", str(src), "-k", "32", "-o", str(packed), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "x LARGER" in captured.out and "smaller" not in captured.out
    assert f"({img.nbytes} -> {packed.stat().st_size} bytes)" in captured.out
    assert "warning" in captured.err and "not smaller" in captured.err
    src64 = tmp_path / "wide.npy"
    np.save(src64, rng.standard_normal((400, 300)))
    assert cli.main(["compress", str(src64), "-k", "4", "-o", str(packed), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "x smaller" in captured.out and "warning" not in captured.err


# --------------------------------------------------------------------------- the command line itself


def test_version_and_help_show_the_defaults(capsys):
    from liam_gpu import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"liam-gpu {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 32" in text and "--output" in text and "(required)" in text
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "bench/results/latest" in capsys.readouterr().out


def test_progress_is_shown_when_asked_and_not_into_a_pipe(tmp_path, rng, capsys):
    src, _ = _matrix_file(tmp_path, rng)
    out = str(tmp_path / "a.npz")
    assert cli.main(["compress", str(src), "-k", "3", "-o", out, "--device", "cpu"]) == 0
    assert "factorizing" not in capsys.readouterr().err  # stderr is not a terminal here
    assert cli.main(["compress", str(src), "-k", "3", "-o", out, "--device", "cpu", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "liam-gpu compress: factorizing" in err and "steps" in err


def test_compress_refuses_a_npy_name_for_its_npz_output(tmp_path, rng, capsys):
    src, _ = _matrix_file(tmp_path, rng)
    assert cli.main(["compress", str(src), "-k", "3", "-o", str(tmp_path / "out.npy"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "name the output" in err and "out.npz" in err
    assert not (tmp_path / "out.npy").exists()


def test_decompress_writes_and_prints_exactly_the_name_given(tmp_path, rng, capsys):
    src, a = _matrix_file(tmp_path, rng)
    packed = tmp_path / "a.npz"
    assert cli.main(["compress", str(src), "-k", "5", "-o", str(packed), "--device", "cpu"]) == 0
    capsys.readouterr()
    out = tmp_path / "dense.out"
    assert cli.main(["decompress", str(packed), "-o", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out}")
    assert out.is_file() and not (tmp_path / "dense.out.npy").exists()
    np.testing.assert_allclose(np.load(out), a, atol=1e-8 * np.abs(a).max())


def test_an_image_with_colour_channels_is_refused_unless_stack_is_given(tmp_path, rng, capsys):
    img = tmp_path / "rgb.npy"
    np.save(img, rng.integers(0, 256, (48, 32, 3)).astype(np.uint8))
    out = str(tmp_path / "rgb.npz")
    assert cli.main(["compress", str(img), "-k", "2", "-o", out, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "(48, 32, 3)" in err and "colour channels" in err and "np.moveaxis" in err and "--stack" in err
    assert not Path(out).exists()
    assert cli.main(["compress", str(img), "-k", "2", "-o", out, "--device", "cpu", "--stack"]) == 0


def test_compress_of_a_stack_reports_the_largest_item_error(tmp_path, rng, capsys):
    src = tmp_path / "stack.npy"
    np.save(src, rng.standard_normal((3, 30, 20)))
    assert cli.main(["compress", str(src), "-k", "4", "-o", str(tmp_path / "s.npz"), "--device", "cpu"]) == 0
    assert "estimated relative error max " in capsys.readouterr().out
