"""The one prepared device check: what a GPU machine must show, in one script and one call.

    python bench/device_check.py --out results/gpu                      # on a GPU (well under 8 minutes)
    python bench/device_check.py --device cpu --quick --out /tmp/check  # on CPU, smaller settings (minutes)

Writes `OUT/device_check.json` and `OUT/device_check.md` (a short table) with:
1. the CUDA-only tests (`pytest -m cuda`: no host sync in a training step, fp16 overflow counting, TF32 restored,
   deterministic training repeats exactly); on CPU they are skipped, and the report says so;
2. `bench/train_step.py` for simcse/tncse/jtcse on a randomly initialised BERT-base twin at the paper's batch
   64 x 64 tokens (quick: 2 of its 12 layers, 16 x 32): seconds per step, peak memory, jtcse / (2 x simcse);
3. a short real training run of the `cpu` profile's SimCSE tower A on MiniLM (quick: 20 of its 60 steps),
   compared with the committed CPU run's STS-B dev score at the same steps (results/cpu/runs/);
4. a kill-and-resume on the device: a smoke-profile run killed with SIGKILL after its first checkpoint and resumed,
   against an uninterrupted run (bit-identical on CPU; on a GPU the report gives the largest difference);
5. encoding throughput of our evaluator against `SentenceTransformer.encode`, same model, sentences and device.
`python -m jtcse_lib plan --profile paper` reads the JSON to estimate time and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def cuda_tests() -> dict:
    """pytest -m cuda: counts of passed / failed / skipped, and the failures' names."""
    start = time.perf_counter()
    proc = run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
                "tests/test_cuda.py", "tests/test_losses.py"])
    lines = proc.stdout.strip().splitlines() or [proc.stderr[-300:]]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", lines[-1])}
    return {**counts, "summary": lines[-1].strip("= "), "failures": [x for x in lines if x.startswith("FAILED")],
            "seconds": round(time.perf_counter() - start, 1)}


