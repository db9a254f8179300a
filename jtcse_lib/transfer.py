"""SentEval's seven transfer tasks (MR, CR, SUBJ, MPQA, SST-2, TREC, MRPC) with a scikit-learn classifier.

Data: the loaders read SentEval's own files exactly as SentEval's `binary.py`, `sst.py`, `trec.py` and
`mrpc.py` do, and join each token list with single spaces as SimCSE's batcher does (`data.senteval_text`)::

    DATA_DIR/senteval/MR/rt-polarity.{pos,neg}          latin-1, one sentence a line, pos=1 neg=0     10662
    DATA_DIR/senteval/CR/custrev.{pos,neg}              (same)                                          3775
    DATA_DIR/senteval/SUBJ/subj.{objective,subjective}  (same; objective=1, subjective=0)              10000
    DATA_DIR/senteval/MPQA/mpqa.{pos,neg}               (same)                                         10606
    DATA_DIR/senteval/SST/binary/sentiment-{train,dev,test}   UTF-8, "sentence<TAB>label"   67349/872/1821
    DATA_DIR/senteval/TREC/{train_5500,TREC_10}.label   latin-1, "COARSE:fine question", 6 classes  5452/500
    DATA_DIR/senteval/MRPC/msr_paraphrase_{train,test}.txt    UTF-8, header, then
                                                        "label<TAB>id1<TAB>id2<TAB>s1<TAB>s2"       4076/1725

The binary files are split with Python's `str.splitlines()` and blank lines are kept as empty sentences
(SentEval does both; CR has 4 and MPQA 3 such lines, and they count in 3775 and 10606).

Protocol (SentEval as SimCSE's `evaluation.py --mode test` runs it: kfold = 10, seed 1111):
- MR, CR, SUBJ, MPQA (`InnerKFoldClassifier`): 10 stratified outer folds; on each outer training part a
  10-fold inner CV picks the L2 strength, a classifier with it is fit on the whole training part and scored
  on the held-out fold. test = mean over outer folds of the fold accuracy; cv = mean over outer folds of the
  best inner-CV accuracy. Both shuffles use random_state = seed (SentEval hard-codes 1111 there, its default
  seed), and the inner one is re-run with the same state on each outer training part, as SentEval does.
- SST-2 (`SplitClassifier`): fit on train for each L2 strength, pick the best on dev, report test.
- TREC, MRPC (`KFoldClassifier`): 10-fold CV on train picks the L2 strength, fit on all of train, score
  test. MRPC also reports F1 of class 1 (paraphrase) on test.
- MRPC features are SentEval's `np.c_[|u - v|, u * v]` (2H columns), *not* [u, v, |u - v|, u * v]: the
  four-part layout is InferSent's NLI classifier (SentEval's snli.py builds [u, v, u * v, |u - v|]);
  SentEval's mrpc.py and sick.py build only the two parts.
- Samples enter the classifier in SentEval's order: sorted (stably) by token count, then label (MRPC: by the
  token counts of s1, then s2, then label), so the stratified folds are the ones SentEval draws from the same
  arrays with this scikit-learn version.
- Accuracies are x 100 and rounded as SentEval rounds them: each grid point's CV mean to 2 decimals before
  the arg-max (ties go to the first, i.e. the strongest regularisation), each outer fold's test accuracy to 2
  decimals, and the final means to 2 decimals.

Classifier: `sklearn.linear_model.LogisticRegression` with SentEval's own scikit-learn grids (its
`usepytorch=False` path): C in {2^-2, ..., 2^3} for the inner CV and SST-2, C in {2^-1, ..., 2^5} for TREC and
MRPC, minimising  1/2 ||w||^2 + C sum_i CE(softmax(W x_i + b), y_i)  to convergence (Newton-Cholesky for two
classes, multinomial Newton-CG for TREC, gradient tolerance 1e-6; SentEval's scikit-learn path predates 0.22, whose
default was liblinear, one-vs-rest with a penalised intercept), on raw features as SentEval feeds them (the meaning
of its C grid depends on that scale). SimCSE reports SentEval's PyTorch classifier instead (Adam, L2 as weight
decay lambda in {1e-5, ..., 1e-2}, i.e. C = 1 / (lambda n) but further regularised by early stopping on a held-out
split, and a penalised bias); the two are not equivalent, so the scores are not expected to equal SimCSE's (by how
much was not measured: that classifier needs CUDA). No randomness enters the fit: the numbers are a function of
the embeddings and `seed` (the folds) only.

Speed: each distinct sentence is encoded once per call (shared between tasks); the classifier works on the cached
matrix in float64; each grid is walked from strong to weak regularisation with warm starts (the optimum is unique;
checked on MiniLM embeddings: the same tables as cold fits, and as Newton-CG for the binary tasks; L-BFGS was 6-20x
slower and short of convergence). The fits run BLAS at one thread, in `n_jobs` processes (folds are independent,
so the numbers do not depend on `n_jobs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import TRANSFER_TASKS
from .data import resolve_data_dir, senteval_text
from .errors import ConfigError, DataError
from .progress import progress_bar

SENTEVAL_SEED = 1111  # SentEval's default params.seed; SimCSE does not change it
C_GRID_INNER = tuple(2.0 ** t for t in range(-2, 4))  # InnerKFoldClassifier and SplitClassifier
C_GRID_KFOLD = tuple(2.0 ** t for t in range(-1, 6))  # KFoldClassifier
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")  # SentEval's tgt2idx order

Encoder = Callable[[Sequence[str]], np.ndarray]
_FIX = ("replace it with the SentEval original (unset JTCSE_DATA_DIR to use the data the repository ships, or "
        "write a full folder with `python -m jtcse_lib download-data`)")

# task -> (folder under senteval/, file of class 1, file of class 0)
_BINARY_FILES = {
    "MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"),
    "CR": ("CR", "custrev.pos", "custrev.neg"),
    "SUBJ": ("SUBJ", "subj.objective", "subj.subjective"),  # SentEval passes 'objective' as its positive class
    "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg"),
}
PROTOCOLS = {"MR": "inner-cv", "CR": "inner-cv", "SUBJ": "inner-cv", "MPQA": "inner-cv",
             "SST2": "dev", "TREC": "cv", "MRPC": "cv"}


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class LabelledSplit:
    """One split of a task: sentences (MRPC: pairs sent1[i], sent2[i]) and integer labels."""

    sent1: list[str]
    labels: np.ndarray  # (n,) int64
    sent2: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def sentences(self) -> list[str]:
        return self.sent1 + (self.sent2 or [])

    def take(self, idx) -> LabelledSplit:
        """The samples at positions `idx`, in that order."""
        return LabelledSplit([self.sent1[i] for i in idx], self.labels[np.asarray(idx, dtype=np.int64)],
                             None if self.sent2 is None else [self.sent2[i] for i in idx])


@dataclass(frozen=True)
class TransferTask:
    """A transfer task: its splits ('all' for MR/CR/SUBJ/MPQA; train/dev/test; train/test) and class names."""

    name: str
    splits: dict[str, LabelledSplit]
    classes: tuple[str, ...]

    @property
    def protocol(self) -> str:
        return PROTOCOLS[self.name]

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


def _read(path: Path, encoding: str) -> str:
    """The file's text with universal newlines (CR LF and CR read as LF), as `io.open(path, 'r', encoding=...)`
    gives it to SentEval."""
    if not path.exists():
        raise DataError(f"data file {path} is missing", _FIX)
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not {encoding} text (byte {e.start})", _FIX) from None
    except OSError as e:
        raise DataError(f"cannot read data file {path} ({e.strerror or e})", _FIX) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _lines(text: str) -> list[str]:
    """The lines `for line in f` yields, without their newline (a final newline makes no extra line)."""
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _label(text: str, allowed: dict[str, int], path: Path, lineno: int) -> int:
    if text not in allowed:
        raise DataError(f"{path}, line {lineno}: label {text[:40]!r} is not one of {', '.join(allowed)}", _FIX)
    return allowed[text]


def _load_binary(task: str, folder: Path) -> TransferTask:
    """binary.py: `[line.split() for line in f.read().splitlines()]`, latin-1; samples = pos + neg."""
    sub, pos_name, neg_name = _BINARY_FILES[task]
    sentences, labels = [], []
    for name, label in ((pos_name, 1), (neg_name, 0)):
        path = folder / sub / name
        lines = _read(path, "latin-1").splitlines()
        if not any(line.strip() for line in lines):
            raise DataError(f"data file {path} has no sentence", _FIX)
        sentences += [senteval_text(line) for line in lines]
        labels += [label] * len(lines)
    classes = ("subjective", "objective") if task == "SUBJ" else ("negative", "positive")
    return TransferTask(task, {"all": LabelledSplit(sentences, np.asarray(labels, dtype=np.int64))}, classes)


def _load_sst2_split(path: Path) -> LabelledSplit:
    """sst.py (nclasses=2): `line.strip().split('\\t')`, sentence in column 1, label 0/1 in column 2; UTF-8."""
    sentences, labels = [], []
    for lineno, line in enumerate(_lines(_read(path, "utf-8")), start=1):
        cols = line.strip().split("\t")
        if len(cols) < 2:
            raise DataError(f"{path}, line {lineno}: expected 'sentence<TAB>label', found no tab", _FIX)
        labels.append(_label(cols[1], {"0": 0, "1": 1}, path, lineno))
        sentences.append(senteval_text(cols[0]))
    if not labels:
        raise DataError(f"data file {path} is empty", _FIX)
    return LabelledSplit(sentences, np.asarray(labels, dtype=np.int64))


def _load_trec_split(path: Path) -> LabelledSplit:
    """trec.py: `COARSE:fine question words`; the coarse label is the class, the fine label is dropped; latin-1."""
    classes = {name: i for i, name in enumerate(TREC_CLASSES)}
    sentences, labels = [], []
    for lineno, line in enumerate(_lines(_read(path, "latin-1")), start=1):
        target, colon, rest = line.strip().partition(":")
        fine_and_question = rest.split(" ", 1)
        if not colon or len(fine_and_question) < 2:
            raise DataError(f"{path}, line {lineno}: expected 'COARSE:fine question', found {line.strip()[:40]!r}",
                            _FIX)
        labels.append(_label(target, classes, path, lineno))
        sentences.append(senteval_text(fine_and_question[1]))
    if not labels:
        raise DataError(f"data file {path} is empty", _FIX)
    return LabelledSplit(sentences, np.asarray(labels, dtype=np.int64))


def _load_mrpc_split(path: Path) -> LabelledSplit:
    """mrpc.py: header line dropped, then `line.strip().split('\\t')`: label, id1, id2, s1, s2; UTF-8."""
    lines = _lines(_read(path, "utf-8"))
    if not lines or not lines[0].lstrip("\ufeff").startswith("Quality"):
        raise DataError(f"{path}, line 1: expected the header 'Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>...'",
                        _FIX)
    s1, s2, labels = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        cols = line.strip().split("\t")
        if len(cols) < 5:
            raise DataError(f"{path}, line {lineno}: expected 5 tab-separated columns, found {len(cols)}", _FIX)
        labels.append(_label(cols[0], {"0": 0, "1": 1}, path, lineno))
        s1.append(senteval_text(cols[3]))
        s2.append(senteval_text(cols[4]))
    if not labels:
        raise DataError(f"data file {path} has a header but no pair", _FIX)
    return LabelledSplit(s1, np.asarray(labels, dtype=np.int64), s2)


def load_transfer_task(task: str, data_dir=None) -> TransferTask:
    """One of `TRANSFER_TASKS`, read from `DATA_DIR/senteval/<task>/` exactly as SentEval reads it."""
    if task not in TRANSFER_TASKS:
        raise ConfigError(f"unknown transfer task {task!r}", f"use one of {', '.join(TRANSFER_TASKS)}")
    folder = resolve_data_dir(data_dir) / "senteval"
    if task in _BINARY_FILES:
        return _load_binary(task, folder)
    if task == "SST2":
        splits = {s: _load_sst2_split(folder / "SST" / "binary" / f"sentiment-{s}") for s in ("train", "dev", "test")}
        return TransferTask(task, splits, ("negative", "positive"))
    if task == "TREC":
        splits = {"train": _load_trec_split(folder / "TREC" / "train_5500.label"),
                  "test": _load_trec_split(folder / "TREC" / "TREC_10.label")}
        return TransferTask(task, splits, TREC_CLASSES)
    splits = {"train": _load_mrpc_split(folder / "MRPC" / "msr_paraphrase_train.txt"),
              "test": _load_mrpc_split(folder / "MRPC" / "msr_paraphrase_test.txt")}
    return TransferTask(task, splits, ("not paraphrase", "paraphrase"))


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SentEval's MRPC features of pairs (u_i, v_i): [|u - v|, u * v], (n, 2H), as `np.c_` builds them in mrpc.py."""
    return np.concatenate([np.abs(a - b), a * b], axis=1)


