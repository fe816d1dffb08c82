"""Arith: short generated arithmetic problems, scored with GSM8K's five rewards.

This is the CPU demo's task. GSM8K prompts are 100-200 tokens, which on a 2-core CPU makes
every GRPO step cost a minute; these are ~20 tokens, so a 135M model can be seen learning in
minutes, offline. Two kinds of problem:

- `problems="word"` (the default): one- and two-step word problems ("Ann has 5 apples...").
  Train/test are seeded draws; the test set skips any problem text that appears in train.
- `problems="sums"` (the CPU demo): bare additions and subtractions of whole numbers up to
  `max_operand` ("What is 13 + 7?"). Every distinct problem (op, a, b) is either a test problem
  or a train problem, never both: held out *by problem*, so a test answer is never rewarded in
  training. With `prompt_style="example"` each prompt carries one worked example with fresh
  numbers and a *different* operation, so copying the example's answer is never right (the
  placeholder prompt's "number" was copied verbatim by SmolLM2-135M, which then stopped learning).

- `problems="muladd"` (the cpu-reasoning candidate, issue 21): "What is a * b + c?" with small
  factors. Measured on the untrained SmolLM2-135M (docs/reasoning-search.md): it multiplies right, then mostly
  answers the product or c; its few right answers all write the product first, so the right answer
  needs an intermediate result. But it starts 1-3% right, too rarely for GRPO groups of 8 to learn
  from (20 steps taught the format and the answer "c", not the sum). Held out by problem like the
  sums; the worked example (`prompt_style="example"`) is one subtraction with fresh numbers: the
  format on a single step, never a two-step solution.

`weights` overrides reward weights by name (e.g. {"soft_format": 0.25}) so that a preset can
make correctness dominate the total.
"""

from __future__ import annotations

import random
from typing import Sequence

from aha.tasks._common import check_split, check_template, templated
from aha.tasks.base import Example, Messages
from aha.tasks.gsm8k import REWARDS, NumberAnswerTask

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


# The sums variant. The worked example in `EXAMPLE_SYSTEM` shows the format on a different
# operation than the question's, with fresh numbers per prompt: copying it is never rewarded.
SUM_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}
EXAMPLE_OPS = {"+": "-", "-": "+"}  # the question's operation -> the worked example's
EXAMPLE_SYSTEM = ("Solve the problem. Think step by step inside <think> </think> tags, then write only the final "
                  "number inside <answer> </answer> tags. For example, for \"What is {x} {op} {y}?\":\n"
                  "<think>\n{x} {op} {y} = {r}\n</think>\n<answer>\n{r}\n</answer>")


def all_sums(max_operand: int, ops: str = "+-") -> list[tuple[str, int, int]]:
    """Every distinct problem (op, a, b) with 0 <= a, b <= max_operand and op in `ops`;
    subtractions have a >= b."""
    return [(op, a, b) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)
            if op == "+" or a >= b]


def all_muladds(max_factor: int, max_operand: int) -> list[tuple[int, int, int]]:
    """Every distinct problem (a, b, c) of "a * b + c" with 2 <= a, b <= max_factor, 1 <= c <= max_operand."""
    return [(a, b, c) for a in range(2, max_factor + 1) for b in range(2, max_factor + 1)
            for c in range(1, max_operand + 1)]


def _example_system(rng: random.Random, op: str, answer: int, max_operand: int) -> str:
    """The system prompt with a worked example on the other operation than `op` whose result is not `answer`."""
    eop = EXAMPLE_OPS[op]
    while True:
        x, y = rng.randint(2, max_operand), rng.randint(2, max_operand)
        if eop == "-" and y > x:
            x, y = y, x
        if SUM_OPS[eop](x, y) != answer:  # copying the example's answer must never be right
            return EXAMPLE_SYSTEM.format(x=x, op=eop, y=y, r=SUM_OPS[eop](x, y))


