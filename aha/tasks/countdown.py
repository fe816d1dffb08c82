"""Countdown (after TinyZero): combine 3-4 numbers with + - * / and parentheses to hit a target.

Puzzles are generated from a seed, solvable by construction; `solve` is an exhaustive solver
that checks them (both live in `_countdown_puzzles` and are re-exported here). The TinyZero
data set (`Jiayi-Pan/Countdown-Tasks-3to4`, fields `nums`/`target`) can be loaded instead with
`data="hub"` or a local JSONL/Parquet file; loaded puzzles are used as given (not solved first).

Scoring follows TinyZero's `countdown.compute_score`: 0 with no `<answer>` block, 0.1 for an
answer that is not a correct use of the numbers or misses the target, 1.0 for a correct one.
The rules (the README's task section states them too):
- the answer is the content of the last complete `<answer>...</answer>` block of
  `prefill + completion`;
- it may hold only ASCII digits, whitespace, `+ - * / ( )` (at most 200 characters), and must
  parse as an expression of integer literals, the four operators, unary minus/plus and
  parentheses; anything else (`**`, `//`, `%`, `=`, decimals such as `1.4` or `7.0`, names)
  is "not a correct use" and scores 0.1;
- the integer literals the expression evaluates must be, as a multiset, exactly the puzzle's
  numbers: each given number once, no other number (so `14` is not 1 and 4);
- its exact value (Fractions) must equal the target.
`is_correct` is `answer_reward == 1.0`, and the shaping rewards read the same literals, so the
value and the numbers used always come from one reading of the answer.
Deliberate departures from TinyZero, each tested in tests/test_countdown.py and
tests/test_countdown_answers.py:
- no `eval`: answers go through `_safe_eval.evaluate` (length bound, an AST whitelist, exact
  Fractions). TinyZero's character regex lets `**` and `//` through, so `9**9**9**9` hangs its
  reward; here `**`, `//` and over-long answers score 0.1;
- one view of the numbers: TinyZero checks the numbers with a digit regex on the text but takes
  the value from `eval`, so `1.4 * 5` "uses" 1, 4 and 5 and equals 7 (a puzzle [1, 4, 5] -> 7
  that has no solution scores 1.0 there); here decimal literals are not allowed;
- exact equality with the target (TinyZero: within 1e-5 of it, in floats);
- the answer block may span lines (`<answer>\\n1 + 2\\n</answer>`); TinyZero's regex has no
  DOTALL and scores it 0 as "no answer". An unclosed final `<answer>` is ignored, as there;
- rewards see `prefill + completion` (TinyZero scores the text after "Assistant:", which
  holds the same pre-fill), so a pre-filled `<think>` counts.
Loaded puzzles must have non-negative integer numbers (an answer cannot write a negative
literal: `-3` is unary minus on 3).
`shaping=True` adds two small rewards TinyZero does not have (off by default): "format" for
`<think>...</think>` then `<answer>...</answer>`, and "equation" for an answer that parses and
uses only the given numbers. They are what gives a 135M model signal before it solves anything.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from aha.tasks._common import check_split, check_template, prefill_of, read_rows, resolve_path, templated
from aha.tasks.answers import CLOSE, OPEN, last_answer
from aha.tasks._countdown_puzzles import PuzzleOptions, draw_puzzle, generate_puzzles, puzzle_key, solve
from aha.tasks._safe_eval import evaluate
from aha.errors import DataError
from aha.tasks.base import Example, Messages, Task

__all__ = [
    "Countdown",
    "PuzzleOptions",
    "generate_puzzles",
    "solve",
    "puzzle_key",
    "answer_reward",
    "format_reward",
    "equation_reward",
]

HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4"

# TinyZero's base template (the question sentence kept as is: it is the task's format);
# the assistant turn is pre-filled up to "<think>".
BASE_PREAMBLE = (
    "A conversation between User and Assistant. The User asks a question and the Assistant solves it: "
    "the Assistant first thinks through the reasoning, then gives the User the answer."
)
PREFILL = "Let me solve this step by step.\n<think>"
CHAT_SYSTEM = (
    "You are a helpful assistant. You first think through the reasoning step by step, then give the user the answer."
)


def question(nums: list[int], target: int) -> str:
    return (
        f"Using the numbers {nums}, create an equation that equals {target}. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work "
        "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for "
        "example <answer> (1 + 2) / 3 </answer>."
    )


# ---- rewards: (completion, example) -> raw value in [0, 1] ----

# What `aha play` users type: numbers separated by spaces or commas, an arrow (or = or :), the target.
_TYPED_PUZZLE = re.compile(r"^\s*((?:-?\d+[\s,]+)*-?\d+)\s*(?:->|=>|=|:)\s*(-?\d+)\s*$")


def _answer_check(completion: str, ex: Example) -> tuple[str | None, Fraction | None, list[int]]:
    """(answer text or None, its exact value or None, the integer literals it evaluates).

    One reading of the answer gives both the value and the numbers used (`_safe_eval.evaluate`),
    so no text can count one way for the number check and another way for the value."""
    answer = last_answer(prefill_of(ex) + completion)
    if answer is None:
        return None, None, []
    parsed = evaluate(answer)  # bounds length and characters before anything else
    return (answer, None, []) if parsed is None else (answer, *parsed)


def uses_numbers(used: list[int], nums: list[int]) -> bool:
    """Each given number exactly once, and nothing else: the literals equal `nums` as a multiset."""
    return Counter(used) == Counter(nums)


def answer_reward(completion: str, ex: Example) -> float:
    """TinyZero's score: 0 no answer, 0.1 any answer, 1.0 numbers used exactly once and value == target."""
    answer, value, used = _answer_check(completion, ex)
    if answer is None:
        return 0.0
    if value is None or not uses_numbers(used, ex.target["nums"]):
        return 0.1
    return 1.0 if value == ex.target["target"] else 0.1  # exact: Fractions, no float tolerance


