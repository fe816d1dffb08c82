"""Run logs: `metrics.jsonl` (one line per step), `completions.jsonl`, TensorBoard events, and
the "aha" metric - how often completions reflect on their own work.

The reflection phrases live in one list, here; eval and report import it from here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from aha import fsio

# Self-reflection / self-verification markers, the behaviour R1-Zero's "aha moment" describes.
# Matched case-insensitively on word boundaries ("wait" but not "waiter").
REFLECTION_PHRASES: list[str] = [
    "wait", "let me check", "let me verify", "let me re-check", "let me recheck", "re-check", "recheck",
    "verify", "double-check", "double check", "mistake", "let me reconsider", "reconsider",
    "on second thought", "actually,", "hmm", "that's not right", "that is not right", "let me try again",
    "i made an error", "let me re-evaluate", "re-evaluate",
]
_REFLECTION_RE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in REFLECTION_PHRASES) + r")(?!\w)",
                            re.IGNORECASE)


def has_reflection(text: str) -> bool:
    return _REFLECTION_RE.search(text) is not None


def reflection_rate(texts: Sequence[str]) -> float:
    return sum(has_reflection(t) for t in texts) / len(texts) if texts else 0.0


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
    run that crashed after its last checkpoint does not log those steps twice."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None):
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
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step discards events past the resumed step, like the JSONL trimming above.
            self.tb = SummaryWriter(str(self.run_dir / "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        with self.completions_path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")

    def log_eval_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        with self.eval_path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; a missing value is honest
    return v
