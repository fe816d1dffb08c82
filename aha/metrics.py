"""The completion metrics both the training step and eval report: the "aha" metric - how often
completions reflect on their own work (`reflection_rate`, over one list of phrases,
`REFLECTION_PHRASES`) - and whether completions reason in intermediate steps and whether that pays
(`reasoning_metrics`). Pure functions of text and counts; the step records (records.py), eval and
the report import them from here.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

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


def reasoning_metrics(steps: Sequence[int | None], correct: Sequence[bool]) -> dict[str, float]:
    """Whether completions reason in steps, and whether that pays, from `Task.reasoning_steps` per
    completion and its correctness (the same order). {} when the task defines no steps (all None).

    steps_share: share of completions with at least one intermediate step; steps_mean: mean steps
    per completion; accuracy_with_steps / accuracy_without_steps: accuracy among completions with
    >= 1 step / with none (NaN when there is no such completion; metrics.jsonl writes it as null).
    """
    pairs = [(s, c) for s, c in zip(steps, correct) if s is not None]
    if not pairs:
        return {}
    with_steps = [c for s, c in pairs if s > 0]
    without = [c for s, c in pairs if s <= 0]
    return {
        "steps_share": len(with_steps) / len(pairs),
        "steps_mean": sum(s for s, _ in pairs) / len(pairs),
        "accuracy_with_steps": sum(with_steps) / len(with_steps) if with_steps else math.nan,
        "accuracy_without_steps": sum(without) / len(without) if without else math.nan,
    }
