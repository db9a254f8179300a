"""Runs that cannot be silently wrong: mismatched resumes are refused, results are never replaced implicitly, bad
values and bad files give one-line errors before any work (docs/robustness.md lists each family with its test)."""

import hashlib
import json
import random
import shutil

import pytest

from jtcse_lib import backbones, data
from jtcse_lib.__main__ import main
from jtcse_lib.config import load_profile
from jtcse_lib.errors import JtcseError
from jtcse_lib.files import read_jsonl
from jtcse_lib.train import Trainer


@pytest.fixture
def cfg(tiny_model_dir):
    return load_profile("smoke", [f"backbone={tiny_model_dir}", "corpus_limit=48", "batch_size=8", "max_steps=4",
                                  "max_length=16", "eval_every=2", "checkpoint_every=2", "log_every=1",
                                  "dev_pairs=20", "cross_attention_layers=1"])


def train(cfg, out, data_dir, stage="simcse_a", **kw):
    return Trainer(cfg, stage, out, data_dir=data_dir, progress=False, **kw).run()


def digests(folder):
    """sha256 of every file below `folder` (the bytes a refusal must leave alone)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


# ---------------------------------------------------------------- a run folder knows what it holds

@pytest.mark.slow
def test_a_changed_setting_on_a_finished_run_is_refused_and_nothing_changes(cfg, tmp_path, real_data):
    out = tmp_path / "run"
    train(cfg, out, real_data)
    before = digests(out)
    with pytest.raises(JtcseError, match=r"holds a simcse_a run with other settings \(settings.lr: "
                                         r"3e-05 -> 0.0001\).*--restart"):
        train(cfg.replace(lr=1e-4), out, real_data)
    with pytest.raises(JtcseError, match="holds a simcse_a run with other settings .*stage: 'simcse_a' -> 'simcse_b'"):
        train(cfg, out, real_data, stage="simcse_b")
    assert digests(out) == before


@pytest.mark.slow
def test_a_finished_run_rerun_unchanged_is_a_no_op(cfg, tmp_path, real_data):
    out = tmp_path / "run"
    first = train(cfg, out, real_data)
    before = digests(out)
    again = train(cfg, out, real_data)
    assert (again.best_step, again.best_dev, again.steps) == (first.best_step, first.best_dev, first.steps)
    assert digests(out) == before


@pytest.mark.slow
def test_more_steps_continue_the_run_and_are_recorded(cfg, tmp_path, real_data):
    out = tmp_path / "run"
    cfg = cfg.replace(keep_checkpoints=True)  # extending needs the finished run's checkpoint
    train(cfg, out, real_data)
    result = train(cfg.replace(max_steps=6), out, real_data)
    assert result.steps == 6
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["max_steps"] == 6
    assert record["history"][-1]["extended"] == {"max_steps": [4, 6]} and record["history"][-1]["from_step"] == 4
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")[0] if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    with pytest.raises(JtcseError, match="only be extended"):
        train(cfg.replace(max_steps=5), out, real_data)  # fewer steps would have to undo training
    linear = cfg.replace(scheduler="linear")
    train(linear, tmp_path / "linear", real_data)
    with pytest.raises(JtcseError, match="only be extended to more steps of a constant schedule"):
        train(linear.replace(max_steps=6), tmp_path / "linear", real_data)  # its decay would restart mid-run


@pytest.mark.slow
def test_a_finished_run_keeps_best_not_its_checkpoint_and_cannot_be_extended_without_it(cfg, tmp_path, real_data):
    out = tmp_path / "run"
    first = train(cfg, out, real_data)
    assert (out / "best" / "model.safetensors").is_file() and (out / "result.json").is_file()
    assert not list(out.glob("checkpoint*"))  # keep_checkpoints=false (the default): pruned when finished
    before = digests(out)
    again = train(cfg, out, real_data)  # complete: nothing to do, nothing touched
    assert (again.best_step, again.best_dev, again.steps) == (first.best_step, first.best_dev, first.steps)
    with pytest.raises(JtcseError, match=r"finished run whose resume checkpoint was deleted .*keep_checkpoints=true"):
        train(cfg.replace(max_steps=6), out, real_data)
    assert digests(out) == before
    kept = train(cfg.replace(keep_checkpoints=True), tmp_path / "kept", real_data)
    assert (tmp_path / "kept" / "checkpoint" / "trainer_state.pt").is_file() and kept.steps == first.steps


@pytest.mark.slow
def test_best_without_results_or_checkpoint_is_an_unfinished_run_that_starts_again(cfg, tmp_path, real_data):
    """Stopped after a dev evaluation wrote best/ and before the first checkpoint: the same command trains it
    from step 0 (it used to be refused as 'results without a checkpoint')."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, real_data)
    original = Trainer._evaluate

    def evaluate_then_die(self, candidate=True):
        dev = original(self, candidate)
        if self.step == 2:
            raise KeyboardInterrupt  # after best/ of step 2, before the checkpoint of step 2
        return dev

    Trainer._evaluate = evaluate_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, cut, real_data)
    finally:
        Trainer._evaluate = original
    assert (cut / "best").is_dir() and not (cut / "checkpoint").exists() and not (cut / "result.json").exists()
    train(cfg, cut, real_data)
    assert digests(cut / "best") == digests(full / "best")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(full / "metrics.jsonl")[0]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(cut / "metrics.jsonl")[0]] == strip


