"""Pre-flight check of a machine for a profile, before hours of papermill: `python -m jtcse_lib doctor --profile P`.

One table, one line per check, each `ok`, `note` (information, nothing to do), `warn` (runs, but look) or `FAIL`
(the run would stop or cannot start), and under each warn or FAIL line the fix. Exit status 2 when any line FAILs.
It asks the library (device, data, plan, backbones) instead of re-deriving anything, and it is quick: no model is
loaded, nothing is downloaded; the one network call is a metadata request to the Hub with a short timeout, skipped
when HF_HUB_OFFLINE is set or the model is already in the local Hugging Face cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .ablations import check_ablations
from .config import STAGES, TRANSFER_TASKS, RunConfig, load_profile
from .errors import JtcseError

STATUSES = ("ok", "note", "warn", "FAIL")
HUB_TIMEOUT = 2.5  # seconds for the Hub's answer; the probe is abandoned 1 s after that (a hung DNS lookup too)
HUB_FIX = ("give this machine Hub access (network, a proxy via HTTPS_PROXY, HF_ENDPOINT for a mirror), or fill the "
           "Hugging Face cache here (HF_HOME) from a machine that has it, or pass a local copy of the model: "
           "--set backbone=/path/to/{name} (a folder save_pretrained wrote)")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what from_pretrained loads; one of them must be cached


@dataclass
class Check:
    name: str
    status: str  # one of STATUSES
    detail: str
    fix: str | None = None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _corpora(config: RunConfig) -> list[str]:
    return sorted({config.for_stage(s).corpus for s in STAGES})


# ---------------------------------------------------------------- torch, CUDA, GPUs

def check_torch(config: RunConfig) -> list[Check]:
    import torch

    from .device import CUDA_FIX, cuda_problem

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build (torch.version.cuda is None)"
    out = [Check("torch", "ok", f"torch {torch.__version__}, {build}")]
    device, needs_cuda = config.device, config.device.split(":")[0] == "cuda"
    problem = cuda_problem()
    if problem is not None:
        if needs_cuda:
            out.append(Check("cuda", "FAIL", f"the profile needs CUDA (device: {device}), but {problem}", CUDA_FIX))
        else:  # auto falls back to the CPU, cpu never asks: nothing to fix for this profile
            out.append(Check("cuda", "note", f"not usable here: {problem}; device: {device} computes on the CPU"))
        return out
    count, bf16 = torch.cuda.device_count(), torch.cuda.is_bf16_supported()
    gpus = [f"cuda:{i} {p.name} {_gib(p.total_memory)}" for i, p in
            enumerate(map(torch.cuda.get_device_properties, range(count)))]
    used = "used" if device != "cpu" else "not used: device: cpu"
    out.append(Check("cuda", "ok", f"{count} GPU(s) ({used}): {', '.join(gpus)}; bf16 {'yes' if bf16 else 'no'}"))
    if needs_cuda:
        try:  # the config checks the prefix only; choose_device refuses a bad index the same way
            index = torch.device(device).index or 0
        except RuntimeError:
            index = None
        if index is None or index >= count:
            out.append(Check("cuda device", "FAIL", f"device: {device} is not one of this machine's {count} GPU(s)",
                             "--set device=cuda (the first GPU) or cuda:N with N below the GPU count"))
    if config.nproc > 1 and device != "cpu" and config.nproc > count:  # torchrun starts one process per GPU
        out.append(Check("nproc", "FAIL", f"nproc: {config.nproc} processes, but {count} GPU(s) here",
                         f"--set nproc={count}"))
    if config.precision == "bf16" and not bf16 and device != "cpu":
        out.append(Check("precision", "warn", "precision: bf16, but these GPUs do not support bf16 natively",
                         "--set precision=fp16 (with its loss scaler) or precision=fp32"))
    return out


# ---------------------------------------------------------------- disk of the run cache

def _existing_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass  # removed while walking
    return total


def check_disk(config: RunConfig, data_dir=None) -> list[Check]:
    from .plan import disk_need
    from .runs import runs_root

    root = runs_root()
    need = disk_need(config, data_dir=data_dir)
    probe = next(p for p in (root, *root.parents) if p.exists())  # the runs folder may not exist yet: its disk does
    free, needed = shutil.disk_usage(probe).free, need["needed_bytes"]  # the peak under this config
    if needed is None:
        return [Check("disk", "warn", f"{_gib(free)} free at {root}; the need is not estimated ({need['reason']})",
                      "use a backbone whose size is known here (a local model folder), or compare the free space by "
                      "hand with what `python -m jtcse_lib plan` lists")]
    kept = "checkpoints kept" if config.keep_checkpoints else "checkpoints pruned"
    detail = f"{_gib(free)} free at {root}, {need['runs']} runs need about {_gib(needed)} at the peak ({kept})"
    fix = ("free space there, or move the run cache to a larger disk: export JTCSE_RUNS_DIR=/big/disk/runs"
           f"{', or drop keep_checkpoints' if config.keep_checkpoints else ''}")
    if free >= needed:
        return [Check("disk", "ok", detail)]
    cached = _existing_bytes(root / config.profile)  # 0 when absent
    if free + cached >= needed:  # a resumed pipeline: what is cached may be this plan's runs (or stale ones)
        return [Check("disk", "warn", f"{detail}; enough only if the {_gib(cached)} already in "
                                      f"{root / config.profile} are runs of this plan", fix)]
    return [Check("disk", "FAIL", detail, fix)]


# ---------------------------------------------------------------- the backbone and the Hub

def _cached(repo_id: str, cache_dir=None) -> str | None:
    """The cached snapshot folder of a Hub model when its config and weights are in the local cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    if isinstance(config, str) and any(isinstance(try_to_load_from_cache(repo_id, w, cache_dir=cache_dir), str)
                                       for w in _WEIGHTS):  # not None (absent) nor the "known not to exist" sentinel
        return str(Path(config).parent)
    return None