def format_reward(completion: str, ex: Example) -> float:
    """Shaping: `<think>`, then `</think>`, then a complete `<answer>...</answer>` block, in order."""
    text = prefill_of(ex) + completion
    think = text.find("<think>")
    end_think = text.find("</think>", think + len("<think>")) if think >= 0 else -1
    answer = text.find(OPEN, end_think + len("</think>")) if end_think >= 0 else -1
    return 1.0 if answer >= 0 and text.find(CLOSE, answer + len(OPEN)) >= 0 else 0.0


def equation_reward(completion: str, ex: Example) -> float:
    """Shaping: the answer is a valid expression using only the given numbers (each at most once)."""
    _, value, used = _answer_check(completion, ex)
    return 1.0 if value is not None and used and not Counter(used) - Counter(ex.target["nums"]) else 0.0


REWARDS = {"answer": (answer_reward, 1.0)}
SHAPING_REWARDS = {"format": (format_reward, 0.1), "equation": (equation_reward, 0.1)}


# ---- the task ----


class _LazyExamples(Sequence[Example]):
    """Examples built on access, so a 100k-puzzle train set costs nothing up front."""

    def __init__(self, n: int, get: Callable[[int], Example]) -> None:
        self._n, self._get = n, get

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int | slice):  # int or slice, as a list would
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._get(i % self._n)


