"""The MTEB adapter: MTEB scores a local STS-B task exactly as our SentEval evaluator does; metadata; errors.

Runs offline: the task below holds the shipped STS-B test split in memory (no Hub access). Skips only where
mteb is not installed (the `.[mteb]` extra).
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")

from jtcse_lib import mteb_adapter  # noqa: E402
from jtcse_lib.backbones import load_backbone  # noqa: E402
from jtcse_lib.data import load_stsb  # noqa: E402
from jtcse_lib.errors import ConfigError, DataError, JtcseError, ModelError  # noqa: E402
from jtcse_lib.evaluate import TowerEncoder, evaluate_sts  # noqa: E402
from jtcse_lib.mteb_adapter import main_scores, mteb_model, resolve_tasks, run_mteb  # noqa: E402

TASK = "JtcseLocalSTSBenchmark"


def local_stsb_task(pairs):
    """An MTEB STS task holding `pairs` in memory (gold 0..5, as MTEB's STSBenchmark)."""
    from datasets import Dataset
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalSTSB(AbsTaskSTS):
        min_score, max_score = 0, 5
        metadata = TaskMetadata(
            name=TASK, dataset={"path": "local/stsbenchmark-test", "revision": "shipped"},
            description="STS-B test split from the shipped SentEval data, held in memory.", reference=None,
            type="STS", category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
            main_score="cosine_spearman", date=None, domains=None, task_subtypes=None, license=None,
            annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation=None)

        def load_data(self, **kwargs):
            self.dataset = {"test": Dataset.from_dict(
                {"sentence1": pairs.sent1, "sentence2": pairs.sent2, "score": pairs.gold.tolist()})}
            self.data_loaded = True

    return LocalSTSB()


class Memo:
    """An encoder that encodes each distinct sentence once, so MTEB and our evaluator share one encoding."""

    def __init__(self, encoder):
        self.encoder, self.vectors = encoder, {}

    def __call__(self, sentences):
        new = [s for s in dict.fromkeys(sentences) if s not in self.vectors]
        if new:
            self.vectors.update(zip(new, self.encoder(new)))
        return np.stack([self.vectors[s] for s in sentences])


@pytest.fixture(scope="module")
def stsb(real_data):
    pairs = load_stsb("test", real_data)
    assert len(pairs) == 1379
    return pairs


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    """A twin of two *different* tiny random BERTs (2 layers, width 32) with MiniLM's tokenizer.

    initializer_range 0.2 (BERT's default is 0.02) spreads the pairs' cosines over about [0.74, 1]: with the
    default, every [CLS] cosine lies within 3e-5 of 1, and MTEB's float32 cosines then tie pairs that our
    float64 cosines order, which moves Spearman by about 0.01 for reasons that have nothing to do with the adapter.
    """
    import torch
    from transformers import BertConfig, BertModel

    from jtcse_lib.backbones import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    root = tmp_path_factory.mktemp("mteb") / "jtcse-twin"
    for seed, tower in enumerate(("tower_a", "tower_b"), start=1):
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=37, max_position_embeddings=128,
                            initializer_range=0.2)
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(root / tower)
        tokenizer.save_pretrained(root / tower)
    return root


def _mteb_vs_ours(model, pairs, real_data, out, encoder=None, max_pairs=None):
    """(MTEB main score, our STS-B score), both Spearman x 100 on the first `max_pairs` test pairs (default: all);
    MTEB's result file is checked too."""
    result = run_mteb(model, [local_stsb_task(pairs.head(max_pairs))], output_folder=out, progress=False)
    ours = evaluate_sts(encoder or model.encoder, ["STSBenchmark"], data_dir=real_data,
                        max_pairs=max_pairs).scores["STSBenchmark"]
    meta = model.mteb_model_meta
    files = list((out / "results" / meta.model_name_as_path() / meta.revision).rglob(f"{TASK}.json"))
    assert len(files) == 1, files
    saved = json.loads(files[0].read_text())["scores"]["test"][0]
    assert saved["main_score"] == saved["cosine_spearman"]  # MTEB's STS main score: cosine Spearman
    assert saved["main_score"] == pytest.approx(main_scores(result)[TASK] / 100, abs=1e-6)  # file: 6 decimals
    return main_scores(result)[TASK], ours


# ---------------------------------------------------------------- MTEB score == our evaluator's score

@pytest.mark.parametrize("which, max_pairs", [("twin-cls", 200),  # the fast lane's check; all pairs below (slow)
                                             pytest.param("twin-cls", None, marks=pytest.mark.slow),
                                             pytest.param("tower-mean", None, marks=pytest.mark.slow)])
