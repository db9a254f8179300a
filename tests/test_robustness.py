"""Faults we handle (docs/robustness.md): each row of that table has a test here or in the module's tests."""

import ast
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import mounted_tmpfs
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    with pytest.raises(JtcseError, match=r"no space left on .*the last good version is intact.*free \d+ MB"):
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
            "--data-dir", str(data), "--out", str(out), "--set", f"backbone={tiny}", "max_steps=8", *TINY_SETTINGS,
            "keep_checkpoints=true"]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r], [(r["step"], r["stsb_dev"]) for r in rows
                                                                  if "stsb_dev" in r]


@pytest.mark.slow
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


def test_no_library_call_passes_trust_remote_code_but_false():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert getattr(node.value, "value", None) is False, f"{path.name}:{node.value.lineno}"


_REMOTE_CODE = """
import pathlib
pathlib.Path(MARKER).write_text("the folder's code ran")
from transformers import BertConfig, BertModel, BertTokenizerFast


class EvilConfig(BertConfig):
    model_type = "bert"


class EvilModel(BertModel):
    config_class = EvilConfig


class EvilTokenizer(BertTokenizerFast):
    pass
"""


@pytest.mark.parametrize("model_type", ["bert", "evil-bert"])
def test_remote_code_in_a_model_folder_never_runs(tiny_model_dir, tmp_path, model_type):
    """A folder whose config names its own code (`auto_map`, as a Hub repository may): backbones loads the model,
    tokenizer and config with transformers' own classes (model type `bert`) or refuses with one line (a model type
    transformers does not implement); the folder's code is never imported."""
    from jtcse_lib import backbones

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    marker = tmp_path / "remote_code_ran"
    (folder / "evil.py").write_text(_REMOTE_CODE.replace("MARKER", repr(str(marker))))
    for name, auto_map in (("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]})):
        spec = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**spec, "auto_map": auto_map, "model_type": model_type}))
    if model_type == "bert":
        model, tokenizer = backbones.load_backbone(folder)
        assert backbones.depth(folder) == 2
        assert type(model).__module__.startswith("transformers.") and "Evil" not in type(tokenizer).__name__
    else:
        with pytest.raises(JtcseError, match="cannot load the model of"):
            backbones.load_encoder(folder)
    assert not marker.exists()


