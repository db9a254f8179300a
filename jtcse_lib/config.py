"""The run configuration: one dataclass, loaded from `params/<profile>.yaml`, overridable with key=value.

Three levels, the later winning: the profile file (its profile-wide values, then its stage sections `simcse_a:`,
`simcse_b:`, `tncse:`, `jtcse:`, `distill:`, which set training keys again for that stage only), the command
line's `--set key=value` (every stage: it replaces the file's value in the sections too), and `--set
stage.key=value` (that stage only). `config.for_stage(stage)` is what a stage trains with (`python -m jtcse_lib
config --profile P --stage S --set ...` prints it). A bad key or value is a ConfigError naming the key and the fix:
each value must have its annotated type (a `Literal` lists the choices) and pass its key's rule in `_RULES`.
The settings a stage reads (`stage_settings`) key the run cache: runs with the same settings share their models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .paths import source_dir

PARAMS_DIR = source_dir("params")
# What the training code computes: bump it whenever a change alters the trained weights or the logged metrics of a
# run (tests/test_golden.py pins the smoke profile's metrics to it); it is part of every run-cache key.
TRAINING_VERSION = 3  # 3: stage 1 is SimCSE's own loss (cl_forward) and saves its MLP as the pooler
# The stages, in training order: two SimCSE towers, the two joint variants from them, the distilled student.
STAGES = ("simcse_a", "simcse_b", "tncse", "jtcse", "distill")
TWIN_STAGES = ("tncse", "jtcse")
Precision = Literal["auto", "fp32", "bf16", "fp16"]
SentEvalTask = Literal["MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"]  # SentEval's (jtcse_lib.transfer)
PRECISIONS = typing.get_args(Precision)
TRANSFER_TASKS = typing.get_args(SentEvalTask)


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
    mlp_as_pooler: bool = True  # with train_mlp_head: the saved tower's pooler is the trained MLP (SimCSE's
    #                             simcse_to_huggingface.py), which the official modulus term of stage 2 reads

    # stage 2: joint training (TNCSE = no cross-attention; JTCSE = with it)
    cross_attention_layers: int | list[int] = 3  # count dividing the depth, or explicit 0-based layers
    cross_attention_rows: Literal["cls", "all"] = "cls"  # the branch: a shadow [CLS] row, or every row (model.py)
    icnce_direction: Literal["random", "a_to_b"] = "random"  # JTCSE draws A->B or B->A per step; a_to_b fixes it
    #                                                          (TNCSE's rule; the tncse stage always fixes it)
    temperature: float = 0.05
    modulus_variant: Literal["official", "paper"] = "official"  # official: LTN_loss of the authors' code
    w_nce: float = 1.0  # NT-Xent of each tower
    w_cross_cls: float = 1.0  # cross-tower NT-Xent on the towers' [CLS]
    w_cross_attention: float = 1.0  # cross-tower NT-Xent on the cross-attention [CLS]
    w_modulus: float = 1.0  # tensor-modulus term, (A, B) + (B, A)

    # distillation (JTCSE-D): one student tower from the twin teacher
    distill_init: Literal["tower_a", "backbone"] = "tower_a"  # the teacher's tower A, or the backbone
    distill_alpha: float = 1.0
    distill_temperature_student: float = 0.05
    distill_temperature_teacher: float = 0.05

    # optimisation and bookkeeping
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0  # the paper: no warm-up
    scheduler: Literal["constant", "linear"] = "constant"  # linear: decay to 0
    max_grad_norm: float | None = None  # clip the gradient's global L2 norm (HF Trainer's default: 1.0)
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA where supported, else fp16; fp32 on CPU
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
    # notebook 06: "all", or some of the variants of jtcse_lib.ablations.ABLATIONS ("layers": every count)
    ablations: Literal["all"] | list[str] = "all"
    single_seed_ablations: list[str] = field(default_factory=list)  # of those, the ones run on the first seed only
    transfer_tasks: Literal["all"] | list[SentEvalTask] = "all"  # notebook 07: "all" (SentEval's seven) or some
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
        for key in _HINTS:
            _check(key, getattr(self, key))
        for stage in STAGES:  # a section's values are checked as the stage's config will hold them
            section = getattr(self, stage)
            if bad := sorted(set(section) - set(PER_STAGE_KEYS)):
                raise ConfigError(f"config key {stage!r}: cannot set {', '.join(bad)} per stage",
                                  f"per-stage keys are {', '.join(PER_STAGE_KEYS)}")
            for key, value in section.items():
                _check(key, _coerce(key, value), f"{stage}.{key}")

    def for_stage(self, stage: str) -> RunConfig:
        """The configuration `stage` trains with: the profile-wide values, overridden by the stage's section."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
        values = {k: _coerce(k, v) for k, v in getattr(self, stage).items()}
        return dataclasses.replace(self, **values, **{s: {} for s in STAGES})

    def stage_lr(self, stage: str) -> float:
        return self.for_stage(stage).lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> RunConfig:
        """A copy with `changes` applied as `--set key=value` would (a plain key wins over the stage sections)."""
        return with_overrides(self, changes)


