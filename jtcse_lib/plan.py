"""What a profile will do, before it runs: `python -m jtcse_lib plan --profile P`.

Lists every training run a complete pipeline makes (five stages per seed, plus the ablations that retrain), the
optimizer steps and STS-B dev evaluations of each, and the disk the run cache will hold (`disk_need`), with the
finished runs' resume checkpoints pruned (the default) and kept (`keep_checkpoints: true`). Where the repository
holds a GPU measurement (`results/gpu/device_check.json`, written by `bench/device_check.py` on a CUDA GPU with the
profile's depth, not `--quick`), it also estimates wall time and GPU memory from it; otherwise it says why not.
Offline and in seconds: nothing is loaded or downloaded (corpus sizes and model sizes of the paper's backbones are
known constants when the files are not at hand, and the report says when it used them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .ablations import chosen_ablations
from .config import STAGES, TWIN_STAGES, RunConfig, config_hash, stage_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICE_CHECK = REPO_ROOT / "results" / "gpu" / "device_check.json"
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
    precision: str = "fp32"
    train_mlp_head: bool = False


@dataclass(frozen=True)
class Backbone:
    depth: int | None
    parameters: int | None
    hidden: int | None


def _settings_key(config: RunConfig, stage: str) -> str:
    own = stage_settings(config, stage)
    own["parents"] = [_settings_key(config, p) for p in _PARENTS[stage]]
    return config_hash(own)


def corpus_sentences(corpus: str, data_dir=None) -> tuple[int, str]:
    """(sentences, where the number comes from): counted when the file is here, else the known size (and why)."""
    from .data import CORPORA, corpus_files, read_corpus

    base = corpus.removesuffix("+sick")
    try:
        corpus_files(corpus, data_dir)
        return len(read_corpus(corpus, data_dir)), "counted"
    except Exception as e:  # not on this machine (e.g. the full Wiki1M): the known size, if it is known
        why = str(getattr(e, "problem", None) or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if base in CORPUS_SENTENCES:
            n = CORPUS_SENTENCES[base] + (SICK_SENTENCES if corpus.endswith("+sick") else 0)
            sick = f" + SICK's {SICK_SENTENCES:,}" if corpus.endswith("+sick") else ""
            return n, (f"not counted: {why}; the known size of {base} ({CORPORA.get(base, base)}: "
                       f"{CORPUS_SENTENCES[base]:,}{sick}) is used")
        return 0, f"unknown: {why}"


def _bert_parameters(c: dict) -> int | None:
    """Parameters of a BERT/RoBERTa-type encoder with a pooler from its config (exact for BertModel/RobertaModel)."""
    try:
        H, I, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
        embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c.get("type_vocab_size", 2)) * H + 2 * H
        layer = 4 * (H * H + H) + 2 * H + H * I + I + I * H + H + 2 * H
        return embeddings + L * layer + H * H + H
    except (KeyError, TypeError):
        return None


def _safetensors_parameters(folder: Path) -> int | None:
    """Floating-point parameters in a folder's *.safetensors, read from their headers (no tensor is loaded)."""
    files, total = sorted(folder.glob("*.safetensors")), 0
    for f in files:
        with f.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, t in header.items():
            if name != "__metadata__" and t["dtype"].startswith(("F", "BF")):
                n = 1
                for d in t["shape"]:
                    n *= d
                total += n
    return total if files else None


def backbone_facts(backbone: str) -> Backbone:
    """Depth, parameters and hidden size of a backbone: known for the paper's and the shipped ones, computed for
    `tiny-bert`, else read from its folder (config.json and the safetensors headers); None where unknown."""
    if backbone in BACKBONES:
        return Backbone(*BACKBONES[backbone])
    if backbone == "tiny-bert":
        from . import backbones

        spec = getattr(backbones, "TINY_BERT", None)
        if spec:
            return Backbone(spec["num_hidden_layers"], _bert_parameters(spec), spec["hidden_size"])
    folder = Path(backbone).expanduser()
    if not (folder / "config.json").is_file():
        return Backbone(None, None, None)  # a Hub id: not offline
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf8"))
        params = _safetensors_parameters(folder) or _bert_parameters(config)
        return Backbone(config.get("num_hidden_layers"), params, config.get("hidden_size"))
    except (OSError, ValueError, KeyError, TypeError):
        return Backbone(None, None, None)


