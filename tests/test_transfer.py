"""SentEval transfer tasks: loaders (counts, encodings, errors), MRPC features, the protocol on separable data."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from jtcse_lib import transfer as tr
from jtcse_lib.errors import ConfigError, DataError

# SentEval's sizes (senteval/*.py on the SentEval files; SimCSE's and SentEval's papers quote the same).
SENTEVAL_COUNTS = {
    "MR": {"all": 10662}, "CR": {"all": 3775}, "SUBJ": {"all": 10000}, "MPQA": {"all": 10606},
    "SST2": {"train": 67349, "dev": 872, "test": 1821},
    "TREC": {"train": 5452, "test": 500}, "MRPC": {"train": 4076, "test": 1725},
}


# ---------------------------------------------------------------- a tiny SentEval folder and a fake encoder

FILLER = [f"w{i}" for i in range(40)]
TREC_WORDS = {"ABBR": "abbreviation", "DESC": "describe", "ENTY": "entity", "HUM": "person", "LOC": "place",
              "NUM": "number"}


def _sentence(rng, key: str) -> str:
    return " ".join([key, *rng.choice(FILLER, size=3)])


def write_transfer_data(root: Path, n: int = 12, seed: int = 0) -> Path:
    """All seven tasks in SentEval's layout and formats, `n` samples per class and split; a class's sentences
    contain its own key word (good/bad, objective/subjective, the TREC word), MRPC paraphrases repeat s1."""
    rng = np.random.default_rng(seed)
    se = root / "senteval"

    def write(rel: str, lines: list[str], encoding: str = "utf-8", bom: bool = False):
        path = se / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(("\ufeff" if bom else "").encode(encoding) + ("\n".join(lines) + "\n").encode(encoding))

    for task, (pos, neg) in {"MR": ("rt-polarity.pos", "rt-polarity.neg"), "CR": ("custrev.pos", "custrev.neg"),
                             "MPQA": ("mpqa.pos", "mpqa.neg")}.items():
        write(f"{task}/{pos}", [_sentence(rng, "good") for _ in range(n)], "latin-1")
        write(f"{task}/{neg}", [_sentence(rng, "bad") for _ in range(n + 3)], "latin-1")  # unbalanced
    write("SUBJ/subj.objective", [_sentence(rng, "objective") for _ in range(n)], "latin-1")
    write("SUBJ/subj.subjective", [_sentence(rng, "subjective") for _ in range(n)], "latin-1")
    for split in ("train", "dev", "test"):
        rows = [f"{_sentence(rng, 'good' if i % 2 else 'bad')} \t{i % 2}" for i in range(2 * n)]
        write(f"SST/binary/sentiment-{split}", rows)
    for name, per_class in (("train_5500.label", n), ("TREC_10.label", 3)):
        rows = [f"{c}:fine {_sentence(rng, w)} ?" for c, w in TREC_WORDS.items() for _ in range(per_class)]
        write(f"TREC/{name}", rows, "latin-1")
    for name, pairs in (("msr_paraphrase_train.txt", n), ("msr_paraphrase_test.txt", 4)):
        rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(2 * pairs):
            s1 = _sentence(rng, "claim")
            s2 = s1 if i % 2 else _sentence(rng, "other")
            rows.append(f"{i % 2}\t{100 + i}\t{200 + i}\t{s1}\t{s2}")
        write(f"MRPC/{name}", rows, bom=True)
    return root


class WordEncoder:
    """Sum of fixed random word vectors (a word's vector depends on the word only); records its calls.

    With `key_scale` large, the key words dominate and every task is linearly separable."""

    def __init__(self, dim: int = 16, key_scale: float = 10.0):
        self.dim, self.key_scale, self.calls = dim, key_scale, []

    def word(self, w: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(w.encode())).normal(size=self.dim)
        return v * (1.0 if w in FILLER or w in "?." else self.key_scale)

    def __call__(self, sentences):
        self.calls.append(list(sentences))
        return np.stack([sum((self.word(w) for w in s.split()), np.zeros(self.dim))
                         for s in sentences]).astype(np.float32)


@pytest.fixture
def transfer_data(tmp_path) -> Path:
    return write_transfer_data(tmp_path / "data")


def _numbers(report: tr.TransferReport) -> dict:
    """Everything in the report except wall times."""
    d = report.to_dict()
    d.pop("seconds")
    for t in d["tasks"].values():
        t.pop("encode_seconds"), t.pop("fit_seconds")
    return d


# ---------------------------------------------------------------- loaders

def test_counts_equal_senteval(real_data):
    for task, counts in SENTEVAL_COUNTS.items():
        assert tr.load_transfer_task(task, real_data).counts == counts, task


def test_real_labels_and_text_follow_senteval(real_data):
    mr = tr.load_transfer_task("MR", real_data).splits["all"]
    assert np.bincount(mr.labels).tolist() == [5331, 5331] and mr.labels[0] == 1  # pos first, pos = 1
    assert mr.sent1[0].startswith("the rock is destined") and not mr.sent1[0].endswith(" ")  # joined tokens
    trec = tr.load_transfer_task("TREC", real_data)
    assert trec.splits["train"].sent1[0] == "How did serfdom develop in and then leave Russia ?"  # fine label dropped
    assert trec.splits["train"].labels[0] == tr.TREC_CLASSES.index("DESC")
    assert any("sister\u00f0city" in s for s in trec.splits["train"].sent1)  # byte 0xF0 read as latin-1
    mrpc = tr.load_transfer_task("MRPC", real_data).splits["train"]
    assert mrpc.sent1[0].startswith("Amrozi accused his brother") and mrpc.labels[:2].tolist() == [1, 0]


def test_blank_lines_are_kept_like_senteval(transfer_data):
    path = transfer_data / "senteval" / "CR" / "custrev.pos"
    lines = path.read_text(encoding="latin-1").splitlines()
    path.write_text("\n".join([lines[0], "", "   ", *lines[1:]]) + "\n", encoding="latin-1")
    split = tr.load_transfer_task("CR", transfer_data).splits["all"]
    assert len(split) == len(lines) + 2 + 15  # the negatives: n + 3
    assert split.sent1[1:3] == ["", ""] and split.labels[1] == 1


def test_whitespace_is_joined_with_single_spaces(transfer_data):
    sst = transfer_data / "senteval" / "SST" / "binary" / "sentiment-dev"
    sst.write_text("  a  very   good film \t1\n", encoding="utf-8")
    assert tr.load_transfer_task("SST2", transfer_data).splits["dev"].sent1 == ["a very good film"]
    trec = transfer_data / "senteval" / "TREC" / "TREC_10.label"
    trec.write_text("HUM:ind Who   wrote\tit ?\r\n", encoding="latin-1")
    test = tr.load_transfer_task("TREC", transfer_data).splits["test"]
    assert test.sent1 == ["Who wrote it ?"] and test.labels.tolist() == [3]


@pytest.mark.parametrize("task, rel, content, expect", [
    ("MR", "MR/rt-polarity.neg", None, r"data file .*rt-polarity\.neg is missing\. Fix: "),
    ("MPQA", "MPQA/mpqa.pos", "\n \n", r"data file .*mpqa\.pos has no sentence"),
    ("SST2", "SST/binary/sentiment-test", "a fine film\t1\nno tab here\n", r"sentiment-test, line 2: expected"),
    ("SST2", "SST/binary/sentiment-train", "a film\t2\n", r"sentiment-train, line 1: label '2' is not one of 0, 1"),
    ("TREC", "TREC/TREC_10.label", "NUM:dist How far ?\nWHAT:x Who ?\n", r"TREC_10\.label, line 2: label 'WHAT'"),
    ("TREC", "TREC/train_5500.label", "no colon here\n", r"train_5500\.label, line 1: expected 'COARSE:fine"),
    ("MRPC", "MRPC/msr_paraphrase_test.txt", "1\t1\t2\ta b\tc d\n", r"msr_paraphrase_test\.txt, line 1: expected"),
    ("MRPC", "MRPC/msr_paraphrase_train.txt", "Quality\ta\tb\tc\td\n1\t2\ta b\n",
     r"msr_paraphrase_train\.txt, line 2: expected 5 tab-separated columns, found 3"),
])
def test_missing_or_malformed_file_is_one_line_naming_it(transfer_data, task, rel, content, expect):
    path = transfer_data / "senteval" / rel
    if content is None:
        path.unlink()
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expect) as e:
        tr.load_transfer_task(task, transfer_data)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "Fix: " in msg


def test_utf8_files_reject_other_encodings(transfer_data):
    path = transfer_data / "senteval" / "SST" / "binary" / "sentiment-dev"
    path.write_bytes("caf\u00e9 film\t1\n".encode("latin-1"))  # latin-1 byte 0xE9 is not UTF-8
    with pytest.raises(DataError, match=r"sentiment-dev is not utf-8 text") as e:
        tr.load_transfer_task("SST2", transfer_data)
    assert "\n" not in str(e.value)


def test_unknown_task_and_bad_kfold():
    with pytest.raises(ConfigError, match="unknown transfer task 'SST5'"):
        tr.load_transfer_task("SST5")
    with pytest.raises(ConfigError, match="unknown transfer task"):
        tr.evaluate_transfer(WordEncoder(), ["MR", "SICK-E"])
    with pytest.raises(ConfigError, match="kfold must be at least 2"):
        tr.evaluate_transfer(WordEncoder(), ["MR"], kfold=1)


def test_too_few_samples_for_the_folds_is_a_data_error(transfer_data):
    with pytest.raises(DataError, match=r"CR: the smallest class has 12 samples, too few for 10-fold"):
        tr.evaluate_transfer(WordEncoder(), ["CR"], transfer_data, kfold=10, progress=False)


# ---------------------------------------------------------------- order and features

def test_senteval_order_is_a_stable_sort_by_length_then_label():
    split = tr.LabelledSplit(["a b c", "a", "b c", "c", "d e"], np.array([0, 1, 1, 0, 0]))
    # lengths 3,1,2,1,2 ; labels 0,1,1,0,0 -> (1,0)#3, (1,1)#1, (2,0)#4, (2,1)#2, (3,0)#0
    assert tr.senteval_order(split) == [3, 1, 4, 2, 0]
    pairs = tr.LabelledSplit(["a", "a", "a b"], np.array([1, 0, 0]), ["x y", "x", "x"])
    assert tr.senteval_order(pairs) == [1, 0, 2]  # by len(s1), then len(s2), then label


def test_pair_features_are_abs_difference_then_product():
    u = np.array([[1.0, -2.0, 3.0]])
    v = np.array([[4.0, 5.0, -6.0]])
    np.testing.assert_array_equal(tr.pair_features(u, v), [[3.0, 7.0, 9.0, 4.0, -10.0, -18.0]])


def test_mrpc_classifier_sees_senteval_pair_features(transfer_data, monkeypatch):
    seen = {}
    real_run_cv = tr._run_cv

    def spy(task, X, *args):
        seen.update(task=task, X=X)
        return real_run_cv(task, X, *args)

    monkeypatch.setattr(tr, "_run_cv", spy)
    enc = WordEncoder(dim=8)
    tr.evaluate_transfer(enc, ["MRPC"], transfer_data, kfold=3, progress=False)
    train = seen["task"].splits["train"]
    assert tr.senteval_order(train) == list(range(len(train)))  # the classifier sees SentEval's order
    u, v = enc(train.sent1).astype(np.float64), enc(train.sent2).astype(np.float64)
    X = seen["X"]["train"]
    assert X.shape == (len(train), 16)
    np.testing.assert_allclose(X[:, :8], np.abs(u - v), rtol=1e-6)
    np.testing.assert_allclose(X[:, 8:], u * v, rtol=1e-6)


# ---------------------------------------------------------------- protocol

def test_separable_data_scores_100_on_every_task(transfer_data):
    report = tr.evaluate_transfer(WordEncoder(), tr.TRANSFER_TASKS, transfer_data, kfold=3, progress=False)
    assert report.scores == {**{t: 100.0 for t in tr.TRANSFER_TASKS}, "avg": 100.0}
    assert all(s.dev_acc == 100.0 for s in report.tasks.values())
    assert report.tasks["MRPC"].f1 == 100.0
    # every C ties at 100%: SentEval's arg-max takes the first, the strongest regularisation
    assert report.tasks["MR"].C == [tr.C_GRID_INNER[0]] * 3  # one chosen C per outer fold
    assert report.tasks["SST2"].C == tr.C_GRID_INNER[0] and report.tasks["TREC"].C == tr.C_GRID_KFOLD[0]
    assert report.tasks["SST2"].counts == {"train": 24, "dev": 24, "test": 24}


def test_noisy_data_is_not_perfect_and_the_grid_is_searched(transfer_data):
    # key words as weak as the filler: CR is no longer separable; scores below 100 show the test can fail
    report = tr.evaluate_transfer(WordEncoder(key_scale=0.3), ["CR", "TREC"], transfer_data, kfold=3, progress=False)
    assert report.tasks["CR"].test_acc < 100 and report.tasks["TREC"].test_acc < 100
    assert len(report.tasks["TREC"].grid_scores) == len(tr.C_GRID_KFOLD)


def _reference_fit(X_tr, y_tr, C):
    """A cold fit to a tighter tolerance than the library's, by another solver."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, solver="newton-cg", tol=1e-9, max_iter=10_000).fit(X_tr, y_tr)


def _reference_cv(X, y, grid, k, seed):
    """SentEval's loop as written in validation.py (C outer, folds inner, cold fits); (best C, score)."""
    from sklearn.model_selection import StratifiedKFold

    scores = []
    for C in grid:
        accs = [_reference_fit(X[a], y[a], C).score(X[b], y[b])
                for a, b in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y)]
        scores.append(round(100 * np.mean(accs), 2))
    return grid[int(np.argmax(scores))], max(scores)


