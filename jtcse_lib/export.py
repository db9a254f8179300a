"""Saving trained encoders in formats other people load: Hugging Face, sentence-transformers, and the twin.

Formats
- **Hugging Face folder** (`export_hf`): `config.json`, `model.safetensors`, tokenizer files. Loads with
  `AutoModel.from_pretrained` / `AutoTokenizer.from_pretrained`; the sentence vector is then up to the reader.
- **sentence-transformers folder** (`export_sentence_transformers`): the Hugging Face files at the root plus
  `modules.json` (0: Transformer at "", 1: Pooling at "1_Pooling"), `1_Pooling/config.json`,
  `sentence_bert_config.json` (max_seq_length) and `config_sentence_transformers.json`. No Dense and no
  Normalize module: `SentenceTransformer(folder).encode(s)` is the raw [CLS] vector our evaluation scores.
- **twin folder** (`export_twin`): `tower_a/` and `tower_b/`, each a sentence-transformers folder (CLS), plus
  `twin.json` = {"format": "jtcse-twin", "towers": ["tower_a", "tower_b"], "combine": "sum", "pooling": "cls"}.
  The JTCSE model is the *sum* of the two towers' [CLS] vectors, which no single sentence-transformers
  folder expresses; `load_twin` returns an object whose `.encode` computes exactly that (and also reads the
  raw training folder, tower_a/ and tower_b/ as plain Hugging Face folders).

Why CLS pooling is written out explicitly: SimCSE, TNCSE and JTCSE train and evaluate the last hidden state
of the first token ([CLS] / <s>), before the pooler layer. `SentenceTransformer(path)` on a *bare* Hugging
Face folder (no `modules.json`) silently builds Transformer + **mean** pooling, so it would load our models
without error and embed every sentence differently from the numbers we report. The exported folder names
its pooling in `1_Pooling/config.json`, and every export is checked by loading it back with
sentence-transformers and comparing its vectors with the encoder's own [CLS] (or mean) vectors.

The small sentence-transformers files are written in the classic schema that every sentence-transformers
release since 2.0 reads (`sentence_transformers.models.Transformer` / `.Pooling` in `modules.json`,
`pooling_mode_cls_token` etc. in the pooling config, `max_seq_length` in `sentence_bert_config.json`).
sentence-transformers 6 writes newer module paths and keys that older releases cannot import; it still
reads the classic ones without a warning. Weights, tokenizer and `config_sentence_transformers.json` are
written by the library's own `save`.

Exports are written into a hidden staging folder beside `out_dir` and renamed into place only when complete
and verified, so a failed export never leaves half a folder. An existing non-empty `out_dir` is refused
unless `overwrite=True`. Nothing is copied from the source folder: the all-MiniLM-L6-v2 folder carries its
own `modules.json` with mean pooling and a Normalize module, and an export of it must not inherit them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .backbones import load_encoder, load_tokenizer, model_inputs, resolve
from .errors import ModelError

ST_POOLINGS = ("cls", "mean")  # poolings that both our evaluation and sentence-transformers' Pooling compute
TWIN_FORMAT = "jtcse-twin"
TWIN_JSON = "twin.json"
TOWERS = ("tower_a", "tower_b")
MAX_DEFAULT_LENGTH = 512
STS_COLUMNS = (("STS12", "STS12"), ("STS13", "STS13"), ("STS14", "STS14"), ("STS15", "STS15"), ("STS16", "STS16"),
               ("STSBenchmark", "STS-B"), ("SICKRelatedness", "SICK-R"))

# The classic sentence-transformers module paths (aliases of the v6 paths, importable in every release).
_ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")
_PROBES = ("A man is playing a guitar.",
           "Two dogs run across a snowy field while a child in a red coat watches them from the fence.")


# ---------------------------------------------------------------- helpers: loading, checking, staging

def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf8")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _load_tower(name: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None):
    """(model, tokenizer) like `backbones.load_backbone`, refusing checkpoints with missing encoder weights.

    `tokenizer_from` is where the tokenizer is read when it differs from the model (a twin's root folder).
    """
    ref = resolve(name)  # bad paths, twin folders, files: ModelError with the fix
    model, info = load_encoder(name, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        keys = ", ".join(str(k) for k in (missing + mismatched)[:5])
        raise ModelError(f"{ref.name} is incomplete: weights missing or of the wrong shape ({keys}); an export "
                         "would hold randomly initialised layers",
                         "export the folder the training run saved (its config.json and model.safetensors)")
    if any(str(k).startswith("pooler.") for k in info.get("missing_keys", ())):
        warnings.warn(f"{ref.name} has no pooler weights: the pooler is randomly initialised (CLS and mean "
                      "pooling do not use it)", stacklevel=3)
    if tokenizer_from is not None:
        return model.eval(), _tokenizer_from_folder(Path(tokenizer_from))
    if ref.kind == "folder" and not _has_tokenizer(Path(ref.source)):
        raise ModelError(f"folder {ref.source} holds a model but no tokenizer files",
                         "save the tokenizer beside the weights: "
                         f"AutoTokenizer.from_pretrained(<backbone>).save_pretrained('{ref.source}')")
    return model.eval(), load_tokenizer(name)


def _tokenizer_from_folder(folder: Path):
    """A tokenizer from a folder that need not hold a model (a twin's root)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load the tokenizer in {folder}: {first}",
                         "save the backbone's tokenizer there: "
                         f"AutoTokenizer.from_pretrained(<backbone>).save_pretrained('{folder}')") from None


def _positions(config) -> int | None:
    """How many tokens the position embeddings allow (RoBERTa-style models reserve pad_token_id + 1)."""
    n = getattr(config, "max_position_embeddings", None)
    if not n or n < 0:
        return None
    if any(t in getattr(config, "model_type", "") for t in ("roberta", "camembert")):
        n -= (getattr(config, "pad_token_id", None) or 0) + 1
    return n


def _max_seq_length(tokenizer, config, requested: int | None) -> int:
    """The export's max_seq_length: `requested`, or the tokenizer's model_max_length capped at 512 and at the
    model's position embeddings."""
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


def _check_pooling(pooling: str) -> str:
    if pooling == "pooler":
        raise ModelError("pooling 'pooler' cannot be expressed in a sentence-transformers folder: its Pooling "
                         "module has no mode for the BERT pooler (tanh(W h_0 + b))",
                         "export with pooling='cls' (what JTCSE trains and evaluates) or 'mean'; for the pooler "
                         "output use export_hf and read pooler_output in transformers")
    if pooling not in ST_POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r} for a sentence-transformers export",
                         f"use one of {', '.join(ST_POOLINGS)}")
    return pooling


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normalise_permissions(folder: Path) -> None:
    """transformers writes model.safetensors with mode 0600 (temporary file, then rename); give every file
    of the export the permissions of an ordinary file, so it can be shared or served as is."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root) / d, 0o777 & ~mask)
        for f in files:
            os.chmod(Path(root) / f, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


@contextmanager
def _staged(out_dir: str | os.PathLike, overwrite: bool, sources: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; on success it replaces `out_dir`, on error it is removed."""
    out = Path(out_dir).expanduser().resolve()
    for src in sources:
        src_path = Path(src).expanduser()
        if src_path.exists():
            src_path = src_path.resolve()
            if out == src_path or out in src_path.parents:
                raise ModelError(f"output folder {out} is, or contains, the model being exported ({src_path})",
                                 "write the export to a new folder")
    if out.exists():
        if not out.is_dir():
            raise ModelError(f"output path {out} is a file", "choose a folder path that does not exist yet")
        if any(out.iterdir()) and not overwrite:
            raise ModelError(f"output folder {out} already exists and is not empty",
                             "choose a new folder, or pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        _normalise_permissions(stage)
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


# ---------------------------------------------------------------- Hugging Face

def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, card: dict | None = None, *,
              overwrite: bool = False) -> Path:
    """Save a tower as a plain Hugging Face folder (safetensors weights, tokenizer, config); return its path.

    `model_dir` is anything `backbones.resolve` accepts (a trained tower folder, 'minilm', a cached Hub id).
    Only what `save_pretrained` writes ends up in `out_dir`; `card` (see `write_model_card`) adds a README.md.
    """
    with _staged(out_dir, overwrite, [model_dir]) as stage:
        model, tokenizer = _load_tower(model_dir)
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        if card is not None:
            write_model_card(stage, {**card, **_facts(model, out_dir, "transformers", card.get("pooling", "cls"),
                                                      None, "tower")})
    return Path(out_dir).expanduser().resolve()