# ---------------------------------------------------------------- one writer, every stop resumable, a real full disk

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def test_a_lock_names_its_holder_refuses_a_second_and_dies_with_a_killed_holder(tmp_path):
    """files.exclusive_lock (filelock): a second holder is refused at once with the first one's record (which the
    refusal leaves intact), or waits with wait=True; the kernel releases the lock of a holder killed with -9."""
    import threading

    from jtcse_lib.files import Busy, exclusive_lock, lock_holder

    lock = tmp_path / "run" / ".lock"
    assert lock_holder(lock) is None  # absent
    with exclusive_lock(lock, "the run"):
        with pytest.raises(Busy, match=rf"the run is in use by pid {os.getpid()} on .* since .*Fix: wait for it"):
            with exclusive_lock(lock, "the run"):
                pass
        assert lock_holder(lock).startswith(f"pid {os.getpid()} on ")  # still recorded after the refusal
    assert lock_holder(lock) is None
    held, released = threading.Event(), threading.Event()

    def hold():
        with exclusive_lock(lock, "the run"):
            held.set()
            released.wait(5)

    other = threading.Thread(target=hold)
    other.start()
    held.wait(5)
    threading.Timer(0.3, released.set).start()
    start = time.monotonic()
    with exclusive_lock(lock, "the run", wait=True):
        assert time.monotonic() - start > 0.2  # waited for the other holder
    other.join()
    code = (f"import sys, time\nsys.path.insert(0, {str(PACKAGE.parent)!r})\n"  # no torch: a quick child
            f"from jtcse_lib.files import exclusive_lock\nwith exclusive_lock({str(lock)!r}, 'x'):\n"
            "    print('held', flush=True)\n    time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held" and lock_holder(lock).startswith(f"pid {child.pid} on ")
    child.kill()
    child.wait()
    assert lock_holder(lock) is None
    with exclusive_lock(lock, "the run"):
        pass


def _start(cmd):
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(out, proc, step, timeout=600):
    """Block until metrics.jsonl holds a record of `step` or later; fail if the run ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.is_file():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip().endswith("}")]
            if any(r["step"] >= step and ("loss" in r or "stsb_dev" in r) for r in lines):
                return
        time.sleep(0.02)
    pytest.fail(f"the run ended (exit {proc.poll()}) before step {step}: nothing was interrupted")


def _digests(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_second_training_into_the_same_folder_exits_at_once_naming_the_first(tiny_model_dir, tmp_path, real_data):
    out = tmp_path / "run"
    # a first run far longer than the test (stopped with Ctrl-C below), so the second surely meets it running
    cmd = [*_train_cmd(tiny_model_dir, out, real_data), "max_steps=100000", "eval_every=50000",
           "checkpoint_every=50000"]
    first = _start(cmd)
    _wait_for_step(out, first, 1)
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr
    assert f"is in use by pid {first.pid} on " in err[0] and "Fix:" in err[0]
    assert first.poll() is None  # the refusal came while the first was training
    first.send_signal(signal.SIGINT)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 130, first_err
    steps = [r["step"] for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one line per logged step, in order: the second wrote nothing
    assert len(json.loads((out / "run.json").read_text())["history"]) == 1


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_resumes_to_the_uninterrupted_best(tiny_model_dir, tmp_path, real_data):
    """Under `paper` a stop between the first dev evaluation (step 100) and the first checkpoint (step 500) left
    best/ without a checkpoint, which was refused; now the same command trains the run again from step 0."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    late = ["max_steps=40", "eval_every=2", "checkpoint_every=100", "keep_checkpoints=false"]
    subprocess.run([*_train_cmd(tiny_model_dir, full, real_data), *late], check=True, env=ENV, capture_output=True,
                   timeout=600)
    proc = _start([*_train_cmd(tiny_model_dir, cut, real_data), *late])
    _wait_for_step(cut, proc, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cut / "best").is_dir() and not (cut / "checkpoint").exists() and not (cut / "result.json").exists()
    again = subprocess.run([*_train_cmd(tiny_model_dir, cut, real_data), *late], env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _digests(cut / "best") == _digests(full / "best")
    assert _losses(cut) == _losses(full)


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_exits_130_and_the_same_command_resumes(tiny_model_dir, tmp_path, real_data):
    full, cut = tmp_path / "full", tmp_path / "cut"
    long = ["max_steps=40", "checkpoint_every=100"]  # no periodic checkpoint before the stop
    subprocess.run([*_train_cmd(tiny_model_dir, full, real_data), *long], check=True, env=ENV, capture_output=True,
                   timeout=600)
    proc = _start([*_train_cmd(tiny_model_dir, cut, real_data), *long])
    _wait_for_step(cut, proc, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped: stopped by SIGINT at step ") and "run the same command again" in last
    stopped_at = int(last.split("at step ")[1].split()[0])
    state = torch.load(cut / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert 3 <= state["step"] == stopped_at < 40
    subprocess.run([*_train_cmd(tiny_model_dir, cut, real_data), *long], check=True, env=ENV, capture_output=True,
                   timeout=600)
    assert _losses(cut) == _losses(full)
    assert _digests(cut / "best") == _digests(full / "best")


@pytest.fixture
def small_disk(tmp_path):
    """A real small file system (tmpfs), resizable: `resize(megabytes)`. Needs root to mount."""
    with mounted_tmpfs(tmp_path / "disk", 60) as mount:
        yield mount, lambda mb: subprocess.run(["mount", "-o", f"remount,size={mb}m", str(mount)], check=True)


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_leaves_no_temporary_folder_and_resumes(small_disk, tmp_path, real_data):
    """The smoke profile (MiniLM: best/ ~91 MB, a checkpoint ~275 MB) on a 60 MB and a 200 MB tmpfs: exit 2 with
    one line and no .tmp folder; with room again, the same command finishes with the uninterrupted run's best/."""
    disk, resize = small_disk

    def cmd(out):
        return [sys.executable, "-m", "jtcse_lib", "train", "--stage", "simcse_a", "--profile", "smoke", "--device",
                "cpu", "--data-dir", str(real_data), "--out", str(out), "--set", "checkpoint_every=2"]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=ENV, capture_output=True, timeout=900)
    out = disk / "run"
    for megabytes in (60, 200):  # 60: best/ does not fit; 200: best/ does, its checkpoint does not
        resize(megabytes)
        proc = subprocess.run(cmd(out), env=ENV, capture_output=True, text=True, timeout=900)
        err = [x for x in proc.stderr.strip().splitlines() if not x.startswith(("Loading", "Writing"))]
        assert proc.returncode == 2 and err[-1].startswith("error: no space left on "), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "free " in err[-1] and " MB" in err[-1]
        assert not [p for p in disk.rglob("*") if ".tmp" in p.name], f"debris on the {megabytes} MB disk"
    resize(1024)
    proc = subprocess.run(cmd(out), env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _digests(out / "best") == _digests(tmp_path / "full" / "best")
