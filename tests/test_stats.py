"""Paired comparisons (jtcse_lib.stats) on synthetic scores whose answer is known."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from scipy.stats import t as student_t

from jtcse_lib.stats import (
    BOOT_COLUMNS,
    TABLE_COLUMNS,
    bootstrap_ci,
    comparison_table,
    describe_difference,
    paired_bootstrap,
    seed_comparison,
    spearman100,
    verdict,
    verdict_interval,
)


def test_importing_stats_does_not_load_torch():
    code = "import sys, jtcse_lib.stats; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def make_tasks(sizes, noise_a=1.0, noise_b=0.5, seed=0, ties=True):
    """gold ~ N(0,1) (rounded to 0.2 so it has ties, like STS gold), a = gold + noise, b = a + more noise."""
    rng = np.random.default_rng(seed)
    gold, a, b = {}, {}, {}
    for k, n in enumerate(sizes):
        task = f"T{k}"
        g = rng.normal(size=n)
        gold[task] = np.round(g * 5) / 5 if ties else g
        a[task] = g + noise_a * rng.normal(size=n)
        b[task] = a[task] + noise_b * rng.normal(size=n)
    return a, b, gold


def rho100(p, y):
    return spearmanr(p, y).statistic * 100


def slow_reference(pred_a, pred_b, gold, n_boot, seed, level):
    """The documented stream, written as plainly as possible: per replicate, per task, one integers() call."""
    rng = np.random.default_rng(seed)
    tasks = list(gold)
    d = np.empty((n_boot, len(tasks) + 1))
    for r in range(n_boot):
        for k, t in enumerate(tasks):
            i = rng.integers(0, len(gold[t]), size=len(gold[t]))
            d[r, k] = rho100(pred_a[t][i], gold[t][i]) - rho100(pred_b[t][i], gold[t][i])
        d[r, -1] = d[r, :-1].mean()  # Avg of replicate r: the same r for every task
    alpha = (1 - level) / 2
    return {"boot_low": np.quantile(d, alpha, axis=0), "boot_high": np.quantile(d, 1 - alpha, axis=0),
            "boot_se": d.std(0, ddof=1), "boot_share_le0": (d <= 0).mean(0)}


# ---------------------------------------------------------------- one model: Spearman and its bootstrap

def test_bootstrap_ci_matches_a_loop_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, 200)
    pred = gold + rng.normal(0, 1.5, 200)
    lo, hi = bootstrap_ci(pred, gold, n_boot=300, seed=7, chunk=64)
    # reference: the same resamples, scored with scipy one by one
    ref_rng = np.random.default_rng(7)
    idx = np.concatenate([ref_rng.integers(0, 200, size=(min(64, 300 - s), 200)) for s in range(0, 300, 64)])
    stats = np.array([spearmanr(pred[i], gold[i]).statistic * 100 for i in idx])
    assert lo == pytest.approx(np.quantile(stats, 0.025), abs=1e-9)
    assert hi == pytest.approx(np.quantile(stats, 0.975), abs=1e-9)
    assert lo < spearman100(pred, gold) < hi
    assert spearman100(pred, gold) == pytest.approx(rho100(pred, gold), abs=1e-12)


# ---------------------------------------------------------------- paired_bootstrap

def test_identical_predictions_give_zero_difference_and_zero_width_interval():
    a, _, gold = make_tasks([60, 45])
    out = paired_bootstrap(a, a, gold, n_boot=100)
    assert list(out.columns) == BOOT_COLUMNS and list(out["task"]) == ["T0", "T1", "avg"]
    assert (out["diff"] == 0).all() and (out["boot_low"] == 0).all() and (out["boot_high"] == 0).all()
    assert (out["boot_se"] == 0).all() and (out["boot_share_le0"] == 1).all()
    assert verdict(out.loc[2, "boot_low"], out.loc[2, "boot_high"]) == "not resolved: the interval contains 0"


def test_noisier_model_loses_with_interval_excluding_zero():
    a, b, gold = make_tasks([400, 300, 500], noise_a=0.5, noise_b=1.5)
    out = paired_bootstrap(a, b, gold, n_boot=200).set_index("task")
    assert (out["diff"] > 5).all() and (out["boot_low"] > 0).all() and (out["boot_share_le0"] == 0).all()
    assert verdict(out.loc["avg", "boot_low"], out.loc["avg", "boot_high"], "A", "B") == "resolved: A > B"
    swapped = paired_bootstrap(b, a, gold, n_boot=200).set_index("task")
    assert (swapped["boot_high"] < 0).all() and (swapped["boot_share_le0"] == 1).all()
    assert verdict(swapped.loc["avg", "boot_low"], swapped.loc["avg", "boot_high"]) == "resolved: A < B"


def test_observed_difference_is_the_difference_of_plain_spearman_scores():
    a, b, gold = make_tasks([80, 120, 50], seed=3)
    out = paired_bootstrap(a, b, gold, n_boot=20).set_index("task")
    expected = {t: rho100(a[t], gold[t]) - rho100(b[t], gold[t]) for t in gold}
    for t, d in expected.items():
        assert out.loc[t, "diff"] == pytest.approx(d, abs=1e-10)
        assert out.loc[t, "score_a"] == pytest.approx(rho100(a[t], gold[t]), abs=1e-10)
        assert out.loc[t, "n_pairs"] == len(gold[t])
    assert out.loc["avg", "diff"] == pytest.approx(np.mean(list(expected.values())), abs=1e-10)
    assert out.loc["avg", "score_b"] == pytest.approx(np.mean([rho100(b[t], gold[t]) for t in gold]), abs=1e-10)
    assert out.loc["avg", "n_pairs"] == 250
    # the observed difference is not the bootstrap mean: a resample of a tiny task is biased
    assert out.loc["T2", "diff"] != pytest.approx((out.loc["T2", "boot_low"] + out.loc["T2", "boot_high"]) / 2)


def test_matches_slow_loop_reference_with_one_replicate_index_across_tasks():
    a, b, gold = make_tasks([40, 57, 33], noise_b=1.0, seed=5)
    ref = slow_reference(a, b, gold, n_boot=50, seed=11, level=0.9)
    for chunk in (7, 50, 1000):  # chunk boundaries do not change the stream
        out = paired_bootstrap(a, b, gold, n_boot=50, seed=11, level=0.9, chunk=chunk)
        for col, want in ref.items():
            np.testing.assert_allclose(out[col].to_numpy(), want, rtol=0, atol=1e-9, err_msg=f"{col}, chunk {chunk}")
    other = paired_bootstrap(a, b, gold, n_boot=50, seed=12, level=0.9)
    assert not np.allclose(other["boot_low"], ref["boot_low"])  # the seed matters


def unpaired_interval(a, b, g, n_boot=200, seed=0):
    """Percentile interval of S(a, g) - S(b, g) with A and B resampled independently (the pairing ignored)."""
    rng, n = np.random.default_rng(seed), len(g)
    d = []
    for _ in range(n_boot):
        i, j = rng.integers(0, n, n), rng.integers(0, n, n)
        d.append(rho100(a[i], g[i]) - rho100(b[j], g[j]))
    return np.quantile(d, [0.025, 0.975])


def test_pairing_makes_the_interval_much_narrower_for_correlated_models():
    a, b, gold = make_tasks([500], noise_a=1.0, noise_b=0.1, seed=2, ties=False)  # corr(a, b) ~ 0.995
    paired = paired_bootstrap(a, b, gold, n_boot=200).iloc[0]
    lo, hi = unpaired_interval(a["T0"], b["T0"], gold["T0"])
    assert (paired["boot_high"] - paired["boot_low"]) < 0.15 * (hi - lo)
    # a real difference of ~3 points: only the paired interval resolves it
    a, b, gold = make_tasks([500], noise_a=1.0, noise_b=0.5, seed=2, ties=False)
    paired = paired_bootstrap(a, b, gold, n_boot=200).iloc[0]
    lo, hi = unpaired_interval(a["T0"], b["T0"], gold["T0"])
    assert paired["boot_low"] > 0 and lo < 0


@pytest.mark.slow  # 120 bootstraps: about 3 s
def test_interval_covers_the_true_difference_at_about_the_nominal_rate():
    # gold g ~ N(0,1), a = g + e1, b = a + 0.3 e2: bivariate normal, so Spearman = (6/pi) asin(rho/2) exactly.
    def true_rho_s(noise_var):
        return 600 / np.pi * np.arcsin(1 / np.sqrt(1 + noise_var) / 2)

    truth = true_rho_s(1.0) - true_rho_s(1.09)
    rng = np.random.default_rng(123)
    n, sims, covered = 300, 120, 0
    for s in range(sims):
        g = rng.normal(size=n)
        a = g + rng.normal(size=n)
        b = a + 0.3 * rng.normal(size=n)
        row = paired_bootstrap({"T": a}, {"T": b}, {"T": g}, n_boot=200, seed=s).iloc[0]
        covered += row["boot_low"] <= truth <= row["boot_high"]
    assert 0.86 <= covered / sims <= 0.995, covered  # binomial sd at 0.95 over 120 sims: 0.02


def test_input_errors_are_explicit():
    a, b, gold = make_tasks([30, 30])
    with pytest.raises(ValueError, match="same tasks"):
        paired_bootstrap({"T0": a["T0"]}, b, gold)
    with pytest.raises(ValueError, match="T1: .*one length"):
        paired_bootstrap(a, {**b, "T1": b["T1"][:-1]}, gold)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(a, {**b, "T0": np.full(30, np.nan)}, gold)


# ---------------------------------------------------------------- seeds and words

def test_seed_comparison_against_hand_computation():
    s = seed_comparison([0.5, -0.1, 0.3, 0.7])
    sd = np.sqrt((0.15 ** 2 + 0.45 ** 2 + 0.05 ** 2 + 0.35 ** 2) / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} from a table, times sd / sqrt(4)
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.35) and s["sd"] == pytest.approx(sd)
    assert s["t_low"] == pytest.approx(0.35 - half) and s["t_high"] == pytest.approx(0.35 + half)
    assert (s["n_pos"], s["n_neg"]) == (3, 1)
    assert s["sign_p"] == pytest.approx(10 / 16)  # P(X >= 3) + P(X <= 1), X ~ Bin(4, 1/2)
    assert seed_comparison([0.2, 0.0, 0.4, 0.1, 0.3])["sign_p"] == pytest.approx(2 / 16)  # the tie is dropped
    assert seed_comparison([0.2, 0.4, 0.1])["sign_p"] == pytest.approx(0.25)  # the floor with 3 seeds
    s90 = seed_comparison([0.5, -0.1, 0.3, 0.7], level=0.9)
    assert s90["t_high"] - s90["mean"] == pytest.approx(2.353363434801823 * sd / 2)


def old_t_interval(d, level):
    """The hand-written interval seed_comparison used before scipy's: mean -/+ t_{(1+level)/2, n-1} sd / sqrt(n)."""
    d = np.asarray(d, dtype=np.float64)
    half = student_t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return d.mean() - half, d.mean() + half