# ---------------------------------------------------------------- sentence-transformers

def _pool_reference(model, tokenizer, sentences: Sequence[str], pooling: str, max_length: int) -> np.ndarray:
    """The vectors the export must reproduce, computed straight from the Hugging Face model."""
    batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in model_inputs(batch).items()}
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (B, L, H)
    if pooling == "cls":
        vectors = hidden[:, 0]
    else:  # mean over non-pad tokens
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        vectors = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return vectors.float().cpu().numpy()


def _write_st_folder(model, tokenizer, folder: Path, pooling: str, max_seq_length: int, verify: bool) -> None:
    """Write a sentence-transformers folder (Transformer + Pooling, nothing else) into the empty `folder`."""
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    hidden = model.config.hidden_size
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=folder.parent) as tmp:
        # The Transformer module loads from a path: give it exactly what save_pretrained writes, so nothing of
        # the source folder (its modules.json, 1_Pooling/, 2_Normalize/, README) can leak into the export.
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=max_seq_length)
        st = SentenceTransformer(modules=[transformer, Pooling(hidden, pooling_mode=pooling)], device="cpu")
        st.save(str(folder), create_model_card=False)
        del st, transformer
    # The classic schema of the three small configs (see the module docstring).
    _write_json(folder / "modules.json", _ST_MODULES)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    _check_st_folder(folder)
    if verify:
        _verify_st_folder(folder, model, tokenizer, pooling, max_seq_length)


