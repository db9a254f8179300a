"""What a notebook shows its reader: the library's code beside its equation, widgets with a static fallback, and
conclusions written from the results.

* `show_code(fn)` displays a library function's source, read with `inspect.getsource` at run time, so the code a
  notebook explains can never drift from the code that runs (labml-style: the equation in Markdown above it).
* `interact(draw, k=(lo, hi, step, default), ...)` shows ipywidgets sliders in a live kernel (JupyterLab); where
  there is no frontend to drive them (the pipeline's papermill runs, whose executed copies are published) it
  draws the figure once at the defaults, so a published notebook holds a picture, not dead widget state.
* `say(text)` displays a paragraph of Markdown: the conclusions cells format their numbers from the result tables
  into it, so no number is typed.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap

STATIC_ENV = "JTCSE_STATIC_WIDGETS"  # set by the pipeline for its kernels: widgets draw their default figure


def code_of(obj, docstring: bool = False) -> str:
    """The source of a function or class; without its docstring unless asked (the notebook's text says it)."""
    source = textwrap.dedent(inspect.getsource(obj))
    if docstring:
        return source.rstrip()
    node = ast.parse(source).body[0]
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines = source.splitlines()
        first, last = body[0].lineno - 1, body[0].end_lineno  # the docstring's lines (1-based, inclusive)
        source = "\n".join(lines[:first] + lines[last:])
    return source.rstrip()


def show_code(obj, docstring: bool = False) -> None:
    """Display `obj`'s source as a highlighted block, headed by its module path and line."""
    from IPython.display import Markdown, display

    module = inspect.getmodule(obj)
    _, line = inspect.getsourcelines(obj)
    where = f"{module.__name__}.{obj.__qualname__}" if module else obj.__qualname__
    path = os.path.relpath(inspect.getsourcefile(obj), os.path.dirname(os.path.dirname(module.__file__)))
    display(Markdown(f"`{where}` ({path}, line {line}):\n\n```python\n{code_of(obj, docstring)}\n```"))


def live() -> bool:
    """Whether widgets can be driven here: an IPython kernel, ipywidgets installed, and not a pipeline run."""
    if os.environ.get(STATIC_ENV):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def interact(draw, **controls):
    """Sliders (live) or one static figure (published) for `draw(**values)`, which makes a matplotlib figure.

    Each control is `(low, high, step, default)` for a slider or a list of options (the first is the default).
    Returns the static figure when there is no frontend, else None."""
    import matplotlib.pyplot as plt

    defaults = {k: (v[0] if isinstance(v, list) else v[3]) for k, v in controls.items()}
    if not live():
        fig = draw(**defaults)
        plt.show()
        return fig
    import ipywidgets as w
    from IPython.display import display

    widgets = {k: (w.Dropdown(options=v, value=v[0], description=k) if isinstance(v, list) else
                   w.FloatSlider(min=v[0], max=v[1], step=v[2], value=v[3], description=k, continuous_update=False))
               for k, v in controls.items()}

    def redraw(**values):
        draw(**values)
        plt.show()

    display(w.VBox([w.HBox(list(widgets.values())), w.interactive_output(redraw, widgets)]))
    return None


def say(text: str) -> None:
    """Display a paragraph (or a list) of Markdown written from the results."""
    from IPython.display import Markdown, display

    display(Markdown(textwrap.dedent(text).strip()))
