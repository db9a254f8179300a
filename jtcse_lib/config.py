"""The run configuration: one dataclass, loaded from `params/<profile>.yaml`, overridable with key=value.

A profile sets the keys for every stage and may set any training key again for one stage, in a section named
after it (`simcse_a:`, `simcse_b:`, `tncse:`, `jtcse:`, `distill:`), which overrides the profile-wide value for
that stage only. Three levels, the later winning: the profile file (its profile-wide values, then its stage
sections), the command line's `--set key=value` (for every stage: it replaces the file's value in every section
too), and `--set stage.key=value` (that stage only). `config.for_stage(stage)` is the resolved configuration a
stage trains with (`python -m jtcse_lib config --profile P --stage S --set ...` prints it).

Unknown keys and impossible values are rejected with a message naming the key and the fix. The settings a stage
reads (`stage_settings`) key the run cache, so two runs with the same settings share their trained models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
# The stages, in training order: two SimCSE towers, the two joint variants from them, the distilled student.
# What the training code computes: bump it whenever a change alters the trained weights or the logged metrics of a
# run (tests/test_golden.py pins the smoke profile's metrics to it); it is part of every run-cache key.
TRAINING_VERSION = 2
STAGES = ("simcse_a", "simcse_b", "tncse", "jtcse", "distill")
TWIN_STAGES = ("tncse", "jtcse")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# the ablations notebook 06 knows (`ablations` picks a subset: each retrained variant costs a stage-2 run);
# jtcse_lib.ablations defines what each one changes
TRANSFER_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")  # SentEval's, as jtcse_lib.transfer runs them
ABLATIONS = ("reference", "no_modulus", "no_cross_cls", "no_branch", "tncse", "layers", "paper_modulus",
             "pool_mean", "pool_pooler", "distill", "distill_alpha0")


@dataclass
class RunConfig:
    """Everything a run depends on. Defaults are the `smoke` profile's (seconds on a CPU)."""

    profile: str = "smoke"
    backbone: str = "minilm"  # `minilm`, a model folder, or a Hub id (bert-base-uncased, roberta-base)
    corpus: str = "wiki1m_subset"  # a corpus name of jtcse_lib.data.CORPORA or a text file
    corpus_limit: int | None = 256  # keep the first N sentences (None: all)
    max_length: int = 32  # tokens per training sentence (truncated beyond; the count is logged)
    batch_size: int = 32  # sentences per step (each contributes two dropout views)
    grad_accum: int = 1  # optimizer step every N batches
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps per stage (None: epochs over the corpus)
    dropout: float | None = None  # hidden and attention dropout (None: the backbone's, 0.1 for BERT)
    seed: int = 42
    nproc: int = 1  # processes (GPUs) a stage trains with: torch.distributed DDP via torchrun when > 1
    device: str = "auto"  # auto (CUDA if usable, else CPU) | cpu | cuda (refuse without a usable GPU) | cuda:N

    lr: float = 3e-5  # peak learning rate (each stage usually sets its own in its section)

    # stage 1: two SimCSE encoders (tower A and tower B), as TNCSE/JTCSE start from two different ones
    seed_b_offset: int = 1  # tower B's seed = seed + offset (different dropout masks and data order)
    train_mlp_head: bool = False  # SimCSE's --mlp_only_train: an MLP over [CLS] in training, dropped at test

    # stage 2: joint training (TNCSE = no cross-attention; JTCSE = with it)
    cross_attention_layers: int | list[int] = 3  # count dividing the depth, or explicit 0-based layers
    temperature: float = 0.05
    modulus_variant: str = "official"  # "official" (LTN_loss of the authors' code) or "paper"
    w_nce: float = 1.0  # NT-Xent of each tower
    w_cross_cls: float = 1.0  # cross-tower NT-Xent on the towers' [CLS]
    w_cross_attention: float = 1.0  # cross-tower NT-Xent on the cross-attention [CLS]
    w_modulus: float = 1.0  # tensor-modulus term, (A, B) + (B, A)

    # distillation (JTCSE-D): one student tower from the twin teacher
    distill_init: str = "tower_a"  # "tower_a" of the teacher, or "backbone"
    distill_alpha: float = 1.0
    distill_temperature_student: float = 0.05
    distill_temperature_teacher: float = 0.05

    # optimisation and bookkeeping
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0  # the paper: no warm-up
    scheduler: str = "constant"  # "constant" or "linear" (decay to 0)
    max_grad_norm: float | None = None  # clip the gradient's global L2 norm (HF Trainer's default: 1.0)
    precision: str = "auto"  # auto: bf16 autocast on CUDA where supported, else fp16; fp32 on CPU
    deterministic: bool = False  # deterministic cuDNN/cuBLAS kernels (slower; CPU training is deterministic anyway)
    eval_every: int = 10  # STS-B dev every N optimizer steps (the paper: 100)
    eval_batch_size: int = 128
    eval_max_length: int | None = None  # truncation when encoding STS sentences (None: model limit)
    dev_pairs: int | None = 200  # STS-B dev pairs used for selection (None: all 1500)
    test_pairs: int | None = 100  # pairs per STS sub-set in test evaluations (None: all; smoke only)
    checkpoint_every: int = 50  # resumable checkpoint every N optimizer steps
    keep_checkpoints: bool = False  # keep a finished run's resume checkpoint (weights + optimizer: ~3x best/)
    log_every: int = 5
    seeds: list[int] = field(default_factory=lambda: [42])  # seeds of the main models (notebooks 03-05)
    ablations: str | list[str] = "all"  # notebook 06: "all", or a subset of ABLATIONS ("layers": every count)
    transfer_tasks: str | list[str] = "all"  # notebook 07: "all" (SentEval's seven) or a subset of them
    transfer_kfold: int = 10  # SentEval's folds (SimCSE's test mode: 10)
    transfer_jobs: int = 1  # processes fitting the classifiers, -1: one per core (the numbers do not depend on it)
    transfer_limit: int | None = None  # at most N examples per split (smoke only: the scores are then not SentEval's)

    # per-stage overrides: any training key (PER_STAGE_KEYS) set again for one stage
    simcse_a: dict[str, Any] = field(default_factory=dict)
    simcse_b: dict[str, Any] = field(default_factory=dict)
    tncse: dict[str, Any] = field(default_factory=dict)
    jtcse: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, key: str, problem: str, fix: str) -> None:
            if not cond:
                raise ConfigError(f"config key {key!r}: {problem}", fix)

        for key in ("batch_size", "grad_accum", "epochs", "max_length", "eval_every", "checkpoint_every",
                    "log_every", "eval_batch_size", "nproc"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) >= 1, key,
                 f"must be a positive integer, got {getattr(self, key)!r}", f"set {key}=1 or more")
        # one sentence per batch leaves an in-batch contrastive loss no negative: it is exactly 0 and nothing trains
        need(self.batch_size >= 2, "batch_size", "must be 2 or more (with 1 sentence the contrastive loss has no "
             "negative, is exactly 0, and the model never changes)", "set batch_size=32, say")
        need(isinstance(self.transfer_jobs, int) and (self.transfer_jobs >= 1 or self.transfer_jobs == -1),
             "transfer_jobs", f"must be -1 (one per core) or a positive integer, got {self.transfer_jobs!r}",
             "set transfer_jobs=-1")
        need(isinstance(self.device, str) and self.device.split(":")[0] in ("auto", "cpu", "cuda"), "device",
             f"unknown device {self.device!r}", "use auto, cpu, cuda or cuda:N")
        need(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1), "max_steps",
             f"must be a positive integer or null, got {self.max_steps!r}", "set max_steps=100, or null for epochs")
        for key in ("dev_pairs", "test_pairs"):
            value = getattr(self, key)
            need(value is None or (isinstance(value, int) and value >= 10), key,
                 f"must be 10 or more, or null (all pairs), got {value!r}", f"set {key}=null")
        need(self.corpus_limit is None or (isinstance(self.corpus_limit, int) and self.corpus_limit >= 2),
             "corpus_limit", f"must be 2 or more, or null, got {self.corpus_limit!r}", "set corpus_limit=null")
        for key in ("lr", "temperature", "distill_temperature_student", "distill_temperature_teacher"):
            need(_finite(getattr(self, key)) and getattr(self, key) > 0, key,
                 f"must be a positive finite number, got {getattr(self, key)!r}", f"set {key} to e.g. 1e-5")
        for key in ("w_nce", "w_cross_cls", "w_cross_attention", "w_modulus", "distill_alpha", "weight_decay",
                    "warmup_ratio"):
            need(_finite(getattr(self, key)) and getattr(self, key) >= 0, key,
                 f"must be a finite number >= 0, got {getattr(self, key)!r}", f"set {key}=0 to switch it off")
        need(self.warmup_ratio < 1, "warmup_ratio", "must be below 1", "set warmup_ratio=0.1, say")
        need(self.max_grad_norm is None or (_finite(self.max_grad_norm) and self.max_grad_norm > 0), "max_grad_norm",
             f"must be a positive finite number or null, got {self.max_grad_norm!r}", "set max_grad_norm=1.0")
        for key in ("train_mlp_head", "deterministic", "keep_checkpoints"):
            need(isinstance(getattr(self, key), bool), key, f"must be true or false, got {getattr(self, key)!r}",
                 f"set {key}=true")
        need(self.dropout is None or (_number(self.dropout) and 0 <= self.dropout < 1), "dropout",
             f"must be in [0, 1) or null, got {self.dropout!r}", "set dropout=0.1")
        need(self.modulus_variant in ("official", "paper"), "modulus_variant",
             f"unknown variant {self.modulus_variant!r}", "use official or paper")
        need(self.scheduler in ("constant", "linear"), "scheduler", f"unknown scheduler {self.scheduler!r}",
             "use constant or linear")
        need(self.precision in PRECISIONS, "precision", f"unknown precision {self.precision!r}",
             f"use one of {', '.join(PRECISIONS)}")
        need(self.distill_init in ("tower_a", "backbone"), "distill_init",
             f"unknown initialisation {self.distill_init!r}", "use tower_a or backbone")
        layers = self.cross_attention_layers
        need((isinstance(layers, int) and layers >= 0) or
             (isinstance(layers, list) and all(isinstance(i, int) and i >= 0 for i in layers)),
             "cross_attention_layers", f"must be a count >= 0 or a list of 0-based layer indices, got {layers!r}",
             "set cross_attention_layers=6 (a divisor of the depth) or [1,3,5]")
        need(isinstance(self.seeds, list) and len(self.seeds) >= 1 and all(isinstance(s, int) for s in self.seeds),
             "seeds", f"must be a non-empty list of integers, got {self.seeds!r}", "set seeds=[42,43,44]")
        need(self.transfer_limit is None or (isinstance(self.transfer_limit, int) and self.transfer_limit >= 20),
             "transfer_limit", f"must be 20 or more, or null (all examples), got {self.transfer_limit!r}",
             "set transfer_limit=null")
        need(isinstance(self.transfer_kfold, int) and self.transfer_kfold >= 2, "transfer_kfold",
             f"must be an integer of at least 2, got {self.transfer_kfold!r}", "set transfer_kfold=10")
        transfer = self.transfer_tasks
        need(transfer == "all" or (isinstance(transfer, list) and transfer and set(transfer) <= set(TRANSFER_TASKS)),
             "transfer_tasks", f"must be 'all' or a list of {', '.join(TRANSFER_TASKS)}; got {transfer!r}",
             "set transfer_tasks=all or e.g. transfer_tasks=[CR,TREC,MRPC]")
        chosen = self.ablations
        need(chosen == "all" or (isinstance(chosen, list) and all(a in ABLATIONS for a in chosen)),
             "ablations", f"must be 'all' or a list of {', '.join(ABLATIONS)}; got {chosen!r}",
             "set ablations=all or e.g. ablations=[reference,no_modulus]")
        for stage in STAGES:
            section = getattr(self, stage)
            need(isinstance(section, dict), stage, f"must be a mapping of keys to values, got {section!r}",
                 f"write e.g. {stage}: {{lr: 1.0e-5}}")
            bad = sorted(set(section) - set(PER_STAGE_KEYS))
            need(not bad, stage, f"cannot set {', '.join(bad)} per stage",
                 f"per-stage keys are {', '.join(PER_STAGE_KEYS)}")
            if section:
                self.for_stage(stage)  # the stage's values are valid too (its config has no sections: no recursion)

    # ------------------------------------------------------------------ derived

    def for_stage(self, stage: str) -> RunConfig:
        """The configuration `stage` trains with: the profile-wide values, overridden by the stage's section."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
        values = {k: _coerce(k, v) for k, v in getattr(self, stage).items()}
        return dataclasses.replace(self, **values, **{s: {} for s in STAGES})

    def stage_lr(self, stage: str) -> float:
        return self.for_stage(stage).lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return with_overrides(self, changes)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


def _basic_types(hint) -> set[type]:
    """The plain types a field's annotation admits: `int | list[int]` -> {int, list}, `float | None` -> {float,
    None}."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_basic_types(h) for h in typing.get_args(hint)))
    return {typing.get_origin(hint) or hint}