def _check_st_folder(folder: Path) -> None:
    """What sentence-transformers wrote: weights, tokenizer, config and exactly one extra module folder."""
    problems = [name for name in ("config.json", "model.safetensors", "config_sentence_transformers.json")
                if not (folder / name).is_file()]
    if not _has_tokenizer(folder):
        problems.append("tokenizer files")
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "1_Pooling")
    if problems or extra:
        raise RuntimeError(f"the sentence-transformers export in {folder} is malformed: missing "
                           f"{', '.join(problems) or 'nothing'}; unexpected folders {', '.join(extra) or 'none'}")


def _verify_st_folder(folder: Path, model, tokenizer, pooling: str, max_seq_length: int) -> None:
    """Load the export back with sentence-transformers and compare its vectors with the model's own."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    modes = [getattr(m, "pooling_mode", None) for m in st]
    if len(st) != 2 or modes[1] != pooling or st.max_seq_length != max_seq_length:
        raise RuntimeError(f"sentence-transformers reads {folder} as {len(st)} modules with pooling {modes[1:]} "
                           f"and max_seq_length {st.max_seq_length}; expected 2, {pooling!r}, {max_seq_length}")
    got = st.encode(list(_PROBES), convert_to_numpy=True, show_progress_bar=False)
    was_training = model.training
    model.eval()
    try:
        want = _pool_reference(model, tokenizer, _PROBES, pooling, max_seq_length)
    finally:
        model.train(was_training)
    scale = max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4 * scale, rtol=0):
        raise RuntimeError(f"the sentence-transformers export in {folder} does not reproduce the model's "
                           f"{pooling} vectors (max difference {np.abs(got - want).max():.2e})")


def export_sentence_transformers(model_dir: str | os.PathLike, out_dir: str | os.PathLike, pooling: str = "cls",
                                 max_seq_length: int | None = None, card: dict | None = None, *,
                                 overwrite: bool = False, verify: bool = True) -> Path:
    """Save a tower as a sentence-transformers folder with explicit `pooling` ('cls' or 'mean'); return its path.

    max_seq_length: inputs longer than this are truncated by sentence-transformers (default: the tokenizer's
    model_max_length capped at 512 and at the position embeddings, i.e. what our evaluation sees). A value
    below the evaluation's length makes the export truncate sentences the reported scores did not truncate.
    verify: load the export back and check that it reproduces the model's vectors on two probe sentences.
    """
    _check_pooling(pooling)
    with _staged(out_dir, overwrite, [model_dir]) as stage:
        model, tokenizer = _load_tower(model_dir)
        length = _max_seq_length(tokenizer, model.config, max_seq_length)
        _write_st_folder(model, tokenizer, stage, pooling, length, verify)
        if card is not None:
            write_model_card(stage, {**card, **_facts(model, out_dir, "sentence-transformers", pooling, length,
                                                      "tower")})
    return Path(out_dir).expanduser().resolve()


# ---------------------------------------------------------------- the twin

def _twin_towers(path: str | os.PathLike) -> tuple[Path, Path]:
    """tower_a/ and tower_b/ of a twin folder, or a ModelError naming the folder and the fix."""
    root = Path(path).expanduser()
    fix = ("pass a twin folder: the one a JTCSE/TNCSE training run saves or export_twin writes, holding "
           "tower_a/ and tower_b/ (each with config.json and weights); for a single tower use "
           "SentenceTransformer(path) or backbones.load_backbone(path)")
    if not root.is_dir():
        raise ModelError(f"twin folder {root} does not exist" if not root.exists() else
                         f"twin path {root} is a file, not a folder", fix)
    missing = [t for t in TOWERS if not (root / t / "config.json").is_file()]
    if missing:
        raise ModelError(f"folder {root} is not a twin: it has no {' and no '.join(f'{t}/config.json' for t in missing)}",
                         fix)
    spec = root / TWIN_JSON
    if spec.is_file():
        try:
            meta = json.loads(spec.read_text(encoding="utf8"))
        except json.JSONDecodeError as e:
            raise ModelError(f"{spec} is not valid JSON ({e})", "re-export the twin with export_twin") from None
        if meta.get("format") != TWIN_FORMAT or meta.get("combine", "sum") != "sum" or meta.get("pooling", "cls") != "cls":
            raise ModelError(f"{spec} describes a twin this version cannot load ({meta})",
                             f"expected format {TWIN_FORMAT!r}, combine 'sum', pooling 'cls'; re-export with export_twin")
    return root / TOWERS[0], root / TOWERS[1]


def _tower_tokenizer_source(tower: Path) -> Path:
    """The tower's own tokenizer files, else the twin root's (training may save one tokenizer for both)."""
    for folder in (tower, tower.parent):
        if _has_tokenizer(folder):
            return folder
    raise ModelError(f"no tokenizer files in {tower} or in {tower.parent}",
                     f"save the backbone's tokenizer into the twin folder: "
                     f"AutoTokenizer.from_pretrained(<backbone>).save_pretrained('{tower.parent}')")


def _load_twin_towers(path: str | os.PathLike):
    towers = _twin_towers(path)
    return [_load_tower(t, _tower_tokenizer_source(t)) for t in towers]


def export_twin(twin_dir: str | os.PathLike, out_dir: str | os.PathLike, max_seq_length: int | None = None,
                card: dict | None = None, *, overwrite: bool = False, verify: bool = True) -> Path:
    """Save a twin as `out/tower_a`, `out/tower_b` (sentence-transformers, CLS), `out/twin.json`, `out/README.md`.

    Each tower folder loads alone with sentence-transformers, but the model is the sum of the two towers'
    vectors: `load_twin(out).encode(s)` (or `SentenceTransformer(out/tower_a).encode(s) + ...tower_b...`).
    """
    towers = _twin_towers(twin_dir)  # before anything is written: a bad folder leaves no trace
    with _staged(out_dir, overwrite, [twin_dir]) as stage:
        loaded = [_load_tower(t, _tower_tokenizer_source(t)) for t in towers]
        hidden = {m.config.hidden_size for m, _ in loaded}
        if len(hidden) != 1:
            raise ModelError(f"the towers of {twin_dir} have different widths {sorted(hidden)}: their vectors "
                             "cannot be summed", "export each tower on its own with export_sentence_transformers")
        # one limit for both towers, so that their sum sees the same tokens
        length = min(_max_seq_length(tok, m.config, max_seq_length) for m, tok in loaded)
        for name, (model, tokenizer) in zip(TOWERS, loaded):
            (stage / name).mkdir()
            _write_st_folder(model, tokenizer, stage / name, "cls", length, verify)
            write_model_card(stage / name, {
                **(card or {}), **_facts(model, Path(out_dir) / name, "sentence-transformers", "cls", length, name)})
        _write_json(stage / TWIN_JSON, {"format": TWIN_FORMAT, "towers": list(TOWERS), "combine": "sum",
                                         "pooling": "cls"})
        write_model_card(stage, {**(card or {}), **_facts(loaded[0][0], out_dir, "twin", "cls", length, "twin")})
    return Path(out_dir).expanduser().resolve()


@dataclass
class TwinModel:
    """The twin at inference: embedding = CLS_A + CLS_B, computed like our twin evaluation (`SumEncoder`)."""

    tower_a: torch.nn.Module
    tower_b: torch.nn.Module
    tokenizer_a: object
    tokenizer_b: object
    path: Path

    @property
    def hidden_size(self) -> int:
        return self.tower_a.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.tower_a.parameters()).device

    def encoder(self, batch_size: int = 128, progress: bool = False):
        """The `evaluate.SumEncoder` of the two towers (CLS pooling), usable with `evaluate.evaluate_sts`."""
        from .evaluate import SumEncoder, TowerEncoder  # evaluate sits above export: imported on use

        return SumEncoder([TowerEncoder(self.tower_a, self.tokenizer_a, "cls", batch_size, progress=progress),
                           TowerEncoder(self.tower_b, self.tokenizer_b, "cls", batch_size, progress=progress)])

    def encode(self, sentences: Sequence[str] | str, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """(n, H) float32 twin embeddings of `sentences` (a single string gives (H,), as in sentence-transformers).

        Truncation follows each tower's tokenizer (`model_max_length`, which an export sets to max_seq_length).
        """
        if isinstance(sentences, str):
            return self.encode([sentences], batch_size, progress)[0]
        if len(sentences) == 0:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        return self.encoder(batch_size, progress)(list(sentences))

    __call__ = encode


def load_twin(path: str | os.PathLike, device=None) -> TwinModel:
    """Load a twin written by `export_twin`, or a raw training twin folder (tower_a/, tower_b/ as Hugging Face
    folders, tokenizer in each tower or at the root); models in eval mode on `device` (default: CUDA if any)."""
    from .evaluate import default_device

    (model_a, tok_a), (model_b, tok_b) = _load_twin_towers(path)
    if model_a.config.hidden_size != model_b.config.hidden_size:
        raise ModelError(f"the towers of {path} have different widths ({model_a.config.hidden_size} and "
                         f"{model_b.config.hidden_size}): their vectors cannot be summed",
                         "load each tower on its own with backbones.load_backbone")
    device = torch.device(device) if device is not None else default_device()
    return TwinModel(model_a.to(device).eval(), model_b.to(device).eval(), tok_a, tok_b,
                     Path(path).expanduser().resolve())


# ---------------------------------------------------------------- the model card

_METHODS = {
    "SimCSE": "unsupervised SimCSE: contrastive learning (NT-Xent) in which two dropout views of the same "
              "sentence are the positive pair (stage 1 of JTCSE)",
    "TNCSE": "TNCSE: two encoders trained jointly with NT-Xent, a cross-tower NT-Xent and the tensor-modulus "
             "constraint on the norms of positive pairs, without cross-attention",
    "JTCSE": "JTCSE: two encoders trained jointly with NT-Xent, the tensor-modulus constraint and a "
             "parameter-free cross-attention between the towers, meant to strengthen [CLS]; no extra "
             "parameters survive training",
    "JTCSE-D": "JTCSE-D: a single encoder distilled from the JTCSE twin (the teacher is the sum of the twin's "
               "[CLS] vectors)",
}
_POOLING_TEXT = {
    "cls": "**CLS**: the last hidden state of the first token ([CLS] / <s>), before the pooler layer. This is "
           "the vector SimCSE, TNCSE and JTCSE train and evaluate. It is written out in `1_Pooling/config.json` "
           "because sentence-transformers would give a bare Hugging Face folder mean pooling.",
    "mean": "**mean** over the non-padding tokens' last hidden states (the paper's models are trained and "
            "evaluated with CLS pooling; this export uses mean pooling as requested).",
}


def _facts(model, out_dir, fmt: str, pooling: str, max_seq_length: int | None, kind: str) -> dict:
    """What the exporter knows for certain; it overrides anything the caller's card says about the same keys."""
    facts = {"name": Path(out_dir).name, "format": fmt, "pooling": pooling, "kind": kind,
             "dimension": model.config.hidden_size, "architecture": type(model).__name__}
    if max_seq_length is not None:
        facts["max_seq_length"] = max_seq_length
    return facts


