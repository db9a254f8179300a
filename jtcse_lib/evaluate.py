"""Encoding sentences and scoring them with the SentEval STS protocol.

Protocol (SentEval as SimCSE, TNCSE and JTCSE use it; see `docs/paper.md`, "Known pitfalls"):
- score of a pair = cosine similarity of the two sentence embeddings;
- STS12-16: Spearman correlation of **all sub-sets concatenated** ("all"), not the mean of the sub-sets;
- STS-B and SICK-R: Spearman on the test split (1379 and 4927 pairs);
- every score x 100; "avg" = plain mean of the seven.
Per-sub-set correlations, their plain mean ("mean") and pair-weighted mean ("wmean") are reported too, as
extra columns. Model selection uses STS-B **dev** only (`stsb_dev_score`).

Encoding is batched by length: unique sentences are sorted by token count so each batch pads little, and
the original order is restored afterwards. An encoder is any callable `list[str] -> (n, H) float32 array`,
so the same scoring serves one tower (`TowerEncoder`) and the twin (`SumEncoder` of two towers: the twin at
inference, CLS_A + CLS_B). `sentence_encoder(name)` builds the right one for a model name, tower, twin or run
folder; it is the one way evaluation, export checks and the notebooks load a model to encode with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones import is_twin_dir, load_encoder, load_tokenizer, model_folder, model_inputs, twin_towers
from .data import STS_TASKS, PairSet, load_stsb, load_task
from .device import choose_device
from .errors import ConfigError
from .progress import progress_bar
from .stats import bootstrap_ci, spearman100

POOLINGS = ("cls", "mean", "pooler")
Encoder = Callable[[Sequence[str]], np.ndarray]


# ---------------------------------------------------------------- pooling and encoding

def pool(output, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, H) sentence vectors from a Hugging Face encoder output.

    cls:    h_0, the last hidden state of the first token, before the pooler (what SimCSE/JTCSE evaluate)
    mean:   sum_j m_j h_j / sum_j m_j over non-pad tokens
    pooler: the model's pooler output tanh(W h_0 + b)
    """
    hidden = output.last_hidden_state  # (B, L, H)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    if pooling == "pooler":
        if getattr(output, "pooler_output", None) is None:
            raise ConfigError("pooling 'pooler' needs a model with a pooler layer; this one has none",
                              "use --pooling cls or mean")
        return output.pooler_output
    raise ConfigError(f"unknown pooling {pooling!r}", f"use one of {', '.join(POOLINGS)}")


def default_device() -> torch.device:
    """`device.choose_device("auto")` quietly (the notebooks print the device they use)."""
    return choose_device("auto", quiet=True)


