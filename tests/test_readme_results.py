"""The README's results block is generated from results/cpu/ and must match it."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from jtcse_lib.report import COLUMNS
from jtcse_lib.stats import comparison_table

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "tools" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_results(folder: Path) -> None:
    rows = [{"model": "MiniLM-L6 backbone, cls", "seed": None, **{c: 70.0 for c in COLUMNS}}]
    for seed, simcse, jtcse in ((1, 80.0, 81.0), (2, 82.0, 81.5)):
        rows.append({"model": "SimCSE tower A", "seed": seed, **{c: simcse for c in COLUMNS}})
        rows.append({"model": "JTCSE (twin)", "seed": seed, **{c: jtcse for c in COLUMNS}})
    pd.DataFrame(rows).to_csv(folder / "sts_results.csv", index=False)
    config = {"backbone": "minilm", "corpus": "wiki1m_subset", "batch_size": 32, "max_length": 32, "max_steps": 60,
              "eval_every": 20, "seeds": [1, 2], "test_pairs": None}
    (folder / "sts_results.meta.json").write_text(json.dumps({"config": config}))
    (folder / "pipeline_timings.json").write_text(json.dumps({
        "seconds": {"01_a.ipynb": 60.0, "02_b.ipynb": 120.0}, "total_seconds": 180.0, "git_commit": "0123456789abcdef",
        "created": "2026-11-27T00:00:00+00:00", "machine": {"cpus": 2, "processor": "cpu", "memory_gib": 24.0}}))


def test_render_reports_mean_sd_and_seedwise_differences(tmp_path):
    _write_results(tmp_path)
    # per-seed Avg differences JTCSE - SimCSE: +1.0 and -0.5 -> mean +0.25; the t interval over 2 seeds is
    # 0.25 -/+ t_{0.975,1} * 1.0607 / sqrt(2) = 0.25 -/+ 12.706 * 0.75 = [-9.28, +9.78]
    diffs = pd.DataFrame({"avg": [1.0, -0.5]}, index=[1, 2])
    comparison_table({"JTCSE (twin) − SimCSE tower A": diffs}).to_csv(tmp_path / "paired_comparisons.csv", index=False)
    block = _tool().render(tmp_path)
    assert "| SimCSE tower A | 2 | 81.00 ± 1.41 |" in block  # mean 81, sample sd sqrt(2)
    assert "| JTCSE (twin) | 2 | 81.25 ± 0.35 |" in block
    assert ("| JTCSE (twin) − SimCSE tower A | +0.25 | [-9.28, +9.78] | 2 seeds (t) |  | "
            "not resolved: the interval contains 0 |") in block
    assert "- the default (one seed): **3 min** for the 2 notebooks" in block
    assert "TNCSE (twin)" not in block.split("**The paper**")[0]  # no row or comparison for an absent model


def test_render_lists_the_last_default_run_and_the_runs_after_it(tmp_path):
    _write_results(tmp_path)
    last = json.loads((tmp_path / "pipeline_timings.json").read_text())
    older = {**last, "git_commit": "fedcba", "total_seconds": 6000.0}  # an earlier default run: not reported
    seeds = {**last, "overrides": ["seeds=[1,2]"], "total_seconds": 600.0, "git_commit": "abcdef0123"}
    (tmp_path / "pipeline_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (older, last, seeds)))
    block = _tool().render(tmp_path)
    assert "- the default (one seed): **3 min** for the 2 notebooks (minutes per notebook: 01 1.0, 02 2.0; " \
        "commit `0123456789`" in block
    assert "- with `--set seeds=[1,2]`: **10 min**" in block and "commit `abcdef0123`" in block
    assert "**100 min**" not in block


def test_the_results_blocks_are_up_to_date_with_committed_results():
    """The README's headline block and docs/results.md's full block equal what the tool renders from results/cpu."""
    results = ROOT / "results" / "cpu"
    if not (results / "pipeline_timings.json").is_file():
        pytest.fail("results/cpu/ has no complete `make reproduce` run; run it and commit results/cpu/")
    tool = _tool()
    for path, begin, end, render in ((ROOT / "README.md", tool.HEADLINE, tool.HEADLINE_END, tool.render_headline),
                                     (tool.FULL_PAGE, tool.BEGIN, tool.END, tool.render)):
        text = path.read_text(encoding="utf8")
        assert begin in text and end in text, path
        block = begin + text.split(begin, 1)[1].split(end, 1)[0] + end
        assert block == render(results), f"{path}'s results block is stale: run python tools/readme_results.py"


def test_the_headline_holds_the_claims_with_their_verdicts():
    block = _tool().render_headline(ROOT / "results" / "cpu")
    assert "| claim of the paper |" in block and "the tensor-modulus term helps" in block
