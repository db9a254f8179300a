"""The ordered pipeline through papermill: choosing notebooks, the kernels' environment, the smoke profile (run after
nbval: the run cache is warm), the paper profile's code path at tiny scale (paper-tiny), and checks that warn
instead of stopping a run. Everything that starts a kernel is marked slow."""

import io
import json
import os
import subprocess
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from jtcse_lib import pipeline
from jtcse_lib.ablations import all_ablations
from jtcse_lib.config import PARAMS_DIR, STAGES, load_profile
from jtcse_lib.errors import ConfigError, JtcseError
from jtcse_lib.paths import output_root, runs_root, source_dir
from jtcse_lib.pipeline import CheckWarning, NotebookFailed, record_check, run_pipeline
from jtcse_lib.report import COLUMNS, figures_dir, results_dir
from jtcse_lib.runs import run_dir

NOTEBOOK_NAMES = ["01_modulus_constraint.ipynb", "02_cross_attention.ipynb", "03_training.ipynb",
                  "04_distillation.ipynb", "05_sts_results.ipynb", "06_ablations.ipynb", "07_transfer.ipynb"]


def _run_warnings(profile: str) -> list:
    return json.loads((runs_root() / profile / "notebooks" / "timings.json").read_text())["warnings"]


@pytest.mark.slow
def test_smoke_pipeline_writes_results_and_figures(real_data, monkeypatch):
    monkeypatch.setenv("JTCSE_DATA_DIR", str(real_data))
    timings = run_pipeline("smoke")
    assert list(timings) == NOTEBOOK_NAMES
    executed = runs_root() / "smoke" / "notebooks"
    assert all((executed / name).is_file() for name in timings)
    results = results_dir("smoke")
    sts = pd.read_csv(results / "sts_results.csv")
    assert list(sts.columns) == ["model", "seed", *COLUMNS]
    assert sts[COLUMNS].notna().all().all() and len(sts) >= 7
    assert {"training_runs.csv", "ablations.csv", "paired_comparisons.csv", "transfer_results.csv"} <= \
        {p.name for p in results.glob("*.csv")}
    for csv in results.glob("*.csv"):
        assert (results / f"{csv.stem}.meta.json").is_file()
    figures = {p.stem[:2] for p in figures_dir("smoke").glob("*.png")}
    assert figures >= {"01", "02", "03", "04", "05", "06", "07"}
    # the checks that warn instead of stopping (02's identities, 04's export) pass on a correct build
    assert _run_warnings("smoke") == []
    checks = pd.read_csv(results / "checks.csv")
    assert {"02_cross_attention", "04_distillation"} <= set(checks["notebook"]) and checks["passed"].all()


# ---------------------------------------------------------------- choosing notebooks, the kernels' environment

