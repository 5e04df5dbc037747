"""Spellings of ``device=``: torch.device objects and the LIAM_GPU_BACKEND variable."""
from __future__ import annotations

import numpy as np
import pytest

import liam_gpu as lg
from liam_gpu.backends import ENV_VAR, canonical_device


def test_a_bogus_backend_variable_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=rf"{ENV_VAR}='bogus' is not understood.*unset it"):
        canonical_device(None)
    with pytest.raises(ValueError, match=ENV_VAR):
        lg.transform_matrix(np.ones((2, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"^device='nope'"):  # an explicit argument is still named as such
        canonical_device("nope")


def test_the_cli_names_the_backend_variable(monkeypatch, capsys, tmp_path):
    from liam_gpu import cli

    np.save(tmp_path / "a.npy", np.ones((6, 5)))
    monkeypatch.setenv(ENV_VAR, "bogus")
    assert cli.main(["compress", str(tmp_path / "a.npy"), "-k", "2", "-o", str(tmp_path / "a.npz")]) == 2
    assert f"{ENV_VAR}='bogus'" in capsys.readouterr().err


def test_torch_devices_are_accepted_like_their_names():
    torch = pytest.importorskip("torch")
    assert canonical_device(torch.device("cpu")) == "cpu"
    x, w = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(lg.transform_matrix(x, w, device=torch.device("cpu")), x @ w.T)
    lr = lg.BinaryAlgebra(device=torch.device("cpu")).svd_compress(np.eye(6), k=2)
    assert lr.rank == 2
    t = torch.ones(4, 3)
    assert isinstance(lg.transform_matrix(t, torch.ones(2, 3), device=torch.device("cpu")), torch.Tensor)
    with pytest.raises(ValueError, match="'meta' is not understood"):
        canonical_device(torch.device("meta"))


def test_device_like_objects_of_other_libraries_are_still_type_errors():
    class device:  # same name, not torch's
        pass

    with pytest.raises(TypeError, match="torch.device"):
        canonical_device(device())
