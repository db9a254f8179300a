"""Saving trained encoders in formats other people load: Hugging Face, sentence-transformers, and the twin.

- **Hugging Face folder** (`export_hf`): `config.json`, `model.safetensors`, tokenizer files; loads with
  `AutoModel` / `AutoTokenizer`, the sentence vector is then up to the reader.
- **sentence-transformers folder** (`export_sentence_transformers`): the Hugging Face files plus `modules.json`
  (Transformer, then Pooling in `1_Pooling/`) and `sentence_bert_config.json`; no Dense, no Normalize, so
  `SentenceTransformer(folder).encode(s)` is the raw [CLS] (or mean) vector our evaluation scores.
- **twin folder** (`export_twin`): `tower_a/` and `tower_b/`, each a sentence-transformers folder (CLS), and
  the twin marker `twin.json` (`backbones.write_twin_json`). The JTCSE model is the *sum* of the two towers'
  [CLS] vectors, which no single sentence-transformers folder expresses: `jtcse_lib.load_twin(folder)`.

Why CLS pooling is written out: SimCSE, TNCSE and JTCSE train and evaluate the last hidden state of the first
token, before the pooler. `SentenceTransformer(path)` on a *bare* Hugging Face folder silently builds
Transformer + **mean** pooling, so it would load our models without error and embed every sentence differently
from the numbers we report. Every export is therefore loaded back with sentence-transformers and compared with
our own encoder's vectors (`evaluate.encode`). Nothing is copied from the source folder (all-MiniLM-L6-v2's own
`modules.json` has mean pooling and a Normalize module, which an export of it must not inherit).

Writing: an export is built in a hidden staging folder beside `out_dir` (`.OUT.partial-HOST-PID-RANDOM`) and
renamed into place only when complete and verified; on any error (a full disk is one `NoSpace` line) the staging
folder goes and `out_dir` is untouched. An existing non-empty `out_dir` is refused unless `overwrite=True`, which
deletes it only when it holds exactly what an earlier export wrote (the files listed, with their sizes and times,
in the marker `.jtcse-export.json`); anything else is moved aside to `OUT.old-<time>`. The staging folders that
killed exports left are removed by the next export into the same folder (`_remove_stale_stages` gives the rule).
Not `files.write_folder`, whose fixed `OUT.tmp` / `OUT.old` allow one writer and delete what `OUT` held: an export
tells a killed exporter's staging folder from a live one's, and moves files it did not write aside; the files
themselves are written by transformers' `save_pretrained` and `files.write_json` / `write_text`.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from . import __version__
from .backbones import TOWERS, has_tokenizer, load_encoder, load_tokenizer, resolve, twin_towers, write_twin_json
from .data import STS_TASKS
from .errors import JtcseError, ModelError
from .files import NoSpace, is_disk_full, no_space, write_failure, write_json, write_text

# The score columns of every results table and model card (report re-exports them), and their short labels.
COLUMNS = [*STS_TASKS, "avg"]
SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R", "avg": "Avg."}
# Each stage's names, the one place for them: the method its model card states, its label in tables and figures.
STAGE_METHODS = {"simcse_a": "SimCSE", "simcse_b": "SimCSE", "tncse": "TNCSE", "jtcse": "JTCSE", "distill": "JTCSE-D"}
STAGE_LABELS = {"simcse_a": "SimCSE tower A", "simcse_b": "SimCSE tower B", "tncse": "TNCSE (twin)",
                "jtcse": "JTCSE (twin)", "distill": "JTCSE-D"}

ST_POOLINGS = ("cls", "mean")  # poolings that both our evaluation and sentence-transformers' Pooling compute
MAX_DEFAULT_LENGTH = 512
_ST_MODULES = [  # the classic module paths (aliases of the v6 paths, importable in every release)
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]
_PROBES = ("A man is playing a guitar.",
           "Two dogs run across a snowy field while a child in a red coat watches them from the fence.")


# ---------------------------------------------------------------- loading, limits

def _load_tower(name: str | os.PathLike):
    """(model, tokenizer) in eval mode, refusing checkpoints with missing encoder weights (an export would hold
    randomly initialised layers)."""
    ref = resolve(name)
    model, info = load_encoder(name, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        keys = ", ".join(str(k) for k in (missing + mismatched)[:5])
        raise ModelError(f"{ref.name} is incomplete: weights missing or of the wrong shape ({keys}); an export "
                         "would hold randomly initialised layers",
                         "export the folder the training run saved (its config.json and model.safetensors)")
    if len(missing) < len(info.get("missing_keys", ())):
        warnings.warn(f"{ref.name} has no pooler weights: the pooler is randomly initialised (CLS and mean "
                      "pooling do not use it)", stacklevel=3)
    return model.eval(), load_tokenizer(name)


def _positions(config) -> int | None:
    """How many tokens the position embeddings allow (RoBERTa-style models reserve pad_token_id + 1)."""
    n = getattr(config, "max_position_embeddings", None)
    if not n or n < 0:
        return None
    if any(t in getattr(config, "model_type", "") for t in ("roberta", "camembert")):
        n -= (getattr(config, "pad_token_id", None) or 0) + 1
    return n


def _max_seq_length(tokenizer, config, requested: int | None) -> int:
    """`requested`, or the tokenizer's model_max_length capped at 512 and at the position embeddings."""
    positions = _positions(config)
    if requested is None:
        limits = [MAX_DEFAULT_LENGTH, positions, getattr(tokenizer, "model_max_length", None)]
        return int(min(x for x in limits if x and x > 0))
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 2:
        raise ModelError(f"max_seq_length must be an integer of at least 2, got {requested!r}",
                         "pass the token limit the model should truncate to, e.g. 64")
    if positions is not None and requested > positions:
        raise ModelError(f"max_seq_length {requested} exceeds the model's {positions} position embeddings",
                         f"pass at most {positions}")
    return int(requested)


