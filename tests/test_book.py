"""The offline book (tools/build_book.py): every page, its navigation, and nothing loaded from the network."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
build_book = importlib.import_module("build_book")


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    dest = tmp_path_factory.mktemp("book")
    return dest, build_book.build(dest)


@pytest.mark.slow
def test_every_page_is_built_with_a_sidebar_of_every_page_and_its_neighbours(book):
    dest, pages = book
    names = [build_book.page_name(source) for _, source in build_book.PAGES]
    assert [p.name for p in pages] == names
    for i, page in enumerate(pages):
        text = page.read_text(encoding="utf8")
        nav = re.search(r'<nav class="book-nav">(.*?)</nav>', text, flags=re.S).group(1)
        assert re.findall(r'href="([^"]+)"', nav)[1:] == names  # the title link, then every page in order
        current = [a for a in re.findall(r"<a [^>]*>", nav) if 'class="current"' in a]
        assert len(current) == 1 and f'href="{names[i]}"' in current[0]
        pager = re.search(r'<div class="book-pager">(.*?)</div>', text, flags=re.S).group(1)
        assert ('rel="prev"' in pager) == (i > 0) and ('rel="next"' in pager) == (i < len(pages) - 1)
        if i:
            assert re.search(rf'<a (?=[^>]*href="{re.escape(names[i - 1])}")(?=[^>]*rel="prev")', pager)


@pytest.mark.slow
def test_nothing_is_loaded_from_the_network_and_mathjax_is_served_locally(book):
    dest, pages = book
    for page in pages:
        text = page.read_text(encoding="utf8")
        loaded = re.findall(r'<script[^>]*\bsrc="([^"]+)"', text) + re.findall(r'<link[^>]*\bhref="([^"]+)"', text)
        loaded += re.findall(r'@import\s+(?:url\()?["\']?([^"\')\s;]+)', text)
        loaded += re.findall(r'url\(["\']?((?:https?:)?//[^"\')]+)', text)
        assert loaded and all("//" not in url for url in loaded), (page.name, loaded)
        assert "_static/mathjax/MathJax.js" in text
    config = build_book.MATHJAX_CONFIG.split(",")[0]
    assert (dest / "_static" / "mathjax" / "MathJax.js").is_file()
    assert (dest / "_static" / "mathjax" / "config" / f"{config}.js").is_file()


@pytest.mark.slow
def test_links_between_pages_point_at_the_built_pages(book):
    dest, pages = book
    index = (dest / "index.html").read_text(encoding="utf8")
    assert 'href="paper.html"' in index and 'href="01_modulus_constraint.html"' in index
    for page in pages:
        for target in re.findall(r'href="([^"#:]+\.html)', page.read_text(encoding="utf8")):
            assert (dest / target).is_file(), (page.name, target)


def test_hidden_input_cells_show_only_their_output(tmp_path):
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('plotting code here')", metadata={"tags": ["hide-input"]})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the figure\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    exporter = HTMLExporter(template_name="book_template", extra_template_basedirs=[str(REPO / "tools")])
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"hide-input"}), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"book_nav": "", "book_pager": ""})
    assert "the figure" in body and "plotting code here" not in body