def test_mteb_matches_our_evaluator_on_stsb(which, max_pairs, twin_dir, stsb, real_data, tmp_path, one_torch_thread):
    path, pooling = (twin_dir, "cls") if which == "twin-cls" else (twin_dir / "tower_a", "mean")
    model = mteb_model(path, pooling, progress=False)
    score, ours = _mteb_vs_ours(model, stsb, real_data, tmp_path, max_pairs=max_pairs)  # two independent encodings
    print(f"{which}, STS-B test: MTEB {score:.4f}, ours {ours:.4f}")
    assert abs(score - ours) < 0.01, (score, ours)
    assert 0 < abs(score) < 100


@pytest.mark.slow
def test_mteb_matches_our_evaluator_minilm_cls(stsb, real_data, tmp_path):
    model = mteb_model("minilm", "cls", progress=False)
    memo = Memo(model.encoder)
    model.encoder = memo  # MTEB encodes through the adapter; our evaluator then reuses the vectors
    score, ours = _mteb_vs_ours(model, stsb, real_data, tmp_path, encoder=memo)
    print(f"MiniLM cls, STS-B test: MTEB {score:.4f}, ours {ours:.4f}")
    assert abs(score - ours) < 0.01, (score, ours)
    assert 60 < score < 90  # a working encoder, not a degenerate one (README: 73.50)
    meta = model.mteb_model_meta
    assert (meta.name, meta.embed_dim, dict(meta.experiment_kwargs)) == (mteb_adapter.MINILM_HUB_ID, 384,
                                                                          {"pooling": "cls"})
    assert meta.training_datasets and "MSMARCO" in meta.training_datasets  # from MTEB's registry entry


@pytest.mark.slow  # eleven MTEB evaluators: about 10 s
@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # MTEB's bitext evaluator, on any model
def test_every_text_task_type_runs(twin_dir, tmp_path, one_torch_thread):
    """MTEB's own in-memory mock tasks, one per text task type: the adapter serves each evaluator."""
    import math

    from mteb.mocks import mock_tasks
    from mteb.mocks.mock_tasks.clustering import MockClusteringTask

    names = ["MockClassificationTask", "MockMultilabelClassification", "MockPairClassificationTask",
             "MockRetrievalTask", "MockRerankingTask", "MockBitextMiningTask", "MockSummarizationTask",
             "MockRegressionTask", "MockTextZeroShotClassificationTask", "MockMultilingualSTSTask"]
    tasks = [getattr(mock_tasks, n)() for n in names] + [MockClusteringTask()]
    model = mteb_model(twin_dir, progress=False)
    scores = main_scores(run_mteb(model, tasks, output_folder=tmp_path, progress=False))
    assert sorted(scores) == sorted(t.metadata.name for t in tasks)
    assert all(math.isfinite(s) for s in scores.values()), scores


# ---------------------------------------------------------------- the twin embedding and the metadata

def test_twin_embedding_is_the_sum_of_the_towers(twin_dir, one_torch_thread):
    sentences = ["A man is playing a guitar.", "Two dogs run in the snow.", "A man is playing a guitar.", ""]
    model = mteb_model(twin_dir, progress=False)
    batches = [{"text": sentences[:3]}, {"text": sentences[3:]}]  # what MTEB's DataLoader yields
    got = model.encode(batches, task_metadata=None, hf_split="test", hf_subset="default")
    a, b = (TowerEncoder(*load_backbone(twin_dir / tower), "cls", progress=False)(sentences)
            for tower in ("tower_a", "tower_b"))
    assert got.shape == (4, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, a + b, atol=1e-5)
    assert not np.allclose(got, 2 * a, atol=1e-3)  # the towers differ: the sum is not one tower twice
    sim = np.asarray(model.similarity_pairwise(got[:2], got[2:4]))
    np.testing.assert_allclose(sim[0], 1.0, atol=1e-6)  # sentence 0 == sentence 2: cosine 1
    assert isinstance(model, mteb.models.EncoderProtocol)


