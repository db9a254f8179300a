"""The run folder (`--out`) of one training: who may write it, what it holds, and each of its files.

    run.json        the run's identity (`identity`) and one history entry per start: a resume with another identity
                    is refused with the differences; only EXTENDABLE settings may grow
    metrics.jsonl   strict-JSON lines (a non-finite number is null), the same scalars in tensorboard/ when installed
    checkpoint/     the latest resumable state: model.safetensors (+ head.safetensors) and trainer_state.pt (the
                    loop's state and every rank's RNG states)
    best/           the best model so far, plain Hugging Face folder(s)
    result.json     written last: its presence means the run is complete

Results are never replaced implicitly (`restart` moves a run aside to `OUT.old-<time>`). checkpoint/ and best/ are
filled in a temporary folder and swapped in by renames (`files.write_folder`); a kill between the two renames leaves
`X.old`, which a resume uses. Under DDP rank 0 writes while every rank reads: on the other ranks the writing methods
do nothing, and the methods every rank calls wait for each other at a barrier.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .config import TRAINING_VERSION, RunConfig, stage_settings
from .data import content_digest, corpus_digest, stsb_path
from .errors import ConfigError
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

# Settings a finished or interrupted run may continue under when they grow (more steps of a constant schedule);
# any other change of what a stage reads is refused on resume.
EXTENDABLE = ("max_steps", "epochs")
DISK_FIX = "or move --out to a larger disk"


def identity(config: RunConfig, stage: str, world: int, init, teacher, data_dir) -> dict:
    """What a run folder holds: the stage, the settings it reads, the models it starts from, the data's digests."""
    return {"stage": stage, "training_version": TRAINING_VERSION, "world_size": world,
            "settings": stage_settings(config, stage),
            "init": [str(i) for i in init] if isinstance(init, tuple) else init,
            "teacher": str(teacher) if teacher else None,
            "data": {"corpus": corpus_digest(config.corpus, data_dir),
                     "stsb_dev": content_digest(stsb_path("dev", data_dir))}}