@pytest.mark.slow
def test_restart_moves_the_old_run_aside_and_trains_afresh(cfg, tmp_path, real_data):
    out = tmp_path / "run"
    train(cfg, out, real_data)
    old = digests(out)
    train(cfg.replace(lr=1e-4), out, real_data, restart=True)
    aside = list(tmp_path.glob("run.old-*"))
    assert len(aside) == 1 and digests(aside[0]) == old  # the old run, byte for byte, beside the new
    assert json.loads((out / "run.json").read_text())["settings"]["lr"] == 1e-4


def test_a_folder_of_something_else_is_refused(cfg, tmp_path, real_data):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(JtcseError, match="is not empty and holds no run.json \\(notes.txt\\)"):
        train(cfg, out, real_data)
    assert (out / "notes.txt").read_text() == "my notes"
    (tmp_path / "file").write_text("")
    with pytest.raises(JtcseError, match="is a file, not a folder"):
        train(cfg, tmp_path / "file", real_data)
    with pytest.raises(JtcseError, match="cannot write to --out"):
        train(cfg, tmp_path / "file" / "below", real_data)


@pytest.mark.slow
def test_a_half_written_last_metrics_line_is_dropped_on_resume(cfg, tmp_path, real_data, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, real_data)
    original = Trainer._save_checkpoint

    def save_then_die(self):
        original(self)
        if self.step == 2:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write('{"step": 3, "loss": 0.12')  # the disk filled up mid-line
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cut, real_data)
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    train(cfg, cut, real_data)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(full / "metrics.jsonl")[0]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(cut / "metrics.jsonl")[0]] == strip


# ---------------------------------------------------------------- values checked before any work

