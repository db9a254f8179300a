import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest

from jtcse_lib import data
from jtcse_lib.errors import ConfigError, DataError, JtcseError


def test_resolution_order(tiny_data, tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / "senteval").mkdir(parents=True)
    monkeypatch.setenv(data.DATA_ENV, str(other))
    assert data.resolve_data_dir(tiny_data) == tiny_data.resolve()  # explicit argument wins
    assert data.resolve_data_dir() == other.resolve()  # then the environment variable
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "senteval").mkdir(parents=True, exist_ok=True)  # ./data does not count: no cwd magic
    assert data.resolve_data_dir() == data.shipped_data_dir()  # then the shipped data


# ---------------------------------------------------------------- the shipped data

@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache folder of this test's own, so the shipped data is unpacked afresh."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_VERIFIED", set())
    return tmp_path / "cache"


def test_shipped_data_unpacks_verified_into_the_cache(private_cache, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    folder = data.resolve_data_dir()
    assert folder.parent == private_cache / "data"
    manifest = data._manifest()
    assert len(manifest) > 90 and all(data.content_digest(folder / n) == d for n, d in manifest.items())
    assert len(data.load_stsb("test")) == 1379
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".unpack-")]  # no temporary left behind


@pytest.mark.parametrize("damage", ["edit", "delete"])
def test_a_corrupted_or_partial_unpack_is_detected_and_redone(private_cache, damage):
    folder = data.shipped_data_dir()
    victim = folder / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv"
    if damage == "edit":
        victim.write_text("tampered\n")
    else:
        victim.unlink()  # as if a kill interrupted an unpack that was then renamed by hand
    data._VERIFIED.clear()  # a new process
    assert data.shipped_data_dir() == folder
    assert data.content_digest(victim) == data._manifest()["senteval/STS/STSBenchmark/sts-dev.csv"]


def test_a_damaged_archive_is_refused_with_the_fix(private_cache, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / data.MANIFEST_NAME).write_bytes((data.SHIPPED_DIR / data.MANIFEST_NAME).read_bytes())
    (shipped / data.ARCHIVE_NAME).write_bytes((data.SHIPPED_DIR / data.ARCHIVE_NAME).read_bytes()[:100_000])
    with pytest.raises(DataError, match="damaged.*git checkout -- data"):
        data.shipped_data_dir(shipped)
    assert not list((private_cache / "data").glob("[0-9a-f]*"))  # nothing half-unpacked is left to be read