def senteval_order(split: LabelledSplit) -> list[int]:
    """The order SentEval's `run` puts samples in before encoding and classifying: a stable sort by
    (token count, label), for MRPC by (token count of s1, token count of s2, label)."""
    n1 = [len(s.split()) for s in split.sent1]
    n2 = [len(s.split()) for s in split.sent2] if split.sent2 is not None else [0] * len(split)
    y = split.labels.tolist()
    return sorted(range(len(split)), key=lambda i: (n1[i], n2[i], y[i]))


# ---------------------------------------------------------------- classifier

SOLVER_BINARY = "newton-cholesky"  # exact Newton steps; a 385 x 385 Hessian is cheap (measured fastest)
SOLVER_MULTICLASS = "newton-cg"  # multinomial TREC: Hessian-vector products, no (6 x 385)^2 Hessian
TOL = 1e-6  # on the gradient of the mean loss; tight enough that the accuracies no longer move with it
MAX_ITER = 1000


def _classifier(C: float, nclasses: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    solver = SOLVER_BINARY if nclasses == 2 else SOLVER_MULTICLASS
    return LogisticRegression(C=C, solver=solver, tol=TOL, max_iter=MAX_ITER, warm_start=True, random_state=seed)


def _one_thread():
    """BLAS and OpenMP limited to one thread: the fits are small, and on a loaded 2-core machine multi-threaded
    BLAS was measured 2-8x *slower* than one thread; more cores are used through `n_jobs` processes instead."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _grid_path(X_tr, y_tr, X_te, y_te, grid, nclasses, seed, keep: bool = False, bar=None):
    """For each C of `grid` (ascending: strong to weak regularisation), the accuracy on (X_te, y_te) of the
    classifier fit on (X_tr, y_tr), each fit warm-started from the previous C's optimum; with `keep`, also
    a copy of each fitted model. Returns (accuracies, models)."""
    import copy

    clf = _classifier(grid[0], nclasses, seed)
    accs, models = [], []
    for C in grid:
        clf.set_params(C=C).fit(X_tr, y_tr)
        accs.append(float(clf.score(X_te, y_te)))
        if keep:
            models.append(copy.deepcopy(clf))
        if bar is not None:
            bar.update(1)
    return accs, models


def _fold_path(X, y, train_idx, test_idx, grid, nclasses, seed) -> list[float]:
    with _one_thread():
        return _grid_path(X[train_idx], y[train_idx], X[test_idx], y[test_idx], grid, nclasses, seed)[0]


def _parallel(jobs, n_jobs: int, bar=None) -> list:
    """Run `jobs` (joblib delayed calls) in order, `n_jobs` processes at a time (1: in this process), ticking `bar`."""
    from joblib import Parallel

    results = []
    for r in Parallel(n_jobs=n_jobs, return_as="generator")(jobs):
        results.append(r)
        if bar is not None:
            bar.update(1)
    return results


def _pick(accs) -> tuple[int, list[float]]:
    """SentEval's choice: each grid point's accuracy x 100 rounded to 2 decimals, then the first best."""
    scores = [round(100 * float(a), 2) for a in accs]
    return int(np.argmax(scores)), scores


def _cv_scores(X, y, grid, kfold, nclasses, seed, n_jobs: int = 1, bar=None) -> tuple[int, list[float]]:
    """SentEval's CV selection: per C the mean accuracy over `kfold` stratified folds; `_pick` of them."""
    from joblib import delayed
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed).split(X, y)
    jobs = [delayed(_fold_path)(X, y, tr, te, grid, nclasses, seed) for tr, te in folds]
    return _pick(np.array(_parallel(jobs, n_jobs, bar)).mean(0))  # mean over (kfold, len(grid))


