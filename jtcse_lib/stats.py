"""Paired comparisons of two sentence-embedding models on the SentEval STS tasks: over test pairs, over seeds.

Two axes of uncertainty, kept apart because they answer different questions:

- **over test pairs** (`paired_bootstrap`): one trained model of each kind, scored on the same pairs; how much
  would the difference move on another test set drawn like this one? Resample pairs with replacement, the SAME
  indices for both models (the pairing: their shared per-pair difficulty cancels), recompute Spearman x 100.
- **over seeds** (`seed_comparison`): one difference per training seed; how much does the difference move when
  the models are trained again? Student t interval of the mean and an exact sign test. The test set is fixed.

`spearman100` (S below, the STS score) and `bootstrap_ci` (one model's interval over test pairs) are what
`evaluate` reports; `verdict_interval` and `verdict` say which interval a comparison rests on and what it supports.

Notation: task t with n_t pairs, gold y_t, predictions (cosines) a_t, b_t; S(p, y) = Spearman x 100;
d_t = S(a_t, y_t) - S(b_t, y_t); Avg difference d = (1/T) sum_t d_t over the T tasks given (the seven STS tasks
in the usual use). A difference is "A minus B": positive means A scores higher.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest, rankdata, spearmanr, ttest_1samp

BOOT_COLUMNS = ["task", "n_pairs", "score_a", "score_b", "diff", "boot_low", "boot_high", "boot_se",
                "boot_share_le0", "level", "n_boot"]
TABLE_COLUMNS = ["comparison", "task", "n_seeds", "seeds", "mean_diff", "sd", "t_low", "t_high", "sign_p",
                 "boot_low", "boot_high", "boot_per_seed", "interval", "verdict", "level", "n_boot"]


# ---------------------------------------------------------------- over test pairs

def spearman100(pred: np.ndarray, gold: np.ndarray) -> float:
    """S(p, y): Spearman's rank correlation x 100 (the SentEval STS score)."""
    return float(spearmanr(pred, gold).statistic * 100)


def _centred_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of each row (ties share their mean rank, as Spearman needs), minus the row mean."""
    ranks = rankdata(values, axis=1)
    ranks -= ranks.mean(1, keepdims=True)
    return ranks


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of centred rows: sum x y / sqrt(sum x^2 sum y^2); a constant row gives NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(1) / np.sqrt((x ** 2).sum(1) * (y ** 2).sum(1))


def bootstrap_ci(pred: np.ndarray, gold: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, chunk: int = 200) -> tuple[float, float]:
    """Percentile bootstrap interval of S(pred, gold) over pairs resampled with replacement (one model, one task):
    `rng.integers(0, n, size=(r, n))` per chunk of r <= `chunk` replicates, Spearman = Pearson of the ranks."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    rhos = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))  # (r, n)
        rhos.append(_pearson_rows(_centred_ranks(pred[idx]), _centred_ranks(gold[idx])))
    rhos = np.concatenate(rhos) * 100
    alpha = (1 - level) / 2
    return float(np.quantile(rhos, alpha)), float(np.quantile(rhos, 1 - alpha))


def _check_inputs(pred_a: Mapping, pred_b: Mapping, gold: Mapping) -> dict[str, tuple]:
    if not gold:
        raise ValueError("no tasks: `gold` is empty")
    if set(pred_a) != set(gold) or set(pred_b) != set(gold):
        raise ValueError(f"pred_a, pred_b and gold must have the same tasks; got {sorted(pred_a)}, "
                         f"{sorted(pred_b)}, {sorted(gold)}")
    out = {}
    for task in gold:  # the task order of `gold` fixes the RNG stream order
        a, b, y = (np.asarray(d[task], dtype=np.float64) for d in (pred_a, pred_b, gold))
        if a.ndim != 1 or a.shape != b.shape or a.shape != y.shape:
            raise ValueError(f"{task}: pred_a, pred_b and gold must be 1-D arrays of one length; got shapes "
                             f"{a.shape}, {b.shape}, {y.shape}")
        if len(y) < 3:
            raise ValueError(f"{task}: {len(y)} pairs; a Spearman correlation needs at least 3")
        if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(y).all()):
            raise ValueError(f"{task}: predictions and gold must be finite")
        out[task] = (a, b, y)
    return out


