"""What a profile will do, before it runs: `python -m jtcse_lib plan --profile P`.

Every training run of a complete pipeline (five stages per seed, plus the ablations that retrain), the optimizer
steps and STS-B dev evaluations of each, and the disk the run cache will hold (`disk_need`). Where the output root
holds a GPU measurement (`results/gpu/device_check.json`, written by `bench/device_check.py` on a CUDA GPU with the
profile's depth, not `--quick`), also wall time and GPU memory; otherwise it says why not. Offline and in seconds:
nothing is loaded or downloaded (the sizes of the full Wiki1M and of the paper's backbones are known constants, and
the report says when it used them).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .ablations import chosen_ablations, seeds_of
from .config import STAGES, TWIN_STAGES, RunConfig, config_hash, stage_settings
from .paths import output_root
from .runs import _PARENTS, run_stage

DEVICE_CHECK_FORMAT = 2  # the version of bench/device_check.py's JSON this module reads
# Facts for when the files are not on this machine (the full Wiki1M, the Hub's models).
CORPUS_SENTENCES = {"wiki1m": 1_000_000, "wiki1m_subset": 30_762}
SICK_SENTENCES = 10_069  # distinct sentences of SICK train + trial + test (what `<corpus>+sick` appends)
# (layers, parameters, hidden size); parameters as `BertModel`/`RobertaModel` count them, pooler included
BACKBONES = {"bert-base-uncased": (12, 109_482_240, 768), "roberta-base": (12, 124_645_632, 768),
             "minilm": (6, 22_713_216, 384)}
FP32 = 4  # bytes
TOKENIZER_BYTES = 2**20  # the tokenizer files saved beside each tower (bert-base-uncased's: 0.7 MB)
RECORD_BYTES = 2 * 2**20  # a run's records: metrics.jsonl, run.json, result.json, cached test scores and cosines


def device_check_path() -> Path:
    """Where the committed GPU measurement lies: results/gpu/device_check.json under the output root."""
    return output_root() / "results" / "gpu" / "device_check.json"


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
    precision: str = "fp32"
    train_mlp_head: bool = False


@dataclass(frozen=True)
class Backbone:
    depth: int | None
    parameters: int | None
    hidden: int | None


def _settings_key(config: RunConfig, stage: str) -> str:
    """runs.stage_key without the data digests and the backbone's build (offline): equal for the same run."""
    own = stage_settings(config, stage)
    own["parents"] = [_settings_key(config, p) for p in _PARENTS[stage]]
    return config_hash(own)


def corpus_sentences(corpus: str, data_dir=None) -> tuple[int, str]:
    """(sentences, where the number comes from): counted when the file is here, else the known size (and why)."""
    from .data import CORPORA, SICK_SUFFIX, read_corpus

    base, sick = corpus.removesuffix(SICK_SUFFIX), corpus.endswith(SICK_SUFFIX)
    try:
        return len(read_corpus(corpus, data_dir)), "counted"
    except Exception as e:  # not on this machine (e.g. the full Wiki1M): the known size, if it is known
        why = (str(getattr(e, "problem", None) or e).strip().splitlines() or [type(e).__name__])[0]
        if base not in CORPUS_SENTENCES:
            return 0, f"unknown: {why}"
        added = f" + SICK's {SICK_SENTENCES:,}" if sick else ""
        return CORPUS_SENTENCES[base] + SICK_SENTENCES * sick, (
            f"not counted: {why}; the known size of {base} ({CORPORA.get(base, base)}: "
            f"{CORPUS_SENTENCES[base]:,}{added}) is used")


def _bert_parameters(c: dict) -> int | None:
    """Parameters of a BERT/RoBERTa-type encoder with a pooler from its config (exact for BertModel/RobertaModel)."""
    try:
        H, I, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
        embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c.get("type_vocab_size", 2)) * H + 2 * H
        layer = 4 * (H * H + H) + 2 * H + H * I + I + I * H + H + 2 * H  # Q, K, V, O; LayerNorm; FFN; LayerNorm
        return embeddings + L * layer + H * H + H
    except (KeyError, TypeError):
        return None