_FIELDS = {f.name: f for f in fields(RunConfig)}
_TYPES = {name: _basic_types(hint) for name, hint in typing.get_type_hints(RunConfig).items()}


def _coerce(key: str, value: Any) -> Any:
    """A value of the YAML file or of a `key=value` override for one key, converted by the field's type hint:
    a string is parsed as YAML unless the field is a plain string; YAML 1.1's "2e-5" (a string) becomes a float;
    a whole float becomes an int for an integer field, an int a float for a float field."""
    allowed = _TYPES[key]
    if isinstance(value, str) and allowed != {str}:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"config key {key!r}: cannot parse {value!r} ({e})",
                              "write a number, a list or null") from None
    if isinstance(value, str) and allowed & {int, float}:
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer() and int in allowed and float not in allowed:
        value = int(value)
    if _number(value) and isinstance(value, int) and float in allowed and int not in allowed:
        value = float(value)
    return value


def with_overrides(config: RunConfig, overrides: dict[str, Any] | list[str] | None) -> RunConfig:
    """A new config with `overrides` applied: a dict, or a list of `key=value` strings (values parsed as YAML).
    `stage.key=value` (or a dict value for a stage key) sets `key` in that stage's section, keeping its others."""
    if not overrides:
        return dataclasses.replace(config)
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value", "write e.g. --set batch_size=64")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value.strip()
        overrides = pairs
    data = config.to_dict()
    scoped = []  # (stage, {key: value}): applied after the plain keys, so that they win over them
    for key, value in overrides.items():
        stage, _, sub = key.partition(".")
        if sub:  # jtcse.lr=2e-5
            if stage not in STAGES:
                raise ConfigError(f"unknown stage {stage!r} in {key!r}", f"use one of {', '.join(STAGES)}")
            scoped.append((stage, {sub: value}))
        elif key in STAGES:
            scoped.append((key, value))
        elif key not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}", f"known keys: {', '.join(_FIELDS)}")
        else:  # a plain key wins over every stage section that set it before (the profile file's, say)
            data[key] = _coerce(key, value)
            for s in STAGES:
                data[s].pop(key, None)
    for key, value in scoped:
        if isinstance(value, str):
            value = _coerce(key, value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: must be a mapping, got {value!r}",
                              f"write e.g. {key}.lr=1e-5")
        unknown = sorted(set(value) - set(PER_STAGE_KEYS))
        if unknown:
            raise ConfigError(f"cannot set {', '.join(unknown)} per stage ({key})",
                              f"per-stage keys are {', '.join(PER_STAGE_KEYS)}")
        data[key] = {**data[key], **{k: _coerce(k, v) for k, v in value.items()}}
    return RunConfig(**data)