def paired_bootstrap(pred_a: Mapping[str, np.ndarray], pred_b: Mapping[str, np.ndarray],
                     gold: Mapping[str, np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                     chunk: int = 100) -> pd.DataFrame:
    """Paired percentile bootstrap of the score difference A - B, per task and for the Avg, over test pairs.

    Replicate r (r = 0..R-1) resamples every task once: indices I_rt ~ Uniform{0..n_t-1}^n_t, shared by both
    models, and gives
        d_rt = S(a_t[I_rt], y_t[I_rt]) - S(b_t[I_rt], y_t[I_rt]),   d_r,avg = (1/T) sum_t d_rt
    (one replicate index across tasks, so the Avg interval carries the Avg's own spread). Per row:
        diff           observed difference on the full data (not the bootstrap mean)
        boot_low/high  percentiles (1-level)/2 and (1+level)/2 of d_r (numpy's linear quantile)
        boot_se        sd of d_r (ddof=1)
        boot_share_le0 #{r: d_r <= 0} / R: the share of replicates where A is not ahead. A one-sided
                       bootstrap p-value-like number for "A > B"; not an exact test (it is 1.0 for equal models)
    RNG stream: `np.random.default_rng(seed)`, then for r = 0..R-1, for each task in the order of `gold`'s
    keys, one call `rng.integers(0, n_t, size=n_t)`; so the result does not depend on `chunk` and a plain
    loop can reproduce it. Chunks of `chunk` replicates bound memory (about 8 chunk sum_t n_t bytes per array);
    ranks via `rankdata(axis=1)`, Spearman = Pearson of the ranks. A resample whose predictions are all tied
    gives NaN (only possible for tiny tasks).

    Returns one row per task (in `gold`'s order) then "avg", with the columns `BOOT_COLUMNS`.
    """
    if n_boot < 2:
        raise ValueError(f"n_boot={n_boot}; the bootstrap needs at least 2 replicates")
    if not 0 < level < 1:
        raise ValueError(f"level={level}; use a coverage in (0, 1), e.g. 0.95")
    data = _check_inputs(pred_a, pred_b, gold)
    tasks, sizes = list(data), [len(y) for _, _, y in data.values()]
    rng = np.random.default_rng(seed)
    boot_a = np.empty((n_boot, len(tasks)))
    boot_b = np.empty((n_boot, len(tasks)))
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = [np.empty((stop - start, n), dtype=np.int64) for n in sizes]  # (r, n_t) per task
        for row in range(stop - start):  # replicate-major, tasks in order: the documented stream
            for k, n in enumerate(sizes):
                idx[k][row] = rng.integers(0, n, size=n)
        for k, (a, b, y) in enumerate(data.values()):
            ry = _centred_ranks(y[idx[k]])  # gold ranks, shared by both models
            boot_a[start:stop, k] = _pearson_rows(_centred_ranks(a[idx[k]]), ry)
            boot_b[start:stop, k] = _pearson_rows(_centred_ranks(b[idx[k]]), ry)
    diffs = (boot_a - boot_b) * 100  # (R, T)
    diffs = np.column_stack([diffs, diffs.mean(1)])  # + the Avg of each replicate
    score_a = np.array([spearman100(a, y) for a, _, y in data.values()])
    score_b = np.array([spearman100(b, y) for _, b, y in data.values()])
    score_a, score_b = np.append(score_a, score_a.mean()), np.append(score_b, score_b.mean())
    alpha = (1 - level) / 2
    return pd.DataFrame({
        "task": [*tasks, "avg"],
        "n_pairs": [*sizes, sum(sizes)],
        "score_a": score_a,
        "score_b": score_b,
        "diff": score_a - score_b,
        "boot_low": np.quantile(diffs, alpha, axis=0),
        "boot_high": np.quantile(diffs, 1 - alpha, axis=0),
        "boot_se": diffs.std(0, ddof=1),
        "boot_share_le0": (diffs <= 0).mean(0),
        "level": level,
        "n_boot": n_boot,
    }, columns=BOOT_COLUMNS)


# ---------------------------------------------------------------- over seeds

def seed_comparison(diffs: Sequence[float], level: float = 0.95) -> dict:
    """Mean of per-seed differences d_1..d_n (A - B, one per seed), its Student t interval and a sign test.

        mean = (1/n) sum_i d_i,   sd = sqrt(sum_i (d_i - mean)^2 / (n - 1))
        t interval = mean -/+ t_{(1+level)/2, n-1} sd / sqrt(n)   (`scipy.stats.ttest_1samp`; NaN when n = 1)
        sign_p = two-sided exact binomial test of n_pos successes in n_pos + n_neg trials, p = 1/2
                 (ties d_i = 0 dropped; NaN when every d_i is 0). With 3 seeds its smallest value is 0.25.
    Returns a dict with keys n, mean, sd, t_low, t_high, n_pos, n_neg, sign_p, level.
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("no differences given: pass one value per seed")
    if not np.isfinite(d).all():
        raise ValueError(f"differences must be finite; got {d.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level={level}; use a coverage in (0, 1), e.g. 0.95")
    n, mean = d.size, float(d.mean())
    sd = low = high = float("nan")
    if n > 1:
        sd = float(d.std(ddof=1))
        with warnings.catch_warnings():  # equal d_i (sd 0): scipy warns of precision loss; the interval is [d, d]
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = map(float, ttest_1samp(d, 0.0).confidence_interval(level))
    n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
    sign_p = float(binomtest(n_pos, n_pos + n_neg, 0.5).pvalue) if n_pos + n_neg else float("nan")
    return {"n": n, "mean": mean, "sd": sd, "t_low": low, "t_high": high,
            "n_pos": n_pos, "n_neg": n_neg, "sign_p": sign_p, "level": level}


# ---------------------------------------------------------------- words

def verdict(low: float, high: float, a: str = "A", b: str = "B") -> str:
    """What an interval [low, high] of A - B supports: A > B if low > 0, A < B if high < 0, else nothing.

    An interval touching 0 (low == 0 or high == 0) contains 0 and is not resolved.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not resolved: no interval"
    if low > 0:
        return f"resolved: {a} > {b}"
    if high < 0:
        return f"resolved: {a} < {b}"
    return "not resolved: the interval contains 0"


def _boot_triples(boot) -> list[tuple[float, float, float]]:
    """(diff, boot_low, boot_high) per seed from rows of `paired_bootstrap` (Series/dicts) or triples."""
    out = []
    for item in boot:
        if isinstance(item, (Mapping, pd.Series)):
            item = item["diff"], item["boot_low"], item["boot_high"]
        d, lo, hi = item
        out.append((float(d), float(lo), float(hi)))
    return out


def _per_seed(labels, triples, sep: str) -> str:
    return sep.join(f"{lab}: {d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for lab, (d, lo, hi) in zip(labels, triples))


def verdict_interval(rows):
    """The interval [low, high] a verdict rests on, for a row (a mapping or Series) or a frame of
    `comparison_table`: the Student t interval over seeds (t_low, t_high) with n_seeds >= 2, else the one seed's
    paired bootstrap over test pairs (boot_low, boot_high; NaN when there is none). Floats or Series."""
    if isinstance(rows, pd.DataFrame):
        many = rows["n_seeds"] > 1
        return rows["t_low"].where(many, rows["boot_low"]), rows["t_high"].where(many, rows["boot_high"])
    if rows["n_seeds"] > 1:
        return rows["t_low"], rows["t_high"]
    return rows["boot_low"], rows["boot_high"]


def _summary(diffs, triples: list, level: float) -> tuple[dict, dict]:
    """`seed_comparison` of the per-seed `diffs`, and its columns of `comparison_table` (`boot_*`: the bootstrap of
    the one seed; `interval`: what `verdict_interval` rests on)."""
    s = seed_comparison(diffs, level)
    one = triples[0] if len(triples) == 1 else (np.nan, np.nan, np.nan)
    over = "t over seeds" if s["n"] > 1 else "bootstrap over test pairs (1 seed)" if triples else "none"
    return s, {"n_seeds": s["n"], "mean_diff": s["mean"], "sd": s["sd"], "t_low": s["t_low"], "t_high": s["t_high"],
               "sign_p": s["sign_p"], "boot_low": one[1], "boot_high": one[2], "interval": over}


def describe_difference(diffs: Sequence[float] | None = None, boot: Iterable | None = None, what: str = "Avg",
                        a: str = "A", b: str = "B", seeds: Sequence | None = None, level: float = 0.95) -> str:
    """One line a careful reader can act on: the difference A - B, its interval, what the interval is over, N.

    `diffs`: the per-seed differences (may be omitted when `boot` is given); `boot`: per seed, a row of
    `paired_bootstrap` (or a (diff, low, high) triple), in the order of `diffs`; `seeds`: labels for them.
    With >= 2 seeds the headline interval is the t interval over seeds (training randomness; the test set is
    held fixed) and the per-seed bootstrap intervals over test pairs follow; with one seed the headline is that
    seed's bootstrap interval over test pairs, and the line says that seed-to-seed variation is not included.
    Example: "A - B: +0.15 Avg points, 95% interval [-0.40, +0.71] over 3 seeds (Student t; sd 0.22; 2 of 3
    seeds positive, sign test p = 1.00); paired bootstrap over test pairs, per seed: 42: +0.10 [-0.20, +0.41],
    ...; not resolved: the interval contains 0"
    """
    triples = _boot_triples(boot) if boot is not None else []
    if diffs is None:
        if not triples:
            raise ValueError("pass the per-seed differences `diffs`, or `boot` rows to take them from")
        diffs = [d for d, _, _ in triples]
    if triples and len(triples) != len(diffs):
        raise ValueError(f"{len(diffs)} differences but {len(triples)} bootstrap rows; give one per seed")
    if triples and not np.allclose([d for d, _, _ in triples], diffs):
        raise ValueError("`diffs` and the bootstrap rows' observed differences disagree; same seed order?")
    s, row = _summary(diffs, triples, level)
    (low, high), over = verdict_interval(row), row["interval"]
    pct = f"{level * 100:g}%"
    head = f"{a} - {b}: {s['mean']:+.2f} {what} points"
    if over == "t over seeds":
        head += (f", {pct} interval [{low:+.2f}, {high:+.2f}] over {s['n']} seeds (Student t; sd {s['sd']:.2f};"
                 f" {s['n_pos']} of {s['n']} seeds positive, sign test p = {s['sign_p']:.2f})")
    elif over == "none":
        head += ", 1 seed, no interval (no bootstrap given; seed-to-seed variation unknown)"
    else:
        head += (f", {pct} interval [{low:+.2f}, {high:+.2f}] over test pairs (paired bootstrap, 1 seed;"
                 " seed-to-seed variation not included)")
    parts = [head]
    if triples and s["n"] >= 2:
        labels = seeds if seeds is not None else [f"seed {i + 1}" for i in range(len(triples))]
        parts.append(f"paired bootstrap over test pairs, per seed: {_per_seed(labels, triples, ', ')}")
    parts.append(verdict(low, high, a, b))
    return "; ".join(parts)


# ---------------------------------------------------------------- many comparisons

def comparison_table(comparisons, level: float | None = None) -> pd.DataFrame:
    """The `paired_comparisons.csv` table: one row per (comparison, task), tasks then "avg".

    `comparisons`: a mapping or (name, per_seed) pairs, per_seed being either
      - a mapping seed -> `paired_bootstrap` frame (all frames with the same tasks, level and n_boot), or
      - a DataFrame of per-seed differences A - B, index = seed, one column per task/"avg" (no bootstrap).
    Columns (`TABLE_COLUMNS`): mean_diff, sd, t_low, t_high, sign_p as in `seed_comparison`; boot_low,
    boot_high the paired bootstrap interval over test pairs when there is exactly one seed (NaN otherwise);
    boot_per_seed the per-seed "seed: diff [low, high]" text; interval which interval the verdict rests on
    ("t over seeds" for >= 2 seeds, "bootstrap over test pairs (1 seed)", or "none"); verdict from `verdict`.
    `level` defaults to the bootstrap frames' level (else 0.95) and must match it.
    """
    items = comparisons.items() if isinstance(comparisons, Mapping) else comparisons
    rows = []
    for name, per_seed in items:
        if isinstance(per_seed, pd.DataFrame):  # per-seed differences, no bootstrap
            seeds = list(per_seed.index)
            lvl = 0.95 if level is None else level
            n_boot = 0
            by_task = {task: (per_seed[task].to_numpy(float), []) for task in per_seed.columns}
        else:
            seeds = list(per_seed)
            if not seeds:
                raise ValueError(f"{name}: no seeds")
            frames = [per_seed[s].set_index("task") for s in seeds]
            tasks = list(frames[0].index)
            if any(list(f.index) != tasks for f in frames):
                raise ValueError(f"{name}: the per-seed bootstrap frames have different tasks")
            levels = {float(f["level"].iloc[0]) for f in frames}
            if len(levels) != 1 or (level is not None and levels != {level}):
                raise ValueError(f"{name}: bootstrap levels {sorted(levels)} differ from each other or from "
                                 f"level={level}")
            lvl = levels.pop()
            n_boot = int(frames[0]["n_boot"].iloc[0])
            by_task = {task: (np.array([f.loc[task, "diff"] for f in frames]),
                              [(f.loc[task, "diff"], f.loc[task, "boot_low"], f.loc[task, "boot_high"])
                               for f in frames]) for task in tasks}
        for task, (diffs, triples) in by_task.items():
            _, row = _summary(diffs, triples, lvl)
            row.update(comparison=name, task=task, seeds=",".join(map(str, seeds)), level=lvl, n_boot=n_boot,
                       boot_per_seed=_per_seed(seeds, triples, "; "), verdict=verdict(*verdict_interval(row)))
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
