"""Data: where it lives, the SentEval STS/SICK-R loaders, the unlabelled training corpus.

Layout of a data folder (the shipped archive, `$JTCSE_DATA_DIR` and `download-data` all use it)::

    DATA_DIR/senteval/STS/STS12-en-test/STS.input.<subset>.txt  + STS.gs.<subset>.txt
    DATA_DIR/senteval/STS/STSBenchmark/sts-{train,dev,test}.csv
    DATA_DIR/senteval/SICK/SICK_{train,trial,test_annotated}.txt
    DATA_DIR/senteval/{MR,CR,SUBJ,MPQA,SST,TREC,MRPC}/...   (the transfer tasks, read by jtcse_lib.transfer)
    DATA_DIR/wiki/wiki1m_subset.txt   (or wiki1m_for_simcse.txt, the full corpus)

Where it comes from: `$JTCSE_DATA_DIR` when set, else the data the repository ships (`data/jtcse-data.tar.xz`,
see data/README.md), unpacked on first use into the cache folder and verified against `data/MANIFEST.sha256`.

The loaders follow SentEval exactly (the code SimCSE, TNCSE and JTCSE evaluate with): sentences are split on
whitespace and re-joined with single spaces (`senteval_text`), a blank gold line drops its pair, STS-B takes the
score from column 5 and the sentences from columns 6 and 7, SICK-R skips its header and reads the relatedness score
from column 4. Anything else malformed stops with the file and line number.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, JtcseError
from .files import FileProblem, exclusive_lock, read_json, read_text, write_file, write_folder, write_json, write_npz
from .paths import CACHE_ENV, cache_root, source_dir  # data.cache_root stays importable for callers

DATA_ENV = "JTCSE_DATA_DIR"
SHIPPED_DIR = source_dir("data")
ARCHIVE_NAME, MANIFEST_NAME = "jtcse-data.tar.xz", "MANIFEST.sha256"
HUB_DATASET = "princeton-nlp/datasets-for-simcse"
CORPORA = {"wiki1m_subset": "wiki/wiki1m_subset.txt", "wiki1m": "wiki/wiki1m_for_simcse.txt"}
SICK_SUFFIX = "+sick"  # `wiki1m+sick`: the corpus and the unlabelled SICK sentences (official stage 2; transductive)
DATASETS_CORPORA = ("wiki1m",)  # tokenised through Hugging Face `datasets` (also with +sick): tokenized_corpus

# SentEval's sub-sets per STS year (STS13 "SMT" has gold scores but no input: SentEval skips it).
STS_SUBSETS: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
STS_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness")
_SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
_FETCH_FIX = (f"unset {DATA_ENV} to use the data the repository ships, or point it at a folder laid out as "
              "data/README.md describes (`python -m jtcse_lib download-data --dest DIR` writes one)")
_REPLACE_FIX = "fix or replace the file with the SentEval original"
# tarfile's "data" filter refuses absolute paths, '..' members and links out of the tree
_SAFE_TAR = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


@dataclass(frozen=True)
class PairSet:
    """Sentence pairs with gold similarity scores: sent1[i], sent2[i], gold[i]."""

    name: str
    sent1: list[str]
    sent2: list[str]
    gold: np.ndarray  # (n,) float64

    def __len__(self) -> int:
        return len(self.gold)

    def head(self, n: int | None) -> "PairSet":
        """The first `n` pairs (all when n is None): the smoke profile scores a prefix of each set."""
        if n is None or n >= len(self):
            return self
        return PairSet(self.name, self.sent1[:n], self.sent2[:n], self.gold[:n])


# ---------------------------------------------------------------- content digests and cache debris

_DIGESTS: dict[tuple, str] = {}


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), memoised per process on (path, size, mtime): caches and run keys use it, so
    what counts is the data, not where it lies, and a file edited in place gets a new digest."""
    path = Path(path).resolve()
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _DIGESTS[key] = h.hexdigest()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})", _FETCH_FIX) from None
    return _DIGESTS[key]