def _outer_fold(X, y, train_idx, test_idx, kfold, nclasses, seed) -> tuple[float, float, float]:
    """One outer fold of SentEval's InnerKFoldClassifier: (chosen C, its inner-CV score, test accuracy x 100)."""
    X_tr, y_tr = X[train_idx], y[train_idx]
    with _one_thread():
        best, scores = _cv_scores(X_tr, y_tr, C_GRID_INNER, kfold, nclasses, seed)
        clf = _classifier(C_GRID_INNER[best], nclasses, seed).fit(X_tr, y_tr)
        return C_GRID_INNER[best], scores[best], round(100 * float(clf.score(X[test_idx], y[test_idx])), 2)


# ---------------------------------------------------------------- protocols

@dataclass
class TransferScore:
    """One task's result; accuracies x 100, rounded as SentEval rounds them."""

    task: str
    protocol: str  # inner-cv | dev | cv
    test_acc: float
    dev_acc: float  # inner-cv: mean best inner-CV accuracy; dev: SST-2 dev accuracy; cv: CV accuracy on train
    C: float | list[float]  # chosen inverse L2 strength (inner-cv: one per outer fold)
    counts: dict[str, int]
    f1: float | None = None  # MRPC: F1 of the paraphrase class on test
    grid_scores: list[float] = field(default_factory=list)  # dev / cv score per C (not for inner-cv)
    n_sentences: int = 0  # distinct sentences of the task
    n_encoded: int = 0  # of them, encoded for this task (the rest came from an earlier task's cache)
    encode_seconds: float = 0.0
    fit_seconds: float = 0.0

    @property
    def dev_label(self) -> str:
        return {"inner-cv": "inner-CV", "dev": "dev", "cv": "CV on train"}[self.protocol]