def test_an_archive_that_does_not_match_its_manifest_is_refused(private_cache, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    lines = (data.SHIPPED_DIR / data.MANIFEST_NAME).read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    (shipped / data.MANIFEST_NAME).write_text("\n".join(lines) + "\n")
    (shipped / data.ARCHIVE_NAME).symlink_to(data.SHIPPED_DIR / data.ARCHIVE_NAME)
    with pytest.raises(DataError, match="does not match MANIFEST.sha256"):
        data.shipped_data_dir(shipped)


def test_content_digest_follows_the_bytes_not_the_path(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one sentence\n")
    b.write_text("one sentence\n")
    assert data.content_digest(a) == data.content_digest(b)
    a.write_text("another sentence, edited in place\n")
    assert data.content_digest(a) != data.content_digest(b)


def test_missing_data_folder_names_it_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        data.resolve_data_dir()
    msg = str(e.value)
    assert "nowhere" in msg and "JTCSE_DATA_DIR" in msg and "check the path" in msg and "download-data" not in msg


def test_folder_without_senteval(tmp_path):
    with pytest.raises(DataError, match="no senteval/ sub-folder"):
        data.resolve_data_dir(tmp_path)


def test_blank_gold_lines_are_dropped(tiny_data):
    pairs = data.load_sts_subset("STS12", "MSRpar", tiny_data)
    assert len(pairs) == 3 and "first 1" not in " ".join(pairs.sent1)
    assert pairs.gold.tolist() == [0.0, 2.6, 3.9]


def test_whitespace_is_normalised_like_senteval(tiny_data):
    pairs = data.load_stsb("test", tiny_data)
    assert pairs.sent1[0] == "test a man 0 ."  # "a  man" -> "a man"
    assert pairs.gold[:3].tolist() == [0.0, 1.0, 2.0]


def test_sick_skips_header_and_reads_column_4(tiny_data):
    pairs = data.load_sick("test", tiny_data)
    assert len(pairs) == 7 and pairs.sent1[0] == "A kid 0 plays"
    assert pairs.gold[:4].tolist() == [1.5, 2.5, 3.5, 4.5]


def test_sick_without_header_is_an_error(tiny_data):
    path = tiny_data / "senteval" / "SICK" / "SICK_test_annotated.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]))
    with pytest.raises(DataError, match="line 1: expected the header"):
        data.load_sick("test", tiny_data)


def test_malformed_sts_line_reports_file_and_line(tiny_data):
    path = tiny_data / "senteval" / "STS" / "STS13-en-test" / "STS.input.OnWN.txt"
    lines = path.read_text().splitlines()
    lines[2] = "no tab on this line"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        data.load_sts_year("STS13", tiny_data)
    assert "STS.input.OnWN.txt, line 3" in str(e.value) and "2 tab-separated columns" in str(e.value)


def test_non_numeric_score_reports_file_and_line(tiny_data):
    path = tiny_data / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv"
    lines = path.read_text().splitlines()
    cols = lines[3].split("\t")
    cols[4] = "high"
    lines[3] = "\t".join(cols)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"sts-dev.csv, line 4: score 'high' is not a number"):
        data.load_stsb("dev", tiny_data)


def test_missing_task_file_is_named(tiny_data):
    (tiny_data / "senteval" / "STS" / "STS15-en-test" / "STS.gs.belief.txt").unlink()
    with pytest.raises(DataError, match=r"STS.gs.belief.txt is missing"):
        data.load_task("STS15", tiny_data)


def test_misaligned_input_and_gold(tiny_data):
    path = tiny_data / "senteval" / "STS" / "STS16-en-test" / "STS.gs.headlines.txt"
    path.write_text(path.read_text() + "1.0\n")
    with pytest.raises(DataError, match="line-aligned"):
        data.load_sts_year("STS16", tiny_data)


def test_unknown_task():
    with pytest.raises(DataError, match="unknown task 'STS17'"):
        data.load_task("STS17")


def test_corpus_skips_blank_lines(tiny_data):
    assert data.read_corpus("wiki1m_subset", tiny_data) == ["First sentence.", "Second one here.", "Third."]
    assert data.read_corpus("wiki1m_subset", tiny_data, limit=2) == ["First sentence.", "Second one here."]


@pytest.mark.parametrize("content, problem", [
    (b"\n  \n", "no non-blank line"), (b"", "no non-blank line"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is binary, not text"), (b"caf\xe9 au lait\n", "is not UTF-8 text"),
])
def test_a_corpus_without_usable_text_is_a_one_line_error(tmp_path, content, problem):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem):
        data.read_corpus(str(path))


def test_unknown_corpus_name_and_a_folder_as_corpus(tiny_data, tmp_path):
    with pytest.raises(DataError, match="unknown corpus 'wiki2m'"):
        data.corpus_path("wiki2m", tiny_data)
    with pytest.raises(DataError, match="exists but is not a file"):
        data.corpus_path(str(tmp_path), tiny_data)
    with pytest.raises(DataError, match="does not exist. Fix: use one of wiki1m_subset"):  # not download-data
        data.corpus_path(str(tmp_path / "mine.txt"), tiny_data)


@pytest.fixture
def cache_here(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenized"


def test_tokenized_corpus_truncates_counts_and_caches(tiny_data, minilm, cache_here):
    _, tokenizer = minilm
    tok = data.tokenized_corpus("wiki1m_subset", tokenizer, 4, tiny_data, progress=False)
    assert len(list(cache_here.glob("*.npz"))) == 1
    texts = data.read_corpus("wiki1m_subset", tiny_data)
    assert all(len(tok.sentence(i)) <= 4 for i in range(len(tok)))
    assert tok.n_untruncated.tolist() == [len(tokenizer(t)["input_ids"]) for t in texts]  # real lengths
    assert tok.sentence(2).tolist() == tokenizer("Third.")["input_ids"]  # short enough: untouched
    again = data.tokenized_corpus("wiki1m_subset", tokenizer, 4, tiny_data, progress=False)
    assert again.ids.tolist() == tok.ids.tolist() and len(list(cache_here.glob("*.npz"))) == 1  # from the cache


def test_an_edited_corpus_is_tokenised_again_and_a_moved_one_is_not(tiny_data, minilm, cache_here, tmp_path):
    import shutil

    _, tokenizer = minilm
    data.tokenized_corpus("wiki1m_subset", tokenizer, 16, tiny_data, progress=False)
    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    data.tokenized_corpus("wiki1m_subset", tokenizer, 16, moved, progress=False)
    assert len(list(cache_here.glob("*.npz"))) == 1  # same content: the same cache entry
    corpus = moved / "wiki" / "wiki1m_subset.txt"
    corpus.write_text("An edited first sentence.\nSecond one here.\nThird.\n")  # edited in place
    edited = data.tokenized_corpus("wiki1m_subset", tokenizer, 16, moved, progress=False)
    assert edited.sentence(0).tolist() == tokenizer("An edited first sentence.")["input_ids"]
    assert len(list(cache_here.glob("*.npz"))) == 2


def test_a_damaged_token_cache_is_rebuilt(tiny_data, minilm, cache_here):
    _, tokenizer = minilm
    first = data.tokenized_corpus("wiki1m_subset", tokenizer, 16, tiny_data, progress=False)
    entry = next(cache_here.glob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:50])
    again = data.tokenized_corpus("wiki1m_subset", tokenizer, 16, tiny_data, progress=False)
    assert again.ids.tolist() == first.ids.tolist()


# ------------------------------------------------------------------- the datasets engine

# Lines that tell splitters apart: CRLF and lone CR ends, Unicode line separators inside a line (str.splitlines
# breaks there, datasets' text loader does not), blank and whitespace-only lines, a BOM, non-ASCII, long lines
# (truncated at max_length), no newline at the end.
_TRICKY = ("\ufeffA first line with a BOM.\r\nSecond line, CRLF.\r\n\r\n   \t \nThird\u2028after a line separator\n"
           "Fourth\x0cform feed\x85next line\rlone CR\n"
           + "".join(f"Sentence {i} about caf\u00e9s, \u6f22\u5b57 and {' '.join(['words'] * (i % 40))}.\n"
                     for i in range(60))
           + "last line without a newline")  # 69 sentences


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) and x.dtype == y.dtype
               for x, y in ((a.ids, b.ids), (a.offsets, b.offsets), (a.n_untruncated, b.n_untruncated)))


