"""The run cache: "the model of stage X under this config", trained once and reused by every notebook.

A stage's run lives in `runs/<profile>/<stage>-<key>/` where `key` (`stage_key`, the one run identity) hashes exactly
the settings that stage (and the stages it starts from) depends on: an ablation that changes the modulus weight
retrains the joint stage but reuses the two SimCSE encoders. A run counts as complete only when its `DONE` marker
exists; the marker is written after training has finished and the best model is on disk, so a killed run is resumed
(from its checkpoint) instead of being used half-trained.

Stages and what they start from (per seed):
    simcse_a, simcse_b  <- the backbone
    tncse, jtcse        <- (simcse_a, simcse_b)
    distill             <- jtcse (the teacher)
STS test scores are cached beside the model (`sts_<pooling>_<test_pairs>_<bootstrap>.json`) so that tables
never re-encode. Besides the stages, two controls are scored the same way (`SCORED`): "simcse_a+simcse_b", the
untrained twin (the two stage-1 towers summed: stage 2's starting point), and "jtcse/tower_a", the teacher's tower A
alone (the distillation's starting point under distill_init=tower_a).

A complete cache needs no write access: complete runs and cached scores are only read (no lock is taken for a
complete run), so a cache on a read-only disk serves everything it holds; what it lacks stops with one line.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from .config import STAGES, TRAINING_VERSION, TWIN_STAGES, RunConfig, config_hash, stage_settings
from .data import content_digest, corpus_digest, sts_test_digest, stsb_path
from .errors import ConfigError, Interrupted, JtcseError
from .files import FileProblem, NoSpace, exclusive_lock, lock_holder, read_json, read_jsonl, write_json, write_npz
from .paths import runs_root  # runs.runs_root: where the run cache lives (jtcse_lib.paths owns it)

_PARENTS = {"simcse_a": (), "simcse_b": (), "tncse": ("simcse_a", "simcse_b"), "jtcse": ("simcse_a", "simcse_b"),
            "distill": ("jtcse",)}


def stage_key(config: RunConfig, stage: str, data_dir=None) -> str:
    """Hash of the settings `stage` depends on, its parents' included, and of the data it reads: the content of
    the training corpus and of STS-B dev (selection), not where they lie, so moving the data retrains nothing."""
    if stage not in STAGES:
        raise ConfigError(f"unknown run stage {stage!r}", f"use one of {', '.join(STAGES)}")
    own = stage_settings(config, stage)
    own["backbone"] = _backbone_identity(config.backbone)
    own["data"] = {"corpus": corpus_digest(config.for_stage(stage).corpus, data_dir),
                   "stsb_dev": content_digest(stsb_path("dev", data_dir))}
    own["training_version"] = TRAINING_VERSION  # a model trained by code that trained differently is not reused
    own["parents"] = [stage_key(config, p, data_dir) for p in _PARENTS[stage]]
    return config_hash(own)


def _backbone_identity(backbone: str) -> str:
    """A backbone as the run key holds it: its name, and for one the library builds (tiny-bert) the recipe its
    cache folder is named by, so that a changed recipe retrains instead of reusing runs of the old model."""
    from .backbones import resolve

    ref = resolve(backbone) if backbone == "tiny-bert" else None  # resolve builds it: only for the built one
    return f"{backbone}@{Path(ref.source).name}" if ref is not None and ref.kind == "built" else backbone


def run_stage(config: RunConfig, stage: str) -> str:
    """The stage whose run trains `stage` under `config`: `stage` itself, except jtcse with no branch and the fixed
    A -> B direction, which trains exactly the tncse stage's model when every setting tncse reads agrees
    (tests/test_train.py); it is then that run, not a second training of it (the `fixed_direction` ablation
    under `cpu`, where TNCSE trains at JTCSE's rate)."""
    if stage != "jtcse":
        return stage
    from .ablations import layer_count

    jtcse, tncse = stage_settings(config, "jtcse"), stage_settings(config, "tncse")
    no_branch = layer_count(config.for_stage("jtcse")) == 0
    same = no_branch and jtcse["icnce_direction"] == "a_to_b" and all(jtcse[k] == v for k, v in tncse.items())
    return "tncse" if same else stage


def run_dir(config: RunConfig, stage: str, data_dir=None) -> Path:
    stage = run_stage(config, stage)
    return runs_root() / config.profile / f"{stage}-{stage_key(config, stage, data_dir)}"


def is_complete(config: RunConfig, stage: str, data_dir=None) -> bool:
    return (run_dir(config, stage, data_dir) / "DONE").is_file()


def trained_model(config: RunConfig, stage: str, data_dir=None, progress: bool = True) -> Path:
    """The best model of `stage` under `config` (a HF folder, or a twin folder). Trains it, and the stages it starts
    from, when the cache lacks them: instant when cached, minutes to hours otherwise. Two callers asking for the
    same run train it once: the second waits on the run cache's lock (`<run>.lock` beside it; the trainer takes its
    own writer lock inside), then finds it complete."""
    stage = run_stage(config, stage)
    out = run_dir(config, stage, data_dir)
    if (out / "DONE").is_file():
        return out / "best"
    parents = [trained_model(config, p, data_dir, progress) for p in _PARENTS[stage]]
    lock = out.with_name(f"{out.name}.lock")
    if holder := lock_holder(lock):
        print(f"run cache: waiting for {holder}, which is training {out.name}", file=sys.stderr)
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock, f"the run cache's {out.name}", wait=True))
        except NoSpace:
            raise
        except FileProblem as e:  # a read-only cache (a published copy, a read-only mount) serves only what it holds
            raise _cannot_add(f"the {stage} run {out.name}", out.parent, e) from None
        if not (out / "DONE").is_file():  # another process may have finished it while we waited
            _train(config, stage, out, parents, data_dir, progress)
    return out / "best"


