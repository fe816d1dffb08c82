"""Every reward of every task, on arbitrary and hostile text: a finite float in [0, 1], never an
exception; the lenient grader (implied by the strict one) and the reasoning-steps count likewise.
Also the per-reward metrics helper `reward_means`. How long they take on the same hostile texts (the 50 ms budget) is measured by bench/rewards.py, not asserted here: a shared
test machine's clock says little."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aha.tasks import Example, Task, reward_means
from aha.tasks.countdown import Countdown
from aha.tasks.gsm8k import GSM8K

GSM8K_BASE, GSM8K_CHAT = GSM8K(), GSM8K(template="chat")
CD_BASE, CD_CHAT = Countdown(n_test=3, shaping=True), Countdown(n_test=3, template="chat", shaping=True)
CASES: list[tuple[Task, Example]] = [
    (GSM8K_BASE, Example("g/base", GSM8K_BASE.prompt("Q?"), "18")),
    (GSM8K_CHAT, Example("g/chat", GSM8K_CHAT.prompt("Q?"), "-1000")),
    (GSM8K_BASE, Example("g/none", "no pre-fill", "18")),
    (CD_BASE, Example("c/base", CD_BASE.prompt([9, 9, 9, 9], 24), {"nums": [9, 9, 9, 9], "target": 24})),
    (CD_CHAT, Example("c/chat", CD_CHAT.prompt([3, 5, 7], 22), {"nums": [3, 5, 7], "target": 22})),
]


def check_all(text: str) -> None:
    """Each reward, then score / is_correct / is_formatted, on `text` for every task and prompt style."""
    for task, ex in CASES:
        for name, (fn, _) in task.rewards.items():
            value = fn(text, ex)
            assert type(value) is float and math.isfinite(value) and 0.0 <= value <= 1.0, (ex.id, name, value)
        total, parts = task.score(text, ex)
        assert set(parts) == set(task.rewards) and total == pytest.approx(sum(parts.values()))
        assert 0.0 <= total <= sum(w for _, w in task.rewards.values())
        assert isinstance(task.is_correct(text, ex), bool) and isinstance(task.is_formatted(text, ex), bool)
        lenient = task.is_correct_lenient(text, ex)
        assert isinstance(lenient, bool) and (lenient or not task.is_correct(text, ex))  # strict => lenient
        steps = task.reasoning_steps(text, ex)
        assert steps is None or (type(steps) is int and steps >= 0)


CRAFTED = {
    "power tower": "9**9**9**9",
    "deep parens": "(" * 10_000 + "1" + ")" * 10_000,
    "deep unary": "-" * 100_000 + "1",
    "float overflow": "1e308*1e308",
    "1 MB of digits": "9" * 1_000_000,
    "near the bound": "(" * 99 + "9" + ")" * 99,
    "long product": "*".join(["99"] * 66),
    "division by zero": "1/(9-9)",
    "NUL": "\x00" * 1000,
    "controls": "".join(map(chr, range(32))) + "\x7f\x80\x9f",
    "lone surrogate": "\ud800\udfff",
    "arabic-indic digits": "١٨",
    "fullwidth digits": "１８",
    "mixed digits": "1٨",
    "nan": "nan",
    "inf": "inf",
    "whitespace": " \t\n\r\x0b\x0c\u00a0\u2028" * 2000,
    "many opens": "<answer>" * 20_000,
    "many closes": "</answer>" * 20_000,
    "many thinks": "<think>\n" * 20_000,
    "many blocks": "<answer>9</answer>" * 10_000,
    "think soup": "</think> \n" * 10_000 + "<answer>",
    "empty": "",
}
WRAPS = {
    "bare": "{}",
    "answer": "<answer>{}</answer>",
    "full": "<think>\n{}\n</think>\n<answer>\n{}\n</answer>",
    "continued": "{}\n</think>\n<answer>\n{}\n</answer>\n",
}


@pytest.mark.parametrize("wrap", WRAPS.values(), ids=WRAPS.keys())
@pytest.mark.parametrize("crafted", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_inputs(crafted: str, wrap: str) -> None:
    check_all(wrap.replace("{}", crafted))


TAGS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "\n",
    " ",
    "18",
    "9",
    "**",
    "(",
    ")",
    "+",
    "-",
    "*",
    "/",
    ".",
    ",",
    "$",
]
soup = st.lists(st.sampled_from(TAGS) | st.text(max_size=5), max_size=300).map("".join)
# Hypothesis draws short strings; repeating a drawn chunk reaches the 100 KB scale cheaply.
big = st.tuples(soup | st.text(min_size=1, max_size=50), st.integers(1, 20_000)).map(lambda t: (t[0] * t[1])[:100_000])


QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=QUIET)
@given(st.text(max_size=2000) | soup | big)
def test_arbitrary_text(text: str) -> None:
    check_all(text)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=QUIET)
@given(st.text(max_size=300) | soup, st.sampled_from(list(WRAPS.values())))
def test_arbitrary_text_in_format(text: str, wrap: str) -> None:
    check_all(wrap.replace("{}", text))


def test_reward_means() -> None:
    assert reward_means([]) == {}
    parts = [{"correctness": 2.0, "int": 0.5}, {"correctness": 0.0, "int": 0.5}, {"correctness": 2.0, "int": 0.0}]
    assert reward_means(parts) == pytest.approx({"reward/correctness": 4 / 3, "reward/int": 1 / 3})
    task, ex = CASES[0]
    scored = [task.score(c, ex)[1] for c in ["", "<answer>18</answer>"]]
    assert reward_means(scored)["reward/correctness"] == pytest.approx(1.0)
    assert set(reward_means(scored)) == {f"reward/{n}" for n in task.rewards}
