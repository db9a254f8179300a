"""Training-step cost of the stages: seconds per optimizer step and peak memory, as ratios in one run.

    python bench/train_step.py                      # cpu profile settings, MiniLM, on CPU
    python bench/train_step.py --bert-base --device cuda --batch-size 64 --max-length 64   # the paper's setting

Each stage (simcse, tncse, jtcse) runs in its own subprocess so that its peak resident memory (CPU) or peak
allocated memory (CUDA) is its own. Batches are synthetic: `batch_size` sentences of exactly `max_length` tokens
(the worst case of the profile), two dropout views each, the real model, losses and AdamW step.
`--bert-base` builds a randomly initialised BERT-base-sized twin from a config (no download): its cost is the
paper setting's cost (weights do not change the step time). Reported: median seconds per step over `--steps`
after `--warmup` steps, the ratios tncse / (2 x simcse) and jtcse / (2 x simcse), and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(args) -> dict:
    import torch

    from jtcse_lib.config import load_profile
    from jtcse_lib.train import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"batch_size={args.batch_size}", f"max_length={args.max_length}"] if args.batch_size else []
    # the batches are synthetic: a small shipped corpus only lets the Trainer build (the paper's corpus need not exist)
    overrides += ["corpus=wiki1m_subset", f"corpus_limit={max(2 * (args.batch_size or 64), 64)}", "max_steps=1"]
    if args.backbone:
        overrides.append(f"backbone={args.backbone}")
    if args.cross_layers is not None:
        overrides.append(f"cross_attention_layers={args.cross_layers}")
    cfg = load_profile(args.profile, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, args.stage, tmp, device=args.device, progress=False)
        model = trainer.model.train()
        device = trainer.device
        B, L = cfg.batch_size, cfg.max_length
        ids = torch.randint(1000, 20000, (B, L))
        ids[:, 0], ids[:, -1] = trainer.tokenizer.cls_token_id or 0, trainer.tokenizer.sep_token_id or 2
        batch = {"input_ids": ids.repeat(2, 1).to(device), "attention_mask": torch.ones(2 * B, L, dtype=torch.long,
                                                                                         device=device)}
        if "token_type_ids" in trainer.tokenizer.model_input_names:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, cpu_times = [], []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.train_step([batch])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        out = {"stage": args.stage, "seconds_per_step": statistics.median(times),
               "cpu_seconds_per_step": statistics.median(cpu_times), "threads": torch.get_num_threads(),
               "batch_size": B, "max_length": L,
               "device": str(device), "precision": str(trainer.amp_dtype or "fp32"),
               "cross_layers": getattr(model, "cross_layers", None),
               "parameters": sum(p.numel() for p in model.parameters()),
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if device.type == "cuda":
            out["peak_cuda_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out


def bert_base_folder(folder: Path, layers: int = 12) -> str:
    """A randomly initialised BERT-base (bert-base-uncased's config; `layers` of its 12) with the same uncased
    vocabulary."""
    import torch
    from transformers import BertConfig, BertModel

    from jtcse_lib.backbones import load_tokenizer

    torch.manual_seed(0)
    BertModel(BertConfig(num_hidden_layers=layers)).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)  # the same 30522-token uncased BERT vocabulary
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--stages", nargs="+", default=["simcse_a", "tncse", "jtcse"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's")
    parser.add_argument("--max-length", type=int, default=None, help="default: the profile's")
    parser.add_argument("--cross-layers", default=None, help="cross_attention_layers (default: the profile's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bert-base", action="store_true", help="random BERT-base twin (the paper's size)")
    parser.add_argument("--layers", type=int, default=12, help="with --bert-base: keep this many of its 12 layers")
    parser.add_argument("--backbone", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    if args.stage:  # child process: measure one stage, print JSON
        print(json.dumps(measure(args)))
        return
    if args.batch_size is None or args.max_length is None:
        from jtcse_lib.config import load_profile

        cfg = load_profile(args.profile)
        args.batch_size = args.batch_size or cfg.batch_size
        args.max_length = args.max_length or cfg.max_length
    with tempfile.TemporaryDirectory() as tmp:
        backbone = bert_base_folder(Path(tmp) / "bert-base-random", args.layers) if args.bert_base else None
        rows = []
        for stage in args.stages:
            cmd = [sys.executable, __file__, "--stage", stage, "--profile", args.profile, "--device", args.device,
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if backbone:
                cmd += ["--backbone", backbone]
            if args.cross_layers is not None:
                cmd += ["--cross-layers", str(args.cross_layers)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{stage} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    first = rows[0]
    print(f"backbone: {'random BERT-base' if args.bert_base else args.profile + ' profile backbone'}, "
          f"batch {first['batch_size']} x 2 views x {first['max_length']} tokens, device {first['device']}, "
          f"precision {first['precision']}, median of {args.steps} steps after {args.warmup} warm-up")
    mem_key = "peak_cuda_allocated_gb" if "peak_cuda_allocated_gb" in first else "peak_rss_gb"
    print(f"{'stage':<8}{'s/step':>9}{'cpu s/step':>12}{'params (M)':>12}{mem_key:>24}  cross layers")
    for r in rows:
        print(f"{r['stage']:<8}{r['seconds_per_step']:>9.3f}{r['cpu_seconds_per_step']:>12.3f}"
              f"{r['parameters'] / 1e6:>12.1f}{r[mem_key]:>24.2f}  {r['cross_layers']}")
    for key, label in (("seconds_per_step", "wall"), ("cpu_seconds_per_step", "process CPU time")):
        by = {r["stage"]: r[key] for r in rows}
        if "simcse_a" in by:
            ratios = ", ".join(f"{s} / (2 x simcse) = {by[s] / (2 * by['simcse_a']):.3f}" for s in ("tncse", "jtcse")
                               if s in by)
            print(f"{label}: {ratios}")


if __name__ == "__main__":
    main()
