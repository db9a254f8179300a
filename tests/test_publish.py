"""Publishing executed notebooks (docs/notebooks/): cleaning, and the staleness check that guards the copies."""

import nbformat
import pytest

from jtcse_lib import pipeline
from jtcse_lib.paths import output_root

WIDGET = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
          "text/plain": "HBox(children=(FloatProgress(value=0.0),))"}


def _notebook(code: list[str]):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook")] + [nbformat.v4.new_code_cell(c) for c in code]
    return nb


def _executed(code: list[str]):
    nb = _notebook(code)
    for i, cell in enumerate(nb.cells[1:], start=1):
        cell.execution_count = i
        cell.metadata["papermill"] = {"start_time": "2026-11-27T00:00:00", "duration": 1.5}
    bar = "\r  0%|          | 0/3 [00:00<?, ?step/s]\r 33%|###3      | 1/3\r100%|##########| 3/3 [00:01<00:00]\n"
    nb.cells[1].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=bar[:40]),
        nbformat.v4.new_output("stream", name="stderr", text=bar[40:]),
        nbformat.v4.new_output("display_data", data=WIDGET),
        nbformat.v4.new_output("stream", name="stdout", text=f"wrote {output_root()}/results/cpu/x.csv\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\rencoding:  50%|#####     |\r" + " " * 30 + "\r"),
    ]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    nb.metadata["papermill"] = {"parameters": {"profile": "cpu"}, "input_path": "/somewhere/in.ipynb"}
    return nb


def test_publishable_drops_progress_bars_and_widgets_and_keeps_other_streams():
    clean = pipeline.publishable(_executed(["x = 1", "y = 2"]))
    outputs = clean.cells[1].outputs
    assert [o.output_type for o in outputs] == ["stream"]  # the widget and every bar are gone
    assert outputs[0].text == "wrote ./results/cpu/x.csv\n"  # no local path
    assert "widgets" not in clean.metadata and clean.metadata["papermill"] == {"parameters": {"profile": "cpu"}}
    assert "papermill" not in clean.cells[1].metadata


def test_progress_lines_are_recognised_and_nothing_else():
    bars = ["stage:  40%|####      | 2/5 [00:01<00:02,  1.21step/s, loss=0.5212, best_dev=-]",
            "100%|##########| 3/3 [00:01<00:00]", "encoding: 100%|██████████| 12/12 [00:03<00:00, 3.9batch/s]",
            "Loading weights: 100%|##########| 103/103 [00:00<00:00, 18251.51it/s]", " 33%|###3      | 1/3"]
    kept = ["[jtcse] 30 of 128 training sentences are longer than max_length=32 tokens and were truncated",
            "UserWarning: 50% of the pairs | are short", "wrote results/cpu/x.csv"]
    assert pipeline._without_progress("\n".join(bars + kept)) == "\n".join(kept)


def test_final_text_overwrites_like_a_terminal():
    assert pipeline._final_text("abcdef\rXY\n") == "XYcdef\n"
    assert pipeline._final_text("first\nbar 1\rbar 2\r     \r\nlast") == "first\nlast"
    assert pipeline._final_text("no carriage return\n\nblank line kept") == "no carriage return\n\nblank line kept"


@pytest.fixture
def source_and_published(tmp_path):
    source, published = tmp_path / "notebooks", tmp_path / "published"
    source.mkdir()
    nbformat.write(_notebook(["x = 1", "y = 2"]), source / "01_a.ipynb")
    executed = tmp_path / "executed"
    executed.mkdir()
    run = _executed(["x = 1", "y = 2"])
    injected = nbformat.v4.new_code_cell('# Parameters\nprofile = "cpu"\n', execution_count=2)
    injected.metadata["tags"] = ["injected-parameters"]  # papermill adds it after the parameters cell
    run.cells.insert(2, injected)
    nbformat.write(run, executed / "01_a.ipynb")
    assert [p.name for p in pipeline.publish(executed, dest=published)] == ["01_a.ipynb"]
    return source, published


def test_a_fresh_copy_is_not_stale(source_and_published):
    assert pipeline.stale_published(*source_and_published) == []


def test_changing_a_code_cell_of_the_source_makes_the_copy_stale(source_and_published):
    source, published = source_and_published
    nb = nbformat.read(source / "01_a.ipynb", as_version=4)
    nb.cells[2].source = "y = 3"
    nbformat.write(nb, source / "01_a.ipynb")
    assert pipeline.stale_published(source, published) == [
        f"01_a.ipynb: code differs from {source / '01_a.ipynb'} (code cell 2): re-run the pipeline to publish it"]


