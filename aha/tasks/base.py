"""The task contract: examples, pure reward functions, and the eval metric.

A task owns everything task-specific: how prompts look, what the ground truth is, and how a
completion is scored. The core (rollout, trainer, eval) only sees `Example.prompt`, calls
`Task.score` / `Task.is_correct` / `Task.is_formatted`, and never reads `Example.target`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    id: str
    # Raw text for base models, or chat messages. A chat prompt whose last message has role
    # "assistant" is a pre-filled assistant turn that the model continues.
    prompt: str | Messages
    target: Any  # ground truth, opaque to everything but the task's reward functions


# (completion text, example) -> reward. Pure, never raises, bounded time, whatever the text.
RewardFn = Callable[[str, Example], float]


class Task:
    """Base class: a subclass sets `name` and `rewards` and implements the three methods."""

    name: str = "task"
    # reward name -> (function, weight); the logged value is function(...) * weight.
    rewards: dict[str, tuple[RewardFn, float]] = {}

    def examples(self, split: str) -> Sequence[Example]:
        raise NotImplementedError

    def is_correct(self, completion: str, ex: Example) -> bool:
        """The eval metric; separate from the shaped rewards so shaping cannot inflate it."""
        raise NotImplementedError

    def is_correct_lenient(self, completion: str, ex: Example) -> bool:
        """A looser reading of the answer, ignoring the required format (for number answers: the
        last number written). Reported beside `is_correct` so that a gain from format alone shows.
        Tasks with no looser reading grade as `is_correct`."""
        return self.is_correct(completion, ex)

    def is_formatted(self, completion: str, ex: Example) -> bool:
        """Whether the task accepts the completion's format (the `format_rate` metric)."""
        raise NotImplementedError

    def score(self, completion: str, ex: Example) -> tuple[float, dict[str, float]]:
        parts = {name: float(fn(completion, ex)) * weight for name, (fn, weight) in self.rewards.items()}
        return sum(parts.values()), parts


def reward_means(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each reward over a batch of `score(...)[1]` dicts, keyed `reward/<name>`."""
    if not parts:
        return {}
    names = parts[0].keys()
    return {f"reward/{n}": sum(p[n] for p in parts) / len(parts) for n in names}
