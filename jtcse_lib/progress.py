"""Progress bars: widgets in JupyterLab, plain text on a terminal and in headless pipeline runs.

`python -m jtcse_lib pipeline` sets JTCSE_TEXT_PROGRESS=1 for its kernels: a widget bar is invisible when
papermill runs a notebook, a text bar reaches the terminal through the kernel's stderr.
"""

from __future__ import annotations

import os

TEXT_PROGRESS_ENV = "JTCSE_TEXT_PROGRESS"


def progress_bar(*args, **kwargs):
    """`tqdm(...)`: the text bar when $JTCSE_TEXT_PROGRESS is set, else tqdm.auto's choice."""
    if os.environ.get(TEXT_PROGRESS_ENV):
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