def _probe(repo_id: str, timeout: float) -> Exception | None:
    """None when the Hub answers for `repo_id`, else the error; bounded in time even if DNS hangs (daemon thread)."""
    from huggingface_hub import HfApi, constants

    errors: list[Exception] = []

    def ask() -> None:
        try:  # HF_ENDPOINT read now, not at import, so that a mirror set after import counts
            HfApi(endpoint=os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).model_info(repo_id, timeout=timeout)
        except Exception as e:  # httpx, requests, OSError, HfHubHTTPError: the message is what matters
            errors.append(e)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if thread.is_alive():
        return TimeoutError(f"no answer within {timeout + 1:.0f} s")
    return errors[0] if errors else None


def check_backbone(backbone: str, cache_dir=None, timeout: float = HUB_TIMEOUT) -> list[Check]:
    """ok for `minilm` (its pip package), a local model folder, or a Hub id cached here or reachable now."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from .backbones import minilm_dir, resolve

    def line(status: str, detail: str, fix: str | None = None) -> list[Check]:
        return [Check("backbone", status, f"{backbone}: {detail}", fix)]

    if backbone == "tiny-bert":  # resolve() would build it (a model): it needs only MiniLM's tokenizer, offline
        return line("ok", f"built locally on first use, with MiniLM's tokenizer ({minilm_dir()})")
    ref = resolve(backbone)  # ModelError (folder without config.json, minilm package missing) -> FAIL with its fix
    if ref.kind != "hub":
        return line("ok", f"shipped by the pip package ({ref.source})" if ref.kind == "alias" else
                    f"a local model ({ref.source})")
    if snapshot := _cached(backbone, cache_dir):
        return line("ok", f"in the local Hugging Face cache ({snapshot})")
    where = cache_dir or constants.HF_HUB_CACHE
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES or constants.HF_HUB_OFFLINE
    if offline:
        return line("FAIL", f"a Hub model, not in the local cache ({where}), and HF_HUB_OFFLINE is set, so it cannot "
                            "be downloaded", "unset HF_HUB_OFFLINE on a machine with Hub access, or " +
                    HUB_FIX.format(name=backbone))
    error = _probe(backbone, timeout)
    if error is None:
        return line("ok", f"the Hub answers; downloaded into {where} on first use")
    if isinstance(error, RepositoryNotFoundError) and not isinstance(error, GatedRepoError):
        return line("FAIL", "no such model on the Hub",
                    "use bert-base-uncased, roberta-base, minilm or a local model folder: --set backbone=...")
    first = (str(error).strip().splitlines() or [""])[0][:160]
    return line("FAIL", f"not in the local cache ({where}) and the Hub cannot be reached ({type(error).__name__}: "
                        f"{first})", HUB_FIX.format(name=backbone))


# ---------------------------------------------------------------- data

def _against_manifest(folder: Path, prefixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(missing, different) files of the shipped manifest under `prefixes` in `folder`: the shipped copy is
    SentEval byte for byte (data/README.md), so a downloaded one should match it too."""
    from .data import SHIPPED_DIR, _manifest, content_digest

    missing, different = [], []
    for name, digest in sorted(_manifest(SHIPPED_DIR).items()):
        if not name.startswith(prefixes):
            continue
        if not (folder / name).is_file():
            missing.append(name)
        elif content_digest(folder / name) != digest:
            different.append(name)
    return missing, different