@pytest.fixture
def tricky_corpus(tmp_path):
    path = tmp_path / "tricky.txt"
    path.write_bytes(_TRICKY.encode("utf8"))
    return path


@pytest.mark.parametrize("sick, limit, workers", [(False, None, 1), (True, 70, 1), (True, None, 2)])
def test_the_datasets_engine_gives_the_python_engines_ids(tricky_corpus, tiny_data, minilm, cache_here, monkeypatch,
                                                           sick, limit, workers):
    _, tokenizer = minilm
    if workers > 1:  # shards of a few rows each, tokenised in 2 worker processes and put back in order
        monkeypatch.setattr(data, "ROWS_PER_WORKER", 1)
        monkeypatch.setattr(data, "_cores", lambda: workers)
    corpus = str(tricky_corpus) + ("+sick" if sick else "")
    ours = data.tokenized_corpus(corpus, tokenizer, 12, tiny_data, limit, progress=False, engine="datasets")
    today = data.tokenized_corpus(corpus, tokenizer, 12, tiny_data, limit, progress=False, engine="python")
    assert _same(ours, today)
    lines = data.read_corpus(corpus, tiny_data, limit)
    assert len(ours) == len(lines) and len(lines) == (70 if limit else 69 + (14 if sick else 0))  # 14 SICK
    assert "Third" in lines and "after a line separator" in lines  # split at the separator, as read_corpus does
    assert ours.sentence(5).tolist() == tokenizer(lines[5], truncation=True, max_length=12)["input_ids"]
    entry = cache_here / next(p.name for p in cache_here.glob("*.arrow"))
    assert len(list(entry.glob("tokens*.arrow"))) == workers  # one Arrow file per worker
    assert not (entry / "text").exists()  # the text copy is dropped: only the tokens are cached