def _check_classes(task: str, y: np.ndarray, need: int, kfold: int) -> None:
    counts = np.bincount(y)
    if len(counts) < 2 or counts.min() < need:
        raise DataError(f"{task}: the smallest class has {int(counts.min()) if len(counts) else 0} samples, too few "
                        f"for {kfold}-fold stratified cross-validation (needs {need})",
                        "use the full SentEval files or a smaller kfold")


def _run_inner_cv(task: TransferTask, X: dict, kfold, seed, n_jobs, bar) -> TransferScore:
    from joblib import delayed
    from sklearn.model_selection import StratifiedKFold

    X, y = X["all"], task.splits["all"].labels
    _check_classes(task.name, y, 2 * kfold, kfold)
    outer = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=seed).split(X, y)
    bar.reset(total=kfold)
    jobs = [delayed(_outer_fold)(X, y, tr, te, kfold, len(task.classes), seed) for tr, te in outer]
    Cs, cvs, tests = zip(*_parallel(jobs, n_jobs, bar))
    return TransferScore(task.name, "inner-cv", test_acc=round(float(np.mean(tests)), 2),
                         dev_acc=round(float(np.mean(cvs)), 2), C=list(Cs), counts=task.counts)


def _run_dev(task: TransferTask, X: dict, seed, bar) -> TransferScore:
    y_tr, y_dev, y_te = (task.splits[s].labels for s in ("train", "dev", "test"))
    bar.reset(total=len(C_GRID_INNER))
    accs, models = _grid_path(X["train"], y_tr, X["dev"], y_dev, C_GRID_INNER, len(task.classes), seed, keep=True,
                              bar=bar)
    best, scores = _pick(accs)
    test = round(100 * float(models[best].score(X["test"], y_te)), 2)
    return TransferScore(task.name, "dev", test_acc=test, dev_acc=scores[best], C=C_GRID_INNER[best],
                         counts=task.counts, grid_scores=scores)


