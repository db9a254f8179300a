import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from jtcse_lib import evaluate as ev
from jtcse_lib import stats
from jtcse_lib.data import PairSet, load_stsb
from jtcse_lib.errors import ConfigError


class TableEncoder:
    """An encoder that looks vectors up in a dict (deterministic, no model)."""

    def __init__(self, dim=8, seed=0):
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.table = {}
        self.calls = []

    def __call__(self, sentences):
        self.calls.append(list(sentences))
        for s in sentences:
            if s not in self.table:
                self.table[s] = self.rng.normal(size=self.dim).astype(np.float32)
        return np.stack([self.table[s] for s in sentences])


def test_pooling_matches_hand_computation():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])

    class Out:
        last_hidden_state = hidden
        pooler_output = torch.ones(2, 3)

    torch.testing.assert_close(ev.pool(Out, mask, "cls"), hidden[:, 0])
    torch.testing.assert_close(ev.pool(Out, mask, "mean")[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(ev.pool(Out, mask, "mean")[1], hidden[1, :2].mean(0))
    torch.testing.assert_close(ev.pool(Out, mask, "pooler"), torch.ones(2, 3))
    Out.pooler_output = None
    with pytest.raises(ConfigError, match="needs a model with a pooler"):
        ev.pool(Out, mask, "pooler")
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        ev.pool(Out, mask, "max")


def test_all_aggregation_is_one_correlation_over_concatenated_subsets():
    # Two sub-sets, each perfectly ranked inside, but on different scales: "all" < mean of sub-sets.
    enc = TableEncoder(dim=2)
    subsets = {}
    angles = {"a": [0.1, 0.2, 0.3, 0.4], "b": [1.1, 1.2, 1.3, 1.4]}
    golds = {"a": [4.0, 3.0, 2.0, 1.0], "b": [1.5, 1.2, 0.9, 0.1]}
    for name in ("a", "b"):
        s1 = [f"{name}{i}x" for i in range(4)]
        s2 = [f"{name}{i}y" for i in range(4)]
        for i, theta in enumerate(angles[name]):
            enc.table[s1[i]] = np.array([1.0, 0.0], np.float32)
            enc.table[s2[i]] = np.array([np.cos(theta), np.sin(theta)], np.float32)
        subsets[name] = PairSet(name, s1, s2, np.array(golds[name]))
    embed = {s: enc.table[s] for s in enc.table}
    score = ev.score_task("T", subsets, embed)
    pred = np.cos(np.array(angles["a"] + angles["b"]))
    expected_all = spearmanr(pred, golds["a"] + golds["b"]).statistic * 100
    assert score.subsets["a"]["spearman"] == pytest.approx(100)
    assert score.subsets["b"]["spearman"] == pytest.approx(100)
    assert score.mean == pytest.approx(100) and score.wmean == pytest.approx(100)
    assert score.spearman == pytest.approx(expected_all)
    assert score.spearman < 95  # the "all" figure is not the mean of the sub-sets
    assert score.n_pairs == 8


def test_wmean_weights_by_pairs():
    enc = TableEncoder()
    subsets = {}
    for name, n in (("small", 5), ("big", 40)):
        s1 = [f"{name}{i}x" for i in range(n)]
        s2 = [f"{name}{i}y" for i in range(n)]
        subsets[name] = PairSet(name, s1, s2, np.random.default_rng(n).uniform(0, 5, n))
    enc(sum(([*p.sent1, *p.sent2] for p in subsets.values()), []))
    score = ev.score_task("T", subsets, enc.table)
    r = {k: v["spearman"] for k, v in score.subsets.items()}
    assert score.wmean == pytest.approx((5 * r["small"] + 40 * r["big"]) / 45)
    assert score.mean == pytest.approx((r["small"] + r["big"]) / 2)


def test_evaluate_sts_on_tiny_data_encodes_each_sentence_once(tiny_data):
    enc = TableEncoder()
    report = ev.evaluate_sts(enc, data_dir=tiny_data)
    assert len(enc.calls) == 1 and len(set(enc.calls[0])) == len(enc.calls[0])
    scores = report.scores
    assert list(scores) == [*ev.STS_TASKS, "avg"]
    assert scores["avg"] == pytest.approx(np.mean([scores[t] for t in ev.STS_TASKS]))
    assert report.tasks["STS12"].n_pairs == 5 * 3  # five sub-sets, one blank gold line each
    assert report.tasks["SICKRelatedness"].n_pairs == 7
    d = report.to_dict()
    assert d["protocol"] == "senteval-all" and set(d["subsets"]["STS14"]) == {
        "deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"}
    assert "STS12" in report.table()


def test_unknown_task_is_rejected(tiny_data):
    with pytest.raises(ConfigError, match="unknown task"):
        ev.evaluate_sts(TableEncoder(), tasks=["STS12", "STS99"], data_dir=tiny_data)


def test_scores_use_the_statistics_of_stats():
    # Spearman and its bootstrap live in stats (tested there); evaluate scores with them and re-exports spearman100
    assert ev.spearman100 is stats.spearman100 and ev.bootstrap_ci is stats.bootstrap_ci
    report = ev.evaluate_sts(TableEncoder(), tasks=["STSBenchmark"], data_dir=None, bootstrap=50, seed=3,
                             max_pairs=40)
    task = report.tasks["STSBenchmark"]
    assert task.spearman == stats.spearman100(task.pred, task.gold)
    assert task.ci == stats.bootstrap_ci(task.pred, task.gold, 50, 3)


def test_cosine_handles_zero_vectors():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(ev.cosine(a, b), [np.sqrt(0.5), 0.0])


def test_sum_encoder_adds_embeddings():
    a, b = TableEncoder(seed=1), TableEncoder(seed=2)
    s = ["x", "y"]
    np.testing.assert_allclose(ev.SumEncoder([a, b])(s), a(s) + b(s))


def test_the_uc_ensemble_is_the_weighted_unnormalised_sum():
    """JTCSE-UC (ensemble_UC.py): (1 - w)(CLS_A + CLS_B) + w CLS_other, no normalisation; w = 0.7 by default."""
    a, b, other = TableEncoder(seed=1), TableEncoder(seed=2), TableEncoder(seed=3)
    sentences = ["one sentence", "another one"]
    twin = ev.SumEncoder([a, b])
    got = ev.ensemble_encoder(twin, other)(sentences)
    np.testing.assert_allclose(got, 0.3 * (a(sentences) + b(sentences)) + 0.7 * other(sentences), rtol=1e-6)
    np.testing.assert_allclose(ev.ensemble_encoder(twin, other, weight=0.0)(sentences), twin(sentences), rtol=1e-6)
    with pytest.raises(ConfigError, match="outside"):
        ev.ensemble_encoder(twin, other, weight=1.5)


def test_stsb_dev_score_uses_dev(tiny_data):
    enc = TableEncoder()
    score = ev.stsb_dev_score(enc, tiny_data)
    dev = load_stsb("dev", tiny_data)
    assert set(enc.calls[0]) == set(dev.sent1 + dev.sent2)
    assert score == pytest.approx(ev.spearman100(ev.cosine(enc(dev.sent1), enc(dev.sent2)), dev.gold), abs=1e-9)
    assert score != pytest.approx(ev.spearman100(ev.cosine(enc(dev.sent1), enc(dev.sent2[::-1])), dev.gold))




# ------------------------------------------------------------------ a tiny random BERT, and the real MiniLM

@pytest.fixture(scope="module")
def tiny_bert():
    """(model, tokenizer): a 2-layer, 32-wide random BERT with a pooler and MiniLM's tokenizer, eval mode."""
    from transformers import BertConfig, BertModel

    from jtcse_lib.backbones import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)
    return BertModel(config).eval(), tokenizer


@pytest.mark.parametrize("backbone", ["tiny_bert", pytest.param("minilm", marks=pytest.mark.slow)])
def test_length_sorted_batches_equal_one_by_one(backbone, request):
    model, tokenizer = request.getfixturevalue(backbone)
    sentences = ["a short one .", "a considerably longer sentence with many more tokens in it than the others",
                 "medium length sentence here", "a short one .", "x"]
    for pooling in ("cls", "mean", "pooler"):
        batched = ev.encode(model, tokenizer, sentences, pooling=pooling, batch_size=2, progress=False)
        single = np.concatenate([ev.encode(model, tokenizer, [s], pooling=pooling, progress=False)
                                 for s in sentences])
        np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (5, model.config.hidden_size)
    np.testing.assert_array_equal(batched[0], batched[3])


def test_encode_restores_training_mode_and_truncates(tiny_bert):
    model, tokenizer = tiny_bert
    model.train()
    try:
        long = "word " * 100
        a = ev.encode(model, tokenizer, [long], max_length=8, progress=False)
        b = ev.encode(model, tokenizer, [" ".join(["word"] * 6)], max_length=8, progress=False)
        np.testing.assert_allclose(a, b, atol=1e-5)  # both are [CLS] + 6 x word + [SEP]
        assert model.training
    finally:
        model.eval()


def test_sentence_encoder_defaults_to_the_chosen_device(tiny_bert, tmp_path, monkeypatch):
    from jtcse_lib import device

    for part in tiny_bert:
        part.save_pretrained(tmp_path)
    monkeypatch.setattr(device, "cuda_problem", lambda: "no GPU in this test")  # auto -> the CPU, quietly
    enc = ev.sentence_encoder(tmp_path, progress=False)
    assert next(enc.model.parameters()).device.type == "cpu" and ev.default_device().type == "cpu"
    sentences = ["a short one .", "two dogs run in the snow"]
    np.testing.assert_allclose(enc(sentences), ev.encode(*tiny_bert, sentences, progress=False), atol=1e-6)
    assert ev.sentence_encoder(tmp_path, "mean", device="cpu", progress=False).pooling == "mean"


@pytest.mark.slow  # encodes the 1379 STS-B test pairs with MiniLM: about 25 s on 2 cores
def test_minilm_mean_pooling_reproduces_published_stsb(minilm, real_data):
    """all-MiniLM-L6-v2 with mean pooling: 82.03 on STS-B test, the figure its authors publish."""
    model, tokenizer = minilm
    report = ev.evaluate_sts(ev.TowerEncoder(model, tokenizer, "mean", progress=False),
                             tasks=["STSBenchmark"], data_dir=real_data)
    assert round(report.scores["STSBenchmark"], 2) == 82.03
