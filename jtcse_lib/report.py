"""Where results and figures go, how models are labelled and drawn, the paper's numbers, and the tables the
notebooks print.

Paths, under the output root (`jtcse_lib.paths`): the committed embedded default (`cpu`) writes `results/cpu/` and
`figures/NN_name.png`; `paper` writes `results/paper/` and `figures/paper/`; the scratch profiles (`smoke`,
`paper-tiny`: meaningless numbers) write under `runs/<profile>/` only, so a test run never overwrites a committed
figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import runs
from .export import COLUMNS, SHORT
from .export import STAGE_LABELS as STAGE_LABELS  # the notebooks import the labels from here
from .files import write_file, write_json, write_text
from .paths import output_root, runs_root
from .provenance import provenance

# One colour per model, for every figure (backbone rows: "backbone_<pooling>"); labels: STAGE_LABELS.
STAGE_COLORS = {"backbone_cls": "#b0b0b0", "backbone_mean": "#707070", "simcse_a": "#9ecae1",
                "simcse_b": "#3182bd", "tncse": "#fd8d3c", "jtcse": "#d62728", "distill": "#756bb1"}
BACKBONE_NAMES = {"minilm": "MiniLM-L6"}  # readable names for labels


def backbone_name(backbone: str) -> str:
    return BACKBONE_NAMES.get(backbone, backbone)


# docs/paper.md, "Reported results" (BERT-base / RoBERTa-base, full Wiki1M; Spearman x 100).
PAPER_TABLE = pd.DataFrame.from_records([
    ("unsup-SimCSE-BERT", 68.40, 82.41, 74.38, 80.91, 78.56, 76.85, 72.23, 76.25),
    ("TNCSE-BERT", 75.52, 83.91, 77.57, 84.97, 80.42, 81.72, 72.97, 79.58),
    ("JTCSE-BERT (twin)", 74.96, 84.20, 77.79, 84.75, 80.43, 81.87, 73.88, 79.70),
    ("JTCSE-BERT-D", 75.01, 84.86, 77.76, 84.62, 80.38, 82.05, 74.53, 79.89),
    ("JTCSE-RoBERTa (twin)", 74.92, 84.79, 76.99, 84.91, 81.58, 82.71, 73.74, 79.95),
    ("JTCSE-RoBERTa-D", 75.42, 85.36, 77.31, 85.04, 81.72, 82.91, 74.46, 80.32),
    ("JTCSE-BERT-UC", 75.44, 85.34, 78.75, 85.93, 82.00, 83.21, 73.52, 80.60),
], columns=["model", *COLUMNS]).set_index("model")


# docs/paper.md, "Transfer tasks of unsup-SimCSE-BERT-base" (the SimCSE paper, Appendix E, Table E.1; a different
# backbone, and SentEval's PyTorch classifier: a reference point, not a target).
SIMCSE_TRANSFER = {"MR": 81.18, "CR": 86.46, "SUBJ": 94.45, "MPQA": 88.88, "SST2": 85.50, "TREC": 89.80,
                   "MRPC": 74.43, "avg": 85.81}

# docs/paper.md: TNCSE pooling ablation, 7-task STS average (BERT-base).
PAPER_POOLING = {"cls": 79.58, "mean": 78.19, "pooler": 69.28}


# Profiles that only prove the code runs (CI, nbval): their tables and figures go to the ignored run cache, never
# into the tracked results/ and figures/.
SCRATCH_PROFILES = ("smoke", "paper-tiny")


def results_dir(profile: str) -> Path:
    """The profile's results folder (created): results/<profile>/, a scratch profile's runs/<profile>/results/."""
    path = runs_root() / profile / "results" if profile in SCRATCH_PROFILES else output_root() / "results" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(profile: str) -> Path:
    """The profile's figures folder (created): figures/ for cpu, figures/<profile>/, or runs/<profile>/figures/."""
    path = (runs_root() / profile / "figures" if profile in SCRATCH_PROFILES else
            output_root() / "figures" / ("" if profile == "cpu" else profile))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, profile: str, name: str, dpi: int = 160) -> Path:
    """Save `fig` as PNG (and PDF) under the profile's figures folder; returns the PNG path. No creation date or
    software stamp is written, so the same figure gives the same bytes on a re-run."""
    folder = figures_dir(profile)
    png = folder / f"{name}.png"
    write_file(png, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None}))
    write_file(folder / f"{name}.pdf", lambda tmp: fig.savefig(tmp, bbox_inches="tight", metadata={
        "CreationDate": None, "Producer": None, "Creator": None}))
    return png