@torch.inference_mode()
def encode(model, tokenizer, sentences: Sequence[str], pooling: str = "cls", batch_size: int = 128,
           max_length: int | None = None, device=None, progress: bool = True,
           desc: str = "encoding") -> np.ndarray:
    """(n, H) float32 embeddings of `sentences`, in their order.

    Duplicates are encoded once; unique sentences are sorted by token count (longest first, so memory peaks
    in the first batch) and padded per batch; `max_length` truncates (default: the tokenizer's limit).
    The model is put in eval mode for the call and restored to its previous mode afterwards.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}", f"use one of {', '.join(POOLINGS)}")
    if len(sentences) == 0:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    unique, inverse = np.unique(np.asarray(sentences, dtype=object), return_inverse=True)
    tokens = tokenizer(list(unique), truncation=True, max_length=max_length or tokenizer.model_max_length)
    lengths = np.fromiter((len(ids) for ids in tokens["input_ids"]), dtype=np.int64, count=len(unique))
    order = np.argsort(-lengths, kind="stable")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokens]
    out = np.empty((len(unique), model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        bar = progress_bar(total=len(unique), desc=desc, unit="sent", disable=not progress, leave=False)
        for start in range(0, len(unique), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({k: [tokens[k][i] for i in idx] for k in keys}, return_tensors="pt")
            batch = {k: v.to(device) for k, v in model_inputs(batch).items()}
            vectors = pool(model(**batch), batch["attention_mask"], pooling)  # (b, H)
            out[idx] = vectors.float().cpu().numpy()
            bar.update(len(idx))
        bar.close()
    finally:
        model.train(was_training)
    return out[inverse.reshape(-1)]


class _Encode:
    """`encode` as sentence-transformers offers it: a list gives (n, H), a single string gives (H,)."""

    def encode(self, sentences: Sequence[str] | str) -> np.ndarray:
        if isinstance(sentences, str):
            return self.encode([sentences])[0]
        return self(list(sentences))


@dataclass
class TowerEncoder(_Encode):
    """One Hugging Face encoder as an `Encoder`."""

    model: torch.nn.Module
    tokenizer: object
    pooling: str = "cls"
    batch_size: int = 128
    max_length: int | None = None
    progress: bool = True

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        return encode(self.model, self.tokenizer, sentences, self.pooling, self.batch_size, self.max_length,
                      progress=self.progress)


@dataclass
class SumEncoder(_Encode):
    """The twin tower at inference: the sum of the towers' embeddings (JTCSE: CLS_A + CLS_B); with `weights`, the
    weighted sum sum_k w_k e_k (JTCSE-UC: (1 - w)(CLS_A + CLS_B) + w CLS_InfoCSE, no normalisation)."""

    encoders: Sequence[Encoder]
    weights: Sequence[float] | None = None

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        weights = self.weights or [1.0] * len(self.encoders)
        return sum(w * enc(sentences) for w, enc in zip(weights, self.encoders))


def sentence_encoder(model, pooling: str = "cls", batch_size: int = 128, max_length: int | None = None,
                     progress: bool = True, device=None, tokenizer=None) -> TowerEncoder | SumEncoder:
    """Load `model` and return its `Encoder` on `device` (default: CUDA when available), in eval mode. `model` is a
    name, a tower folder, a twin folder or a run folder (a twin gives the `SumEncoder` of its towers: the twin at
    inference), or a list of them (their sum: a twin given as two towers). `tokenizer` names where the tokenizer
    comes from when the model folders hold none (the authors' released encoders). Loads the weights: seconds for
    MiniLM, more for BERT-base."""
    device = torch.device(device) if device is not None else choose_device("auto", quiet=True)
    models = [model_folder(m) for m in model] if isinstance(model, (list, tuple)) else [model_folder(model)]
    names = [n for m in models for n in (twin_towers(m) if is_twin_dir(m) else [m])]
    encoders = []
    for name in names:
        enc, tok = load_encoder(name), load_tokenizer(tokenizer if tokenizer is not None else name)
        encoders.append(TowerEncoder(enc.to(device).eval(), tok, pooling, batch_size, max_length, progress))
    return encoders[0] if len(encoders) == 1 else SumEncoder(encoders)


def ensemble_encoder(main: Encoder, other: Encoder, weight: float = 0.7) -> SumEncoder:
    """JTCSE-UC's ensemble (the authors' `ensemble_UC.py`): (1 - weight) main + weight other, embeddings added
    unnormalised; main is the twin (CLS_A + CLS_B), other an external encoder (InfoCSE), the authors' weight 0.7."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"ensemble weight {weight} is outside [0, 1]", "pass a weight between 0 and 1 (UC: 0.7)")
    return SumEncoder([main, other], weights=[1.0 - weight, weight])


def load_twin(path, device=None, batch_size: int = 128, progress: bool = False) -> SumEncoder:
    """A twin folder (training output, its run folder, or an `export_twin` folder) as the twin at inference:
    `.encode(sentences)` gives CLS_A + CLS_B, exactly what the twin evaluation scores."""
    twin_towers(model_folder(path))  # a ModelError naming the folder when it is not a twin
    return sentence_encoder(path, "cls", batch_size, None, progress, device)


# ---------------------------------------------------------------- scoring

def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cos(a_i, b_i), computed in float64; a zero vector gives 0."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(1), denom, out=np.zeros(len(a)), where=denom > 0)


@dataclass
class TaskScore:
    task: str
    spearman: float  # the headline: "all" for STS12-16, test for STS-B and SICK-R
    n_pairs: int
    subsets: dict[str, dict] = field(default_factory=dict)  # name -> {"spearman", "n_pairs"}
    mean: float = float("nan")  # plain mean over sub-sets
    wmean: float = float("nan")  # pair-weighted mean over sub-sets
    ci: tuple[float, float] | None = None
    pred: np.ndarray | None = None  # (n_pairs,) the cosine of each scored pair, sub-sets concatenated
    gold: np.ndarray | None = None  # (n_pairs,) its gold score (what paired comparisons resample)


