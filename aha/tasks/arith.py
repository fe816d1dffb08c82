"""Arith: short, generated one- and two-step word problems, scored with GSM8K's five rewards.

This is the CPU demo's task. GSM8K prompts are 100-200 tokens, which on a 2-core CPU makes
every GRPO step cost a minute; these are ~20 tokens, so a 135M model can be seen learning the
`<think>...</think><answer>...</answer>` format (and some arithmetic) in minutes, offline.
Puzzles are drawn from a seeded RNG, so train/test are deterministic and disjoint (test uses a
different seed stream and skips any problem text that also appears in train's first draws).
"""

from __future__ import annotations

import random
from typing import Sequence

from aha.tasks._common import check_split, check_template, templated
from aha.tasks.base import Example, Messages, Task
from aha.tasks.gsm8k import REWARDS, correctness_reward, soft_format_reward

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Lena", "Max", "Nia", "Omar"]
ITEMS = ["apples", "books", "coins", "stickers", "marbles", "pens", "cards", "shells", "cookies", "stamps"]

# (template, answer function); {n} name, {i} item, a/b/c numbers drawn by `_draw`.
TEMPLATES = [
    ("{n} has {a} {i}. {n} gets {b} more. How many {i} does {n} have now?", lambda a, b, c: a + b),
    ("{n} had {a} {i} and gave {b} away. How many {i} does {n} have left?", lambda a, b, c: a - b),
    ("{n} buys {a} boxes with {b} {i} in each box. How many {i} is that?", lambda a, b, c: a * b),
    ("{n} shares {a} {i} equally among {b} friends. How many {i} does each friend get?",
     lambda a, b, c: a // b),
    ("{n} has {a} {i}, gets {b} more, then gives away {c}. How many {i} are left?", lambda a, b, c: a + b - c),
    ("{n} has {a} {i} and a friend has {b} times as many. How many {i} do they have together?",
     lambda a, b, c: a + a * b),
]

# Placeholders, not a worked example: measured on SmolLM2-135M-Instruct (32 samples, 48 tokens),
# this prompt starts at ~9% formatted completions and a one-shot worked example at 0% (the model
# continues the example's arithmetic instead). The model first copies "number" literally; the
# int and correctness rewards are what move it from there to real answers.
SYSTEM = ("Solve the problem. Think first, then give the answer as one number, in this format:\n"
          "<think>\nreasoning\n</think>\n<answer>\nnumber\n</answer>")
BASE_PREAMBLE = ("A conversation between User and Assistant. The Assistant thinks inside <think> </think> "
                 "tags, then gives the answer as one number inside <answer> </answer> tags.")
PREFILL = "<think>\n"


def _draw(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair; numbers stay small so a 135M model has a chance."""
    k = rng.randrange(len(TEMPLATES))
    template, answer = TEMPLATES[k]
    a, b, c = rng.randint(2, 30), rng.randint(2, 12), 0
    if k == 1:  # subtraction: keep the answer positive
        a, b = max(a, b) + rng.randint(1, 9), min(a, b)
    elif k == 2:
        a = rng.randint(2, 9)
    elif k == 3:  # division: exact by construction
        a = b * rng.randint(2, 9)
    elif k == 4:
        c = rng.randint(1, a + b - 1)
    elif k == 5:
        b = rng.randint(2, 4)
    question = template.format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b, c=c)
    return question, str(answer(a, b, c))


class Arith(Task):
    """Generated arithmetic word problems with GSM8K's rewards (same tags, same weights)."""

    name = "arith"
    rewards = REWARDS

    def __init__(self, n_train: int = 5000, n_test: int = 200, seed: int = 0, template: str = "chat",
                 system_prompt: str | None = None) -> None:
        check_template(template)
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self.template = template
        self.system_prompt = system_prompt
        self._cache: dict[str, list[Example]] = {}

    def prompt(self, question: str) -> str | Messages:
        return templated(question, self.template, self.system_prompt or SYSTEM, self.system_prompt or BASE_PREAMBLE,
                         PREFILL)

    def user_prompt(self, text: str) -> str | Messages:
        """A typed question, in the task's template."""
        return self.prompt(text)

    def examples(self, split: str) -> Sequence[Example]:
        check_split(split)
        if split not in self._cache:
            train_rng = random.Random(f"arith-train-{self.seed}")
            train = [_draw(train_rng) for _ in range(self.n_train)]
            if split == "train":
                rows = train
            else:  # a fixed test set, whatever the train seed, minus anything seen in training
                seen = {q for q, _ in train}
                test_rng, rows = random.Random("arith-test"), []
                while len(rows) < self.n_test:
                    q, a = _draw(test_rng)
                    if q not in seen:
                        rows.append((q, a))
            self._cache[split] = [Example(id=f"arith/{split}/{i}", prompt=self.prompt(q), target=a)
                                  for i, (q, a) in enumerate(rows)]
        return self._cache[split]

    def is_correct(self, completion: str, ex: Example) -> bool:
        return correctness_reward(completion, ex) > 0

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return soft_format_reward(completion, ex) > 0
