"""Benchmark of the loss functions: the vectorised tensor-modulus term against the official per-sample loop.

    python bench/losses.py                      # CPU, and CUDA too when available
    python bench/losses.py --device cpu --repeats 30

The loop baseline is the official ``LTN_loss`` computation restated on our (anchor, positive) API:
one Python iteration per sentence, a Python ``if`` on the cosine (a host read: one GPU sync per
sample on CUDA), the constant 1e-4 for a negative cosine, l_TN of the pooler outputs / 2, then the
mean. The official code additionally builds the full (2B, 2B) cosine matrix by broadcasting a
(2B, 2B, H) tensor before the loop; the baseline leaves that out, so its times are a lower bound of
the official ones and the speed-ups below are conservative.

Each measurement: warm-up, then ``--repeats`` timed blocks (each block long enough to be above the
timer's resolution, the device synchronised before and after), reporting the median ms per call.
Both implementations run in the same process on the same inputs; they are checked to agree first.

CPU timings use one thread by default (``--threads``): on a shared, loaded machine the OpenMP
barriers of multi-threaded kernels make timings of small operations erratic (tens of ms for a
sub-millisecond op), while one thread gives stable numbers. The printed load average says how busy
the machine was; compare ratios from the same run only.
"""

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from jtcse_lib.losses import cross_nt_xent, nt_xent, tensor_modulus_loss  # noqa: E402


def loop_tensor_modulus_loss(anchor_cls, positive_cls, anchor_pooled, positive_pooled):
    """Per-sample loop with a Python branch, as the official LTN_loss computes the term."""
    b = anchor_cls.shape[0]
    total = 0.0
    for i in range(b):
        s = F.cosine_similarity(anchor_cls[i], positive_cls[i], dim=0)
        if s < 0.0:  # host read of a device value
            s = torch.tensor(1e-4, device=anchor_cls.device)
        m = torch.norm(anchor_pooled[i] - positive_pooled[i], p=2) / (
            torch.norm(anchor_pooled[i], p=2) + torch.norm(positive_pooled[i], p=2)
        ) / 2.0
        total = total + (-torch.log(s)) * m
    return total / b


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, repeats, warmup=3, min_block_s=0.01):
    """Median over ``repeats`` blocks of the wall time of one call of ``fn``, in ms."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, math.ceil(min_block_s / once))
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(samples)


def forward_backward(loss_fn, inputs):
    def run():
        loss = loss_fn(*inputs)
        torch.autograd.grad(loss, inputs)

    return run


def forward(loss_fn, inputs):
    return lambda: loss_fn(*inputs)


def leaves(n, b, h, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, generator=g).to(device).requires_grad_() for _ in range(n)]


def bench_device(device, sizes, hidden, repeats):
    rows, info = [], []
    for b in sizes:
        ac, pc, ap, pp = leaves(4, b, hidden, device, seed=b)  # random: about half the cosines negative
        args = (ac, pc, ap, pp)
        vec = tensor_modulus_loss(*args, variant="official")
        ref = loop_tensor_modulus_loss(*args)
        if not torch.allclose(vec, ref, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"vectorised and loop disagree at B={b}: {vec.item()} vs {ref.item()}")
        loop_f = time_ms(forward(loop_tensor_modulus_loss, args), device, repeats)
        vec_f = time_ms(forward(tensor_modulus_loss, args), device, repeats)
        loop_fb = time_ms(forward_backward(loop_tensor_modulus_loss, args), device, repeats)
        vec_fb = time_ms(forward_backward(tensor_modulus_loss, args), device, repeats)
        rows.append((device.type, b, hidden, loop_f, vec_f, loop_f / vec_f, loop_fb, vec_fb, loop_fb / vec_fb))

        v = leaves(4, b, hidden, device, seed=1000 + b)
        nt = time_ms(forward_backward(nt_xent, v[:2]), device, repeats)
        cross = time_ms(forward_backward(cross_nt_xent, v), device, repeats)
        info.append((device.type, b, hidden, nt, cross))
    return rows, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cpu + cuda when available)")
    parser.add_argument("--repeats", type=int, default=15, help="timed blocks per measurement (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="batch sizes B")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size H")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for torch (default 1; 0 keeps torch's own choice)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
        if devices[0].type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but CUDA is not available")

    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}{load}, float32, repeats {args.repeats}")
    for d in devices:
        if d.type == "cuda":
            print(f"CUDA device: {torch.cuda.get_device_name(d)}")

    all_rows, all_info = [], []
    for d in devices:
        rows, info = bench_device(d, args.sizes, args.hidden, args.repeats)
        all_rows += rows
        all_info += info

    print()
    print("tensor_modulus_loss (official variant): per-sample loop vs vectorised, median ms per call")
    print("| device | B | H | loop fwd | vectorised fwd | speed-up | loop fwd+bwd | vectorised fwd+bwd | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dev, b, h, lf, vf, rf, lfb, vfb, rfb in all_rows:
        print(f"| {dev} | {b} | {h} | {lf:.3f} | {vf:.3f} | {rf:.0f}x | {lfb:.3f} | {vfb:.3f} | {rfb:.0f}x |")
    print()
    print("contrastive losses, forward+backward, median ms per call (for information)")
    print("| device | B | H | nt_xent | cross_nt_xent |")
    print("|---|---:|---:|---:|---:|")
    for dev, b, h, nt, cross in all_info:
        print(f"| {dev} | {b} | {h} | {nt:.3f} | {cross:.3f} |")


if __name__ == "__main__":
    main()