class RunFolder:
    """The folder `path` of one `stage` run with `identity`; `close()` releases the writer lock and TensorBoard."""

    def __init__(self, path: Path, stage: str, identity: dict, device: torch.device):
        self.path, self.stage, self.identity, self.device = Path(path), stage, identity, device
        self.main = distributed.is_main()
        self.grown: dict = {}  # EXTENDABLE settings this start grows: {key: (stored, now)}
        self._held = ExitStack()  # the writer lock and the TensorBoard writer
        self._tensorboard = None

    def close(self) -> None:
        self._held.close()

    # ---------------------------------------------------------------- claiming the folder

    def claim(self, config: RunConfig, restart: bool) -> None:
        """Before any work, rank 0 takes the writer lock and checks the folder (the others wait for its verdict):
        a folder we can write, holding nothing or a run of exactly this identity. `restart` moves a run aside."""
        if self.main:
            self._lock()
            self._check(config, restart)
        distributed.barrier()

    def _lock(self) -> None:
        """One writer per run folder: a second training into the same --out stops at once, naming the first."""
        try:
            self._held.enter_context(exclusive_lock(writer_lock(self.path), f"--out {self.path}", fix=(
                "wait for that training to finish (or stop it: Ctrl-C checkpoints it), or train into another --out")))
        except NoSpace:
            raise
        except FileProblem as e:  # a read-only or foreign parent folder
            raise ConfigError(f"cannot write to --out {self.path} ({e.problem})", "choose a writable folder") from None

    def _check(self, config: RunConfig, restart: bool) -> None:
        out, fix = self.path, "train into a new --out, or pass --restart to move this run aside and start over"
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder", "choose a folder path")
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if restart and held:
            aside = out.with_name(f"{out.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
            out.rename(aside)
            tqdm.write(f"[{self.stage}] --restart: the previous run in {out} is now in {aside}")
            held = []
        if (out / "run.json").is_file():
            stored = read_json(out / "run.json", "run record", fix, ConfigError)
            grown = {k: (stored.get("settings", {}).get(k), self.identity["settings"][k]) for k in EXTENDABLE}
            grown = {k: v for k, v in grown.items() if v[0] != v[1]}
            kept = {k: v for k, v in stored.items() if k in self.identity}
            kept["settings"] = {**kept.get("settings", {}), **{k: v[1] for k, v in grown.items()}}
            diffs = _differences(kept, self.identity)
            if diffs:
                raise ConfigError(f"{out} holds a {stored.get('stage')} run with other settings ({'; '.join(diffs)})",
                                  fix)
            if grown and not (config.scheduler == "constant" and config.warmup_ratio == 0 and
                              all(isinstance(a, int) and isinstance(b, int) and b > a for a, b in grown.values())):
                changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in grown.items())
                raise ConfigError(f"{out} holds a run that can only be extended to more steps of a constant schedule "
                                  f"without warm-up ({changes})", fix)
            if grown and self.finished() and self._checkpoint() is None:
                raise ConfigError(f"{out} holds a finished run whose resume checkpoint was deleted when it finished "
                                  "(keep_checkpoints=false), so it cannot be extended", "train into a new --out (or "
                                  "pass --restart), with keep_checkpoints=true if you will want to extend it")
            self.grown = grown
        elif held:
            raise ConfigError(f"{out} is not empty and holds no run.json ({', '.join(held[:4])}): not a run of this "
                              "version", "train into a new --out, or pass --restart to move its contents aside")
        # Results are what a finished run writes (result.json); best/ without it and without a checkpoint is a run
        # stopped before its first checkpoint, which resumes from step 0 (`start` clears its partial files).
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / ".writable", "")
            (out / ".writable").unlink()
        except (OSError, FileProblem) as e:
            raise ConfigError(f"cannot write to --out {out} ({getattr(e, 'strerror', None) or e})",
                              "choose a writable folder") from None

    # ---------------------------------------------------------------- a start, its log, its end

    def start(self, step: int, resumed: bool, record: dict) -> None:
        """A start of training at `step`. A fresh start first clears what a run stopped before its first checkpoint
        left. run.json gets the identity, `record` and this start's history entry; TensorBoard opens (on resume it
        purges the events after `step`, which are logged again)."""
        if not self.main:
            return
        if not resumed:
            (self.path / "metrics.jsonl").unlink(missing_ok=True)
            for name in ("best", "best.old", "best.tmp", "checkpoint.tmp", "tensorboard"):
                shutil.rmtree(self.path / name, ignore_errors=True)
        path = self.path / "run.json"
        history = read_json(path, "run record").get("history", []) if resumed and path.is_file() else []
        entry = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from_step": step}
        if self.grown:
            entry["extended"] = {k: list(v) for k, v in self.grown.items()}
        write_json(path, {**self.identity, **record, "history": [*history, entry]})
        try:
            from torch.utils.tensorboard import SummaryWriter  # the optional extra [tensorboard]
        except ImportError:
            return
        self._tensorboard = self._held.enter_context(
            SummaryWriter(str(self.path / "tensorboard"), purge_step=step if resumed else None))

    def log(self, record: dict) -> None:
        """One strict-JSON line of metrics.jsonl, and its scalars to TensorBoard."""
        if not self.main:
            return
        path = self.path / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf8") as f:
                f.write(json.dumps(finite(record), allow_nan=False) + "\n")
        except OSError as e:  # a half line at the end is dropped on resume (read_jsonl)
            raise write_failure(e, path, "metrics log", fix=DISK_FIX) from None
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, record["step"])

    def save_best(self, write, step: int) -> None:
        """best/ := what `write(folder)` writes (a full disk is one line; the previous best stays)."""
        if self.main:
            write_folder(self.path / "best", write, f"best model (step {step})", fix=DISK_FIX)

    def finished(self) -> bool:
        return (self.path / "result.json").is_file()

    def result(self) -> dict:
        return read_json(self.path / "result.json", "result", "pass --restart to train it again", ConfigError)

    def finish(self, summary: dict, keep_checkpoint: bool) -> None:
        """result.json := `summary` (the run is complete); the checkpoint (weights + optimizer, ~3x best/) goes
        unless kept, as a finished run needs only best/."""
        if self.main:
            write_json(self.path / "result.json", summary)
            if not keep_checkpoint:
                for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
                    shutil.rmtree(self.path / name, ignore_errors=True)
        distributed.barrier()

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, step: int, weights: dict, state: dict) -> None:
        """checkpoint/ := each module of `weights` (name -> module or None) as NAME.safetensors, and `state` with
        every rank's RNG states as trainer_state.pt. Every rank calls it (the RNG states are gathered)."""
        rng = distributed.gather_objects(_rng_state(self.device))

        def write(folder: Path) -> None:
            from safetensors.torch import save_file

            for name, module in weights.items():
                if module is not None:
                    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                              str(folder / f"{name}.safetensors"))
            torch.save({**state, "rng": rng}, folder / "trainer_state.pt")

        if self.main:
            write_folder(self.path / "checkpoint", write, f"checkpoint (step {step})", fix=DISK_FIX)
        distributed.barrier()

    def load_checkpoint(self, weights: dict, restore) -> bool:
        """Load the latest checkpoint, if any, into `weights` (as saved), this rank's RNG, and `restore(state)` (the
        trainer's loop state); then drop the metric lines logged after it. Every rank calls it. A damaged checkpoint
        is one line saying how to start over."""
        from safetensors.torch import load_file

        ckpt = self._checkpoint()
        if ckpt is None:
            return False
        try:
            for name, module in weights.items():
                if module is not None:
                    module.load_state_dict(load_file(str(ckpt / f"{name}.safetensors"), device=str(self.device)))
            state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
            _set_rng_state(state["rng"][distributed.rank()], self.device)
            restore(state)
        except Exception as e:  # truncated or corrupt safetensors / pickle: many exception types, one message
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConfigError(f"the checkpoint in {ckpt} is damaged ({type(e).__name__}: {first})",
                              "pass --restart to move this run aside and train from step 0") from None
        if self.main:
            self._trim_metrics(state["step"])
            best, old = self.path / "best", self.path / "best.old"
            if not best.exists() and old.exists():  # killed between the two renames of a best-model swap
                old.rename(best)
        distributed.barrier()
        return True

    def _checkpoint(self) -> Path | None:
        """checkpoint/, or checkpoint.old/ when killed between the two renames of a swap; None without either."""
        return next((self.path / name for name in ("checkpoint", "checkpoint.old")
                     if (self.path / name / "trainer_state.pt").is_file()), None)

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from (they will be written again), and a half
        written last line; the trimmed log replaces the old one atomically."""
        path = self.path / "metrics.jsonl"
        if path.is_file():
            records, _ = read_jsonl(path, "metrics log", "pass --restart to move this run aside", ConfigError)
            write_text(path, "".join(json.dumps(r) + "\n" for r in records if r.get("step", math.inf) <= step))


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
