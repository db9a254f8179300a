"""Training on several devices with torch.distributed: set-up from torchrun's environment, and the gathers a
contrastive loss needs. In one process every function here is a no-op, so the single-device code path is the same.

Why a gather *with* gradient: an in-batch contrastive loss scores each anchor against every candidate of the batch.
With DDP each rank holds 1/W of the global batch; it gathers the candidates of every rank (`gather`), computes its
anchors' mean loss, and backpropagates through the gather, whose backward sums every rank's gradient for a row into
the rank that owns it. DDP then averages the ranks' parameter gradients:

    (1/W) sum_r d mean_r / d theta  =  d [(1/W) sum_r mean_r] / d theta  =  d mean_global / d theta

(equal local batches), the gradient of the single-device loss on the global batch. A gather without gradient
(accelerate's `gather`) would drop the other ranks' share of each row's gradient.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError

# rank 0 scores STS-B dev and saves models while the others wait at a barrier: minutes for BERT-base
TIMEOUT = timedelta(minutes=60)


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | None = None) -> torch.device:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); returns this rank's device (its
    LOCAL_RANK-th GPU on CUDA). A single process returns `device` unchanged and starts nothing."""
    if not launched():
        return device if device is not None else torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)",
                              "start at most as many processes per node as GPUs (--nproc)")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def gather(x: torch.Tensor) -> torch.Tensor:
    """The rows of every rank, in rank order, with gradient: (n, H) -> (W n, H); x itself in one process.
    sentence-transformers' `all_gather(with_grad=True)`, i.e. `torch.distributed.nn.all_gather`."""
    if not active():
        return x
    from sentence_transformers.util import all_gather

    return all_gather(x, with_grad=True)


@torch.no_grad()
def gather_constant(x: torch.Tensor) -> torch.Tensor:
    """The rows of every rank, without gradient (a frozen teacher's vectors): (n, H) -> (W n, H)."""
    if not active():
        return x
    from sentence_transformers.util import all_gather

    return all_gather(x.contiguous())


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (for logging: the global batch's loss)."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (e.g. whether the dev score improved)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (e.g. each rank's RNG state for the checkpoint)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any rank (an all-reduce of one number; the flag itself in one process)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def launch(nproc: int, argv: list[str]) -> int:
    """Run the `train` command `argv` in `nproc` processes on this node with torchrun (torch.distributed.run
    --standalone), each told nproc=N; returns 0, or 2 after one line naming the failure when a process failed.

    Several nodes: start torchrun by hand on each node, e.g. `torchrun --nnodes 2 --node_rank R --nproc_per_node 8
    --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m jtcse_lib train ... --set nproc=16`; `--out` must then be
    on a file system every node sees (rank 0 writes the run folder, every rank reads its checkpoint on resume)."""
    import subprocess
    import sys

    # drop --nproc N: the children are the N processes
    child = [a for i, a in enumerate(argv) if a != "--nproc" and not a.startswith("--nproc=")
             and (i == 0 or argv[i - 1] != "--nproc")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "jtcse_lib", *child, "--set", f"nproc={nproc}"]
    code = subprocess.run(cmd).returncode
    if code == 130:  # stopped by Ctrl-C / SIGTERM: the ranks checkpointed and said how to resume
        return 130
    if code:
        print(f"error: distributed training ({nproc} processes, torchrun) stopped with exit status {code}; the lines "
              "above name the rank that failed and why. Fix: remove the cause and run the same command again: it "
              "resumes from the last checkpoint", file=sys.stderr)
        return 2
    return 0