def _cannot_add(what: str, folder: Path, error: BaseException) -> FileProblem:
    cause = getattr(error, "strerror", None) or getattr(error, "problem", None) or error
    return FileProblem(f"{what} is not in the run cache, and {folder} cannot be written to add it ({cause})",
                       "make the run cache writable, or point JTCSE_RUNS_DIR at a writable copy of it")


def _train(config: RunConfig, stage: str, out: Path, parents: list[Path], data_dir, progress: bool) -> None:
    from .train import Trainer

    starts = {}  # what the stage starts from: the two stage-1 towers, or the teacher
    if stage in TWIN_STAGES:
        starts["init"] = tuple(parents)
    elif stage == "distill":
        starts["teacher"] = parents[0]
    # a folder without a run record is not a run of this version (or was killed before it wrote one): it is moved
    # aside to <folder>.old-<time>, never deleted; a run record lets the trainer decide (resume from its checkpoint,
    # from step 0 when it has none, or report a finished run)
    restart = out.is_dir() and any(out.iterdir()) and not (out / "run.json").is_file()
    if config.nproc > 1:  # DDP: torchrun starts the processes, the notebook kernel waits
        _train_distributed(config, stage, out, data_dir, restart, **starts)
    else:
        Trainer(config, stage, out, data_dir=data_dir, progress=progress, restart=restart, **starts).run()
    if not (out / "best").is_dir():
        raise RuntimeError(f"training of {stage} finished without a best model in {out}")
    write_json(out / "DONE", {"stage": stage, "key": stage_key(config, stage, data_dir)})


def _train_distributed(config: RunConfig, stage: str, out: Path, data_dir, restart: bool, init=None,
                       teacher=None) -> None:
    """Train one stage in `nproc` processes: the `train` command under torchrun, given the resolved config."""
    from .distributed import launch

    record = out.with_name(f"{out.name}.launch.json")  # beside the run folder, which must hold only the run
    write_json(record, config.to_dict())
    argv = ["train", "--stage", stage, "--config", str(record), "--out", str(out)]
    argv += ["--init", *map(str, init)] if init else []
    argv += ["--teacher", str(teacher)] if teacher else []
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    argv += ["--restart"] if restart else []
    code = launch(config.nproc, argv)
    if code == 130:  # Ctrl-C / SIGTERM: the ranks checkpointed
        raise Interrupted(f"distributed training of {stage} into {out} was stopped",
                          "run the same command again: the run resumes from its last checkpoint")
    if code:
        raise JtcseError(f"distributed training of {stage} into {out} failed (see the lines above)",
                         "remove the cause and run again: the run resumes from its last checkpoint")


def metrics(config: RunConfig, stage: str, data_dir=None) -> list[dict]:
    """The metrics.jsonl records of a run (training loss terms and STS-B dev scores)."""
    path = run_dir(config, stage, data_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"no metrics for {stage} under this config ({path})", "train it first with trained_model()")
    return read_jsonl(path, "metrics log", "train it again: delete the run folder", ConfigError)[0]


def summary(config: RunConfig, stage: str, data_dir=None) -> dict:
    """The run's result.json (best step, best dev score, wall time, provenance)."""
    return read_json(run_dir(config, stage, data_dir) / "result.json", "run result",
                     "train it first with trained_model()", ConfigError)