def test_the_engine_follows_the_corpus_name(tiny_data, minilm, cache_here):
    _, tokenizer = minilm
    (tiny_data / "wiki" / "wiki1m_for_simcse.txt").write_text("Full one.\nFull two.\n", encoding="utf8")
    data.tokenized_corpus("wiki1m_subset", tokenizer, 16, tiny_data, progress=False)
    assert len(list(cache_here.glob("*.npz"))) == 1 and not list(cache_here.glob("*.arrow"))
    full = data.tokenized_corpus("wiki1m", tokenizer, 16, tiny_data, progress=False)
    plus = data.tokenized_corpus("wiki1m+sick", tokenizer, 16, tiny_data, progress=False)
    assert len(list(cache_here.glob("*.arrow"))) == 2 and len(list(cache_here.glob("*.npz"))) == 1
    assert full.sentence(1).tolist() == tokenizer("Full two.")["input_ids"] and len(plus) == 2 + 14
    with pytest.raises(ConfigError, match="unknown tokenisation engine 'arrow'"):
        data.tokenized_corpus("wiki1m", tokenizer, 16, tiny_data, engine="arrow")


def test_the_datasets_cache_is_read_keyed_on_content_and_rebuilt_when_damaged(tricky_corpus, tmp_path, minilm,
                                                                              cache_here, monkeypatch):
    import json
    import shutil

    _, tokenizer = minilm
    first = data.tokenized_corpus(str(tricky_corpus), tokenizer, 12, progress=False, engine="datasets")
    moved = shutil.copy(tricky_corpus, tmp_path / "moved.txt")
    real_build = data._build_arrow_tokens
    monkeypatch.setattr(data, "_build_arrow_tokens", lambda *a: pytest.fail("tokenised again"))
    assert _same(data.tokenized_corpus(str(moved), tokenizer, 12, progress=False, engine="datasets"), first)
    monkeypatch.setattr(data, "_build_arrow_tokens", real_build)
    (entry,) = cache_here.glob("*.arrow")
    meta = json.loads((entry / "meta.json").read_text())
    for damage in ("count", "truncate", "meta"):
        if damage == "count":  # as a file cut at a record-batch boundary reads: fewer rows, no error
            (entry / "meta.json").write_text(json.dumps({**meta, "rows": meta["rows"] + 1}))
        elif damage == "truncate":
            arrow = next(entry.glob("tokens*.arrow"))
            arrow.write_bytes(arrow.read_bytes()[:300])
        else:
            (entry / "meta.json").unlink()
        assert data._read_arrow_tokens(entry) is None, damage  # never trusted ...
        assert _same(data.tokenized_corpus(str(moved), tokenizer, 12, progress=False, engine="datasets"), first)
        assert data._read_arrow_tokens(entry) is not None  # ... but rebuilt in place
    assert sorted(p.name for p in cache_here.iterdir()) == [".lock", entry.name]  # no temporary left


