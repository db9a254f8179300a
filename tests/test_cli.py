"""The command line: evaluate's JSON, twins, run folders, one-line errors and exit codes, export with its card."""

import json
import subprocess
import sys

import pytest

from jtcse_lib.__main__ import main


def test_evaluate_writes_the_documented_json(tiny_data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--pooling", "mean", "--data-dir", str(tiny_data),
                 "--bootstrap", "50", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"model", "pooling", "protocol", "scores", "n_pairs", "subsets", "config",
                           "git_commit", "device", "versions"}
    assert result["protocol"] == "senteval-all" and result["pooling"] == "mean"
    assert list(result["scores"]) == ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark",
                                      "SICKRelatedness", "avg"]
    assert set(result["ci95"]) == set(result["n_pairs"])
    printed = capsys.readouterr().out
    assert "STS12" in printed and "avg" in printed


def test_evaluate_a_twin_folder_sums_the_towers(tiny_data, tiny_model_dir, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin / "tower_a")
    shutil.copytree(tiny_model_dir, twin / "tower_b")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data), "--tasks",
                 "STSBenchmark", "--out", str(one)]) == 0
    assert main(["evaluate", "--model", str(twin), "--data-dir", str(tiny_data), "--tasks", "STSBenchmark",
                 "--out", str(two)]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["config"]["twin"] is True
    # identical towers: the sum is 2x one tower, so cosines and scores are unchanged
    assert a["scores"]["STSBenchmark"] == pytest.approx(b["scores"]["STSBenchmark"], abs=1e-6)


def _other_tower(tiny_model_dir, path, seed):
    """Another random tower of tiny_model_dir's architecture, saved WITHOUT a tokenizer (as the authors release)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    BertModel(BertConfig.from_pretrained(tiny_model_dir)).save_pretrained(path)
    return path


def test_released_towers_a_twin_given_as_two_and_the_uc_ensemble(tiny_data, tiny_model_dir, tmp_path, capsys):
    """The authors' checkpoints: tower folders without a tokenizer (--tokenizer), a twin as two folders (their sum),
    and JTCSE-UC's (1 - w)(A + B) + w C, each scoring what the same embeddings computed by hand score."""
    import numpy as np

    from jtcse_lib.backbones import load_encoder, load_tokenizer
    from jtcse_lib.evaluate import TowerEncoder, evaluate_sts

    a, b = _other_tower(tiny_model_dir, tmp_path / "a", 1), _other_tower(tiny_model_dir, tmp_path / "b", 2)
    common = ["--data-dir", str(tiny_data), "--tasks", "STSBenchmark", "STS12"]
    assert main(["evaluate", "--model", str(a), *common]) == 2  # no tokenizer: one line naming --tokenizer
    assert "--tokenizer" in capsys.readouterr().err
    out = {name: tmp_path / f"{name}.json" for name in ("twin", "uc")}
    assert main(["evaluate", "--model", str(a), str(b), "--tokenizer", str(tiny_model_dir), *common,
                 "--out", str(out["twin"])]) == 0
    assert main(["evaluate", "--model", str(a), str(b), "--tokenizer", str(tiny_model_dir), "--ensemble",
                 str(tiny_model_dir), "--ensemble-weight", "0.7", *common, "--out", str(out["uc"])]) == 0
    got = {name: json.loads(path.read_text()) for name, path in out.items()}
    tok = load_tokenizer(tiny_model_dir)
    enc = {k: TowerEncoder(load_encoder(m).eval(), tok, progress=False) for k, m in
           (("a", a), ("b", b), ("c", tiny_model_dir))}

    def by_hand(combine):
        return evaluate_sts(lambda s: combine({k: e(s) for k, e in enc.items()}), ["STSBenchmark", "STS12"],
                            tiny_data).scores

    twin = by_hand(lambda e: e["a"] + e["b"])
    uc = by_hand(lambda e: 0.3 * (e["a"] + e["b"]) + 0.7 * e["c"])
    assert got["twin"]["scores"] == pytest.approx(twin, abs=1e-9) and got["twin"]["config"]["twin"] is True
    assert got["uc"]["scores"] == pytest.approx(uc, abs=1e-9)
    assert got["uc"]["ensemble"]["weight"] == 0.7 and got["uc"]["model"] == f"{a} + {b}"
    assert not np.isclose(twin["avg"], uc["avg"])  # the ensemble is a different model


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_missing_data_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jtcse_lib", "evaluate", "--model", "minilm", "--data-dir",
                           str(tmp_path / "none")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "does not exist" in err[0] and "Fix:" in err[0]
    assert "Traceback" not in proc.stderr


def test_bad_model_name_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path), "--tasks", "STSBenchmark"]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    from jtcse_lib.errors import ModelError

    with pytest.raises(ModelError):
        main(["--debug", "evaluate", "--model", str(tmp_path)])


def test_export_cli_tower_and_twin(tiny_model_dir, tmp_path, capsys):
    import shutil

    from sentence_transformers import SentenceTransformer

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "best")
    (run / "result.json").write_text(json.dumps({"stage": "distill", "best_stsb_dev": 12.5, "best_step": 3,
                                                 "config": {"backbone": "tiny", "profile": "smoke"}}))
    out = tmp_path / "st"
    assert main(["export", "--model", str(run / "best"), "--out", str(out)]) == 0
    assert "JTCSE-D" in (out / "README.md").read_text() and "12.50" in (out / "README.md").read_text()
    assert SentenceTransformer(str(out), device="cpu").encode(["a b c"]).shape == (1, 32)
    assert main(["export", "--model", str(run / "best"), "--out", str(out)]) == 2  # exists: refused
    assert "overwrite" in capsys.readouterr().err.lower()
    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin / "tower_a")
    shutil.copytree(tiny_model_dir, twin / "tower_b")
    assert main(["export", "--model", str(twin), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tower_b" / "config.json").is_file()


def test_a_run_folder_is_accepted_where_a_model_folder_is_expected(tiny_data, tiny_model_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "best")
    (run / "metrics.jsonl").write_text("")
    out_run, out_best = tmp_path / "run.json", tmp_path / "best.json"
    for model, out in ((run, out_run), (run / "best", out_best)):
        assert main(["evaluate", "--model", str(model), "--data-dir", str(tiny_data), "--tasks", "STSBenchmark",
                     "--out", str(out)]) == 0
    a, b = json.loads(out_run.read_text()), json.loads(out_best.read_text())
    assert a["model"] == str(run / "best") and a["scores"] == b["scores"]


def test_a_run_folder_that_is_training_is_refused_unless_asked(tiny_data, tiny_model_dir, tmp_path, capsys):
    """While a training holds the run folder's writer lock, its best/ is the best so far: using it is refused with one
    line, or done on purpose with --while-training; once the lock is released it is the run's model."""
    import shutil

    from jtcse_lib.files import exclusive_lock, writer_lock

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "best")
    args = ["evaluate", "--model", str(run), "--data-dir", str(tiny_data), "--tasks", "STSBenchmark"]
    with exclusive_lock(writer_lock(run), "the test's training"):
        for model in (run, run / "best"):
            assert main(["evaluate", "--model", str(model), *args[3:]]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "is still being trained (pid " in err[0] and "--while-training" in err[0]
        assert main(["train", "--stage", "tncse", "--init", str(run), str(run), "--out", str(tmp_path / "t")]) == 2
        assert "is still being trained" in capsys.readouterr().err
        assert main([*args, "--while-training"]) == 0
    assert main(args) == 0