def show_figure(fig, profile: str, name: str) -> Path:
    """The epilogue of every figure cell: save it (`save_figure`), show it in the notebook, close it."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    path = save_figure(fig, profile, name)
    display(fig)
    plt.close(fig)
    return path


def smoke_banner(config, measures: str | None = None) -> None:
    """Under the `smoke` profile, display the one warning every notebook gives: the numbers are meaningless.
    `measures` replaces the sentence about training for a notebook that trains nothing (what it measures on)."""
    if config.profile not in SCRATCH_PROFILES:
        return
    from IPython.display import Markdown, display

    span = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs} epoch(s)"
    cut = f" and every STS test sub-set is cut to its first **{config.test_pairs} pairs**" if config.test_pairs else ""
    what = (f"It measures {measures}" if measures else
            f"Each model is trained for **{span}** on **{config.corpus_limit} sentences**, selected "
            f"on {config.dev_pairs} STS-B dev pairs{cut}")
    display(Markdown(
        f"> **⚠️ {config.profile.upper()} PROFILE: every measured number in this notebook is meaningless.** {what}. "
        "The run only shows that the notebook executes end to end; run it with `papermill ... -p profile cpu` (or "
        "`make reproduce`) for real numbers."))


def write_table(df: pd.DataFrame, profile: str, name: str, config: dict | None = None) -> Path:
    """Write `results/<profile>/<name>.csv` and a `<name>.meta.json` with the config and provenance."""
    folder = results_dir(profile)
    path = folder / f"{name}.csv"
    write_text(path, df.to_csv(index=False, float_format="%.6g"))  # 6 significant digits: keeps lr 3e-05
    meta = {"table": path.name, "profile": profile, "config": config, **provenance(timestamp=False)}
    write_json(folder / f"{name}.meta.json", meta)
    return path


def score_row(result: dict, **labels) -> dict:
    """One row of a results table from an `sts_scores` result: labels + the seven scores + avg."""
    return {**labels, **{c: result["scores"][c] for c in COLUMNS}}


def mean_sd(df: pd.DataFrame, by: str = "model") -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of each score column, one row per `by` value."""
    grouped = df.groupby(by, sort=False)[COLUMNS]
    return pd.concat({"mean": grouped.mean(), "sd": grouped.std(ddof=1).fillna(0.0)}, axis=1)


def format_mean_sd(df: pd.DataFrame, by: str = "model") -> pd.DataFrame:
    """'mean ± sd' strings (sd omitted when there is one seed) for printing and the README."""
    counts, stats = df.groupby(by, sort=False).size(), mean_sd(df, by)

    def cell(model, c) -> str:
        mean, sd = stats.loc[model, ("mean", c)], stats.loc[model, ("sd", c)]
        return f"{mean:.2f}" if counts[model] == 1 else f"{mean:.2f} ± {sd:.2f}"

    text = {model: {SHORT.get(c, c): cell(model, c) for c in COLUMNS} for model in stats.index}
    out = pd.DataFrame.from_dict(text, orient="index")
    out.insert(0, "seeds", counts.reindex(out.index).values)
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no dependency on `tabulate`)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        cells = [f"{v:.2f}" if isinstance(v, (float, np.floating)) else str(v) for v in row.values]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the paper's claims, and what tests each here