@pytest.mark.parametrize("diffs, level", [([0.5, -0.1, 0.3, 0.7], 0.95), ([1.0, 2.0], 0.95), ([0.2, 0.4, 0.1], 0.9),
                                          ([-3.1, -2.9, -3.4, -2.2, -3.0, -2.7], 0.99), ([0.25, 0.25, 0.25], 0.95),
                                          ([1e-3, 2e-3, -1e-3], 0.95)])
def test_t_interval_equals_the_textbook_formula(diffs, level, recwarn):
    s = seed_comparison(diffs, level)
    low, high = old_t_interval(diffs, level)
    assert (s["t_low"], s["t_high"]) == pytest.approx((low, high), rel=1e-12, abs=1e-14)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # equal differences: no warning


def test_one_seed_gives_nan_interval_without_error():
    s = seed_comparison([0.4])
    assert s["n"] == 1 and s["mean"] == 0.4
    assert np.isnan(s["sd"]) and np.isnan(s["t_low"]) and np.isnan(s["t_high"])
    assert s["sign_p"] == pytest.approx(1.0)
    assert np.isnan(seed_comparison([0.0, 0.0])["sign_p"])
    with pytest.raises(ValueError):
        seed_comparison([])


def test_verdict_words():
    assert verdict(0.1, 0.5, "JTCSE", "SimCSE") == "resolved: JTCSE > SimCSE"
    assert verdict(-0.5, -0.1) == "resolved: A < B"
    assert verdict(-0.1, 0.5) == "not resolved: the interval contains 0"
    assert verdict(0.0, 0.5) == "not resolved: the interval contains 0"  # touching 0 is containing it
    assert verdict(np.nan, np.nan) == "not resolved: no interval"