# ---------------------------------------------------------------- the checker, driven by the annotations

def _at_least(n: int):
    return lambda v: v >= n, f"{n} or more"


# key: (test of a value of the annotated type, what the value must be); None passes where the type allows it
_RULES = {
    **dict.fromkeys(("grad_accum", "epochs", "max_length", "max_steps", "eval_every", "eval_batch_size",
                     "checkpoint_every", "log_every", "nproc"), (lambda v: v >= 1, "a positive integer")),
    **dict.fromkeys(("lr", "temperature", "distill_temperature_student", "distill_temperature_teacher",
                     "max_grad_norm"), (lambda v: math.isfinite(v) and v > 0, "a positive finite number")),
    **dict.fromkeys(("w_nce", "w_cross_cls", "w_cross_attention", "w_modulus", "distill_alpha", "weight_decay"),
                    (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")),
    **dict.fromkeys(("dropout", "warmup_ratio"), (lambda v: 0 <= v < 1, "in [0, 1)")),
    **dict.fromkeys(("dev_pairs", "test_pairs"), _at_least(10)),
    "corpus_limit": _at_least(2), "transfer_limit": _at_least(20), "transfer_kfold": _at_least(2),
    # one sentence per batch leaves an in-batch contrastive loss no negative: it is exactly 0 and nothing trains
    "batch_size": (lambda v: v >= 2, "2 or more (with 1 sentence the contrastive loss has no negative, is exactly 0, "
                                     "and the model never changes)"),
    "cross_attention_layers": (lambda v: all(i >= 0 for i in (v if isinstance(v, list) else [v])),
                               "a count >= 0 or a list of 0-based layer indices"),
    "transfer_jobs": (lambda v: v == -1 or v >= 1, "-1 (one per core) or a positive integer"),
    "device": (lambda v: v.split(":")[0] in ("auto", "cpu", "cuda"), "auto, cpu, cuda or cuda:N"),
    "seeds": (bool, "a non-empty list of integers"),
    "transfer_tasks": (bool, "'all' or a non-empty list"),
}
_HINTS = typing.get_type_hints(RunConfig)
_DEFAULTS = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
             for f in dataclasses.fields(RunConfig)}
_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans"), type(None): ("null", "nulls")}


def _fits(value, hint) -> bool:
    """Whether `value` has the annotated type (a float field takes an int, an int field never a bool)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin in (list, dict):
        return isinstance(value, origin) and (origin is dict or all(_fits(v, args[0]) for v in value))
    if hint is Any:
        return True
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def _describe(hint, plural: bool = False) -> str:
    """An annotation in words: `Literal["all"] | list[str]` -> "'all' or a list of strings"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h, plural) for h in args)
    if origin is Literal:
        return ", ".join(args) if plural else repr(args[0]) if len(args) == 1 else f"one of {', '.join(args)}"
    if origin is list:
        return f"a list of {_describe(args[0], plural=True)}"
    if origin is dict:
        return "a mapping of keys to values"
    return _WORDS[hint][plural]


def _check(key: str, value, name: str | None = None) -> None:
    """Refuse a value of `key` (shown as `name`) that lacks the annotated type or fails the key's rule."""
    hint, name = _HINTS[key], name or key
    test, what = _RULES.get(key, (None, ""))
    if not _fits(value, hint):
        problem = f"must be {_describe(hint)}"
    elif test and value is not None and not test(value):
        problem = f"must be {what}{' or null' if _fits(None, hint) else ''}"
    else:
        return
    default = _DEFAULTS[key]
    fix = (f"write e.g. {name}: {{lr: 1.0e-5}}" if isinstance(default, dict) else
           f"set e.g. {name}={default if isinstance(default, str) else json.dumps(default)} (the default)")
    raise ConfigError(f"config key {name!r}: {problem}, got {value!r}", fix)