# ---------------------------------------------------------------- what each stage reads

# The settings a stage's trained model depends on: the run-cache key (jtcse_lib.runs) and the identity a run
# folder records (jtcse_lib.train) are made of them.
COMMON_KEYS = ("backbone", "corpus", "corpus_limit", "max_length", "batch_size", "grad_accum", "epochs", "max_steps",
               "dropout", "seed", "lr", "temperature", "weight_decay", "warmup_ratio", "scheduler", "max_grad_norm",
               "precision", "deterministic", "nproc", "eval_every", "dev_pairs", "eval_max_length")
STAGE_KEYS = {
    "simcse_a": ("train_mlp_head",),
    "simcse_b": ("train_mlp_head", "seed_b_offset"),
    "tncse": ("w_nce", "w_cross_cls", "w_modulus", "modulus_variant"),
    "jtcse": ("w_nce", "w_cross_cls", "w_modulus", "modulus_variant", "cross_attention_layers", "w_cross_attention"),
    "distill": ("distill_init", "distill_alpha", "distill_temperature_student", "distill_temperature_teacher"),
}
# Keys a stage section may set: every training key, not the run's identity (profile, backbone, seeds), nor what is
# decided once for all stages (the seed, the ablation list, test-set scoring).
PER_STAGE_KEYS = tuple(k for k in (*COMMON_KEYS, *dict.fromkeys(k for keys in STAGE_KEYS.values() for k in keys))
                       if k not in ("backbone", "seed", "seed_b_offset", "nproc"))
