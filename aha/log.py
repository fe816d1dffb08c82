"""Run logs: `metrics.jsonl` (one line per step), `completions.jsonl`, the trackers (TensorBoard,
W&B, Trackio: aha/trackers.py) and the progress bar, opened by `open_run`. When each is written is
aha/loop.py's (the bookkeeping both loops share); the metrics themselves are computed in aha/metrics.py
and aha/records.py. This file only writes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from aha.config import Config

from aha import fsio


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file; a torn last line (a crash mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class RunLogger:
    """Appends metrics and completions; on resume, drops lines past the resumed step so that a
    run that crashed after its last checkpoint does not log those steps twice.

    Every metrics row also goes to each tracker (aha/trackers.py: TensorBoard, W&B, Trackio) and,
    every `table_every` steps, the step's logged completions as one table (sent when the next
    step's metrics arrive, or at `close`, so the greedy probe row joins its step's table).
    """

    def __init__(self, run_dir: Path, trackers: Sequence[Any] = (), resume_step: int | None = None,
                 table_every: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.completions_path = self.run_dir / "completions.jsonl"
        self.eval_path = self.run_dir / "eval_completions.jsonl"  # held-out evals' completions
        for path in (self.metrics_path, self.completions_path, self.eval_path):
            # Atomic rewrites (aha/fsio.py): an interruption here never loses a run's history.
            if resume_step is None:
                fsio.atomic_write_text(path, "")
            elif path.exists():
                fsio.rewrite_jsonl(path, lambda r: r.get("step", 0) <= resume_step)
        self.trackers = list(trackers)
        self.table_every = table_every
        self._table: tuple[int, list[dict[str, Any]]] | None = None  # (step, rows) not sent yet

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self._table is not None and self._table[0] < step:
            self._send_table()
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        with self.completions_path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        if self.trackers and self.table_every and step % self.table_every == 0:
            if self._table is not None and self._table[0] != step:
                self._send_table()
            self._table = (step, (self._table[1] if self._table else []) + list(rows))

    def log_eval_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        with self.eval_path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")

    def _send_table(self) -> None:
        step, rows = self._table
        self._table = None
        for tracker in self.trackers:
            tracker.log_table(step, rows)

    def close(self) -> None:
        if self._table is not None:
            self._send_table()
        for tracker in self.trackers:
            tracker.close()


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; a missing value is honest
    return v


class Progress:
    """A tqdm bar with live reward and ETA on a terminal; one plain line per step otherwise."""

    def __init__(self, total: int, start: int):
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, desc="aha train", unit="step", disable=not self.tty)

    def update(self, step: int, m: dict[str, float]) -> None:
        short = {"reward": m["reward"], "acc": m["accuracy"], "fmt": m["format_rate"], "len": m["completion_len"]}
        if self.tty:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in short.items()})
            self.bar.update(1)
        else:
            fields = " ".join(f"{k}={v:.3g}" for k, v in short.items())
            print(f"step {step}/{self.bar.total} {fields} time={m['step_time']:.1f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def open_run(run_dir: Path, cfg: Config, config_yaml: str, step: int, resumed: bool,
             overwrite: bool = False) -> tuple[RunLogger, Progress]:
    """Create the run directory (with `overwrite`, the old run is moved aside and removed now that
    every check has passed: aha/rundir.py), write its config.yaml, open its logs (trimmed to `step`
    when `resumed`) with the trackers of `cfg.report_to` (aha/trackers.py), and the progress bar
    starting at `step`."""
    from aha import rundir
    from aha.trackers import open_trackers

    rundir.prepare(run_dir, overwrite, resuming=resumed, step=step)  # resumed: later checkpoints set aside
    fsio.atomic_write_text(run_dir / "config.yaml", config_yaml)

    resume_step = step if resumed else None
    trackers = open_trackers(cfg.report_to, run_dir, cfg.to_dict(), cfg.tensorboard, resume_step)
    return RunLogger(run_dir, trackers, resume_step, cfg.report_table_every), Progress(cfg.max_steps, step)
