"""The emulator's build cache is private: its libraries are loaded into the process."""
from __future__ import annotations

import os
import stat
import tempfile

import pytest

from liam_gpu.emulator import build
from liam_gpu.emulator.build import EmulatorError, cache_dir


@pytest.fixture
def unwritable_home(tmp_path, monkeypatch):
    """HOME is a plain file, so ~/.cache cannot be created; TMPDIR is a fresh folder."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LIAM_GPU_EMU_CACHE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp / f"liam_gpu_emulator_{os.getuid()}"


def test_fallback_is_created_private(unwritable_home):
    assert cache_dir() == unwritable_home
    assert stat.S_IMODE(unwritable_home.lstat().st_mode) == 0o700


def test_a_planted_symlink_in_the_temporary_folder_is_refused(unwritable_home, tmp_path):
    theirs = tmp_path / "attacker"
    theirs.mkdir()
    (theirs / "0123.so").write_bytes(b"\x7fELF not ours")
    unwritable_home.symlink_to(theirs)
    with pytest.raises(EmulatorError, match="symbolic link.*LIAM_GPU_EMU_CACHE"):
        cache_dir()


def test_a_cache_others_can_write_to_is_refused(unwritable_home):
    unwritable_home.mkdir()
    unwritable_home.chmod(0o777)
    with pytest.raises(EmulatorError, match="written by other users .*0777"):
        cache_dir()


def test_a_cache_others_can_only_read_is_narrowed_to_0700(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o755)  # an older cache, created under the umask
    monkeypatch.setenv("LIAM_GPU_EMU_CACHE", str(folder))
    assert cache_dir() == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_cache_owned_by_another_user_is_refused(unwritable_home):
    unwritable_home.mkdir(mode=0o700)
    os.chown(unwritable_home, 12345, 12345)
    with pytest.raises(EmulatorError, match="belongs to user id 12345"):
        cache_dir()


def test_an_explicit_cache_that_is_a_symlink_or_a_file_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv("LIAM_GPU_EMU_CACHE", str(link))
    with pytest.raises(EmulatorError, match="symbolic link"):
        cache_dir()
    afile = tmp_path / "file"
    afile.write_text("x")
    monkeypatch.setenv("LIAM_GPU_EMU_CACHE", str(afile))
    with pytest.raises(EmulatorError, match="LIAM_GPU_EMU_CACHE"):
        cache_dir()


def test_build_checks_the_cache_before_loading_anything(unwritable_home, tmp_path, monkeypatch):
    theirs = tmp_path / "attacker"
    theirs.mkdir()
    unwritable_home.symlink_to(theirs)
    monkeypatch.setattr(build, "compiler", lambda: "g++")
    monkeypatch.setattr(build, "compiler_version", lambda cxx: "g++ (test) 0")
    with pytest.raises(EmulatorError, match="symbolic link"):
        build.build('extern "C" __global__ void k() {}', ["k"])
    assert list(theirs.iterdir()) == []
