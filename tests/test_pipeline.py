"""The ordered pipeline under the smoke profile, through papermill (run after nbval: the run cache is warm)."""

import pandas as pd

from jtcse_lib.pipeline import run_pipeline
from jtcse_lib.report import COLUMNS, figures_dir, results_dir
from jtcse_lib.runs import runs_root


def test_smoke_pipeline_writes_results_and_figures(real_data, monkeypatch):
    monkeypatch.setenv("JTCSE_DATA_DIR", str(real_data))
    timings = run_pipeline("smoke")
    assert list(timings) == ["01_modulus_constraint.ipynb", "02_cross_attention.ipynb", "03_training.ipynb",
                             "04_distillation.ipynb", "05_sts_results.ipynb", "06_ablations.ipynb",
                             "07_transfer.ipynb"]
    executed = runs_root() / "smoke" / "notebooks"
    assert all((executed / name).is_file() for name in timings)
    results = results_dir("smoke")
    sts = pd.read_csv(results / "sts_results.csv")
    assert list(sts.columns) == ["model", "seed", *COLUMNS]
    assert sts[COLUMNS].notna().all().all() and len(sts) >= 7
    assert {"training_runs.csv", "ablations.csv", "paired_comparisons.csv", "transfer_results.csv"} <= \
        {p.name for p in results.glob("*.csv")}
    for csv in results.glob("*.csv"):
        assert (results / f"{csv.stem}.meta.json").is_file()
    figures = {p.stem[:2] for p in figures_dir("smoke").glob("*.png")}
    assert figures >= {"01", "02", "03", "04", "05", "06", "07"}
