"""The task contract: examples, pure reward functions, the eval metric, and what `aha play` and
`aha eval` need to know about prompts and answers.

A task owns everything task-specific: how prompts look, what the ground truth is, how a
completion is scored, what a person's typed input means, and what a completion's final answer
is. The core (rollout, trainer, eval, play) only sees `Example.prompt`, calls the methods below,
and never reads `Example.target` or branches on a task's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from aha.tasks.answers import last_answer, parse_number

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
    """Base class: a subclass sets `name` and `rewards` and implements `examples`, `is_correct`
    and `is_formatted`; the other methods have defaults that suit the tasks here."""

    name: str = "task"
    # reward name -> (function, weight); the logged value is function(...) * weight.
    rewards: dict[str, tuple[RewardFn, float]] = {}
    # Text that ends a completion (the rollout masks every token after the one completing it:
    # aha/rollout/stops.py); () = generate to EOS or max_new_tokens.
    stop_strings: tuple[str, ...] = ()

    def examples(self, split: str) -> Sequence[Example]:
        """The examples of a split, in a fixed order (the trainer permutes them itself).

        Args:
            split: "train" or "test".
        Returns:
            A sequence (a list, or a lazy sequence that builds examples on access) of `Example`s.
        Raises:
            ValueError: an unknown split, or bad data (a DataError when a download fails).
            FileNotFoundError: a local data file that does not exist.
        """
        raise NotImplementedError

    def is_correct(self, completion: str, ex: Example) -> bool:
        """The eval metric; separate from the shaped rewards so shaping cannot inflate it."""
        raise NotImplementedError

    def is_correct_lenient(self, completion: str, ex: Example) -> bool:
        """A looser reading of the model's final answer, ignoring the required format (for number
        answers: the answer block read loosely, else the last number written; never text after the
        answer). Reported beside `is_correct` so that a gain from format alone shows. Tasks with no
        looser reading grade as `is_correct`. Eval counts a completion lenient-correct when either
        method says correct, so lenient accuracy is never below strict."""
        return self.is_correct(completion, ex)

    def reasoning_steps(self, completion: str, ex: Example) -> int | None:
        """How many intermediate results the completion writes before its final answer (for
        arithmetic: statements `a op b = c` whose c is not the answer), or None where the task does
        not define steps (the default). The `steps_*` metrics (`aha.metrics.reasoning_metrics`) come from
        it; it must be pure, never raise, and take linear time whatever the text."""
        return None

    def is_formatted(self, completion: str, ex: Example) -> bool:
        """Whether the task accepts the completion's format (the `format_rate` metric)."""
        raise NotImplementedError

    def score(self, completion: str, ex: Example) -> tuple[float, dict[str, float]]:
        """The shaped reward GRPO optimises.

        Args:
            completion: the generated text, without the prompt (a pre-fill is the task's to add).
            ex: the example it answers.
        Returns:
            (total, parts): `total` is the sum of `parts`, which maps each reward's name to its
            function's value times its weight. Never raises, whatever the text.
        """
        parts = {name: float(fn(completion, ex)) * weight for name, (fn, weight) in self.rewards.items()}
        return sum(parts.values()), parts

    def prefill(self, ex: Example) -> str:
        """Text the prompt pre-fills in the assistant turn; rewards see prefill + completion."""
        return prompt_prefill(ex.prompt)

    def user_prompt(self, text: str) -> str | Messages:
        """The prompt for text a person typed (`aha play`): the task's template around it, so the
        model sees what it was trained on. Default: the text as is (for input the task cannot read)."""
        return text

    def final_answer(self, completion: str) -> str | None:
        """The completion's final answer, normalised so that answers written alike compare equal
        (majority voting in `aha eval`, `aha play --jsonl`); None without one. Default: the last
        complete `<answer>...</answer>` block, as a number by the tasks' number rules
        (`answers.parse_number`: "$1,000" and "1000" are one answer, "1,2" is not 12), else with
        whitespace removed."""
        answer = last_answer(completion)
        if answer is None:
            return None
        return parse_number(answer) or "".join(answer.split()) or None


def prompt_prefill(prompt: str | Messages) -> str:
    """The start of the assistant's turn that a prompt already contains and the model continues.

    Chat prompts: the content of a final "assistant" message (rendered with
    continue_final_message). Text prompts for base models end with an "Assistant:" turn in the
    R1-Zero style; the pre-fill is whatever follows the last "Assistant:" (e.g. "<think>\\n").
    """
    if isinstance(prompt, list):
        last = prompt[-1] if prompt else {}
        return str(last.get("content", "")) if last.get("role") == "assistant" else ""
    _, sep, tail = prompt.rpartition("Assistant:")
    return tail.lstrip(" ") if sep else ""


def reward_means(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each reward over a batch of `score(...)[1]` dicts, keyed `reward/<name>`."""
    if not parts:
        return {}
    names = parts[0].keys()
    return {f"reward/{n}": sum(p[n] for p in parts) / len(parts) for n in names}
