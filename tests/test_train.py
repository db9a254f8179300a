"""The training loop on a tiny random BERT (each test well under 2 s: the fast lane) with the real corpus and STS-B
dev. What the run folder refuses and recovers from is in test_faults.py and test_robustness.py."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from jtcse_lib import train as train_mod
from jtcse_lib.config import STAGES, load_profile
from jtcse_lib.errors import ConfigError
from jtcse_lib.train import Trainer, TrainingDiverged


@pytest.fixture
def cfg(tiny_model_dir):
    return load_profile("smoke", [f"backbone={tiny_model_dir}", "corpus_limit=64", "batch_size=8", "max_steps=6",
                                  "max_length=16", "eval_every=3", "checkpoint_every=2", "log_every=1",
                                  "dev_pairs=40", "cross_attention_layers=1"])


def metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def run(cfg, stage, out, **kw):
    return Trainer(cfg, stage, out, data_dir=kw.pop("data_dir"), progress=False, **kw).run()


def test_the_stage_table_has_a_row_for_every_stage():
    assert tuple(train_mod.STAGES) == STAGES


@pytest.mark.parametrize("stage, terms", [
    ("simcse_a", {"nce"}),
    ("tncse", {"nce_a", "nce_b", "cross_cls", "modulus"}),
    ("jtcse", {"nce_a", "nce_b", "cross_cls", "cross_attention", "modulus"}),
])
def test_stage_runs_logs_terms_and_saves_best(cfg, stage, terms, tmp_path, real_data):
    result = run(cfg, stage, tmp_path / stage, data_dir=real_data)
    rows = metrics(tmp_path / stage)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert set(train_rows[0]) >= terms | {"loss", "lr"} and not (set(train_rows[0]) & ({
        "nce", "nce_a", "nce_b", "cross_cls", "cross_attention", "modulus"} - terms))
    # the logged total is the weighted sum of the logged terms (all weights 1)
    assert train_rows[0]["loss"] == pytest.approx(sum(train_rows[0][t] for t in terms), rel=1e-5)
    dev = [r for r in rows if "stsb_dev" in r]
    assert [r["step"] for r in dev] == [0, 3, 6]  # the starting point is scored too, for the curves
    assert result.best_dev == max(r["stsb_dev"] for r in dev if r["step"] > 0)  # but only trained steps compete
    assert result.best_step in (3, 6) and not dev[0]["improved"]
    best = tmp_path / stage / "best"
    assert (best / "config.json").is_file() if stage == "simcse_a" else (best / "tower_b" / "tokenizer.json").is_file()
    summary = json.loads((tmp_path / stage / "result.json").read_text())
    assert summary["steps"] == 6 and summary["best_stsb_dev"] == pytest.approx(result.best_dev)
    assert {"git_commit", "device", "versions", "config"} <= set(summary)


def test_jtcse_with_zero_cross_layers_has_no_branch_term(cfg, tmp_path, real_data):
    run(cfg.replace(cross_attention_layers=0, max_steps=1, eval_every=1), "jtcse", tmp_path / "j0", data_dir=real_data)
    row = next(r for r in metrics(tmp_path / "j0") if "loss" in r)
    assert "cross_attention" not in row and "cross_cls" in row


def test_a_fixed_direction_without_a_branch_is_tncse(cfg, tmp_path, real_data):
    """jtcse with icnce_direction=a_to_b and no branch trains exactly what the tncse stage trains (the ablation
    'fixed_direction' isolates the direction rule); the random direction trains something else."""
    short = cfg.replace(max_steps=4, eval_every=2, cross_attention_layers=0)
    losses = {}
    for name, stage, c in [("tncse", "tncse", short), ("fixed", "jtcse", short.replace(icnce_direction="a_to_b")),
                           ("random", "jtcse", short)]:
        run(c, stage, tmp_path / name, data_dir=real_data)
        losses[name] = [(r["step"], r.get("loss"), r.get("stsb_dev")) for r in metrics(tmp_path / name)]
    assert losses["fixed"] == losses["tncse"]
    assert losses["random"] != losses["tncse"]


def test_the_full_sequence_branch_trains_and_differs_from_the_shadow_cls(cfg, tmp_path, real_data):
    short = cfg.replace(max_steps=2, eval_every=2, cross_attention_layers=2)
    for rows in ("cls", "all"):
        run(short.replace(cross_attention_rows=rows), "jtcse", tmp_path / rows, data_dir=real_data)
    first = {rows: next(r for r in metrics(tmp_path / rows) if "loss" in r) for rows in ("cls", "all")}
    assert set(first["all"]) == set(first["cls"])  # the same terms (the branch's dropout draws shift the main
    assert first["all"]["cross_attention"] != first["cls"]["cross_attention"]  # paths' masks, so values differ)


def test_zero_weights_switch_terms_off(cfg, tmp_path, real_data):
    cfg = cfg.replace(w_modulus=0, w_cross_cls=0, max_steps=2, eval_every=2)
    run(cfg, "jtcse", tmp_path / "j", data_dir=real_data)
    row = next(r for r in metrics(tmp_path / "j") if "loss" in r)
    assert "modulus" not in row and "cross_cls" not in row and "cross_attention" in row


def test_resume_gives_the_uninterrupted_run(cfg, tmp_path, real_data, monkeypatch):
    """Interrupt after the checkpoint at step 4, resume with a new Trainer: same losses, same weights."""
    cfg = cfg.replace(keep_checkpoints=True)  # the final weights, to compare
    run(cfg, "jtcse", tmp_path / "full", data_dir=real_data)

    original = Trainer._save_checkpoint

    def save_then_die(self):
        original(self)
        if self.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, "jtcse", tmp_path / "cut", data_dir=real_data)
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    assert not (tmp_path / "cut" / "result.json").exists()
    run(cfg, "jtcse", tmp_path / "cut", data_dir=real_data)

    def losses(path):
        return [(r["step"], r["loss"], r["cross_cls"]) for r in metrics(path) if "loss" in r]

    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_losses_other_seed_differs(cfg, tmp_path, real_data):
    cfg = cfg.replace(max_steps=3, eval_every=3)
    run(cfg, "simcse_a", tmp_path / "a", data_dir=real_data)
    run(cfg, "simcse_a", tmp_path / "b", data_dir=real_data)
    run(cfg, "simcse_b", tmp_path / "c", data_dir=real_data)  # seed + seed_b_offset

    def losses(p):
        return [r["loss"] for r in metrics(p) if "loss" in r]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def _scale_loss(monkeypatch, factor: float, on_call) -> None:
    """Multiply the SimCSE loss by `factor` on the objective's calls n (1-based) where `on_call(n)` holds."""
    real_objective = train_mod.simcse_objective
    calls = {"n": 0}

    def scaled(*args, **kwargs):
        calls["n"] += 1
        loss, terms = real_objective(*args, **kwargs)
        return (loss * factor, terms) if on_call(calls["n"]) else (loss, terms)

    monkeypatch.setattr(train_mod, "simcse_objective", scaled)


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(cfg, tmp_path, real_data, monkeypatch):
    _scale_loss(monkeypatch, float("nan"), lambda n: n > 3)
    with pytest.raises(TrainingDiverged, match=r"not finite at step 4 .*last good checkpoint"):
        run(cfg, "simcse_a", tmp_path / "nan", data_dir=real_data)
    state = torch.load(tmp_path / "nan" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2
    weights = load_file(str(tmp_path / "nan" / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_batch_larger_than_corpus(cfg, tmp_path, real_data):
    with pytest.raises(ConfigError, match=r"batch_size=100 is larger than the corpus \(64 sentences\)"):
        run(cfg.replace(batch_size=100), "simcse_a", tmp_path / "x", data_dir=real_data)


def test_distill_needs_a_twin_teacher(cfg, tmp_path, real_data):
    with pytest.raises(ConfigError, match="needs a teacher"):
        Trainer(cfg, "distill", tmp_path / "d")
    with pytest.raises(ConfigError, match="does not hold tower_a/ and tower_b/"):
        run(cfg, "distill", tmp_path / "d", data_dir=real_data, teacher=tmp_path)


def test_distill_from_a_twin(cfg, tmp_path, real_data):
    cfg = cfg.replace(max_steps=2, eval_every=2)
    run(cfg, "tncse", tmp_path / "twin", data_dir=real_data)
    run(cfg, "distill", tmp_path / "d", data_dir=real_data, teacher=tmp_path / "twin" / "best")
    row = next(r for r in metrics(tmp_path / "d") if "loss" in r)
    assert row["loss"] == pytest.approx(row["nce"] + row["distill"], rel=1e-5)
    assert (tmp_path / "d" / "best" / "model.safetensors").is_file()


# ---------------------------------------------------------------- issue 14: recipes and numerics

def test_the_train_only_mlp_head_changes_the_loss_but_not_the_saved_tower(cfg, tmp_path, real_data):
    from transformers import AutoModel

    plain = run(cfg.replace(max_steps=2, eval_every=2), "simcse_a", tmp_path / "plain", data_dir=real_data)
    headed = run(cfg.replace(max_steps=2, eval_every=2, train_mlp_head=True, keep_checkpoints=True), "simcse_a",
                 tmp_path / "mlp", data_dir=real_data)
    loss = [[r["loss"] for r in metrics(tmp_path / d) if "loss" in r] for d in ("plain", "mlp")]
    assert loss[0] != loss[1]  # the loss sees MLP([CLS])
    model, info = AutoModel.from_pretrained(headed.best_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the tower alone, as SimCSE's test time
    assert set(load_file(str(headed.best_dir / "model.safetensors"))) == \
        set(load_file(str(plain.best_dir / "model.safetensors")))
    assert (tmp_path / "mlp" / "checkpoint" / "head.safetensors").is_file()  # resumable with the head


def test_stage_one_saves_its_trained_mlp_as_the_pooler(cfg, tmp_path, real_data):
    """SimCSE's simcse_to_huggingface.py: the saved tower's pooler is the trained MLP (the best step here is the
    last, so the checkpoint's head is the one best/ was saved with); mlp_as_pooler=false keeps the backbone's."""
    from transformers import AutoModel

    short = cfg.replace(max_steps=2, eval_every=2, train_mlp_head=True, keep_checkpoints=True)
    result = run(short, "simcse_a", tmp_path / "mlp", data_dir=real_data)
    assert result.best_step == 2
    head = load_file(str(tmp_path / "mlp" / "checkpoint" / "head.safetensors"))
    saved = load_file(str(result.best_dir / "model.safetensors"))
    assert torch.equal(saved["pooler.dense.weight"], head["dense.weight"])
    assert torch.equal(saved["pooler.dense.bias"], head["dense.bias"])
    model, info = AutoModel.from_pretrained(result.best_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    backbone = load_file(str(cfg.backbone) + "/model.safetensors")
    kept = run(short.replace(mlp_as_pooler=False), "simcse_a", tmp_path / "kept", data_dir=real_data)
    assert torch.equal(load_file(str(kept.best_dir / "model.safetensors"))["pooler.dense.weight"],
                       backbone["pooler.dense.weight"])  # frozen in stage 1, so the backbone's own


def test_clipping_and_linear_decay_follow_the_config(cfg, tmp_path, real_data, monkeypatch):
    real_clip, norms = torch.nn.utils.clip_grad_norm_, []

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        real_clip(params, max_norm, *args, **kwargs)
        grads = [p.grad.norm() for p in params if p.grad is not None]  # the pooler has none in a simcse stage
        norms.append(torch.linalg.vector_norm(torch.stack(grads)).item())

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    run(cfg.replace(max_steps=4, scheduler="linear", max_grad_norm=0.01), "simcse_a", tmp_path / "clip",
        data_dir=real_data)
    assert len(norms) == 4 and max(norms) <= 0.01 * (1 + 1e-5)  # every step, the global norm clipped to 0.01
    lrs = [r["lr"] for r in metrics(tmp_path / "clip") if "loss" in r]
    assert lrs == pytest.approx([cfg.lr * f for f in (0.75, 0.5, 0.25, 0.0)])  # after each step, decayed to 0
    run(cfg.replace(max_steps=2), "simcse_a", tmp_path / "free", data_dir=real_data)
    assert len(norms) == 4  # max_grad_norm null: no clipping


def test_a_forced_fp16_overflow_is_skipped_and_counted_not_fatal(cfg, tmp_path, real_data, monkeypatch):
    _scale_loss(monkeypatch, float("inf"), lambda n: n == 2)  # one overflowing step
    result = run(cfg.replace(precision="fp16", max_steps=4), "simcse_a", tmp_path / "fp16", data_dir=real_data)
    rows = [r for r in metrics(tmp_path / "fp16") if "step" in r and "overflow_skipped" in r]
    assert [r["overflow_skipped"] for r in rows] == [0, 1, 0, 0] and result.steps == 4
    assert "loss" not in rows[1]  # a window of one skipped step has no average to log


def test_tf32_and_determinism_are_scoped_to_training(cfg, tmp_path, real_data):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.are_deterministic_algorithms_enabled())
    trainer = Trainer(cfg.replace(max_steps=1, eval_every=1, deterministic=True), "simcse_a", tmp_path / "d",
                      data_dir=real_data, progress=False)
    seen = {}
    real_step = trainer.train_step

    def spy(batches):
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        return real_step(batches)

    trainer.train_step = spy
    trainer.run()
    assert seen["deterministic"] is True
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.are_deterministic_algorithms_enabled()) == before


def test_bf16_autocast_runs_the_same_code_on_cpu(cfg, tmp_path, real_data):
    result = run(cfg.replace(precision="bf16", max_steps=2, eval_every=2), "jtcse", tmp_path / "bf16",
                 data_dir=real_data)
    rows = [r for r in metrics(tmp_path / "bf16") if "loss" in r]
    assert result.steps == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert "overflow_skipped" not in rows[0]  # bf16 needs no loss scaler


class HostTraffic(TorchDispatchMode):
    """Records, below autograd, every op that moves a value between Python and a tensor: `lift_fresh` (a tensor made
    from Python data: `torch.tensor(x, device=d)`, a blocking host-to-device copy on CUDA) and `_local_scalar_dense`
    (a tensor read into Python: `.item()`, `bool(t)`, `float(t)`, a device sync on CUDA), with where it happened.
    Two reads are CPU-only by design and never happen on a GPU: the JTCSE direction draw (a tensor of a CPU
    generator, wherever the model is) and `model._key_mask`'s "no padding at all?" test (skipped on CUDA)."""

    def __init__(self):
        super().__init__()
        self.events, self.cpu_draws = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import traceback

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name == "randint" and kwargs.get("generator") is not None:
            self.cpu_draws.add(out.data_ptr())
        elif name in ("lift_fresh", "lift_fresh_copy", "_local_scalar_dense"):
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                     if "jtcse_lib" in f.filename or "site-packages" in f.filename][-3:]
            cpu_only = name == "_local_scalar_dense" and (args[0].data_ptr() in self.cpu_draws or any(
                w.endswith(" _key_mask") for w in where))
            if not cpu_only:
                self.events.append(f"{name} at {' < '.join(reversed(where))}")
        return out


@pytest.mark.parametrize("stage", ["simcse_a", "tncse", "jtcse", "distill"])
def test_a_training_step_moves_nothing_between_python_and_the_device(cfg, tmp_path, real_data, stage):
    cfg = cfg.replace(max_steps=2, eval_every=2, train_mlp_head=stage == "simcse_a", max_grad_norm=1.0)
    teacher = None
    if stage == "distill":
        run(cfg, "tncse", tmp_path / "twin", data_dir=real_data)
        teacher = tmp_path / "twin"
    trainer = Trainer(cfg, stage, tmp_path / stage, data_dir=real_data, progress=False, teacher=teacher)
    # the optimizer the trainer builds on CUDA (fused: it reads no step count on the host); on the CPU it builds the
    # unfused one, whose per-parameter step counters are Python reads
    trainer.optimizer = torch.optim.AdamW(trainer.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
    batches = [trainer.batch(0, 0)]
    if stage in ("simcse_a", "distill"):  # a plain encoder: on CUDA its padding mask goes in 4D (no mask.all())
        trainer.model.eval()
        plain = trainer.loss(batches[0])[0]
        trainer.mask_4d = True
        assert torch.equal(trainer.loss(batches[0])[0], plain)  # the same attention
        trainer.model.train()
    with trainer._numerics(), HostTraffic() as traffic:
        trainer.train_step(batches)
    assert traffic.events == []
    with HostTraffic() as traffic:  # the check itself sees what it looks for
        torch.tensor(float("-inf"), device=trainer.device) + torch.ones(2).sum().item()
    assert len(traffic.events) == 2


def test_metrics_are_strict_json(cfg, tmp_path, real_data):
    """No NaN/Infinity tokens (jq and pandas reject them): the step-0 record's best_dev, -inf before any candidate,
    is null."""
    run(cfg.replace(max_steps=2, eval_every=2), "simcse_a", tmp_path / "s", data_dir=real_data)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    rows = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "s" / "metrics.jsonl").read_text()
            .splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["best_dev"] is None
    json.loads((tmp_path / "s" / "result.json").read_text(), parse_constant=refuse)


def test_tensorboard_gets_the_logged_scalars_when_installed(cfg, tmp_path, real_data):
    pytest.importorskip("tensorboard", reason="the optional extra [tensorboard] (in [dev]) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(cfg.replace(max_steps=4, eval_every=2), "simcse_a", tmp_path / "tb", data_dir=real_data)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    logged = [(r["step"], r["loss"]) for r in metrics(tmp_path / "tb") if "loss" in r]
    assert [s for s, _ in loss] == [s for s, _ in logged] and all(
        v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(loss, logged))
    assert [e.step for e in events.Scalars("stsb_dev")] == [0, 2, 4]
