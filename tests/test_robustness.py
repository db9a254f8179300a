"""Faults we handle (docs/robustness.md): each row of that table has a test here or in the module's tests."""

import ast
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jtcse_lib.config import load_profile
from jtcse_lib.errors import ConfigError, JtcseError
from jtcse_lib.train import Trainer

PACKAGE = Path(__file__).resolve().parent.parent / "jtcse_lib"
TINY_SETTINGS = ["corpus_limit=64", "batch_size=8", "max_length=16", "eval_every=4", "checkpoint_every=2",
                 "log_every=1", "dev_pairs=20", "cross_attention_layers=1"]


@pytest.fixture
def cfg(tiny_model_dir):
    return load_profile("smoke", [f"backbone={tiny_model_dir}", "max_steps=4", *TINY_SETTINGS])


def test_cross_attention_count_must_divide_the_depth(cfg, tmp_path, real_data):
    with pytest.raises(ConfigError, match=r"must divide the depth 2 .*allowed counts"):
        Trainer(cfg.replace(cross_attention_layers=3), "jtcse", tmp_path, data_dir=real_data, progress=False).run()


def test_long_sentences_are_truncated_and_counted(cfg, tmp_path, real_data):
    Trainer(cfg.replace(max_steps=1, eval_every=1), "simcse_a", tmp_path, data_dir=real_data, progress=False).run()
    summary = json.loads((tmp_path / "result.json").read_text())
    assert 0 < summary["truncated_sentences"] < summary["train_sentences"] == 64


def test_cuda_out_of_memory_suggests_a_smaller_batch(cfg, tmp_path, real_data, monkeypatch):
    def oom(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "loss", oom)
    with pytest.raises(JtcseError, match=r"ran out of memory at batch_size=8.*smaller max_length keeps the loss; "
                                         r"batch_size=4 grad_accum=2 .*changes the loss .*6 per row instead of 14"):
        Trainer(cfg, "simcse_a", tmp_path, data_dir=real_data, progress=False).run()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(cfg, tmp_path, real_data, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def disk_full_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_on_second)
    with pytest.raises(JtcseError, match=r"could not write the checkpoint of step 4 .*No space left.*is intact"):
        Trainer(cfg, "simcse_a", tmp_path, data_dir=real_data, progress=False).run()
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and not (tmp_path / "checkpoint.tmp").exists()
    assert load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    # once space is back, the same command resumes from step 2 and finishes
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    result = Trainer(cfg, "simcse_a", tmp_path, data_dir=real_data, progress=False).run()
    assert result.steps == 4


def test_unknown_profile_on_the_command_line(capsys):
    from jtcse_lib.__main__ import main

    assert main(["train", "--stage", "simcse_a", "--profile", "laptop", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown profile 'laptop'" in err[0] and "Fix:" in err[0]


def _train_cmd(tiny, out, data):
    return [sys.executable, "-m", "jtcse_lib", "train", "--stage", "jtcse", "--profile", "smoke", "--device", "cpu",
            "--data-dir", str(data), "--out", str(out), "--set", f"backbone={tiny}", "max_steps=8", *TINY_SETTINGS]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r], [(r["step"], r["stsb_dev"]) for r in rows
                                                                  if "stsb_dev" in r]


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path, real_data):
    """A training subprocess is killed with SIGKILL at a random step and resumed with the same command."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_train_cmd(tiny_model_dir, full, real_data), check=True, env=env, capture_output=True, timeout=600)

    kill_at = random.randint(2, 7)
    proc = subprocess.Popen(_train_cmd(tiny_model_dir, cut, real_data), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        metrics = cut / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(line)["step"] >= kill_at
                                     for line in metrics.read_text().splitlines() if line.strip()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run finished before step {kill_at}: nothing was interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "result.json").exists()

    subprocess.run(_train_cmd(tiny_model_dir, cut, real_data), check=True, env=env, capture_output=True, timeout=600)
    assert _losses(cut) == _losses(full), f"killed at step {kill_at}"
    a = load_file(str(full / "checkpoint" / "model.safetensors"))
    b = load_file(str(cut / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {kill_at}"
    best_a = load_file(str(full / "best" / "tower_a" / "model.safetensors"))
    best_b = load_file(str(cut / "best" / "tower_a" / "model.safetensors"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def _calls(name):
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path.name, node


def test_every_torch_load_is_weights_only():
    found = list(_calls("load"))
    torch_loads = [(f, n) for f, n in found if isinstance(n.func, ast.Attribute)
                   and getattr(n.func.value, "id", None) == "torch"]
    assert torch_loads, "expected at least the checkpoint loader"
    for file, node in torch_loads:
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, f"{file}:{node.lineno}"


def test_remote_code_is_never_trusted():
    for name in ("from_pretrained",):
        for file, node in _calls(name):
            for k in node.keywords:
                if k.arg == "trust_remote_code":
                    assert getattr(k.value, "value", None) is False, f"{file}:{node.lineno}"