@pytest.mark.slow  # about 3 s a seed: SentEval's loops with cold fits at tolerance 1e-9
@pytest.mark.parametrize("seed", [tr.SENTEVAL_SEED, 3])
def test_protocols_equal_a_direct_transcription_of_senteval(transfer_data, seed):
    """InnerKFoldClassifier (CR), SplitClassifier (SST-2) and KFoldClassifier (TREC), written out as SentEval's
    loops with cold fits, on noisy data."""
    from sklearn.model_selection import StratifiedKFold

    enc, k = WordEncoder(key_scale=0.2), 3
    report = tr.evaluate_transfer(enc, ["CR", "SST2", "TREC"], transfer_data, kfold=k, seed=seed, progress=False)

    cr = tr._in_senteval_order(tr.load_transfer_task("CR", transfer_data)).splits["all"]
    X, y = enc(cr.sent1).astype(np.float64), cr.labels
    Cs, devs, tests = [], [], []
    for a, b in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y):
        C, dev = _reference_cv(X[a], y[a], tr.C_GRID_INNER, k, seed)
        Cs.append(C), devs.append(dev), tests.append(round(100 * _reference_fit(X[a], y[a], C).score(X[b], y[b]), 2))
    got = report.tasks["CR"]
    assert (got.C, got.dev_acc, got.test_acc) == (Cs, round(np.mean(devs), 2), round(np.mean(tests), 2))
    assert got.test_acc < 100 and len(set(Cs)) > 1  # noisy enough that the choice of C matters

    sst = tr.load_transfer_task("SST2", transfer_data).splits  # SplitClassifier: C by dev accuracy
    (X_tr, y_tr), (X_dev, y_dev), (X_te, y_te) = ((enc(sst[s].sent1).astype(np.float64), sst[s].labels)
                                                  for s in ("train", "dev", "test"))
    dev_scores = [round(100 * _reference_fit(X_tr, y_tr, C).score(X_dev, y_dev), 2) for C in tr.C_GRID_INNER]
    C = tr.C_GRID_INNER[int(np.argmax(dev_scores))]
    got = report.tasks["SST2"]
    assert (got.grid_scores, got.C, got.dev_acc) == (dev_scores, C, max(dev_scores))
    assert got.test_acc == round(100 * _reference_fit(X_tr, y_tr, C).score(X_te, y_te), 2)

    trec = tr._in_senteval_order(tr.load_transfer_task("TREC", transfer_data))
    X_tr, y_tr = enc(trec.splits["train"].sent1).astype(np.float64), trec.splits["train"].labels
    X_te, y_te = enc(trec.splits["test"].sent1).astype(np.float64), trec.splits["test"].labels
    C, dev = _reference_cv(X_tr, y_tr, tr.C_GRID_KFOLD, k, seed)
    got = report.tasks["TREC"]
    assert (got.C, got.dev_acc) == (C, dev) and len(set(got.grid_scores)) > 1
    assert got.test_acc == round(100 * _reference_fit(X_tr, y_tr, C).score(X_te, y_te), 2)


