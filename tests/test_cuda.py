"""The CUDA path: what CI (no GPU) cannot run. Skipped without CUDA; `bench/device_check.py` runs these on a GPU."""

import json

import pytest
import torch

from jtcse_lib.config import load_profile
from jtcse_lib.train import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture
def cfg(tiny_model_dir):
    return load_profile("smoke", [f"backbone={tiny_model_dir}", "corpus_limit=64", "batch_size=8", "max_steps=4",
                                  "max_length=16", "eval_every=2", "checkpoint_every=2", "log_every=1",
                                  "dev_pairs=20", "cross_attention_layers=1"])


@pytest.mark.parametrize("stage", ["simcse_a", "jtcse"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_training_step_reads_nothing_on_the_host(cfg, tmp_path, real_data, precision, stage):
    """No device-to-host copy in the hot loop: forward, objective, backward and the optimizer step of a tower (with
    SimCSE's MLP head and clipping, as stage 1 of `paper`) and of a twin."""
    extra = {"train_mlp_head": True, "max_grad_norm": 1.0} if stage == "simcse_a" else {}
    trainer = Trainer(cfg.replace(precision=precision, **extra), stage, tmp_path, data_dir=real_data, device="cuda",
                      progress=False)
    batch = trainer.batch(0, 0)
    trainer.train_step([batch])  # warm-up: lazy initialisation (the scaler, cuBLAS handles) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step([trainer.batch(0, 1)])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_training_on_cuda_restores_tf32_and_resumes_exactly(cfg, tmp_path, real_data, monkeypatch):
    """Stopped after the checkpoint of step 2 and resumed from it (run.json records the second start at step 2):
    the same metrics and bit-identical final weights as the uninterrupted run (deterministic fp32 kernels)."""
    from safetensors.torch import load_file

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    cfg = cfg.replace(keep_checkpoints=True, deterministic=True, precision="fp32")
    full = Trainer(cfg, "jtcse", tmp_path / "full", data_dir=real_data, device="cuda", progress=False).run()
    assert full.steps == 4
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    original = Trainer._save_checkpoint

    def save_then_stop(self):
        original(self)
        if self.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, "jtcse", tmp_path / "cut", data_dir=real_data, device="cuda", progress=False).run()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = Trainer(cfg, "jtcse", tmp_path / "cut", data_dir=real_data, device="cuda", progress=False).run()
    history = json.loads((tmp_path / "cut" / "run.json").read_text())["history"]
    assert [h["from_step"] for h in history] == [0, 2]  # resumed, not started over

    def logged(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert logged("cut") == logged("full")
    assert (resumed.steps, resumed.best_step, resumed.best_dev) == (full.steps, full.best_step, full.best_dev)
    a, b = (load_file(str(tmp_path / run / "checkpoint" / "model.safetensors")) for run in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_on_cuda_counts_skipped_steps(cfg, tmp_path, real_data):
    Trainer(cfg.replace(precision="fp16"), "simcse_a", tmp_path / "fp16", data_dir=real_data, device="cuda",
            progress=False).run()
    rows = [json.loads(line) for line in (tmp_path / "fp16" / "metrics.jsonl").read_text().splitlines()]
    assert all("overflow_skipped" in r for r in rows if "epoch" in r)


def test_deterministic_cuda_training_repeats_exactly(cfg, tmp_path, real_data):
    from safetensors.torch import load_file

    for name in ("a", "b"):
        Trainer(cfg.replace(deterministic=True, precision="fp32", keep_checkpoints=True), "jtcse", tmp_path / name,
                data_dir=real_data,
                device="cuda", progress=False).run()
    a, b = (load_file(str(tmp_path / n / "checkpoint" / "model.safetensors")) for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
