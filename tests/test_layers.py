"""The library's layers point one way (DESIGN.md): kernel <- evaluation <- training <- workflow <- CLI, no circle.

The paper's kernel (losses, model, data) sits at the bottom; the trainer sits above evaluation because it selects
its best step on STS-B dev with the evaluation protocol (the same encoder the test sets are scored with).

Every import of a jtcse_lib module counts, the lazy ones inside functions too: a lazy import still makes the
importing module depend on the imported one, and a circle of lazy imports is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jtcse_lib"
LAYERS = {
    "kernel": ["errors", "paths", "config", "files", "device", "distributed", "progress", "provenance", "losses",
               "backbones", "data", "model"],
    "evaluation": ["evaluate", "transfer", "stats", "analysis", "mteb_adapter"],
    "training": ["run_folder", "train"],
    "workflow": ["ablations", "runs", "plan", "export", "report", "figures", "display", "pipeline", "doctor"],
    "cli": ["__main__"],
}
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}


def imports(module: str) -> set[str]:
    """The jtcse_lib modules `module` imports, anywhere in its body."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("jtcse_lib."):
                found.add(node.module.split(".")[1])
            elif node.module == "jtcse_lib":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("jtcse_lib."))
    return {m for m in found if (PACKAGE / f"{m}.py").is_file()} - {module}


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_layer():
    assert sorted(LEVEL) == MODULES, "add the new module to LAYERS here and to DESIGN.md's table"


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    up = sorted(m for m in imports(module) if LEVEL[m] > LEVEL[module])
    assert not up, f"{module} ({list(LAYERS)[LEVEL[module]]}) imports from a higher layer: {up}"


def test_no_import_circle():
    graph = {m: imports(m) for m in MODULES}
    done: set[str] = set()

    def visit(m, path):
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        for n in sorted(graph[m]):
            if cycle := visit(n, path + [m]):
                return cycle
        done.add(m)
        return None

    for m in MODULES:
        assert (cycle := visit(m, [])) is None, f"import circle: {' -> '.join(cycle)}"


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `statement`."""
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_exporting_does_not_load_the_trainer_and_statistics_need_no_torch():
    assert "jtcse_lib.train" not in loaded_by("import jtcse_lib.export")
    assert "torch" not in loaded_by("import jtcse_lib.stats")
    assert "torch" not in loaded_by("import jtcse_lib.config")