@pytest.mark.parametrize("args, message", [
    (["--set", "batch_size=1"], "'batch_size': must be 2 or more"),
    (["--set", "max_length=1"], "max_length=1 leaves no room for a word: this tokenizer adds 2 special tokens"),
    (["--set", "simcse_a.lr=.nan"], "'(simcse_a\\.)?lr': must be a positive finite number"),
    (["--device", "cuda:7"], "--device asks for CUDA, but .*(CPU-only build|cannot use a GPU|finds no GPU)"
                             "|cuda:7 is not on this machine"),
    (["--device", "tpu"], "device 'tpu' is not a device name|only cpu and cuda"),
])
def test_bad_training_values_are_refused_before_any_work(args, message, tiny_model_dir, tmp_path, capsys):
    code, err = cli(capsys, "train", "--stage", "simcse_a", "--profile", "smoke", "--out", str(tmp_path / "out"),
                    "--set", f"backbone={tiny_model_dir}", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "must be 1 or more"),
    (["--max-length", "1"], "must be 2 or more"),
    (["--bootstrap", "-5"], "must be 0 or more"),
    (["--batch-size", "many"], "is not an integer"),
])
def test_evaluate_numbers_out_of_range_are_usage_errors(args, message, tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", str(tiny_model_dir), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_refuses_an_unwritable_out_before_evaluating(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from jtcse_lib import evaluate

    monkeypatch.setattr(evaluate, "evaluate_sts", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    code, err = cli(capsys, "evaluate", "--model", str(tiny_model_dir), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err
    (tmp_path / "f").write_text("")
    code, err = cli(capsys, "evaluate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "f" / "r.json"))
    assert code == 2 and "cannot be written" in err


# ---------------------------------------------------------------- every file through one door, under corruption

def corruptions(content: bytes, rng: random.Random) -> dict[str, bytes]:
    """The faults a disk, a kill or a careless copy inflicts on a file."""
    cut = rng.randrange(0, max(1, len(content)))
    flipped = bytearray(content)
    for _ in range(8):
        i = rng.randrange(len(flipped)) if flipped else 0
        if flipped:
            flipped[i] ^= 0xFF
    return {"truncated": content[:cut], "flipped": bytes(flipped), "empty": b"",
            "binary": bytes(rng.randrange(256) for _ in range(512))}


def assert_refused_or_harmless(load, harmless):
    """Loading a damaged file raises a one-line JtcseError that names the fix, unless the damage is one its format
    cannot notice: then `harmless` (a bool, or a predicate of what loaded) must accept what loaded."""
    try:
        result = load()
    except JtcseError as e:
        assert "\n" not in str(e) and "Fix:" in str(e), str(e)
        return
    assert harmless(result) if callable(harmless) else harmless, "a damaged file loaded without an error"


def is_text(content: bytes) -> bool:
    try:
        return b"\x00" not in content and bool(content.decode("utf8").strip())
    except UnicodeDecodeError:
        return False


def records(loaded) -> list:
    return list(zip(loaded.sent1, loaded.sent2, loaded.gold.tolist())) if isinstance(loaded, data.PairSet) else loaded


def text_damage_is_harmless(kind: str, damaged: bytes, original) -> bool | object:
    """Text that is no longer text (binary, not UTF-8, blank) must be refused. A file cut short may load: then as
    the original's records up to the cut (the last one may be cut too: SentEval files have no checksum). Changed
    characters that are still text are what no format can notice."""
    if not is_text(damaged):
        return False
    if kind != "truncated":
        return True
    return lambda got: len(records(got)) <= len(records(original)) and (
        records(got)[:-1] == records(original)[:len(records(got)) - 1])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("relative, load", [
    ("senteval/STS/STSBenchmark/sts-test.csv", lambda d: data.load_stsb("test", d)),
    ("senteval/SICK/SICK_test_annotated.txt", lambda d: data.load_sick("test", d)),
    ("senteval/STS/STS12-en-test/STS.gs.MSRpar.txt", lambda d: data.load_sts_subset("STS12", "MSRpar", d)),
    ("senteval/STS/STS12-en-test/STS.input.MSRpar.txt", lambda d: data.load_sts_subset("STS12", "MSRpar", d)),
    ("wiki/wiki1m_subset.txt", lambda d: data.read_corpus("wiki1m_subset", d)),
], ids=["stsb", "sick", "sts-gold", "sts-input", "corpus"])
def test_data_loaders_under_random_corruption(tiny_data, relative, load, seed):
    path, original = tiny_data / relative, load(tiny_data)
    for kind, damaged in corruptions(path.read_bytes(), random.Random(seed)).items():
        path.write_bytes(damaged)
        assert_refused_or_harmless(lambda: load(tiny_data), text_damage_is_harmless(kind, damaged, original))


def payload(content: bytes, name: str) -> range:
    """The bytes of raw numbers in a safetensors file (after its JSON header): no checksum covers them."""
    return range(8 + int.from_bytes(content[:8], "little"), len(content)) if name.endswith(".safetensors") else range(0)


def flips(original: bytes, damaged: bytes) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(original, damaged)) if a != b] if len(original) == len(damaged) else []


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_model_files_under_random_corruption(tiny_model_dir, tmp_path, name):
    """Refused with one line, except flipped bytes among a safetensors file's raw numbers: those load, and then as
    that damage alone (the weights differ in at most as many numbers as bytes were flipped)."""
    original = (tiny_model_dir / name).read_bytes()
    weights = backbones.load_encoder(tiny_model_dir).state_dict()

    def only_these_numbers_changed(changed: list[int]):
        return lambda loaded: sum(int((loaded[0].state_dict()[k] != w).sum()) for k, w in weights.items()) <= len(
            changed)

    for kind, damaged in corruptions(original, random.Random(name)).items():
        folder = shutil.copytree(tiny_model_dir, tmp_path / kind)
        (folder / name).write_bytes(damaged)
        changed = flips(original, damaged)
        in_numbers = bool(changed) and all(i in payload(original, name) for i in changed)
        harmless = only_these_numbers_changed(changed) if in_numbers else damaged.strip() == original.strip()
        assert_refused_or_harmless(lambda f=folder: backbones.load_backbone(f), harmless)


def test_twin_marker_under_random_corruption(tiny_model_dir, tmp_path):
    twin = tmp_path / "twin"
    for tower in backbones.TOWERS:
        shutil.copytree(tiny_model_dir, twin / tower)
    backbones.write_twin_json(twin)
    original = (twin / "twin.json").read_bytes()
    for damaged in corruptions(original, random.Random(1)).values():
        (twin / "twin.json").write_bytes(damaged)
        assert_refused_or_harmless(lambda: backbones.twin_towers(twin), damaged.strip() == original.strip())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoint/trainer_state.pt", "checkpoint/model.safetensors", "metrics.jsonl",
                                  "run.json"])
