"""Training: one `Trainer` for the five stages; what differs between them is their row of `STAGES`.

| stage              | build: what trains                 | objective (jtcse_lib.losses)                 | dev encoder |
|--------------------|------------------------------------|----------------------------------------------|-------------|
| simcse_a, simcse_b | one encoder (+ the train-only MLP) | `simcse_objective`: NCE of two dropout views | the encoder |
| tncse              | `TwinTower`, no cross-attention    | `twin_objective`, ICNCE A -> B               | CLS_A+CLS_B |
| jtcse              | `TwinTower` with the cross branch  | `twin_objective`, random ICNCE direction     | CLS_A+CLS_B |
| distill            | a student; a frozen twin teaches   | `distill_objective`: NCE + alpha KL(T, S)    | the student |

A batch of B sentences is tokenised once (cached on disk) and fed as 2B rows (the same tokens twice) in one forward
pass: dropout makes the two views, rows [0, B) view 1 and rows [B, 2B) view 2. Every `eval_every` optimizer steps the
model is scored on STS-B dev (the starting point too, at step 0, for the curves; it is not a candidate for best/, as
in the official code) and the best is kept in `out/best`; every `checkpoint_every` steps a checkpoint is written, from
which the same command resumes exactly. What the run folder holds, and when it is refused, is `jtcse_lib.run_folder`.

Numerics (`precision`): `auto` is bf16 autocast on CUDA where supported, else fp16 with a gradient scaler, and fp32 on
CPU; `bf16`/`fp16` run the same autocast code on CPU too (slow, but testable). With fp16 the scaler skips an optimizer
step whose gradients overflowed and `metrics.jsonl` counts it (`overflow_skipped`). TF32 matmuls (CUDA fp32) and
`deterministic: true` hold for the loop only. No tensor is read on the host per step, only every `log_every` steps.

Why not `accelerate` (measured by bench/accelerate_check.py): it trains the smoke weights bit-identically in fp32 on
the CPU, but `Accelerator(cpu=True, mixed_precision="fp16")` runs fp32 (no autocast, no scaler), so the fp16 path
would go untested without a GPU; its skipped-step flag costs a host read per step with the unfused AdamW and stays
False on an overflow with the fused one (comparing the scale on the device: no read, right); and its scheduler steps
once per process per optimizer step (unless split_batches). What is left for it here is a few lines.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .backbones import is_twin_dir, load_encoder, load_tokenizer, model_folder
from .config import RunConfig
from .data import load_stsb, tokenized_corpus
from .device import choose_device
from .errors import ConfigError, Interrupted, JtcseError
from .evaluate import SumEncoder, TowerEncoder, stsb_dev_score
from .losses import TwinWeights, distill_objective, simcse_objective, twin_objective
from .model import MLPHead, TwinTower
from .progress import progress_bar
from .provenance import provenance
from .run_folder import RunFolder, identity

# Seeds derived from config.seed, each stream separate so that changing one never shifts another:
PERMUTATION_SEED = 1_000_003  # data order of epoch e: seed * 1_000_003 + e (a prime keeps epochs of seeds apart)
RANK_SEED_STRIDE = 7_919  # dropout of rank r: seed + 7_919 r (rank 0 keeps the single-process seed)
DIRECTION_SEED_OFFSET = 7  # the JTCSE ICNCE direction generator: seed + 7 (any constant apart from the data's)


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


# ---------------------------------------------------------------- the stages

@dataclass
class Models:
    """What a stage trains: `model` (what best/ holds), its tokenizer, and the parts used in training only."""

    model: torch.nn.Module  # an encoder, or a TwinTower
    tokenizer: object
    head: torch.nn.Module | None = None  # SimCSE's MLP over [CLS]: checkpointed, never saved with the tower
    teacher: TwinTower | None = None  # distill: the frozen twin


@dataclass(frozen=True)
class Stage:
    """A row of `STAGES`: what differs between the stages. Each function takes the Trainer."""

    build: Callable[[Trainer], Models]  # the models, loaded on the CPU
    objective: Callable[[Trainer, dict], tuple]  # one batch of 2B rows -> (weighted total, unweighted terms)
    dev_encoder: Callable[[Trainer], object]  # the model at inference, as STS-B dev scores it
    seed: Callable[[RunConfig], int] = lambda c: c.seed
    needs_teacher: bool = False


def _tokenizer(source, cfg: RunConfig):
    tokenizer = load_tokenizer(source)
    special = tokenizer.num_special_tokens_to_add()
    if cfg.max_length <= special:  # the tokenizer would ignore the truncation and train on whole sentences
        raise ConfigError(f"max_length={cfg.max_length} leaves no room for a word: this tokenizer adds {special} "
                          "special tokens", f"set max_length to {special + 1} or more (SimCSE: 32)")
    return tokenizer


def _freeze_poolers(*towers) -> None:
    """The pooler feeds only the official modulus term: elsewhere it gets no gradient, so it is frozen (DDP needs
    every trainable parameter to receive one; AdamW skips it either way)."""
    for tower in towers:
        if getattr(tower, "pooler", None) is not None:
            tower.pooler.requires_grad_(False)


def _build_encoder(t: Trainer) -> Models:
    cfg = t.config
    source = t.init or cfg.backbone
    tokenizer = _tokenizer(source, cfg)
    model = load_encoder(source, dropout=cfg.dropout)
    if cfg.train_mlp_head and cfg.mlp_as_pooler and getattr(model, "pooler", None) is None:
        raise ConfigError("mlp_as_pooler saves the trained MLP as the tower's pooler and this backbone has none",
                          "set mlp_as_pooler=false (or use a backbone with a pooler)")
    _freeze_poolers(model)
    head = MLPHead(model.config.hidden_size, model.config.initializer_range) if cfg.train_mlp_head else None
    return Models(model, tokenizer, head=head)


def _build_twin(t: Trainer, cross: bool) -> Models:
    cfg = t.config
    src_a, src_b = t.init or (cfg.backbone, cfg.backbone)
    tokenizer = _tokenizer(src_a, cfg)
    try:
        model = TwinTower.from_pretrained(src_a, src_b, cross_attention_layers=cfg.cross_attention_layers if cross
                                          else 0, dropout=cfg.dropout, cross_attention_rows=cfg.cross_attention_rows)
    except ValueError as e:  # e.g. a cross-attention count that does not divide the depth
        raise ConfigError(str(e), "change cross_attention_layers (or the towers) as the message says") from None
    official = cfg.w_modulus > 0 and cfg.modulus_variant == "official"
    if official and model.tower_a.pooler is None:
        raise ConfigError("modulus_variant=official needs pooler outputs and this backbone has no pooler",
                          "set modulus_variant=paper")
    if not (cfg.w_nce or cfg.w_cross_cls or cfg.w_modulus or _with_cross(cfg, model)):
        raise ConfigError("every loss weight of this stage is 0", "set at least one of w_nce, w_cross_cls, "
                          "w_cross_attention, w_modulus above 0")
    if not official:
        _freeze_poolers(*model.towers())
    return Models(model, tokenizer)


def _build_student(t: Trainer) -> Models:
    cfg = t.config
    if not is_twin_dir(t.teacher_dir):
        raise ConfigError(f"teacher folder {t.teacher_dir} does not hold tower_a/ and tower_b/",
                          "pass the best/ folder (or the run folder) of a tncse or jtcse run")
    tokenizer = _tokenizer(t.teacher_dir / "tower_a", cfg)  # the student reads what its teacher reads
    model = load_encoder(t.init or str(t.teacher_dir / "tower_a" if cfg.distill_init == "tower_a" else cfg.backbone),
                         dropout=cfg.dropout)
    _freeze_poolers(model)
    teacher = TwinTower.from_pretrained(t.teacher_dir, cross_attention_layers=0).eval().requires_grad_(False)
    return Models(model, tokenizer, teacher=teacher)


def _with_cross(cfg: RunConfig, model: TwinTower) -> bool:
    return cfg.w_cross_attention > 0 and bool(model.cross_layers)


def _twin_loss(t: Trainer, batch, fixed_direction: bool):
    cfg = t.config
    # ICNCE direction: drawn per step for JTCSE (CPU generator: no device sync), fixed A -> B for TNCSE and for
    # icnce_direction=a_to_b
    draw = not fixed_direction and cfg.icnce_direction == "random"
    b_to_a = draw and bool(torch.randint(2, (1,), generator=t.direction_gen))
    out = t.forward_model(**batch, with_cross=_with_cross(cfg, t.model))
    weights = TwinWeights(cfg.w_nce, cfg.w_cross_cls, cfg.w_cross_attention, cfg.w_modulus)
    return twin_objective(**vars(out), weights=weights, temperature=cfg.temperature,
                          modulus_variant=cfg.modulus_variant, b_to_a=b_to_a)


def _cls(t: Trainer, batch) -> torch.Tensor:
    """The encoder's [CLS] rows (2B, H), through SimCSE's MLP when it trains with one (evaluated bare). On CUDA the
    padding mask goes in as SDPA's 4D boolean mask (the same attention): given the 2D mask, transformers tests
    `mask.all()` on the host to decide whether to drop it, a device sync per forward."""
    if t.mask_4d:
        batch = {**batch, "attention_mask": batch["attention_mask"].bool()[:, None, None, :]}  # (2B, 1, 1, L)
    cls = t.forward_model(**batch).last_hidden_state[:, 0]
    return t.forward_head(cls) if t.head is not None else cls


def _simcse_loss(t: Trainer, batch):
    return simcse_objective(_cls(t, batch), t.config.temperature)


def _distill_loss(t: Trainer, batch):
    cfg, teacher = t.config, None
    if cfg.distill_alpha > 0:
        B = batch["input_ids"].shape[0] // 2
        with torch.no_grad():  # CLS_A + CLS_B of the frozen twin (the twin at inference) for view 1's rows: (B, H)
            out = t.teacher(**{k: v[:B] for k, v in batch.items()}, with_cross=False)
            teacher = out.cls_a + out.cls_b
    return distill_objective(_cls(t, batch), teacher, cfg.distill_alpha, cfg.temperature,
                             cfg.distill_temperature_student, cfg.distill_temperature_teacher)


def _eval_options(cfg: RunConfig) -> dict:
    return dict(pooling="cls", batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length, progress=False)


def _tower_encoder(t: Trainer):
    return TowerEncoder(t.model, t.tokenizer, **_eval_options(t.config))


def _sum_encoder(t: Trainer):
    return SumEncoder([TowerEncoder(tower, t.tokenizer, **_eval_options(t.config)) for tower in t.model.towers()])


STAGES = {
    "simcse_a": Stage(_build_encoder, _simcse_loss, _tower_encoder),
    "simcse_b": Stage(_build_encoder, _simcse_loss, _tower_encoder, seed=lambda c: c.seed + c.seed_b_offset),
    "tncse": Stage(partial(_build_twin, cross=False), partial(_twin_loss, fixed_direction=True), _sum_encoder),
    "jtcse": Stage(partial(_build_twin, cross=True), partial(_twin_loss, fixed_direction=False), _sum_encoder),
    "distill": Stage(_build_student, _distill_loss, _tower_encoder, needs_teacher=True),
}


# ---------------------------------------------------------------- the trainer

class Trainer:
    """Train one stage: the constructor builds the model, data and optimizer; `run()` is the loop and resumes from
    `out_dir/checkpoint` when it exists.

    Args:
        config, stage: the resolved run configuration; simcse_a | simcse_b | tncse | jtcse | distill.
        out_dir: the run folder (`jtcse_lib.run_folder`): checkpoints, metrics, the best model.
        init: simcse_a/b, distill: the encoder to start from (default: config.backbone; distill with
            distill_init=tower_a: the teacher's tower A); tncse/jtcse: (tower A, tower B), default: the backbone
            twice. A run folder stands for its best/ model.
        teacher: distill only: a twin folder (tower_a/, tower_b/) or the run folder of a tncse/jtcse run.
        restart: move an existing run in `out_dir` aside (to `OUT.old-<time>`) and start over.

    What can be checked is checked before a model is loaded: the device, the output folder (its kind, that it is
    writable, what it holds), the data, max_length against the tokenizer.
    """

    def __init__(self, config: RunConfig, stage: str, out_dir, init=None, teacher=None, data_dir=None,
                 device=None, progress: bool = True, restart: bool = False):
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
        self.spec = STAGES[stage]
        if self.spec.needs_teacher and teacher is None:
            raise ConfigError(f"the {stage} stage needs a teacher", "pass --teacher DIR (a trained twin folder)")
        self.config, self.stage = config.for_stage(stage), stage  # the stage's section folded in
        self.out_dir, self.data_dir = Path(out_dir).expanduser(), data_dir
        device = choose_device(device, self.config.device, quiet=True)  # refuses before any model or data is read
        self.device = distributed.setup(device) if distributed.launched() else device
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if config.batch_size % self.world:
            raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {self.world} processes",
                              f"set batch_size to a multiple of {self.world} (it is the global batch)")
        if self.config.nproc != self.world:  # started by torchrun directly: record the world size it has
            self.config = self.config.replace(nproc=self.world)
        self.progress = progress and distributed.is_main()
        self.seed = self.spec.seed(self.config)
        self.teacher_dir = Path(model_folder(teacher)) if teacher is not None else None
        self.init = (tuple(model_folder(i) for i in init) if isinstance(init, (tuple, list)) else model_folder(init)
                     ) if init is not None else None
        self.folder = RunFolder(self.out_dir, stage, identity(self.config, stage, self.world, self.init,
                                                              self.teacher_dir, data_dir), self.device)
        try:  # identity() read the data's digests: a missing corpus failed before the folder is touched
            self.folder.claim(self.config, restart)
            self._build()
        except BaseException:
            self.folder.close()
            raise
        self.direction_gen = torch.Generator().manual_seed(self.seed + DIRECTION_SEED_OFFSET)
        self.step = self.epoch = self.index = 0
        self.best_dev, self.best_step = -math.inf, -1
        self._perm, self._perm_epoch = None, None  # the data order of the epoch `batch` last read
        self._elapsed_before, self._start = 0.0, time.perf_counter()

    def _build(self) -> None:
        """The stage's models on the device (DDP-wrapped for the forward under torchrun), data and optimizer."""
        cfg = self.config
        self.amp_dtype = _autocast_dtype(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        torch.manual_seed(self.seed)  # any weight the checkpoint lacks (e.g. a pooler) is initialised reproducibly
        built = self.spec.build(self)
        self.model, self.tokenizer, self.head, self.teacher = built.model, built.tokenizer, built.head, built.teacher
        for module in (self.model, self.head, self.teacher):
            if module is not None:
                module.to(self.device)
        self.forward_model, self.forward_head = self.model, self.head
        self.mask_4d = (self.device.type == "cuda" and not isinstance(self.model, TwinTower)  # a plain encoder: `_cls`
                        and getattr(self.model.config, "_attn_implementation", None) == "sdpa")
        if self.world > 1:  # DDP averages the gradients; the losses gather the candidates (jtcse_lib.distributed)
            self.forward_model, self.forward_head = _ddp(self.model, self.device), _ddp(self.head, self.device)

        self.corpus = tokenized_corpus(cfg.corpus, self.tokenizer, cfg.max_length, self.data_dir, cfg.corpus_limit,
                                       progress=self.progress)
        self.n_truncated = int((self.corpus.n_untruncated > cfg.max_length).sum())  # from the real lengths
        self.steps_per_epoch = _steps_per_epoch(len(self.corpus), cfg.batch_size)
        self.total_steps = total = cfg.max_steps or cfg.epochs * max(1, self.steps_per_epoch // cfg.grad_accum)
        self.uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.dev_pairs = load_stsb("dev", self.data_dir).head(cfg.dev_pairs)

        self.params = [p for m in (self.model, self.head) if m is not None for p in m.parameters() if p.requires_grad]
        # fused on CUDA: one kernel, and it takes the scaler's overflow flag on the device (no host sync per step)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=self.device.type == "cuda")
        warmup = int(cfg.warmup_ratio * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, warmup, total, cfg.scheduler))

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
        ids = torch.full((B, max(len(r) for r in rows)), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.from_numpy(r)
            mask[i, :len(r)] = 1
        batch = {"input_ids": ids.repeat(2, 1), "attention_mask": mask.repeat(2, 1)}  # (2B, L)
        if self.uses_token_types:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's objective on one batch: (weighted total, unweighted terms)."""
        return self.spec.objective(self, batch)

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over `batches` (gradient accumulation); returns the loss terms averaged over the
        batches, and with fp16 `overflow_skipped` (1 when the scaler skipped the step), as device tensors."""
        sums: dict[str, torch.Tensor] = {}
        for batch in batches:
            try:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    loss, terms = self.loss(batch)
                self.scaler.scale(loss / len(batches)).backward()
            except torch.cuda.OutOfMemoryError:
                raise _out_of_memory(self.config) from None
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0) + value.detach().float() / len(batches)
        if self.config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)  # returns a tensor: no sync
        # the scale before the step, on the device: torch's public get_scale() is a host read (bench/accelerate_check)
        scale = self.scaler._scale.clone() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed ...
        self.scaler.update()  # ... and then the scale shrinks
        if scale is not None:
            sums["overflow_skipped"] = (self.scaler._scale < scale).float().reshape(())
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return sums

    # ---------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        """Train to total_steps, resuming from the checkpoint when there is one; then write result.json."""
        with closing(self.folder):  # the writer lock, taken by the constructor
            return self._run()

    def _run(self) -> TrainResult:
        cfg, folder, best = self.config, self.folder, self.out_dir / "best"
        self._start = time.perf_counter()
        resumed = folder.load_checkpoint({"model": self.model, "head": self.head}, self.load_state_dict)
        if folder.finished() and (not resumed or self.step >= self.total_steps):  # complete, checkpoint kept or not
            done = folder.result()
            self._note(f"{self.out_dir} is complete already (step {done['steps']}): nothing to do")
            return TrainResult(self.stage, self.out_dir, best, done["best_step"], done["best_stsb_dev"], done["steps"],
                               done["wall_seconds"])
        if not resumed:
            torch.manual_seed(self.seed + RANK_SEED_STRIDE * self.rank)  # each rank its own dropout masks
        folder.start(self.step, resumed, {"seed": self.seed, "lr": cfg.lr, "config": cfg.to_dict()})
        if self.n_truncated:
            self._note(f"{self.n_truncated} of {len(self.corpus)} training sentences are longer than "
                             f"max_length={cfg.max_length} tokens and were truncated")
        if resumed:
            self._note(f"resuming from step {self.step} of {self.total_steps}")
        else:
            self._evaluate(candidate=False)  # the starting point, for the curves
        window, shown = _Window(), {"loss": "-"}
        bar = progress_bar(total=self.total_steps, initial=self.step, desc=self.stage, unit="step",
                           disable=not self.progress, dynamic_ncols=True)
        with bar, self._numerics(), _StopSignals(self.stage) as stop:
            self.model.train()
            while self.step < self.total_steps:
                window.add(self.train_step([self._next_batch() for _ in range(cfg.grad_accum)]))
                self.step += 1
                bar.update(1)
                last = self.step == self.total_steps
                logged, evaluated = self.step % cfg.log_every == 0 or last, self.step % cfg.eval_every == 0 or last
                if logged:
                    shown["loss"] = self._log_window(window) or shown["loss"]
                    window = _Window()
                if evaluated:
                    shown["dev"] = f"{self._evaluate():.2f}"
                if logged or evaluated:
                    bar.set_postfix(shown, best_dev=_shown(self.best_dev))
                # the last step's checkpoint only when it is kept: result.json marks the run finished instead
                saved = self.step % cfg.checkpoint_every == 0 or (last and cfg.keep_checkpoints)
                if saved:
                    self._save_checkpoint()
                if not last and stop.requested(self.step, cfg.log_every, self.device):
                    if not saved:
                        self._save_checkpoint()
                    raise Interrupted(f"stopped by {signal.Signals(stop.caught or signal.SIGTERM).name} at step "
                                      f"{self.step} of {self.total_steps}; the checkpoint of this step is in "
                                      f"{self.out_dir / 'checkpoint'}", "run the same command again to resume from it")
        wall = self.elapsed()
        folder.finish({"stage": self.stage, "best_step": self.best_step, "best_stsb_dev": self.best_dev,
                       "steps": self.step, "total_steps": self.total_steps, "wall_seconds": round(wall, 1),
                       "train_sentences": len(self.corpus), "truncated_sentences": self.n_truncated,
                       "world_size": self.world, "config": cfg.to_dict(), **provenance(self.device)},
                      keep_checkpoint=cfg.keep_checkpoints)
        return TrainResult(self.stage, self.out_dir, best, self.best_step, self.best_dev, self.step, wall)

    def _next_batch(self) -> dict[str, torch.Tensor]:
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        self.index += 1
        return self.batch(self.epoch, self.index - 1)

    def _log_window(self, window: _Window) -> str | None:
        """Log the window's means (one host sync; `_Window.means` stops a diverged run). Returns the loss for the
        progress bar."""
        values = window.means(self.step, self.scaler, self.out_dir)
        self.folder.log({"step": self.step, "epoch": self.epoch, **values, "lr": self.scheduler.get_last_lr()[0],
                         "seconds": round(self.elapsed(), 2)})
        return f"{values['loss']:.4f}" if "loss" in values else None

    def _numerics(self):
        return training_numerics(self.device, self.amp_dtype, self.config.deterministic)

    def _note(self, text: str) -> None:
        """A line about the run for whoever watches it: with the progress bar (progress=False is quiet)."""
        if self.progress:
            _say(self.stage, text)

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._start

    # ---------------------------------------------------------------- evaluation and checkpoints

    def dev_score(self) -> float:
        return stsb_dev_score(self.spec.dev_encoder(self), pairs=self.dev_pairs)

    def _evaluate(self, candidate: bool = True) -> float:
        """STS-B dev score of the current model; keep it as `best/` when it is a candidate and improves. Rank 0
        scores and saves while the others wait; every rank then holds its decision."""
        decision = None
        if distributed.is_main():
            dev = self.dev_score()
            improved = candidate and dev > self.best_dev
            if improved:
                self.best_dev, self.best_step = dev, self.step
                pooler = self.head if self.head is not None and self.config.mlp_as_pooler else None
                self.folder.save_best(partial(_save_pretrained, self.model, self.tokenizer, pooler), self.step)
            self.folder.log({"step": self.step, "stsb_dev": dev, "best_dev": self.best_dev, "improved": improved})
            decision = (dev, self.best_dev, self.best_step)
        dev, self.best_dev, self.best_step = distributed.broadcast_object(decision)
        self.model.train()
        return dev

    def _save_checkpoint(self) -> None:
        self.folder.save_checkpoint(self.step, {"model": self.model, "head": self.head}, self.state_dict())

    def state_dict(self) -> dict:
        """The loop's state for an exact resume (the run folder saves the weights and RNG states beside it)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "direction_gen": self.direction_gen.get_state(),
                "step": self.step, "epoch": self.epoch, "index": self.index, "best_dev": self.best_dev,
                "best_step": self.best_step, "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.direction_gen.set_state(state["direction_gen"])
        self.step, self.epoch, self.index = state["step"], state["epoch"], state["index"]
        self.best_dev, self.best_step, self._elapsed_before = state["best_dev"], state["best_step"], state["elapsed"]


# ---------------------------------------------------------------- helpers of the loop

class _Window:
    """The loss terms of the steps since the last log line, summed on the device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.skipped = 0, None

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        skipped = terms.pop("overflow_skipped", None)  # fp16 only: a step the scaler skipped is not averaged
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + (value if skipped is None else
                                                        torch.where(skipped > 0, 0.0, value))
        if skipped is not None:
            self.skipped = skipped if self.skipped is None else self.skipped + skipped
        self.steps += 1

    def means(self, step: int, scaler, out_dir: Path) -> dict[str, float]:
        """{term: its mean over the window's kept steps, for the global batch} and with fp16 `overflow_skipped`.
        Stops (`TrainingDiverged`) on a non-finite mean, or when fp16 overflowed on every step of the window even at
        a loss scale below 1."""
        skipped = 0 if self.skipped is None else int(self.skipped)
        kept = self.steps - skipped
        # each rank's terms are its local means, and the local batches are equal
        means = distributed.mean(torch.stack(list(self.sums.values())).div(kept)).tolist() if kept else []
        values = dict(zip(self.sums, means))
        where = f"the last good checkpoint is in {out_dir / 'checkpoint'} and the best model in {out_dir / 'best'}"
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
            raise TrainingDiverged(f"the loss is not finite at step {step} ({bad}); {where}",
                                   "lower the learning rate, or use precision=fp32 / bf16 instead of fp16")
        if not kept and scaler.get_scale() < 1.0:
            raise TrainingDiverged(f"every fp16 step up to {step} overflowed, down to a loss scale below 1; {where}",
                                   "use precision=bf16 or fp32, or lower the learning rate")
        return values if self.skipped is None else {**values, "overflow_skipped": skipped}


class _StopSignals:
    """SIGINT (Ctrl-C, a kernel interrupt) and SIGTERM set `caught`, which the loop reads after each step: it then
    writes a checkpoint and stops (`Interrupted`, exit 130). A second Ctrl-C stops at once. Handlers live in the main
    thread only; elsewhere nothing is caught."""

    def __init__(self, stage: str):
        self.stage, self.caught, self._previous = stage, None, {}

    def _handle(self, signum, frame):
        if self.caught is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.caught = signum
        _say(self.stage, f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint (Ctrl-C again "
                         "to stop at once)")

    def requested(self, step: int, log_every: int, device: torch.device) -> bool:
        """Whether a signal asked to stop. One process: the flag (no device work). DDP: every rank must stop at the
        same step, so the ranks agree at logging steps only, where the loop syncs anyway."""
        if not distributed.active():
            return self.caught is not None
        return step % log_every == 0 and distributed.any_rank(self.caught is not None, device)

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)


def _ddp(module: torch.nn.Module | None, device: torch.device):
    if module is None:
        return None
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _save_pretrained(model, tokenizer, pooler: torch.nn.Module | None, folder: Path) -> None:
    """Plain Hugging Face folder(s): the model, and the tokenizer beside each tower it wrote. With `pooler` (stage
    1's MLP head, tanh(W h + b)) the tower's pooler, the same function of [CLS], gets its weights first, as SimCSE's
    simcse_to_huggingface.py renames `mlp` to `pooler`: stage 1 never reads the pooler (it is frozen), stage 2's
    official modulus term does."""
    if pooler is not None:
        with torch.no_grad():
            model.pooler.dense.load_state_dict(pooler.dense.state_dict())
    model.save_pretrained(folder)
    for config in sorted(folder.glob("**/config.json")):
        tokenizer.save_pretrained(config.parent)


def _steps_per_epoch(sentences: int, batch_size: int) -> int:
    if sentences < batch_size:
        fix = (f"set batch_size to at most {sentences}, or use a larger corpus" if sentences >= 2
               else "use a corpus of at least 2 sentences (in-batch negatives need a second sentence)")
        raise ConfigError(f"batch_size={batch_size} is larger than the corpus ({sentences} sentences)", fix)
    return sentences // batch_size


def _out_of_memory(cfg: RunConfig) -> JtcseError:
    half = max(2, cfg.batch_size // 2)
    return JtcseError(f"CUDA ran out of memory at batch_size={cfg.batch_size}, max_length={cfg.max_length}",
                      f"a smaller max_length keeps the loss; batch_size={half} grad_accum={cfg.grad_accum * 2} keeps "
                      f"the sentences per optimizer step but changes the loss (in-batch negatives come from one "
                      f"micro-batch: {2 * half - 2} per row instead of {2 * cfg.batch_size - 2}), so the result is "
                      "not the same recipe")


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """The lr multiplier: linear warm-up from 1/warmup (transformers' starts at 0), then constant or linear to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup)) if decay == "linear" else 1.0


@contextmanager
def training_numerics(device: torch.device, amp_dtype, deterministic: bool):
    """TF32 (CUDA fp32) and deterministic kernels for the training loop only; the process's settings come back after,
    so an fp32 evaluation later in the same kernel is fp32 whether or not training ran first. (torch has no context
    manager for these: `cudnn.flags` covers cuDNN only.)"""
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    saved = (cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if device.type == "cuda" and amp_dtype is None and not deterministic:
            cuda.matmul.allow_tf32 = cudnn.allow_tf32 = True
        if deterministic:  # cost: some kernels are slower, a few ops refuse to run (they say so)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's requirement for determinism
            cudnn.deterministic, cudnn.benchmark = True, False
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved[:4]
        torch.use_deterministic_algorithms(saved[4])
        if saved[5] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _say(stage: str, text: str) -> None:
    if distributed.is_main():
        tqdm.write(f"[{stage}] {text}")


def _shown(score: float) -> str:
    """A dev score for the progress bar: '-' before the first candidate (step 0 is not one)."""
    return f"{score:.2f}" if math.isfinite(score) else "-"
