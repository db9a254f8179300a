"""Where the library reads and writes: one output root, and the shipped folders beside the package.

The output root holds `runs/` (the run cache), `results/`, `figures/` and `.cache/`. It is `$JTCSE_HOME` when set,
else the source checkout this package is imported from (the repository's own folders, as a reader expects), else
the working directory (an installed wheel never writes into site-packages). `$JTCSE_RUNS_DIR` and
`$JTCSE_CACHE_DIR` move the run cache and the derived-data cache on their own (a larger disk).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV, RUNS_ENV, CACHE_ENV = "JTCSE_HOME", "JTCSE_RUNS_DIR", "JTCSE_CACHE_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent
# the source checkout holding this package, or None for an installed wheel
CHECKOUT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() else None


def output_root() -> Path:
    """$JTCSE_HOME, else the checkout, else the working directory (absolute: notebooks run in notebooks/)."""
    return Path(os.environ.get(HOME_ENV) or CHECKOUT or Path.cwd()).expanduser().resolve()


def runs_root() -> Path:
    """The run cache: $JTCSE_RUNS_DIR, else runs/ under the output root."""
    return Path(os.environ.get(RUNS_ENV) or output_root() / "runs").expanduser().resolve()


def cache_root() -> Path:
    """Derived data (the unpacked shipped data, tokenised corpora): $JTCSE_CACHE_DIR, else .cache/ under the root."""
    return Path(os.environ.get(CACHE_ENV) or output_root() / ".cache").expanduser().resolve()


def source_dir(name: str) -> Path:
    """A folder the checkout ships (params, data, notebooks, docs): in the checkout, else under the output root."""
    return (CHECKOUT or output_root()) / name