def test_twin_metadata(twin_dir, tmp_path, one_torch_thread):
    model = mteb_model(twin_dir, progress=False)
    meta = model.mteb_model_meta
    towers = model.encoder.encoders
    assert meta.name == "jtcse_lib/jtcse-twin"
    assert meta.embed_dim == 32 and meta.max_tokens == 128
    assert dict(meta.experiment_kwargs) == {"pooling": "cls", "twin": "tower_a+tower_b"}
    assert meta.n_parameters == sum(p.numel() for t in towers for p in t.model.parameters())
    assert meta.similarity_fn_name.value == "cosine" and meta.modalities == ["text"]
    assert meta.languages is None and meta.license is None and meta.training_datasets is None  # unknown
    # the revision is a digest of the files: stable for the same files, new for retrained weights
    assert mteb_model(twin_dir, progress=False).mteb_model_meta.revision == meta.revision
    copy = tmp_path / "jtcse-twin"
    shutil.copytree(twin_dir, copy)
    assert mteb_model(copy, progress=False).mteb_model_meta.revision == meta.revision
    weights = next((copy / "tower_b").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert mteb_model(copy, progress=False).mteb_model_meta.revision != meta.revision


def test_tower_metadata_names_and_options(tiny_model_dir, tmp_path, one_torch_thread):
    best = tmp_path / "jtcse-s42" / "best"  # a training run's best/ is named after its run folder
    shutil.copytree(tiny_model_dir, best)
    meta = mteb_model(best, "mean", max_length=16, progress=False).mteb_model_meta
    assert meta.name == "jtcse_lib/jtcse-s42-best"
    assert dict(meta.experiment_kwargs) == {"pooling": "mean", "max_length": 16} and meta.max_tokens == 16
    assert "twin" not in meta.experiment_kwargs
    assert mteb_model(tiny_model_dir, name="me/tiny", progress=False).mteb_model_meta.name == "me/tiny"


def test_hub_revision_read_from_the_local_cache(monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: f"/c/models--org--m/snapshots/{commit}/{name}")
    assert mteb_adapter._hub_revision("org/m") == commit
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    assert mteb_adapter._hub_revision("org/m") is None


# ---------------------------------------------------------------- one-line errors

def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and "Fix:" in text
    return text


def test_task_data_off_the_hub_is_a_one_line_error(twin_dir, tmp_path, monkeypatch, one_torch_thread):
    import datasets
    import huggingface_hub
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    class HubOnly(AbsTaskSTS):  # loads its data with datasets.load_dataset, as every MTEB task does
        metadata = TaskMetadata(
            name="JtcseHubOnlySTS", dataset={"path": "jtcse-tests/no-such-dataset", "revision": "0" * 40},
            description="A task whose data only the Hub has.", reference=None, type="STS", category="t2t",
            modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score="cosine_spearman",
            date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None, dialect=None,
            sample_creation=None, bibtex_citation=None)

    model = mteb_model(twin_dir, progress=False)
    with pytest.raises(DataError) as err:
        run_mteb(model, [HubOnly()], output_folder=tmp_path, progress=False)
    text = _one_line(err)
    assert "JtcseHubOnlySTS" in text and "jtcse-tests/no-such-dataset" in text and "Hub access" in text


@pytest.mark.slow  # builds MTEB's task registry: about 6 s
@pytest.mark.filterwarnings("ignore:Skipping task")
def test_unknown_task_names_the_likely_one():
    with pytest.raises(ConfigError) as err:
        resolve_tasks(["stsbenchmark"])
    assert "'STSBenchmark'" in _one_line(err)
    with pytest.raises(ConfigError):
        resolve_tasks(["STS22.v2"], languages=["xxx"])
    assert [t.metadata.name for t in resolve_tasks(["STS22.v2", "Banking77Classification"])] == \
        ["STS22.v2", "Banking77Classification"]
    subsets = resolve_tasks(["STS22.v2"], languages=["eng"])[0].hf_subsets
    assert "en" in subsets and "fr" not in subsets
    assert len(resolve_tasks(["MTEB(eng, v2)"])) > 10  # a benchmark name gives its tasks


def test_bad_model_or_pooling_fails_before_loading(tmp_path):
    with pytest.raises(ConfigError):
        mteb_model("minilm", pooling="max")
    with pytest.raises(ConfigError):
        mteb_model("minilm", name="no-organization")
    with pytest.raises(ModelError):
        mteb_model(tmp_path / "missing")


def test_twin_of_different_widths_is_refused(twin_dir, tiny_model_dir, tmp_path, one_torch_thread):
    import torch
    from transformers import BertConfig, BertModel

    twin = tmp_path / "odd-twin"
    shutil.copytree(twin_dir / "tower_a", twin / "tower_a")
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(twin / "tower_b")
    for f in (twin_dir / "tower_a").iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy(f, twin / "tower_b" / f.name)
    with pytest.raises(ModelError) as err:
        mteb_model(twin, progress=False)
    assert "widths" in _one_line(err)


def test_without_mteb_installed_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # `import mteb` now raises ImportError
    for call in (lambda: mteb_model("minilm"), lambda: run_mteb("minilm", ["STS22.v2"]),
                 lambda: resolve_tasks(["STS22.v2"])):
        with pytest.raises(JtcseError) as err:
            call()
        assert 'pip install -e ".[mteb]"' in _one_line(err)