def _safetensors_parameters(folder: Path) -> int | None:
    """Floating-point parameters in a folder's *.safetensors, from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    files, total = sorted(folder.glob("*.safetensors")), 0
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            slices = [st.get_slice(name) for name in st.keys()]
            total += sum(math.prod(s.get_shape()) for s in slices if s.get_dtype().startswith(("F", "BF")))
    return total if files else None


def backbone_facts(backbone: str) -> Backbone:
    """Depth, parameters and hidden size of a backbone: known for the paper's and the shipped ones, computed for
    `tiny-bert`, else read from its folder (config.json and the safetensors headers); None where unknown."""
    if backbone in BACKBONES:
        return Backbone(*BACKBONES[backbone])
    if backbone == "tiny-bert":
        from .backbones import TINY_BERT

        return Backbone(TINY_BERT["num_hidden_layers"], _bert_parameters(TINY_BERT), TINY_BERT["hidden_size"])
    from safetensors import SafetensorError

    folder = Path(backbone).expanduser()
    try:  # a Hub id has no folder: not known offline
        config = json.loads((folder / "config.json").read_text(encoding="utf8"))
        params = _safetensors_parameters(folder) or _bert_parameters(config)
        return Backbone(config.get("num_hidden_layers"), params, config.get("hidden_size"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return Backbone(None, None, None)


def planned_runs(config: RunConfig, data_dir=None, count_steps: bool = True) -> list[PlannedRun]:
    """Every training run of a complete pipeline under `config`, each once (the run cache trains it once).
    `count_steps=False` skips the corpus sizes (steps and evaluations are then 0): the runs alone, for the disk."""
    wanted = [(config.replace(seed=seed), stage, "main") for seed in config.seeds for stage in STAGES]
    depth = backbone_facts(config.backbone).depth or 12
    for a in chosen_ablations(config, depth)[0]:  # notebook 06: each ablation on its seeds (paired over them)
        for seed in seeds_of(a, config):
            variant = a.config(config.replace(seed=seed))
            wanted.append((variant, run_stage(variant, a.stage), a.name))  # a variant equal to a stage is its run
    runs, seen, sizes = [], set(), {}
    for cfg, stage, why in wanted:
        for needed in (*_PARENTS[stage], stage):  # an ablation's stage-1 towers are the reference's
            key = _settings_key(cfg, needed)
            if key in seen:
                continue
            seen.add(key)
            s = cfg.for_stage(needed)
            steps = evaluations = 0
            if count_steps:
                if s.corpus not in sizes:
                    sizes[s.corpus] = corpus_sentences(s.corpus, data_dir)[0]
                sentences = min(sizes[s.corpus], s.corpus_limit or sizes[s.corpus])  # the corpus_limit first ones
                steps = s.max_steps or s.epochs * max(1, sentences // s.batch_size // s.grad_accum)
                evaluations = steps // s.eval_every + 1
            runs.append(PlannedRun(needed, cfg.seed, why if needed == stage else "main", steps, evaluations,
                                   s.batch_size, s.max_length, key, s.precision,
                                   s.train_mlp_head and needed in ("simcse_a", "simcse_b")))
    return runs


# ---------------------------------------------------------------- disk


def run_bytes(run: PlannedRun, backbone: Backbone) -> dict[str, int]:
    """What one run writes, in bytes (fp32): `best` (the tower(s) + tokenizer files), `checkpoint` (the weights,
    the train-only MLP head, and AdamW's two moments of each), `records`."""
    towers = 2 if run.stage in TWIN_STAGES else 1  # distill saves one student tower; its teacher is not saved
    weights = towers * backbone.parameters * FP32
    head = (backbone.hidden ** 2 + backbone.hidden) * FP32 if run.train_mlp_head and backbone.hidden else 0
    return {"best": weights + towers * TOKENIZER_BYTES, "checkpoint": 3 * (weights + head), "records": RECORD_BYTES}


def disk_need(config: RunConfig, data_dir=None) -> dict:
    """The run cache's disk for the whole plan, in bytes, from the real parameter counts:
    `pruned_bytes` (at the end, when finished runs delete their resume checkpoint, the default: every run's best/
    and records), `peak_run_bytes` (what the run in flight adds: its checkpoint/ and the checkpoint.tmp it writes
    beside it), `keep_bytes` (the peak with `keep_checkpoints: true`: every checkpoint kept, plus one .tmp), and
    `needed_bytes` (the peak under `config` as given). None, with a `reason`, when the backbone's size is not known
    offline; `runs` is the number of training runs."""
    keep = config.keep_checkpoints
    backbone = backbone_facts(config.backbone)
    runs = planned_runs(config, data_dir, count_steps=False)
    out = {"runs": len(runs), "keep_checkpoints": keep, "backbone_parameters": backbone.parameters}
    if not backbone.parameters:
        return {**out, **dict.fromkeys(("pruned_bytes", "keep_bytes", "peak_run_bytes", "needed_bytes")),
                "reason": f"the size of backbone {config.backbone!r} is not known offline"}
    sizes = [run_bytes(r, backbone) for r in runs]
    pruned = sum(s["best"] + s["records"] for s in sizes)
    largest = max(s["checkpoint"] for s in sizes)
    kept = pruned + sum(s["checkpoint"] for s in sizes) + largest
    return {**out, "pruned_bytes": pruned, "peak_run_bytes": 2 * largest, "keep_bytes": kept,
            "needed_bytes": kept if keep else pruned + 2 * largest, "largest_checkpoint_bytes": largest}


# ---------------------------------------------------------------- time and GPU memory


def read_device_check(config: RunConfig, path: Path | None = None) -> tuple[dict | None, str]:
    """(the measurement, "") when `path` can estimate `config`'s runs, else (None, why not in one sentence)."""
    path = path or device_check_path()
    shown = path.relative_to(output_root()) if path.is_relative_to(output_root()) else path
    if not path.is_file():
        return None, f"{shown} is absent (no GPU measurement is committed)"
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError) as e:
        return None, f"{shown} is not readable JSON ({e})"
    found = data.get("format") if isinstance(data, dict) else None
    if found != DEVICE_CHECK_FORMAT:
        return None, (f"{shown} was written by another version of bench/device_check.py (format {found}, this plan "
                      f"reads {DEVICE_CHECK_FORMAT})")
    if data.get("quick"):
        return None, f"{shown} was made with --quick (reduced settings: not a measurement)"
    if data.get("device_type") != "cuda":
        return None, f"{shown} was measured on {data.get('device_name') or data.get('device_type')}, not a CUDA GPU"
    depth, layers = backbone_facts(config.backbone).depth, data.get("layers")
    ts = data.get("train_step") if isinstance(data.get("train_step"), dict) else {}
    steps = [r for p in ("fp32", "bf16") for r in (ts.get(p) or {}).values() if isinstance(r, dict)]
    if not isinstance(layers, int) or not layers or not any("seconds_per_step" in r for r in steps):
        return None, f"{shown} holds no train-step measurement (its train_step check failed)"
    if depth and layers < depth:
        return None, f"{shown} measured a {layers}-layer model, the profile's backbone {config.backbone} has {depth}"
    return data, ""


