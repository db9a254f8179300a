"""Multi-process training (jtcse_lib.distributed): two gloo processes on CPU equal one process on the doubled batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ddp_equivalence  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2, timeout=600):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["simcse", "tncse", "jtcse", "distill"])
def test_two_processes_equal_one_on_the_doubled_batch(stage, tmp_path):
    """Loss and every parameter's gradient, float64, dropout off: negatives gathered with gradient at the rank's
    offset, DDP's average of the ranks' gradients = the single-device gradient of the global loss."""
    proc = torchrun("tests/ddp_equivalence.py", "--stage", stage, "--out", str(tmp_path / "ddp.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.set_num_threads(1)
    ref = ddp_equivalence.step(stage)  # this process: no process group, the whole batch
    assert got["loss"] == pytest.approx(ref["loss"], abs=1e-10, rel=0)
    assert got["grads"].keys() == ref["grads"].keys() and len(ref["grads"]) > 30
    for name, grad in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=0, atol=1e-10, msg=name)


def _train(tiny_model_dir, out, nproc, *extra):
    args = ["train", "--stage", "jtcse", "--profile", "smoke", "--out", str(out), "--nproc", str(nproc), "--set",
            f"backbone={tiny_model_dir}", "dropout=0", "corpus_limit=64", "batch_size=8", "max_steps=4",
            "max_length=16", "eval_every=2", "checkpoint_every=2", "dev_pairs=30", "cross_attention_layers=1",
            *extra]
    return subprocess.run([sys.executable, "-m", "jtcse_lib", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_nproc_two_trains_the_towers_one_process_trains(tiny_model_dir, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    for out, n in ((a, 2), (b, 1)):
        proc = _train(tiny_model_dir, out, n)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for tower in ("tower_a", "tower_b"):
        wa, wb = (load_file(str(o / "best" / tower / "model.safetensors")) for o in (a, b))
        assert wa.keys() == wb.keys()
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    dev = [[r["stsb_dev"] for r in map(json.loads, (o / "metrics.jsonl").open()) if "stsb_dev" in r] for o in (a, b)]
    assert len(dev[0]) == len(dev[1]) == 3 and max(abs(x - y) for x, y in zip(*dev)) < 0.01
    assert json.loads((a / "run.json").read_text())["world_size"] == 2
    # the same folder with another number of processes is refused (the data order per rank would differ)
    proc = _train(tiny_model_dir, a, 1)
    assert proc.returncode == 2 and "world_size: 2 -> 1" in proc.stderr


def _rank_pids(out: Path, rank: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(out) in cmd and "torch.distributed.run" not in cmd and f"RANK={rank}".encode() in env:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_with_a_message_and_the_run_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--stage", "jtcse", "--profile", "smoke", "--out", str(out), "--nproc", "2", "--set",
            f"backbone={tiny_model_dir}", "corpus_limit=64", "batch_size=8", "max_steps=40", "max_length=16",
            "eval_every=20", "checkpoint_every=2", "dev_pairs=30", "cross_attention_layers=1"]
    job = subprocess.Popen([sys.executable, "-m", "jtcse_lib", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out / "checkpoint" / "trainer_state.pt").is_file() and time.time() < deadline and job.poll() is None:
        time.sleep(0.1)
    victims = _rank_pids(out, 1)
    assert victims, "rank 1 not found"
    os.kill(victims[0], signal.SIGKILL)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 2
    last = [line for line in err.splitlines() if line.startswith("error:")]
    assert last and "distributed training (2 processes, torchrun) stopped" in last[-1] and "resumes" in last[-1]
    resumed = subprocess.run([sys.executable, "-m", "jtcse_lib", *args], cwd=REPO, env=ENV, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr + resumed.stdout
    assert json.loads((out / "result.json").read_text())["steps"] == 40


@pytest.mark.slow
def test_the_profile_key_nproc_trains_a_cached_stage_under_torchrun(tiny_model_dir, tmp_path, monkeypatch):
    from jtcse_lib import runs
    from jtcse_lib.config import load_profile

    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_profile("smoke", [f"backbone={tiny_model_dir}", "corpus_limit=32", "batch_size=8", "max_steps=2",
                                 "max_length=16", "eval_every=2", "dev_pairs=20", "nproc=2"])
    best = runs.trained_model(cfg, "simcse_a", progress=False)  # this process stays single; torchrun trains
    assert (best / "model.safetensors").is_file() and runs.is_complete(cfg, "simcse_a")
    assert json.loads((best.parent / "run.json").read_text())["world_size"] == 2
    assert runs.stage_key(cfg, "simcse_a") != runs.stage_key(cfg.replace(nproc=1), "simcse_a")  # keyed
