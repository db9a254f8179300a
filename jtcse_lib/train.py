"""Training: one `Trainer` for the five stages; each stage's loss is an objective of `jtcse_lib.losses`.

| stage              | model                              | objective (jtcse_lib.losses)                        |
|--------------------|------------------------------------|-----------------------------------------------------|
| simcse_a, simcse_b | one encoder                        | `simcse_objective`: NCE of its two dropout views    |
| tncse              | `TwinTower`, no cross-attention    | `twin_objective`, ICNCE direction fixed A -> B       |
| jtcse              | `TwinTower` with the cross branch  | `twin_objective`, ICNCE direction drawn per step     |
| distill            | one student, frozen twin teacher   | `distill_objective`: NCE + alpha KL(teacher, student) |

A batch of B sentences is tokenised once (cached on disk) and fed as 2B rows (the same tokens twice) in one
forward pass: dropout makes the two views, rows [0, B) view 1 and rows [B, 2B) view 2.

Every `eval_every` optimizer steps the model is scored on STS-B dev (the twin as the sum of its towers' [CLS]
vectors, as at inference); the best is kept as plain Hugging Face folder(s) in `out/best`. Every
`checkpoint_every` steps a resumable checkpoint (weights, optimizer, scheduler, RNG states, data position) is
written to `out/checkpoint`; running the same command again resumes from it exactly. `out/run.json` records what
the folder holds (stage, the settings the stage reads, the models it starts from, the data's digests): a resume
with anything else is refused with the differences, and results are never replaced implicitly (`restart=True`
moves a run aside to `OUT.old-<time>` and starts over). Both are written to a
temporary folder and swapped in by renames (`_write_folder`). Metrics go to `out/metrics.jsonl` (with the
starting point's dev score at step 0, for the curves; it is not a candidate for `best/`, as in the official
code) and the summary to `out/result.json` (written last: its presence means the run is complete).

Numerics (`precision`): `auto` is bf16 autocast on CUDA where supported, else fp16 with a gradient scaler, and fp32
on CPU; `bf16`/`fp16` run the same autocast code on CPU too (slow there, but testable). With fp16 the scaler skips
an optimizer step whose gradients overflowed instead of stopping the run, and `metrics.jsonl` counts the skipped
steps (`overflow_skipped`). TF32 matmuls (CUDA) and `deterministic: true` (deterministic cuDNN/cuBLAS kernels) are
switched on for the loop only and restored afterwards. The loop reads no tensor on the host except every
`log_every` steps (loss logging and the finiteness check): no `.item()` per step, the fused AdamW on CUDA takes
the scaler's overflow flag on the device.

`TRAINING_VERSION` names what this code trains; it is part of every run-cache key. A change of what training
computes bumps it (tests/test_golden.py fails until it is bumped), so a cached model of older code is never reused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .backbones import is_twin_dir, load_encoder, load_tokenizer, model_folder
from .config import STAGES, TRAINING_VERSION, TWIN_STAGES, RunConfig, stage_settings
from .data import content_digest, corpus_digest, load_stsb, stsb_path, tokenized_corpus
from .device import choose_device
from .errors import ConfigError, Interrupted, JtcseError
from .evaluate import SumEncoder, TowerEncoder, stsb_dev_score
from .files import (
    FileProblem,
    NoSpace,
    exclusive_lock,
    finite,
    read_json,
    read_jsonl,
    write_failure,
    write_folder,
    write_json,
    write_text,
    writer_lock,
)
from .losses import TwinWeights, distill_objective, simcse_objective, twin_objective
from .model import MLPHead, TwinTower
from .progress import progress_bar
from .provenance import provenance

# Seeds derived from config.seed, each stream separate so that changing one never shifts another:
PERMUTATION_SEED = 1_000_003  # data order of epoch e: seed * 1_000_003 + e (a prime keeps epochs of seeds apart)
RANK_SEED_STRIDE = 7_919  # dropout of rank r: seed + 7_919 r (rank 0 keeps the single-process seed)
DIRECTION_SEED_OFFSET = 7  # the JTCSE ICNCE direction generator: seed + 7 (any constant apart from the data's)
# Settings a finished or interrupted run may continue under when they grow (more steps of a constant schedule);
# any other change of what a stage reads is refused on resume.
EXTENDABLE = ("max_steps", "epochs")


class TrainingDiverged(JtcseError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    stage: str
    out_dir: Path
    best_dir: Path
    best_step: int
    best_dev: float
    steps: int
    wall_seconds: float


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every value that differs between two (nested) dicts."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class Trainer:
    """Train one stage: the constructor builds the model, data and optimizer; `run()` is the loop and resumes from
    `out_dir/checkpoint` when it exists.

    Args:
        config: the resolved run configuration.
        stage: simcse_a | simcse_b | tncse | jtcse | distill.
        out_dir: where checkpoints, metrics and the best model go.
        init: simcse_a/b, distill: the encoder to start from (default: config.backbone; distill with
            distill_init=tower_a: the teacher's tower A); tncse/jtcse: (tower A, tower B) folders, default: both
            from config.backbone. A run folder stands for its best/ model.
        teacher: distill only: a twin folder (tower_a/, tower_b/) or the run folder of a tncse/jtcse run.
        restart: move an existing run in `out_dir` aside (to `OUT.old-<time>`) and start over.

    Everything that can be checked is checked before a model is loaded: the device, the output folder (its kind,
    that it is writable, what it already holds), the data, max_length against the tokenizer.
    """

    def __init__(self, config: RunConfig, stage: str, out_dir, init=None, teacher=None, data_dir=None,
                 device=None, progress: bool = True, restart: bool = False):
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
        if stage == "distill" and teacher is None:
            raise ConfigError("the distill stage needs a teacher", "pass --teacher DIR (a trained twin folder)")
        self.config, self.stage = config.for_stage(stage), stage  # the stage's section folded in
        self._grown: dict = {}  # EXTENDABLE settings this start grows (set by _claim_out_dir)
        self._perm = self._perm_epoch = self._rng_states = self._stop_signal = self._tensorboard = None
        self.out_dir = Path(out_dir).expanduser()
        self.data_dir = data_dir
        device = choose_device(device, self.config.device, quiet=True)  # refuses before any model or data is read
        self.device = distributed.setup(device) if distributed.launched() else device
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if config.batch_size % self.world:
            raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {self.world} processes",
                              f"set batch_size to a multiple of {self.world} (it is the global batch)")
        if self.config.nproc != self.world:  # started by torchrun directly: record the world size it has
            self.config = self.config.replace(nproc=self.world)
        self.progress = progress and distributed.is_main()
        self.seed = config.seed + (config.seed_b_offset if stage == "simcse_b" else 0)
        self.lr = self.config.lr
        self.teacher_dir = Path(model_folder(teacher)) if teacher is not None else None
        self.init = (tuple(model_folder(i) for i in init) if isinstance(init, (tuple, list)) else model_folder(init)
                     ) if init is not None else None
        self.identity = self._identity()  # reads the data's digests: a missing corpus fails here
        self._held = ExitStack()  # the writer lock, held until run() returns
        try:
            if distributed.is_main():  # one process owns the folder; the others wait for its verdict
                self._lock_out_dir()
                self._claim_out_dir(restart)
            distributed.barrier()
            self._setup_precision()
            torch.manual_seed(self.seed)  # any weight the checkpoint lacks (e.g. a pooler) is initialised reproducibly
            self._build_model()
            self._build_data()
            self._build_optimizer()
        except BaseException:
            self._held.close()
            raise
        self.direction_gen = torch.Generator().manual_seed(self.seed + DIRECTION_SEED_OFFSET)
        self.step = self.epoch = self.index = 0
        self.best_dev, self.best_step = -math.inf, -1
        self._elapsed_before, self._start = 0.0, time.perf_counter()

    # ---------------------------------------------------------------- construction

    def _identity(self) -> dict:
        """What a run folder holds: the stage, the settings it reads, the models it starts from, the data's digests."""
        return {"stage": self.stage, "training_version": TRAINING_VERSION, "world_size": self.world,
                "settings": stage_settings(self.config, self.stage),
                "init": [str(i) for i in self.init] if isinstance(self.init, tuple) else self.init,
                "teacher": str(self.teacher_dir) if self.teacher_dir else None,
                "data": {"corpus": corpus_digest(self.config.corpus, self.data_dir),
                         "stsb_dev": content_digest(stsb_path("dev", self.data_dir))}}

    def _lock_out_dir(self) -> None:
        """One writer per run folder: a second training into the same --out stops at once, naming the first."""
        try:
            self._held.enter_context(exclusive_lock(writer_lock(self.out_dir), f"--out {self.out_dir}", fix=(
                "wait for that training to finish (or stop it: Ctrl-C checkpoints it), or train into another --out")))
        except NoSpace:
            raise
        except FileProblem as e:  # a read-only or foreign parent folder
            raise ConfigError(f"cannot write to --out {self.out_dir} ({e.problem})",
                              "choose a writable folder") from None

    def _claim_out_dir(self, restart: bool) -> None:
        """Check `out_dir` before any work: a folder we can write, holding nothing or a run of exactly this identity
        (only EXTENDABLE settings may grow). Results are never replaced implicitly: `restart` moves them aside."""
        out, fix = self.out_dir, "train into a new --out, or pass --restart to move this run aside and start over"
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder", "choose a folder path")
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if restart and held:
            aside = out.with_name(f"{out.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
            out.rename(aside)
            tqdm.write(f"[{self.stage}] --restart: the previous run in {out} is now in {aside}")
            held = []
        record = out / "run.json"
        ckpt = any((out / c / "trainer_state.pt").is_file() for c in ("checkpoint", "checkpoint.old"))
        finished = (out / "result.json").is_file()
        if record.is_file():
            stored = read_json(record, "run record", fix, ConfigError)
            grown = {k: (stored.get("settings", {}).get(k), self.identity["settings"][k]) for k in EXTENDABLE}
            grown = {k: v for k, v in grown.items() if v[0] != v[1]}
            kept = {k: v for k, v in stored.items() if k in self.identity}
            kept["settings"] = {**kept.get("settings", {}), **{k: v[1] for k, v in grown.items()}}
            diffs = _differences(kept, self.identity)
            if diffs:
                raise ConfigError(f"{out} holds a {stored.get('stage')} run with other settings ({'; '.join(diffs)})",
                                  fix)
            cfg = self.config
            if grown and not (cfg.scheduler == "constant" and cfg.warmup_ratio == 0 and
                              all(isinstance(a, int) and isinstance(b, int) and b > a for a, b in grown.values())):
                changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in grown.items())
                raise ConfigError(f"{out} holds a run that can only be extended to more steps of a constant schedule "
                                  f"without warm-up ({changes})", fix)
            if grown and finished and not ckpt:
                raise ConfigError(f"{out} holds a finished run whose resume checkpoint was deleted when it finished "
                                  "(keep_checkpoints=false), so it cannot be extended", "train into a new --out (or "
                                  "pass --restart), with keep_checkpoints=true if you will want to extend it")
            self._grown = grown
        elif held:
            raise ConfigError(f"{out} is not empty and holds no run.json ({', '.join(held[:4])}): not a run of this "
                              "version", "train into a new --out, or pass --restart to move its contents aside")
        # Results are what a finished run writes (result.json); best/ without it and without a checkpoint is a run
        # stopped before its first checkpoint, which resumes from step 0 (run() clears its partial files).
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / ".writable", "")
            (out / ".writable").unlink()
        except (OSError, FileProblem) as e:
            raise ConfigError(f"cannot write to --out {out} ({getattr(e, 'strerror', None) or e})",
                              "choose a writable folder") from None

    def _setup_precision(self) -> None:
        p, cuda = self.config.precision, self.device.type == "cuda"
        if p == "fp32" or (p == "auto" and not cuda):
            self.amp_dtype = None
        elif p == "bf16" or (p == "auto" and torch.cuda.is_bf16_supported()):
            self.amp_dtype = torch.bfloat16
        else:
            self.amp_dtype = torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    @contextmanager
    def _numerics(self):
        """TF32 (CUDA) and deterministic kernels for the training loop only; the process's settings come back after,
        so an fp32 evaluation later in the same kernel is fp32 whether or not training ran first."""
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                 torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        try:
            if self.device.type == "cuda" and self.amp_dtype is None and not self.config.deterministic:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            if self.config.deterministic:  # cost: some kernels are slower, a few ops refuse to run (they say so)
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's requirement for determinism
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
                torch.use_deterministic_algorithms(True, warn_only=True)
            yield
        finally:
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark) = saved[:4]
            torch.use_deterministic_algorithms(saved[4])
            if saved[5] is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    def _source(self) -> str:
        """Where the model's tokenizer (and the simcse/distill encoder) comes from."""
        cfg = self.config
        if self.stage in TWIN_STAGES:
            return self.init[0] if self.init else cfg.backbone
        if self.stage == "distill":
            if not is_twin_dir(self.teacher_dir):
                raise ConfigError(f"teacher folder {self.teacher_dir} does not hold tower_a/ and tower_b/",
                                  "pass the best/ folder (or the run folder) of a tncse or jtcse run")
            return self.init or str(self.teacher_dir / "tower_a" if cfg.distill_init == "tower_a" else cfg.backbone)
        return self.init or cfg.backbone

    def _build_model(self) -> None:
        cfg, p = self.config, self.config.dropout
        source = self._source()
        self.tokenizer = load_tokenizer(source)
        special = self.tokenizer.num_special_tokens_to_add()
        if cfg.max_length <= special:  # the tokenizer would ignore the truncation and train on whole sentences
            raise ConfigError(f"max_length={cfg.max_length} leaves no room for a word: this tokenizer adds {special} "
                              "special tokens", f"set max_length to {special + 1} or more (SimCSE: 32)")
        if self.stage in TWIN_STAGES:
            src_a, src_b = self.init if self.init else (cfg.backbone, cfg.backbone)
            layers = cfg.cross_attention_layers if self.stage == "jtcse" else 0
            try:
                self.model = TwinTower.from_pretrained(src_a, src_b, cross_attention_layers=layers, dropout=p)
            except ValueError as e:  # e.g. a cross-attention count that does not divide the depth
                raise ConfigError(str(e), "change cross_attention_layers (or the towers) as the message says") from None
            if cfg.w_modulus > 0 and cfg.modulus_variant == "official" and self.model.tower_a.pooler is None:
                raise ConfigError("modulus_variant=official needs pooler outputs and this backbone has no pooler",
                                  "set modulus_variant=paper")
            self.with_cross = self.stage == "jtcse" and cfg.w_cross_attention > 0 and bool(self.model.cross_layers)
            self.weights = TwinWeights(cfg.w_nce, cfg.w_cross_cls, cfg.w_cross_attention, cfg.w_modulus)
            if not (self.weights.nce or self.weights.cross_cls or self.weights.modulus or self.with_cross):
                raise ConfigError("every loss weight of this stage is 0", "set at least one of w_nce, w_cross_cls, "
                                  "w_cross_attention, w_modulus above 0")
        elif self.stage == "distill":
            self.model = load_encoder(source, dropout=p)
            self.tokenizer = load_tokenizer(self.teacher_dir / "tower_a")
            self.teacher = TwinTower.from_pretrained(self.teacher_dir, cross_attention_layers=0)
            self.teacher.to(self.device).eval().requires_grad_(False)
        else:  # simcse_a, simcse_b
            self.model = load_encoder(source, dropout=p)
        # SimCSE's train-only MLP over [CLS]; not part of the model, so never saved with the tower
        self.head = (MLPHead(self.model.config.hidden_size, self.model.config.initializer_range).to(self.device)
                     if cfg.train_mlp_head and self.stage in ("simcse_a", "simcse_b") else None)
        # the pooler feeds only the official modulus term: elsewhere it gets no gradient, so it is frozen (DDP
        # needs every trainable parameter to receive one; AdamW skips it either way)
        if not (self.stage in TWIN_STAGES and cfg.w_modulus > 0 and cfg.modulus_variant == "official"):
            for tower in (self.model.towers() if self.stage in TWIN_STAGES else [self.model]):
                if getattr(tower, "pooler", None) is not None:
                    tower.pooler.requires_grad_(False)
        self.model.to(self.device)
        self.forward_model, self.forward_head = self.model, self.head
        self.mask_4d = (self.device.type == "cuda" and self.stage not in TWIN_STAGES
                        and getattr(self.model.config, "_attn_implementation", None) == "sdpa")
        if self.world > 1:  # DDP averages the gradients; the losses gather the candidates (jtcse_lib.distributed)
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DDP(self.model, device_ids=ids)
            self.forward_head = DDP(self.head, device_ids=ids) if self.head is not None else None

    def _build_data(self) -> None:
        cfg = self.config
        self.corpus = tokenized_corpus(cfg.corpus, self.tokenizer, cfg.max_length, self.data_dir, cfg.corpus_limit,
                                       progress=self.progress)
        self.n_truncated = int((self.corpus.n_untruncated > cfg.max_length).sum())  # from the real lengths
        self.steps_per_epoch = len(self.corpus) // cfg.batch_size
        if self.steps_per_epoch == 0:
            fix = (f"set batch_size to at most {len(self.corpus)}, or use a larger corpus" if len(self.corpus) >= 2
                   else "use a corpus of at least 2 sentences (in-batch negatives need a second sentence)")
            raise ConfigError(f"batch_size={cfg.batch_size} is larger than the corpus ({len(self.corpus)} "
                              "sentences)", fix)
        updates_per_epoch = max(1, self.steps_per_epoch // cfg.grad_accum)
        self.total_steps = cfg.max_steps or cfg.epochs * updates_per_epoch
        self.uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.pad_id = self.tokenizer.pad_token_id
        self.dev_pairs = load_stsb("dev", self.data_dir).head(cfg.dev_pairs)

    def _build_optimizer(self) -> None:
        cfg = self.config
        modules = [self.model] + ([self.head] if self.head is not None else [])
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        # fused on CUDA: one kernel, and it takes the scaler's overflow flag on the device (no host sync per step)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=cfg.weight_decay,
                                           fused=self.device.type == "cuda")
        warmup = int(cfg.warmup_ratio * self.total_steps)
        total = self.total_steps

        def factor(step: int) -> float:  # lr multiplier: linear warm-up, then constant or linear decay to 0
            if step < warmup:
                return (step + 1) / warmup
            if cfg.scheduler == "linear":
                return max(0.0, (total - step) / max(1, total - warmup))
            return 1.0

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # ---------------------------------------------------------------- one step

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Batch `index` of epoch `epoch` as 2B rows (view 1 = rows [0, B), view 2 = rows [B, 2B)): this rank's
        B = batch_size / world_size sentences of the global batch (one permutation per epoch, the same on every
        rank; rank r takes the r-th slice, so W ranks of B see what one device of W B sees)."""
        B = self.config.batch_size // self.world
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * PERMUTATION_SEED + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.corpus), generator=g), epoch
        start = index * self.config.batch_size + self.rank * B
        rows = [self.corpus.sentence(i) for i in self._perm[start:start + B].tolist()]
        L = max(len(r) for r in rows)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.from_numpy(r)
            mask[i, :len(r)] = 1
        batch = {"input_ids": ids.repeat(2, 1), "attention_mask": mask.repeat(2, 1)}  # (2B, L)
        if self.uses_token_types:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's objective on one batch: (weighted total, unweighted terms)."""
        cfg = self.config
        if self.stage in TWIN_STAGES:
            # ICNCE direction: drawn per step for JTCSE (CPU generator: no device sync), fixed A -> B for TNCSE
            b_to_a = self.stage == "jtcse" and bool(torch.randint(2, (1,), generator=self.direction_gen))
            out = self.forward_model(**batch, with_cross=self.with_cross)
            return twin_objective(**vars(out), weights=self.weights, temperature=cfg.temperature,
                                  modulus_variant=cfg.modulus_variant, b_to_a=b_to_a)
        cls = self.forward_model(**self._encoder_inputs(batch)).last_hidden_state[:, 0]  # (2B, H)
        if self.head is not None:
            cls = self.forward_head(cls)  # SimCSE's --mlp_only_train: the loss sees MLP([CLS]); evaluated bare
        if self.stage == "distill":
            return distill_objective(cls, self._teacher(batch), cfg.distill_alpha, cfg.temperature,
                                     cfg.distill_temperature_student, cfg.distill_temperature_teacher)
        return simcse_objective(cls, cfg.temperature)

    def _encoder_inputs(self, batch) -> dict[str, torch.Tensor]:
        """On CUDA the padding mask goes in as SDPA's 4D boolean mask (the same attention): given the 2D mask,
        transformers tests `mask.all()` on the host to decide whether to drop it, a device sync per forward."""
        if not self.mask_4d:
            return batch
        return {**batch, "attention_mask": batch["attention_mask"].bool()[:, None, None, :]}  # (2B, 1, 1, L)

    @torch.no_grad()
    def _teacher(self, batch) -> torch.Tensor | None:
        """CLS_A + CLS_B of the frozen twin for the batch's B sentences (view 1 rows), or None when unused."""
        if self.config.distill_alpha <= 0:
            return None
        B = batch["input_ids"].shape[0] // 2
        out = self.teacher(**{k: v[:B] for k, v in batch.items()}, with_cross=False)
        return out.cls_a + out.cls_b  # (B, H): the twin at inference

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over `batches` (gradient accumulation); returns the loss terms, averaged over the
        batches, and with fp16 `overflow_skipped` (1 when the scaler skipped the step), as device tensors (nothing
        is read on the host)."""
        sums: dict[str, torch.Tensor] = {}
        for batch in batches:
            try:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, terms = self.loss(batch)
                self.scaler.scale(loss / len(batches)).backward()
            except torch.cuda.OutOfMemoryError:
                cfg = self.config
                half = max(2, cfg.batch_size // 2)
                raise JtcseError(
                    f"CUDA ran out of memory at batch_size={cfg.batch_size}, max_length={cfg.max_length}",
                    f"a smaller max_length keeps the loss; batch_size={half} grad_accum={cfg.grad_accum * 2} keeps "
                    f"the sentences per optimizer step but changes the loss (in-batch negatives come from one "
                    f"micro-batch: {2 * half - 2} per row instead of {2 * cfg.batch_size - 2}), so the result is "
                    "not the same recipe") from None
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0) + value.detach().float() / len(batches)
        if self.config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)  # returns a tensor: no sync
        scale = self.scaler._scale.clone() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()  # ... and then the scale shrinks
        if scale is not None:
            sums["overflow_skipped"] = (self.scaler._scale < scale).float().reshape(())
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return sums

    # ---------------------------------------------------------------- evaluation and saving

    def _encoder(self):
        cfg = self.config
        kw = dict(pooling="cls", batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length, progress=False)
        if self.stage in TWIN_STAGES:
            return SumEncoder([TowerEncoder(t, self.tokenizer, **kw) for t in self.model.towers()])
        return TowerEncoder(self.model, self.tokenizer, **kw)

    def dev_score(self) -> float:
        return stsb_dev_score(self._encoder(), pairs=self.dev_pairs)

    def _evaluate(self, candidate: bool = True) -> float:
        """STS-B dev score of the current model; keep it as `best/` when it is a candidate and improves. Rank 0
        scores and saves while the others wait; every rank then holds its decision."""
        decision = None
        if distributed.is_main():
            dev = self.dev_score()
            improved = candidate and dev > self.best_dev
            if improved:
                self.best_dev, self.best_step = dev, self.step
                self._write_folder(self.out_dir / "best", "best model", self._write_model)
            self._log({"step": self.step, "stsb_dev": dev, "best_dev": self.best_dev, "improved": improved})
            decision = (dev, self.best_dev, self.best_step)
        dev, self.best_dev, self.best_step = distributed.broadcast_object(decision)
        self.model.train()
        return dev

    def _write_folder(self, final: Path, what: str, write) -> None:
        """The one save path (`files.write_folder`): a temporary folder swapped in by renames; a full disk is one
        line (`NoSpace`, exit 2), the temporary folder goes and the previous version stays."""
        write_folder(final, write, f"{what} (step {self.step})", fix="or move --out to a larger disk")

    def _write_model(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        for sub in ([folder / "tower_a", folder / "tower_b"] if self.stage in TWIN_STAGES else [folder]):
            self.tokenizer.save_pretrained(sub)

    def _save_checkpoint(self) -> None:
        self._rng_states = distributed.gather_objects(_rng_state(self.device))  # every rank's, for an exact resume
        if distributed.is_main():
            self._write_folder(self.out_dir / "checkpoint", "checkpoint", self._write_checkpoint)
        distributed.barrier()

    def _write_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                  str(folder / "model.safetensors"))
        if self.head is not None:  # the train-only MLP: resumed with the run, never saved with the tower
            save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                      str(folder / "head.safetensors"))
        torch.save({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self._rng_states,  # one per rank
            "direction_gen": self.direction_gen.get_state(),
            "step": self.step, "epoch": self.epoch, "index": self.index,
            "best_dev": self.best_dev, "best_step": self.best_step,
            "elapsed": self.elapsed(),
        }, folder / "trainer_state.pt")

    def _load_checkpoint(self) -> bool:
        from safetensors.torch import load_file

        ckpt = self.out_dir / "checkpoint"
        if not (ckpt / "trainer_state.pt").is_file():
            old = self.out_dir / "checkpoint.old"  # killed between the two renames of a swap
            if not (old / "trainer_state.pt").is_file():
                return False
            ckpt = old
        try:
            self.model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(self.device)))
            if self.head is not None:
                self.head.load_state_dict(load_file(str(ckpt / "head.safetensors"), device=str(self.device)))
            state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"][self.rank], self.device)
            self.direction_gen.set_state(state["direction_gen"])
            self.step, self.epoch, self.index = state["step"], state["epoch"], state["index"]
            self.best_dev, self.best_step = state["best_dev"], state["best_step"]
            self._elapsed_before = state["elapsed"]
        except Exception as e:  # truncated or corrupt safetensors / pickle: many exception types, one message
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConfigError(f"the checkpoint in {ckpt} is damaged ({type(e).__name__}: {first})",
                              "pass --restart to move this run aside and train from step 0") from None
        if distributed.is_main():  # one process tidies the folder
            self._trim_metrics(self.step)
            best, old = self.out_dir / "best", self.out_dir / "best.old"
            if not best.exists() and old.exists():  # killed between the two renames of a best-model swap
                old.rename(best)
        distributed.barrier()
        return True

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from (they will be written again), and a half
        written last line; the trimmed log replaces the old one atomically."""
        path = self.out_dir / "metrics.jsonl"
        if path.is_file():
            records, _ = read_jsonl(path, "metrics log", "pass --restart to move this run aside", ConfigError)
            write_text(path, "".join(json.dumps(r) + "\n" for r in records if r.get("step", math.inf) <= step))

    def _log(self, record: dict) -> None:
        """One strict-JSON line of metrics.jsonl (a non-finite number is null), and the same scalars to
        TensorBoard when it is installed."""
        if not distributed.is_main():
            return
        path = self.out_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf8") as f:
                f.write(json.dumps(finite(record), allow_nan=False) + "\n")
        except OSError as e:  # a half line at the end is dropped on resume (read_jsonl)
            raise write_failure(e, path, "metrics log", fix="or move --out to a larger disk") from None
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, record["step"])

    def _loop(self) -> None:
        """The training loop: optimizer steps, logging, STS-B dev selection and checkpoints until total_steps."""
        cfg = self.config
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        n_logged, n_skipped, last_loss = 0, None, "-"
        with progress_bar(total=self.total_steps, initial=self.step, desc=self.stage, unit="step",
                          disable=not self.progress, dynamic_ncols=True) as bar:
            while self.step < self.total_steps:
                batches = []
                for _ in range(cfg.grad_accum):
                    if self.index >= self.steps_per_epoch:
                        self.epoch, self.index = self.epoch + 1, 0
                    batches.append(self.batch(self.epoch, self.index))
                    self.index += 1
                terms = self.train_step(batches)
                skipped = terms.pop("overflow_skipped", None)  # fp16 only: a step the scaler skipped is not averaged
                for name, value in terms.items():
                    kept = value if skipped is None else torch.where(skipped > 0, 0.0, value)
                    sums[name] = sums.get(name, 0) + kept
                if skipped is not None:
                    n_skipped = skipped if n_skipped is None else n_skipped + skipped
                self.step += 1
                n_logged += 1
                bar.update(1)

                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    last_loss = self._log_window(sums, n_logged, n_skipped) or last_loss
                    bar.set_postfix(loss=last_loss, best_dev=_shown(self.best_dev))
                    sums, n_logged, n_skipped = {}, 0, None

                if self.step % cfg.eval_every == 0 or self.step == self.total_steps:
                    dev = self._evaluate()
                    bar.set_postfix(loss=last_loss, dev=f"{dev:.2f}", best_dev=_shown(self.best_dev))

                # the last step's checkpoint only when it is kept: result.json marks the run finished instead
                last = self.step == self.total_steps
                saved = self.step % cfg.checkpoint_every == 0 or (last and cfg.keep_checkpoints)
                if saved:
                    self._save_checkpoint()
                if self.step < self.total_steps and self._stop_requested():
                    if not saved:
                        self._save_checkpoint()
                    name = signal.Signals(self._stop_signal or signal.SIGTERM).name
                    raise Interrupted(f"stopped by {name} at step {self.step} of {self.total_steps}; the checkpoint of "
                                      f"this step is in {self.out_dir / 'checkpoint'}",
                                      "run the same command again to resume from it")

    def _log_window(self, sums: dict, n_logged: int, n_skipped) -> str | None:
        """Write the mean of each term over the window's steps (one host sync); stop on a non-finite loss, or when
        fp16 overflowed on every step even at a small loss scale. Returns the loss for the progress bar."""
        skipped = 0 if n_skipped is None else int(n_skipped)
        kept = n_logged - skipped
        # the global batch's means: each rank's terms are its local means, and the local batches are equal
        means = distributed.mean(torch.stack(list(sums.values())).div(kept)) if kept else None
        values = dict(zip(sums, means.tolist())) if kept else {}
        where = (f"the last good checkpoint is in {self.out_dir / 'checkpoint'} and the best model in "
                 f"{self.out_dir / 'best'}")
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
            raise TrainingDiverged(f"the loss is not finite at step {self.step} ({bad}); {where}",
                                   "lower the learning rate, or use precision=fp32 / bf16 instead of fp16")
        if not kept and self.scaler.get_scale() < 1.0:
            raise TrainingDiverged(f"every fp16 step up to {self.step} overflowed, down to a loss scale below 1; "
                                   f"{where}", "use precision=bf16 or fp32, or lower the learning rate")
        record = {"step": self.step, "epoch": self.epoch, **values}
        if n_skipped is not None:
            record["overflow_skipped"] = skipped
        self._log({**record, "lr": self.scheduler.get_last_lr()[0], "seconds": round(self.elapsed(), 2)})
        return f"{values['loss']:.4f}" if "loss" in values else None

    def _record_start(self, resumed: bool) -> None:
        """Write run.json: this run's identity (what a resume must match) and, per start, when and what grew."""
        path = self.out_dir / "run.json"
        history = read_json(path, "run record").get("history", []) if resumed and path.is_file() else []
        start = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from_step": self.step}
        if self._grown:
            start["extended"] = {k: list(v) for k, v in self._grown.items()}
        write_json(path, {**self.identity, "seed": self.seed, "lr": self.lr, "config": self.config.to_dict(),
                          "history": [*history, start]})

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._start

    # ---------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            self._held.close()  # the writer lock
            if self._tensorboard is not None:
                self._tensorboard.close()

    def _run(self) -> TrainResult:
        cfg = self.config
        self._start = time.perf_counter()
        resumed = self._load_checkpoint()
        finished = (self.out_dir / "result.json").is_file()
        if finished and (not resumed or self.step >= self.total_steps):  # complete (its checkpoint kept or not)
            done = read_json(self.out_dir / "result.json", "result", "pass --restart to train it again", ConfigError)
            if distributed.is_main():
                tqdm.write(f"[{self.stage}] {self.out_dir} is complete already (step {done['steps']}): nothing to do")
            return TrainResult(self.stage, self.out_dir, self.out_dir / "best", done["best_step"],
                               done["best_stsb_dev"], done["steps"], done["wall_seconds"])
        if not resumed:
            torch.manual_seed(self.seed + RANK_SEED_STRIDE * self.rank)  # each rank its own dropout masks
            if distributed.is_main():  # what a run stopped before its first checkpoint left: it starts again
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
                for name in ("best", "best.old", "best.tmp", "checkpoint.tmp", "tensorboard"):
                    shutil.rmtree(self.out_dir / name, ignore_errors=True)
        if distributed.is_main():
            self._record_start(resumed)
            self._tensorboard = _tensorboard_writer(self.out_dir / "tensorboard", self.step if resumed else None)
        if self.n_truncated and distributed.is_main():
            tqdm.write(f"[{self.stage}] {self.n_truncated} of {len(self.corpus)} training sentences are longer "
                       f"than max_length={cfg.max_length} tokens and were truncated")
        if not resumed:  # the starting point, for the curves; not a candidate (the official code selects trained steps)
            self._evaluate(candidate=False)
        elif distributed.is_main():
            tqdm.write(f"[{self.stage}] resuming from step {self.step} of {self.total_steps}")

        with self._numerics(), self._signals_stop_at_step_end():
            self._loop()

        result = TrainResult(self.stage, self.out_dir, self.out_dir / "best", self.best_step, self.best_dev,
                             self.step, self.elapsed())
        if distributed.is_main():
            write_json(self.out_dir / "result.json", {
                "stage": self.stage, "best_step": self.best_step, "best_stsb_dev": self.best_dev,
                "steps": self.step, "total_steps": self.total_steps, "wall_seconds": round(result.wall_seconds, 1),
                "train_sentences": len(self.corpus), "truncated_sentences": self.n_truncated,
                "world_size": self.world, "config": cfg.to_dict(), **provenance(self.device),
            })
            if not cfg.keep_checkpoints:  # weights + optimizer state, ~3x best/: a finished run needs only best/
                for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
                    shutil.rmtree(self.out_dir / name, ignore_errors=True)
        distributed.barrier()
        return result

    # ---------------------------------------------------------------- stopping

    @contextmanager
    def _signals_stop_at_step_end(self):
        """SIGINT (Ctrl-C, a kernel interrupt) and SIGTERM set a flag that the loop reads after each step: it then
        writes a checkpoint and stops (`Interrupted`, exit 130). A second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if distributed.is_main():
                tqdm.write(f"[{self.stage}] {signal.Signals(signum).name}: stopping after this step, with a "
                           "checkpoint (Ctrl-C again to stop at once)")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop. One process: the flag (no device work). DDP: every rank must stop at the
        same step, so the ranks agree at logging steps only, where the loop syncs anyway."""
        if self.world == 1:
            return self._stop_signal is not None
        if self.step % self.config.log_every:
            return False
        return distributed.any_rank(self._stop_signal is not None, self.device)


def _tensorboard_writer(folder: Path, purge_step: int | None):
    """A TensorBoard SummaryWriter when `tensorboard` is installed (the optional extra), else None. On resume,
    events logged after the checkpoint are purged (they are logged again)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def _shown(score: float) -> str:
    """A dev score for the progress bar: '-' before the first candidate (step 0 is not one)."""
    return f"{score:.2f}" if math.isfinite(score) else "-"