def test_run_files_under_random_corruption(cfg, tmp_path, real_data, name):
    """Resuming a run whose file was damaged is refused with one line, or finishes the run where the damage is one
    no format can notice: a log cut short (what a kill leaves; its half line is dropped), flipped bytes among a
    checkpoint's raw numbers (safetensors and torch's zip carry no checksum)."""
    cfg = cfg.replace(keep_checkpoints=True)  # the run to resume must have a checkpoint to damage
    template = tmp_path / "template"
    train(cfg.replace(max_steps=2), template, real_data)
    original = (template / name).read_bytes()
    for kind, damaged in corruptions(original, random.Random(name)).items():
        out = shutil.copytree(template, tmp_path / kind)
        (out / name).write_bytes(damaged)
        if name == "metrics.jsonl":
            harmless = kind in ("truncated", "empty") or is_text(damaged)
        elif name.endswith(".pt"):
            harmless = kind == "flipped"
        else:
            changed = flips(original, damaged)
            in_numbers = bool(changed) and all(i in payload(original, name) for i in changed)
            harmless = in_numbers or damaged.strip() == original.strip()
        assert_refused_or_harmless(lambda o=out: train(cfg, o, real_data),
                                   harmless and (lambda result: result.steps == 4))


@pytest.mark.slow
def test_a_damaged_checkpoint_names_itself_and_the_fix(cfg, tmp_path, real_data):
    out = tmp_path / "run"
    cfg = cfg.replace(keep_checkpoints=True)
    train(cfg.replace(max_steps=2), out, real_data)
    state = out / "checkpoint" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(JtcseError, match=r"the checkpoint in .*checkpoint is damaged .*Fix: pass --restart"):
        train(cfg, out, real_data)
    assert len(state.read_bytes()) == 100  # the resume never reached training: nothing was rewritten