def _run_cv(task: TransferTask, X: dict, kfold, seed, n_jobs, bar) -> TransferScore:
    from sklearn.metrics import f1_score

    y_tr, y_te = task.splits["train"].labels, task.splits["test"].labels
    nclasses = len(task.classes)
    _check_classes(task.name, y_tr, kfold, kfold)
    bar.reset(total=kfold + 1)
    best, scores = _cv_scores(X["train"], y_tr, C_GRID_KFOLD, kfold, nclasses, seed, n_jobs, bar)
    clf = _classifier(C_GRID_KFOLD[best], nclasses, seed).fit(X["train"], y_tr)
    bar.update(1)
    yhat = clf.predict(X["test"])
    f1 = round(100 * float(f1_score(y_te, yhat)), 2) if task.name == "MRPC" else None
    return TransferScore(task.name, "cv", test_acc=round(100 * float(np.mean(yhat == y_te)), 2),
                         dev_acc=scores[best], C=C_GRID_KFOLD[best], counts=task.counts, f1=f1,
                         grid_scores=scores)


# ---------------------------------------------------------------- evaluation

def _in_senteval_order(task: TransferTask) -> TransferTask:
    return TransferTask(task.name, {name: s.take(senteval_order(s)) for name, s in task.splits.items()}, task.classes)


