"""jtcse_lib.display: library code shown from the library, widgets that fall back to a static figure."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from jtcse_lib import display, losses  # noqa: E402


def test_code_of_is_the_live_source_without_its_docstring():
    code = display.code_of(losses.simcse_loss)
    assert code.startswith("def simcse_loss(") and "F.cross_entropy(" in code
    assert "Unsupervised SimCSE's own loss" not in code  # the docstring went
    assert "Unsupervised SimCSE's own loss" in display.code_of(losses.simcse_loss, docstring=True)
    assert compile(code, "<shown>", "exec")  # still valid Python


def test_show_code_names_where_the_code_lives(capsys):
    shown = []
    import IPython.display

    original = IPython.display.display
    IPython.display.display = lambda obj: shown.append(obj.data)
    try:
        display.show_code(losses.nt_xent)
    finally:
        IPython.display.display = original
    assert shown[0].startswith("`jtcse_lib.losses.nt_xent` (jtcse_lib/losses.py, line ")
    assert "```python\ndef nt_xent(" in shown[0]


def test_without_a_frontend_interact_draws_the_default_figure_once(monkeypatch):
    monkeypatch.setenv(display.STATIC_ENV, "1")
    calls = []

    def draw(k, t, variant):
        calls.append((k, t, variant))
        return plt.figure()

    fig = display.interact(draw, k=(0.1, 3.0, 0.1, 1.5), t=(-1.0, 1.0, 0.05, 0.5), variant=["official", "paper"])
    assert calls == [(1.5, 0.5, "official")] and fig is not None
    assert not display.live()
