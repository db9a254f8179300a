"""How a result was made: git commit, device, library versions. Every results file embeds this."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .paths import CHECKOUT

_PACKAGES = ("torch", "transformers", "sentence-transformers", "numpy", "scipy", "scikit-learn", "jtcse_lib")


# A pipeline pins here the commit it started from: the result files its notebooks rewrite along the way would
# otherwise mark the tree dirty for every later notebook.
PINNED_COMMIT_ENV = "JTCSE_GIT_COMMIT"


def git_commit(repo: Path | None = None) -> str:
    """The HEAD commit of the checkout holding this package, with '+dirty' if the tree has changes
    ($JTCSE_GIT_COMMIT instead, when a pipeline has pinned it); "unknown" outside a git checkout."""
    if os.environ.get(PINNED_COMMIT_ENV):
        return os.environ[PINNED_COMMIT_ENV]
    repo = repo or CHECKOUT
    if repo is None:  # an installed wheel
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    """The host a timing was measured on: CPU model, logical cores, memory."""
    info = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["processor"] = next(l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(next(l.split()[1] for l in meminfo.splitlines() if l.startswith("MemTotal")))
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: keep what platform reports
    return info


def device_description(device=None) -> str:
    """'cpu (N threads, <processor>)' or the CUDA device name."""
    import torch

    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def provenance(device=None, timestamp: bool = True) -> dict:
    """Commit, device and versions; with `timestamp` also when (result tables leave it out, so that a re-run that
    changes no number changes no file)."""
    out = {"git_commit": git_commit(), "device": device_description(device), "versions": versions()}
    if timestamp:
        out["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return out