class _EmbeddingCache:
    """sentence -> embedding over one `evaluate_transfer` call: each distinct sentence is encoded once."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.vectors: dict[str, np.ndarray] = {}

    def add(self, sentences) -> int:
        """Encode the sentences not seen yet (in one encoder call); returns how many that was."""
        new = sorted(set(sentences).difference(self.vectors))
        if new:
            out = np.asarray(self.encoder(new))
            if out.ndim != 2 or len(out) != len(new):
                raise ValueError(f"the encoder returned shape {out.shape} for {len(new)} sentences; "
                                 "expected (n_sentences, dim)")
            self.vectors.update(zip(new, out))
        return len(new)

    def matrix(self, sentences) -> np.ndarray:
        """(n, H) float64: the classifier fits in double precision whatever the encoder's dtype."""
        return np.stack([self.vectors[s] for s in sentences]).astype(np.float64)


def _features(task: TransferTask, cache: _EmbeddingCache, split: str) -> np.ndarray:
    s = task.splits[split]
    if s.sent2 is None:
        return cache.matrix(s.sent1)
    return pair_features(cache.matrix(s.sent1), cache.matrix(s.sent2))


@dataclass
class TransferReport:
    """Results of `evaluate_transfer`: one `TransferScore` per task, with the settings that produced them."""

    tasks: dict[str, TransferScore]
    kfold: int = 10
    seed: int = SENTEVAL_SEED

    @property
    def scores(self) -> dict[str, float]:
        """Test accuracy x 100 per task and their plain mean 'avg' (SimCSE's transfer table)."""
        out = {t: s.test_acc for t, s in self.tasks.items()}
        out["avg"] = round(float(np.mean(list(out.values()))), 2) if out else float("nan")
        return out

    def to_dict(self) -> dict:
        return {
            "protocol": f"senteval-transfer (kfold={self.kfold}; SimCSE's --mode test uses 10, --mode dev 5), "
                        "scikit-learn logistic regression",
            "kfold": self.kfold,
            "seed": self.seed,
            "classifier": {"model": "sklearn.linear_model.LogisticRegression", "solver_binary": SOLVER_BINARY,
                           "solver_multiclass": SOLVER_MULTICLASS, "tol": TOL, "features_standardised": False,
                           "C_grid_inner_cv_and_dev": list(C_GRID_INNER), "C_grid_cv": list(C_GRID_KFOLD)},
            "scores": self.scores,
            "tasks": {t: {
                "protocol": s.protocol,
                "test_acc": s.test_acc,
                "dev_acc": s.dev_acc,
                "dev_acc_is": {"inner-cv": f"mean over the {self.kfold} outer folds of the best inner-CV accuracy",
                               "dev": "accuracy on the dev split at the chosen C",
                               "cv": f"{self.kfold}-fold CV accuracy on train at the chosen C"}[s.protocol],
                "f1": s.f1,
                "C": s.C,
                "grid_scores": s.grid_scores,
                "counts": s.counts,
                "n_sentences": s.n_sentences,
                "n_encoded": s.n_encoded,
                "encode_seconds": round(s.encode_seconds, 2),
                "fit_seconds": round(s.fit_seconds, 2),
            } for t, s in self.tasks.items()},
            "seconds": {"encode": round(sum(s.encode_seconds for s in self.tasks.values()), 2),
                        "fit": round(sum(s.fit_seconds for s in self.tasks.values()), 2)},
        }

    def table(self) -> str:
        """One row per task (test accuracy, dev/CV accuracy, MRPC F1, chosen C, counts, seconds) and Avg."""
        def c_text(C) -> str:
            if isinstance(C, list):
                values, n = np.unique(C, return_counts=True)
                return f"2^{int(np.log2(values[np.argmax(n)]))} ({n.max()}/{len(C)})"
            return f"2^{int(np.log2(C))}"

        head = (f"{'task':<5} {'test acc':>8} {'dev/cv acc':>10} {'(which)':<11} {'F1':>6} {'C':>10} "
                f"{'n (splits)':>18} {'encode s':>9} {'fit s':>7}")
        lines = [head, "-" * len(head)]
        for t, s in self.tasks.items():
            f1 = f"{s.f1:6.2f}" if s.f1 is not None else f"{'':>6}"
            n = "/".join(str(v) for v in s.counts.values())
            lines.append(f"{t:<5} {s.test_acc:8.2f} {s.dev_acc:10.2f} {s.dev_label:<11} {f1} {c_text(s.C):>10} "
                         f"{n:>18} {s.encode_seconds:9.1f} {s.fit_seconds:7.1f}")
        lines.append(f"{'Avg.':<5} {self.scores['avg']:8.2f}")
        return "\n".join(lines)


