"""`python -m jtcse_lib doctor`: the pre-flight table of jtcse_lib.doctor, on this machine (no GPU, no Hub)."""

from __future__ import annotations

import re
import shutil
import socket
import time

import pytest

from jtcse_lib import doctor, plan
from jtcse_lib.config import load_profile
from jtcse_lib.data import resolve_data_dir
from jtcse_lib.device import cuda_problem

_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def table(text: str) -> dict[str, tuple[str, str, str | None]]:
    """{check: (status, detail, fix)} read back from the printed report."""
    rows: dict[str, tuple[str, str, str | None]] = {}
    last = None
    for line in text.splitlines()[2:]:
        if line.strip().startswith("fix: ") and last:
            rows[last] = (*rows[last][:2], line.strip().removeprefix("fix: "))
        elif line.split(" ", 1)[0] in doctor.STATUSES:
            status, name, detail = re.split(r"\s{2,}", line.strip(), maxsplit=2)
            rows[name] = (status, detail, None)
            last = name
    return rows


@pytest.fixture
def shipped(monkeypatch):
    """The shipped data, whatever the environment says."""
    monkeypatch.delenv("JTCSE_DATA_DIR", raising=False)


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """Offline, with an empty Hugging Face cache: a Hub backbone can be neither found nor fetched."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("profile", ["cpu", "paper-tiny"])
def test_cpu_profiles_pass_here(shipped, profile):
    text, code = doctor.main_report(profile, None, None)
    rows = table(text)
    assert code == 0, text
    assert not [name for name, (status, _, _) in rows.items() if status == "FAIL"]
    for name in ("torch", "cuda", "backbone", "sts data", "transfer data", "corpus wiki1m_subset", "disk",
                 "papermill", "jupyter kernel", "tensorboard", "datasets", "cores", "memory"):
        assert name in rows, text
    assert rows["corpus wiki1m_subset"][1].startswith("30,762 sentences")
    assert rows["backbone"][0] == "ok" and load_profile(profile).backbone in rows["backbone"][1]
    assert rows["datasets"][0] == "note"  # the subset is tokenised in process: `datasets` is not needed


def test_paper_profile_fails_here_naming_cuda_the_hub_and_the_corpus(shipped, empty_hub_cache):
    text, code = doctor.main_report("paper", None, None)
    rows = table(text)
    assert code == 2, text
    if cuda_problem() is not None:  # this machine: a CPU build of torch
        status, detail, fix = rows["cuda"]
        assert status == "FAIL" and "CUDA" in detail and "device: cuda" in detail
        assert "--device cpu" in fix and "nvidia-smi" in fix
    else:  # a GPU box
        assert rows["cuda"][0] == "ok"
    status, detail, fix = rows["backbone"]
    assert status == "FAIL" and "bert-base-uncased" in detail and "HF_HUB_OFFLINE" in detail
    assert "--set backbone=" in fix and "HF_HOME" in fix
    status, detail, fix = rows["corpus wiki1m"]
    assert status == "FAIL" and "wiki1m_for_simcse.txt" in detail
    assert "python -m jtcse_lib download-data" in fix and "JTCSE_DATA_DIR" in fix
    assert rows["sts data"][0] == "ok"  # the evaluation data is shipped: only the training corpus is missing
    assert rows["datasets"][0] == "ok" and "wiki1m" in rows["datasets"][1]  # the full corpus needs it


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_cuda_is_a_fail_only_when_the_profile_needs_it(device):
    rows = {c.name: c for c in doctor.check_torch(load_profile("cpu", [f"device={device}"]))}
    problem = cuda_problem()
    expected = "ok" if problem is None else "FAIL" if device == "cuda" else "note"
    assert rows["cuda"].status == expected
    if problem is not None:
        assert problem in rows["cuda"].detail
    assert rows["torch"].status == "ok"


def test_a_data_folder_with_a_missing_file_fails_the_data_line(shipped, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(resolve_data_dir(), copy)
    (copy / "senteval" / "STS" / "STS14-en-test" / "STS.input.images.txt").unlink()
    text, code = doctor.main_report("cpu", None, str(copy))
    rows = table(text)
    assert code == 2, text
    status, detail, fix = rows["sts data"]
    assert status == "FAIL" and "STS.input.images.txt" in detail and "1 file(s) missing" in detail
    assert "download-data" in fix
    assert rows["transfer data"][0] == "ok" and rows["corpus wiki1m_subset"][0] == "ok"


def test_an_altered_senteval_file_is_a_warning_not_a_failure(shipped, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(resolve_data_dir(), copy)
    readme = copy / "senteval" / "STS" / "STS12-en-test" / "00-readme.txt"
    readme.write_text(readme.read_text(encoding="utf8") + "edited\n", encoding="utf8")
    rows = {c.name: c for c in doctor.check_data(load_profile("cpu"), str(copy))}
    assert rows["sts data"].status == "warn" and "00-readme.txt" in rows["sts data"].detail
    assert rows["transfer data"].status == "ok"


def test_a_missing_data_dir_fails_the_data_line(monkeypatch, tmp_path):
    monkeypatch.setenv("JTCSE_DATA_DIR", str(tmp_path / "nowhere"))
    text, code = doctor.main_report("cpu", None, None)
    status, detail, fix = table(text)["data"]
    assert code == 2 and status == "FAIL"
    assert "nowhere" in detail and "does not exist" in detail and fix


@pytest.fixture
def silent_hub(monkeypatch):
    """A local 'Hub' that accepts connections (the kernel's backlog) and never answers: a hung endpoint."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    for var in _PROXIES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield server
    server.close()


def _connections(server: socket.socket) -> int:
    server.setblocking(False)
    n = 0
    while True:
        try:
            server.accept()[0].close()
            n += 1
        except BlockingIOError:
            return n


def test_hub_check_respects_hf_hub_offline_and_returns_at_once(silent_hub, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: its constant says False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    [check] = doctor.check_backbone("bert-base-uncased", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5
    assert check.status == "FAIL" and "HF_HUB_OFFLINE" in check.detail and "--set backbone=" in check.fix
    assert _connections(silent_hub) == 0  # offline: not even a connection attempt


def test_hub_check_gives_up_on_a_hub_that_does_not_answer(silent_hub, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import (tests/conftest.py set it to 1)
    start = time.perf_counter()
    [check] = doctor.check_backbone("bert-base-uncased", cache_dir=tmp_path, timeout=0.3)
    assert time.perf_counter() - start < 3  # the timeout + 1 s for a hung lookup
    assert check.status == "FAIL" and "cannot be reached" in check.detail and "HF_HOME" in check.fix
    assert _connections(silent_hub) >= 1  # it did ask (the endpoint of HF_ENDPOINT), then gave up in time


def _hub_cache(root, repo: str, files: list[str]):
    """A Hugging Face cache holding `files` of `repo` at one revision, in the layout huggingface_hub writes."""
    repo_dir = root / f"models--{repo}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")
    return snapshot


def test_a_cached_hub_model_is_ok_offline_but_not_without_its_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _hub_cache(tmp_path / "full", "roberta-base", ["config.json", "model.safetensors"])
    [check] = doctor.check_backbone("roberta-base", cache_dir=tmp_path / "full")
    assert check.status == "ok" and str(snapshot) in check.detail
    _hub_cache(tmp_path / "config-only", "roberta-base", ["config.json"])
    [check] = doctor.check_backbone("roberta-base", cache_dir=tmp_path / "config-only")
    assert check.status == "FAIL"


def test_a_backbone_folder_that_is_not_there_fails(shipped, tmp_path):
    text, code = doctor.main_report("cpu", [f"backbone={tmp_path / 'no-such-model'}"], None)
    status, detail, fix = table(text)["backbone"]
    assert code == 2 and status == "FAIL" and "does not exist" in detail and fix


def test_disk_fails_when_the_plan_needs_more_than_is_free(monkeypatch, tmp_path):
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))  # not there yet: the disk under it counts
    free = shutil.disk_usage(tmp_path).free
    seeds = [42]
    while True:  # more seeds, more runs, until the plan outgrows this disk
        config = load_profile("paper", [f"seeds={seeds}", "keep_checkpoints=true"])
        if plan.disk_need(config)["needed_bytes"] > free:
            break
        seeds = seeds + [seeds[-1] + i + 1 for i in range(len(seeds))]
    [check] = doctor.check_disk(config)
    assert check.status == "FAIL" and "JTCSE_RUNS_DIR" in check.fix
    [check] = doctor.check_disk(load_profile("smoke"))
    assert check.status == "ok" and str(tmp_path / "runs") in check.detail


@pytest.mark.parametrize("profile, overrides, named", [("no-such-profile", None, "paper"),
                                                      ("smoke", ["ablations=[no_moduls]"], "no_modulus")])
def test_an_unknown_profile_or_ablation_is_one_fail_line(profile, overrides, named):
    text, code = doctor.main_report(profile, overrides, None)
    rows = table(text)
    status, detail, fix = rows["profile"]
    assert code == 2 and status == "FAIL" and named in detail + fix and len(rows) == 1


def test_disk_of_a_backbone_of_unknown_size_is_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    [check] = doctor.check_disk(load_profile("smoke", ["backbone=acme/unknown-model"]))
    assert check.status == "warn" and "not estimated" in check.detail and "acme/unknown-model" in check.detail


def test_a_short_full_corpus_is_flagged_as_a_truncated_download(shipped, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(resolve_data_dir(), copy)
    (copy / "wiki" / "wiki1m_for_simcse.txt").write_text("One sentence.\nAnother one.\n", encoding="utf8")
    rows = {c.name: c for c in doctor.check_data(load_profile("paper"), str(copy))}
    check = rows["corpus wiki1m"]
    assert check.status == "warn" and check.detail.startswith("2 sentences") and "1,000,000 expected" in check.detail
    assert "download-data" in check.fix
