"""The logged learning-rate search behind params/cpu.yaml (STS-B dev only; no test set is read).

    python tools/calibrate_cpu.py

Runs go to runs/calibration/ (never the cache `make reproduce` uses, so its wall time is measured from
nothing); the table of every run, with its best STS-B dev score and step, goes to results/cpu/calibration.csv.
Stage 1 searches the SimCSE learning rate on tower A; tower B takes the runner-up (two different encoders,
as the paper's stage 1 uses two learning rates). Stage 2 searches the joint learning rate on JTCSE.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("JTCSE_RUNS_DIR", str(ROOT / "runs" / "calibration"))
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from jtcse_lib import runs  # noqa: E402
from jtcse_lib.config import load_profile  # noqa: E402
from jtcse_lib.provenance import provenance  # noqa: E402

# the budget-fixed settings (not searched; see params/cpu.yaml for why)
FIXED = {"batch_size": 32, "max_length": 32, "max_steps": 60, "eval_every": 20, "dev_pairs": None, "seeds": [42]}
LR_STAGE1 = [1e-5, 3e-5, 1e-4]
LR_STAGE2 = [5e-6, 2e-5]


def record(cfg, stage: str, lr: float, started: float) -> dict:
    s = runs.summary(cfg, stage)
    return {"stage": stage, "lr": lr, "best_stsb_dev": round(s["best_stsb_dev"], 2), "best_step": s["best_step"],
            "steps": s["steps"], "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "train_wall_seconds": round(s["wall_seconds"]), "total_seconds": round(time.perf_counter() - started)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "cpu" / "calibration.csv"))
    args = parser.parse_args()
    base = load_profile("cpu", FIXED)
    rows = []

    def train(cfg, stage: str, lr: float) -> None:
        """Train `stage` under `cfg` (or reuse it), add its row and rewrite the table."""
        started = time.perf_counter()
        runs.trained_model(cfg, stage)
        rows.append(record(cfg, stage, lr, started))
        table = pd.DataFrame(rows)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(table.to_string(index=False), flush=True)

    for lr in LR_STAGE1:
        train(base.replace(lr=lr), "simcse_a", lr)
    ranked = sorted((r for r in rows if r["stage"] == "simcse_a"), key=lambda r: -r["best_stsb_dev"])
    lr_a, lr_b = ranked[0]["lr"], ranked[1]["lr"]
    print(f"stage 1: simcse_a lr={lr_a:g} (best), simcse_b lr={lr_b:g} (runner-up)", flush=True)
    base = base.replace(lr=lr_a, simcse_b={"lr": lr_b})
    train(base, "simcse_b", lr_b)
    for lr in LR_STAGE2:
        train(base.replace(jtcse={"lr": lr}), "jtcse", lr)
    Path(args.out).with_suffix(".meta.json").write_text(
        pd.Series({"fixed": FIXED, **provenance()}).to_json(indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