def _check_pooling(pooling: str) -> None:
    if pooling == "pooler":
        raise ModelError("pooling 'pooler' cannot be expressed in a sentence-transformers folder: its Pooling "
                         "module has no mode for the BERT pooler (tanh(W h_0 + b))",
                         "export with pooling='cls' (what JTCSE trains and evaluates) or 'mean'; for the pooler "
                         "output use export_hf and read pooler_output in transformers")
    if pooling not in ST_POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r} for a sentence-transformers export",
                         f"use one of {', '.join(ST_POOLINGS)}")


def _normalise_permissions(folder: Path) -> None:
    """transformers writes model.safetensors with mode 0600; give every file of the export the permissions of
    an ordinary file (the umask's), so it can be shared or served as is."""
    mask = os.umask(0o022)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.chmod(Path(root) / name, (0o777 if name in dirs else 0o666) & ~mask)
    os.chmod(folder, 0o777 & ~mask)


# ---------------------------------------------------------------- staging, replacing, stale leftovers

MARKER = ".jtcse-export.json"  # written last into every export: the files it wrote, with their sizes and mtimes
STALE_AFTER_S = 24 * 3600  # a staging folder no live exporter of this host owns is stale; any is after a day
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())  # no '-': a staging folder's name splits on it


@dataclass
class _Stage:
    """A staging folder beside the output folder, `.OUT.partial-HOST-PID-RANDOM`: `path` (its `export/`) receives
    the export, and what `out_dir` held waits beside it until the new export is in place. `need_bytes`: the disk
    the export needs (for the full-disk message)."""

    root: Path
    need_bytes: int = 1 << 20

    @property
    def path(self) -> Path:
        return self.root / "export"