DEBRIS_AGE_S = 600  # a temporary that nothing has touched for 10 minutes belongs to a dead writer
# What a killed writer leaves in a cache folder: files.write_folder's `X.tmp` / `X.old` folders, files.write_file's
# `.X.tmp-PID.npz` files, and the `.unpack-*` / `.X.bad-*` folders of earlier versions of this module.
_DEBRIS = re.compile(r"^(\.unpack-.*|\..+\.bad-.*|.+\.(tmp|old)|\..+\.tmp-\d+(\..*)?)$")


def _last_touched(path: Path) -> float:
    """The newest modification time of `path` and everything under it (a writer at work keeps touching its files)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for p in path.rglob("*"):
            try:
                newest = max(newest, p.lstat().st_mtime)
            except FileNotFoundError:  # removed while we looked: its owner is alive
                return time.time()
    return newest


def sweep_debris(folder: Path, age_s: float = DEBRIS_AGE_S) -> list[Path]:
    """Remove (and return) the temporaries (`_DEBRIS`) that killed writers left in the cache folder `folder`, only
    those nothing has modified for `age_s` seconds. Callers hold the folder's lock, which every writer there holds
    for the life of its temporary; the age guards a writer the lock cannot see (another machine on a file system
    whose locks are local): an unpack, a tokenisation and an atomic write touch their files continuously."""
    gone = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return gone
    for path in entries:
        if not _DEBRIS.match(path.name):
            continue
        try:
            if time.time() - _last_touched(path) < age_s:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            gone.append(path)
        except OSError:  # vanished, or not ours to remove: leave it
            continue
    return gone


# ---------------------------------------------------------------- the shipped data

def _manifest(folder: Path = SHIPPED_DIR) -> dict[str, str]:
    """`MANIFEST.sha256` as {relative path: sha256}."""
    path = folder / MANIFEST_NAME
    try:
        lines = path.read_text(encoding="utf8").splitlines()
        entries = dict(reversed(line.split(None, 1)) for line in lines if line.strip())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"the data manifest {path} is missing or unreadable ({e})",
                        f"restore data/ from git (git checkout -- data), or set {DATA_ENV}") from None
    return {name.strip(): digest for name, digest in entries.items()}


def _mismatches(folder: Path, manifest: dict[str, str]) -> list[str]:
    """The files of the manifest that `folder` lacks or holds with another SHA-256."""
    return sorted(name for name, digest in manifest.items()
                  if not (folder / name).is_file() or content_digest(folder / name) != digest)


_VERIFIED: set[Path] = set()


def shipped_data_dir(folder: Path = SHIPPED_DIR) -> Path:
    """The shipped data, unpacked into `cache_root()/data/<manifest digest>/` on first use, never read unverified.

    One process unpacks (under the folder's lock; the others wait, then verify): the archive is extracted into a
    temporary folder, every file is checked against the manifest, and only then is it renamed into place
    (files.write_folder). A folder already there is re-verified once per process and, if a file is missing or
    altered (a partial or corrupted unpack), replaced by a fresh unpack. Killed unpacks' temporaries are removed."""
    manifest = _manifest(folder)
    digest = hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()[:12]
    root = cache_root() / "data"
    target = root / digest
    if target in _VERIFIED:
        return target
    archive = folder / ARCHIVE_NAME
    if not archive.is_file():
        raise DataError(f"the shipped data archive {archive} is missing",
                        f"restore it from git (git checkout -- data), or set {DATA_ENV} to a data folder")
    with ExitStack() as held:
        try:
            root.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_lock(root / ".lock", "the data cache", wait=True))
        except (OSError, FileProblem) as e:
            cause = e.strerror if isinstance(e, OSError) else e.problem
            raise DataError(f"cannot unpack the shipped data into {root} ({cause or e})",
                            f"free disk space or make it writable, or set {CACHE_ENV} to a writable folder") from None
        sweep_debris(root)
        if not (target.is_dir() and not _mismatches(target, manifest)):
            _unpack(archive, manifest, target)
    _VERIFIED.add(target)
    return target