# (the claim, the paired comparison A − B of paired_comparisons.csv that tests it, the sign the claim predicts:
# ">" A above B, "<" A below B, "=" no difference). Notebook 05 writes the table; the README shows it.
CLAIMS = [
    ("the tensor-modulus term helps", "[− modulus term] − full JTCSE", "<"),
    ("the cross-attention branch helps", "[− cross-attention branch (0 layers)] − full JTCSE", "<"),
    ("JTCSE beats TNCSE", "JTCSE (twin) − TNCSE (twin)", ">"),
    ("training the twin jointly beats summing its two SimCSE towers", "JTCSE (twin) − untrained twin", ">"),
    ("JTCSE beats the better SimCSE tower", "JTCSE (twin) − better SimCSE tower", ">"),
    ("JTCSE-D keeps the twin's quality in one tower", "JTCSE-D − JTCSE (twin)", "="),
    ("distillation improves on the tower it starts from", "JTCSE-D − JTCSE tower A", ">"),
]


def claims_table(paired: pd.DataFrame) -> pd.DataFrame:
    """claim -> evidence (the comparison's Avg difference and 95% interval) -> verdict, from a paired comparison
    table (`stats.comparison_table`); claims whose comparison this run did not make are left out."""
    from .stats import verdict_interval

    avg = paired[paired["task"] == "avg"].set_index("comparison")
    rows = []
    for claim, comparison, predicted in CLAIMS:
        if comparison not in avg.index:
            continue
        r = avg.loc[comparison]
        low, high = verdict_interval(r)
        over = f"{int(r['n_seeds'])} seeds" if r["n_seeds"] > 1 else "1 seed (test pairs)"
        if low > 0 or high < 0:  # resolved
            sign = ">" if low > 0 else "<"
            verdict = "supported" if sign == predicted else "contradicted"
        else:
            verdict = "consistent: no difference resolved" if predicted == "=" else "not resolved"
        rows.append({"claim of the paper": claim, "tested by (A − B)": comparison,
                     "evidence: Δ Avg. [95% interval]": f"{r['mean_diff']:+.2f} [{low:+.2f}, {high:+.2f}], {over}",
                     "verdict": verdict})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the model comparisons of notebooks 05 and 06

# A − B of every seed; "tower" is that seed's better SimCSE tower (chosen on STS-B dev); "start" what JTCSE-D
# starts from: stage 2's and distillation's controls beside the main comparisons
MODEL_PAIRS = [("jtcse", "tncse"), ("jtcse", "tower"), ("tncse", "tower"), ("distill", "jtcse"),
               ("jtcse", runs.UNTRAINED_TWIN), ("tncse", runs.UNTRAINED_TWIN), (runs.UNTRAINED_TWIN, "tower"),
               ("distill", "start")]


def distill_start(config) -> str | None:
    """What JTCSE-D starts from, as `runs` scores it: the teacher's tower A, or None (the backbone)."""
    return runs.TEACHER_TOWER_A if config.for_stage("distill").distill_init == "tower_a" else None


def model_label(model: str | None, config) -> str:
    """A model's short name in the paired comparisons (the names `CLAIMS` uses); None is the backbone ([CLS])."""
    names = {**STAGE_LABELS, "tower": "better SimCSE tower", runs.UNTRAINED_TWIN: "untrained twin",
             runs.TEACHER_TOWER_A: "JTCSE tower A"}
    return names.get(model) or f"{backbone_name(config.backbone)} backbone, cls"


def model_comparisons(config, progress: bool = False) -> dict[str, dict[int, pd.DataFrame]]:
    """{"A − B": {seed: `runs.compare` frame}} for `MODEL_PAIRS` on every seed of `config` (cached cosines: no
    model is encoded twice)."""
    out: dict[str, dict[int, pd.DataFrame]] = {}
    for seed in config.seeds:
        c = config.replace(seed=seed)
        model = {"tower": runs.better_simcse_tower(c), "start": distill_start(c)}  # this seed's
        for a, b in MODEL_PAIRS:
            name = f"{model_label(distill_start(c) if a == 'start' else a, c)} − " \
                   f"{model_label(distill_start(c) if b == 'start' else b, c)}"
            out.setdefault(name, {})[seed] = runs.compare(c, model.get(a, a), c, model.get(b, b), progress=progress)
    return out