def _tower_bytes(model) -> int:
    """The disk one saved copy of a tower takes: its weights, plus a margin for the tokenizer and configs."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) + 3_000_000


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove_stale_stages(out: Path) -> list[Path]:
    """Remove what killed exports into `out` left (`.OUT.partial-*`). The rule: a staging folder is stale when its
    exporter (the pid in its name, on this host) no longer runs, or when it is more than a day old (another host's,
    a reused pid's, or an older version's, whose names carry no pid); any other is in use and stays."""
    prefix, removed = f".{out.name}.partial-", []
    for stage in out.parent.iterdir():
        if not stage.name.startswith(prefix) or stage.is_symlink() or not stage.is_dir():
            continue
        host, pid, rand = (stage.name[len(prefix):].rsplit("-", 2) + ["", ""])[:3]
        try:
            stale = (not _running(int(pid)) if host == _HOST and pid.isdigit() and rand
                     else time.time() - stage.stat().st_mtime > STALE_AFTER_S)
        except OSError:
            continue
        if stale:
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    if removed:
        print(f"export: removed {len(removed)} staging folder(s) that killed exports to {out} left "
              f"({', '.join(p.name for p in removed)})", file=sys.stderr)
    return removed


def _listing(folder: Path) -> dict[str, list[int]]:
    """{relative path: [size, mtime_ns]} of every file and link under `folder`, the marker excepted."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            st = os.lstat(os.path.join(root, name))
            found[Path(root, name).relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    found.pop(MARKER, None)
    return found


def _foreign(folder: Path) -> list[str]:
    """The files under `folder` that no export wrote: not listed in its marker, or changed since (size or mtime)."""
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf8"))["files"]
        listed = listed if isinstance(listed, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        listed = {}  # no marker (an older version's export, or anything else): every file is foreign
    return sorted(name for name, stat in _listing(folder).items() if listed.get(name) != stat)


def is_export(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds only what an export wrote: files its marker lists, each unchanged (same size and
    modification time). Only such a folder is deleted by `overwrite`; any other is moved aside."""
    folder = Path(folder)
    return (folder / MARKER).is_file() and not _foreign(folder)


def _aside(out: Path) -> Path:
    """`OUT.old-<time>` (as `train --restart` names it), with a counter when that name is taken."""
    base = aside = out.with_name(f"{out.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
    n = 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    return aside


def _swap_in(stage: _Stage, out: Path) -> None:
    """Rename the finished export to `out`. What `out` held goes first: nothing, or only files an earlier export
    wrote, unchanged (`is_export`), is deleted with the staging folder; anything else is moved aside to
    `OUT.old-<time>` and said so."""
    foreign = _foreign(out) if out.exists() else []
    aside = _aside(out) if foreign else None
    previous = aside or stage.root / "previous"
    if out.exists():
        out.rename(previous)
    try:
        stage.path.rename(out)
    except OSError:
        if previous.exists() and not out.exists():  # e.g. another export got there first: put it back
            previous.rename(out)
        raise
    shutil.rmtree(stage.root, ignore_errors=True)
    if aside is not None:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        held = (f"files that no export wrote, or changed since ({', '.join(foreign[:3])}{more})"
                if (aside / MARKER).is_file() else f"no export marker ({MARKER}: not written by this version)")
        print(f"export: {out} held {held}; it is now {aside}", file=sys.stderr)


@contextmanager
def _staged(out_dir: str | os.PathLike, overwrite: bool, sources: Sequence[str | os.PathLike]) -> Iterator[_Stage]:
    """Yield a staging folder beside `out_dir`; on success its export replaces `out_dir` (`_swap_in`), on any error
    it is removed: a full disk is one `NoSpace` line, a refused write one `FileProblem`, and `out_dir` is untouched."""
    out = Path(out_dir).expanduser().resolve()
    for src in map(Path, sources):
        src = src.expanduser().resolve()
        if src.exists() and (out == src or out in src.parents):
            raise ModelError(f"output folder {out} is, or contains, the model being exported ({src})",
                             "write the export to a new folder")
    if out.exists() and not out.is_dir():
        raise ModelError(f"output path {out} is a file", "choose a folder path that does not exist yet")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"output folder {out} already exists and is not empty",
                         "choose a new folder, or pass overwrite=True (CLI: --overwrite) to replace it (a folder "
                         "that holds more than an earlier export is moved aside, not deleted)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(out)
        stage = _Stage(out.parent / f".{out.name}.partial-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        stage.path.mkdir(parents=True)
    except OSError as e:
        raise write_failure(e, out, "export folder") from None
    try:
        yield stage
        _normalise_permissions(stage.path)
        write_json(stage.path / MARKER, {"written_by": f"jtcse_lib {__version__} export",
                                         "files": _listing(stage.path)})
        _swap_in(stage, out)
    except BaseException as e:
        # judged before the partial export is removed (a library's vague write error counts only on a full disk)
        full = isinstance(e, NoSpace) or (not isinstance(e, JtcseError) and is_disk_full(e, stage.root))
        shutil.rmtree(stage.root, ignore_errors=True)
        if full:
            gc.collect()  # a tower loaded back for verification may map files just deleted: count their space free
            raise no_space(out.parent, stage.need_bytes, "or export elsewhere") from None
        if isinstance(e, OSError):
            raise write_failure(e, out, "export folder") from None
        raise


# ---------------------------------------------------------------- the three formats

def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, card: dict | None = None, *,
              overwrite: bool = False) -> Path:
    """Save a tower as a plain Hugging Face folder (safetensors, tokenizer, config); `card` adds a README.md."""
    with _staged(out_dir, overwrite, [model_dir]) as stage:
        model, tokenizer = _load_tower(model_dir)
        stage.need_bytes = _tower_bytes(model)
        model.save_pretrained(stage.path, safe_serialization=True)
        tokenizer.save_pretrained(stage.path)
        if card is not None:
            write_model_card(stage.path, {**card, **_facts(model, out_dir, "transformers", card.get("pooling", "cls"))})
    return Path(out_dir).expanduser().resolve()


def _write_st_folder(model, tokenizer, folder: Path, pooling: str, max_seq_length: int, verify: bool) -> None:
    """Write a sentence-transformers folder (Transformer + Pooling, nothing else) into the empty `folder`.

    Not `SentenceTransformer.save`: sentence-transformers 6 saves only its own schema (module paths
    `sentence_transformers.base...`, Pooling keys `embedding_dimension` / `pooling_mode`, no max_seq_length in
    sentence_bert_config.json), which releases before 6 cannot load, and has no option for the classic one. The
    classic schema here is what every release since 2.0 reads, 6 included; `verify` loads the folder back with the
    installed release. The weights and tokenizer are transformers' own `save_pretrained`."""
    import sentence_transformers
    import torch
    import transformers

    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.model_max_length = max_seq_length  # as SentenceTransformer.save records it: AutoTokenizer truncates alike
    tokenizer.save_pretrained(folder)
    write_json(folder / "modules.json", _ST_MODULES)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    write_json(folder / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__},
        "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"})
    problems = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    problems += [] if has_tokenizer(folder) else ["tokenizer files"]
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "1_Pooling")
    if problems or extra:
        raise RuntimeError(f"the sentence-transformers export in {folder} is malformed: missing "
                           f"{', '.join(problems) or 'nothing'}; unexpected folders {', '.join(extra) or 'none'}")
    if verify:
        _verify_st_folder(folder, model, tokenizer, pooling, max_seq_length)


