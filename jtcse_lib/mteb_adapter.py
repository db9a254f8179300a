"""MTEB evaluation of a JTCSE twin, a single tower or a backbone with a pooling (optional extra: `.[mteb]`).

`mteb_model(path, pooling)` wraps the library's own encoder (`evaluate.sentence_encoder`: length-sorted,
de-duplicated batches; a twin folder gives the sum of its towers' vectors, JTCSE's CLS_A + CLS_B) in MTEB's
encoder protocol (`encode`, `similarity`, `similarity_pairwise`, `mteb_model_meta`), so that
`mteb.evaluate(model, tasks)` scores exactly the embedding our SentEval evaluation scores, with cosine
similarity. `run_mteb(model, tasks, ...)` resolves task names, runs them one at a time and stores MTEB's
result files under `output_folder/results/<name>/<revision>/experiments/<pooling...>/<task>.json`.

Metadata: the name is `jtcse_lib/<folder>` (a training run's `best/` takes its run folder's name), or the Hub
id; the revision is a digest of the model files, so results of a retrained folder never mix with old ones;
the pooling (and for a twin, `twin=tower_a+tower_b`) goes into `experiment_kwargs`. What is not known about
a local folder (languages, license, training data, release date) is left empty rather than guessed.

MTEB downloads each task's data from the Hugging Face Hub; without Hub access `run_mteb` stops with one line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import is_twin_dir, model_folder, resolve
from .errors import ConfigError, DataError, JtcseError, ModelError
from .evaluate import POOLINGS, sentence_encoder

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
_INSTALL = ("MTEB is not installed", 'pip install -e ".[mteb]"')
_GENERIC_FOLDERS = ("best",)  # folder names that say nothing: use the run folder's name instead


def _require_mteb():
    try:
        import mteb
    except ImportError:
        raise JtcseError(*_INSTALL) from None
    return mteb


class JtcseMtebModel:
    """One of our encoders behind MTEB's encoder protocol; the embedding is `encoder(texts)`, scored by cosine."""

    def __init__(self, encoder, meta, path: str, pooling: str):
        self.encoder = encoder  # evaluate.Encoder: list[str] -> (n, H) float32
        self.mteb_model_meta = meta
        self.path = path
        self.pooling = pooling

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None,
               **kwargs) -> np.ndarray:
        """(n, H) float32 embeddings of every text the DataLoader `inputs` yields, in its order (one encoder
        call, so the encoder batches by length over all of them; MTEB's batch_size only sizes the DataLoader)."""
        texts = []
        for batch in inputs:
            if "text" not in batch:
                raise ConfigError(f"MTEB passed inputs without text ({', '.join(batch)}) to a text encoder",
                                  "run text tasks only")
            texts.extend(batch["text"])
        return self.encoder(texts)

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)

    def __repr__(self) -> str:
        return f"JtcseMtebModel({self.mteb_model_meta.name!r}, pooling={self.pooling!r})"


# ---------------------------------------------------------------- metadata

def _towers(encoder) -> list:
    """The `TowerEncoder`s behind an encoder (two for a twin's `SumEncoder`)."""
    return list(getattr(encoder, "encoders", [encoder]))


