"""GSM8K: grade-school math word problems, answered as `<think>...</think><answer>N</answer>`.

Data: the hub data set `openai/gsm8k` (config "main"), or a local JSONL/Parquet file with
`question`/`answer` columns (`data=PATH` or `data={"train": PATH, "test": PATH}`). The gold is
the number after `####`, read by the same rules as answers, kept as a string ("18", "-3", "1000").

Rewards follow the first seed (willccbb's GRPO GSM8K gist), with these departures:
- tags are `<think>`/`<answer>` (R1-Zero) rather than `<reasoning>`/`<answer>`;
- answers compare as numbers, exactly (Decimal): "1,000", "$18", "$ 18", "+18", "18.", "18.0"
  equal 18 and "−3" (U+2212) equals -3; a comma counts only between groups of three digits
  ("1,8" and "12,34" are not numbers), and anything else ("18 dollars", "eighteen", "１８") is
  wrong. The rules are in `answers.parse_number`. The gist compared strings;
- `int` accepts a sign (the gist used str.isdigit);
- soft and strict format match across newlines. The gist's soft regex used re.match without
  DOTALL, so a multi-line think block never matched - a bug we fix; its strict regex had the
  same problem. Both are checked with str.find/count here, not lazy regexes, to stay linear;
- strict format also requires each tag exactly once;
- xmlcount penalises characters after the last `</answer>` once (the gist counted them twice),
  and is clamped into [0, 1] raw.

Every reward is a pure module-level function returning a raw value in [0, 1]; the weights
give the first seed's scale (correctness 2.0, the rest 0.5; xmlcount's weighted max is 0.5).
Rewards judge `prefill + completion` (see `_common.prefill_of`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

from aha.tasks._common import check_split, check_template, prefill_of, read_rows, resolve_path, templated
from aha.tasks.answers import CLOSE, OPEN, arithmetic_steps, final_number, last_answer, parse_number
from aha.errors import DataError
from aha.tasks.base import Example, Messages, Task

HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"

FORMAT = "<think>\n...\n</think>\n<answer>\n...\n</answer>"

# R1-Zero style plain-text prompt for base models; the assistant turn is pre-filled with
# "<think>\n" (TinyZero does the same) so the model only has to continue the format.
BASE_PREAMBLE = (
    "A conversation between User and Assistant. The User asks a math question and the Assistant "
    "solves it. The Assistant first reasons step by step, then gives the final answer as a single "
    "number. The reasoning goes inside <think> </think> tags and the answer inside "
    "<answer> </answer> tags, in exactly this format:\n"
    "<think>\nreasoning here\n</think>\n<answer>\nnumber here\n</answer>"
)
BASE_PREFILL = "<think>\n"

# Chat models get the format in the system message and the same "<think>\n" pre-fill as a final
# assistant message: a small instruct model otherwise tends to answer directly without tags, and
# a pre-filled tag is the cheapest way to get it into the format from the first step.
CHAT_SYSTEM = (
    "You are a helpful assistant that solves math problems. First reason step by step, then give "
    "the final answer as a single number. Respond in exactly this format:\n"
    "<think>\nyour reasoning\n</think>\n<answer>\nthe number\n</answer>"
)
CHAT_PREFILL = "<think>\n"

_THINK_CLOSE_THEN_OPEN_ANSWER = re.compile(r"</think>\s*<answer>")


# `text` as a plain decimal numeral, or None; the rules ("$", signs, thousands commas, a trailing
# ".") are in its docstring and the README.
normalize_number = parse_number


def parse_gold(answer: str) -> str:
    """The gold number of a GSM8K answer: the text after the last `####`, commas removed."""
    _, sep, tail = answer.rpartition("####")
    gold = normalize_number(tail) if sep else None
    if gold is None:
        raise ValueError(f"GSM8K answer has no number after '####': {answer[-80:]!r}")
    return gold


def _text(completion: str, ex: Example) -> str:
    return prefill_of(ex) + completion


# ---- rewards: (completion, example) -> raw value in [0, 1] ----


def correctness_reward(completion: str, ex: Example) -> float:
    """1 if the last `<answer>` block holds the gold number (compared exactly as numbers)."""
    answer = last_answer(_text(completion, ex))
    got = normalize_number(answer) if answer is not None else None
    gold = normalize_number(str(ex.target))
    return 1.0 if got is not None and gold is not None and Decimal(got) == Decimal(gold) else 0.0


def int_reward(completion: str, ex: Example) -> float:
    """1 if the last `<answer>` block holds an integer (signed or not, by `parse_number`; "18.0" is not)."""
    answer = last_answer(_text(completion, ex))
    got = normalize_number(answer) if answer is not None else None
    return 1.0 if got is not None and "." not in got else 0.0


def strict_format_reward(completion: str, ex: Example) -> float:
    """1 if the whole text is exactly `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`.

    One trailing newline is allowed; each tag must appear exactly once.
    """
    text = _text(completion, ex)
    if text.endswith("\n"):
        text = text[:-1]
    head, middle, tail = "<think>\n", "\n</think>\n<answer>\n", "\n</answer>"
    if not (text.startswith(head) and text.endswith(tail)):
        return 0.0
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>", OPEN, CLOSE)):
        return 0.0
    mid = text.find(middle, len(head))
    return 1.0 if mid >= 0 and mid + len(middle) <= len(text) - len(tail) else 0.0


def soft_format_reward(completion: str, ex: Example) -> float:
    """1 if `<think>...</think>` then (whitespace) `<answer>...</answer>` appears anywhere.

    Same as re.search(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL) (the
    gist used re.match without DOTALL: a bug), but linear: the earliest `</think>\\s*<answer>`
    after the first `<think>` has the most room for a `</answer>` after it.
    """
    text = _text(completion, ex)
    start = text.find("<think>")
    if start < 0:
        return 0.0
    m = _THINK_CLOSE_THEN_OPEN_ANSWER.search(text, start + len("<think>"))
    return 1.0 if m is not None and text.find(CLOSE, m.end()) >= 0 else 0.0


def xmlcount_reward(completion: str, ex: Example) -> float:
    """0.25 per tag present exactly once, less 0.002 per character after the last `</answer>`.

    Tags as in the gist's count_xml: "<think>\\n", "\\n</think>\\n", "\\n<answer>\\n",
    "\\n</answer>". One trailing newline after `</answer>` is free. Clamped into [0, 1]; with
    weight 0.5 that is 0.125 per tag and 0.001 per trailing character, max 0.5.
    """
    text = _text(completion, ex)
    score = 0.25 * sum(text.count(tag) == 1 for tag in ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>"))
    close = text.rfind(CLOSE)
    if close >= 0:
        after = text[close + len(CLOSE) :]
        score -= 0.002 * (len(after) - after.endswith("\n"))
    return min(1.0, max(0.0, score))


def lenient_correct(completion: str, ex: Example) -> bool:
    """The lenient grader: the model's final answer equals the gold, whatever the format.

    The final answer is `answers.final_number`: the content of the last complete `<answer>` block
    (the block strict grading reads; a number by the same rule, or else the last number inside
    it), else the last number the completion writes. Text after `</answer>` is never read, so a
    strict-correct completion is always lenient-correct. Not a reward: it tells format learning
    apart from answer learning (docs/design.md, "What counts as learning").
    """
    got = final_number(completion, prefill_of(ex))
    gold = normalize_number(str(ex.target))
    return got is not None and gold is not None and Decimal(got) == Decimal(gold)


REWARDS = {
    "correctness": (correctness_reward, 2.0),
    "int": (int_reward, 0.5),
    "strict_format": (strict_format_reward, 0.5),
    "soft_format": (soft_format_reward, 0.5),
    "xmlcount": (xmlcount_reward, 0.5),
}


class NumberAnswerTask(Task):
    """A task whose answer is one number in `<answer>` tags, judged by GSM8K's number rules: right
    when `correctness_reward` pays (the tagged number equals the gold), right leniently when the final
    answer does (`lenient_correct`: the answer block read loosely, else the last number; tags or not),
    formatted when `soft_format_reward` pays; its reasoning steps are the arithmetic statements with
    an intermediate result (`answers.arithmetic_steps`)."""

    def is_correct(self, completion: str, ex: Example) -> bool:
        return correctness_reward(completion, ex) > 0

    def is_correct_lenient(self, completion: str, ex: Example) -> bool:
        return lenient_correct(completion, ex)

    def reasoning_steps(self, completion: str, ex: Example) -> int:
        """Statements `A op B (op C ...) = R` before the first `<answer>` of pre-fill + completion whose
        R is not the final answer (`answers.final_number`): "3 + 5 = 8\n8 + 7 = 15" answering 15 is 1."""
        prefill = prefill_of(ex)
        return arithmetic_steps(prefill + completion, final_number(completion, prefill))

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return soft_format_reward(completion, ex) > 0


class GSM8K(NumberAnswerTask):
    """GSM8K with the first seed's five rewards. `template` is "base" (text) or "chat" (messages)."""

    name = "gsm8k"
    rewards = REWARDS

    def __init__(
        self,
        data: str | Path | dict[str, str | Path] | None = None,
        template: str = "base",
        system_prompt: str | None = None,
    ) -> None:
        check_template(template)
        self.data = data
        self.template = template
        # Replaces the base template's preamble or the chat system message.
        self.system_prompt = system_prompt
        self._cache: dict[str, list[Example]] = {}

    def prompt(self, question: str) -> str | Messages:
        return templated(question, self.template, self.system_prompt or CHAT_SYSTEM,
                         self.system_prompt or BASE_PREAMBLE, CHAT_PREFILL if self.template == "chat" else BASE_PREFILL)

    def user_prompt(self, text: str) -> str | Messages:
        """A typed question, in the task's template."""
        return self.prompt(text)

    def examples(self, split: str) -> Sequence[Example]:
        check_split(split)
        if split not in self._cache:
            rows = (
                _load_hub(split)
                if self.data is None
                else read_rows(resolve_path(self.data, split), ("question", "answer"))
            )
            self._cache[split] = [
                Example(id=f"gsm8k/{split}/{i}", prompt=self.prompt(row["question"]), target=parse_gold(row["answer"]))
                for i, row in enumerate(rows)
            ]
        return self._cache[split]