def _kinds(hint) -> set:
    """The plain types an annotation admits: `int | list[int]` -> {int, list}, a Literal of names -> {str}."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(_kinds, typing.get_args(hint)))
    return {str} if origin is Literal else {origin or hint}


def _coerce(key: str, value: Any) -> Any:
    """A file's or a `key=value` override's value, converted by the key's annotation: a string is parsed as YAML
    unless the key takes only strings; YAML 1.1's "2e-5" (a string) becomes a float; a whole float becomes an int
    for an integer key, an int a float for a float key (so that the run-cache keys do not depend on the spelling)."""
    kinds = _kinds(_HINTS[key]) if key in _HINTS else {str}  # an unknown key is left to the checker
    if isinstance(value, str) and kinds != {str}:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"config key {key!r}: cannot parse {value!r} ({e})",
                              "write a number, a list or null") from None
    if isinstance(value, str) and kinds & {int, float}:
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, float) and value.is_integer() and int in kinds and float not in kinds:
        value = int(value)
    if type(value) is int and float in kinds and int not in kinds:
        value = float(value)
    return value


def with_overrides(config: RunConfig, overrides: dict[str, Any] | list[str] | None) -> RunConfig:
    """A new config with `overrides` applied: a dict, or a list of `key=value` strings (values parsed as YAML).
    `stage.key=value` (or a dict value for a stage key) sets `key` in that stage's section, keeping its others."""
    if isinstance(overrides, list):
        if bad := [item for item in overrides if "=" not in item]:
            raise ConfigError(f"override {bad[0]!r} is not key=value", "write e.g. --set batch_size=64")
        overrides = {k.strip(): v.strip() for k, v in (item.split("=", 1) for item in overrides)}
    data = config.to_dict()
    scoped = []  # (stage, section): applied after the plain keys, so that they win over them
    for key, value in (overrides or {}).items():
        stage, _, sub = key.partition(".")
        if sub:  # jtcse.lr=2e-5
            if stage not in STAGES:
                raise ConfigError(f"unknown stage {stage!r} in {key!r}", f"use one of {', '.join(STAGES)}")
            scoped.append((stage, {sub: value}))
        elif key in STAGES:
            scoped.append((key, _coerce(key, value)))
        elif key not in _HINTS:
            raise ConfigError(f"unknown config key {key!r}", f"known keys: {', '.join(_HINTS)}")
        else:  # a plain key wins over every stage section that set it before (the profile file's, say)
            data[key] = _coerce(key, value)
            for s in STAGES:
                data[s].pop(key, None)
    for stage, section in scoped:  # merged into the stage's section; a non-mapping is refused by the checker
        data[stage] = {**data[stage], **{k: _coerce(k, v) for k, v in section.items()}} \
            if isinstance(section, dict) else section
    return RunConfig(**data)


# ---------------------------------------------------------------- what each stage reads

# The settings a stage's trained model depends on: the run-cache key (jtcse_lib.runs) and the identity a run
# folder records (jtcse_lib.train) are made of them.
COMMON_KEYS = ("backbone", "corpus", "corpus_limit", "max_length", "batch_size", "grad_accum", "epochs", "max_steps",
               "dropout", "seed", "lr", "temperature", "weight_decay", "warmup_ratio", "scheduler", "max_grad_norm",
               "precision", "deterministic", "nproc", "eval_every", "dev_pairs", "eval_max_length")
STAGE_KEYS = {
    "simcse_a": ("train_mlp_head", "mlp_as_pooler"),
    "simcse_b": ("train_mlp_head", "mlp_as_pooler", "seed_b_offset"),
    "tncse": ("w_nce", "w_cross_cls", "w_modulus", "modulus_variant"),
    "jtcse": ("w_nce", "w_cross_cls", "w_modulus", "modulus_variant", "cross_attention_layers", "w_cross_attention",
              "cross_attention_rows", "icnce_direction"),
    "distill": ("distill_init", "distill_alpha", "distill_temperature_student", "distill_temperature_teacher"),
}
# Keys a stage section may set: every training key, not the run's identity (backbone, seed, world size).
PER_STAGE_KEYS = tuple(k for k in (*COMMON_KEYS, *dict.fromkeys(k for keys in STAGE_KEYS.values() for k in keys))
                       if k not in ("backbone", "seed", "seed_b_offset", "nproc"))
# Settings no stage's trained model depends on, and why (tests/test_config.py checks that every key is either
# read by a stage above or listed here).
UNKEYED = {
    "profile": "names the folder runs/<profile>/ that holds the runs",
    "seeds": "the list of seeds to run; each run is keyed by its own `seed`",
    "single_seed_ablations": "which ablations notebook 06 runs on the first seed only; each run is keyed as usual",
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
    data = config.for_stage(stage).to_dict()
    return {k: data[k] for k in (*COMMON_KEYS, *STAGE_KEYS[stage])}


def stage_table(config: RunConfig, keys: list[str], stages: tuple[str, ...] = STAGES):
    """The value each stage trains with (`config.for_stage`) of each key: a pandas DataFrame, one row per key, one
    column per stage ("null" for None), so that a per-stage section shows where it applies."""
    import pandas as pd

    return pd.DataFrame({s: {k: "null" if (v := getattr(config.for_stage(s), k)) is None else str(v) for k in keys}
                         for s in stages})


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
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