@pytest.mark.slow  # starts worker processes (n_jobs=2): about 15 s
def test_two_runs_give_identical_numbers_whatever_n_jobs(transfer_data):
    tasks = ["CR", "SST2", "TREC", "MRPC"]
    runs = [tr.evaluate_transfer(WordEncoder(key_scale=0.5), tasks, transfer_data, kfold=3, progress=False,
                                 n_jobs=n_jobs) for n_jobs in (1, 1, 2)]
    assert _numbers(runs[0]) == _numbers(runs[1]) == _numbers(runs[2])
    other_seed = tr.evaluate_transfer(WordEncoder(key_scale=0.5), tasks, transfer_data, kfold=3, seed=7,
                                      progress=False)
    assert _numbers(other_seed)["tasks"] != _numbers(runs[0])["tasks"]  # the seed does pick the folds


def test_every_distinct_sentence_is_encoded_once(transfer_data):
    # MR's and SST-2's files share no sentence here, so make SST-2 dev repeat MR's positives
    mr = (transfer_data / "senteval" / "MR" / "rt-polarity.pos").read_text(encoding="latin-1").splitlines()
    (transfer_data / "senteval" / "SST" / "binary" / "sentiment-dev").write_text(
        "".join(f"{s}\t1\n{s}\t1\n" for s in mr) + "bad w1\t0\n" * 12, encoding="utf-8")
    enc = WordEncoder()
    report = tr.evaluate_transfer(enc, ["MR", "SST2", "MRPC"], transfer_data, kfold=3, progress=False)
    encoded = [s for call in enc.calls for s in call]
    assert len(enc.calls) == 3 and len(encoded) == len(set(encoded))
    assert report.tasks["SST2"].n_encoded == report.tasks["SST2"].n_sentences - len(mr)
    assert report.tasks["MRPC"].n_sentences == 2 * (24 + 8) - 12 - 4  # each paraphrase pair repeats its s1