def test_pipeline_selection(tmp_path):
    for name in ("01_a.ipynb", "02_b.ipynb", "03_c.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    nbs = pipeline.notebooks(tmp_path)
    assert [p.name for p in nbs] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    assert [p.name for p in pipeline.select(nbs, start="02")] == ["02_b.ipynb", "03_c.ipynb"]
    assert [p.name for p in pipeline.select(nbs, only=["3", "01"])] == ["01_a.ipynb", "03_c.ipynb"]
    assert pipeline.select(nbs) == nbs
    with pytest.raises(JtcseError, match="no notebook numbered 07"):
        pipeline.select(nbs, only=["07"])
    with pytest.raises(JtcseError, match="no notebook from 09 on"):
        pipeline.select(nbs, start="09")


@pytest.mark.slow
def test_pipeline_names_the_failing_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path / "nbs"
    folder.mkdir()
    nbformat.write(nb, folder / "01_fails.ipynb")
    with pytest.raises(pipeline.NotebookFailed, match=r"01_fails.ipynb failed in cell .*ValueError: boom"):
        pipeline.run_pipeline("smoke", notebooks_dir=folder, out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "01_fails.ipynb").is_file()


def test_pipeline_kernel_env_has_absolute_dirs_and_text_progress(tmp_path, monkeypatch):
    # the kernels run in notebooks/, where a relative $JTCSE_DATA_DIR would name another folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JTCSE_DATA_DIR", "../elsewhere/data")
    monkeypatch.setenv("JTCSE_RUNS_DIR", "runs")
    monkeypatch.delenv("JTCSE_CACHE_DIR", raising=False)
    env = pipeline.kernel_env()
    assert env["JTCSE_DATA_DIR"] == str((tmp_path / "../elsewhere/data").resolve())
    assert env["JTCSE_RUNS_DIR"] == str(tmp_path / "runs")
    assert env["JTCSE_HOME"] == str(output_root()) and "JTCSE_CACHE_DIR" not in env  # the kernels write where we do
    assert env["JTCSE_TEXT_PROGRESS"] == "1"  # papermill cannot stream widget bars; the kernels get text bars
    assert env["JTCSE_STATIC_WIDGETS"] == "1"  # and no frontend drives a widget: each draws its default figure
    monkeypatch.setenv("JTCSE_TEXT_PROGRESS", env["JTCSE_TEXT_PROGRESS"])
    from jtcse_lib.progress import progress_bar
    with progress_bar(total=1, disable=True) as bar:
        assert type(bar).__module__ == "tqdm.std"


# ---------------------------------------------------------------- paper-tiny: paper with only the scale changed

# The keys params/paper-tiny.yaml may set differently from params/paper.yaml (its comments say "[scale]").
SCALE_KEYS = {"profile", "backbone", "corpus", "corpus_limit", "device", "cross_attention_layers", "eval_every",
              "checkpoint_every", "log_every", "dev_pairs", "test_pairs", "seeds", "transfer_limit"}


def test_paper_tiny_is_paper_with_only_the_scale_changed():
    paper, tiny = load_profile("paper"), load_profile("paper-tiny")
    for stage in STAGES:
        p, t = paper.for_stage(stage).to_dict(), tiny.for_stage(stage).to_dict()
        differ = {k for k in p if p[k] != t[k]} - SCALE_KEYS
        if stage in ("simcse_a", "simcse_b"):  # paper's mixed precision: `auto` is fp32 on a CPU, so bf16 here
            assert (p["precision"], t["precision"]) == ("auto", "bf16")
            differ.discard("precision")
        assert not differ, f"{stage}: paper-tiny changes {sorted(differ)}, which are not scale"
    assert paper.device == "cuda" and tiny.device == "auto"
    # the cross-attention layers keep paper's ratio (6 of BERT's 12) of the tiny backbone's depth
    from jtcse_lib.backbones import depth

    assert tiny.cross_attention_layers / depth(tiny.backbone) == paper.cross_attention_layers / 12
    # every key the file sets differently is marked as scale in its comment
    lines = (PARAMS_DIR / "paper-tiny.yaml").read_text().splitlines()
    for key in set(yaml.safe_load((PARAMS_DIR / "paper-tiny.yaml").read_text())) & SCALE_KEYS - {"profile"}:
        assert any(line.startswith(f"{key}:") and "[scale]" in line for line in lines), key


def _untracked_or_changed(*paths: Path) -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *map(str, paths)],
                         cwd=output_root(), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.slow