# Settings no stage's trained model depends on, and why (tests/test_config.py checks that every key is either
# read by a stage above or listed here).
UNKEYED = {
    "profile": "names the folder runs/<profile>/ that holds the runs",
    "seeds": "the list of seeds to run; each run is keyed by its own `seed`",
    "ablations": "which variants notebook 06 runs; each variant is keyed by the settings it changes",
    "test_pairs": "test-set scoring only, after training; cached scores are keyed by it in their file name",
    "eval_batch_size": "encoding batch size: the same scores up to float rounding (padding is masked)",
    "checkpoint_every": "when resumable checkpoints are written; a resumed run equals an uninterrupted one",
    "keep_checkpoints": "whether a finished run keeps its resume checkpoint on disk; the weights do not change",
    "device": "where the computation runs; the world size (nproc) and precision, which do matter, are keyed",
    "log_every": "how often loss terms are averaged into metrics.jsonl; the weights do not change",
    "transfer_tasks": "transfer evaluation only (notebook 07); cached transfer scores are keyed by their settings",
    "transfer_kfold": "transfer evaluation only; part of the cached transfer scores' file name",
    "transfer_jobs": "processes fitting the transfer classifiers; the numbers do not depend on it",
    "transfer_limit": "transfer evaluation only; part of the cached transfer scores' file name",
    **{stage: "per-stage overrides: folded into the keys above by for_stage, so keyed as the values they set"
       for stage in STAGES},
}


