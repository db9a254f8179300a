"""bench/device_check.py in its quick CPU mode: the script a GPU machine will run, checked where CI can run it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_device_check_runs_on_cpu_in_quick_mode(tmp_path):
    proc = subprocess.run([sys.executable, "bench/device_check.py", "--device", "cpu", "--quick", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    for check in ("cuda_tests", "train_step", "real_training", "kill_resume", "encoding"):
        assert "error" not in report[check], (check, report[check])
    assert report["cuda_tests"].get("skipped", 0) >= 1 and not report["cuda_tests"].get("failed")  # no CUDA here
    assert {"simcse", "tncse", "jtcse"} <= set(report["train_step"]) and report["train_step"]["jtcse_over_2_simcse"] > 0
    assert report["kill_resume"]["records_equal"] is True  # CPU: the resumed run equals the uninterrupted one
    assert set(report["real_training"]["stsb_dev"]) == {"0", "20"}
    assert report["encoding"]["max_abs_difference_normalised"] < 1e-4
    assert "| SIGKILL + resume" in (tmp_path / "device_check.md").read_text()
