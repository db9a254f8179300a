"""The cost of gathering negatives across processes: what `jtcse_lib.distributed.gather` adds to a step.

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/gather.py [--rows 16 --hidden 384]

Each rank times a forward + backward of `distributed.gather` on a (rows, hidden) float32 tensor that requires grad
(the [CLS] rows of one view of its share of the batch), median over repeats, and prints the bytes each rank receives
per call. A JTCSE step makes 8 such gathers (two views x four contrastive terms) and as many backward exchanges.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jtcse_lib import distributed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="rows per rank (batch_size / world_size)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    x = torch.randn(args.rows, args.hidden, requires_grad=True)
    times = []
    for i in range(args.repeats + 5):
        distributed.barrier()
        start = time.perf_counter()
        distributed.gather(x).square().sum().backward()
        if i >= 5:
            times.append(time.perf_counter() - start)
    w = distributed.world_size()
    received = (w - 1) * args.rows * args.hidden * 4
    if distributed.is_main():
        print(f"{w} ranks, ({args.rows}, {args.hidden}) float32 per rank: {received / 1024:.1f} KiB received per "
              f"gather (and as much in its backward); forward + backward {statistics.median(times) * 1e3:.2f} ms "
              f"(median of {args.repeats}); a JTCSE step makes 8: {8 * statistics.median(times) * 1e3:.1f} ms, "
              f"{8 * 2 * received / 2**20:.2f} MiB")
    distributed.cleanup()


if __name__ == "__main__":
    main()