def score_task(task: str, subsets: dict[str, PairSet], embed: dict[str, np.ndarray],
               bootstrap: int = 0, seed: int = 0) -> TaskScore:
    """Score one task given an embedding for every sentence it holds (`embed`: sentence -> vector)."""
    preds, golds, per_subset = [], [], {}
    for name, pairs in subsets.items():
        pred = cosine(np.stack([embed[s] for s in pairs.sent1]), np.stack([embed[s] for s in pairs.sent2]))
        per_subset[name] = {"spearman": spearman100(pred, pairs.gold), "n_pairs": len(pairs)}
        preds.append(pred)
        golds.append(pairs.gold)
    pred, gold = np.concatenate(preds), np.concatenate(golds)
    rhos = np.array([s["spearman"] for s in per_subset.values()])
    sizes = np.array([s["n_pairs"] for s in per_subset.values()])
    return TaskScore(task, spearman100(pred, gold), len(gold), per_subset,  # "all": one correlation over all pairs
                     mean=float(rhos.mean()), wmean=float((rhos * sizes).sum() / sizes.sum()),
                     ci=bootstrap_ci(pred, gold, bootstrap, seed) if bootstrap else None, pred=pred, gold=gold)


@dataclass
class STSReport:
    tasks: dict[str, TaskScore]

    @property
    def scores(self) -> dict[str, float]:
        out = {t: s.spearman for t, s in self.tasks.items()}
        out["avg"] = float(np.mean(list(out.values())))
        return out

    def to_dict(self) -> dict:
        return {
            "protocol": "senteval-all",
            "scores": self.scores,
            "n_pairs": {t: s.n_pairs for t, s in self.tasks.items()},
            "subsets": {t: s.subsets for t, s in self.tasks.items()},
            "mean": {t: s.mean for t, s in self.tasks.items()},
            "wmean": {t: s.wmean for t, s in self.tasks.items()},
            "ci95": {t: list(s.ci) for t, s in self.tasks.items() if s.ci is not None},
        }

    def predictions(self) -> dict[str, np.ndarray]:
        """{"pred_<task>": cosines, "gold_<task>": gold scores} of every task (np.savez-ready)."""
        return {f"{kind}_{t}": getattr(s, kind) for t, s in self.tasks.items() for kind in ("pred", "gold")}

    def table(self) -> str:
        """The seven-task row as a fixed-width text table (Spearman x 100)."""
        scores = self.scores
        names = list(scores)
        head = " | ".join(f"{n[:8]:>8}" for n in names)
        row = " | ".join(f"{scores[n]:8.2f}" for n in names)
        lines = [head, "-" * len(head), row]
        if any(s.ci for s in self.tasks.values()):
            lines.append(" | ".join(f"{'±%.2f' % ((s.ci[1] - s.ci[0]) / 2) if s.ci else '':>8}"
                                    for s in self.tasks.values()))
        return "\n".join(lines)


def evaluate_sts(encoder: Encoder, tasks: Sequence[str] = STS_TASKS, data_dir=None, bootstrap: int = 0,
                 seed: int = 0, max_pairs: int | None = None) -> STSReport:
    """SentEval STS evaluation of `encoder` on `tasks`; every distinct sentence is encoded once.

    `max_pairs` keeps the first N pairs of each sub-set (smoke runs only: such scores are not comparable).
    """
    unknown = [t for t in tasks if t not in STS_TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}", f"use some of {', '.join(STS_TASKS)}")
    data = {task: {name: pairs.head(max_pairs) for name, pairs in load_task(task, data_dir).items()}
            for task in tasks}
    sentences = sorted({s for subsets in data.values() for p in subsets.values() for s in (*p.sent1, *p.sent2)})
    vectors = encoder(sentences)
    embed = dict(zip(sentences, vectors))
    return STSReport({task: score_task(task, data[task], embed, bootstrap, seed) for task in tasks})


def pair_cosines(encoder: Encoder, pairs: PairSet) -> np.ndarray:
    """(n,) cosine similarity of each pair under `encoder` (both sides encoded in one call)."""
    vectors = encoder(pairs.sent1 + pairs.sent2)
    n = len(pairs)
    return cosine(vectors[:n], vectors[n:])


def stsb_dev_score(encoder: Encoder, data_dir=None, pairs: PairSet | None = None) -> float:
    """Spearman x 100 on STS-B dev: the only score used to select checkpoints."""
    pairs = pairs if pairs is not None else load_stsb("dev", data_dir)
    return spearman100(pair_cosines(encoder, pairs), pairs.gold)