HUB_PROBE_S = 3.0  # how long to wait for the hub's host before treating it as unreachable


def hub_unreachable(timeout: float = HUB_PROBE_S) -> str | None:
    """Why the Hugging Face hub cannot be reached ("huggingface.co: ..."), or None when it answers (or
    when a proxy is set: it may reach what a direct connection cannot, so the hub client decides).
    One TCP connect, not an HTTP request: a machine without network answers in milliseconds."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}: {err.strerror or err or type(err).__name__}"
    return None


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    """`datasets` reads only its local cache inside this: no request, no retries (without it an
    unreachable hub costs ~30 s of backoff before the error). Both libraries read the flag at import
    time, so their constants are set too, and everything is restored after."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"], hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = "1", True, True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved[1], saved[2]


def _load_hub(split: str) -> list[dict[str, Any]]:
    """GSM8K's `split` from the hub (or `datasets`' cache of it). Raises DataError with both fixes."""
    unreachable = None
    try:
        import datasets

        unreachable = hub_unreachable()
        with _offline_hub() if unreachable else contextlib.nullcontext():
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    # The hub fails in many ways (no network, offline mode, auth, a missing package); all of them
    # get the same fix, so catch broadly and re-raise with the cause chained, never swallow.
    except Exception as err:
        why = f" (unreachable: {unreachable}; no cached copy)" if unreachable else ""
        raise DataError(
            f"could not load GSM8K from the Hugging Face hub ({HUB_ID}, config {HUB_CONFIG!r}){why}: "
            f"{type(err).__name__}: {err}\n"
            "Without network access, pass a local copy (JSONL or Parquet with 'question' and 'answer' "
            "columns) as the task option data: `aha train ... task_options.data=gsm8k/train.jsonl`, "
            "`aha eval ... --data gsm8k/test.jsonl`, or in Python get_task('gsm8k', data='gsm8k/test.jsonl') "
            "or get_task('gsm8k', data={'train': 'gsm8k/train.jsonl', 'test': 'gsm8k/test.jsonl'})."
        ) from err
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]