def _verify_st_folder(folder: Path, model, tokenizer, pooling: str, max_seq_length: int) -> None:
    """Load the export back with sentence-transformers and compare its vectors with our encoder's."""
    from sentence_transformers import SentenceTransformer

    from .evaluate import encode

    st = SentenceTransformer(str(folder), device="cpu")
    modes = [getattr(m, "pooling_mode", None) for m in st]
    if len(st) != 2 or modes[1] != pooling or st.max_seq_length != max_seq_length:
        raise RuntimeError(f"sentence-transformers reads {folder} as {len(st)} modules with pooling {modes[1:]} "
                           f"and max_seq_length {st.max_seq_length}; expected 2, {pooling!r}, {max_seq_length}")
    got = st.encode(list(_PROBES), convert_to_numpy=True, show_progress_bar=False)
    want = encode(model, tokenizer, _PROBES, pooling, max_length=max_seq_length, progress=False)
    scale = max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4 * scale, rtol=0):
        raise RuntimeError(f"the sentence-transformers export in {folder} does not reproduce the model's "
                           f"{pooling} vectors (max difference {np.abs(got - want).max():.2e})")


def export_sentence_transformers(model_dir: str | os.PathLike, out_dir: str | os.PathLike, pooling: str = "cls",
                                 max_seq_length: int | None = None, card: dict | None = None, *,
                                 overwrite: bool = False, verify: bool = True) -> Path:
    """Save a tower as a sentence-transformers folder with explicit `pooling` ('cls' or 'mean'); return its path.

    max_seq_length: sentence-transformers truncates longer inputs (default: the tokenizer's model_max_length
    capped at 512 and at the position embeddings, what our evaluation sees). verify: load the export back and
    check that it reproduces the model's vectors on two probe sentences.
    """
    _check_pooling(pooling)
    with _staged(out_dir, overwrite, [model_dir]) as stage:
        model, tokenizer = _load_tower(model_dir)
        length = _max_seq_length(tokenizer, model.config, max_seq_length)
        stage.need_bytes = _tower_bytes(model)
        _write_st_folder(model, tokenizer, stage.path, pooling, length, verify)
        if card is not None:
            write_model_card(stage.path, {**card, **_facts(model, out_dir, "sentence-transformers", pooling, length)})
    return Path(out_dir).expanduser().resolve()