# ---------------------------------------------------------------- cached test scores

UNTRAINED_TWIN, TEACHER_TOWER_A = "simcse_a+simcse_b", "jtcse/tower_a"
SCORED = (*STAGES, UNTRAINED_TWIN, TEACHER_TOWER_A)  # what sts_scores, compare and transfer_scores take (or None)


def _scored_model(config: RunConfig, stage: str | None, data_dir, progress: bool):
    """(the model to score, the folder its cached scores live in): the backbone's in
    runs/<profile>/backbone-<key>/, a stage's beside its best model (trained first if needed), the untrained twin's
    in runs/<profile>/simcse_a+simcse_b-<key>/, tower A's of the teacher in its run folder's scores-tower_a/."""
    if stage is None:
        key = config_hash({"backbone": _backbone_identity(config.backbone), "eval_max_length": config.eval_max_length})
        return config.backbone, runs_root() / config.profile / f"backbone-{key}"
    if stage == UNTRAINED_TWIN:
        towers = [trained_model(config, s, data_dir, progress) for s in ("simcse_a", "simcse_b")]
        key = config_hash({"towers": [stage_key(config, s, data_dir) for s in ("simcse_a", "simcse_b")],
                           "eval_max_length": config.eval_max_length})
        return towers, runs_root() / config.profile / f"{UNTRAINED_TWIN}-{key}"
    if stage == TEACHER_TOWER_A:
        best = trained_model(config, "jtcse", data_dir, progress)
        return best / "tower_a", best.parent / "scores-tower_a"
    if stage not in STAGES:
        raise ConfigError(f"unknown model {stage!r} to score", f"use None (the backbone) or one of {', '.join(SCORED)}")
    model = trained_model(config, stage, data_dir, progress)
    return model, model.parent


def _named(model) -> str:
    return " + ".join(map(str, model)) if isinstance(model, list) else str(model)


def _cached(path: Path) -> dict | None:
    """A cached result, or None when absent or damaged (then it is computed again)."""
    try:
        cached = read_json(path, "cached result") if path.is_file() else None
    except FileProblem:
        return None
    return cached if isinstance(cached, dict) else None


def _encoder(config: RunConfig, model, pooling: str, cache: Path, what: str, progress: bool):
    """The encoder that computes `what` for `cache`, once the cache's folder proved writable: on a read-only disk one
    line, rather than minutes of work and then a failed write."""
    from .evaluate import sentence_encoder

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache.parent):
            pass
    except OSError as e:
        raise _cannot_add(what, cache.parent, e) from None
    return sentence_encoder(model, pooling, config.eval_batch_size, config.eval_max_length, progress)


def _sts_cache(config: RunConfig, stage: str | None, pooling: str, bootstrap: int, data_dir, progress: bool):
    """(the model to score, the JSON file its cached STS scores live in; `.npz` beside it: the per-pair cosines)."""
    model, folder = _scored_model(config, stage, data_dir, progress)
    return model, folder / f"sts_{pooling}_{config.test_pairs or 'all'}_{bootstrap}.json"


def sts_scores(config: RunConfig, stage: str | None, pooling: str = "cls", bootstrap: int = 1000,
               data_dir=None, progress: bool = True) -> dict:
    """STS test scores (the `evaluate --out` JSON) of a stage's best model, or of the backbone when stage is
    None; computed once and cached beside the model. A twin is scored as the sum of its towers."""
    from .evaluate import evaluate_sts
    from .provenance import provenance

    model, cache = _sts_cache(config, stage, pooling, bootstrap, data_dir, progress)
    digest = sts_test_digest(data_dir)
    cached = _cached(cache) if cache.with_suffix(".npz").is_file() else None
    if cached is not None and cached.get("test_data_digest") == digest:  # other test files' scores are recomputed
        return cached
    encoder = _encoder(config, model, pooling, cache, f"the STS scores {cache.name} of {stage or 'the backbone'}",
                       progress)
    report = evaluate_sts(encoder, data_dir=data_dir, bootstrap=bootstrap, seed=config.seed,
                          max_pairs=config.test_pairs)
    result = {"model": _named(model), "stage": stage or "backbone", "pooling": pooling, **report.to_dict(),
              "test_pairs_per_subset": config.test_pairs, "test_data_digest": digest, "config": config.to_dict(),
              **provenance()}
    write_npz(cache.with_suffix(".npz"), report.predictions())  # per-pair cosines, for paired comparisons
    write_json(cache, result)
    return result


