"""Build the offline book: `make book` -> build/book/index.html. No torch, no Node, no network.

One page per reference page of docs/ and per published notebook of docs/notebooks/ (executed outputs as they
are), in the order of PAGES. Every page is nbconvert's JupyterLab HTML with a sidebar listing every page,
previous/next links, and MathJax served from build/book/_static/mathjax (the copy that the pip package
jupyter-server-mathjax ships): nothing is loaded from the network, so the maths renders offline. Code cells
tagged `hide-input` (plotting) show their output only. `make book` installs only tools/book-requirements.txt into
its own environment (.venv-book), never the training environment.

    python tools/build_book.py [--dest build/book]
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor

REPO = Path(__file__).resolve().parent.parent
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # a configuration the package ships (config/)
# (part, source file relative to the repository); the index page is the first
PAGES = [
    ("Start", "docs/index.md"),
    ("The method", "docs/paper.md"),
    ("Notebooks", "docs/notebooks/01_modulus_constraint.ipynb"),
    ("Notebooks", "docs/notebooks/02_cross_attention.ipynb"),
    ("Notebooks", "docs/notebooks/03_training.ipynb"),
    ("Notebooks", "docs/notebooks/04_distillation.ipynb"),
    ("Notebooks", "docs/notebooks/05_sts_results.ipynb"),
    ("Notebooks", "docs/notebooks/06_ablations.ipynb"),
    ("Notebooks", "docs/notebooks/07_transfer.ipynb"),
    ("Reference", "docs/results.md"),
    ("Reference", "docs/reference.md"),
    ("Reference", "docs/gpu.md"),
    ("Reference", "docs/robustness.md"),
]


def page_name(source: str) -> str:
    return "index.html" if source == PAGES[0][1] else f"{Path(source).stem}.html"


def as_notebook(path: Path):
    """A notebook as nbformat reads it; a Markdown page as a notebook of one Markdown cell."""
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(path.read_text(encoding="utf8"))]
    return nb


def title(nb) -> str:
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    heading = next((line for line in first.splitlines() if line.startswith("# ")), "")
    return heading.lstrip("# ").strip() or "page"


def local_links(nb, sources: set[str], here: str) -> None:
    """Markdown links to another page of the book (.md or .ipynb, by repository path or relative to this page)
    point at its HTML page; links to figures/ point at the copy beside the pages."""
    base = Path(here).parent

    def rewrite(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        path, _, anchor = target.partition("#")
        if "://" in path or not path:
            return match.group(0)
        resolved = (base / path).as_posix() if not path.startswith("/") else path.lstrip("/")
        resolved = str(Path(resolved)).replace("\\", "/")
        for candidate in (resolved, path):
            normal = Path(candidate).as_posix()
            if normal in sources:
                return f"[{text}]({page_name(normal)}{'#' + anchor if anchor else ''})"
            if "figures/" in normal:
                return f"[{text}](figures/{normal.split('figures/', 1)[1]})"
        return match.group(0)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", rewrite, cell.source)


def navigation(current: int, titles: list[str]) -> str:
    items, part = [], None
    for i, ((section, source), name) in enumerate(zip(PAGES, titles)):
        if section != part:
            if part is not None:
                items.append("</ol>")
            items.append(f'<div class="book-part">{html.escape(section)}</div><ol>')
            part = section
        current_class = ' class="current"' if i == current else ""
        items.append(f'<li><a href="{page_name(source)}"{current_class}>{html.escape(name)}</a></li>')
    items.append("</ol>")
    return ('<nav class="book-nav"><div class="book-title"><a href="index.html">JTCSE companion</a></div>'
            + "".join(items) + "</nav>")


def pager(current: int, titles: list[str]) -> str:
    def link(i: int, arrow: str) -> str:
        if not 0 <= i < len(PAGES):
            return "<span></span>"
        label = f"{arrow} {html.escape(titles[i])}" if arrow == "←" else f"{html.escape(titles[i])} {arrow}"
        return f'<a href="{page_name(PAGES[i][1])}" rel="{"prev" if arrow == "←" else "next"}">{label}</a>'

    return f'<div class="book-pager">{link(current - 1, "←")}{link(current + 1, "→")}</div>'


def without_css_comments(page: str) -> str:
    """The page without comments inside its <style> blocks (JupyterLab's theme cites web pages in them), so a
    search of the book for network addresses finds only links a reader follows."""
    return re.sub(r"<style[^>]*>.*?</style>", lambda m: re.sub(r"/\*.*?\*/", "", m.group(0), flags=re.S), page,
                  flags=re.S)


def copy_mathjax(dest: Path) -> None:
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise SystemExit(f"jupyter-server-mathjax has no MathJax.js in {static}: reinstall it (make clean-book book)")
    target = dest / "_static" / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(static, target, ignore=shutil.ignore_patterns("*.md", "LICENSE"))


def build(dest: Path) -> list[Path]:
    missing = [s for _, s in PAGES if not (REPO / s).is_file()]
    if missing:
        raise SystemExit(f"the book's pages are missing: {', '.join(missing)} (the notebooks are published by "
                         "`make reproduce`)")
    dest.mkdir(parents=True, exist_ok=True)
    copy_mathjax(dest)
    if (REPO / "figures").is_dir():
        shutil.copytree(REPO / "figures", dest / "figures", dirs_exist_ok=True)
    exporter = HTMLExporter(template_name="book_template", extra_template_basedirs=[str(REPO / "tools")],
                            mathjax_url=f"_static/mathjax/MathJax.js?config={MATHJAX_CONFIG}")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"hide-input"},
                                                         remove_cell_tags={"remove-cell"}), enabled=True)
    notebooks = [as_notebook(REPO / s) for _, s in PAGES]
    titles = [title(nb) for nb in notebooks]
    sources = {s for _, s in PAGES}
    written = []
    for i, ((_, source), nb) in enumerate(zip(PAGES, notebooks)):
        local_links(nb, sources, source)
        body, _ = exporter.from_notebook_node(nb, resources={
            "metadata": {"name": titles[i]}, "book_nav": navigation(i, titles), "book_pager": pager(i, titles)})
        path = dest / page_name(source)
        path.write_text(without_css_comments(body), encoding="utf8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / "build" / "book")
    args = parser.parse_args()
    pages = build(args.dest)
    print(f"{len(pages)} pages -> {args.dest / 'index.html'}")


if __name__ == "__main__":
    main()
