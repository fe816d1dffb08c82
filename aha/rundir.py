"""The run directory's life cycle: one trainer at a time, an honest --overwrite, and a clean stop.

- `RunLock`: an exclusive `flock` on RUN_DIR/.lock held for the whole run. The kernel drops it
  when the process dies, however it dies, so a crashed run never leaves the directory stuck; a
  second trainer is refused at once with the holder's pid. The lock file is removed on release.
- `replace_run`: --overwrite moves every file of the old run (checkpoints, logs, tb, report,
  config) into one hidden trash directory, then deletes it. Each move is an atomic rename and
  the logs and checkpoints go last, so an interruption leaves either something that still reads
  as the old run or nothing of it - never two runs mixed. Files aha did not write are kept.
- `StopSignals`: the first SIGTERM (what schedulers and preemptible machines send) or Ctrl-C
  lets the current step finish; the trainer then saves a checkpoint and raises `Stopped`, which
  says where to resume. A second signal stops at once (KeyboardInterrupt).
- `guarded`: wraps a backend's `train(cfg, ...)` with all of that, after `preflight.preflight`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aha import fsio
from aha.errors import AhaError

LOCK_NAME = ".lock"
# What a run writes into its directory; --overwrite replaces exactly these. Logs and checkpoints
# come last: while they remain, the directory still reads as a run (checkpoint_to_resume).
RUN_ENTRIES = ("config.yaml", "tb", "wandb", "report", "eval_completions.jsonl", "completions.jsonl", "checkpoints",
               "metrics.jsonl")


class RunDirError(AhaError):
    """The run directory cannot be used (another trainer holds it)."""


class Stopped(Exception):
    """A signal stopped the run after a checkpoint; `code` is the exit status (128 + signal)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _holder_pid(fd: int, wait_s: float = 2.0) -> str:
    """The pid the lock's holder wrote into it. A holder writes it just after taking the lock, so a
    trainer started at the same moment can find the file still empty: wait a little for it."""
    for _ in range(int(wait_s / 0.05)):
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"


class RunLock:
    """Exclusive lock on RUN_DIR/.lock (see the module docstring). Creates RUN_DIR if needed and,
    when the run leaves nothing else in it (a refused start), removes it again on release."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created: Path | None = None  # the top-most directory this lock created

    def acquire(self) -> None:
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.created = missing[-1] if missing else None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_pid(fd)
                os.close(fd)
                self._remove_created()
                raise RunDirError(f"{self.run_dir} is in use by another trainer (pid {holder}); wait for it to "
                                  f"finish or stop it (kill {holder}), or pick another output_dir=...") from None
            # The holder may have released and unlinked the file between our open and flock:
            # only the file still at the path counts.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still holding it: see the inode check in acquire
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        """rmdir what acquire created, if the run left it empty (a refused start changes nothing)."""
        if self.created is None:
            return
        d = self.run_dir
        while True:
            try:
                d.rmdir()
            except OSError:
                return
            if d == self.created:
                return
            d = d.parent

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def replace_run(run_dir: Path) -> list[str]:
    """--overwrite: remove the old run's files (see the module docstring); returns the names of
    entries kept because aha did not write them."""
    run_dir = Path(run_dir)
    trash = run_dir / f"{fsio.TRASH_PREFIX}overwrite-{os.getpid()}"
    for name in RUN_ENTRIES:
        src = run_dir / name
        if src.exists() or src.is_symlink():
            trash.mkdir(exist_ok=True)
            os.replace(src, trash / name)
    fsio.fsync_dir(run_dir)
    if trash.exists():
        fsio.remove_tree(trash)
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []


def prepare(run_dir: Path, overwrite: bool, resuming: bool, step: int | None = None) -> None:
    """Make the run directory ready to write, once every check has passed: stale temporary files of
    killed writes removed; for --overwrite of a fresh run, the old run replaced whole; when resuming
    from `step` with later checkpoints on disk, those moved aside (one timeline per run directory:
    ckptdir.set_aside_later), with a note saying where."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fsio.clean_stale(run_dir)
    if resuming and step is not None:
        from aha.ckptdir import set_aside_later

        moved = set_aside_later(run_dir, step)
        if moved is not None:
            names = ", ".join(sorted((p.name for p in moved.iterdir()), key=lambda n: int(n.rpartition("-")[2])))
            print(f"aha: note: resuming from step {step}: the later checkpoints ({names}) belong to the timeline "
                  f"this resume abandons; moved to {moved} (delete it when not needed)", file=sys.stderr)
    if overwrite and not resuming:
        kept = replace_run(run_dir)
        if kept:
            print(f"aha: note: --overwrite kept {', '.join(kept)} in {run_dir} (not written by aha)", file=sys.stderr)


class StopSignals:
    """SIGTERM and SIGINT set `signum` the first time (the loop saves and stops at the end of the
    step); the second time they raise KeyboardInterrupt. Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\naha: {signal.Signals(signum).name} received: finishing this step, then saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        global _active
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        _active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        _active = None


_active: StopSignals | None = None


def stop_signal() -> int | None:
    """The signal that asked the running trainer to stop, or None."""
    return _active.signum if _active is not None else None


def stopped(signum: int, step: int, ckpt: Path | None) -> Stopped:
    """The exception that ends a run stopped by `signum` after `step` (saved to `ckpt`)."""
    name = signal.Signals(signum).name
    where = f"checkpoint saved to {ckpt}" if ckpt else "no checkpoint saved"
    return Stopped(f"stopped by {name} after step {step}; {where}", 128 + signum)


def is_main_process() -> bool:
    """Rank 0 under torchrun (the one that writes the run directory), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def guarded(train: Callable[..., Path]) -> Callable[..., Path]:
    """Wrap a backend's `train(cfg, resume=None, overwrite=False)`: cheap checks first
    (`preflight.preflight`), then the run lock and the stop signals for the whole run."""

    @functools.wraps(train)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Path:
        from aha.preflight import preflight

        preflight(cfg)
        lock = RunLock(Path(cfg.output_dir)) if is_main_process() else contextlib.nullcontext()
        with lock, StopSignals():
            return train(cfg, *args, **kwargs)

    return wrapper