def test_report_dict_and_table(transfer_data):
    import json

    report = tr.evaluate_transfer(WordEncoder(), ["CR", "SST2", "MRPC"], transfer_data, kfold=3, progress=False)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["scores"]["avg"] == 100.0 and d["kfold"] == 3 and d["seed"] == tr.SENTEVAL_SEED
    assert d["tasks"]["CR"]["dev_acc_is"].startswith("mean over the 3 outer folds")
    assert d["tasks"]["MRPC"]["f1"] == 100.0 and d["classifier"]["features_standardised"] is False
    lines = report.table().splitlines()
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("Avg.") and "100.00" in lines[-1]
    assert len({len(line) for line in lines[:-1]}) == 1  # fixed width
    assert "inner-CV" in lines[2] and "dev" in lines[3] and "CV on train" in lines[4]


# ---------------------------------------------------------------- subsampling (smoke) and the command line

def test_subsample_caps_each_split_deterministically_in_file_order(transfer_data):
    task = tr.load_transfer_task("TREC", transfer_data)
    small = tr.subsample(task, 20, seed=1)
    assert small.counts == {"train": 20, "test": 18}  # the test split (18) was already under the cap
    assert tr.subsample(task, 20, seed=1).splits["train"].sent1 == small.splits["train"].sent1
    order = [task.splits["train"].sent1.index(s) for s in small.splits["train"].sent1]
    assert order == sorted(order)
    assert tr.subsample(task, None) is task


def test_transfer_command_writes_the_report(transfer_data, tiny_model_dir, tmp_path, capsys):
    import json

    from jtcse_lib.__main__ import main

    out = tmp_path / "t.json"
    assert main(["transfer", "--model", str(tiny_model_dir), "--tasks", "CR", "MRPC", "--kfold", "2",
                 "--data-dir", str(transfer_data), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == {"CR", "MRPC"} and report["pooling"] == "cls" and "git_commit" in report
    assert "CR" in capsys.readouterr().out
    assert main(["transfer", "--model", str(tiny_model_dir), "--tasks", "CR", "--out", str(tmp_path)]) == 2
