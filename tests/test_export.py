"""Exports: Hugging Face, sentence-transformers (CLS pooling stated explicitly), the twin, the model card.

Tiny random BERTs (MiniLM's tokenizer) keep most tests fast; the real MiniLM carries the main round trip (slow, as
are the full-disk tests on a real tmpfs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mounted_tmpfs
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, BertConfig, BertModel

from jtcse_lib import evaluate as ev
from jtcse_lib import export as ex
from jtcse_lib.backbones import load_backbone, minilm_dir
from jtcse_lib.errors import ModelError
from jtcse_lib.files import NoSpace

SENTENCES = [
    "A man is playing a guitar.",
    "Dogs.",
    "The quick brown fox jumps over the lazy dog while the farmer, who had been awake since dawn, watches "
    "from the porch and wonders whether the rain will come before the harvest is in.",
    "Two women are sitting on a bench in the park.",
    "A man is playing a guitar.",  # duplicate
    "Stocks fell sharply on Monday.",
]
LONG = " ".join(["the committee discussed the proposal at great length"] * 12)  # ~100 tokens
SCORES = {"STS12": 61.23, "STS13": 72.5, "STS14": 66.0, "STS15": 77.75, "STS16": 73.1, "STSBenchmark": 71.4,
          "SICKRelatedness": 68.9}


def st_encode(path, sentences):
    return SentenceTransformer(str(path), device="cpu").encode(sentences, convert_to_numpy=True,
                                                               show_progress_bar=False)


def cls(model, tokenizer, sentences, **kw):
    return ev.encode(model, tokenizer, sentences, pooling="cls", progress=False, **kw)


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm):
    return minilm[1]


def make_tiny(folder: Path, tokenizer, seed: int, with_tokenizer: bool = True) -> Path:
    """A tiny random BertModel (2 layers, 32 wide, 128 positions) saved as a Hugging Face folder."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(folder)
    if with_tokenizer:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny(tmp_path, minilm_tokenizer) -> Path:
    return make_tiny(tmp_path / "tiny", minilm_tokenizer, seed=0)


@pytest.fixture
def raw_twin(tmp_path, minilm_tokenizer) -> Path:
    """A training-style twin folder: tower_a/ and tower_b/, two different random towers, tokenizer in each."""
    root = tmp_path / "twin_run"
    make_tiny(root / "tower_a", minilm_tokenizer, seed=1)
    make_tiny(root / "tower_b", minilm_tokenizer, seed=2)
    return root


@pytest.fixture(scope="module")
def minilm_st(tmp_path_factory):
    """The shipped MiniLM exported once as a sentence-transformers folder (CLS), with a card."""
    out = tmp_path_factory.mktemp("minilm") / "st"
    card = {"method": "JTCSE", "backbone": "minilm", "training_data": "Wiki1M subset", "profile": "cpu",
            "scores": SCORES, "protocol": "senteval-all", "git_commit": "0123abc", "created": "2025-06-01T12:00:00"}
    before = sorted((p.name, p.stat().st_mtime) for p in minilm_dir().rglob("*"))
    ex.export_sentence_transformers("minilm", out, card=card)
    assert sorted((p.name, p.stat().st_mtime) for p in minilm_dir().rglob("*")) == before  # source untouched
    return out


# ---------------------------------------------------------------- sentence-transformers, real MiniLM