def test_paper_tiny_pipeline_runs_the_paper_code_path(real_data, monkeypatch):
    """`pipeline --profile paper-tiny`: every notebook, stage and ablation of `paper`, bf16 stage 1, on the CPU,
    writing only to ignored folders."""
    monkeypatch.setenv("JTCSE_DATA_DIR", str(real_data))
    # one torch thread in the kernels: the tiny model is as fast so, and 4x faster when another process holds a core
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tracked = [output_root() / "results", output_root() / "figures", source_dir("docs")]
    before = _untracked_or_changed(*tracked)
    timings = run_pipeline("paper-tiny")
    assert list(timings) == NOTEBOOK_NAMES
    assert _run_warnings("paper-tiny") == []
    cfg = load_profile("paper-tiny")
    # nothing written where the committed results, figures and published notebooks live
    assert _untracked_or_changed(*tracked) == before
    for folder in (results_dir("paper-tiny"), figures_dir("paper-tiny")):
        assert runs_root() in folder.parents, f"{folder} is not under the ignored run folder"
    # every ablation of `paper`, on every seed
    ablations = pd.read_csv(results_dir("paper-tiny") / "ablations.csv")
    expected = {a.name for a in all_ablations(cfg, 4)}
    assert set(ablations["ablation"]) == expected and set(ablations["seed"]) == set(cfg.seeds)
    # stage 1 trained with the train-only MLP head in bf16 autocast, stage 2 in fp32; checkpoints removed
    for stage, precision in (("simcse_a", "bf16"), ("simcse_b", "bf16"), ("jtcse", "fp32")):
        run = run_dir(cfg, stage)
        result = json.loads((run / "result.json").read_text())
        assert result["config"]["precision"] == precision
        assert result["steps"] == cfg.corpus_limit // cfg.batch_size  # one epoch, as paper
        assert not (run / "checkpoint").exists()
    assert json.loads((run_dir(cfg, "simcse_a") / "result.json").read_text())["config"]["train_mlp_head"] is True
    transfer = pd.read_csv(results_dir("paper-tiny") / "transfer_results.csv")
    assert {"MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"} <= set(transfer.columns)


# ---------------------------------------------------------------- checks that warn instead of stopping