def export_twin(twin_dir: str | os.PathLike, out_dir: str | os.PathLike, max_seq_length: int | None = None,
                card: dict | None = None, *, overwrite: bool = False, verify: bool = True) -> Path:
    """Save a twin as `out/tower_a`, `out/tower_b` (sentence-transformers, CLS), `out/twin.json`, `out/README.md`.

    Each tower folder loads alone with sentence-transformers, but the model is the sum of the two towers'
    vectors: `jtcse_lib.load_twin(out).encode(s)` (or the sum of the two SentenceTransformer encodings).
    """
    towers = twin_towers(twin_dir)  # before anything is written: a bad folder leaves no trace
    card = card or {}
    with _staged(out_dir, overwrite, [twin_dir]) as stage:
        loaded = [_load_tower(t) for t in towers]
        if len({m.config.hidden_size for m, _ in loaded}) != 1:
            raise ModelError(f"the towers of {twin_dir} have different widths: their vectors cannot be summed",
                             "export each tower on its own with export_sentence_transformers")
        # one limit for both towers, so that their sum sees the same tokens
        length = min(_max_seq_length(tok, m.config, max_seq_length) for m, tok in loaded)
        stage.need_bytes = sum(_tower_bytes(m) for m, _ in loaded)
        for name, (model, tokenizer) in zip(TOWERS, loaded):
            (stage.path / name).mkdir()
            _write_st_folder(model, tokenizer, stage.path / name, "cls", length, verify)
            write_model_card(stage.path / name, {**card, **_facts(model, Path(out_dir) / name, "sentence-transformers",
                                                                  "cls", length, name)})
        write_twin_json(stage.path)
        write_model_card(stage.path, {**card, **_facts(loaded[0][0], out_dir, "twin", "cls", length, "twin")})
    return Path(out_dir).expanduser().resolve()


# ---------------------------------------------------------------- the model card (templates/model_card.md.jinja)

