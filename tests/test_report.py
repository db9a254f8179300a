"""Results tables: what write_table stores, and the mean ± sd formatting of the README."""

import json

import pandas as pd

from jtcse_lib import report
from jtcse_lib.report import COLUMNS, format_mean_sd, write_table


def test_write_table_keeps_small_values_and_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "results_dir", lambda profile: tmp_path)
    table = pd.DataFrame({"stage": ["simcse_a"], "lr": [3e-5], "score": [83.24387079], "delta": [-0.0123]})
    path = write_table(table, "cpu", "runs", config={"lr": 3e-5})
    back = pd.read_csv(path)
    assert back.loc[0, "lr"] == 3e-5  # a fixed "%.4f" would have written 0.0000
    assert abs(back.loc[0, "score"] - 83.2439) < 1e-9 and back.loc[0, "delta"] == -0.0123
    meta = json.loads((tmp_path / "runs.meta.json").read_text())
    assert meta["config"] == {"lr": 3e-5} and "git_commit" in meta and "versions" in meta


def test_format_mean_sd_omits_sd_for_one_seed():
    rows = [{"model": "a", "seed": 1, **{c: 80.0 for c in COLUMNS}},
            {"model": "b", "seed": 1, **{c: 70.0 for c in COLUMNS}},
            {"model": "b", "seed": 2, **{c: 72.0 for c in COLUMNS}}]
    out = format_mean_sd(pd.DataFrame(rows))
    assert out.loc["a", "Avg."] == "80.00" and out.loc["b", "Avg."] == "71.00 ± 1.41"
    assert list(out["seeds"]) == [1, 2]


def test_the_claims_table_reads_each_verdict_from_its_paired_comparison():
    import pandas as pd

    from jtcse_lib.report import claims_table

    def row(comparison, diff, low, high, n=3):
        return {"comparison": comparison, "task": "avg", "mean_diff": diff, "t_low": low, "t_high": high,
                "boot_low": low, "boot_high": high, "n_seeds": n}

    paired = pd.DataFrame([row("[− modulus term] − full JTCSE", -0.3, -0.5, -0.1),  # removal lowers: supported
                           row("JTCSE (twin) − TNCSE (twin)", -0.4, -0.6, -0.2),  # resolved the other way
                           row("JTCSE-D − JTCSE (twin)", -0.1, -0.4, 0.2),  # no difference, as claimed
                           row("JTCSE (twin) − better SimCSE tower", 0.5, -0.1, 1.1)])  # not resolved
    table = claims_table(paired).set_index("claim of the paper")["verdict"]
    assert table.to_dict() == {"the tensor-modulus term helps": "supported", "JTCSE beats TNCSE": "contradicted",
                               "JTCSE-D keeps the twin's quality in one tower": "consistent: no difference resolved",
                               "JTCSE beats the better SimCSE tower": "not resolved"}


def test_the_model_comparisons_carry_the_names_the_claims_read():
    """Notebooks 05 and 06 both write report.model_comparisons; the claims table finds its rows by these names."""
    from jtcse_lib.config import load_profile
    from jtcse_lib.report import CLAIMS, MODEL_PAIRS, distill_start, model_label

    cfg = load_profile("cpu")
    names = {f"{model_label(distill_start(cfg) if a == 'start' else a, cfg)} − "
             f"{model_label(distill_start(cfg) if b == 'start' else b, cfg)}" for a, b in MODEL_PAIRS}
    assert {c for _, c, _ in CLAIMS if not c.startswith("[")} <= names
    assert "JTCSE-D − MiniLM-L6 backbone, cls" in {
        f"{model_label('distill', cfg)} − {model_label(distill_start(cfg.replace(distill_init='backbone')), cfg)}"}