def _unpack(archive: Path, manifest: dict[str, str], target: Path) -> None:
    """Extract and verify into a temporary folder that replaces `target` only when complete: a damaged archive, a
    full disk or a kill never leaves a folder that could be read as the data."""
    def fill(tmp: Path) -> None:
        try:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(tmp, **_SAFE_TAR)
        except (tarfile.TarError, EOFError, ValueError) as e:  # lzma errors are ValueError/EOFError subclasses
            raise DataError(f"the shipped data archive {archive} is damaged ({e})",
                            "restore it from git (git checkout -- data)") from None
        bad = _mismatches(tmp, manifest)
        if bad:
            raise DataError(f"the shipped data archive {archive} does not match {MANIFEST_NAME} "
                            f"({len(bad)} file(s), e.g. {bad[0]})", "restore data/ from git (git checkout -- data)")

    write_folder(target, fill, "shipped data", fix=f"or set {CACHE_ENV} to a folder on a disk with space")


# ---------------------------------------------------------------- data folder

def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the explicit argument, else $JTCSE_DATA_DIR, else the shipped data. Must hold senteval/."""
    if data_dir is None and not os.environ.get(DATA_ENV):
        return shipped_data_dir()
    if data_dir is not None:
        source, path = "the data_dir argument", Path(data_dir)
    else:
        source, path = f"${DATA_ENV}", Path(os.environ[DATA_ENV])
    path = path.expanduser().resolve()
    fix = (f"check the path: a data folder holds senteval/ and wiki/ as data/README.md describes (unset {DATA_ENV} "
           "and pass no data folder to use the data the repository ships)")
    if not path.is_dir():
        kind = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"data folder {path} (from {source}) {kind}", fix)
    if not (path / "senteval").is_dir():
        raise DataError(f"data folder {path} (from {source}) has no senteval/ sub-folder", fix)
    return path


def senteval_text(s: str) -> str:
    """SentEval tokenises by whitespace and the SimCSE batcher joins the tokens with one space."""
    return " ".join(s.split())


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"data file {path} is missing", _FETCH_FIX)
    return read_text(path, "data file", "replace it with the SentEval original", DataError).splitlines()


def _columns(line: str, n: int, path: Path, lineno: int) -> list[str]:
    cols = line.split("\t")
    if len(cols) < n:
        raise DataError(f"{path}, line {lineno}: expected at least {n} tab-separated columns, found {len(cols)}",
                        _REPLACE_FIX)
    return cols


def _score(text: str, path: Path, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {lineno}: score {text!r} is not a number", _REPLACE_FIX) from None
    if not np.isfinite(value):
        raise DataError(f"{path}, line {lineno}: score {text!r} is not finite", _REPLACE_FIX)
    return value


def _pairs(name: str, rows: list[tuple[str, str, float]], path: Path) -> PairSet:
    """(sentence 1, sentence 2, gold) rows as a PairSet, the sentences normalised as SentEval does."""
    if not rows:
        raise DataError(f"{path} holds no scored pair (empty, or every gold score blank)",
                        "replace it with the SentEval original")
    return PairSet(name, [senteval_text(r[0]) for r in rows], [senteval_text(r[1]) for r in rows],
                   np.asarray([r[2] for r in rows], dtype=np.float64))


# ---------------------------------------------------------------- the seven STS tasks

def load_sts_subset(year: str, subset: str, data_dir=None) -> PairSet:
    """One STS12-16 sub-set: `STS.input.<subset>.txt` (s1 TAB s2) with `STS.gs.<subset>.txt` (blank = no gold)."""
    folder = resolve_data_dir(data_dir) / "senteval" / "STS" / f"{year}-en-test"
    inp, gs = folder / f"STS.input.{subset}.txt", folder / f"STS.gs.{subset}.txt"
    inputs, golds = _read_lines(inp), _read_lines(gs)
    if len(inputs) != len(golds):
        raise DataError(f"{inp} has {len(inputs)} lines but {gs} has {len(golds)}",
                        "the two files must be line-aligned: replace them with the SentEval originals")
    rows = [(*_columns(pair, 2, inp, lineno)[:2], _score(score.strip(), gs, lineno))
            for lineno, (pair, score) in enumerate(zip(inputs, golds), start=1)
            if score.strip()]  # SentEval: a pair without a gold score is not scored
    return _pairs(f"{year}.{subset}", rows, gs)


def load_sts_year(year: str, data_dir=None) -> dict[str, PairSet]:
    if year not in STS_SUBSETS:
        raise DataError(f"unknown STS year {year!r}", f"use one of {', '.join(STS_SUBSETS)}")
    return {sub: load_sts_subset(year, sub, data_dir) for sub in STS_SUBSETS[year]}


def stsb_path(split: str = "test", data_dir=None) -> Path:
    if split not in ("train", "dev", "test"):
        raise DataError(f"unknown STS-B split {split!r}", "use train, dev or test")
    return resolve_data_dir(data_dir) / "senteval" / "STS" / "STSBenchmark" / f"sts-{split}.csv"


def load_stsb(split: str = "test", data_dir=None) -> PairSet:
    """STS Benchmark split (train/dev/test): tab-separated, score in column 5, sentences in 6 and 7."""
    path = stsb_path(split, data_dir)
    rows = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            cols = _columns(line, 7, path, lineno)
            rows.append((cols[5], cols[6], _score(cols[4], path, lineno)))
    return _pairs(f"STSBenchmark.{split}", rows, path)


def load_sick(split: str = "test", data_dir=None) -> PairSet:
    """SICK-R split: header line, then pair_ID, sentence_A, sentence_B, relatedness_score, ... (test: 4927)."""
    if split not in _SICK_FILES:
        raise DataError(f"unknown SICK split {split!r}", "use train, dev or test")
    path = resolve_data_dir(data_dir) / "senteval" / "SICK" / _SICK_FILES[split]
    lines = _read_lines(path)
    if not lines or not lines[0].startswith("pair_ID"):
        raise DataError(f"{path}, line 1: expected the header 'pair_ID<TAB>sentence_A<TAB>...'",
                        "replace the file with the SentEval original")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if line.strip():
            cols = _columns(line, 4, path, lineno)
            rows.append((cols[1], cols[2], _score(cols[3], path, lineno)))
    return _pairs(f"SICKRelatedness.{split}", rows, path)


def sts_test_digest(data_dir=None) -> str:
    """One digest of every file under senteval/STS and senteval/SICK: cached test scores are valid only for it."""
    root = resolve_data_dir(data_dir) / "senteval"
    files = sorted(p for folder in ("STS", "SICK") for p in (root / folder).rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(root).as_posix()} {content_digest(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def load_task(task: str, data_dir=None) -> dict[str, PairSet]:
    """A task of the seven as {sub-set name: pairs}; STS-B and SICK-R have a single 'test' sub-set."""
    if task in STS_SUBSETS:
        return load_sts_year(task, data_dir)
    if task == "STSBenchmark":
        return {"test": load_stsb("test", data_dir)}
    if task == "SICKRelatedness":
        return {"test": load_sick("test", data_dir)}
    raise DataError(f"unknown task {task!r}", f"use one of {', '.join(STS_TASKS)}")


# ---------------------------------------------------------------- unlabelled corpus

def corpus_path(corpus: str, data_dir=None) -> Path:
    """A corpus name (`wiki1m_subset`, `wiki1m`) inside the data folder, or a path to a text file."""
    if corpus in CORPORA:
        path = resolve_data_dir(data_dir) / CORPORA[corpus]
        fix = (_FETCH_FIX if corpus != "wiki1m" else
               "the full corpus is not shipped: `python -m jtcse_lib download-data --dest DIR`, then set "
               f"{DATA_ENV}=DIR")
    else:
        path = Path(corpus).expanduser()
        fix = f"use one of {', '.join(CORPORA)} or the path of a UTF-8 text file with one sentence per line"
        if not path.suffix and not path.exists():
            raise DataError(f"unknown corpus {corpus!r}", fix)
    if not path.exists():
        raise DataError(f"corpus file {path} does not exist", fix)
    if not path.is_file():
        raise DataError(f"corpus path {path} exists but is not a file", fix)
    return path.resolve()


def corpus_files(corpus: str, data_dir=None) -> list[Path]:
    """The files a corpus is read from: its text file, and SICK's three files for a `<corpus>+sick` name."""
    base, plus = corpus.removesuffix(SICK_SUFFIX), corpus.endswith(SICK_SUFFIX)
    sick = [resolve_data_dir(data_dir) / "senteval" / "SICK" / _SICK_FILES[s] for s in _SICK_FILES] if plus else []
    return [corpus_path(base, data_dir), *sick]


