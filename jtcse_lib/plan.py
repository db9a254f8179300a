"""What a profile will do, before it runs: `python -m jtcse_lib plan --profile P`.

Lists every training run a complete pipeline makes (five stages per seed, plus the ablations that retrain), the
optimizer steps and STS-B dev evaluations of each, and the disk the run cache will hold. Where the repository holds
a GPU measurement (`results/gpu/device_check.json`, written by `bench/device_check.py`), it also estimates wall time
and GPU memory from it; without one it says so. Offline and in seconds: nothing is loaded or downloaded (corpus
sizes and model sizes of the paper's backbones are known constants when the files are not at hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .ablations import chosen_ablations
from .config import STAGES, TWIN_STAGES, RunConfig, config_hash, stage_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICE_CHECK = REPO_ROOT / "results" / "gpu" / "device_check.json"
# Facts for when the files are not on this machine (the full Wiki1M, the Hub's models).
CORPUS_SENTENCES = {"wiki1m": 1_000_000, "wiki1m_subset": 30_762}
SICK_SENTENCES = 10_069  # distinct sentences of SICK train + trial + test (what `<corpus>+sick` appends)
BACKBONES = {"bert-base-uncased": (12, 109_482_240), "roberta-base": (12, 124_645_632), "minilm": (6, 22_713_216)}
_PARENTS = {"simcse_a": (), "simcse_b": (), "tncse": ("simcse_a", "simcse_b"), "jtcse": ("simcse_a", "simcse_b"),
            "distill": ("jtcse",)}


@dataclass
class PlannedRun:
    stage: str
    seed: int
    why: str  # "main" or the ablation's name
    steps: int
    evaluations: int
    batch_size: int
    max_length: int
    key: str  # the settings it depends on (without the data's digests, which need the data)


def _settings_key(config: RunConfig, stage: str) -> str:
    own = stage_settings(config, stage)
    own["parents"] = [_settings_key(config, p) for p in _PARENTS[stage]]
    return config_hash(own)


def corpus_sentences(corpus: str, data_dir=None) -> tuple[int, str]:
    """(sentences, where the number comes from): counted when the file is here, else the known size."""
    from .data import corpus_files, read_corpus

    base = corpus.removesuffix("+sick")
    try:
        corpus_files(corpus, data_dir)
        return len(read_corpus(corpus, data_dir)), "counted"
    except Exception:  # not on this machine (e.g. the full Wiki1M): the known size, if it is known
        if base in CORPUS_SENTENCES:
            return CORPUS_SENTENCES[base] + (SICK_SENTENCES if corpus.endswith("+sick") else 0), "known size"
        return 0, "unknown (file not found)"


def backbone_facts(backbone: str) -> tuple[int | None, int | None]:
    """(depth, parameters) of a backbone: known for the paper's and the shipped ones, else read from its folder."""
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    try:
        from .backbones import depth

        folder = Path(backbone)
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors")) // 4 if folder.is_dir() else None
        return depth(backbone), weights
    except Exception:
        return None, None


def planned_runs(config: RunConfig, data_dir=None) -> list[PlannedRun]:
    """Every training run of a complete pipeline under `config`, each once (the run cache trains it once)."""
    wanted = [(config.replace(seed=seed), stage, "main") for seed in config.seeds for stage in STAGES]
    reference = config.replace(seed=config.seeds[0])
    depth, _ = backbone_facts(config.backbone)
    for a in chosen_ablations(reference, depth or 12)[0]:
        wanted.append((a.config(reference), a.stage, a.name))
    runs, seen, sizes = [], set(), {}
    for cfg, stage, why in wanted:
        for needed in (*_PARENTS[stage], stage):  # an ablation's stage-1 towers are the reference's
            key = _settings_key(cfg, needed)
            if key in seen:
                continue
            seen.add(key)
            s = cfg.for_stage(needed)
            if s.corpus not in sizes:
                sizes[s.corpus] = corpus_sentences(s.corpus, data_dir)[0]
            batches = sizes[s.corpus] // s.batch_size
            steps = s.max_steps or s.epochs * max(1, batches // s.grad_accum)
            runs.append(PlannedRun(needed, cfg.seed, why if needed == stage else "main", steps,
                                   steps // s.eval_every + 1, s.batch_size, s.max_length, key))
    return runs


def estimate(run: PlannedRun, measured: dict | None) -> tuple[float | None, float | None]:
    """(seconds, peak GPU GiB) of a run from the device check's step times at its batch x length (time scaled by
    the tokens per step), or (None, None) without a measurement."""
    if not measured:
        return None, None
    kind = "simcse" if run.stage in ("simcse_a", "simcse_b", "distill") else run.stage
    row = measured.get("train_step", {}).get(kind)
    if not row:
        return None, None
    scale = (run.batch_size * run.max_length) / (row["batch_size"] * row["max_length"])
    return run.steps * row["seconds_per_step"] * scale, row.get("peak_gib", 0) * scale


def plan_report(config: RunConfig, data_dir=None, device_check: Path = DEVICE_CHECK) -> str:
    """The plan as text: the runs table and the totals."""
    import json

    measured = json.loads(device_check.read_text()) if device_check.is_file() else None
    runs = planned_runs(config, data_dir)
    depth, params = backbone_facts(config.backbone)
    lines = [f"profile {config.profile}: backbone {config.backbone} ({depth or '?'} layers, "
             f"{params / 1e6 if params else float('nan'):.1f}M parameters), seeds {config.seeds}, "
             f"ablations {config.ablations}"]
    for corpus in sorted({config.for_stage(s).corpus for s in STAGES}):
        n, source = corpus_sentences(corpus, data_dir)
        lines.append(f"corpus {corpus}: {n:,} sentences ({source})")
    lines += ["", f"{'stage':<9} {'seed':>4}  {'steps':>7} {'dev evals':>9} {'batch x len':>11}  "
                  f"{'est. time':>9}  why"]
    total_s, peak, disk = 0.0, 0.0, 0.0
    for r in runs:
        seconds, gib = estimate(r, measured)
        total_s += seconds or 0
        peak = max(peak, gib or 0)
        towers = 2 if r.stage in TWIN_STAGES else 1
        disk += towers * (params or 0) * 4 * 4 / 2**30  # fp32 best model + checkpoint (weights, two AdamW moments)
        shown = f"{seconds / 3600:.2f} h" if seconds is not None else "?"
        lines.append(f"{r.stage:<9} {r.seed:>4}  {r.steps:>7,} {r.evaluations:>9,} "
                     f"{f'{r.batch_size} x {r.max_length}':>11}  {shown:>9}  {r.why}")
    lines += ["", f"{len(runs)} training runs, {sum(r.steps for r in runs):,} optimizer steps, "
                  f"{sum(r.evaluations for r in runs):,} STS-B dev evaluations"]
    lines.append(f"disk for the run cache: about {disk:.1f} GiB (fp32 best models and resumable checkpoints)"
                 if params else "disk: unknown (the backbone's size is not known offline)")
    if measured:
        lines.append(f"estimated training time: {total_s / 3600:.1f} h on {measured.get('device', 'the measured GPU')}"
                     f" (from {device_check.relative_to(REPO_ROOT)}; step time scaled by tokens per step; dev "
                     f"evaluations and test scoring add to it); peak GPU memory about {peak:.1f} GiB")
    else:
        lines.append(f"time and GPU memory: not estimated, {device_check.relative_to(REPO_ROOT)} is absent (no GPU "
                     "measurement is committed); run `python bench/device_check.py --out results/gpu` on the GPU")
    return "\n".join(lines)