def _fmt(x) -> str:
    try:
        return f"{float(x):.2f}"
    except (TypeError, ValueError):
        return "–"


def _sts_table(scores: dict) -> list[str]:
    values = [scores.get(task) for task, _ in STS_COLUMNS]
    avg = scores.get("avg")
    if avg is None and all(v is not None for v in values):
        avg = float(np.mean([float(v) for v in values]))  # "avg" is the plain mean of the seven
    head = [label for _, label in STS_COLUMNS] + ["Avg"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            "| " + " | ".join(_fmt(v) for v in [*values, avg]) + " |"]


def write_model_card(out_dir: str | os.PathLike, info: dict) -> Path:
    """Write `out_dir/README.md` describing the exported model from `info`; return its path.

    Keys used (all optional; the card states only what is given): title, method ('JTCSE', 'TNCSE', 'SimCSE',
    'JTCSE-D'), backbone, training_data, profile, seed, scores (task -> Spearman x 100 for the seven STS tasks,
    optionally 'avg'), protocol, eval_max_length, git_commit, created (or date), notes; and, filled in by the
    exporters: name, format ('sentence-transformers' | 'transformers' | 'twin'), kind ('tower' | 'twin' |
    'tower_a' | 'tower_b'), pooling, max_seq_length, dimension, architecture.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    method = info.get("method")
    kind = info.get("kind", "tower")
    fmt = info.get("format", "sentence-transformers")
    pooling = info.get("pooling", "cls")
    name = info.get("name") or out.name
    path = f"path/to/{name}"

    noun = "twin-tower sentence encoder" if kind == "twin" else "sentence encoder"
    title = info.get("title") or " ".join(x for x in (method, "twin" if kind == "twin" else None,
                                                       f"({info['backbone']})" if info.get("backbone") else None) if x) \
        or name
    lines = []
    if fmt == "sentence-transformers":
        lines += ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:",
                  "- sentence-transformers", "- sentence-similarity", "- feature-extraction", "---", ""]
    elif fmt == "transformers":
        lines += ["---", "library_name: transformers", "pipeline_tag: feature-extraction", "---", ""]
    lines += [f"# {title}", ""]

    what = f"A {noun}"
    if method:
        what += f" trained with {_METHODS.get(method, method)}"
    lines += [what + ".", ""]
    if kind in TOWERS:
        lines += [f"> This folder is `{kind}`, one of the two towers of a twin. The twin's embedding is the "
                  "**sum** of both towers' [CLS] vectors; this tower alone is not the evaluated model. "
                  "Load the parent folder with `jtcse_lib.export.load_twin`.", ""]
    elif kind == "twin":
        lines += ["At inference the two towers run independently and the sentence embedding is the **sum** of "
                  "their [CLS] vectors: `tower_a/` and `tower_b/` are sentence-transformers folders, and "
                  "`twin.json` records how they combine.", ""]

    details = [("Method", method), ("Backbone", info.get("backbone")), ("Architecture", info.get("architecture")),
               ("Embedding dimension", info.get("dimension")), ("Training data", info.get("training_data")),
               ("Profile", info.get("profile")), ("Seed", info.get("seed")),
               ("Max sequence length", info.get("max_seq_length")), ("Format", fmt)]
    lines += ["## Model", ""] + [f"- **{k}:** {v}" for k, v in details if v is not None] + [""]
    if info.get("profile") == "smoke":
        lines += ["> Trained under the `smoke` profile (a few hundred sentences) to test the pipeline: "
                  "its scores say nothing about the method.", ""]

    lines += ["## Pooling", "", _POOLING_TEXT.get(pooling, f"**{pooling}**"), ""]
    if fmt == "transformers":
        lines += ["This is a plain Hugging Face folder: the pooling is up to the code that loads it (see below); "
                  "`SentenceTransformer` on this folder would apply mean pooling.", ""]

    lines += ["## Usage", ""]
    if kind == "twin":
        lines += ["With this repository's library (identical to the twin evaluation):", "", "```python",
                  "from jtcse_lib.export import load_twin", "", f'twin = load_twin("{path}")',
                  'embeddings = twin.encode(["A man is playing a guitar.", "Someone plays an instrument."])',
                  "```", "", "With sentence-transformers alone:", "", "```python",
                  "from sentence_transformers import SentenceTransformer", "",
                  f'tower_a = SentenceTransformer("{path}/tower_a")', f'tower_b = SentenceTransformer("{path}/tower_b")',
                  'sentences = ["A man is playing a guitar.", "Someone plays an instrument."]',
                  "embeddings = tower_a.encode(sentences) + tower_b.encode(sentences)  # CLS_A + CLS_B", "```", ""]
    else:
        if fmt == "sentence-transformers":
            lines += ["sentence-transformers:", "", "```python", "from sentence_transformers import SentenceTransformer",
                      "", f'model = SentenceTransformer("{path}")',
                      'embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])',
                      "```", ""]
        pooled = ("outputs.last_hidden_state[:, 0]  # CLS, before the pooler" if pooling == "cls" else
                  "(outputs.last_hidden_state * mask).sum(1) / mask.sum(1)  # mean over tokens")
        mask_line = ['mask = batch["attention_mask"].unsqueeze(-1).float()'] if pooling == "mean" else []
        trunc = f", max_length={info['max_seq_length']}" if info.get("max_seq_length") else ""
        lines += ["transformers:", "", "```python", "import torch", "from transformers import AutoModel, AutoTokenizer",
                  "", f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
                  f'model = AutoModel.from_pretrained("{path}").eval()',
                  'sentences = ["A man is playing a guitar.", "Someone plays an instrument."]',
                  f'batch = tokenizer(sentences, padding=True, truncation=True{trunc}, return_tensors="pt")',
                  "with torch.no_grad():", "    outputs = model(**batch)", *mask_line, f"embeddings = {pooled}",
                  "```", ""]

    scores = info.get("scores")
    if scores:
        proto = info.get("protocol")
        proto_text = (" SentEval protocol: STS12-16 score all sub-sets concatenated ('all'), STS-B and SICK-R "
                      "their test splits; cosine similarity; Avg is the plain mean of the seven."
                      if proto == "senteval-all" else (f" Protocol: {proto}." if proto else ""))
        evaluated = "the twin (sum of the towers)" if kind in ("twin", *TOWERS) else "this model"
        lines += ["## STS results", "", f"Spearman correlation x 100 of {evaluated}.{proto_text}", ""]
        if info.get("eval_max_length"):
            lines += [f"Evaluated with inputs truncated to {info['eval_max_length']} tokens.", ""]
        lines += _sts_table(scores) + [""]

    if info.get("notes"):
        lines += ["## Notes", "", str(info["notes"]), ""]
    provenance = [f"git commit `{info['git_commit']}`" if info.get("git_commit") else None,
                  f"created {info.get('created') or info.get('date')}" if info.get("created") or info.get("date") else None]
    provenance = [p for p in provenance if p]
    if provenance:
        lines += ["## Provenance", "", "Made by the JTCSE paper companion (`jtcse_lib`), " + ", ".join(provenance) + ".",
                  ""]
    readme = out / "README.md"
    readme.write_text("\n".join(lines).rstrip() + "\n", encoding="utf8")
    return readme
