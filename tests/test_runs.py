"""The run cache: keys, reuse across ablations, completeness marker, cached scores, locks, a read-only cache.

The tests that train (tiny models, two steps) are marked slow."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import mounted_tmpfs

from jtcse_lib import runs
from jtcse_lib.backbones import is_twin_dir
from jtcse_lib.config import load_profile
from jtcse_lib.errors import ConfigError, Interrupted, JtcseError
from jtcse_lib.files import FileProblem, exclusive_lock


@pytest.fixture
def cfg(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    return load_profile("smoke", [f"backbone={tiny_model_dir}", "corpus_limit=32", "batch_size=8", "max_steps=2",
                                  "max_length=16", "eval_every=2", "checkpoint_every=2", "dev_pairs=20",
                                  "test_pairs=10", "cross_attention_layers=1"])


def test_keys_follow_dependencies(cfg):
    ablated = cfg.replace(w_modulus=0)
    for stage in ("simcse_a", "simcse_b"):
        assert runs.stage_key(cfg, stage) == runs.stage_key(ablated, stage)  # stage 1 is reused
    assert runs.stage_key(cfg, "jtcse") != runs.stage_key(ablated, "jtcse")
    assert runs.stage_key(cfg, "distill") != runs.stage_key(ablated, "distill")  # its teacher changed
    assert runs.stage_key(cfg, "simcse_a") != runs.stage_key(cfg.replace(simcse_a={"lr": 1e-4}), "simcse_a")
    assert runs.stage_key(cfg, "simcse_b") == runs.stage_key(cfg.replace(simcse_a={"lr": 1e-4}), "simcse_b")
    assert runs.stage_key(cfg, "tncse") == runs.stage_key(cfg.replace(cross_attention_layers=2), "tncse")
    assert runs.stage_key(cfg, "simcse_a") != runs.stage_key(cfg.replace(seed=7), "simcse_a")
    assert runs.stage_key(cfg, "jtcse") == runs.stage_key(cfg.replace(test_pairs=50, seeds=[1, 2]), "jtcse")
    with pytest.raises(ConfigError, match="unknown run stage"):
        runs.stage_key(cfg, "simcse")


def test_keys_follow_the_data_content_not_its_folder(cfg, tiny_data, tmp_path):
    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    for stage in ("simcse_a", "jtcse", "distill"):
        assert runs.stage_key(cfg, stage, tiny_data) == runs.stage_key(cfg, stage, moved)
    before = runs.stage_key(cfg, "jtcse", moved)
    (moved / "wiki" / "wiki1m_subset.txt").write_text("An edited corpus.\nWith other sentences.\n")
    assert runs.stage_key(cfg, "jtcse", moved) != before  # a new corpus trains new models
    assert runs.stage_key(cfg, "simcse_a", moved) != runs.stage_key(cfg, "simcse_a", tiny_data)


@pytest.mark.slow
def test_trained_model_trains_once_and_marks_complete(cfg, real_data, monkeypatch):
    path = runs.trained_model(cfg, "tncse", data_dir=real_data, progress=False)
    assert is_twin_dir(path) and runs.is_complete(cfg, "tncse")
    assert runs.is_complete(cfg, "simcse_a") and runs.is_complete(cfg, "simcse_b")
    assert [r["step"] for r in runs.metrics(cfg, "tncse") if "loss" in r] == [1, 2]

    from jtcse_lib import train

    def fail(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(train.Trainer, "run", fail)
    assert runs.trained_model(cfg, "tncse", data_dir=real_data) == path


@pytest.mark.slow
def test_half_written_run_is_not_complete(cfg, real_data):
    out = runs.run_dir(cfg, "simcse_a")
    (out / "best").mkdir(parents=True)  # a best model from a run that was killed before it finished
    assert not runs.is_complete(cfg, "simcse_a")
    path = runs.trained_model(cfg, "simcse_a", data_dir=real_data, progress=False)
    assert (path / "model.safetensors").is_file() and runs.is_complete(cfg, "simcse_a")
    assert [p.name.split(".old-")[0] for p in out.parent.glob(f"{out.name}.old-*")] == [out.name]  # kept aside


@pytest.mark.slow
def test_sts_scores_are_cached(cfg, real_data):
    first = runs.sts_scores(cfg, "simcse_a", bootstrap=20, data_dir=real_data, progress=False)
    assert set(first["scores"]) == {"STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark",
                                    "SICKRelatedness", "avg"}
    assert first["n_pairs"]["STS12"] == 5 * 10 and first["test_pairs_per_subset"] == 10
    cached = list(runs.run_dir(cfg, "simcse_a").glob("sts_cls_*.json"))
    assert len(cached) == 1
    assert runs.sts_scores(cfg, "simcse_a", bootstrap=20, data_dir=real_data) == first


@pytest.mark.slow
def test_cached_sts_scores_of_other_test_data_are_recomputed(cfg, real_data, tiny_data):
    first = runs.sts_scores(cfg, None, bootstrap=0, data_dir=real_data, progress=False)
    # the same models, other test files (e.g. a corrected SICK file): the cached scores must not be reused
    other = shutil.copytree(real_data, tiny_data.parent / "other")
    sick = other / "senteval" / "SICK" / "SICK_test_annotated.txt"
    lines = sick.read_text().splitlines()
    sick.write_text("\n".join(lines[:1] + lines[1:][::-1]) + "\n")  # same pairs, other order: other first 10 pairs
    second = runs.sts_scores(cfg, None, bootstrap=0, data_dir=other, progress=False)
    assert second["test_data_digest"] != first["test_data_digest"]
    assert second["scores"]["SICKRelatedness"] != first["scores"]["SICKRelatedness"]


def test_copy_run_records_takes_the_records_not_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    run = tmp_path / "runs" / "cpu" / "jtcse-abc123"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.safetensors").write_bytes(b"weights")
    for name in ("result.json", "metrics.jsonl", "sts_cls_all_1000.json", "config.json"):
        (run / name).write_text(name)
    (tmp_path / "runs" / "cpu" / "cache").mkdir()  # not a run folder
    copied = runs.copy_run_records("cpu", tmp_path / "out")
    assert sorted(p.name for p in copied) == ["metrics.jsonl", "result.json", "sts_cls_all_1000.json"]
    assert (tmp_path / "out" / "jtcse-abc123" / "result.json").read_text() == "result.json"
    assert not (tmp_path / "out" / "cache").exists()


@pytest.mark.slow
def test_per_pair_predictions_are_kept_beside_the_scores(cfg, real_data):
    from jtcse_lib.evaluate import spearman100

    scores = runs.sts_scores(cfg, "simcse_a", bootstrap=0, data_dir=real_data, progress=False)
    pred, gold = runs.sts_predictions(cfg, "simcse_a", bootstrap=0, data_dir=real_data, progress=False)
    assert list(pred) == list(scores["n_pairs"]) and all(len(pred[t]) == scores["n_pairs"][t] for t in pred)
    for task in pred:  # the stored cosines give the stored score: what a paired bootstrap resamples
        assert spearman100(pred[task], gold[task]) == pytest.approx(scores["scores"][task], abs=1e-9)


@pytest.mark.slow
def test_compare_is_the_paired_bootstrap_of_the_cached_predictions(cfg, real_data):
    table = runs.compare(cfg, "simcse_a", cfg, "simcse_b", n_boot=50, data_dir=real_data, progress=False)
    a = runs.sts_scores(cfg, "simcse_a", data_dir=real_data)["scores"]
    b = runs.sts_scores(cfg, "simcse_b", data_dir=real_data)["scores"]
    rows = table.set_index("task")
    assert list(rows.index) == [*a][:-1] + ["avg"]
    for task in a:
        assert rows.loc[task, "diff"] == pytest.approx(a[task] - b[task], abs=1e-9)
    same = runs.compare(cfg, "simcse_a", cfg, "simcse_a", n_boot=50, data_dir=real_data, progress=False)
    assert (same["diff"] == 0).all() and (same["boot_low"] == same["boot_high"]).all()
    assert runs.better_simcse_tower(cfg, real_data) in ("simcse_a", "simcse_b")


@pytest.mark.slow
def test_the_controls_are_the_untrained_twin_and_the_teachers_tower_a(cfg, real_data):
    """'simcse_a+simcse_b' scores the two stage-1 towers summed (stage 2's starting point), 'jtcse/tower_a' the
    teacher's tower A (distillation's starting point); each equals the encoder built by hand from the folders."""
    from jtcse_lib.evaluate import evaluate_sts, sentence_encoder

    towers = [runs.trained_model(cfg, s, data_dir=real_data, progress=False) for s in ("simcse_a", "simcse_b")]
    twin0 = runs.sts_scores(cfg, runs.UNTRAINED_TWIN, data_dir=real_data, progress=False)
    by_hand = evaluate_sts(sentence_encoder(towers, progress=False), data_dir=real_data, bootstrap=0,
                           max_pairs=cfg.test_pairs).to_dict()["scores"]
    assert twin0["scores"] == pytest.approx(by_hand, abs=1e-9)
    assert twin0["model"] == f"{towers[0]} + {towers[1]}"
    tower_a = runs.sts_scores(cfg, runs.TEACHER_TOWER_A, data_dir=real_data, progress=False)
    jtcse_best = runs.trained_model(cfg, "jtcse", data_dir=real_data, progress=False)
    alone = evaluate_sts(sentence_encoder(jtcse_best / "tower_a", progress=False), data_dir=real_data, bootstrap=0,
                         max_pairs=cfg.test_pairs).to_dict()["scores"]
    assert tower_a["scores"] == pytest.approx(alone, abs=1e-9)
    assert (jtcse_best.parent / "scores-tower_a").is_dir()
    paired = runs.compare(cfg, "jtcse", cfg, runs.UNTRAINED_TWIN, n_boot=20, data_dir=real_data, progress=False)
    assert paired.set_index("task").loc["avg", "diff"] == pytest.approx(
        runs.sts_scores(cfg, "jtcse", data_dir=real_data)["scores"]["avg"] - twin0["scores"]["avg"], abs=1e-9)
    with pytest.raises(ConfigError, match="unknown model"):
        runs.sts_scores(cfg, "jtcse/tower_c", data_dir=real_data)


# ---------------------------------------------------------------- locks, resuming, a read-only cache

@pytest.mark.slow
def test_a_run_with_its_record_but_no_checkpoint_resumes_in_place(cfg, real_data):
    out = runs.trained_model(cfg, "simcse_a", data_dir=real_data, progress=False).parent
    # what a run stopped before its first checkpoint holds: run.json, best/, metrics, no result.json, no checkpoint
    for name in ("DONE", "result.json"):
        (out / name).unlink()
    for name in ("checkpoint", "checkpoint.old"):
        shutil.rmtree(out / name, ignore_errors=True)
    assert (out / "run.json").is_file() and (out / "best").is_dir()
    runs.trained_model(cfg, "simcse_a", data_dir=real_data, progress=False)
    assert runs.is_complete(cfg, "simcse_a") and (out / "result.json").is_file()
    assert not list(out.parent.glob(f"{out.name}.old-*"))  # the trainer resumed it: nothing moved aside
    assert [r["step"] for r in runs.metrics(cfg, "simcse_a") if "loss" in r] == [1, 2]  # trained again, from step 0


def test_a_second_caller_waits_for_the_run_being_trained_and_uses_it(cfg, real_data, monkeypatch, capsys):
    from jtcse_lib import train

    def no_training(*args, **kwargs):
        raise AssertionError("the run another process finished was trained again")

    monkeypatch.setattr(train, "Trainer", no_training)
    out = runs.run_dir(cfg, "simcse_a", real_data)
    held = threading.Event()

    def other_process():  # holds the run cache's lock, finishes the run, lets go
        with exclusive_lock(out.with_name(f"{out.name}.lock"), "the run"):
            held.set()
            time.sleep(0.5)
            (out / "best").mkdir(parents=True)
            (out / "DONE").write_text("{}")

    other = threading.Thread(target=other_process)
    other.start()
    held.wait()
    start = time.monotonic()
    assert runs.trained_model(cfg, "simcse_a", data_dir=real_data) == out / "best"
    assert time.monotonic() - start > 0.3  # it waited (not Busy), and then found the run complete
    other.join()
    assert f"waiting for pid {os.getpid()}" in capsys.readouterr().err


def test_distributed_runs_are_launched_by_distributed_launch(cfg, tmp_path, monkeypatch):
    from jtcse_lib import distributed

    calls, codes = [], iter([0, 130, 1])
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: calls.append((nproc, argv)) or next(codes))
    out = tmp_path / "runs" / "smoke" / "simcse_a-key"
    runs._train_distributed(cfg.replace(nproc=2), "simcse_a", out, None, restart=True)
    nproc, argv = calls[0]
    assert nproc == 2 and argv[:3] == ["train", "--stage", "simcse_a"] and "--restart" in argv
    assert argv[argv.index("--out") + 1] == str(out)
    assert json.loads(Path(argv[argv.index("--config") + 1]).read_text())["nproc"] == 2
    with pytest.raises(Interrupted, match="was stopped"):
        runs._train_distributed(cfg.replace(nproc=2), "simcse_a", out, None, restart=False)
    with pytest.raises(JtcseError, match="distributed training of simcse_a into .* failed"):
        runs._train_distributed(cfg.replace(nproc=2), "simcse_a", out, None, restart=False)


def test_importing_the_run_cache_loads_neither_the_trainer_nor_the_cli():
    code = ("import sys, jtcse_lib.runs; print(sorted(m for m in ('jtcse_lib.train', 'jtcse_lib.__main__', 'torch') "
            "if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.fixture
def own_disk(tmp_path):
    """(a real tmpfs mounted in tmp_path, a function that remounts it read-only): root only."""
    with mounted_tmpfs(tmp_path / "disk", 100) as disk:
        yield disk, lambda: subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


@pytest.mark.slow
def test_a_complete_cache_on_a_read_only_disk_serves_what_it_holds(cfg, real_data, own_disk, monkeypatch):
    from jtcse_lib import evaluate, train

    disk, read_only = own_disk
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(disk))
    model = runs.trained_model(cfg, "simcse_a", data_dir=real_data, progress=False)
    scores = runs.sts_scores(cfg, "simcse_a", bootstrap=0, data_dir=real_data, progress=False)
    backbone = runs.sts_scores(cfg, None, bootstrap=0, data_dir=real_data, progress=False)
    pred, gold = runs.sts_predictions(cfg, "simcse_a", bootstrap=0, data_dir=real_data, progress=False)
    read_only()
    with pytest.raises(OSError, match="Read-only file system"):
        (disk / "probe").write_text("x")  # root ignores permission bits, not a read-only mount

    def no_work(*args, **kwargs):
        raise AssertionError("trained or scored on a read-only cache")

    for module, name in ((evaluate, "sentence_encoder"), (evaluate, "evaluate_sts"), (train, "Trainer")):
        monkeypatch.setattr(module, name, no_work)
    assert runs.trained_model(cfg, "simcse_a", data_dir=real_data) == model
    assert runs.sts_scores(cfg, "simcse_a", bootstrap=0, data_dir=real_data) == scores
    assert runs.sts_scores(cfg, None, bootstrap=0, data_dir=real_data) == backbone
    again, gold_again = runs.sts_predictions(cfg, "simcse_a", bootstrap=0, data_dir=real_data)
    assert all(np.array_equal(again[t], pred[t]) and np.array_equal(gold_again[t], gold[t]) for t in pred)
    assert runs.summary(cfg, "simcse_a", real_data)["stage"] == "simcse_a" and runs.metrics(cfg, "simcse_a", real_data)

    # what the cache lacks: one line saying so, before any work
    with pytest.raises(FileProblem, match=r"the STS scores sts_cls_10_5.json of simcse_a is not in the run cache, "
                                          r"and .* cannot be written to add it \(Read-only file system\)") as caught:
        runs.sts_scores(cfg, "simcse_a", bootstrap=5, data_dir=real_data)
    assert "\n" not in str(caught.value) and "JTCSE_RUNS_DIR" in str(caught.value)
    with pytest.raises(FileProblem, match=r"the simcse_b run simcse_b-\w+ is not in the run cache.*Read-only"):
        runs.trained_model(cfg, "simcse_b", data_dir=real_data)
