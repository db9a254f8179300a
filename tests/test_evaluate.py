import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from jtcse_lib import evaluate as ev
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


def test_bootstrap_matches_a_loop_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, 200)
    pred = gold + rng.normal(0, 1.5, 200)
    lo, hi = ev.bootstrap_ci(pred, gold, n_boot=300, seed=7, chunk=64)
    # reference: the same resamples, scored with scipy one by one
    ref_rng = np.random.default_rng(7)
    idx = np.concatenate([ref_rng.integers(0, 200, size=(min(64, 300 - s), 200)) for s in range(0, 300, 64)])
    stats = np.array([spearmanr(pred[i], gold[i]).statistic * 100 for i in idx])
    assert lo == pytest.approx(np.quantile(stats, 0.025), abs=1e-9)
    assert hi == pytest.approx(np.quantile(stats, 0.975), abs=1e-9)
    assert lo < ev.spearman100(pred, gold) < hi


def test_cosine_handles_zero_vectors():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(ev.cosine(a, b), [np.sqrt(0.5), 0.0])


def test_sum_encoder_adds_embeddings():
    a, b = TableEncoder(seed=1), TableEncoder(seed=2)
    s = ["x", "y"]
    np.testing.assert_allclose(ev.SumEncoder([a, b])(s), a(s) + b(s))


def test_stsb_dev_score_uses_dev(tiny_data):
    enc = TableEncoder()
    score = ev.stsb_dev_score(enc, tiny_data)
    dev = load_stsb("dev", tiny_data)
    assert set(enc.calls[0]) == set(dev.sent1 + dev.sent2)
    assert -100 <= score <= 100


# ------------------------------------------------------------------ the real MiniLM

def test_length_sorted_batches_equal_one_by_one(minilm):
    model, tokenizer = minilm
    sentences = ["a short one .", "a considerably longer sentence with many more tokens in it than the others",
                 "medium length sentence here", "a short one .", "x"]
    for pooling in ("cls", "mean", "pooler"):
        batched = ev.encode(model, tokenizer, sentences, pooling=pooling, batch_size=2, progress=False)
        single = np.concatenate([ev.encode(model, tokenizer, [s], pooling=pooling, progress=False)
                                 for s in sentences])
        np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (5, 384)
    np.testing.assert_array_equal(batched[0], batched[3])


def test_encode_restores_training_mode_and_truncates(minilm):
    model, tokenizer = minilm
    model.train()
    try:
        long = "word " * 100
        a = ev.encode(model, tokenizer, [long], max_length=8, progress=False)
        b = ev.encode(model, tokenizer, [" ".join(["word"] * 6)], max_length=8, progress=False)
        np.testing.assert_allclose(a, b, atol=1e-5)  # both are [CLS] + 6 x word + [SEP]
        assert model.training
    finally:
        model.eval()


def test_minilm_mean_pooling_reproduces_published_stsb(minilm, real_data):
    """all-MiniLM-L6-v2 with mean pooling: 82.03 on STS-B test, the figure its authors publish."""
    model, tokenizer = minilm
    report = ev.evaluate_sts(ev.TowerEncoder(model, tokenizer, "mean", progress=False),
                             tasks=["STSBenchmark"], data_dir=real_data)
    assert round(report.scores["STSBenchmark"], 2) == 82.03