def estimate(run: PlannedRun, measured: dict | None, backbone: Backbone | None = None
             ) -> tuple[float | None, float | None]:
    """(seconds, peak GPU GiB) of a run from the device check's step time at its stage kind and precision, scaled by
    the tokens per step; memory as the fixed part (fp32 weights, gradients, AdamW's two moments: 16 bytes a
    parameter, and the distillation teacher's weights) plus the measured activations scaled by tokens. (None, None)
    without a measurement for it. `auto` is measured as bf16 (the H100/H200 the check runs on have it); fp16 is not
    measured; fp32 rows are TF32, as inside training."""
    kind = "simcse" if run.stage in ("simcse_a", "simcse_b", "distill") else run.stage
    precision = {"fp32": "fp32", "bf16": "bf16", "auto": "bf16"}.get(run.precision, "")
    row = (measured or {}).get("train_step", {}).get(precision, {}).get(kind)
    if not row:
        return None, None
    scale = (run.batch_size * run.max_length) / (row["batch_size"] * row["max_length"])
    activations = max(0.0, row["peak_gib"] * 2**30 - 16 * (row.get("parameters") or 0)) * scale
    params = (backbone.parameters if backbone and backbone.parameters else row.get("parameters") or 0)
    towers = 2 if run.stage in TWIN_STAGES else 1
    fixed = 16 * towers * params + (2 * params * FP32 if run.stage == "distill" else 0)
    return run.steps * row["seconds_per_step"] * scale, (fixed + activations) / 2**30


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def plan_report(config: RunConfig, data_dir=None, device_check: Path | None = None) -> str:
    """The plan as text: the runs table and the totals."""
    device_check = device_check or device_check_path()
    measured, why_not = read_device_check(config, device_check)
    runs = planned_runs(config, data_dir)
    backbone = backbone_facts(config.backbone)
    params = f"{backbone.parameters / 1e6:.1f}M" if backbone.parameters else "unknown"
    lines = [f"profile {config.profile}: backbone {config.backbone} ({backbone.depth or '?'} layers, {params} "
             f"parameters), seeds {config.seeds}, ablations {config.ablations}"]
    for corpus in sorted({config.for_stage(s).corpus for s in STAGES}):
        n, source = corpus_sentences(corpus, data_dir)
        lines.append(f"corpus {corpus}: {n:,} sentences ({source})")
    lines += ["", f"{'stage':<9} {'seed':>4}  {'steps':>7} {'dev evals':>9} {'batch x len':>11} {'precision':>9}  "
                  f"{'est. time':>9}  why"]
    total_s, peak, unestimated = 0.0, (0.0, None), set()
    for r in runs:
        seconds, gib = estimate(r, measured, backbone)
        if measured and seconds is None:
            unestimated.add(r.precision)
        total_s += seconds or 0
        peak = max(peak, (gib or 0.0, r.stage), key=lambda p: p[0])
        shown = f"{seconds / 3600:.2f} h" if seconds is not None else "?"
        lines.append(f"{r.stage:<9} {r.seed:>4}  {r.steps:>7,} {r.evaluations:>9,} "
                     f"{f'{r.batch_size} x {r.max_length}':>11} {r.precision:>9}  {shown:>9}  {r.why}")
    lines += ["", f"{len(runs)} training runs, {sum(r.steps for r in runs):,} optimizer steps, "
                  f"{sum(r.evaluations for r in runs):,} STS-B dev evaluations"]
    disk = disk_need(config, data_dir)
    if disk["pruned_bytes"] is None:
        lines.append(f"disk: unknown ({disk['reason']})")
    else:
        where = f"{os.environ.get('JTCSE_RUNS_DIR') or 'runs'}/{config.profile}/"
        chosen = "keep_checkpoints: true" if disk["keep_checkpoints"] else "checkpoints pruned, the default"
        lines += [f"disk for the run cache ({where}), fp32, from the parameter counts; this config: "
                  f"{_gib(disk['needed_bytes'])} ({chosen})",
                  f"  checkpoints pruned: {_gib(disk['pruned_bytes'] + disk['peak_run_bytes'])} at the peak = "
                  f"{_gib(disk['pruned_bytes'])} of best models and records at the end + "
                  f"{_gib(disk['peak_run_bytes'])} while a run holds its checkpoint and writes the next beside it",
                  f"  keep_checkpoints: true: {_gib(disk['keep_bytes'])} (every run's resume checkpoint, weights + "
                  "AdamW's two moments, about 3x its best model, kept)"]
    if not measured:
        lines.append(f"time and GPU memory: not estimated: {why_not}; run `python bench/device_check.py --out "
                     "results/gpu` on a CUDA GPU")
        return "\n".join(lines)
    ts = measured.get("train_step", {})
    rows = [p for p in ("fp32", "bf16") if isinstance(ts.get(p), dict) and isinstance(ts[p].get("simcse"), dict)]
    tf32 = {p for p in rows for r in ts[p].values() if isinstance(r, dict) and r.get("tf32")}
    measured_in = ", ".join(p + (" (TF32)" if p in tf32 else "") for p in rows)
    lines.append(f"estimated training time: {total_s / 3600:.1f} h on {measured.get('device_name')} (from "
                 f"{device_check.name}: step times measured in {measured_in} at batch {ts.get('batch_size')} x "
                 f"{ts.get('max_length')}, scaled by tokens per step; dev evaluations and test scoring add to it)"
                 f"; peak GPU memory about {peak[0]:.1f} GiB ({peak[1]})")
    if unestimated:
        lines.append(f"  not estimated: the runs in {', '.join(sorted(unestimated))} (not measured by the check)")
    return "\n".join(lines)