def planned_runs(config: RunConfig, data_dir=None, count_steps: bool = True) -> list[PlannedRun]:
    """Every training run of a complete pipeline under `config`, each once (the run cache trains it once).
    `count_steps=False` skips the corpus sizes (steps and evaluations are then 0): the runs alone, for the disk."""
    wanted = [(config.replace(seed=seed), stage, "main") for seed in config.seeds for stage in STAGES]
    for seed in config.seeds:  # notebook 06 runs every ablation on every seed (paired over seeds)
        reference = config.replace(seed=seed)
        for a in chosen_ablations(reference, backbone_facts(config.backbone).depth or 12)[0]:
            wanted.append((a.config(reference), a.stage, a.name))
    runs, seen, sizes = [], set(), {}
    for cfg, stage, why in wanted:
        for needed in (*_PARENTS[stage], stage):  # an ablation's stage-1 towers are the reference's
            key = _settings_key(cfg, needed)
            if key in seen:
                continue
            seen.add(key)
            s = cfg.for_stage(needed)
            steps = 0
            if count_steps:
                if s.corpus not in sizes:
                    sizes[s.corpus] = corpus_sentences(s.corpus, data_dir)[0]
                sentences = min(sizes[s.corpus], s.corpus_limit or sizes[s.corpus])  # the corpus_limit first ones
                batches = sentences // s.batch_size
                steps = s.max_steps or s.epochs * max(1, batches // s.grad_accum)
            runs.append(PlannedRun(needed, cfg.seed, why if needed == stage else "main", steps,
                                   steps // s.eval_every + 1 if count_steps else 0, s.batch_size, s.max_length, key,
                                   s.precision, bool(s.train_mlp_head and needed in ("simcse_a", "simcse_b"))))
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
    """The run cache's disk for the whole plan, in bytes, both ways:

    - `pruned_bytes`: what it holds at the end when finished runs delete their resume checkpoint (the default):
      every run's best/ and records;
    - `peak_run_bytes`: what one run in flight adds to that: its checkpoint/ and, while it writes the next one,
      checkpoint.tmp (twice the largest checkpoint), so the peak with pruning is pruned_bytes + peak_run_bytes;
    - `keep_bytes`: the peak with `keep_checkpoints: true`: every run's best/, records and checkpoint/, plus the
      checkpoint.tmp of the run in flight;
    - `needed_bytes`: the peak under `config` as given (its `keep_checkpoints`).
    Sizes come from the real parameter counts (`backbone_facts`); all are None when the backbone's size is not
    known offline (`reason` says so). `runs` is the number of training runs."""
    keep = bool(getattr(config, "keep_checkpoints", False))
    backbone = backbone_facts(config.backbone)
    runs = planned_runs(config, data_dir, count_steps=False)
    out = {"runs": len(runs), "keep_checkpoints": keep, "backbone_parameters": backbone.parameters}
    if not backbone.parameters:
        return {**out, "pruned_bytes": None, "keep_bytes": None, "peak_run_bytes": None, "needed_bytes": None,
                "reason": f"the size of backbone {config.backbone!r} is not known offline"}
    sizes = [run_bytes(r, backbone) for r in runs]
    finished = sum(s["best"] + s["records"] for s in sizes)
    largest = max(s["checkpoint"] for s in sizes)
    pruned, peak = finished, 2 * largest
    kept = finished + sum(s["checkpoint"] for s in sizes) + largest
    return {**out, "pruned_bytes": pruned, "peak_run_bytes": peak, "keep_bytes": kept,
            "needed_bytes": kept if keep else pruned + peak, "largest_checkpoint_bytes": largest}


# ---------------------------------------------------------------- time and GPU memory


def read_device_check(config: RunConfig, path: Path = DEVICE_CHECK) -> tuple[dict | None, str]:
    """(the measurement, "") when `path` can estimate `config`'s runs, else (None, why not in one sentence)."""
    try:
        shown = path.relative_to(REPO_ROOT)
    except ValueError:
        shown = path
    if not path.is_file():
        return None, f"{shown} is absent (no GPU measurement is committed)"
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError) as e:
        return None, f"{shown} is not readable JSON ({e})"
    if not isinstance(data, dict) or data.get("format") != DEVICE_CHECK_FORMAT:
        return None, f"{shown} was written by another version of bench/device_check.py (format " \
                     f"{data.get('format') if isinstance(data, dict) else None}, this plan reads {DEVICE_CHECK_FORMAT})"
    if data.get("quick"):
        return None, f"{shown} was made with --quick (reduced settings: not a measurement)"
    if data.get("device_type") != "cuda":
        return None, f"{shown} was measured on {data.get('device_name') or data.get('device_type')}, not a CUDA GPU"
    depth, layers = backbone_facts(config.backbone).depth, data.get("layers")
    ts = data.get("train_step") if isinstance(data.get("train_step"), dict) else {}
    if not any(isinstance(r, dict) and "seconds_per_step" in r for p in ("fp32", "bf16")
               for r in (ts.get(p) or {}).values()):
        layers = None
    if not isinstance(layers, int) or (depth and layers < depth):
        return None, (f"{shown} measured a {layers}-layer model, the profile's backbone {config.backbone} has {depth}"
                      if layers else f"{shown} holds no train-step measurement (its train_step check failed)")
    return data, ""


def _measured_precision(precision: str) -> str | None:
    """The device check's rows a stage's precision uses: fp32 (TF32 inside training) or bf16 (`auto` on a GPU with
    bf16, as the H100/H200 the check runs on); fp16 is not measured."""
    return {"fp32": "fp32", "bf16": "bf16", "auto": "bf16"}.get(precision)