@pytest.fixture
def scratch_runs(tmp_path, monkeypatch):
    """A private run folder (results of `smoke` go under it) and no pipeline's warnings file."""
    monkeypatch.setenv("JTCSE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(pipeline.WARNINGS_ENV, raising=False)
    return tmp_path / "runs"


def test_a_failed_check_warns_and_is_recorded_and_a_passed_one_replaces_it(scratch_runs, capsys):
    with pytest.warns(CheckWarning, match="04_x: export: off by 0.5"):
        assert record_check(0.5 <= 0.01, "export", "off by 0.5", profile="smoke", notebook="04_x", value=0.5,
                            tolerance=0.01) is None
    assert "WARNING: check failed (04_x: export): off by 0.5" in capsys.readouterr().out
    log = scratch_runs / "smoke" / "warnings.jsonl"
    [record] = pipeline.read_warnings(log)
    assert (record["notebook"], record["check"], record["passed"], record["value"]) == ("04_x", "export", False, 0.5)
    table = results_dir("smoke") / "checks.csv"
    assert str(scratch_runs) in str(table)
    assert pd.read_csv(table).to_dict("records") == [
        {"notebook": "04_x", "check": "export", "passed": False, "value": 0.5, "tolerance": 0.01,
         "message": "off by 0.5"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passing check warns nothing...
        record_check(True, "export", "unused", profile="smoke", notebook="04_x", value=0.001, tolerance=0.01)
        record_check(True, "other", "unused", profile="smoke", notebook="02_y")
    assert capsys.readouterr().out == ""  # ...and prints nothing: the published outputs stay as they are
    rows = pd.read_csv(table, keep_default_na=False).to_dict("records")
    assert [(r["notebook"], r["check"], r["passed"]) for r in rows] == [("02_y", "other", True),
                                                                       ("04_x", "export", True)]
    assert len(pipeline.read_warnings(log)) == 1  # the log keeps what failed


def _fake_notebooks(folder: Path, cells: dict[str, str]) -> Path:
    folder.mkdir()
    for name, code in cells.items():
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('profile = "smoke"\noverrides = {}')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)
    return folder


FAILING_CHECK = ('from jtcse_lib.pipeline import record_check\n'
                 'record_check(False, "tolerance", "differs by 0.2 points", profile=profile, notebook="01_a", '
                 'value=0.2, tolerance=0.01)\nprint("went on")')


@pytest.mark.slow
def test_a_failed_check_does_not_stop_the_pipeline_and_is_summarised(scratch_runs, tmp_path, capsys):
    nbs = _fake_notebooks(tmp_path / "nbs", {"01_a.ipynb": FAILING_CHECK, "02_b.ipynb": 'print("second ran")'})
    out = tmp_path / "out"
    (out).mkdir()
    (out / "warnings.jsonl").write_text('{"notebook": "an earlier run"}\n')  # not this run's: dropped
    timings = run_pipeline("smoke", notebooks_dir=nbs, out_dir=out, stream=io.StringIO())
    assert list(timings) == ["01_a.ipynb", "02_b.ipynb"]  # the second notebook ran
    printed = capsys.readouterr().out
    assert "pipeline (smoke): 1 WARNING(S)" in printed and "  - 01_a: tolerance: differs by 0.2 points" in printed
    assert "earlier run" not in printed
    executed = nbformat.read(out / "01_a.ipynb", as_version=4).cells[-1].outputs
    text = "".join(o.get("text", "") for o in executed)
    assert "WARNING: check failed (01_a: tolerance)" in text and "CheckWarning" in text and "went on" in text
    [kept] = json.loads((out / "timings.json").read_text())["warnings"]
    assert kept == {"notebook": "01_a", "check": "tolerance", "message": "differs by 0.2 points"}
    history = (results_dir("smoke") / "pipeline_history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["warnings"] == [kept]  # a complete run's record keeps them
    assert pipeline.WARNINGS_ENV not in os.environ  # the run's environment is not left behind


@pytest.mark.slow
def test_a_failing_notebook_still_lists_the_warnings_before_it(scratch_runs, tmp_path, capsys):
    nbs = _fake_notebooks(tmp_path / "nbs", {"01_a.ipynb": FAILING_CHECK, "02_b.ipynb": 'raise ValueError("boom")',
                                             "03_c.ipynb": 'print("never")'})
    with pytest.raises(NotebookFailed, match="02_b.ipynb failed in cell .*ValueError: boom"):
        run_pipeline("smoke", notebooks_dir=nbs, out_dir=tmp_path / "out", stream=io.StringIO())
    printed = capsys.readouterr().out
    assert "1 WARNING(S)" in printed and "01_a: tolerance" in printed and "[3/3]" not in printed


def test_the_pipeline_refuses_an_unusable_device_before_any_kernel(monkeypatch, tmp_path):
    import papermill

    from jtcse_lib import device

    monkeypatch.setattr(device, "cuda_problem", lambda: "this torch is a CPU-only build")
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kernel started"))
    with pytest.raises(ConfigError, match="asks for CUDA, but this torch is a CPU-only build"):
        run_pipeline("smoke", overrides=["device=cuda"], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="asks for CUDA"):
        run_pipeline("paper", out_dir=tmp_path / "out")  # paper's own `device: cuda`


def test_the_notebooks_keep_hard_asserts_only_for_exact_identities():
    """A tolerance that a legitimate run can exceed (other hardware, kernels, batching) is a `record_check`, not an
    assert: a headless run of hours must not end there. What stays an assert holds exactly under every profile."""
    kept = {"01_modulus_constraint": 4,  # sympy identities (3) and float64 library-vs-sympy on the CPU (1)
            "02_cross_attention": 1,  # the parameter count of the twin: exactly twice the backbone's
            "03_training": 1}  # the total loss is the weighted sum of its terms (float64, CPU)
    for path in sorted(pipeline.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        asserts = sum(line.lstrip().startswith("assert ") for cell in code for line in cell.splitlines())
        assert asserts == kept.get(path.stem, 0), f"{path.name}: {asserts} asserts"
    nb04 = "\n".join(c.source for c in nbformat.read(pipeline.NOTEBOOKS_DIR / "04_distillation.ipynb",
                                                       as_version=4).cells)
    assert "record_check(worst <= TOLERANCE" in nb04
