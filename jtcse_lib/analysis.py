"""The attention sink of one encoder: attention mass on [CLS]/[SEP], E_CLS, embedding-norm statistics; and the
geometry (norm ratio k, cosine t) of the dropout-view pairs that contrastive training uses as positives.

All functions take one Hugging Face encoder (a tower, e.g. ``TwinTower.tower_a``) and a right-padded
tokenised batch: ``input_ids``/``attention_mask`` (N, L), 1 = token, 0 = padding, with [CLS]/<s> at
position 0 and [SEP]/</s> as the last non-pad token (what BERT/RoBERTa tokenisers produce). The model is
run in eval mode with eager attention (the only implementation that returns attention probabilities);
its attention implementation and training flag are restored afterwards.

Notation for one sentence n, layer l, head h: A[i, j] = attention probability of query token i on key j;
Q_n = the non-pad query tokens (all of them, [CLS] and [SEP] included); s_n = index of the last non-pad
token. Padding keys get probability 0, so for every query the three buckets below sum to 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .losses import modulus_gap
from .progress import progress_bar


def _set_attention(model, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):  # newer transformers: switches a loaded model in place
        model.set_attn_implementation(implementation)
    else:  # older: the layers read the config attribute at call time
        model.config._attn_implementation = implementation


@contextmanager
def eager_attention(model):
    """Switch ``model`` to eager attention (the only one that returns attention probabilities) and eval mode for
    the block; restore both afterwards. If attentions still do not come back, load the model with
    ``attn_implementation="eager"``."""
    original = getattr(model.config, "_attn_implementation", None)
    was_training = model.training
    switch = original != "eager"
    if switch:
        _set_attention(model, "eager")
    model.eval()
    try:
        yield model
    finally:
        if switch and original is not None:
            _set_attention(model, original)
        model.train(was_training)


def _check_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, L) -> boolean keep mask; requires right padding and at least 2 tokens a sequence."""
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    prefix = torch.arange(keep.shape[1], device=keep.device)[None, :] < lengths[:, None]
    if not torch.equal(keep, prefix):
        raise ValueError("attention_mask must be right-padded (tokens first, then padding)")
    if bool((lengths < 2).any()):
        raise ValueError("every sequence needs at least 2 tokens ([CLS] ... [SEP])")
    return keep


def _run(model, input_ids, attention_mask, token_type_ids=None):
    """Eager forward, no gradients: (attentions, layers x (N, heads, L, L); hidden states, layers+1 x (N, L, H))."""
    device = next(model.parameters()).device
    kwargs = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids.to(device)
    with eager_attention(model), torch.no_grad():
        out = model(**kwargs, output_attentions=True, output_hidden_states=True)
    if not out.attentions or any(a is None for a in out.attentions):
        raise RuntimeError("the model returned no attention probabilities; load it with attn_implementation='eager'")
    return out.attentions, out.hidden_states


def _sep_keys(input_ids, keep, special_ids):
    """(N, L) bool: the keys counted as [SEP]."""
    n, length = keep.shape
    pos = torch.arange(length, device=keep.device)[None, :].expand(n, -1)
    if special_ids is None:
        return pos == (keep.sum(1, keepdim=True) - 1)  # the last non-pad token s_n
    ids = torch.as_tensor(sorted(set(int(i) for i in special_ids)), device=input_ids.device)
    return torch.isin(input_ids, ids) & keep & (pos > 0)


def _mass_sums(attentions, input_ids, attention_mask, special_ids=None):
    """Sums over non-pad queries of the three masses, each (layers, heads), and the query count."""
    keep = _check_mask(attention_mask)
    sep = _sep_keys(input_ids, keep, special_ids)
    other = keep.clone()
    other[:, 0] = False
    other &= ~sep
    q = keep.float()[:, None, :]  # (N, 1, Lq): weight 1 per non-pad query
    sums = {"cls": [], "sep": [], "other": []}
    for att in attentions:  # (N, heads, Lq, Lk)
        att = att.float()
        qw, sep_k, other_k = (m.to(att.device, att.dtype) for m in (q, sep, other))
        # mass of query i on a key bucket B: sum_{j in B} A[i, j]; then summed over non-pad queries and sentences
        sums["cls"].append((att[..., 0] * qw).sum((0, 2)))
        sums["sep"].append((torch.einsum("nhqk,nk->nhq", att, sep_k) * qw).sum((0, 2)))
        sums["other"].append((torch.einsum("nhqk,nk->nhq", att, other_k) * qw).sum((0, 2)))
    out = {k: torch.stack(v).double().cpu().numpy() for k, v in sums.items()}  # (layers, heads)
    return out, int(keep.sum())


def _e_cls_per_sentence(hidden_states, attention_mask):
    """(layers+1, N) numpy: ||h_[CLS]|| / mean_{j in others} ||h_j|| for each hidden-states layer and sentence."""
    keep = _check_mask(attention_mask)
    others = keep.clone()
    others[:, 0] = False  # every non-pad token except position 0; [SEP] included
    rows = []
    for h in hidden_states:  # (N, L, H)
        norms = h.float().norm(dim=-1)  # (N, L)
        o = others.to(norms.device)
        mean_other = (norms * o).sum(1) / o.sum(1)
        rows.append(norms[:, 0] / mean_other)
    return torch.stack(rows).double().cpu().numpy()