def card_from_run(model: str | os.PathLike) -> dict:
    """What a model card can state about a trained model (`RUN/best`): read from its run folder (result.json, the
    cached sts_cls_*.json scores); empty for anything else."""
    run, card = Path(model).parent, {}
    if not Path(model).exists():  # a name (minilm, a Hub id): no run folder
        return card
    if (run / "result.json").is_file():
        info = json.loads((run / "result.json").read_text())
        cfg = info.get("config", {})
        card.update(method=STAGE_METHODS.get(info.get("stage")), backbone=cfg.get("backbone"),
                    profile=cfg.get("profile"), seed=cfg.get("seed"),
                    training_data=f"{cfg.get('corpus')} ({info.get('train_sentences')} sentences)",
                    git_commit=info.get("git_commit"), created=info.get("created"),
                    notes=f"Selected on STS-B dev: {info.get('best_stsb_dev', float('nan')):.2f} at step "
                          f"{info.get('best_step')}.")
    if scores := sorted(run.glob("sts_cls_*.json")):
        card.update(scores=json.loads(scores[-1].read_text())["scores"],
                    protocol="SentEval, 'all' for STS12-16, Spearman x 100")
    return card


def _facts(model, out_dir, fmt: str, pooling: str, max_seq_length: int | None = None, kind: str = "tower") -> dict:
    """What the exporter knows for certain; it overrides anything the caller's card says about the same keys."""
    facts = {"name": Path(out_dir).name, "format": fmt, "pooling": pooling, "kind": kind,
             "dimension": model.config.hidden_size, "architecture": type(model).__name__}
    return facts if max_seq_length is None else {**facts, "max_seq_length": max_seq_length}


def write_model_card(out_dir: str | os.PathLike, info: dict) -> Path:
    """Write `out_dir/README.md` describing the exported model from `info` (template
    `templates/model_card.md.jinja`); it states only what it is given. Keys (all optional): title, method
    ('SimCSE', 'TNCSE', 'JTCSE', 'JTCSE-D'), backbone, training_data, profile, seed, scores (task -> Spearman
    x 100, optionally 'avg'), protocol, eval_max_length, git_commit, created (or date), notes; and from the
    exporters: name, format, kind ('tower' | 'twin' | 'tower_a' | 'tower_b'), pooling, max_seq_length,
    dimension, architecture."""
    from jinja2 import Environment, PackageLoader

    out = Path(out_dir)
    kind, method, name = info.get("kind", "tower"), info.get("method"), info.get("name") or out.name
    fmt, pooling = info.get("format", "sentence-transformers"), info.get("pooling", "cls")
    scores = info.get("scores") or {}
    values = [scores.get(c) for c in STS_TASKS]
    if scores.get("avg") is None and all(v is not None for v in values):
        scores = {**scores, "avg": float(np.mean(values))}  # Avg is the plain mean of the seven
    date = info.get("created") or info.get("date")
    details = [("Method", method), ("Backbone", info.get("backbone")), ("Architecture", info.get("architecture")),
               ("Embedding dimension", info.get("dimension")), ("Training data", info.get("training_data")),
               ("Profile", info.get("profile")), ("Seed", info.get("seed")),
               ("Max sequence length", info.get("max_seq_length")), ("Format", fmt)]
    title = " ".join(x for x in (method, "twin" if kind == "twin" else None,
                                 f"({info['backbone']})" if info.get("backbone") else None) if x)
    context = {
        **info, "kind": kind, "format": fmt, "path": f"path/to/{name}", "pooling": pooling,
        "title": info.get("title") or title or name, "details": [(k, v) for k, v in details if v is not None],
        "score_labels": [SHORT.get(c, c).replace("Avg.", "Avg") for c in COLUMNS] if info.get("scores") else [],
        "scores_row": [_fmt(scores.get(c)) for c in COLUMNS] if info.get("scores") else [],
        "provenance": [p for p in (f"git commit `{info['git_commit']}`" if info.get("git_commit") else None,
                                   f"created {date}" if date else None) if p],
    }
    env = Environment(loader=PackageLoader("jtcse_lib", "templates"), keep_trailing_newline=True)
    text = env.get_template("model_card.md.jinja").render(**context)
    return write_text(out / "README.md", text.rstrip() + "\n")


def _fmt(x) -> str:
    try:
        return f"{float(x):.2f}"
    except (TypeError, ValueError):
        return "–"