@pytest.mark.slow
def test_minilm_st_export_equals_our_cls_encoding(minilm, minilm_st):
    model, tokenizer = minilm
    got = st_encode(minilm_st, SENTENCES)
    want = cls(model, tokenizer, SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # no Normalize module inherited from the MiniLM folder: raw CLS vectors are not unit length
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_minilm_st_export_files(minilm_st):
    modules = json.loads((minilm_st / "modules.json").read_text())
    assert modules == [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    pooling = json.loads((minilm_st / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 384
    assert pooling["pooling_mode_cls_token"] is True
    assert not any(v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_cls_token")
    assert json.loads((minilm_st / "sentence_bert_config.json").read_text())["max_seq_length"] == 512
    assert (minilm_st / "config_sentence_transformers.json").is_file()
    assert {p.name for p in minilm_st.iterdir() if p.is_dir()} == {"1_Pooling"}  # no 2_Normalize
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (minilm_st / name).is_file(), name
    assert not list(minilm_st.parent.glob(".st.partial-*"))  # staging folder renamed away
    st = SentenceTransformer(str(minilm_st), device="cpu")
    assert len(st) == 2 and st[1].pooling_mode == "cls" and st.max_seq_length == 512


@pytest.mark.slow
def test_minilm_model_card(minilm_st):
    card = (minilm_st / "README.md").read_text()
    assert "CLS" in card and "before the pooler" in card
    assert "JTCSE" in card and "minilm" in card and "Wiki1M subset" in card
    assert "| 61.23 | 72.50 | 66.00 | 77.75 | 73.10 | 71.40 | 68.90 |" in card
    avg = np.mean(list(SCORES.values()))
    assert f"{avg:.2f} |" in card  # Avg: plain mean of the seven
    assert "0123abc" in card and "2025-06-01" in card
    assert "SentenceTransformer(" in card and "AutoModel.from_pretrained(" in card


# ---------------------------------------------------------------- Hugging Face export; the bare-folder trap

@pytest.mark.slow
def test_export_hf_round_trip_and_bare_folder_is_mean_pooled(minilm, minilm_st, tmp_path):
    model, tokenizer = minilm
    out = ex.export_hf("minilm", tmp_path / "hf")
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()
    loaded, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    source = model.state_dict()
    saved = loaded.state_dict()
    assert set(saved) == set(source)
    for key, value in source.items():
        assert torch.equal(saved[key], value), key
    assert load_file(str(out / "model.safetensors"))  # safetensors weights

    # Why the sentence-transformers export exists: on a *bare* Hugging Face folder sentence-transformers
    # silently builds mean pooling, which is not what JTCSE evaluates ...
    bare = st_encode(out, SENTENCES)
    np.testing.assert_allclose(bare, ev.encode(model, tokenizer, SENTENCES, pooling="mean", progress=False),
                               atol=1e-5, rtol=0)
    assert not np.allclose(bare, cls(model, tokenizer, SENTENCES), atol=1e-2)
    # ... while the export of the same weights states CLS and gives the vectors we score.
    np.testing.assert_allclose(st_encode(minilm_st, SENTENCES), cls(model, tokenizer, SENTENCES), atol=1e-5, rtol=0)


def test_export_hf_writes_card_only_when_given(tiny, tmp_path):
    assert not (ex.export_hf(tiny, tmp_path / "plain") / "README.md").exists()
    card = (ex.export_hf(tiny, tmp_path / "carded", card={"method": "SimCSE"}) / "README.md").read_text()
    assert "SimCSE" in card and "library_name: transformers" in card and "mean pooling" in card


def test_bad_paths_give_model_errors(tmp_path, raw_twin):
    with pytest.raises(ModelError, match="does not exist"):
        ex.export_hf(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ModelError, match="tower_a"):
        ex.export_sentence_transformers(raw_twin, tmp_path / "out")  # a twin is not a tower
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        ex.export_hf(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tower_without_tokenizer_is_refused(tmp_path, minilm_tokenizer):
    bare = make_tiny(tmp_path / "weights_only", minilm_tokenizer, seed=0, with_tokenizer=False)
    with pytest.raises(ModelError, match="no tokenizer files"):
        ex.export_sentence_transformers(bare, tmp_path / "out")


# ---------------------------------------------------------------- sentence-transformers options

def test_mean_pooling_export_and_pooler_refused(tiny, tmp_path):
    model, tokenizer = load_backbone(tiny)
    out = ex.export_sentence_transformers(tiny, tmp_path / "mean", pooling="mean")
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    np.testing.assert_allclose(st_encode(out, SENTENCES),
                               ev.encode(model, tokenizer, SENTENCES, pooling="mean", progress=False),
                               atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="'pooler' cannot be expressed"):
        ex.export_sentence_transformers(tiny, tmp_path / "pooler", pooling="pooler")
    with pytest.raises(ModelError, match="unknown pooling 'max'"):
        ex.export_sentence_transformers(tiny, tmp_path / "max", pooling="max")
    assert not (tmp_path / "pooler").exists() and not (tmp_path / "max").exists()
    assert not (out / "README.md").exists()  # no card asked for: none written (not even sentence-transformers')


def test_max_seq_length_is_written_and_truncates(tiny, tmp_path):
    model, tokenizer = load_backbone(tiny)
    out = ex.export_sentence_transformers(tiny, tmp_path / "st16", max_seq_length=16)
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 16
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 16
    assert st.tokenize([LONG])["input_ids"].shape[1] == 16
    got = st.encode([LONG, "Short one."], convert_to_numpy=True)
    np.testing.assert_allclose(got, cls(model, tokenizer, [LONG, "Short one."], max_length=16), atol=1e-5, rtol=0)
    assert not np.allclose(got[0], cls(model, tokenizer, [LONG])[0], atol=1e-3)  # it did truncate

    # default: the tokenizer's limit (512) capped at the tiny model's 128 positions
    default = ex.export_sentence_transformers(tiny, tmp_path / "default")
    assert json.loads((default / "sentence_bert_config.json").read_text())["max_seq_length"] == 128
    with pytest.raises(ModelError, match="exceeds the model's 128 position"):
        ex.export_sentence_transformers(tiny, tmp_path / "too_long", max_seq_length=300)
    with pytest.raises(ModelError, match="integer of at least 2"):
        ex.export_sentence_transformers(tiny, tmp_path / "zero", max_seq_length=0)


def test_existing_output_folder_needs_overwrite(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ModelError, match="already exists and is not empty"):
        ex.export_sentence_transformers(tiny, out)
    assert (out / "stale.txt").exists()
    ex.export_sentence_transformers(tiny, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "modules.json").is_file()
    # a file export did not write is never deleted: the folder went aside
    assert [p.read_text() for p in tmp_path.glob("out.old-*/stale.txt")] == ["old"]
    with pytest.raises(ModelError, match="is, or contains, the model being exported"):
        ex.export_hf(tiny, tiny, overwrite=True)
    with pytest.raises(ModelError, match="is, or contains, the model being exported"):
        ex.export_hf(tiny, tmp_path, overwrite=True)
    assert (tiny / "config.json").is_file()
    (tmp_path / "empty").mkdir()
    ex.export_hf(tiny, tmp_path / "empty")  # an empty folder is fine
    assert not list(tmp_path.glob(".*.partial-*"))


# ---------------------------------------------------------------- model card

def test_model_card_states_only_what_it_is_given(tmp_path):
    minimal = ex.write_model_card(tmp_path / "a", {}).read_text()
    assert "CLS" in minimal
    assert "STS results" not in minimal and "Provenance" not in minimal and "Training data" not in minimal
    full = ex.write_model_card(tmp_path / "b", {"method": "TNCSE", "profile": "smoke", "scores": {"STS12": 50.0},
                                                "date": "2025-01-02"}).read_text()
    assert "TNCSE" in full and "smoke" in full and "say nothing about the method" in full
    assert "| 50.00 | – | – | – | – | – | – | – |" in full  # missing tasks and no avg are not invented
    assert "2025-01-02" in full and "git commit" not in full


# ---------------------------------------------------------------- the twin

@pytest.mark.slow
def test_export_twin_and_load_twin_equal_sum_encoder(raw_twin, tmp_path):
    (a, tok_a), (b, tok_b) = load_backbone(raw_twin / "tower_a"), load_backbone(raw_twin / "tower_b")
    reference = ev.SumEncoder([ev.TowerEncoder(a, tok_a, "cls", progress=False),
                               ev.TowerEncoder(b, tok_b, "cls", progress=False)])(SENTENCES)
    assert not np.allclose(cls(a, tok_a, SENTENCES), cls(b, tok_b, SENTENCES), atol=1e-2)  # different towers

    out = ex.export_twin(raw_twin, tmp_path / "twin_export", card={"method": "JTCSE", "scores": SCORES})
    assert json.loads((out / "twin.json").read_text()) == {
        "format": "jtcse-twin", "towers": ["tower_a", "tower_b"], "combine": "sum", "pooling": "cls"}
    readme = (out / "README.md").read_text()
    assert "sum" in readme and "load_twin" in readme and "71.40" in readme
    assert "one of the two towers" in (out / "tower_a" / "README.md").read_text()

    # each exported tower is a sentence-transformers folder giving that tower's CLS vectors
    towers = {"tower_a": (a, tok_a), "tower_b": (b, tok_b)}
    for name, (model, tok) in towers.items():
        pooling = json.loads((out / name / "1_Pooling" / "config.json").read_text())
        assert pooling["pooling_mode_cls_token"] is True
        np.testing.assert_allclose(st_encode(out / name, SENTENCES), cls(model, tok, SENTENCES), atol=1e-5, rtol=0)

    exported = ev.load_twin(out, device="cpu", batch_size=2)
    assert isinstance(exported, ev.SumEncoder)
    got = exported.encode(SENTENCES)
    assert got.shape == (len(SENTENCES), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(exported.encode(SENTENCES[0]), reference[0], atol=1e-5, rtol=0)
    assert exported.encode([]).shape == (0, 32)

    raw = ev.load_twin(raw_twin, device="cpu").encode(SENTENCES)  # the training folder loads as well
    np.testing.assert_allclose(raw, reference, atol=1e-6, rtol=0)


def test_raw_twin_with_one_tokenizer_at_the_root(tmp_path, minilm_tokenizer):
    root = tmp_path / "run"
    make_tiny(root / "tower_a", minilm_tokenizer, seed=3, with_tokenizer=False)
    make_tiny(root / "tower_b", minilm_tokenizer, seed=4, with_tokenizer=False)
    with pytest.raises(ModelError, match="no tokenizer files"):
        ev.load_twin(root, device="cpu")
    minilm_tokenizer.save_pretrained(root)
    twin = ev.load_twin(root, device="cpu")
    a = AutoModel.from_pretrained(root / "tower_a").eval()
    b = AutoModel.from_pretrained(root / "tower_b").eval()
    want = cls(a, minilm_tokenizer, SENTENCES) + cls(b, minilm_tokenizer, SENTENCES)
    np.testing.assert_allclose(twin.encode(SENTENCES), want, atol=1e-5, rtol=0)


def test_twin_errors(tmp_path, tiny, minilm_tokenizer):
    with pytest.raises(ModelError, match="does not exist"):
        ev.load_twin(tmp_path / "nowhere")
    half = tmp_path / "half"
    make_tiny(half / "tower_a", minilm_tokenizer, seed=5)
    with pytest.raises(ModelError, match=r"half is not a twin: it has no tower_b/config.json.*Fix: pass a twin folder"):
        ev.load_twin(half)
    with pytest.raises(ModelError, match="not a twin: it has no tower_a/config.json and no tower_b/config.json"):
        ex.export_twin(tiny, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad"
    make_tiny(bad / "tower_a", minilm_tokenizer, seed=5)
    make_tiny(bad / "tower_b", minilm_tokenizer, seed=6)
    (bad / "twin.json").write_text(json.dumps({"format": "jtcse-twin", "combine": "concat"}))
    with pytest.raises(ModelError, match="cannot load"):
        ev.load_twin(bad)


def test_package_level_load_twin_is_the_evaluation_loader(tmp_path):
    import inspect

    import jtcse_lib

    assert "path" in inspect.signature(jtcse_lib.load_twin).parameters
    with pytest.raises(ModelError, match="is not a twin"):
        jtcse_lib.load_twin(tmp_path)  # no towers: the loader's clear error
    assert ev.load_twin.__doc__


# ---------------------------------------------------------------- overwriting, leftovers, a full disk

def notices(capsys) -> list[str]:
    """The lines export said (stderr also carries transformers' progress bars)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("export:")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_moves_a_folder_with_foreign_files_aside(tiny, tmp_path, minilm_tokenizer, capsys):
    out = ex.export_sentence_transformers(tiny, tmp_path / "out")
    earlier = snapshot(out)
    (out / "my_notes.txt").write_text("results of my own evaluation")  # the user's file inside an export
    other = make_tiny(tmp_path / "other", minilm_tokenizer, seed=7)
    ex.export_sentence_transformers(other, out, overwrite=True)
    [aside] = tmp_path.glob("out.old-*")
    assert (aside / "my_notes.txt").read_text() == "results of my own evaluation"
    assert snapshot(aside) == {**earlier, "my_notes.txt": b"results of my own evaluation"}  # all of it, unchanged
    assert not (out / "my_notes.txt").exists()
    assert snapshot(out)["model.safetensors"] != earlier["model.safetensors"]  # the new model is in place
    said = notices(capsys)
    assert len(said) == 1 and "my_notes.txt" in said[0] and str(aside) in said[0]

    # a file of the export edited in place (same name, other content) is not "what the export wrote" either
    (out / "sentence_bert_config.json").write_text('{"max_seq_length": 7, "do_lower_case": false}')
    ex.export_sentence_transformers(tiny, out, overwrite=True)
    assert len(list(tmp_path.glob("out.old-*"))) == 2


def test_overwrite_replaces_an_earlier_export(tiny, raw_twin, tmp_path, minilm_tokenizer, capsys):
    out = ex.export_twin(raw_twin, tmp_path / "twin_out")
    assert ex.is_export(out) and (out / ex.MARKER).is_file()
    first = snapshot(out)
    other = tmp_path / "other_twin"
    make_tiny(other / "tower_a", minilm_tokenizer, seed=8)
    make_tiny(other / "tower_b", minilm_tokenizer, seed=9)
    ex.export_twin(other, out, overwrite=True)
    assert snapshot(out)["tower_a/model.safetensors"] != first["tower_a/model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_twin", "tiny", "twin_out", "twin_run"]  # no .old
    assert ex.is_export(out)
    assert notices(capsys) == []  # nothing moved aside, nothing to say
    hf = ex.export_hf(tiny, tmp_path / "hf")
    ex.export_hf(tiny, hf, overwrite=True)
    assert not list(tmp_path.glob("hf.old-*")) and ex.is_export(hf)


def test_stale_staging_folders_are_removed_and_live_ones_kept(tiny, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that ran an export and is gone (killed)
    day_old = time.time() - 2 * 86400
    stages = {
        "killed": (f".out.partial-{ex._HOST}-{dead.pid}-0badc0de", None),
        "live": (f".out.partial-{ex._HOST}-{os.getpid()}-1badc0de", None),  # an export running in this process
        "other_host_fresh": (".out.partial-otherbox-123-2badc0de", None),
        "other_host_old": (".out.partial-otherbox-123-3badc0de", day_old),
        "legacy_fresh": (".out.partial-4badc0de", None),  # an older version's name, without a pid
        "legacy_old": (".out.partial-5badc0de", day_old),
        "another_output": (f".other.partial-{ex._HOST}-{dead.pid}-6badc0de", None),  # not ours to clean
    }
    for name, when in stages.values():
        (tmp_path / name / "export").mkdir(parents=True)
        (tmp_path / name / "export" / "model.safetensors").write_bytes(b"half")
        if when:
            os.utime(tmp_path / name, (when, when))
    ex.export_hf(tiny, tmp_path / "out")
    left = {k for k, (name, _) in stages.items() if (tmp_path / name).exists()}
    assert left == {"live", "other_host_fresh", "legacy_fresh", "another_output"}
    [said] = notices(capsys)
    assert said.startswith("export: removed 3 staging folder(s)")
    assert not [p for p in tmp_path.glob(".out.partial-*") if p.name not in {stages[k][0] for k in left}]


@pytest.fixture
def small_disk(tmp_path):
    """A real 30 MB tmpfs mounted in tmp_path: a disk that fills up (root only)."""
    with mounted_tmpfs(tmp_path / "disk", 30) as disk:
        yield disk


def fill(disk: Path, leave_mb: float) -> Path:
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - int(leave_mb * 1e6)))
    return filler


# where the disk fills: in the weights (safetensors), in the tokenizer (tokenizers), in a twin's second tower
@pytest.mark.slow
@pytest.mark.parametrize("kind, leave_mb", [("tower", 2), ("tower", 4.4), ("twin", 9)])
def test_a_full_disk_during_export_is_no_space_and_keeps_the_earlier_export(small_disk, minilm_tokenizer, kind,
                                                                             leave_mb, capsys):
    from jtcse_lib.__main__ import main

    def model(seed: int) -> Path:  # outside the small disk
        root = small_disk.parent / f"model{seed}"
        if kind == "tower":
            return make_tiny(root, minilm_tokenizer, seed=seed)
        for i, tower in enumerate(("tower_a", "tower_b")):
            make_tiny(root / tower, minilm_tokenizer, seed=seed + i)
        return root

    export = ex.export_sentence_transformers if kind == "tower" else ex.export_twin
    out = export(model(20), small_disk / "out")
    earlier, other = snapshot(out), model(30)
    filler = fill(small_disk, leave_mb)
    with pytest.raises(NoSpace, match=r"no space left on .*disk \(\d+ MB free, about \d+ MB needed\).*Fix: free \d+ MB"
                       ) as caught:
        export(other, out, overwrite=True)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "out"]  # no partial, temporary or .old folder
    assert snapshot(out) == earlier and ex.is_export(out)

    capsys.readouterr()
    assert main(["export", "--model", str(other), "--out", str(out), "--overwrite"]) == 2  # the CLI: one line
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("error")]
    assert len(said) == 1 and said[0].startswith("error: no space left on") and "Traceback" not in err, err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "out"] and snapshot(out) == earlier

    filler.unlink()  # space is back: the same command works
    assert main(["export", "--model", str(other), "--out", str(out), "--overwrite"]) == 0
    assert snapshot(out) != earlier and ex.is_export(out)
    assert sorted(p.name for p in small_disk.iterdir()) == ["out"]


def test_exporting_does_not_load_the_trainer():
    code = ("import sys, jtcse_lib.export; print(sorted(m for m in ('jtcse_lib.train', 'jtcse_lib.runs', "
            "'jtcse_lib.report') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_report_shows_what_the_card_states(tmp_path):
    """One home for the score columns and the stage names: report uses export's (no copy to drift)."""
    from jtcse_lib import report

    assert report.COLUMNS is ex.COLUMNS and report.SHORT is ex.SHORT and report.STAGE_LABELS is ex.STAGE_LABELS
    assert set(ex.STAGE_METHODS) == set(ex.STAGE_LABELS) == set(report.STAGE_COLORS) - {"backbone_cls",
                                                                                           "backbone_mean"}
    for method in set(ex.STAGE_METHODS.values()):  # every stage's method has its card text
        card = ex.write_model_card(tmp_path / method, {"method": method}).read_text()
        assert f"trained with {method}: " in card or f"trained with unsupervised {method}: " in card, card


def test_card_from_run_reads_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"stage": "jtcse", "best_stsb_dev": 80.0, "best_step": 7,
                                                 "config": {"backbone": "minilm", "seed": 3, "corpus": "wiki"}}))
    (run / "sts_cls_all_1000.json").write_text(json.dumps({"scores": SCORES}))
    card = ex.card_from_run(run / "best")
    assert (card["method"], card["backbone"], card["seed"], card["scores"]) == ("JTCSE", "minilm", 3, SCORES)
    assert card["notes"] == "Selected on STS-B dev: 80.00 at step 7."
    assert ex.card_from_run("minilm") == {} and ex.card_from_run(tmp_path / "nowhere" / "best") == {}
