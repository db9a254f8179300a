"""Static checks of the committed notebooks (the smoke pipeline in test_pipeline.py executes them through papermill)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_modulus_constraint", "02_cross_attention", "03_training", "04_distillation", "05_sts_results",
            "06_ablations", "07_transfer"]


def test_the_seven_notebooks_exist_in_order():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text(encoding="utf8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} carries outputs: strip them before committing"
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), f"{path.name}: first code cell not tagged"
    source = "".join(first["source"])
    assert 'profile = "smoke"' in source and "overrides = {}" in source
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    markdown = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert any("What we saw" in m for m in markdown), f"{path.name} has no closing 'What we saw' section"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_recorded_checks_name_their_own_notebook(path):
    """`record_check(..., notebook=...)` is what the pipeline's end-of-run warnings list: it must name this one."""
    import re

    nb = json.loads(path.read_text(encoding="utf8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert code.count("record_check(") == len(re.findall(r'notebook="([^"]+)"', code))
    assert set(re.findall(r'notebook="([^"]+)"', code)) <= {path.stem}