def _files_digest(folders: Iterable[Path]) -> str:
    """First 12 hex digits of a SHA-256 over the top-level files of `folders` (weights, config, tokenizer)."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix != ".md"):
            h.update(f"{folder.name}/{f.name}\0".encode())
            with f.open("rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def _hub_revision(repo_id: str) -> str | None:
    """The commit of the Hub model in the local Hugging Face cache (what `from_pretrained` just loaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 -- metadata only: an unknown revision is not an error
        return None
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", path) if isinstance(path, str) else None
    return match.group(1) if match else None


def _label(path: Path) -> str:
    path = path.expanduser().resolve()
    return f"{path.parent.name}-{path.name}" if path.name in _GENERIC_FOLDERS else path.name


def _model_meta(model, encoder, pooling: str, max_length: int | None, name: str | None):
    """MTEB `ModelMeta` stating what is known for certain about `model` as `encoder` computes it."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    towers = _towers(encoder)
    twin = len(towers) == 2
    configs = [t.model.config for t in towers]
    n_params = sum(p.numel() for t in towers for p in t.model.parameters())
    n_embed = sum(t.model.get_input_embeddings().weight.numel() for t in towers)
    limits = [max_length or min(t.tokenizer.model_max_length, getattr(c, "max_position_embeddings", 1 << 30))
              for t, c in zip(towers, configs)]
    kwargs: dict[str, Any] = {"pooling": pooling}
    if twin:
        kwargs["twin"] = "tower_a+tower_b"  # the embedding is the sum of the two towers' pooled vectors
    if max_length:
        kwargs["max_length"] = max_length
    n_bytes = sum(p.numel() * p.element_size() for t in towers for p in t.model.parameters())
    facts = dict(loader=None, n_parameters=n_params, n_embedding_parameters=n_embed,
                 memory_usage_mb=round(n_bytes / 2 ** 20, 1), max_tokens=float(min(limits)),
                 embed_dim=configs[0].hidden_size, similarity_fn_name=ScoringFunction.COSINE,
                 framework=["PyTorch", "Transformers"], use_instructions=False, modalities=["text"],
                 model_type=["dense"], experiment_kwargs=kwargs)
    ref = resolve(Path(model) / "tower_a") if twin else resolve(model)
    if ref.kind == "alias":  # the shipped all-MiniLM-L6-v2: MTEB's registry knows it
        import mteb

        base = mteb.get_model_meta(MINILM_HUB_ID)
        return base.model_copy(update={**facts, "name": name or MINILM_HUB_ID,
                                       "revision": _files_digest([Path(ref.source)])})
    if ref.kind == "hub":
        return ModelMeta(name=name or (model if "/" in model else f"jtcse_lib/{model}"),
                         revision=_hub_revision(model) or "no_revision_available",
                         release_date=None, languages=None, license=None,
                         open_weights=True, public_training_code=None, public_training_data=None,
                         training_datasets=None, reference=f"https://huggingface.co/{model}", **facts)
    folders = ([Path(model) / "tower_a", Path(model) / "tower_b"] if twin else
               [Path(ref.source) if ref.kind == "built" else Path(model)])  # a built backbone lives in the cache
    return ModelMeta(name=name or f"jtcse_lib/{_label(Path(model))}", revision=_files_digest(folders),
                     release_date=None, languages=None, license=None, open_weights=None,
                     public_training_code=None, public_training_data=None, training_datasets=None, **facts)


# ---------------------------------------------------------------- the public API

def mteb_model(path, pooling: str = "cls", batch_size: int = 128, max_length: int | None = None, device=None,
               *, name: str | None = None, progress: bool = True, tokenizer=None) -> JtcseMtebModel:
    """An object `mteb.evaluate(model, tasks)` accepts, for a twin folder (tower_a/, tower_b/: the sum of the
    towers' vectors), a tower / Hugging Face folder, `minilm` or a Hub id, read with `pooling` (cls, mean,
    pooler). `name` overrides the MTEB model name (`organization/model`)."""
    _require_mteb()
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}", f"use one of {', '.join(POOLINGS)}")
    if name is not None and "/" not in name:
        raise ConfigError(f"MTEB model name {name!r} has no '/'", "pass it as organization/model, e.g. me/jtcse-bert")
    model = model_folder(path)  # a run folder stands for its best/ model
    if not is_twin_dir(model):
        resolve(model)  # a clear ModelError for a bad name or folder before anything loads
    encoder = sentence_encoder(model, pooling, batch_size, max_length, progress=progress, device=device,
                               tokenizer=tokenizer)
    widths = {t.model.config.hidden_size for t in _towers(encoder)}
    if len(widths) > 1:
        raise ModelError(f"the towers of {model} have different widths ({sorted(widths)}): their vectors cannot "
                         "be summed", "evaluate each tower on its own: pass the tower_a/ or tower_b/ folder")
    return JtcseMtebModel(encoder, _model_meta(model, encoder, pooling, max_length, name), model, pooling)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What loading a task's data raises when the Hub cannot be reached or does not give the dataset."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return ConnectionError, TimeoutError, DatasetNotFoundError, HfHubHTTPError, LocalEntryNotFoundError


def resolve_tasks(tasks, languages: Sequence[str] | None = None) -> list:
    """MTEB task objects for `tasks`: task names, benchmark names (e.g. "MTEB(eng, v2)") or task objects."""
    mteb = _require_mteb()
    if isinstance(tasks, (str, mteb.AbsTask)):
        tasks = [tasks]
    out = []
    for task in tasks:
        if not isinstance(task, str):
            out.append(task)
            continue
        try:
            out.extend(mteb.get_tasks(tasks=[task], languages=languages))
        except KeyError as e:
            try:
                out.extend(mteb.get_benchmark(task).tasks)
            except KeyError:
                guess = re.search(r"Did you mean:? '([^']+)'", str(e))
                hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
                raise ConfigError(f"unknown MTEB task or benchmark {task!r}{hint}",
                                  "use a name from mteb.get_tasks() or mteb.get_benchmarks(), e.g. STS22.v2 "
                                  "or Banking77Classification") from None
    if not out:
        raise ConfigError(f"no MTEB task has a subset in the languages {list(languages or [])}",
                          "drop the language filter or pass ISO 639-3 codes such as eng")
    return out


def run_mteb(model, tasks, pooling: str = "cls", output_folder: str | os.PathLike = "results/mteb", *,
             batch_size: int = 128, max_length: int | None = None, device=None,
             languages: Sequence[str] | None = None, overwrite: bool = False, progress: bool = True,
             tokenizer=None):
    """Run MTEB `tasks` (names as `resolve_tasks` takes) on `model`: a name or folder as `mteb_model` takes,
    read with `pooling`, or a ready `JtcseMtebModel` (then `pooling`, `max_length` and `device` are its own).
    Returns MTEB's `ModelResult`; `main_scores(result)` gives {task: main score x 100}.

    Results are written under `output_folder/results/...` (MTEB's result cache): a rerun skips what is
    already there unless `overwrite`. `languages` filters the subsets of multilingual tasks (e.g. ["eng"]).
    """
    mteb = _require_mteb()
    if not isinstance(model, JtcseMtebModel):
        model = mteb_model(model, pooling, batch_size, max_length, device, progress=progress, tokenizer=tokenizer)
    cache = mteb.ResultCache(Path(output_folder).expanduser())
    results = []
    for task in resolve_tasks(tasks, languages):
        try:
            res = mteb.evaluate(model, task, cache=cache, encode_kwargs={"batch_size": batch_size},
                                overwrite_strategy="always" if overwrite else "only-missing",
                                show_progress_bar=progress, public_only=False, co2_tracker=False)
        except _hub_errors() as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
            dataset = (getattr(task.metadata, "dataset", None) or {}).get("path", "its dataset")
            raise DataError(f"cannot load the data of MTEB task {task.metadata.name} ({dataset}) from the "
                            f"Hugging Face Hub: {first}",
                            "run on a machine with Hub access (and HF_HUB_OFFLINE unset), or with a Hugging "
                            "Face datasets cache that already holds the task") from None
        results.extend(res.task_results)
    from mteb.results import ModelResult

    meta = model.mteb_model_meta
    return ModelResult(model_name=meta.name, model_revision=meta.revision, task_results=results)


def main_scores(result) -> dict[str, float]:
    """{task name: MTEB main score x 100} of a `ModelResult` (mean over the evaluated splits and subsets)."""
    return {r.task_name: float(100 * r.get_score()) for r in result.task_results}
