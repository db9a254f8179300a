"""Which device a command computes on: the one place that decides, and that refuses instead of crawling.

`device` (a config key and the `--device` flag; the flag wins) is `auto` (CUDA when usable, else the CPU), `cpu`,
`cuda` or `cuda:N`. A profile meant for GPUs sets `device: cuda`, so that a box whose CUDA is unusable (a CPU
build of torch, no GPU in the container, a driver older than the wheel's CUDA) stops at once with the reason and
the fix, before any model is downloaded or data is read, instead of training for months on the CPU. `--device
cpu` stays possible when asked for explicitly.
"""

from __future__ import annotations

import sys

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, in words, or None when it can."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    try:
        torch.cuda.init()  # raises with the driver's own message (e.g. "The NVIDIA driver on your system is too old")
    except Exception as e:  # noqa: BLE001  (RuntimeError, AssertionError, ...: the message is what matters)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use a GPU: {first}"
    if torch.cuda.device_count() == 0:
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU"
    return None


CUDA_FIX = ("on a GPU box: check `nvidia-smi`, and that the driver supports the wheel's CUDA (reinstall torch for "
            "your CUDA, e.g. make setup TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'"
            "); to run on the CPU anyway (slow), pass --device cpu (train, evaluate) or --set device=cpu (pipeline)")


def choose_device(requested: str | None = None, configured: str = "auto", quiet: bool = False) -> torch.device:
    """The device to compute on: `requested` (the --device flag) if given, else `configured` (the profile's
    `device`). `auto` takes CUDA when usable and says on stderr when it falls back to the CPU; `cuda` refuses
    with the reason when CUDA is unusable here."""
    name = requested or configured or "auto"
    if name == "auto":
        problem = cuda_problem()
        if problem is None:
            return torch.device("cuda")
        if not quiet:
            print(f"note: computing on the CPU ({problem})", file=sys.stderr)
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {name!r} is not a device name ({e})", "use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name}: only cpu and cuda are supported", "use auto, cpu or cuda")
    if dev.type == "cuda":
        problem = cuda_problem()
        source = "--device" if requested else "this profile (device: cuda)"
        if problem is not None:
            raise ConfigError(f"{source} asks for CUDA, but {problem}", CUDA_FIX)
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"{name} is not on this machine ({torch.cuda.device_count()} CUDA device(s))",
                              "use cuda (the first GPU) or a smaller index")
    return dev
