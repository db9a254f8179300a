"""Tokenising a Wiki1M-sized corpus: `tokenized_corpus`'s two engines, `python` (in process, .npz cache) and
`datasets` (memory-mapped Arrow, `Dataset.map` on every core), on the same corpus and tokenizer.

    nice -n 10 python bench/tokenize_corpus.py [--lines 1000000] [--max-length 32] [--engines python datasets]

Corpus: the shipped `wiki/wiki1m_subset.txt` (30,762 Wikipedia sentences) repeated to `--lines` lines, written to a
temporary file. Tokenizer: the shipped MiniLM's. Each engine runs in a fresh process with an empty cache folder of its
own; measured there: the wall and CPU time (its own and its workers') of the first call (tokenise and write the cache)
and of a second call (read the cache), the peak memory of its process tree (PSS summed over the process and its
workers, sampled every 0.25 s; PSS shares the pages forked workers have in common fairly), the peak RSS of the main
process, and the size of the cache on disk. The ids of both engines are compared by digest; the table ends with the
ratios datasets / python. The environment (cores, TOKENIZERS_PARALLELISM, load average) is printed with it: on a
machine shared with other work the times are an upper bound.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tree_pss(proc) -> int:
    """PSS (bytes) of `proc` and its descendants; RSS where PSS is not readable."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


class PeakMemory:
    """Samples the PSS of this process tree in a thread: `.peak` on exit, and `.cpu`, the CPU seconds the sampling
    itself took (about 5 ms a process a sample: subtracted from the engine's CPU time, or more workers would cost
    more)."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.proc, self.interval, self.peak, self.cpu = psutil.Process(), interval, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.thread_time()
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_pss(self.proc))
            self._stop.wait(self.interval)
        self.cpu = time.thread_time() - start

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_pss(self.proc))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def child(engine: str, corpus: str, max_length: int) -> dict:
    """One engine in this (fresh) process; the cache folder is $JTCSE_CACHE_DIR."""
    from jtcse_lib import data
    from jtcse_lib.backbones import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    if engine == "datasets":
        import datasets  # noqa: F401  (imported before the baseline, as a run that uses it would have)
    baseline = _tree_pss(__import__("psutil").Process())
    cpu0, t0 = _cpu(), time.perf_counter()
    with PeakMemory() as mem:
        tok = data.tokenized_corpus(corpus, tokenizer, max_length, progress=False, engine=engine)
    build_s, build_cpu = time.perf_counter() - t0, _cpu() - cpu0 - mem.cpu
    digest = hashlib.sha256(b"".join(str(a.dtype).encode() + a.tobytes()
                                     for a in (tok.ids, tok.offsets, tok.n_untruncated))).hexdigest()
    del tok
    t1 = time.perf_counter()
    with PeakMemory() as mem_cached:
        again = data.tokenized_corpus(corpus, tokenizer, max_length, progress=False, engine=engine)
    cached_s = time.perf_counter() - t1
    maxrss = {who: resource.getrusage(who).ru_maxrss * 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)}
    return {"engine": engine, "sentences": len(again), "tokens": int(len(again.ids)), "build_s": build_s,
            "build_cpu_s": build_cpu, "cached_s": cached_s, "baseline_pss": baseline, "peak_pss": mem.peak,
            "peak_pss_cached": mem_cached.peak, "main_maxrss": maxrss[resource.RUSAGE_SELF],
            "worker_maxrss": maxrss[resource.RUSAGE_CHILDREN],
            "cache_bytes": _folder_bytes(data.cache_root() / "tokenized"), "digest": digest}


def write_corpus(path: Path, lines: int) -> None:
    from jtcse_lib import data

    sentences = data.read_corpus("wiki1m_subset")
    with open(path, "w", encoding="utf8") as f:
        for i in range(lines):
            f.write(sentences[i % len(sentences)] + "\n")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--engines", nargs="+", default=["python", "datasets"], choices=["python", "datasets"])
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.corpus, args.max_length)))
        return 0

    import datasets
    import tokenizers
    import transformers

    from jtcse_lib.data import _cores

    print(f"cores (affinity): {_cores()}, load average: {os.getloadavg()[0]:.2f}, TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}, datasets {datasets.__version__}, tokenizers "
          f"{tokenizers.__version__}, transformers {transformers.__version__}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="jtcse-bench-tok-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        write_corpus(corpus, args.lines)
        print(f"corpus: {args.lines:,} lines, {_mb(corpus.stat().st_size)} ({corpus})", flush=True)
        for engine in args.engines:
            env = {**os.environ, "JTCSE_CACHE_DIR": str(Path(tmp) / f"cache-{engine}"), "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_CACHE": str(Path(tmp) / "hf-datasets")}  # nothing outside tmp
            proc = subprocess.run([sys.executable, __file__, "--child", engine, "--corpus", str(corpus),
                                   "--max-length", str(args.max_length)], cwd=REPO, env=env, capture_output=True,
                                  text=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[engine]
            print(f"{engine}: {r['build_s']:.1f} s", flush=True)
    rows = [("first call (tokenise + write cache), wall", "build_s", lambda v: f"{v:.1f} s"),
            ("first call, CPU (process + workers, less the sampling)", "build_cpu_s", lambda v: f"{v:.1f} s"),
            ("second call (read cache), wall", "cached_s", lambda v: f"{v:.2f} s"),
            ("memory before the call (PSS, tokenizer loaded)", "baseline_pss", _mb),
            ("peak memory, first call (PSS of the process tree)", "peak_pss", _mb),
            ("peak memory, second call (PSS of the process tree)", "peak_pss_cached", _mb),
            ("peak RSS of the main process", "main_maxrss", _mb),
            ("peak RSS of the largest worker", "worker_maxrss", _mb),
            ("cache on disk", "cache_bytes", _mb)]
    engines = list(results)
    print(f"\n{args.lines:,} lines, {results[engines[0]]['tokens']:,} tokens, max_length {args.max_length}\n")
    head = "| measure | " + " | ".join(engines) + (" | datasets / python |" if len(engines) == 2 else " |")
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for label, key, fmt in rows:
        cells = [fmt(results[e][key]) for e in engines]
        if len(engines) == 2:
            a, b = results["python"][key], results["datasets"][key]
            cells.append(f"{b / a:.2f}" if a else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if len(engines) == 2:
        same = results["python"]["digest"] == results["datasets"]["digest"]
        print(f"\nids, offsets and untruncated lengths identical: {'yes' if same else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