class Countdown(Task):
    """Generated Countdown puzzles (or TinyZero's data set via `data`). Test is a fixed seeded set,
    independent of `seed`; train is drawn from `seed` and never contains a test puzzle."""

    name = "countdown"

    def __init__(
        self,
        n_train: int = 100_000,
        n_test: int = 1000,
        seed: int = 0,
        min_nums: int = 3,
        max_nums: int = 4,
        min_num: int = 1,
        max_num: int = 100,
        min_target: int = 1,
        max_target: int = 100,
        template: str = "base",
        shaping: bool = False,
        data: str | Path | dict[str, str | Path] | None = None,
    ) -> None:
        check_template(template)
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self.options = PuzzleOptions(min_nums, max_nums, min_num, max_num, min_target, max_target)
        self.template, self.shaping, self.data = template, shaping, data
        self.rewards = {**REWARDS, **SHAPING_REWARDS} if shaping else dict(REWARDS)
        self._test: list[Example] | None = None
        self._test_keys: frozenset = frozenset()
        self._loaded: dict[str, list[dict]] = {}

    def prompt(self, nums: list[int], target: int) -> str | Messages:
        return templated(question(nums, target), self.template, CHAT_SYSTEM, BASE_PREAMBLE, PREFILL)

    def user_prompt(self, text: str) -> str | Messages:
        """A typed puzzle, "3 7 25 50 -> 75" (also "3, 7, 25 = 75" or "... : 75"), in the task's
        template; other text as is."""
        m = _TYPED_PUZZLE.match(text)
        if not m:
            return text
        return self.prompt([int(x) for x in re.split(r"[\s,]+", m.group(1).strip())], int(m.group(2)))

    def _example(self, split: str, i: int, puzzle: dict) -> Example:
        target = {"nums": list(puzzle["nums"]), "target": puzzle["target"]}
        return Example(id=f"countdown/{split}/{i}", prompt=self.prompt(target["nums"], target["target"]), target=target)

    def examples(self, split: str) -> Sequence[Example]:
        check_split(split)
        if self.data is not None:
            return _LazyExamples(len(self._load(split)), partial(self._data_example, split))
        if self._test is None:
            self._test, keys = [], set()
            for i in range(self.n_test):  # unique test puzzles, fixed whatever the train seed
                puzzle = draw_puzzle(random.Random(f"countdown/test/{i}"), self.options, keys)
                keys.add(puzzle_key(puzzle["nums"], puzzle["target"]))
                self._test.append(self._example("test", i, puzzle))
            self._test_keys = frozenset(keys)
        if split == "test":
            return self._test
        return _LazyExamples(self.n_train, self._train_example)

    def _data_example(self, split: str, i: int) -> Example:
        return self._example(split, i, self._loaded[split][i])

    def _train_example(self, i: int) -> Example:
        # Same stream as generate_puzzles(n, seed)[i]; a draw that hits a test puzzle is redrawn.
        return self._example(
            "train", i, draw_puzzle(random.Random(f"countdown/{self.seed}/{i}"), self.options, self._test_keys)
        )

    def _load(self, split: str) -> list[dict]:
        """TinyZero's data: one file (or the hub) is split into test = last n_test rows and
        train = first n_train of the rest; a {"train", "test"} dict gives each its own file."""
        if split not in self._loaded:
            if isinstance(self.data, dict):
                rows = _check_puzzles(read_rows(resolve_path(self.data, split), ("nums", "target")))
                self._loaded[split] = rows[: self.n_train if split == "train" else self.n_test]
            else:
                rows = _load_hub() if self.data in ("hub", HUB_ID) else read_rows(self.data, ("nums", "target"))
                rows = _check_puzzles(rows)
                cut = max(0, len(rows) - self.n_test)
                self._loaded["test"], self._loaded["train"] = rows[cut:], rows[: min(cut, self.n_train)]
        return self._loaded[split]

    def is_correct(self, completion: str, ex: Example) -> bool:
        return answer_reward(completion, ex) == 1.0

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return format_reward(completion, ex) > 0


def _check_puzzles(rows: list[dict]) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        nums, target = row["nums"], row["target"]
        if not (isinstance(nums, list) and nums and all(type(x) is int and x >= 0 for x in nums)
                and type(target) is int):
            raise ValueError(f"row {i}: need 'nums' a list of non-negative ints and 'target' an int, "
                             f"got {nums!r}, {target!r}")
        out.append({"nums": nums, "target": target})
    return out


def _load_hub() -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_ID, split="train")
    # Any hub failure has the same fix; re-raise with the cause chained, never swallow.
    except Exception as err:
        raise DataError(
            f"could not load {HUB_ID} from the Hugging Face hub: {type(err).__name__}: {err}\n"
            "Without network access, drop data= to use generated puzzles, or pass a local JSONL/Parquet "
            "file with 'nums' and 'target' columns: get_task('countdown', data='countdown.jsonl')."
        ) from err
    return [{"nums": list(r["nums"]), "target": r["target"]} for r in ds]