def test_describe_difference_says_what_the_interval_is_over():
    boot = [(0.10, -0.20, 0.41), (0.30, 0.02, 0.60), (0.05, -0.30, 0.35)]
    line = describe_difference([0.10, 0.30, 0.05], boot, a="JTCSE", b="SimCSE", seeds=[42, 43, 44])
    s = seed_comparison([0.10, 0.30, 0.05])
    assert line.startswith("JTCSE - SimCSE: +0.15 Avg points, 95% interval ")
    assert f"[{s['t_low']:+.2f}, {s['t_high']:+.2f}] over 3 seeds (Student t" in line
    assert "sign test p = 0.25" in line and "43: +0.30 [+0.02, +0.60]" in line
    assert line.endswith("not resolved: the interval contains 0")
    one = describe_difference(boot=[{"diff": 0.3, "boot_low": 0.02, "boot_high": 0.6}], what="STS-B")
    assert "+0.30 STS-B points, 95% interval [+0.02, +0.60] over test pairs (paired bootstrap, 1 seed" in one
    assert one.endswith("resolved: A > B")
    assert describe_difference([0.3]).endswith("not resolved: no interval")
    with pytest.raises(ValueError, match="disagree"):
        describe_difference([0.1, 0.2, 0.3], boot)


def test_verdict_interval_is_t_over_seeds_else_the_one_seed_bootstrap():
    table = pd.DataFrame({"n_seeds": [3, 1, 1, 2], "t_low": [-0.4, np.nan, np.nan, 0.1],
                          "t_high": [0.7, np.nan, np.nan, 0.3], "boot_low": [np.nan, 0.02, np.nan, np.nan],
                          "boot_high": [np.nan, 0.6, np.nan, np.nan]})
    low, high = verdict_interval(table)
    np.testing.assert_array_equal(low, [-0.4, 0.02, np.nan, 0.1])
    np.testing.assert_array_equal(high, [0.7, 0.6, np.nan, 0.3])
    # the rule as notebook 05 wrote it (t where there is one, else the bootstrap) gives the same
    np.testing.assert_array_equal(low, table["t_low"].fillna(table["boot_low"]))
    for i, row in table.iterrows():  # one row (a Series, or a dict) gives floats
        assert verdict_interval(row) == pytest.approx((low[i], high[i]), nan_ok=True)
        assert verdict_interval(row.to_dict()) == pytest.approx((low[i], high[i]), nan_ok=True)


