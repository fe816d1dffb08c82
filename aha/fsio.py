"""Safe writes of run files, and the one-line message for a file-system error.

Every rewrite of a file that already holds a run's history (trimming the JSONL logs on resume,
config.yaml, a report) goes to a temporary file beside the target, is fsynced, and replaces the
target with one atomic `os.replace`: a kill, Ctrl-C or full disk at any moment leaves either the
old file or the new one whole, never a truncated mix. Directories are removed the same way:
renamed aside first (one atomic step), then deleted, so an interrupted delete leaves a hidden
`.aha-trash-*` entry, never a half-deleted checkpoint that looks real.

What killed writes leave behind (`*.aha-tmp-PID` files, `.aha-trash-*` and checkpoints'
`.tmp-step-*` directories) is removed by `clean_stale` at the next start, under the run lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_MARK = ".aha-tmp-"  # NAME.aha-tmp-PID: a file being rewritten
TRASH_PREFIX = ".aha-trash-"  # a directory or file being deleted
STALE_CKPT_PREFIX = ".tmp-step-"  # a checkpoint being written (aha/ckptdir.py's `begin`)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(d: Path) -> None:
    """Make a rename inside `d` durable (best effort: some file systems refuse fsync on a directory)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Write `path` whole or not at all: `write(f)` fills a temporary file, which replaces `path`."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: never leave the temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def rewrite_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Keep the lines of a JSONL file whose record passes `keep`, atomically; returns how many.

    Streams line by line (a long run's completions log need not fit in memory) and copies kept
    lines byte for byte. A torn line (a crash mid-append) or a non-object line is dropped.
    """
    path = Path(path)
    kept = 0

    def write(out: Any) -> None:
        nonlocal kept
        with path.open("rb") as src:
            for line in src:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and keep(row):
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    kept += 1

    atomic_write(path, write, binary=True)
    return kept


def remove_tree(path: str | Path) -> None:
    """Delete a file or directory: renamed aside in one step first, so an interruption never
    leaves it half-deleted under its own name (`clean_stale` finishes the job later)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    aside = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    if aside.exists() or aside.is_symlink():
        _delete(aside)
    os.replace(path, aside)
    _delete(aside)


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished directory `tmp` to `final`, replacing whatever is there: the old one is
    renamed aside first and deleted only after the new one is in place, so a kill at any moment
    leaves the old or the new under `final` (and at worst a `.aha-trash-*` entry), never neither."""
    tmp, final = Path(tmp), Path(final)
    aside = final.with_name(f"{TRASH_PREFIX}{final.name}-{os.getpid()}")
    if final.exists() or final.is_symlink():
        remove_tree(aside)
        os.replace(final, aside)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    remove_tree(aside)
    return final


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


PIN_PREFIX = ".aha-pin-"  # checkpoints/.aha-pin-PID-step-N-*: a reader's private links (aha/trained.py)


def _dead_pin(name: str) -> bool:
    """A reader's pinned copy whose process is gone (killed before removing it)."""
    if not name.startswith(PIN_PREFIX):
        return False
    pid = name[len(PIN_PREFIX):].partition("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def clean_stale(run_dir: str | Path) -> list[Path]:
    """Remove what killed writes left in a run directory (call it holding the run lock: no other
    writer is alive then). Returns the paths removed."""
    run_dir = Path(run_dir)
    removed = []
    for d in (run_dir, run_dir / "checkpoints"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if TMP_MARK in p.name or p.name.startswith((TRASH_PREFIX, STALE_CKPT_PREFIX)) or _dead_pin(p.name):
                with contextlib.suppress(FileNotFoundError):
                    _delete(p)
                removed.append(p)
    return removed


# errno -> what to do about it
_FIXES = {
    errno.ENOSPC: "free some disk space or pick another output directory",
    errno.EDQUOT: "free some space (disk quota exceeded) or pick another output directory",
    errno.EROFS: "the file system is read-only: pick a writable output directory",
    errno.EACCES: "fix its permissions for this user, or pick another output directory",
    errno.EPERM: "fix its permissions for this user, or pick another output directory",
    errno.ENOTDIR: "a file stands where a directory is needed: move it or pick another output directory",
    errno.EEXIST: "a file stands where a directory is needed: move it or pick another output directory",
    errno.EISDIR: "a directory stands where a file is needed: move it or pick another path",
    errno.EFBIG: "the file is too large for this file system: pick another output directory",
}


def os_error_line(e: OSError) -> str:
    """One line naming the path, the problem and the fix (the CLI's message for an OSError)."""
    where = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    what = e.strerror or str(e).splitlines()[0]
    fix = _FIXES.get(e.errno or 0, "check the path and its permissions")
    return f"file-system error on {where}: {what}; {fix}"
