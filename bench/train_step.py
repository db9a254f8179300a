"""Training-step cost of the stages: seconds per optimizer step and peak memory, as ratios in one run.

    python bench/train_step.py                      # cpu profile settings, MiniLM, on CPU
    python bench/train_step.py --bert-base --device cuda --batch-size 64 --max-length 64 --profile paper \
        --precisions fp32 bf16                      # the paper's setting, in the paper's fp32 (TF32) and in bf16

Each stage (simcse, tncse, jtcse) runs in its own subprocess so that its peak resident memory (CPU) or peak
allocated memory (CUDA) is its own. Batches are synthetic: `batch_size` sentences of exactly `max_length` tokens
(the worst case of the profile), two dropout views each, the real model, losses and AdamW step, timed inside the
Trainer's training numerics (`Trainer._numerics()`: TF32 on CUDA for fp32 unless `deterministic`, as training runs).
`--bert-base` builds a randomly initialised BERT-base-sized twin from a config (no download): its cost is the
paper setting's cost (weights do not change the step time). Reported: median seconds per step over `--steps`
after `--warmup` steps, the ratios tncse / (2 x simcse) and jtcse / (2 x simcse), and peak memory.

Child mode (`--measure STAGE:PRECISION ...`, what bench/device_check.py calls): one process measures each pair in
turn and prints one JSON line per measurement as soon as it is done, so a timeout keeps what was measured. With
more than one pair in a process, CUDA peaks are reset between them (`allocated_before_gib` shows what was left);
the CPU's peak RSS is the process's high-water mark.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # jtcse_lib without a pip install (a bare GPU machine)


def measure(args, stage: str, precision: str | None) -> dict:
    import torch

    from jtcse_lib.config import load_profile
    from jtcse_lib.train import Trainer

    overrides = [f"batch_size={args.batch_size}", f"max_length={args.max_length}"] if args.batch_size else []
    # the batches are synthetic: a small shipped corpus only lets the Trainer build (the paper's corpus need not exist)
    overrides += ["corpus=wiki1m_subset", f"corpus_limit={max(2 * (args.batch_size or 64), 64)}", "max_steps=1"]
    if args.backbone:
        overrides.append(f"backbone={args.backbone}")
    if args.cross_layers is not None:
        overrides.append(f"cross_attention_layers={args.cross_layers}")
    if precision:
        overrides.append(f"precision={precision}")
    cfg = load_profile(args.profile, overrides)
    cuda = args.device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    allocated_before = torch.cuda.memory_allocated() / 2**30 if cuda else None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, stage, tmp, device=args.device, progress=False)
        model = trainer.model.train()
        device = trainer.device
        B, L = cfg.batch_size, cfg.max_length
        ids = torch.randint(1000, 20000, (B, L))
        ids[:, 0], ids[:, -1] = trainer.tokenizer.cls_token_id or 0, trainer.tokenizer.sep_token_id or 2
        batch = {"input_ids": ids.repeat(2, 1).to(device), "attention_mask": torch.ones(2 * B, L, dtype=torch.long,
                                                                                         device=device)}
        if "token_type_ids" in trainer.tokenizer.model_input_names:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        times, cpu_times = [], []
        with trainer._numerics():  # the numerics training runs under (TF32 on CUDA), not the process defaults
            numerics = {"tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
                        "deterministic": torch.are_deterministic_algorithms_enabled()}
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
        towers = model.towers() if hasattr(model, "towers") else [model]
        out = {"stage": stage, "seconds_per_step": statistics.median(times),
               "cpu_seconds_per_step": statistics.median(cpu_times), "threads": torch.get_num_threads(),
               "batch_size": B, "max_length": L, "steps": args.steps, "warmup": args.warmup,
               "device": str(device), "precision": {None: "fp32", torch.bfloat16: "bf16",
                                                    torch.float16: "fp16"}[trainer.amp_dtype],
               **numerics, "layers": towers[0].config.num_hidden_layers,
               "cross_layers": getattr(model, "cross_layers", None),
               "parameters": sum(p.numel() for p in model.parameters()),
               "parameter_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if device.type == "cuda":
            out["peak_cuda_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            out["allocated_before_gib"] = allocated_before
        del trainer, model, batch
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


def child_command(args, pairs: list[str], backbone: str | None) -> list[str]:
    """The command line of a child that measures `pairs` ("stage:precision")."""
    cmd = [sys.executable, *(["-S"] if sys.flags.no_site else []), str(Path(__file__).resolve()),
           "--measure", *pairs, "--profile", args.profile, "--device", args.device,
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if backbone:
        cmd += ["--backbone", backbone]
    if args.cross_layers is not None:
        cmd += ["--cross-layers", str(args.cross_layers)]
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--stages", nargs="+", default=["simcse_a", "tncse", "jtcse"])
    parser.add_argument("--precisions", nargs="+", default=[None], choices=(None, "fp32", "bf16", "fp16"),
                        help="default: the profile's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's")
    parser.add_argument("--max-length", type=int, default=None, help="default: the profile's")
    parser.add_argument("--cross-layers", default=None, help="cross_attention_layers (default: the profile's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bert-base", action="store_true", help="random BERT-base twin (the paper's size)")
    parser.add_argument("--layers", type=int, default=12, help="with --bert-base: keep this many of its 12 layers")
    parser.add_argument("--backbone", default=None, help="a model folder instead of the profile's backbone")
    parser.add_argument("--measure", nargs="+", default=None, metavar="STAGE:PRECISION",
                        help=argparse.SUPPRESS)  # internal: the child measures these and prints JSON lines
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    if args.measure:  # child process: one JSON line per measurement, flushed at once
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        for pair in args.measure:
            stage, _, precision = pair.partition(":")
            print(json.dumps(measure(args, stage, precision or None)), flush=True)
        return
    if args.batch_size is None or args.max_length is None:
        from jtcse_lib.config import load_profile

        cfg = load_profile(args.profile)
        args.batch_size = args.batch_size or cfg.batch_size
        args.max_length = args.max_length or cfg.max_length
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or (bert_base_folder(Path(tmp) / "bert-base-random", args.layers)
                                     if args.bert_base else None)
        rows = []
        for stage in args.stages:
            pairs = [f"{stage}:{p}" if p else stage for p in args.precisions]
            proc = subprocess.run(child_command(args, pairs, backbone), capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{stage} failed:\n{proc.stderr[-3000:]}")
            rows += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    first = rows[0]
    print(f"backbone: {'random BERT-base' if args.bert_base else args.backbone or args.profile + ' profile backbone'}"
          f", batch {first['batch_size']} x 2 views x {first['max_length']} tokens, device {first['device']}, "
          f"median of {args.steps} steps after {args.warmup} warm-up, inside the training numerics")
    mem_key = "peak_cuda_allocated_gb" if "peak_cuda_allocated_gb" in first else "peak_rss_gb"
    print(f"{'stage':<9}{'precision':>10}{'tf32':>6}{'s/step':>9}{'cpu s/step':>12}{'params (M)':>12}{mem_key:>24}"
          "  cross layers")
    for r in rows:
        print(f"{r['stage']:<9}{r['precision']:>10}{r['tf32']!s:>6}{r['seconds_per_step']:>9.3f}"
              f"{r['cpu_seconds_per_step']:>12.3f}{r['parameters'] / 1e6:>12.1f}{r[mem_key]:>24.2f}  "
              f"{r['cross_layers']}")
    for precision in dict.fromkeys(r["precision"] for r in rows):
        for key, label in (("seconds_per_step", "wall"), ("cpu_seconds_per_step", "process CPU time")):
            by = {r["stage"]: r[key] for r in rows if r["precision"] == precision}
            if "simcse_a" in by:
                ratios = ", ".join(f"{s} / (2 x simcse) = {by[s] / (2 * by['simcse_a']):.3f}"
                                   for s in ("tncse", "jtcse") if s in by)
                print(f"{precision}, {label}: {ratios}")


if __name__ == "__main__":
    main()