def test_errors_unexecuted_cells_and_missing_copies_are_reported(source_and_published):
    source, published = source_and_published
    nb = nbformat.read(published / "01_a.ipynb", as_version=4)
    nb.cells[3].execution_count = None  # cells: markdown, x = 1, the injected parameters, y = 2
    nb.cells[1].outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[]))
    nbformat.write(nb, published / "01_a.ipynb")
    nbformat.write(_notebook(["z = 0"]), source / "02_b.ipynb")
    problems = pipeline.stale_published(source, published)
    assert "01_a.ipynb: code cell 1 holds an error (ValueError)" in problems
    assert "01_a.ipynb: code cell 2 was not executed" in problems
    assert f"{published / '02_b.ipynb'} is missing" in problems


def test_a_warning_left_on_stderr_makes_the_copy_stale(source_and_published, tmp_path):
    """Progress bars are dropped when publishing (the fixture's copy has none left); any other stderr text is a
    warning or message a reader should not meet in a published notebook (issue 24)."""
    source, published = source_and_published
    run = _executed(["x = 1", "y = 2"])
    run.cells[2].outputs = [nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something\nmore\n")]
    executed = tmp_path / "executed_again"
    executed.mkdir()
    nbformat.write(run, executed / "01_a.ipynb")
    pipeline.publish(executed, dest=published)
    assert pipeline.stale_published(source, published) == [
        "01_a.ipynb: code cell 2 writes to stderr ('UserWarning: something')"]


def test_the_committed_published_notebooks_are_current():
    """docs/notebooks/ holds the executed `make reproduce` copies of every notebook: change a code cell of a
    notebook and this fails until the pipeline publishes it again (README: read without running)."""
    problems = pipeline.stale_published()
    assert not problems, "docs/notebooks/ is stale; run `make reproduce` and commit it:\n" + "\n".join(problems)


def test_the_published_notebooks_stay_small():
    """Images are PNG outputs of the figures; the whole folder must stay a light read on GitHub."""
    sizes = {p.name: p.stat().st_size for p in pipeline.PUBLISHED_DIR.glob("*.ipynb")}
    assert sizes and sum(sizes.values()) < 12 * 2**20, sizes


def test_a_pipeline_pins_the_commit_it_started_from(monkeypatch, tmp_path):
    """Notebooks rewrite tracked result files as they go; without the pin every later notebook would record
    '<commit>+dirty'. The pin holds for the run only. A real git repository stands in for the checkout (git reads
    GIT_DIR / GIT_WORK_TREE), and the stand-in kernel rewrites one of its tracked files, as a notebook does."""
    import os
    import subprocess

    import papermill

    from jtcse_lib import provenance

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "results.csv").write_text("a\n")
    subprocess.run([*git, "add", "results.csv"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "results"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo))
    monkeypatch.delenv(provenance.PINNED_COMMIT_ENV, raising=False)
    monkeypatch.setenv(pipeline.WARNINGS_ENV, "/somewhere/else.jsonl")  # a value of the caller's, restored after
    assert provenance.git_commit() == sha  # clean

    seen = []

    def kernel(*args, **kwargs):  # a notebook: rewrites a tracked result, then records the commit of its results
        (repo / "results.csv").write_text("b\n")
        seen.append((provenance.git_commit(), os.environ[pipeline.WARNINGS_ENV]))

    monkeypatch.setattr(papermill, "execute_notebook", kernel)
    pipeline.run_pipeline("smoke", only=["01"], out_dir=tmp_path / "out")
    assert seen == [(sha, str(tmp_path / "out" / "warnings.jsonl"))]  # the commit it started from, not +dirty
    assert provenance.git_commit() == sha + "+dirty"  # unpinned after the run: the tree as it is
    assert provenance.PINNED_COMMIT_ENV not in os.environ
    assert os.environ[pipeline.WARNINGS_ENV] == "/somewhere/else.jsonl"


def test_git_commit_reads_the_pin(monkeypatch):
    from jtcse_lib import provenance

    monkeypatch.setenv(provenance.PINNED_COMMIT_ENV, "0123abc")
    assert provenance.git_commit() == "0123abc"
    monkeypatch.delenv(provenance.PINNED_COMMIT_ENV)
    assert provenance.git_commit() != "0123abc"