def check_data(config: RunConfig, data_dir=None) -> list[Check]:
    from .data import DATA_ENV, STS_TASKS, load_stsb, load_task, resolve_data_dir
    from .transfer import load_transfer_task

    try:
        folder = resolve_data_dir(data_dir)  # the shipped data is unpacked and verified against its manifest here
    except JtcseError as e:
        return [Check("data", "FAIL", e.problem, e.fix)]
    source = ("--data-dir" if data_dir is not None else f"${DATA_ENV}" if os.environ.get(DATA_ENV) else
              "the shipped data/jtcse-data.tar.xz")
    refetch = (f"python -m jtcse_lib download-data --dest DIR, then export {DATA_ENV}=DIR (or unset {DATA_ENV} "
               "for the shipped data)")
    tasks = list(TRANSFER_TASKS) if config.transfer_tasks == "all" else config.transfer_tasks
    jobs = [  # (line, the manifest's folders it reads, what it reads, how the ok line names it)
        ("sts data", ("senteval/STS/", "senteval/SICK/"), "the seven STS test sets and STS-B dev",
         lambda: ([load_task(t, data_dir) for t in STS_TASKS], load_stsb("dev", data_dir))),
        # each task's folder as transfer.load_transfer_task reads it (SST2: SST/binary, not SST/fine)
        ("transfer data", tuple(f"senteval/{'SST/binary' if t == 'SST2' else t}/" for t in tasks), ", ".join(tasks),
         lambda: [load_transfer_task(t, data_dir) for t in tasks])]
    out = []
    for name, prefixes, what, load in jobs:
        missing, different = _against_manifest(folder, prefixes)
        if missing:
            out.append(Check(name, "FAIL", f"{len(missing)} file(s) missing in {folder} (from {source}), e.g. "
                                           f"{missing[0]}", refetch))
            continue
        try:
            load()  # every set parses as SentEval reads it
        except JtcseError as e:
            out.append(Check(name, "FAIL", e.problem, e.fix))
        else:
            out.append(Check(name, "warn", f"{len(different)} file(s) in {folder} differ from SentEval's (the shipped "
                                           f"manifest), e.g. {different[0]}: scores are not comparable with the "
                                           "paper's", refetch) if different else
                       Check(name, "ok", f"{what}: {folder} (from {source}), as in data/MANIFEST.sha256"))
    return out + [_check_corpus(corpus, data_dir, folder, source) for corpus in _corpora(config)]


def _check_corpus(corpus: str, data_dir, folder: Path, source: str) -> Check:
    from .data import CORPORA, SICK_SUFFIX, corpus_files
    from .plan import CORPUS_SENTENCES, corpus_sentences

    name = f"corpus {corpus}"
    try:
        files = corpus_files(corpus, data_dir)  # a DataError naming the file and, for wiki1m, download-data
    except JtcseError as e:
        return Check(name, "FAIL", e.problem, e.fix)
    base = corpus.removesuffix(SICK_SUFFIX)
    if base in CORPORA and _against_manifest(folder, (CORPORA[base],))[1]:  # the subset is in the manifest
        return Check(name, "warn", f"{folder / CORPORA[base]} differs from the shipped copy (data/MANIFEST.sha256)",
                     "copy the shipped wiki1m_subset.txt there, or unset JTCSE_DATA_DIR")
    n, _ = corpus_sentences(corpus, data_dir)  # counts the lines (a second for the full Wiki1M)
    expected = CORPUS_SENTENCES.get(base)
    if expected and corpus == base and n < expected:
        return Check(name, "warn", f"{n:,} sentences in {files[0]}, {expected:,} expected: a truncated download?",
                     "python -m jtcse_lib download-data --dest DIR again")
    return Check(name, "ok", f"{n:,} sentences (from {source})")


# ---------------------------------------------------------------- packages, kernel, machine

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None if importlib.util.find_spec(dist) is None else "?"


def _check_kernel() -> Check:
    """The kernel the notebooks name (papermill starts it; a missing one stops the first notebook) runs this Python."""
    from .pipeline import NOTEBOOKS_DIR, notebooks

    first = notebooks(NOTEBOOKS_DIR)[:1]
    kernel = json.loads(first[0].read_text(encoding="utf8"))["metadata"].get("kernelspec", {}).get(
        "name", "python3") if first else "python3"
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec(kernel)
    except Exception as e:  # NoSuchKernel, ImportError
        return Check("jupyter kernel", "FAIL", f"no kernel {kernel!r} ({type(e).__name__})",
                     f"python -m ipykernel install --user --name {kernel}")
    # jupyter_client runs a spec's bare `python` as this interpreter; any other path is another Python
    python = spec.argv[0]
    python = sys.executable if python in ("python", "python3", f"python3.{sys.version_info[1]}") else python
    if Path(python).resolve() == Path(sys.executable).resolve():
        return Check("jupyter kernel", "ok", f"{kernel} runs this Python ({sys.executable})")
    return Check("jupyter kernel", "warn", f"{kernel} runs {python}, not this Python ({sys.executable}): jtcse_lib "
                                           "must be installed there",
                 f"python -m ipykernel install --user --name {kernel} (from this environment)")


