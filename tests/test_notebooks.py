"""Static checks of the committed notebooks (the smoke pipeline in test_pipeline.py executes them through papermill,
with the parameters cell's own defaults: profile "smoke", no overrides).

The teaching versions of the notebooks (issue 24: the kernel's code beside its equation, conclusions written from
the results, exercises) wait in notebooks/next/ until the next three-seed reproduction publishes them; the checks of
what a teaching notebook holds apply to them there, and to notebooks/ once they are moved into place.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(ROOT.glob("[0-9][0-9]_*.ipynb"))
NEXT = sorted((ROOT / "next").glob("[0-9][0-9]_*.ipynb"))
TEACHING = NEXT or NOTEBOOKS  # the versions that teach
EXPECTED = ["01_modulus_constraint", "02_cross_attention", "03_training", "04_distillation", "05_sts_results",
            "06_ablations", "07_transfer"]


def cells(path):
    return json.loads(path.read_text(encoding="utf8"))["cells"]


def source(cell) -> str:
    return "".join(cell["source"])


def test_the_seven_notebooks_exist_in_order():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert [p.stem for p in NEXT] in ([], EXPECTED)  # the teaching versions come as a set


@pytest.mark.parametrize("path", NOTEBOOKS + NEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_clean_and_parameterised(path):
    nb = cells(path)
    code = [c for c in nb if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} carries outputs: strip them before committing"
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), f"{path.name}: first code cell not tagged"
    assert 'profile = "smoke"' in source(first) and "overrides = {}" in source(first)
    assert nb[0]["cell_type"] == "markdown" and source(nb[0]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS + NEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_recorded_checks_name_their_own_notebook(path):
    """`record_check(..., notebook=...)` is what the pipeline's end-of-run warnings list: it must name this one."""
    code = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "code")
    assert code.count("record_check(") == len(re.findall(r'notebook="([^"]+)"', code))
    assert set(re.findall(r'notebook="([^"]+)"', code)) <= {path.stem}


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_teaching_notebook_shows_its_code_and_ends_in_conclusions_and_exercises(path):
    nb = cells(path)
    code = "\n".join(source(c) for c in nb if c["cell_type"] == "code")
    if path.stem[:2] in ("01", "02", "03", "04", "06", "07"):
        assert "show_code(" in code, f"{path.name} shows no library code beside its equations"
    headings = [i for i, c in enumerate(nb) if c["cell_type"] == "markdown" and source(c).startswith("## ")]
    titles = [source(nb[i]).splitlines()[0] for i in headings]
    assert "## Conclusions" in titles and "## Exercises" in titles, titles
    conclusions = titles.index("## Conclusions")
    after = next(c for c in nb[headings[conclusions] + 1:] if c["cell_type"] == "code")
    assert "say(" in source(after), "the conclusions are written from the results (display.say), not typed"
    assert titles.index("## Exercises") > conclusions
    for cell in nb:  # answers and plotting are out of the reader's way, in JupyterLab and in the book
        if cell["cell_type"] == "code" and source(cell).startswith("# Answer to exercise"):
            assert "hide-input" in cell["metadata"].get("tags", [])
            assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True