def stage_settings(config: RunConfig, stage: str) -> dict[str, Any]:
    """The settings `stage` reads (not those of the stages it starts from), as a dict."""
    if stage not in STAGE_KEYS:
        raise ConfigError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
    data = config.for_stage(stage).to_dict()
    return {k: data[k] for k in (*COMMON_KEYS, *STAGE_KEYS[stage])}


def stage_table(config: RunConfig, keys: list[str], stages: tuple[str, ...] = STAGES):
    """The value each stage trains with (`config.for_stage`) of each key: a pandas DataFrame, one row per key, one
    column per stage ("null" for None), so that a per-stage section shows where it applies."""
    import pandas as pd

    def shown(value) -> str:
        return "null" if value is None else str(value)

    return pd.DataFrame({s: {k: shown(getattr(config.for_stage(s), k)) for k in keys} for s in stages})


def available_profiles(params_dir: Path = PARAMS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(params_dir).glob("*.yaml"))


def load_profile(profile: str, overrides: dict | list[str] | None = None, params_dir: Path = PARAMS_DIR) -> RunConfig:
    """`params/<profile>.yaml` on top of the defaults, then `overrides`."""
    path = Path(params_dir) / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {profile!r} (no {path})",
                          f"use one of {', '.join(available_profiles(params_dir)) or '(none found)'}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({e})", "fix the file") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys", "write key: value lines")
    values.setdefault("profile", profile)
    return with_overrides(with_overrides(RunConfig(), values), overrides)


def config_hash(config: RunConfig | dict, keys: list[str] | None = None) -> str:
    """A short stable hash of (a subset of) the resolved configuration: the key of the run cache."""
    data = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    if keys is not None:
        data = {k: data[k] for k in keys}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
