"""jtcse_lib.device: where a command computes, refusing a GPU profile on a machine whose CUDA is unusable."""

import pytest
import torch

from jtcse_lib.__main__ import main
from jtcse_lib.device import choose_device, cuda_problem
from jtcse_lib.errors import ConfigError

needs_no_cuda = pytest.mark.skipif(cuda_problem() is None, reason="this machine has a usable CUDA")


@needs_no_cuda
def test_auto_falls_back_to_the_cpu_and_says_why(capsys):
    assert choose_device(None, "auto") == torch.device("cpu")
    assert "computing on the CPU (" in capsys.readouterr().err
    assert choose_device(None, "auto", quiet=True) == torch.device("cpu")
    assert capsys.readouterr().err == ""
    assert choose_device("cpu", "cuda") == torch.device("cpu")  # --device cpu wins over a GPU profile


@needs_no_cuda
def test_cuda_asked_for_is_refused_with_the_reason_and_the_fix():
    with pytest.raises(ConfigError, match=r"this profile \(device: cuda\) asks for CUDA, but .*Fix: .*nvidia-smi.*"
                                          r"TORCH_SPEC=.*--device cpu"):
        choose_device(None, "cuda")
    with pytest.raises(ConfigError, match=r"--device asks for CUDA"):
        choose_device("cuda:1", "auto")


def test_a_driver_too_old_is_named_with_its_own_message(monkeypatch):
    """A CUDA build of torch whose driver cannot run it: torch.cuda.init() raises; the message reaches the user."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def old_driver():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12020).\nPlease update it.")

    monkeypatch.setattr(torch.cuda, "init", old_driver)
    assert cuda_problem() == (f"torch {torch.__version__} (CUDA 13.0) cannot use a GPU: The NVIDIA driver on your "
                              "system is too old (found version 12020).")
    with pytest.raises(ConfigError, match="driver on your system is too old"):
        choose_device(None, "cuda")


def test_not_a_device_name():
    with pytest.raises(ConfigError, match="device 'tpu' is not a device name"):
        choose_device("tpu")
    with pytest.raises(ConfigError, match="only cpu and cuda"):
        choose_device("meta")


@needs_no_cuda
def test_the_paper_profile_stops_before_reading_data_or_models(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--stage", "simcse_a", "--profile", "paper", "--out", str(out),
                 "--data-dir", str(tmp_path / "no-data-here")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "asks for CUDA" in err[0], err
    assert not out.exists() and not (tmp_path / "no-data-here").exists()
    # asked for explicitly, the CPU is allowed: the run gets past the device and stops at the missing data
    code = main(["train", "--stage", "simcse_a", "--profile", "paper", "--device", "cpu", "--out", str(out),
                 "--data-dir", str(tmp_path / "no-data-here")])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA" not in err and "no-data-here" in err