def test_importing_the_library_data_module_does_not_import_datasets(tmp_path):
    """`datasets` (and torch) are imports of the full-corpus engine only; the light engine does without them."""
    import subprocess
    import sys

    (tmp_path / "c.txt").write_text("one two\nthree\n")
    code = f"""
import sys
from jtcse_lib import data

class Tok:  # the interface tokenized_corpus uses, without transformers
    all_special_ids = [1, 2]
    def get_vocab(self):
        return {{"w": 3}}
    def __call__(self, batch, add_special_tokens=True, truncation=False, max_length=None):
        ids = [[1, *(3 for _ in s.split()), 2] for s in batch]
        return {{"input_ids": [t[:max_length - 1] + [2] if truncation and len(t) > max_length else t for t in ids]}}

tok = data.tokenized_corpus({str(tmp_path / "c.txt")!r}, Tok(), 3, progress=False)
assert tok.sentence(0).tolist() == [1, 3, 2] and tok.n_untruncated.tolist() == [4, 3], tok
heavy = sorted(m for m in ("datasets", "pyarrow", "torch") if m in sys.modules)
assert not heavy, heavy
"""
    env = {**os.environ, data.CACHE_ENV: str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------- torch.distributed: rank 0 tokenises

_RANKS = """
import json, os, sys
import torch.distributed as dist
from jtcse_lib import data
from jtcse_lib.backbones import load_tokenizer

dist.init_process_group("gloo")
rank, out, mode = dist.get_rank(), sys.argv[1], sys.argv[2]
build = data._build_arrow_tokens

def counted(*args):
    open(os.path.join(out, f"built-{rank}"), "w").close()
    if mode == "fail":
        raise RuntimeError("simulated failure")
    build(*args)

data._build_arrow_tokens = counted
try:
    tok = data.tokenized_corpus(sys.argv[3], load_tokenizer("minilm"), 12, progress=False, engine="datasets")
    result = {"ids": tok.ids.tolist(), "n": tok.n_untruncated.tolist()}
except Exception as e:
    result = {"error": f"{type(e).__name__}: {e}"}
json.dump(result, open(os.path.join(out, f"rank-{rank}.json"), "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_under_torch_distributed_rank_0_tokenises_and_the_others_wait(tricky_corpus, tmp_path, mode):
    import json
    import subprocess
    import sys

    script = tmp_path / "ranks.py"
    script.write_text(_RANKS)
    env = {**os.environ, data.CACHE_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path), mode, str(tricky_corpus)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert sorted(p.name for p in tmp_path.glob("built-*")) == ["built-0"]  # one tokenisation, by rank 0
    if mode == "ok":
        assert ranks[0] == ranks[1] and len(ranks[0]["n"]) == 69
    else:  # rank 1 stops with rank 0's cause at once, instead of waiting at a barrier until the timeout
        assert "simulated failure" in ranks[0]["error"]
        assert "rank 0 could not tokenise the corpus (RuntimeError: simulated failure)" in ranks[1]["error"]


# ------------------------------------------------------------------- full disks and debris

def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_the_token_cache_write_leaves_nothing_and_says_so(tiny_data, minilm, cache_here,
                                                                             monkeypatch):
    _, tokenizer = minilm
    real_savez = np.savez

    def savez_until_full(file, **arrays):  # half the file, then the disk is full
        real_savez(file, **arrays)
        Path(file).write_bytes(Path(file).read_bytes()[:100])
        _full_disk()

    monkeypatch.setattr(np, "savez", savez_until_full)
    with pytest.raises(JtcseError, match="no space left"):
        data.tokenized_corpus("wiki1m_subset", tokenizer, 16, tiny_data, progress=False)
    assert list(cache_here.iterdir()) == []


def test_a_full_disk_during_the_datasets_cache_write_leaves_nothing_and_says_so(tmp_path, minilm, cache_here,
                                                                                monkeypatch):
    _, tokenizer = minilm
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"sentence number {i}\n" for i in range(2500)))
    real, calls = data._tokenise_rows, []

    def tokenise_until_full(batch, **kwargs):  # the first of three batches is written, then the disk is full
        calls.append(1)
        if len(calls) > 1:
            _full_disk()
        return real(batch, **kwargs)

    monkeypatch.setattr(data, "_tokenise_rows", tokenise_until_full)
    with pytest.raises(JtcseError, match="no space left"):
        data.tokenized_corpus(str(corpus), tokenizer, 16, progress=False, engine="datasets")
    assert len(calls) == 2 and [p.name for p in cache_here.iterdir()] == [".lock"]


def test_a_full_disk_during_the_unpack_leaves_nothing_and_says_so(private_cache, monkeypatch):
    import tarfile

    real = tarfile.TarFile.extract

    def extract_until_full(self, member, path="", **kwargs):  # some files land, then the disk is full
        if "SICK" in member.name:
            _full_disk()
        return real(self, member, path, **kwargs)

    def extractall(self, path=".", **kwargs):
        for member in self.getmembers():
            extract_until_full(self, member, path, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    with pytest.raises(JtcseError, match="no space left"):
        data.shipped_data_dir()
    assert [p.name for p in (private_cache / "data").iterdir()] == [".lock"]


def _age(path, seconds):
    """Set the modification time of `path` and everything under it `seconds` into the past."""
    when = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (when, when))


def test_temporaries_of_killed_unpacks_are_removed_and_live_ones_kept(private_cache):
    root = private_cache / "data"
    names = {"stale": ".unpack-k1ll3d", "stale_bad": ".0123456789ab.bad-1f2e3d4c", "stale_tmp": "0123456789ab.tmp",
             "fresh": ".unpack-w0rk1n", "busy": ".unpack-sl0w"}
    for name in names.values():  # a half-extracted tree each
        (root / name / "senteval" / "SICK").mkdir(parents=True)
        (root / name / "senteval" / "SICK" / "SICK_train.txt").write_text("half")
    for kind in ("stale", "stale_bad", "stale_tmp", "busy"):
        _age(root / names[kind], 3600)
    (root / names["busy"] / "senteval" / "SICK" / "SICK_train.txt").write_text("still being written")
    folder = data.shipped_data_dir()
    assert len(data.load_stsb("dev", folder)) == 1500
    left = {p.name for p in root.iterdir()}
    assert left == {".lock", folder.name, names["fresh"], names["busy"]}  # nothing modified for 10 minutes: gone


def test_a_stale_atomic_write_temporary_in_the_token_cache_is_removed(tiny_data, minilm, cache_here):
    _, tokenizer = minilm
    cache_here.mkdir(parents=True)
    stale, fresh = cache_here / ".0123456789abcdef.tmp-4242.npz", cache_here / ".fedcba9876543210.tmp-4343.npz"
    stale.write_bytes(b"PK half")
    fresh.write_bytes(b"PK being written")
    _age(stale, 3600)
    data.tokenized_corpus("wiki1m_subset", tokenizer, 16, tiny_data, progress=False)
    assert not stale.exists() and fresh.exists()


# ------------------------------------------------------------------- the real data folder

EXPECTED_PAIRS = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186,
                  "STSBenchmark": 1379, "SICKRelatedness": 4927}


@pytest.mark.parametrize("task", list(EXPECTED_PAIRS))
def test_real_data_pair_counts_match_senteval(real_data, task):
    subsets = data.load_task(task, real_data)
    assert sum(len(p) for p in subsets.values()) == EXPECTED_PAIRS[task]
    for p in subsets.values():
        assert np.all((p.gold >= 0) & (p.gold <= 5))


def test_real_stsb_dev_size(real_data):
    assert len(data.load_stsb("dev", real_data)) == 1500


# ------------------------------------------------------------------- download extraction

def _tar(tmp_path, layout_prefix, extra_member=None):
    import tarfile

    src = tmp_path / "src"
    (src / layout_prefix / "STS" / "STSBenchmark").mkdir(parents=True)
    (src / layout_prefix / "SICK").mkdir(parents=True)
    (src / layout_prefix / "STS" / "STSBenchmark" / "sts-dev.csv").write_text("x\n")
    (src / layout_prefix / "SICK" / "SICK_train.txt").write_text("y\n")
    tar_path = tmp_path / "senteval.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src / layout_prefix.split("/")[0] if layout_prefix else src, arcname=layout_prefix.split("/")[0] or ".")
        if extra_member:
            tar.add(src / layout_prefix / "SICK" / "SICK_train.txt", arcname=extra_member)
    return tar_path


@pytest.mark.parametrize("prefix", ["", "downstream", "SentEval/data/downstream"])
def test_extract_senteval_finds_the_root_at_any_depth(tmp_path, prefix):
    tar_path = _tar(tmp_path, prefix)
    out = data.extract_senteval(tar_path, tmp_path / "dest")
    assert (out / "STS" / "STSBenchmark" / "sts-dev.csv").read_text() == "x\n"
    assert (tmp_path / "dest" / "senteval" / "SICK" / "SICK_train.txt").is_file()


def test_extract_refuses_path_traversal(tmp_path):
    tar_path = _tar(tmp_path, "downstream", extra_member="../../evil.txt")
    with pytest.raises(DataError, match="cannot extract"):
        data.extract_senteval(tar_path, tmp_path / "dest")
    assert not list(tmp_path.rglob("evil.txt")) and not (tmp_path / "dest" / "senteval").exists()


def test_extract_without_senteval_content(tmp_path):
    import tarfile

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("a")
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        tar.add(tmp_path / "junk", arcname="junk")
    with pytest.raises(DataError, match="no STS/STSBenchmark"):
        data.extract_senteval(tmp_path / "t.tar", tmp_path / "dest")


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DataError, match="download from the Hub dataset princeton-nlp/datasets-for-simcse failed"):
        data.download_data(tmp_path / "d")
