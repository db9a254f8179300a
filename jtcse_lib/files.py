"""Reading and writing the small files of runs and results, through one door.

Writes are atomic (a temporary beside the target, then a rename), so a kill or a full disk never leaves half a file
where a whole one was. Reads turn a missing, empty, binary, non-UTF-8 or truncated file into one `FileProblem` (or
the caller's error type) that names the file and the fix, instead of a traceback.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import JtcseError


class FileProblem(JtcseError):
    """A file the library needs cannot be read or written."""


class NoSpace(FileProblem):
    """The disk (or quota) is full: nothing half-written was left behind, the last good version is intact."""


class Busy(JtcseError):
    """Another process holds the lock on a folder this one would write."""


# ---------------------------------------------------------------- full disks

# What writers raise on a full disk: OSError(ENOSPC) from Python, SafetensorError("... No space left on device"),
# RuntimeError("... file write failed") from torch's zip writer (which loses the errno), or only "[enforce fail at
# inline_container.cc] unexpected pos": those count as a full disk only when the disk is in fact (nearly) full.
_FULL_WORDS = ("no space left", "disk quota exceeded", "file write failed", "failed writing file",
               "inline_container", "unexpected pos")


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def is_disk_full(error: BaseException, folder: Path, margin: int = 64 << 20) -> bool:
    """Whether `error`, raised while writing into `folder`, means the disk is full: ENOSPC/EDQUOT, or a library's
    write error ("No space left", torch's "file write failed") while the disk has less than `margin` bytes free."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    if "no space left" in text or "disk quota exceeded" in text:
        return True
    free = _free_bytes(Path(folder))
    return any(w in text for w in _FULL_WORDS) and free is not None and free < margin


def no_space(folder: Path, need_bytes: int, fix: str = "or write elsewhere") -> NoSpace:
    """The one-line error of a full disk: where, and how much to free ("free N MB or move --out")."""
    free = _free_bytes(Path(folder)) or 0
    short = max(1, -(-(need_bytes - free) // 1_000_000))
    return NoSpace(f"no space left on {folder} ({free // 1_000_000} MB free, about {need_bytes // 1_000_000 or 1} "
                   f"MB needed); nothing was half-written and the last good version is intact",
                   f"free {short} MB {fix}, then run the same command again")


def write_failure(error: BaseException, target: Path, what: str, need_bytes: int = 0,
                  fix: str = "or write elsewhere") -> FileProblem:
    """The error to raise when writing `what` to `target` failed with `error` (of any library): `NoSpace` on a full
    disk, else a `FileProblem` naming the cause."""
    target = Path(target)
    if is_disk_full(error, target.parent):
        return no_space(target.parent, max(need_bytes, 1_000_000), fix)
    if target.is_dir() and what == "file":
        cause = "it is a folder"
    else:
        cause = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return FileProblem(f"cannot write the {what} {target} ({cause})",
                       "choose a writable path (check permissions and free disk space)")


def _failed_write(error: Exception, target: Path, what: str, need_bytes: int, cleanup, fix: str = "or write elsewhere"):
    """Raise the one-line error of a write the file system failed (an OSError, or a library's full-disk error),
    judged before `cleanup()` frees the space; anything else (a JtcseError, a bug) propagates unchanged."""
    fs = not isinstance(error, JtcseError) and (isinstance(error, OSError) or is_disk_full(error, target.parent))
    problem = write_failure(error, target, what, need_bytes, fix) if fs else None
    cleanup()
    if problem is None:
        raise error
    raise problem from None


# ---------------------------------------------------------------- the atomic writers

def write_file(path: str | os.PathLike, write) -> Path:
    """`write(tmp)` writes the file (e.g. `fig.savefig`, `torch.save`) to a temporary beside `path`, renamed to `path`
    when done: a reader sees the whole file or none; on any failure the temporary goes and `path` is untouched (a
    full disk is `NoSpace`). The temporary keeps `path`'s suffix, which savefig and np.savez go by. Creates the
    parent folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except Exception as e:  # OSError, and what numpy or a library raises on a full disk
        _failed_write(e, path, "file", 2 * _tree_bytes(tmp), lambda: tmp.unlink(missing_ok=True))
    return path


def write_folder(final: Path, write, what: str, fix: str = "or write elsewhere") -> Path:
    """`write(tmp)` fills a temporary folder `final.tmp`, which then replaces `final` by two renames, so one complete
    version exists on disk at every instant (a kill between the renames leaves `final.old`, which readers of `final`
    fall back to). On any failure the temporary goes and `final` is untouched: a full disk is `NoSpace`, with the
    megabytes to free. One writer at a time per `final` (callers that may race hold a lock)."""
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write(tmp)
    except Exception as e:  # OSError, SafetensorError, torch's RuntimeError ...: the previous version is intact
        _failed_write(e, tmp, f"{what} folder", max(_tree_bytes(final), _tree_bytes(tmp)) + (1 << 20),
                      lambda: shutil.rmtree(tmp, ignore_errors=True), fix)
    try:
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
    except OSError as e:  # readers fall back to final.old, which a rerun tidies
        raise write_failure(e, final, f"{what} folder", fix=fix) from None
    return final


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf8"))


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """`np.savez(path, **arrays)`, atomically (`path` should end in .npz)."""
    import numpy as np

    return write_file(path, lambda tmp: np.savez(tmp, **arrays))


def finite(obj):
    """`obj` with every non-finite float (NaN, +-inf) replaced by None: strict JSON, which `jq`, pandas and every
    JSON parser read (Python's `json` would write the non-standard tokens NaN and Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    """`obj` as indented strict JSON (non-finite numbers as null), written atomically."""
    return write_text(path, json.dumps(finite(obj), indent=2, default=str, allow_nan=False) + "\n")


# ---------------------------------------------------------------- locks

def writer_lock(run_dir: str | os.PathLike) -> Path:
    """The lock file a training holds for its whole run, beside its run folder (not inside: --restart renames the
    folder); `lock_holder` on it says whether, and by whom, the folder is being trained into."""
    out = Path(run_dir).expanduser()
    return out.with_name(f".{out.name}.writer.lock")


def _recorded_holder(path: Path) -> str:
    try:
        return path.read_bytes()[:300].decode("utf8", "replace").strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, wait: bool = False,
                   fix: str = "wait for it to finish (or stop it), then run again"):
    """Hold an exclusive lock on the file `path` while the block runs (`filelock.FileLock`: a kernel `flock`, which
    the kernel releases when the holder exits, kill -9 included, so a stale lock file never blocks anyone). The file
    records its holder ("pid N on HOST since T") so that a refused process can name it. With `wait=False` a held
    lock raises `Busy` at once; with `wait=True` it waits until the holder is done."""
    from filelock import FileLock, Timeout

    path = Path(path)

    def record(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)

    # no soft fallback: a marker file would outlive a killed holder
    lock = FileLock(path, timeout=-1 if wait else 0, mode=0o644, fallback_to_soft=False, on_acquired=record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
        raise Busy(f"{what} is in use by {_recorded_holder(path)}", fix) from None
    except OSError as e:
        raise write_failure(e, path, "lock file") from None
    try:
        yield
    finally:
        lock.release()


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock `exclusive_lock(path)` takes ("pid N on HOST since T"), or None when nobody does (or the
    file is absent). Needs only read access, and two probes never see each other: a shared `flock` on a read-only
    descriptor, which filelock has no call for (its locks are exclusive and open the file for writing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        return _recorded_holder(Path(path))
    finally:
        os.close(fd)
    return None


# ---------------------------------------------------------------- readers

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