def sts_predictions(config: RunConfig, stage: str | None, pooling: str = "cls", bootstrap: int = 1000,
                    data_dir=None, progress: bool = True) -> tuple[dict, dict]:
    """({task: per-pair cosines}, {task: gold scores}) of the model `sts_scores` scores (scored first if needed),
    in the pair order of the test sets: what `jtcse_lib.stats.paired_bootstrap` compares two models on."""
    import numpy as np

    sts_scores(config, stage, pooling, bootstrap, data_dir, progress)
    with np.load(_sts_cache(config, stage, pooling, bootstrap, data_dir, progress)[1].with_suffix(".npz")) as f:
        tasks = [k[5:] for k in f.files if k.startswith("pred_")]
        return {t: f[f"pred_{t}"] for t in tasks}, {t: f[f"gold_{t}"] for t in tasks}


def transfer_scores(config: RunConfig, stage: str | None, pooling: str = "cls", data_dir=None,
                    progress: bool = True) -> dict:
    """SentEval transfer accuracies (`jtcse_lib.transfer`) of a stage's best model, or of the backbone when stage is
    None, on the config's `transfer_tasks` with `transfer_kfold` folds; computed once and cached beside the model
    (`transfer_<pooling>_<tasks>_<kfold>_<limit>.json`; the fits use `transfer_jobs` processes)."""
    from .config import TRANSFER_TASKS
    from .provenance import provenance
    from .transfer import evaluate_transfer

    tasks = list(TRANSFER_TASKS) if config.transfer_tasks == "all" else list(config.transfer_tasks)
    model, folder = _scored_model(config, stage, data_dir, progress)
    limit = config.transfer_limit or "all"
    cache = folder / f"transfer_{pooling}_{'-'.join(tasks)}_{config.transfer_kfold}_{limit}.json"
    if (cached := _cached(cache)) is not None:
        return cached
    encoder = _encoder(config, model, pooling, cache, f"the transfer scores {cache.name} of {stage or 'the backbone'}",
                       progress)
    report = evaluate_transfer(encoder, tasks, data_dir, kfold=config.transfer_kfold, progress=progress,
                               n_jobs=config.transfer_jobs, limit=config.transfer_limit)
    result = {"model": _named(model), "stage": stage or "backbone", "pooling": pooling, **report.to_dict(),
              "config": config.to_dict(), **provenance()}
    write_json(cache, result)
    return result


def compare(config_a: RunConfig, stage_a: str | None, config_b: RunConfig, stage_b: str | None,
            pooling_a: str = "cls", pooling_b: str = "cls", n_boot: int = 1000, data_dir=None, progress: bool = True):
    """Model A minus model B on the seven STS test sets, paired: `stats.paired_bootstrap` of their cached per-pair
    cosines (the same resampled pairs for both; replicate seed 0 for every comparison). A DataFrame, one row per
    task and "avg"."""
    from .stats import paired_bootstrap

    pred_a, gold = sts_predictions(config_a, stage_a, pooling_a, data_dir=data_dir, progress=progress)
    pred_b, gold_b = sts_predictions(config_b, stage_b, pooling_b, data_dir=data_dir, progress=progress)
    if any(len(gold[t]) != len(gold_b[t]) for t in gold):
        raise ConfigError("the two models were scored on different test pairs (test_pairs differs)",
                          "compare models scored under the same test_pairs")
    return paired_bootstrap(pred_a, pred_b, gold, n_boot=n_boot, seed=0)


def better_simcse_tower(config: RunConfig, data_dir=None) -> str:
    """The stage-1 tower ("simcse_a" or "simcse_b") with the higher STS-B dev score under `config`: the stricter
    SimCSE baseline, chosen on dev, never on a test set."""
    dev = {s: summary(config, s, data_dir)["best_stsb_dev"] for s in ("simcse_a", "simcse_b")}
    return max(dev, key=dev.get)


def copy_run_records(profile: str, dest: Path) -> list[Path]:
    """Copy each run's small records (result.json: config, commit, versions, wall time, best step; metrics.jsonl;
    the cached sts_*.json and transfer_*.json test scores) to `dest/<run>/`, so that a committed results folder
    holds them without the model weights."""
    copied = []
    for run in sorted(p for p in (runs_root() / profile).iterdir() if p.is_dir() and "-" in p.name):
        files = [f for f in (run / "result.json", run / "metrics.jsonl") if f.is_file()]
        scores = [f for pattern in ("sts_*.json", "transfer_*.json", "scores-*/sts_*.json") for f in run.glob(pattern)]
        for f in files + sorted(scores):
            target = Path(dest) / run.name / f.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copyfile(f, target)))
    return copied
