"""Build a static HTML site from the published notebooks: `make book` -> build/book/index.html.

Pure Python (nbconvert's HTML exporter, no Node): one page per notebook of docs/notebooks/, outputs as they were
executed, plus an index that links them in order. Open build/book/index.html in a browser.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

REPO = Path(__file__).resolve().parent.parent
SOURCE, DEST = REPO / "docs" / "notebooks", REPO / "build" / "book"


def title(nb) -> str:
    first = nb.cells[0].source.splitlines()[0] if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    return first.lstrip("# ").strip() or "notebook"


def main() -> None:
    paths = sorted(SOURCE.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"no published notebooks in {SOURCE}: run `make reproduce` first")
    DEST.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    items = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title(nb)}})
        (DEST / f"{path.stem}.html").write_text(body, encoding="utf8")
        items.append(f'<li><a href="{path.stem}.html">{html.escape(title(nb))}</a></li>')
    params = json.dumps(nbformat.read(paths[0], as_version=4).metadata.get("papermill", {}).get("parameters", {}))
    (DEST / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>JTCSE companion: the executed notebooks</title>"
        "<body style='font-family:sans-serif;max-width:50em;margin:2em auto'>"
        "<h1>JTCSE companion: the executed notebooks</h1>"
        f"<p>Executed by <code>make reproduce</code> with parameters <code>{html.escape(params)}</code>.</p>"
        f"<ol>{''.join(items)}</ol></body>\n", encoding="utf8")
    print(f"{len(paths)} notebooks -> {DEST / 'index.html'}")


if __name__ == "__main__":
    main()