def estimate(run: PlannedRun, measured: dict | None, backbone: Backbone | None = None
             ) -> tuple[float | None, float | None]:
    """(seconds, peak GPU GiB) of a run from the device check's step time at its stage kind and precision, scaled by
    the tokens per step; memory as the fixed part (fp32 weights, gradients, AdamW's two moments: 16 bytes a
    parameter, and the distillation teacher's weights) plus the measured activations scaled by tokens. (None, None)
    without a measurement for it."""
    if not measured:
        return None, None
    kind = "simcse" if run.stage in ("simcse_a", "simcse_b", "distill") else run.stage
    row = measured.get("train_step", {}).get(_measured_precision(run.precision) or "", {}).get(kind)
    if not row:
        return None, None
    scale = (run.batch_size * run.max_length) / (row["batch_size"] * row["max_length"])
    seconds = run.steps * row["seconds_per_step"] * scale
    measured_fixed = 16 * (row.get("parameters") or 0)
    activations = max(0.0, row["peak_gib"] * 2**30 - measured_fixed) * scale
    params = (backbone.parameters if backbone and backbone.parameters else row.get("parameters") or 0)
    towers = 2 if run.stage in TWIN_STAGES else 1
    fixed = 16 * towers * params + (2 * params * FP32 if run.stage == "distill" else 0)
    return seconds, (fixed + activations) / 2**30


def plan_report(config: RunConfig, data_dir=None, device_check: Path = DEVICE_CHECK) -> str:
    """The plan as text: the runs table and the totals."""
    measured, why_not = read_device_check(config, device_check)
    runs = planned_runs(config, data_dir)
    backbone = backbone_facts(config.backbone)
    params = backbone.parameters
    lines = [f"profile {config.profile}: backbone {config.backbone} ({backbone.depth or '?'} layers, "
             f"{f'{params / 1e6:.1f}M' if params else 'unknown'} parameters), seeds {config.seeds}, "
             f"ablations {config.ablations}"]
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
        if gib and gib > peak[0]:
            peak = (gib, r.stage)
        shown = f"{seconds / 3600:.2f} h" if seconds is not None else "?"
        lines.append(f"{r.stage:<9} {r.seed:>4}  {r.steps:>7,} {r.evaluations:>9,} "
                     f"{f'{r.batch_size} x {r.max_length}':>11} {r.precision:>9}  {shown:>9}  {r.why}")
    lines += ["", f"{len(runs)} training runs, {sum(r.steps for r in runs):,} optimizer steps, "
                  f"{sum(r.evaluations for r in runs):,} STS-B dev evaluations"]
    disk = disk_need(config, data_dir)
    where = f"{os.environ.get('JTCSE_RUNS_DIR') or 'runs'}/{config.profile}/"
    if disk["pruned_bytes"] is None:
        lines.append(f"disk: unknown ({disk['reason']})")
    else:
        def gib(b):
            return f"{b / 2**30:.1f} GiB"

        chosen = "keep_checkpoints: true" if disk["keep_checkpoints"] else "checkpoints pruned, the default"
        lines.append(f"disk for the run cache ({where}), fp32, from the parameter counts; this config: "
                     f"{gib(disk['needed_bytes'])} ({chosen})")
        lines.append(f"  checkpoints pruned: {gib(disk['pruned_bytes'] + disk['peak_run_bytes'])} at the peak = "
                     f"{gib(disk['pruned_bytes'])} of best models and records at the end + "
                     f"{gib(disk['peak_run_bytes'])} while a run holds its checkpoint and writes the next beside it")
        lines.append(f"  keep_checkpoints: true: {gib(disk['keep_bytes'])} (every run's resume checkpoint, weights + "
                     "AdamW's two moments, about 3x its best model, kept)")
    if measured:
        ts = measured.get("train_step", {})
        tf32 = {p for p in ("fp32", "bf16") for r in ts.get(p, {}).values() if isinstance(r, dict) and r.get("tf32")}
        rows = ", ".join(p + (" (TF32)" if p in tf32 else "") for p in ("fp32", "bf16")
                         if isinstance(ts.get(p), dict) and isinstance(ts[p].get("simcse"), dict))
        lines.append(f"estimated training time: {total_s / 3600:.1f} h on {measured.get('device_name')} (from "
                     f"{device_check.name}: step times measured in {rows} at batch {ts.get('batch_size')} x "
                     f"{ts.get('max_length')}, scaled by tokens per step; dev evaluations and test scoring add to it)"
                     f"; peak GPU memory about {peak[0]:.1f} GiB ({peak[1]})")
        if unestimated:
            lines.append(f"  not estimated: the runs in {', '.join(sorted(unestimated))} (not measured by the check)")
    else:
        lines.append(f"time and GPU memory: not estimated: {why_not}; run `python bench/device_check.py --out "
                     "results/gpu` on a CUDA GPU")
    return "\n".join(lines)