def subsample(task: TransferTask, limit: int | None, seed: int = SENTEVAL_SEED) -> TransferTask:
    """At most `limit` examples of each split, drawn at random without replacement (seeded) and kept in file order:
    for quick runs only (the smoke profile); scores on a subsample are not SentEval's."""
    if limit is None or all(len(split) <= limit for split in task.splits.values()):
        return task
    rng = np.random.default_rng(seed)
    splits = {name: split.take(np.sort(rng.choice(len(split), size=min(limit, len(split)), replace=False)))
              for name, split in task.splits.items()}  # one draw per split, in the order of the splits
    return TransferTask(task.name, splits, task.classes)


def evaluate_transfer(encoder: Encoder, tasks: Sequence[str] = TRANSFER_TASKS, data_dir=None, kfold: int = 10,
                      seed: int = SENTEVAL_SEED, progress: bool = True, n_jobs: int = 1,
                      limit: int | None = None) -> TransferReport:
    """SentEval transfer evaluation of `encoder` (any callable list[str] -> (n, H) array) on `tasks`.

    Each task's distinct sentences are encoded in one call (sentences already encoded for an earlier task
    are reused), then the task's protocol (module docstring) runs on the cached embeddings. `kfold` is
    SentEval's params.kfold (SimCSE's test mode: 10), `seed` its params.seed (1111, which seeds the folds),
    `n_jobs` the number of processes fitting folds in parallel (-1: one per core; results do not depend on it),
    `limit` a cap on each split's examples (`subsample`; quick runs only, the scores are then not SentEval's).
    Cost with MiniLM on 2 shared CPU cores, n_jobs=1: 9-15 minutes for the seven tasks, about 7 of them fitting
    (4 x 610 fits for MR/CR/SUBJ/MPQA, 71 for TREC and MRPC, 6 for SST-2); n_jobs=2 fitted 1.8x faster.
    """
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TRANSFER_TASKS]
    if unknown:
        raise ConfigError(f"unknown transfer task(s) {', '.join(unknown)}", f"use some of {', '.join(TRANSFER_TASKS)}")
    if kfold < 2:
        raise ConfigError(f"kfold must be at least 2, got {kfold}", "use kfold=10 (SimCSE's test mode) or 5 (dev mode)")
    data = {t: _in_senteval_order(subsample(load_transfer_task(t, data_dir), limit, seed))
            for t in tasks}  # all files checked first
    cache = _EmbeddingCache(encoder)
    results = {}
    task_bar = progress_bar(tasks, desc="transfer tasks", unit="task", disable=not progress)
    fold_bar = progress_bar(total=kfold, desc="folds", unit="fold", disable=not progress, leave=False)
    for name in task_bar:
        task = data[name]
        task_bar.set_postfix_str(f"{name}: encoding")
        sentences = {s for split in task.splits.values() for s in split.sentences()}
        start = time.perf_counter()
        n_new = cache.add(sentences)
        encoded = time.perf_counter()
        task_bar.set_postfix_str(f"{name}: classifier")
        fold_bar.reset()
        fold_bar.unit = "C" if task.protocol == "dev" else "fold"
        fold_bar.set_description(f"{name} " + ("C values" if task.protocol == "dev" else "folds"))
        X = {split: _features(task, cache, split) for split in task.splits}
        with _one_thread():
            if task.protocol == "inner-cv":
                score = _run_inner_cv(task, X, kfold, seed, n_jobs, fold_bar)
            elif task.protocol == "dev":
                score = _run_dev(task, X, seed, fold_bar)
            else:
                score = _run_cv(task, X, kfold, seed, n_jobs, fold_bar)
        score.n_sentences, score.n_encoded = len(sentences), n_new
        score.encode_seconds, score.fit_seconds = encoded - start, time.perf_counter() - encoded
        results[name] = score
    fold_bar.close()
    return TransferReport(results, kfold, seed)