def check_packages(config: RunConfig) -> list[Check]:
    from .data import DATASETS_CORPORA, SICK_SUFFIX

    papermill = _version("papermill")
    if papermill is None:
        out = [Check("papermill", "FAIL", "not installed: the pipeline runs the notebooks with it",
                     "pip install -e . (or make setup)")]
    else:
        out = [Check("papermill", "ok", papermill), _check_kernel()]
    # data.tokenized_corpus tokenises these corpora with `datasets` (Arrow, every core): needed, not optional, then
    full = [c for c in _corpora(config) if c.removesuffix(SICK_SUFFIX) in DATASETS_CORPORA]
    datasets = _version("datasets")
    if full:
        out.append(Check("datasets", "ok", f"{datasets} (tokenises the corpus {', '.join(full)})") if datasets else
                   Check("datasets", "FAIL", f"not installed: the corpus {', '.join(full)} is tokenised with it",
                         "pip install -e . (or pip install datasets)"))
    notes = {"tensorboard": "optional extra [tensorboard]", "mteb": "optional extra [mteb]: notebook 07's MTEB section",
             **({} if full else {"datasets": "not needed by this profile's corpus; MTEB (notebook 07) uses it"})}
    for dist, why in notes.items():
        v = _version(dist)
        out.append(Check(dist, "note", f"{v} ({why})" if v else f"not installed ({why})"))
    return out


def check_machine() -> list[Check]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = [Check("cores", "note", f"{usable} usable of {os.cpu_count()}")]
    try:
        mem = {key: int(rest.split()[0]) * 1024 for key, _, rest in
               (line.partition(":") for line in Path("/proc/meminfo").read_text().splitlines())
               if rest.strip().endswith("kB")}
    except OSError:
        return out
    detail = f"{_gib(mem.get('MemAvailable', 0))} available of {_gib(mem.get('MemTotal', 0))}"
    try:  # a container's limit, which /proc/meminfo does not show
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and int(limit) < mem.get("MemTotal", 0):
            detail += f"; container limit {_gib(int(limit))}"
    except OSError:
        pass
    return [*out, Check("memory", "note", detail)] if mem else out


# ---------------------------------------------------------------- the report

def _guarded(name: str, fn, *args) -> list[Check]:
    """A check's lines; a fixable error becomes its FAIL line, a crash of the check a FAIL saying so."""
    try:
        return fn(*args)
    except JtcseError as e:
        return [Check(name, "FAIL", e.problem, e.fix)]
    except Exception as e:  # one broken check must not hide the others
        return [Check(name, "FAIL", f"the check itself failed ({type(e).__name__}: {e})",
                      "a bug in jtcse_lib.doctor: please report it with this line")]


def run_checks(config: RunConfig, data_dir=None) -> list[Check]:
    return [*_guarded("torch", check_torch, config), *_guarded("backbone", check_backbone, config.backbone),
            *_guarded("data", check_data, config, data_dir), *_guarded("disk", check_disk, config, data_dir),
            *_guarded("packages", check_packages, config), *_guarded("machine", check_machine)]


def format_report(title: str, checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [title, f"{'status':<6}  {'check':<{width}}  detail"]
    for c in checks:
        lines.append(f"{c.status:<6}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("warn", "FAIL"):
            lines.append(f"{'':<6}  {'':<{width}}  fix: {c.fix}")
    fails, warns = (sum(c.status == s for c in checks) for s in ("FAIL", "warn"))
    lines.append("")
    lines.append(f"{fails} FAIL, {warns} warn: fix the FAIL lines before a long run" if fails else
                 f"no FAIL ({warns} warn): ready" if warns else "all checks pass: ready")
    return "\n".join(lines)


def main_report(profile: str, overrides: list[str] | None = None, data_dir=None) -> tuple[str, int]:
    """The doctor's table for `profile` (with `--set` overrides and an optional data folder), and the exit status:
    2 when any check FAILs, else 0."""
    try:
        config = load_profile(profile, overrides)
        check_ablations(config)
    except JtcseError as e:
        return format_report(f"jtcse doctor: profile {profile}", [Check("profile", "FAIL", e.problem, e.fix)]), 2
    title = (f"jtcse doctor: profile {profile} (backbone {config.backbone}, device {config.device}, "
             f"corpus {', '.join(_corpora(config))}, nproc {config.nproc})")
    checks = run_checks(config, data_dir)
    return format_report(title, checks), 2 if any(c.status == "FAIL" for c in checks) else 0
