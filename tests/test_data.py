import numpy as np
import pytest

from jtcse_lib import data
from jtcse_lib.errors import DataError


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
    assert not (tmp_path / "evil.txt").exists()


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
