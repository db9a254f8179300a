"""The smoke profile's training metrics, pinned: tests/golden/smoke_metrics.json.

    python tools/golden_metrics.py          # compare the current code's smoke training with the golden file
    python tools/golden_metrics.py --write  # after bumping jtcse_lib.config.TRAINING_VERSION: rewrite the file

CPU training is deterministic, so the smoke profile's metrics.jsonl (wall times dropped) is a fingerprint of what
the training code computes. tests/test_golden.py fails when it changes while TRAINING_VERSION stays the same: a
behaviour change must bump the version (which also keys the run cache, so no model of the old code is reused),
while a pure refactor keeps both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GOLDEN = REPO / "tests" / "golden" / "smoke_metrics.json"


def smoke_metrics(progress: bool = False) -> dict:
    """{stage: metrics.jsonl records without wall times} of the smoke profile's five stages, trained afresh in a
    temporary run cache (a cached run would show what older code trained under the same key)."""
    import os
    import tempfile

    from jtcse_lib import runs
    from jtcse_lib.config import STAGES, load_profile

    cfg = load_profile("smoke")
    out, saved = {}, os.environ.get("JTCSE_RUNS_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JTCSE_RUNS_DIR"] = tmp
        try:
            for stage in STAGES:
                runs.trained_model(cfg, stage, progress=progress)
                out[stage] = [{k: v for k, v in r.items() if k != "seconds"} for r in runs.metrics(cfg, stage)]
        finally:
            os.environ.pop("JTCSE_RUNS_DIR") if saved is None else os.environ.update(JTCSE_RUNS_DIR=saved)
    return out


def differences(golden: dict, current: dict, rel: float = 1e-5, abs_dev: float = 0.01) -> list[str]:
    """Where `current` departs from `golden`: other records or keys, or numbers beyond float-rounding tolerance
    (losses relative `rel`, STS-B dev scores `abs_dev` points)."""
    found = []
    for stage in sorted(set(golden) | set(current)):
        a, b = golden.get(stage, []), current.get(stage, [])
        if len(a) != len(b):
            found.append(f"{stage}: {len(a)} records -> {len(b)}")
            continue
        for ra, rb in zip(a, b):
            if set(ra) != set(rb):
                found.append(f"{stage} step {ra.get('step')}: keys {sorted(set(ra) ^ set(rb))} differ")
                continue
            for key, va in ra.items():
                vb = rb[key]
                if isinstance(va, float) and isinstance(vb, float):
                    tol = abs_dev if "dev" in key else rel * max(abs(va), 1e-12)
                    same = math.isclose(va, vb, abs_tol=tol) or (math.isnan(va) and math.isnan(vb))
                else:
                    same = va == vb
                if not same:
                    found.append(f"{stage} step {ra.get('step')}: {key} {va!r} -> {vb!r}")
    return found


def main() -> int:
    from jtcse_lib.config import TRAINING_VERSION

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the golden file for this TRAINING_VERSION")
    args = parser.parse_args()
    current = smoke_metrics(progress=True)
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({"training_version": TRAINING_VERSION, "stages": current}, indent=1) + "\n")
        print(f"wrote {GOLDEN} for TRAINING_VERSION {TRAINING_VERSION}")
        return 0
    golden = json.loads(GOLDEN.read_text())
    found = differences(golden["stages"], current)
    print("\n".join(found) or f"identical to {GOLDEN.name} (TRAINING_VERSION {golden['training_version']})")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