def train_steps(device: str, quick: bool) -> dict:
    batch, length, layers = (16, 32, 2) if quick else (64, 64, 12)
    proc = run([sys.executable, "bench/train_step.py", "--bert-base", "--layers", str(layers), "--device", device,
                "--batch-size", str(batch), "--max-length", str(length), "--steps", "2" if quick else "10",
                "--warmup", "1" if quick else "3", "--profile", "paper", "--cross-layers", str(layers // 2),
                "--json"], timeout=1800)  # the paper's ratio: half the layers carry the cross-attention
    if proc.returncode:
        return {"error": proc.stderr[-1500:]}
    rows = json.loads(proc.stdout)
    out = {}
    for r in rows:
        kind = "simcse" if r["stage"].startswith("simcse") else r["stage"]
        peak = r.get("peak_cuda_allocated_gb", r.get("peak_rss_gb"))
        out[kind] = {"seconds_per_step": r["seconds_per_step"], "peak_gib": peak, "batch_size": batch,
                     "max_length": length, "layers": layers, "precision": r["precision"],
                     "cross_layers": r["cross_layers"],
                     "parameters": r["parameters"],
                     "memory": "peak CUDA allocated" if "peak_cuda_allocated_gb" in r else "peak RSS (CPU)"}
    if "simcse" in out and "jtcse" in out:
        out["jtcse_over_2_simcse"] = out["jtcse"]["seconds_per_step"] / (2 * out["simcse"]["seconds_per_step"])
    return out


def real_training(device: str, quick: bool, work: Path) -> dict:
    """The cpu profile's simcse_a on MiniLM, against the committed CPU run's dev curve."""
    from jtcse_lib import runs
    from jtcse_lib.config import load_profile
    from jtcse_lib.train import Trainer

    cfg = load_profile("cpu")
    reference = REPO / "results" / "cpu" / "runs" / runs.run_dir(cfg, "simcse_a").name / "metrics.jsonl"
    steps = 20 if quick else cfg.max_steps
    start = time.perf_counter()
    Trainer(cfg.replace(max_steps=steps, eval_every=20), "simcse_a", work / "simcse_a", device=device,
            progress=False).run()
    seconds = time.perf_counter() - start
    dev = {r["step"]: r["stsb_dev"] for r in map(json.loads, (work / "simcse_a" / "metrics.jsonl").open())
           if "stsb_dev" in r}
    out = {"steps": steps, "seconds": round(seconds, 1), "stsb_dev": dev}
    if reference.is_file():
        ref = {r["step"]: r["stsb_dev"] for r in map(json.loads, reference.open()) if "stsb_dev" in r}
        common = sorted(set(ref) & set(dev))
        out["cpu_reference"] = {s: ref[s] for s in common}
        out["max_abs_difference"] = max(abs(ref[s] - dev[s]) for s in common) if common else None
    else:
        out["cpu_reference"] = f"absent: {reference.relative_to(REPO)} (run `make reproduce` on CPU first)"
    return out


def kill_and_resume(device: str, work: Path) -> dict:
    """SIGKILL a smoke run after its first checkpoint, resume it, compare with an uninterrupted run."""
    args = ["-m", "jtcse_lib", "train", "--stage", "simcse_a", "--profile", "smoke", "--device", device,
            "--set", "max_steps=4", "checkpoint_every=2", "eval_every=2"]
    full, cut = work / "full", work / "cut"
    run([sys.executable, *args, "--out", str(full)])
    proc = subprocess.Popen([sys.executable, *args, "--out", str(cut)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 600
    while not (cut / "checkpoint" / "trainer_state.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run([sys.executable, *args, "--out", str(cut)])

    def records(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]

    a, b = records(full), records(cut)
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if isinstance(x.get(k), float) and k in y]
    return {"resumed_exit_status": resumed.returncode, "records_equal": a == b, "same_records": len(a) == len(b),
            "max_abs_difference": max(diffs) if diffs else None}


def encoding(device: str, quick: bool) -> dict:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from jtcse_lib.backbones import load_backbone, minilm_dir
    from jtcse_lib.data import load_stsb
    from jtcse_lib.evaluate import encode

    pairs = load_stsb("test")
    sentences = (pairs.sent1 + pairs.sent2)[: 500 if quick else None]
    model, tokenizer = load_backbone("minilm")
    model.to(device).eval()
    st = SentenceTransformer(str(minilm_dir()), device=device)

    def ours():
        return encode(model, tokenizer, sentences, pooling="mean", batch_size=128, progress=False)

    def theirs():
        return st.encode(sentences, batch_size=128, convert_to_numpy=True, show_progress_bar=False)

    a, b = ours(), theirs()  # also the warm-up
    a = a / np.linalg.norm(a, axis=1, keepdims=True)

    def timed(fn):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    t_ours, t_st = timed(ours), timed(theirs)
    return {"sentences": len(sentences), "ours_sentences_per_s": len(sentences) / t_ours,
            "sentence_transformers_sentences_per_s": len(sentences) / t_st, "ratio_ours_over_theirs": t_st / t_ours,
            "max_abs_difference_normalised": float(np.abs(a - b).max())}


def markdown(report: dict) -> str:
    ts, rt, kr, enc, ct = (report.get(k, {}) for k in ("train_step", "real_training", "kill_resume", "encoding",
                                                       "cuda_tests"))
    lines = [f"# Device check: {report['device']}{' (quick)' if report['quick'] else ''}", "",
             f"commit `{report['git_commit']}`, {report['seconds']:.0f} s in all", "",
             "| check | result |", "|---|---|",
             f"| CUDA-only tests | {ct.get('summary', '-')} |"]
    for kind in ("simcse", "tncse", "jtcse"):
        if kind in ts:
            r = ts[kind]
            lines.append(f"| train step, {kind}, random BERT-base ({r['layers']} layers), batch {r['batch_size']} x "
                         f"{r['max_length']} | "
                         f"{r['seconds_per_step']:.3f} s/step, {r['memory']} {r['peak_gib']:.2f} GiB |")
    if "jtcse_over_2_simcse" in ts:
        lines.append(f"| jtcse / (2 x simcse) | {ts['jtcse_over_2_simcse']:.3f} |")
    if rt:
        lines.append(f"| cpu-profile SimCSE tower A, {rt['steps']} steps | {rt['seconds']:.0f} s; STS-B dev "
                     f"{rt['stsb_dev']}; largest difference from the CPU run: {rt.get('max_abs_difference', '-')} |")
    if kr:
        lines.append(f"| SIGKILL + resume vs uninterrupted | records equal: {kr['records_equal']}; largest "
                     f"difference {kr['max_abs_difference']} |")
    if enc:
        lines.append(f"| encoding, MiniLM, {enc['sentences']} sentences | ours {enc['ours_sentences_per_s']:.0f}/s, "
                     f"sentence-transformers {enc['sentence_transformers_sentences_per_s']:.0f}/s "
                     f"({enc['ratio_ours_over_theirs']:.2f}x), max difference "
                     f"{enc['max_abs_difference_normalised']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="smaller settings (the CPU check)")
    parser.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--skip", nargs="*", default=[], choices=("cuda_tests", "train_step", "real_training",
                                                                  "kill_resume", "encoding"))
    args = parser.parse_args()

    import torch

    from jtcse_lib.provenance import machine, provenance

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {**provenance(device if device != "cpu" else None), "machine": machine(), "quick": args.quick,
              "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("JTCSE_RUNS_DIR", str(Path(tmp) / "runs"))
        checks = {"cuda_tests": cuda_tests, "train_step": lambda: train_steps(device, args.quick),
                  "real_training": lambda: real_training(device, args.quick, Path(tmp)),
                  "kill_resume": lambda: kill_and_resume(device, Path(tmp)),
                  "encoding": lambda: encoding(device, args.quick)}
        for name, check in checks.items():
            if name in args.skip:
                continue
            began = time.perf_counter()
            print(f"[device check] {name} ...", flush=True)
            try:
                report[name] = check()
            except Exception as e:  # one failing check must not cost the others' results
                report[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"[device check] {name} done in {time.perf_counter() - began:.0f} s", flush=True)
            report["seconds"] = time.perf_counter() - start
            (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
