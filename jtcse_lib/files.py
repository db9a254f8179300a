"""Reading and writing the small files of runs and results, through one door.

Writes are atomic (a temporary file beside the target, then a rename), so a kill or a full disk never leaves
half a file where a whole one was. Reads turn a missing, empty, binary, non-UTF-8 or truncated file into one
`JtcseError` that names the file and the fix, instead of a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import JtcseError


class FileProblem(JtcseError):
    """A file the library needs cannot be read or written."""


def _write_atomically(path: str | os.PathLike, write) -> Path:
    """`write(tmp)` to a temporary file beside `path`, then rename it to `path`: a reader sees the whole file or
    none. Creates the parent folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # same suffix: np.savez would add one
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kind = "is a folder" if path.is_dir() else (e.strerror or str(e))
        raise FileProblem(f"cannot write {path} ({kind})", "choose a writable path (check permissions, free "
                          "disk space, that it is not a folder)") from None
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return _write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf8"))


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """`np.savez(path, **arrays)`, atomically (`path` should end in .npz)."""
    import numpy as np

    return _write_atomically(path, lambda tmp: np.savez(tmp, **arrays))


def write_json(path: str | os.PathLike, obj) -> Path:
    """`obj` as indented JSON, written atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_text(path: str | os.PathLike, what: str = "file", fix: str = "restore or recreate it",
              error: type[JtcseError] = FileProblem) -> str:
    """The UTF-8 text of `path`, or an `error` naming it (missing, a folder, unreadable, binary, not UTF-8)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist", fix)
    if not path.is_file():
        raise error(f"{what} {path} exists but is not a file", fix)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e})", fix) from None
    if b"\x00" in data:
        raise error(f"{what} {path} is binary, not text", fix)
    try:
        return data.decode("utf8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start})", fix) from None


def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str = "restore or recreate it",
              error: type[JtcseError] = FileProblem):
    """The parsed JSON of `path`, or an `error` naming it (also for empty or truncated JSON)."""
    text = read_text(path, what, fix, error)
    if not text.strip():
        raise error(f"{what} {path} is empty", fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg})", fix) from None


def read_jsonl(path: str | os.PathLike, what: str = "log", fix: str = "restore or recreate it",
               error: type[JtcseError] = FileProblem) -> tuple[list[dict], bool]:
    """(records, whether a partial last line was dropped): a line that does not parse is tolerated only at the end,
    where a kill or a full disk leaves half a line; anywhere else it is an `error` naming the line."""
    lines = read_text(path, what, fix, error).split("\n")
    records, partial = [], False
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise json.JSONDecodeError("not a JSON object", line, 0)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # the last line had no newline yet: half written
                partial = True
                break
            raise error(f"{what} {path}, line {lineno}: not a JSON record ({e.msg})", fix) from None
        records.append(record)
    return records, partial
