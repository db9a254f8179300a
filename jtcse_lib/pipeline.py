"""Running the notebooks in order with papermill for a profile, and publishing the executed copies.

`python -m jtcse_lib pipeline --profile cpu [--from 03] [--only 05]` executes `notebooks/NN_*.ipynb` with the
parameter `profile`, writes the executed copies to `runs/<profile>/notebooks/`, prints a line per notebook, and
stops at the first failing notebook naming the cell. Trained models are shared through the run cache (`runs`).

A complete run of the committed profile (`cpu`) also publishes its executed notebooks to `docs/notebooks/`, so a
reader sees every output without running anything (`publish`): progress bars in their final state, no widget
outputs (they render only in a live kernel), no per-cell timestamps or local paths. `stale_published` checks that
a published copy still matches its source notebook.

A check that a legitimate run can fail (a tolerance on floating-point scores) must not end a run of hours: the
notebook calls `record_check`, which writes its result to `checks.csv` in the results folder and, when it fails,
warns loudly in the notebook and appends to the run's warnings file, all of which the pipeline prints at the end.
A notebook keeps a hard `assert` only where a failure means the code is wrong under every profile.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from .errors import JtcseError
from .files import write_json
from .paths import CACHE_ENV, HOME_ENV, RUNS_ENV, output_root, runs_root, source_dir
from .progress import TEXT_PROGRESS_ENV

NOTEBOOKS_DIR = source_dir("notebooks")
PUBLISHED_DIR = source_dir("docs") / "notebooks"
PUBLISHED_PROFILE = "cpu"  # the profile whose run is committed (results/cpu, figures/) and published
WARNINGS_ENV = "JTCSE_WARNINGS_FILE"  # the pipeline points its kernels at the run's warnings file
CHECKS_TABLE = "checks"  # <results>/checks.csv: the latest result of every check recorded with record_check
_WIDGET = "application/vnd.jupyter.widget-view+json"


class NotebookFailed(JtcseError):
    """A notebook of the pipeline raised an error."""


def notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    return sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def select(paths: list[Path], start: str | None = None, only: list[str] | None = None) -> list[Path]:
    """Notebooks from number `start` on, or exactly the numbers in `only` ("03" or "3")."""
    numbers = {p: int(p.name[:2]) for p in paths}
    known = ", ".join(p.name[:2] for p in paths)
    if only:
        wanted = {int(x) for x in only}
        if missing := sorted(wanted - set(numbers.values())):
            raise JtcseError(f"no notebook numbered {', '.join(f'{m:02d}' for m in missing)}", f"use one of {known}")
        return [p for p in paths if numbers[p] in wanted]
    chosen = [p for p in paths if start is None or numbers[p] >= int(start)]
    if not chosen and start is not None:
        raise JtcseError(f"no notebook from {start} on", f"use one of {known}")
    return chosen


def kernel_env() -> dict[str, str]:
    """What the kernels' environment adds to this process's: they run in notebooks/, so the output root is pinned
    and the folders named by relative paths ($JTCSE_DATA_DIR, ...) are made absolute; text progress bars, which
    papermill streams to the run's log (widgets it cannot; `publishable` drops them from the published copies);
    and static widgets (`jtcse_lib.display`: no frontend drives them, so each draws its default figure once)."""
    from .display import STATIC_ENV

    folders = {var: str(Path(os.environ[var]).resolve()) for var in ("JTCSE_DATA_DIR", RUNS_ENV, CACHE_ENV)
               if os.environ.get(var)}
    return {**folders, HOME_ENV: str(output_root()), TEXT_PROGRESS_ENV: "1", STATIC_ENV: "1"}


@contextmanager
def _environment(values: dict[str, str]):
    """This process's environment with `values` set while the block runs, as it was afterwards."""
    saved = {var: os.environ.get(var) for var in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def run_pipeline(profile: str, start: str | None = None, only: list[str] | None = None,
                 overrides: dict | list[str] | None = None, out_dir: Path | None = None, kernel_name: str | None = None,
                 notebooks_dir: Path = NOTEBOOKS_DIR, stream=None) -> dict[str, float]:
    """Execute the selected notebooks in order; returns {notebook: seconds}. Raises NotebookFailed.

    The kernels' printed output and progress bars (training steps, encoding) go live to `stream` (default:
    this process's stderr), so a long headless run shows where it is. The checks the notebooks recorded as failed
    (`record_check`) are listed at the end, and in `timings.json` beside the executed notebooks.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .config import load_profile
    from .device import choose_device
    from .provenance import PINNED_COMMIT_ENV, git_commit

    stream = sys.stderr if stream is None else stream
    config = load_profile(profile, overrides)  # fail early on an unknown profile or key, before any kernel starts
    choose_device(None, config.device, quiet=True)  # and on `device: cuda` where CUDA is unusable
    chosen = select(notebooks(notebooks_dir), start, only)
    commit = git_commit()
    if commit.endswith("+dirty"):
        print("warning: the working tree has uncommitted changes; every result file of this run will record the "
              f"commit as {commit}: commit first for results a reader can trace", file=sys.stderr, flush=True)
    out_dir = Path(out_dir) if out_dir else runs_root() / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings_path = out_dir / "warnings.jsonl"
    warnings_path.unlink(missing_ok=True)  # this run's warnings only
    timings: dict[str, float] = {}
    total_start = time.perf_counter()
    # the kernels inherit the pinned commit (the result files they rewrite would make the tree dirty) and the file
    # their failed checks go to
    with _environment({**kernel_env(), PINNED_COMMIT_ENV: commit, WARNINGS_ENV: str(warnings_path)}):
        for i, nb in enumerate(chosen, start=1):
            out = out_dir / nb.name
            print(f"[{i}/{len(chosen)}] {nb.name} (profile {profile}) ...", flush=True)
            start_time = time.perf_counter()
            try:
                papermill.execute_notebook(str(nb), str(out), parameters={"profile": profile,
                                                                          "overrides": overrides or {}},
                                           cwd=str(nb.parent), kernel_name=kernel_name, progress_bar=False,
                                           log_output=False, stdout_file=stream, stderr_file=stream)
            except PapermillExecutionError as e:
                print(warnings_summary(profile, read_warnings(warnings_path)), flush=True)  # those before the failure
                raise NotebookFailed(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}",
                                     f"open {out} to see the cell and its traceback; rerun with --only "
                                     f"{nb.name[:2]}") from None
            timings[nb.name] = round(time.perf_counter() - start_time, 1)
            print(f"[{i}/{len(chosen)}] {nb.name} done in {timings[nb.name]:.0f} s", flush=True)
        _finish(profile, overrides, chosen, out_dir, timings, time.perf_counter() - total_start, notebooks_dir)
    return timings


def _finish(profile, overrides, chosen, out_dir, timings, total, notebooks_dir) -> None:
    """The end of a run: its warnings, `timings.json`; for a complete run also its record in the results folder
    (the wall time is a result: README), the runs' records, and for the committed profile the published copies."""
    from .provenance import machine, provenance
    from .report import results_dir
    from .runs import copy_run_records

    found = read_warnings(out_dir / "warnings.jsonl")
    print(f"pipeline ({profile}): {len(chosen)} notebook(s) in {total / 60:.1f} min; executed copies in {out_dir}")
    print(warnings_summary(profile, found), flush=True)
    record = {"profile": profile, "overrides": overrides or {}, "seconds": timings, "total_seconds": round(total, 1),
              "warnings": [{k: w.get(k) for k in ("notebook", "check", "message")} for w in found]}
    write_json(out_dir / "timings.json", record)
    if len(chosen) < len(notebooks(notebooks_dir)):
        return
    complete = {**record, "machine": machine(), **provenance()}
    write_json(results_dir(profile) / "pipeline_timings.json", complete)
    with open(results_dir(profile) / "pipeline_history.jsonl", "a", encoding="utf8") as f:
        f.write(json.dumps(complete) + "\n")  # every complete run, e.g. one seed, then the extra seeds
    copy_run_records(profile, results_dir(profile) / "runs")
    if profile == PUBLISHED_PROFILE:
        published = publish(out_dir, [nb.name for nb in chosen])
        print(f"published {len(published)} executed notebooks to {PUBLISHED_DIR}")


# ---------------------------------------------------------------- checks that warn instead of stopping a run

class CheckWarning(UserWarning):
    """A notebook's check failed on a run that may still be legitimate (e.g. a tolerance on floating-point scores)."""


def warnings_file(profile: str) -> Path:
    """Where `record_check` appends failed checks: the pipeline run's file ($JTCSE_WARNINGS_FILE, beside its
    executed notebooks), else `runs/<profile>/warnings.jsonl` (a notebook run by hand, or by nbval)."""
    if os.environ.get(WARNINGS_ENV):
        return Path(os.environ[WARNINGS_ENV])
    return runs_root() / profile / "warnings.jsonl"


def record_check(passed, check: str, message: str, *, profile: str, notebook: str, value: float | None = None,
                 tolerance: float | None = None) -> None:
    """Record the result of a check that a legitimate run can fail, without stopping the notebook: one row of
    `checks.csv` in the profile's results folder (notebook, check, passed, value, tolerance, message), replacing the
    check's previous row. When it failed, also a loud warning in the notebook's output (`CheckWarning`) and a
    record in the warnings file (`warnings_file`) that the pipeline lists at the end of the run. Prints nothing when
    it passed. `message` says what failed, in words, with the numbers."""
    import pandas as pd

    from .report import results_dir, write_table

    passed = bool(passed)
    value = None if value is None else float(value)
    tolerance = None if tolerance is None else float(tolerance)
    row = {"notebook": notebook, "check": check, "passed": passed, "value": value, "tolerance": tolerance,
           "message": "" if passed else message}
    table = results_dir(profile) / f"{CHECKS_TABLE}.csv"
    rows = pd.read_csv(table, keep_default_na=False).to_dict("records") if table.is_file() else []
    rows = [r for r in rows if (r["notebook"], r["check"]) != (notebook, check)] + [row]
    write_table(pd.DataFrame(rows).sort_values(["notebook", "check"]), profile, CHECKS_TABLE)
    if passed:
        return
    path = warnings_file(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf8") as f:  # one short line per failed check: appends do not interleave
        f.write(json.dumps({"profile": profile, **row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    print(f"\n{'!' * 100}\nWARNING: check failed ({notebook}: {check}): {message}\nThe run goes on; the check is "
          f"recorded in {table} and {path}.\n{'!' * 100}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always", CheckWarning)  # every time, also when a re-run cell warns again
        warnings.warn(f"{notebook}: {check}: {message}", CheckWarning, stacklevel=2)


def read_warnings(path: Path) -> list[dict]:
    """The records of a warnings file (none when it is absent); a line a killed kernel cut short is skipped."""
    found = []
    for line in Path(path).read_text(encoding="utf8").splitlines() if Path(path).is_file() else []:
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def warnings_summary(profile: str, found: list[dict]) -> str:
    """The end-of-run lines: every failed check of the run (notebook, check, message), or that there was none."""
    if not found:
        return f"pipeline ({profile}): no warnings"
    lines = [f"pipeline ({profile}): {len(found)} WARNING(S): checks that failed (the run went on; see each "
             "notebook's output):"]
    lines += [f"  - {w.get('notebook')}: {w.get('check')}: {w.get('message')}" for w in found]
    return "\n".join(lines)


# ---------------------------------------------------------------- publishing executed notebooks

def _final_text(text: str) -> str:
    """A stream as a terminal shows it at the end: within a line each carriage return moves back to its start and
    the next text overwrites (a progress bar's final state); lines a bar cleared (blank at the end) are dropped."""
    lines = []
    for line in text.split("\n"):
        if "\r" not in line:
            lines.append(line)
            continue
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        if shown.strip():
            lines.append(shown.rstrip())
    return "\n".join(lines)


# a tqdm bar's line: "desc:  40%|####      | 2/5 [00:01<00:02, 1.2it/s, loss=0.5]" (its rate part may be cut)
_PROGRESS_LINE = re.compile(r"\d+%\|.*\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]?(\s*\[.*)?$")


def _without_progress(text: str) -> str:
    """A stream without its progress-bar lines: the run's log shows the bars, a reader needs none."""
    return "\n".join(line for line in text.split("\n") if not _PROGRESS_LINE.search(line))


def publishable(nb):
    """A cleaned copy of an executed notebook (nbformat node) for docs/notebooks/: no progress bars, widgets,
    papermill timestamps or local paths."""
    import copy

    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb = copy.deepcopy(nb)
    # this machine's folders (the output root, the checkout), longest first
    roots = sorted({str(output_root()), str(source_dir(""))} - {"/"}, key=len, reverse=True)

    def local(text: str) -> str:
        return functools.reduce(lambda t, root: t.replace(root, "."), roots, text)

    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if _WIDGET not in o.get("data", {})]  # live-kernel-only output
        CoalesceStreamsPreprocessor().preprocess_cell(cell, {}, 0)
        for out in cell.outputs:
            if out.output_type == "stream":
                out.text = local(_without_progress(_final_text(out.text)))
            for key, value in out.get("data", {}).items():
                if key.startswith("text/") and isinstance(value, str):
                    out.data[key] = local(value)
        cell.outputs = [o for o in cell.outputs if o.output_type != "stream" or o.text.strip()]
    nb.metadata.pop("widgets", None)
    if (params := nb.metadata.pop("papermill", {}).get("parameters")) is not None:
        nb.metadata["papermill"] = {"parameters": params}
    return nb


def publish(executed_dir: Path, names: list[str] | None = None, dest: Path = PUBLISHED_DIR) -> list[Path]:
    """Write the cleaned executed notebooks of `executed_dir` (all, or `names`) to `dest`; returns the paths."""
    import nbformat

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(executed_dir).glob("[0-9][0-9]_*.ipynb")):
        if names is None or path.name in names:
            target = dest / path.name
            nbformat.write(publishable(nbformat.read(path, as_version=4)), target)
            written.append(target)
    return written


def stale_published(source_dir: Path = NOTEBOOKS_DIR, published_dir: Path = PUBLISHED_DIR) -> list[str]:
    """What is wrong with the published copies: missing, code cells that differ from the source notebook, cells
    never executed, error or widget outputs, uncoalesced progress streams, anything left on stderr (a warning, a
    stray message: `publishable` already dropped the progress bars). An empty list means they are current."""
    import nbformat

    problems = []
    for source in notebooks(source_dir):
        copy = Path(published_dir) / source.name
        if not copy.is_file():
            problems.append(f"{copy} is missing")
            continue
        src_code = [c.source for c in nbformat.read(source, as_version=4).cells if c.cell_type == "code"]
        pub = [c for c in nbformat.read(copy, as_version=4).cells  # papermill's added cell holds the run's settings
               if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
        if src_code != [c.source for c in pub]:
            differ = [i for i, (a, b) in enumerate(zip(src_code, [c.source for c in pub])) if a != b]
            where = f"code cell {differ[0] + 1}" if differ else f"{len(src_code)} vs {len(pub)} code cells"
            problems.append(f"{copy.name}: code differs from {source} ({where}): re-run the pipeline to publish it")
        for i, cell in enumerate(pub, start=1):
            if cell.get("execution_count") is None:
                problems.append(f"{copy.name}: code cell {i} was not executed")
            for out in cell.get("outputs", []):
                if out.output_type == "error":
                    problems.append(f"{copy.name}: code cell {i} holds an error ({out.get('ename')})")
                elif _WIDGET in out.get("data", {}):
                    problems.append(f"{copy.name}: code cell {i} holds a widget output")
                elif out.output_type == "stream" and "\r" in out.text:
                    problems.append(f"{copy.name}: code cell {i} holds an uncoalesced progress stream")
                elif out.output_type == "stream" and out.name == "stderr":  # a warning a reader should not meet
                    first = out.text.strip().splitlines()[0][:80] if out.text.strip() else ""
                    problems.append(f"{copy.name}: code cell {i} writes to stderr ({first!r})")
    return problems
