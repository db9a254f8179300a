"""Shared fixtures: a tiny hand-made SentEval folder, the real data folder (the shipped data), the shipped MiniLM."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jtcse_lib.data import STS_SUBSETS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def write_senteval(root: Path, pairs_per_subset: int = 4) -> Path:
    """A complete SentEval layout with a few made-up pairs per sub-set (scores 0..5, one blank gold line each)."""
    sts = root / "senteval" / "STS"
    for year, subsets in STS_SUBSETS.items():
        folder = sts / f"{year}-en-test"
        folder.mkdir(parents=True)
        for k, sub in enumerate(subsets):
            inputs = [f"{year} {sub} first {i}\t{year} {sub} second {i}" for i in range(pairs_per_subset)]
            golds = [f"{(i * 1.3 + k) % 5:.3f}" for i in range(pairs_per_subset)]
            golds[1] = ""  # no gold: SentEval drops the pair
            (folder / f"STS.input.{sub}.txt").write_text("\n".join(inputs) + "\n", encoding="utf8")
            (folder / f"STS.gs.{sub}.txt").write_text("\n".join(golds) + "\n", encoding="utf8")
    stsb = sts / "STSBenchmark"
    stsb.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        rows = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i % 6:.3f}\t{split} a  man {i} .\t{split} the man {i} ."
                for i in range(pairs_per_subset + 2)]
        (stsb / f"sts-{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf8")
    sick = root / "senteval" / "SICK"
    sick.mkdir(parents=True)
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        rows = [f"{i}\tA kid {i} plays\tA child {i} is playing\t{1 + i % 4}.5\tNEUTRAL"
                for i in range(pairs_per_subset + 3)]
        (sick / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf8")
    wiki = root / "wiki"
    wiki.mkdir()
    (wiki / "wiki1m_subset.txt").write_text("First sentence.\n\nSecond one here.\n   \nThird.\n", encoding="utf8")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_senteval(tmp_path / "data")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data: $JTCSE_DATA_DIR when set, else the data the repository ships (unpacked on first use)."""
    from jtcse_lib.data import resolve_data_dir

    return resolve_data_dir()


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: tiny models are fastest so, and far faster when another process holds a core."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) of the shipped all-MiniLM-L6-v2, loaded once per session, eval mode."""
    from jtcse_lib.backbones import load_backbone

    model, tokenizer = load_backbone("minilm")
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm):
    """A 2-layer, 32-wide random BERT with MiniLM's vocabulary and tokenizer: a fast stand-in backbone."""
    import torch
    from transformers import BertConfig, BertModel

    _, tokenizer = minilm
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny"
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def mounted_tmpfs(folder, megabytes: int):
    """A real tmpfs of `megabytes` mounted at `folder` (created) while the block runs: a disk that fills up, or can
    be remounted read-only. Skips the test with the reason where mounting needs root and this is not root."""
    import gc
    import os
    import subprocess

    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs: not running as root")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    except OSError as e:
        pytest.skip(f"needs root to mount a tmpfs: {e}")
    if r.returncode:
        pytest.skip(f"needs root to mount a tmpfs: {r.stderr.strip() or 'mount failed'}")
    try:
        yield folder
    finally:
        gc.collect()  # models loaded from the disk map its files
        if subprocess.run(["umount", str(folder)]).returncode:
            subprocess.run(["umount", "-l", str(folder)])