def corpus_digest(corpus: str, data_dir=None) -> str:
    """One digest of the content of every file the corpus is read from (what caches and run keys use)."""
    return hashlib.sha256(" ".join(content_digest(f) for f in corpus_files(corpus, data_dir)).encode()).hexdigest()


def _sick_sentences(data_dir) -> list[str]:
    """Every distinct sentence of SICK's three splits once, in order (sentence A then B of each pair): unlabelled."""
    pairs = [load_sick(split, data_dir) for split in _SICK_FILES]
    return list(dict.fromkeys(s for p in pairs for a, b in zip(p.sent1, p.sent2) for s in (a, b)))


def read_corpus(corpus: str, data_dir=None, limit: int | None = None) -> list[str]:
    """The corpus's non-blank lines (`str.splitlines`, as the `text` loader of `datasets` 1.x that SimCSE used
    splits them; since huggingface/datasets#3910 it splits on newlines only), the first `limit` of them; a missing,
    binary, non-UTF-8 or blank file is a DataError naming it.

    `<corpus>+sick` appends the unlabelled sentences of SICK (`_sick_sentences`), as the official stage-2 corpus
    does. TRANSDUCTIVE: SICK-R's test split is one of the seven evaluation sets; only its sentences are used, never
    its scores."""
    path, *sick = corpus_files(corpus, data_dir)
    text = read_text(path, "corpus file", "use a UTF-8 text file with one sentence per line", DataError)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"corpus {path} has no non-blank line", "use a text file with one sentence per line")
    if sick:
        lines += _sick_sentences(data_dir)
    return lines[:limit] if limit is not None else lines


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids of a corpus, flat: sentence i is `ids[offsets[i]:offsets[i + 1]]` (truncated to max_length);
    `n_untruncated[i]` is its length before truncation (special tokens included)."""

    ids: np.ndarray  # (total tokens,) int32
    offsets: np.ndarray  # (n + 1,) int64
    n_untruncated: np.ndarray  # (n,) int32

    def __len__(self) -> int:
        return len(self.n_untruncated)

    def sentence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


def tokenizer_digest(tokenizer) -> str:
    """A digest of what the tokenizer does (its full definition for a fast tokenizer), for cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # its JSON, less the truncation/padding state that each call sets
        spec = json.dumps({k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")},
                          sort_keys=True)
    else:
        spec = json.dumps(sorted(tokenizer.get_vocab().items()))
    spec += f"{type(tokenizer).__name__}{tokenizer.all_special_ids}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _encode(tokenizer, batch: list[str], max_length: int) -> tuple[list[list[int]], list[int]]:
    """(ids truncated to `max_length`, lengths before truncation) of a batch of sentences, special tokens included:
    the one definition both engines of `tokenized_corpus` call, so that their ids agree."""
    full = [len(t) for t in tokenizer(batch, add_special_tokens=True, truncation=False)["input_ids"]]
    return tokenizer(batch, truncation=True, max_length=max_length)["input_ids"], full


ENGINES = ("auto", "python", "datasets")


def tokenized_corpus(corpus: str, tokenizer, max_length: int, data_dir=None, limit: int | None = None,
                     progress: bool = True, engine: str = "auto") -> TokenizedCorpus:
    """The corpus tokenised once (truncated to `max_length`) and cached in `cache_root()/tokenized/`, keyed on the
    corpus's content, the limit, the tokenizer's definition and max_length: an edited corpus is re-tokenised,
    a moved one is not. Padding is left to the collator (dynamic, per batch).

    Two engines give the same ids (one `_encode`). `python`: in this process, cached as one `.npz`; the shipped
    subset and the smoke corpora take it. `datasets` (the full Wiki1M, `DATASETS_CORPORA`): memory-mapped Arrow
    and `Dataset.map` on every core of the machine, cached as a folder of Arrow files; under torch.distributed
    rank 0 tokenises while the other ranks wait. `auto` picks by corpus name."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown tokenisation engine {engine!r}", f"use one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "datasets" if corpus.removesuffix(SICK_SUFFIX) in DATASETS_CORPORA else "python"
    key = hashlib.sha256(json.dumps([corpus_digest(corpus, data_dir), limit, tokenizer_digest(tokenizer),
                                     max_length]).encode()).hexdigest()[:16]
    if engine == "datasets":
        return _tokenized_with_datasets(corpus, tokenizer, max_length, data_dir, limit, key, progress)
    return _tokenized_in_process(corpus, tokenizer, max_length, data_dir, limit, key, progress)


def _tokenized_in_process(corpus, tokenizer, max_length, data_dir, limit, key, progress) -> TokenizedCorpus:
    from .progress import progress_bar

    cache = cache_root() / "tokenized" / f"{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as f:
                return TokenizedCorpus(f["ids"], f["offsets"], f["n_untruncated"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: rebuilt, never trusted
            pass
    sentences = read_corpus(corpus, data_dir, limit)
    ids, full, step = [], [], 1000
    for start in progress_bar(range(0, len(sentences), step), desc="tokenising corpus", disable=not progress,
                              total=-(-len(sentences) // step)):
        enc, untruncated = _encode(tokenizer, sentences[start:start + step], max_length)
        full += untruncated
        ids += [np.asarray(t, dtype=np.int32) for t in enc]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in ids])]).astype(np.int64)
    result = TokenizedCorpus(np.concatenate(ids), offsets, np.asarray(full, dtype=np.int32))
    sweep_debris(cache.parent)  # what killed writes left (no lock here: the age rule alone)
    write_npz(cache, {"ids": result.ids, "offsets": result.offsets, "n_untruncated": result.n_untruncated})
    return result


# ---------------------------------------------------------------- the datasets engine (the full corpus)

ROWS_PER_WORKER = 20_000  # below this a worker process costs more (start, tokenizer unpickled) than it saves


def _cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a Slurm or taskset share), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_text_file(path: Path) -> None:
    """What `read_text` refuses (binary, not UTF-8), checked in blocks: the full corpus is never held in memory."""
    fix = "use a UTF-8 text file with one sentence per line"
    decoder, offset = codecs.getincrementaldecoder("utf8")(), 0
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                if b"\x00" in block:
                    raise DataError(f"corpus file {path} is binary, not text", fix)
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as e:
                    raise DataError(f"corpus file {path} is not UTF-8 text (byte {offset + e.start})", fix) from None
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"corpus file {path} is not UTF-8 text (it ends inside a character)", fix) from None
    except OSError as e:
        raise DataError(f"cannot read corpus file {path} ({e.strerror or e})", fix) from None


def _nonblank_lines(batch: dict) -> dict:
    """`datasets`' text loader splits on newlines only; `read_corpus` splits with `str.splitlines` (also on \\x0c,
    \\x85, \\u2028, ...) and drops blank lines: the same here, so that both engines see the same sentences."""
    return {"text": [line for row in batch["text"] for line in row.splitlines() if line.strip()]}


def _tokenise_rows(batch: dict, tokenizer, max_length: int) -> dict:
    ids, full = _encode(tokenizer, batch["text"], max_length)
    return {"input_ids": ids, "n_untruncated": full}


def _build_arrow_tokens(corpus, tokenizer, max_length, data_dir, limit, key, target: Path, progress) -> None:
    """Tokenise through `datasets` into `target`, a folder of Arrow files (`tokens*.arrow`, one per worker) and
    `meta.json` (rows and tokens, to detect a truncated file), written whole or not at all (files.write_folder)."""
    import datasets

    path, *sick = corpus_files(corpus, data_dir)
    _check_text_file(path)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "n_untruncated": datasets.Value("int32")})

    def fill(tmp: Path) -> None:
        # the text as memory-mapped Arrow under tmp (datasets' own cache is keyed on path and mtime; ours on content)
        text = datasets.Dataset.from_text(str(path), cache_dir=str(tmp / "text"), keep_linebreaks=False)
        lines = text.map(_nonblank_lines, batched=True, remove_columns=["text"], new_fingerprint=f"{key}-lines",
                         cache_file_name=str(tmp / "text" / "lines.arrow"), desc="reading corpus")
        if sick:  # as read_corpus: each distinct SICK sentence once, after the corpus
            extra = datasets.Dataset.from_dict({"text": _sick_sentences(data_dir)})
            lines = datasets.concatenate_datasets([lines, extra])
        if limit is not None and limit < len(lines):
            lines = lines.select(range(limit))
        if len(lines) == 0:
            raise DataError(f"corpus {path} has no non-blank line", "use a text file with one sentence per line")
        workers = max(1, min(_cores(), len(lines) // ROWS_PER_WORKER))
        # new_fingerprint: the content key, so datasets neither hashes the tokenizer nor keys on where files lie
        tokens = lines.map(_tokenise_rows, batched=True, batch_size=1000, remove_columns=["text"], features=features,
                           fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
                           num_proc=workers if workers > 1 else None, new_fingerprint=key,
                           cache_file_name=str(tmp / "tokens.arrow"), desc="tokenising corpus")
        meta = {"rows": len(tokens), "tokens": sum(len(c.flatten()) for c in tokens.data.column("input_ids").chunks)}
        del text, lines, tokens
        shutil.rmtree(tmp / "text")  # only the tokens are kept
        write_json(tmp / "meta.json", meta)

    was_disabled = datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.utils.disable_progress_bars()
    try:
        write_folder(target, fill, "token cache", fix=f"or set {CACHE_ENV} to a folder on a disk with space")
    finally:
        if not progress and not was_disabled:
            datasets.utils.enable_progress_bars()


def _read_arrow_tokens(target: Path) -> TokenizedCorpus | None:
    """The cached tokens in `target`, or None when absent or damaged (then rebuilt, never trusted)."""
    if not target.is_dir():
        return None
    import datasets
    import pyarrow as pa

    try:
        meta = read_json(target / "meta.json")
        files = sorted(target.glob("tokens*.arrow"))  # tokens_00000_of_0000N.arrow sort in worker order
        table = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files]).data
        column = pa.concat_arrays(table.column("input_ids").chunks)  # one copy into memory: (n,) lists of int32
        ids = column.flatten().to_numpy()
        offsets = np.asarray(column.offsets, dtype=np.int64)
        n_untruncated = table.column("n_untruncated").to_numpy().astype(np.int32)
    except (OSError, ValueError, KeyError, TypeError, IndexError, pa.ArrowException, JtcseError):
        return None
    if len(n_untruncated) != meta.get("rows") or len(ids) != meta.get("tokens") or offsets[-1] != len(ids):
        return None  # a file cut short at a record-batch boundary reads without error: the counts catch it
    return TokenizedCorpus(ids, offsets, n_untruncated)


def _tokenized_with_datasets(corpus, tokenizer, max_length, data_dir, limit, key, progress) -> TokenizedCorpus:
    from . import distributed

    folder = cache_root() / "tokenized"
    target = folder / f"{key}.arrow"

    def build() -> None:
        # one builder per cache folder; a concurrent process waits here, then finds the entry made
        with exclusive_lock(folder / ".lock", "the token cache", wait=True):
            if _read_arrow_tokens(target) is None:
                sweep_debris(folder)  # under the lock every builder holds while its temporary exists
                _build_arrow_tokens(corpus, tokenizer, max_length, data_dir, limit, key, target, progress)

    cached = None
    if distributed.active():  # rank 0 tokenises on every core; the other ranks wait for its verdict
        # every rank takes part whatever its own view of the cache: a rank that returned early on finding the
        # entry (made by rank 0 while it started) would leave rank 0 waiting at the broadcast
        if distributed.is_main():
            try:
                cached = _read_arrow_tokens(target)
                if cached is None:
                    build()
            except Exception as e:
                distributed.broadcast_object(f"{type(e).__name__}: {e}")  # the others stop too, not at a timeout
                raise
        failure = distributed.broadcast_object(None)
        if failure is not None:
            raise DataError(f"rank 0 could not tokenise the corpus ({failure})", "see rank 0's error above")
    if cached is None:
        cached = _read_arrow_tokens(target)  # None also on a node whose cache folder rank 0 does not share
    if cached is None:
        build()
        cached = _read_arrow_tokens(target)
    if cached is None:
        raise FileProblem(f"the token cache {target} was written but cannot be read back",
                          f"remove it and run again, or set {CACHE_ENV} to another folder")
    return cached


# ---------------------------------------------------------------- download (machines with internet)

def _find_senteval_root(tree: Path) -> Path:
    """The folder inside an extracted senteval.tar that holds STS/ and SICK/ (the tar's nesting varies)."""
    for candidate in [tree, *sorted(p for p in tree.rglob("*") if p.is_dir())]:
        if (candidate / "STS" / "STSBenchmark").is_dir() and (candidate / "SICK").is_dir():
            return candidate
    raise DataError(f"the archive extracted to {tree} has no STS/STSBenchmark and SICK folders",
                    "download senteval.tar again; it may be truncated")


def extract_senteval(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract SentEval's `senteval.tar` so that `dest/senteval/STS/...` exists, whole or not at all
    (files.write_folder); returns `dest/senteval`."""
    def fill(tmp: Path) -> None:
        tree = tmp / ".tar"
        try:
            with tarfile.open(tar_path) as tar:
                tar.extractall(tree, **_SAFE_TAR)
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot extract {tar_path}: {e}", "download senteval.tar again") from None
        for child in _find_senteval_root(tree).iterdir():
            child.rename(tmp / child.name)
        shutil.rmtree(tree)

    return write_folder(Path(dest) / "senteval", fill, "SentEval data")


def download_data(dest: str | os.PathLike = "data-full", full_corpus: bool = True) -> Path:
    """Fetch SentEval and Wiki1M from the Hugging Face Hub (`princeton-nlp/datasets-for-simcse`) into `dest`.

    Writes the layout of the shipped data (module docstring) and copies the shipped `wiki/wiki1m_subset.txt`
    beside the full corpus, so every profile runs with `JTCSE_DATA_DIR=dest`.
    """
    from huggingface_hub import hf_hub_download

    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise DataError(f"download destination {dest} is a file", "pass a folder path with --dest")
    subset = shipped_data_dir() / CORPORA["wiki1m_subset"]  # before the network: a broken checkout fails first
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tar = hf_hub_download(HUB_DATASET, "senteval.tar", repo_type="dataset")
        extract_senteval(tar, dest)
        write_file(dest / CORPORA["wiki1m_subset"], lambda tmp: shutil.copyfile(subset, tmp))
        if full_corpus:  # atomic: a kill mid-copy leaves no truncated corpus for JTCSE_DATA_DIR to read
            wiki = hf_hub_download(HUB_DATASET, "wiki1m_for_simcse.txt", repo_type="dataset")
            write_file(dest / CORPORA["wiki1m"], lambda tmp: shutil.copyfile(wiki, tmp))
    except (DataError, FileProblem):
        raise
    except Exception as e:  # network errors come in many types (requests, httpx, OSError)
        raise DataError(f"download from the Hub dataset {HUB_DATASET} failed ({type(e).__name__}: {e})",
                        "check the internet connection, or copy the data folder from a machine that has it") from None
    return dest
