"""Data: where it lives, the SentEval STS/SICK-R loaders, the unlabelled training corpus.

Layout of a data folder (the shipped archive, `$JTCSE_DATA_DIR` and `download-data` all use it)::

    DATA_DIR/senteval/STS/STS12-en-test/STS.input.<subset>.txt  + STS.gs.<subset>.txt
    DATA_DIR/senteval/STS/STSBenchmark/sts-{train,dev,test}.csv
    DATA_DIR/senteval/SICK/SICK_{train,trial,test_annotated}.txt
    DATA_DIR/senteval/{MR,CR,SUBJ,MPQA,SST,TREC,MRPC}/...   (the transfer tasks, read by jtcse_lib.transfer)
    DATA_DIR/wiki/wiki1m_subset.txt   (or wiki1m_for_simcse.txt, the full corpus)

Where it comes from: `$JTCSE_DATA_DIR` when set, else the data the repository ships (`data/jtcse-data.tar.xz`,
see data/README.md), unpacked on first use into the cache folder and verified against `data/MANIFEST.sha256`.

The loaders follow SentEval exactly (the code SimCSE, TNCSE and JTCSE evaluate with): sentences are split
on whitespace and re-joined with single spaces, a blank gold line drops its pair, STS-B takes the score from
column 5 and the sentences from columns 6 and 7, SICK-R skips its header and reads the relatedness score
from column 4. Anything else malformed stops with the file and line number.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import read_text, write_npz

DATA_ENV = "JTCSE_DATA_DIR"
CACHE_ENV = "JTCSE_CACHE_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIR = REPO_ROOT / "data"
ARCHIVE_NAME, MANIFEST_NAME = "jtcse-data.tar.xz", "MANIFEST.sha256"
HUB_DATASET = "princeton-nlp/datasets-for-simcse"
CORPORA = {"wiki1m_subset": "wiki/wiki1m_subset.txt", "wiki1m": "wiki/wiki1m_for_simcse.txt"}
SICK_SUFFIX = "+sick"  # `wiki1m+sick`: the corpus and the unlabelled SICK sentences (official stage 2; transductive)

# SentEval's sub-sets per STS year (STS13 "SMT" has gold scores but no input: SentEval skips it).
STS_SUBSETS: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
STS_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness")
_FETCH_FIX = (f"unset {DATA_ENV} to use the data the repository ships, or point it at a folder laid out as "
              "data/README.md describes (`python -m jtcse_lib download-data --dest DIR` writes one)")


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


# ---------------------------------------------------------------- the cache folder and content digests

def cache_root() -> Path:
    """The one folder for derived data: the unpacked shipped data, tokenised corpora.
    `$JTCSE_CACHE_DIR`, else `.cache/` at the repository root."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache").expanduser().resolve()