# ---------------------------------------------------------------- the table

def test_comparison_table_combines_seeds_and_bootstraps():
    per_seed = {}
    for seed in (42, 43, 44):
        a, b, gold = make_tasks([200, 150], noise_a=0.5, noise_b=1.5, seed=seed)
        per_seed[seed] = paired_bootstrap(a, b, gold, n_boot=100)
    same = {42: paired_bootstrap(a, a, gold, n_boot=100)}
    diffs = pd.DataFrame({"T0": [0.2, -0.1], "avg": [0.1, 0.3]}, index=[1, 2])
    table = comparison_table([("A vs B", per_seed), ("A vs A", same), ("from scores", diffs)])
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 3 + 3 + 2
    avg = table[(table["comparison"] == "A vs B") & (table["task"] == "avg")].iloc[0]
    seed_avgs = [per_seed[s].set_index("task").loc["avg", "diff"] for s in (42, 43, 44)]
    s = seed_comparison(seed_avgs)
    assert avg["n_seeds"] == 3 and avg["seeds"] == "42,43,44" and avg["mean_diff"] == pytest.approx(np.mean(seed_avgs))
    assert (avg["t_low"], avg["t_high"], avg["sign_p"]) == pytest.approx((s["t_low"], s["t_high"], 0.25))
    assert avg["interval"] == "t over seeds" and avg["verdict"] == verdict(s["t_low"], s["t_high"])
    assert np.isnan(avg["boot_low"]) and avg["boot_per_seed"].count(";") == 2 and avg["n_boot"] == 100
    one = table[table["comparison"] == "A vs A"].set_index("task")
    assert (one["n_seeds"] == 1).all() and (one["interval"] == "bootstrap over test pairs (1 seed)").all()
    assert (one["boot_low"] == 0).all() and (one["verdict"] == "not resolved: the interval contains 0").all()
    assert one["t_low"].isna().all()
    plain = table[table["comparison"] == "from scores"].set_index("task")
    assert plain.loc["avg", "mean_diff"] == pytest.approx(0.2) and plain.loc["T0", "n_boot"] == 0
    assert plain.loc["T0", "boot_per_seed"] == "" and plain.loc["avg", "seeds"] == "1,2"
    low, high = verdict_interval(table)  # the verdict column is the verdict of verdict_interval's interval
    assert list(table["verdict"]) == [verdict(lo, hi) for lo, hi in zip(low, high)]
    assert (low[table["n_seeds"] == 1] == table["boot_low"][table["n_seeds"] == 1]).all()
    with pytest.raises(ValueError, match="levels"):
        comparison_table({"x": {1: per_seed[42], 2: paired_bootstrap(a, b, gold, n_boot=100, level=0.9)}})
