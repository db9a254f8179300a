"""The training code's fingerprint: the smoke profile's metrics, pinned to TRAINING_VERSION (tools/golden_metrics.py).

The five smoke runs are trained afresh in a temporary run cache (about a minute and a half on 2 CPU cores).
"""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import golden_metrics  # noqa: E402

from jtcse_lib.config import TRAINING_VERSION  # noqa: E402


@pytest.mark.slow  # trains the five smoke stages on MiniLM
def test_smoke_training_is_what_this_training_version_trains():
    golden = json.loads(golden_metrics.GOLDEN.read_text())
    current = golden_metrics.smoke_metrics()
    found = golden_metrics.differences(golden["stages"], current)
    if golden["training_version"] == TRAINING_VERSION:
        assert not found, ("the smoke profile trains differently under the same TRAINING_VERSION; bump it in "
                           "jtcse_lib/config.py (old cached models are then retrained) and run "
                           "`python tools/golden_metrics.py --write`:\n" + "\n".join(found[:10]))
    else:
        pytest.fail(f"TRAINING_VERSION is {TRAINING_VERSION} but the golden file is for "
                    f"{golden['training_version']}: run `python tools/golden_metrics.py --write`")


def test_the_comparison_catches_a_changed_loss_and_tolerates_rounding():
    golden = {"simcse_a": [{"step": 1, "loss": 0.5, "lr": 3e-5}, {"step": 2, "stsb_dev": 80.0, "improved": True}]}
    rounded = {"simcse_a": [{"step": 1, "loss": 0.5 * (1 + 1e-7), "lr": 3e-5},
                            {"step": 2, "stsb_dev": 80.001, "improved": True}]}
    assert golden_metrics.differences(golden, rounded) == []
    changed = {"simcse_a": [{"step": 1, "loss": 0.51, "lr": 3e-5}, {"step": 2, "stsb_dev": 80.0, "improved": True}]}
    assert golden_metrics.differences(golden, changed) == ["simcse_a step 1: loss 0.5 -> 0.51"]
    extra = {"simcse_a": [{"step": 1, "loss": 0.5, "lr": 3e-5, "overflow_skipped": 0}, golden["simcse_a"][1]]}
    assert golden_metrics.differences(golden, extra) == ["simcse_a step 1: keys ['overflow_skipped'] differ"]