class Arith(NumberAnswerTask):
    """Generated arithmetic problems with GSM8K's rewards (same tags; weights overridable).

    Options: `problems` "word" | "sums" | "muladd"; `template` "chat" | "base"; `prompt_style`
    "placeholder" (the format with placeholder words) | "example" (one worked one-step example,
    sums and muladd); `max_operand` and `ops` ("+-", "+" or "-"; sums); `max_factor` (muladd's
    a and b; its c goes up to `max_operand`); `n_train`/`n_test` (sums and muladd: the test set is
    `n_test` distinct problems, training cycles through the rest); `seed` (which problems
    are train and which test, and the draws); `weights`.
    Raises ValueError on an unknown value.
    """

    name = "arith"
    rewards = REWARDS

    def __init__(self, n_train: int = 5000, n_test: int = 200, seed: int = 0, template: str = "chat",
                 system_prompt: str | None = None, problems: str = "word", prompt_style: str = "placeholder",
                 max_operand: int = 20, ops: str = "+-", max_factor: int = 6,
                 weights: dict[str, float] | None = None) -> None:
        check_template(template)
        if problems not in ("word", "sums", "muladd"):
            raise ValueError(f"problems must be 'word', 'sums' or 'muladd', got {problems!r}")
        if problems == "muladd" and (max_factor < 2 or max_operand < 1):
            raise ValueError(f"max_factor must be >= 2 and max_operand >= 1, got {max_factor} and {max_operand}")
        if prompt_style not in ("placeholder", "example"):
            raise ValueError(f"prompt_style must be 'placeholder' or 'example', got {prompt_style!r}")
        if not ops or set(ops) - set(SUM_OPS) or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be a string of distinct operations from '+-', got {ops!r}")
        if prompt_style == "example" and problems == "word":
            raise ValueError("prompt_style='example' needs problems='sums' or 'muladd' (its worked example is a sum)")
        unknown = sorted(set(weights or {}) - set(REWARDS))
        if unknown:
            raise ValueError(f"unknown reward(s) in weights: {unknown}; known: {sorted(REWARDS)}")
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self.template, self.problems, self.prompt_style = template, problems, prompt_style
        self.max_operand, self.ops, self.max_factor = max_operand, ops, max_factor
        self.system_prompt = system_prompt
        if weights:
            self.rewards = {k: (fn, float(weights.get(k, w))) for k, (fn, w) in REWARDS.items()}
        self._cache: dict[str, list[Example]] = {}

    def prompt(self, question: str, system: str | None = None) -> str | Messages:
        """A question in the task's template; `system` replaces the instructions (the worked example)."""
        return templated(question, self.template, system or self.system_prompt or SYSTEM,
                         system or self.system_prompt or BASE_PREAMBLE, PREFILL)

    def user_prompt(self, text: str) -> str | Messages:
        """A typed question, in the task's template (with a worked example when training had one)."""
        if self.prompt_style == "example" and self.problems == "muladd":
            return self.prompt(text, _example_system(random.Random(text), "+", -1, self.max_operand))
        if self.prompt_style == "example":
            op = "-" if "-" in text else "+"
            return self.prompt(text, _example_system(random.Random(text), op, -1, self.max_operand))
        return self.prompt(text)

    def examples(self, split: str) -> Sequence[Example]:
        check_split(split)
        if split not in self._cache:
            make = {"sums": self._sums, "muladd": self._muladds, "word": self._words}[self.problems]
            self._cache[split] = [Example(id=f"arith/{split}/{i}", prompt=p, target=a)
                                  for i, (p, a) in enumerate(make(split))]
        return self._cache[split]

    def _words(self, split: str) -> list[tuple[str | Messages, str]]:
        train_rng = random.Random(f"arith-train-{self.seed}")
        train = [_draw(train_rng) for _ in range(self.n_train)]
        if split == "train":
            return [(self.prompt(q), a) for q, a in train]
        # A fixed test set, whatever the train seed, minus anything seen in training.
        seen = {q for q, _ in train}
        test_rng, rows = random.Random("arith-test"), []
        while len(rows) < self.n_test:
            q, a = _draw(test_rng)
            if q not in seen:
                rows.append((self.prompt(q), a))
        return rows

    def _held_out(self, problems: list, split: str, what: str) -> list:
        """`split`'s problems: the first n_test of a seeded shuffle are the test set; the rest are
        cycled through for n_train draws. Raises ValueError when n_test leaves none to train on."""
        if self.n_test >= len(problems):
            raise ValueError(f"n_test={self.n_test} leaves no training problems: {what} give "
                             f"{len(problems)} distinct problems")
        random.Random(f"arith-{self.problems}-split-{self.seed}").shuffle(problems)
        return problems[:self.n_test] if split == "test" else \
            [problems[self.n_test + i % (len(problems) - self.n_test)] for i in range(self.n_train)]

    def _muladds(self, split: str) -> list[tuple[str | Messages, str]]:
        chosen = self._held_out(all_muladds(self.max_factor, self.max_operand), split,
                                f"max_factor={self.max_factor} and max_operand={self.max_operand}")
        rng, rows = random.Random(f"arith-muladd-{split}-{self.seed}"), []
        for a, b, c in chosen:
            answer = a * b + c
            # The example is a subtraction (one step, another operation): measured in docs/reasoning-search.md.
            system = _example_system(rng, "+", answer, self.max_operand) if self.prompt_style == "example" else None
            rows.append((self.prompt(f"What is {a} * {b} + {c}?", system), str(answer)))
        return rows

    def _sums(self, split: str) -> list[tuple[str | Messages, str]]:
        chosen = self._held_out(all_sums(self.max_operand, self.ops), split,
                                f"max_operand={self.max_operand} and ops={self.ops!r}")
        rng = random.Random(f"arith-sums-{split}-{self.seed}")
        rows = []
        for op, a, b in chosen:
            answer = SUM_OPS[op](a, b)
            system = _example_system(rng, op, answer, self.max_operand) if self.prompt_style == "example" else None
            rows.append((self.prompt(f"What is {a} {op} {b}?", system), str(answer)))
        return rows