_DIGESTS: dict[tuple, str] = {}


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex); memoised per process on (path, size, mtime), so a file edited in
    place gets a new digest. Caches and run keys use it: what counts is the data, not where it lies."""
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


def _matches(folder: Path, manifest: dict[str, str]) -> bool:
    """Every file of the manifest is in `folder` with the listed SHA-256."""
    return all((folder / name).is_file() and content_digest(folder / name) == digest
               for name, digest in manifest.items())


_VERIFIED: set[Path] = set()


def shipped_data_dir(folder: Path = SHIPPED_DIR) -> Path:
    """The shipped data, unpacked into `cache_root()/data/<manifest digest>/` on first use.

    The archive is extracted into a temporary folder, every file is checked against the manifest, and only then
    is the folder renamed into place; a folder already there is re-verified once per process and, if a file is
    missing or altered (a partial or corrupted unpack), moved aside and unpacked again. Never read unverified.
    """
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
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process unpacks; the others wait, then verify
            if target.is_dir() and not _matches(target, manifest):
                aside = root / f".{digest}.bad-{uuid.uuid4().hex[:8]}"
                target.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            if not target.is_dir():
                _unpack(archive, manifest, root, target)
    except OSError as e:
        raise DataError(f"cannot unpack the shipped data into {root} ({e.strerror or e})",
                        f"free disk space or make it writable, or set {CACHE_ENV} to a writable folder") from None
    _VERIFIED.add(target)
    return target


def _unpack(archive: Path, manifest: dict[str, str], root: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        try:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, EOFError, ValueError) as e:  # lzma errors are ValueError/EOFError subclasses
            raise DataError(f"the shipped data archive {archive} is damaged ({e})",
                            "restore it from git (git checkout -- data)") from None
        bad = sorted(name for name, digest in manifest.items()
                     if not (tmp / name).is_file() or content_digest(tmp / name) != digest)
        if bad:
            raise DataError(f"the shipped data archive {archive} does not match {MANIFEST_NAME} "
                            f"({len(bad)} file(s), e.g. {bad[0]})", "restore data/ from git (git checkout -- data)")
        tmp.rename(target)  # atomic: the folder appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"data file {path} is missing", _FETCH_FIX)
    return read_text(path, "data file", "replace it with the SentEval original", DataError).splitlines()


def _pairs(name: str, s1: list[str], s2: list[str], gold: list[float], path: Path) -> PairSet:
    if not gold:
        raise DataError(f"{path} holds no scored pair (empty, or every gold score blank)",
                        "replace it with the SentEval original")
    return PairSet(name, s1, s2, np.asarray(gold, dtype=np.float64))


def _score(text: str, path: Path, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {lineno}: score {text!r} is not a number",
                        "fix or replace the file with the SentEval original") from None
    if not np.isfinite(value):
        raise DataError(f"{path}, line {lineno}: score {text!r} is not finite",
                        "fix or replace the file with the SentEval original")
    return value


def _columns(line: str, n: int, path: Path, lineno: int) -> list[str]:
    cols = line.split("\t")
    if len(cols) < n:
        raise DataError(f"{path}, line {lineno}: expected at least {n} tab-separated columns, found {len(cols)}",
                        "fix or replace the file with the SentEval original")
    return cols


def _senteval_text(s: str) -> str:
    """SentEval tokenises by whitespace and the SimCSE batcher joins tokens with one space."""
    return " ".join(s.split())


# ---------------------------------------------------------------- STS12-16

def load_sts_subset(year: str, subset: str, data_dir=None) -> PairSet:
    """One STS12-16 sub-set: `STS.input.<subset>.txt` (s1 TAB s2) with `STS.gs.<subset>.txt` (blank = no gold)."""
    folder = resolve_data_dir(data_dir) / "senteval" / "STS" / f"{year}-en-test"
    inp, gs = folder / f"STS.input.{subset}.txt", folder / f"STS.gs.{subset}.txt"
    inputs, golds = _read_lines(inp), _read_lines(gs)
    if len(inputs) != len(golds):
        raise DataError(f"{inp} has {len(inputs)} lines but {gs} has {len(golds)}",
                        "the two files must be line-aligned: replace them with the SentEval originals")
    s1, s2, gold = [], [], []
    for lineno, (pair, score) in enumerate(zip(inputs, golds), start=1):
        if score.strip() == "":
            continue  # SentEval: no gold score, the pair is not scored
        a, b = _columns(pair, 2, inp, lineno)[:2]
        s1.append(_senteval_text(a))
        s2.append(_senteval_text(b))
        gold.append(_score(score.strip(), gs, lineno))
    return _pairs(f"{year}.{subset}", s1, s2, gold, gs)


def load_sts_year(year: str, data_dir=None) -> dict[str, PairSet]:
    if year not in STS_SUBSETS:
        raise DataError(f"unknown STS year {year!r}", f"use one of {', '.join(STS_SUBSETS)}")
    return {sub: load_sts_subset(year, sub, data_dir) for sub in STS_SUBSETS[year]}


# ---------------------------------------------------------------- STS-B and SICK-R

def stsb_path(split: str = "test", data_dir=None) -> Path:
    if split not in ("train", "dev", "test"):
        raise DataError(f"unknown STS-B split {split!r}", "use train, dev or test")
    return resolve_data_dir(data_dir) / "senteval" / "STS" / "STSBenchmark" / f"sts-{split}.csv"


def load_stsb(split: str = "test", data_dir=None) -> PairSet:
    """STS Benchmark split (train/dev/test): tab-separated, score in column 5, sentences in 6 and 7."""
    path = stsb_path(split, data_dir)
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        cols = _columns(line, 7, path, lineno)
        gold.append(_score(cols[4], path, lineno))
        s1.append(_senteval_text(cols[5]))
        s2.append(_senteval_text(cols[6]))
    return _pairs(f"STSBenchmark.{split}", s1, s2, gold, path)


_SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}


def load_sick(split: str = "test", data_dir=None) -> PairSet:
    """SICK-R split: header line, then pair_ID, sentence_A, sentence_B, relatedness_score, ... (test: 4927)."""
    if split not in _SICK_FILES:
        raise DataError(f"unknown SICK split {split!r}", "use train, dev or test")
    path = resolve_data_dir(data_dir) / "senteval" / "SICK" / _SICK_FILES[split]
    lines = _read_lines(path)
    if not lines or not lines[0].startswith("pair_ID"):
        raise DataError(f"{path}, line 1: expected the header 'pair_ID<TAB>sentence_A<TAB>...'",
                        "replace the file with the SentEval original")
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = _columns(line, 4, path, lineno)
        s1.append(_senteval_text(cols[1]))
        s2.append(_senteval_text(cols[2]))
        gold.append(_score(cols[3], path, lineno))
    return _pairs(f"SICKRelatedness.{split}", s1, s2, gold, path)


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


def read_corpus(corpus: str, data_dir=None, limit: int | None = None) -> list[str]:
    """The corpus's non-blank lines (`str.splitlines`, as the `text` loader of `datasets` splits them), the first
    `limit` of them; a missing, binary, non-UTF-8 or blank file is a DataError naming it.

    `<corpus>+sick` appends the unlabelled sentences of SICK (train, trial and test; sentence A then B of each pair,
    each distinct sentence once), as the official stage-2 corpus does. TRANSDUCTIVE: SICK-R's test split is one of
    the seven evaluation sets; only its sentences are used, never its scores."""
    path, *sick = corpus_files(corpus, data_dir)
    text = read_text(path, "corpus file", "use a UTF-8 text file with one sentence per line", DataError)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"corpus {path} has no non-blank line", "use a text file with one sentence per line")
    if sick:
        pairs = [load_sick(split, data_dir) for split in _SICK_FILES]
        lines += list(dict.fromkeys(s for p in pairs for a, b in zip(p.sent1, p.sent2) for s in (a, b)))
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


def tokenized_corpus(corpus: str, tokenizer, max_length: int, data_dir=None, limit: int | None = None,
                     progress: bool = True) -> TokenizedCorpus:
    """The corpus tokenised once (truncated to `max_length`) and cached in `cache_root()/tokenized/`, keyed on the
    corpus's content, the limit, the tokenizer's definition and max_length: an edited corpus is re-tokenised,
    a moved one is not. Padding is left to the collator (dynamic, per batch)."""
    from .progress import progress_bar

    key = hashlib.sha256(json.dumps([corpus_digest(corpus, data_dir), limit, tokenizer_digest(tokenizer),
                                     max_length]).encode())
    cache = cache_root() / "tokenized" / f"{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as f:
                return TokenizedCorpus(f["ids"], f["offsets"], f["n_untruncated"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: rebuilt, never trusted
            pass
    sentences = read_corpus(corpus, data_dir, limit)
    ids, lengths, full = [], [], []
    step = 1000
    for start in progress_bar(range(0, len(sentences), step), desc="tokenising corpus", disable=not progress,
                              total=-(-len(sentences) // step)):
        batch = sentences[start:start + step]
        full += [len(t) for t in tokenizer(batch, add_special_tokens=True, truncation=False)["input_ids"]]
        enc = tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]
        ids += [np.asarray(t, dtype=np.int32) for t in enc]
        lengths += [len(t) for t in enc]
    result = TokenizedCorpus(np.concatenate(ids), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                             np.asarray(full, dtype=np.int32))
    write_npz(cache, {"ids": result.ids, "offsets": result.offsets, "n_untruncated": result.n_untruncated})
    return result


# ---------------------------------------------------------------- download (machines with internet)

def _find_senteval_root(tree: Path) -> Path:
    """The folder inside an extracted senteval.tar that holds STS/ and SICK/ (the tar's nesting varies)."""
    for candidate in [tree, *sorted(p for p in tree.rglob("*") if p.is_dir())]:
        if (candidate / "STS" / "STSBenchmark").is_dir() and (candidate / "SICK").is_dir():
            return candidate
    raise DataError(f"the archive extracted to {tree} has no STS/STSBenchmark and SICK folders",
                    "download senteval.tar again; it may be truncated")


def extract_senteval(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract SentEval's `senteval.tar` so that `dest/senteval/STS/...` exists; returns `dest/senteval`."""
    dest = Path(dest)
    target = dest / "senteval"
    with tempfile.TemporaryDirectory(dir=dest if dest.exists() else None) as tmp:
        try:
            with tarfile.open(tar_path) as tar:
                # the "data" filter refuses absolute paths, '..' members and links out of the tree
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot extract {tar_path}: {e}", "download senteval.tar again") from None
        root = _find_senteval_root(Path(tmp))
        dest.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(root), str(target))
    return target


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
        (dest / "wiki").mkdir(exist_ok=True)
        shutil.copyfile(subset, dest / CORPORA["wiki1m_subset"])
        if full_corpus:
            wiki = hf_hub_download(HUB_DATASET, "wiki1m_for_simcse.txt", repo_type="dataset")
            shutil.copyfile(wiki, dest / CORPORA["wiki1m"])
    except DataError:
        raise
    except Exception as e:  # network errors come in many types (requests, httpx, OSError)
        raise DataError(f"download from the Hub dataset {HUB_DATASET} failed ({type(e).__name__}: {e})",
                        "check the internet connection, or copy the data folder from a machine that has it") from None
    return dest