def attention_mass(model, input_ids, attention_mask, token_type_ids=None, special_ids=None) -> dict:
    """Attention mass that goes to [CLS], to [SEP] and to all other tokens, per layer and head.

    For each layer and head, averaged over every non-pad query token of every sentence (token-weighted:
    a sentence with more tokens counts more):

        cls   = mean_{n, i in Q_n} A[i, 0]
        sep   = mean_{n, i in Q_n} A[i, s_n]                  (special_ids None)
              = mean_{n, i in Q_n} sum_{j>0, id_j in special_ids} A[i, j]   (special_ids given)
        other = mean_{n, i in Q_n} sum_{non-pad j not 0, not counted as sep} A[i, j]

    cls + sep + other = 1 (up to float error). ``special_ids`` counts every token with one of those ids
    (except position 0) as [SEP], e.g. ``{tokenizer.sep_token_id}`` for sentence-pair inputs.
    Inputs (N, L); returns {"cls", "sep", "other"}: float64 arrays (layers, heads).
    """
    attentions, _ = _run(model, input_ids, attention_mask, token_type_ids)
    sums, count = _mass_sums(attentions, input_ids, attention_mask, special_ids)
    return {k: v / count for k, v in sums.items()}


def e_cls(model, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
    """E_CLS per hidden-states layer, the embeddings output included as layer 0.

        E_CLS^l = mean_n  ||h^l_{n,0}|| / ( (1/|O_n|) sum_{j in O_n} ||h^l_{n,j}|| )

    where O_n = the "other tokens" of sentence n: every non-pad token except position 0 ([CLS]/<s>),
    so [SEP]/</s> IS included and padding is not. Each sentence counts once. Returns float64 (layers + 1,).
    """
    _, hidden = _run(model, input_ids, attention_mask, token_type_ids)
    return _e_cls_per_sentence(hidden, attention_mask).mean(1)


def norm_stats(embeddings) -> dict:
    """{"mean", "std" (ddof=0), "min", "max", "median"} of the L2 norms ||e_n|| of an (N, H) matrix (torch/numpy)."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, H) matrix, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1)  # (N,)
    return {"mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
            "max": float(norms.max()), "median": float(np.median(norms))}


@dataclass
class AttentionSinkReport:
    """Aggregates of ``attention_sink_report`` over a corpus.

    cls_mass, sep_mass, other_mass: (layers, heads), token-weighted over all non-pad query tokens.
    e_cls: (layers + 1,), sentence-weighted. cls_norms: (N,) norms of the last-layer [CLS] vectors.
    """

    cls_mass: np.ndarray
    sep_mass: np.ndarray
    other_mass: np.ndarray
    e_cls: np.ndarray
    cls_norms: np.ndarray
    n_sentences: int
    n_query_tokens: int
    meta: dict = field(default_factory=dict)

    def per_layer(self) -> dict:
        """Head-averaged masses, each (layers,): {"cls", "sep", "other"}."""
        return {"cls": self.cls_mass.mean(1), "sep": self.sep_mass.mean(1), "other": self.other_mass.mean(1)}

    def layer_table(self):
        """One row per hidden-state layer l = 0..L (a pandas DataFrame): the head-averaged masses of attention layer
        l (NaN at l = 0, the embedding output, which has no attention), the largest single-head masses, the
        uniform share u = N / sum_n |Q_n| of one position, and E_CLS of the layer's output."""
        import pandas as pd

        mass = self.per_layer()
        per_attention_layer = {  # attention layer l feeds hidden-state layer l: row 0 (the embeddings) has none
            "cls_mass": mass["cls"], "sep_mass": mass["sep"], "other_mass": mass["other"],
            "cls_mass_max_head": self.cls_mass.max(1), "sep_mass_max_head": self.sep_mass.max(1),
            "uniform_mass": np.full(len(self.cls_mass), self.n_sentences / self.n_query_tokens)}
        return pd.DataFrame({"layer": range(len(self.e_cls)),
                             **{k: np.concatenate([[np.nan], v]) for k, v in per_attention_layer.items()},
                             "e_cls": self.e_cls})

    def cls_norm_stats(self) -> dict:
        """``norm_stats`` of the last-layer [CLS] vectors."""
        return norm_stats(self.cls_norms[:, None])

    def as_dict(self) -> dict:
        """JSON-friendly: lists instead of arrays."""
        return {"cls_mass": self.cls_mass.tolist(), "sep_mass": self.sep_mass.tolist(),
                "other_mass": self.other_mass.tolist(), "e_cls": self.e_cls.tolist(),
                "cls_norm_stats": self.cls_norm_stats(), "n_sentences": self.n_sentences,
                "n_query_tokens": self.n_query_tokens, **self.meta}


def attention_sink_report(model, tokenizer, sentences: Iterable[str], batch_size: int = 32, max_length: int = 64,
                          special_ids: Iterable[int] | None = None, progress: bool = True,
                          desc: str = "attention sink") -> AttentionSinkReport:
    """Run ``attention_mass`` and ``e_cls`` over sentences in batches and aggregate them exactly.

    Each batch is ``tokenizer(batch, padding=True, truncation=True, max_length=max_length)``. Masses are
    summed over non-pad query tokens and divided by the total count (the same as one big batch); E_CLS is
    averaged over sentences. One eager forward per batch gives both.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences given")
    sums: dict | None = None
    e_rows, cls_norms, n_tokens = [], [], 0
    starts = range(0, len(sentences), batch_size)
    for start in progress_bar(starts, desc=desc, disable=not progress, total=len(starts)):
        batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        attentions, hidden = _run(model, ids, mask, batch.get("token_type_ids"))
        s, count = _mass_sums(attentions, ids, mask, special_ids)
        sums = s if sums is None else {k: sums[k] + s[k] for k in sums}
        n_tokens += count
        e_rows.append(_e_cls_per_sentence(hidden, mask))  # (layers+1, n)
        cls_norms.append(hidden[-1][:, 0].float().norm(dim=-1).double().cpu().numpy())
    return AttentionSinkReport(sums["cls"] / n_tokens, sums["sep"] / n_tokens, sums["other"] / n_tokens,
                               e_cls=np.concatenate(e_rows, axis=1).mean(1), cls_norms=np.concatenate(cls_norms),
                               n_sentences=len(sentences), n_query_tokens=n_tokens,
                               meta={"max_length": max_length, "batch_size": batch_size})


def dropout_pair_geometry(model, tokenizer, sentences: Iterable[str], batch_size: int = 32, max_length: int = 64,
                          seed: int = 0, progress: bool = False, desc: str = "dropout pairs") -> dict:
    """Norm ratio and cosine of the positive pairs of unsupervised SimCSE/JTCSE: two dropout views of a sentence.

    Each batch of b sentences (sorted by token count, longest first, stable, to pad little) is tokenised once
    (``tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")``) and fed as
    2b rows ``[batch; batch]`` in one forward pass in **train** mode, as the trainer feeds its two views, so every
    row gets its own dropout mask. With h_n, h+_n the [CLS] vectors (last hidden state, first token) of the two
    views of sentence n::

        k_n    = ||h+_n|| / ||h_n||
        t_n    = cos(h_n, h+_n)
        l_TN_n = ||h_n - h+_n|| / (||h_n|| + ||h+_n||) = sqrt(1 + k_n^2 - 2 k_n t_n) / (1 + k_n)

    (``losses.modulus_gap``), and the same three for the pooler outputs when the model has a pooler (the
    official ICTM computes l_TN on those). The dropout masks come from torch's RNG seeded with ``seed`` inside
    ``torch.random.fork_rng`` (reproducible; the caller's RNG state is untouched); no gradients; the training
    flag is restored. Returns {"k", "t", "l_tn", "norm" (= ||h_n||)} and, with a pooler, {"k_pooled",
    "t_pooled", "l_tn_pooled"}: float64 arrays (N,) in the order of ``sentences``.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
    device = next(model.parameters()).device
    rng_devices = [device] if device.type == "cuda" else []
    lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")  # longest first
    ordered = [sentences[i] for i in order]
    keys = ("input_ids", "attention_mask", "token_type_ids")
    parts: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    starts = range(0, len(sentences), batch_size)
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(seed)
            model.train()  # dropout on: two passes of the same tokens give two views
            for start in progress_bar(starts, desc=desc, disable=not progress, total=len(starts)):
                batch = tokenizer(ordered[start : start + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                inputs = {k: batch[k].repeat(2, 1).to(device) for k in keys if k in batch}  # (2b, L): [batch; batch]
                out = model(**inputs)
                b = batch["input_ids"].shape[0]
                pairs = {"": out.last_hidden_state[:, 0]}  # [CLS], (2b, H)
                if getattr(out, "pooler_output", None) is not None:
                    pairs["_pooled"] = out.pooler_output  # dense + tanh on [CLS], (2b, H)
                for suffix, z in pairs.items():
                    h, hp = z[:b].double(), z[b:].double()  # view 1, view 2: (b, H) each
                    norm, norm_p = h.norm(dim=-1), hp.norm(dim=-1)
                    values = {
                        "k": norm_p / norm,  # k = ||h+|| / ||h||
                        "t": torch.nn.functional.cosine_similarity(h, hp, dim=-1),  # t = cos(h, h+)
                        "l_tn": modulus_gap(h, hp),  # ||h - h+|| / (||h|| + ||h+||)
                    }
                    if not suffix:
                        values["norm"] = norm
                    for name, v in values.items():
                        parts.setdefault(name + suffix, []).append(v.cpu().numpy())
    finally:
        model.train(was_training)
    out = {}
    for name, v in parts.items():
        values = np.empty(len(sentences), dtype=np.float64)
        values[order] = np.concatenate(v)  # back to the order of `sentences`
        out[name] = values
    return out
