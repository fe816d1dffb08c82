"""The lenient grader reads the final answer and never what follows it (strict-correct implies
lenient-correct, a property over generated completions), and the reasoning-steps count and metrics
(issue 21). Pure functions on hand-made and generated text: no model."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aha.eval import summarize
from aha.metrics import reasoning_metrics
from aha.records import CompletionRecord, completion_records, rollout_metrics
from aha.tasks import Example, Task
from aha.tasks.answers import (_NUMBER_IN_TEXT, MAX_STATEMENTS, arithmetic_steps, final_number, last_number,
                               parse_number)
from aha.tasks.gsm8k import GSM8K, lenient_correct

BASE, CHAT = GSM8K(), GSM8K(template="chat")


def _ex(gold: str, prompt: object = None) -> Example:
    return Example("x", BASE.prompt("Q?") if prompt is None else prompt, gold)


# ---------------------------------------------------------------------------- the final answer

@pytest.mark.parametrize("text, expected", [
    ("<answer>15</answer>\n\nUser: and 3 + 4? 7", "15"),  # text after the answer block is never read
    ("<answer>15 apples</answer> 99", "15"),  # a block that is not one number: the last number inside it
    ("<answer>x = 3 + 4 = 7</answer>", "7"),
    ("<answer>none</answer> 42", None),  # a block without a number: no answer, not the 42 after it
    ("so the sum is \u22123", "-3"),  # no block: the last number; U+2212 is a minus sign, as for strict
    ("10-3", "3"),  # a hyphen after a digit is an operator, not a sign
    ("x = -3", "-3"),
    ("it is 1,234.", "1234"),
    ("<answer>1</answer> <answer>2", "1"),  # an unclosed trailing block (truncated) is ignored
    ("no number", None),
    ("7" * 5000, None),  # longer than any number parse_number reads
])
def test_final_number(text, expected):
    assert final_number(text) == expected


def test_final_number_reads_the_block_of_prefill_and_completion_and_the_completion_alone_otherwise():
    assert final_number("18</answer>", prefill="<answer>") == "18"  # the block strict grading reads
    assert final_number("no number", prefill="The sum of 3 and 5 is") is None  # the prompt's numbers are not answers


def test_the_demo_failure_is_lenient_correct_now():
    """The issue's case: right in the block, then more text with numbers (strict right, lenient was wrong)."""
    ex = _ex("13")
    text = "6 + 7 = 13\n</think>\n<answer>\n13\n</answer>\nUser: 4 + 9 = ?\nAssistant: 4 + 9 = 12"
    assert BASE.is_correct(text, ex) and BASE.is_correct_lenient(text, ex)


def test_last_number_reads_only_the_end_but_agrees_with_a_full_scan():
    def full_scan(text: str) -> str | None:
        found = _NUMBER_IN_TEXT.findall(text)
        return parse_number(found[-1]) if found else None

    for text in ["1," + "234," * 200 + "567", "1" * 399 + " 5", "-" + "9" * 99, "a" * 10_000 + "-12.5 b",
                 "9" * 1_000_000, "12,345,678", "1,2345"]:
        assert last_number(text) == full_scan(text), text[:40]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(["1", "2", "0", ",", ".", "-", "\u2212", " ", "a", "123,", "456", "9" * 60]),
                max_size=400).map("".join))
def test_last_number_agrees_with_a_full_scan_on_generated_text(text):
    found = _NUMBER_IN_TEXT.findall(text)
    assert last_number(text) == (parse_number(found[-1]) if found else None)


# ---------------------------------------------------------------------------- strict => lenient

def _written(gold: int, cents: int, style: tuple[bool, bool, str, bool, str]) -> str:
    """`gold + cents/100` written as a reader would accept it: a minus or U+2212, a "+", "$" before or
    after the sign, thousands commas, a trailing ".", whitespace - each a form `parse_number` reads,
    so strict grading accepts it."""
    unicode_minus, plus, dollar, commas, pad = style
    digits = f"{abs(gold):,}" if commas else str(abs(gold))
    if cents:
        digits += f".{cents:02d}"
    elif plus:  # "18." ends a sentence: still 18
        digits += "."
    sign = ("\u2212" if unicode_minus else "-") if gold < 0 else ("+" if plus else "")
    body = {"none": sign + digits, "before": f"${sign}{digits}", "after": f"{sign}${digits}"}[dollar]
    return pad + body + pad


# Text around the answer: tags, numbers, equations, junk. A suffix never holds "/", so it cannot
# close another answer block: the answer block built below stays the last one.
PIECES = ["<think>", "</think>", "<answer>", "\n", " ", "18", "-3", "\u22127", "=", "+", "*", "1,000", ".", "$",
          "User: ", "Assistant: ", "wait"]
text_around = st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=40).map("".join)
suffix = st.lists(st.sampled_from(PIECES) | st.text(alphabet=st.characters(blacklist_characters="/"), max_size=6),
                  max_size=40).map("".join)
styles = st.tuples(st.booleans(), st.booleans(), st.sampled_from(["none", "before", "after"]), st.booleans(),
                   st.sampled_from(["", " ", "\n", " \n"]))
PREFILLED = [None, CHAT.prompt("Q?"), "Question?\nAssistant: ",
             "Question?\nAssistant: <think>\n3 + 4 = 7\n</think>\n<answer>"]


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(-10**7, 10**7), st.integers(0, 99), styles, text_around, suffix, st.sampled_from(PREFILLED))
def test_a_right_answer_block_is_right_for_both_graders_whatever_surrounds_it(gold, cents, style, before, after,
                                                                              prompt):
    ex = _ex(str(parse_number(f"{gold}.{cents:02d}")), prompt)
    opened = prompt is not None and isinstance(prompt, str) and prompt.endswith("<answer>")
    block = ("" if opened else "<answer>") + _written(gold, cents, style) + "</answer>"
    completion = ("" if opened else before) + block + after
    assert BASE.is_correct(completion, ex)  # by construction: the generator writes only valid answers
    assert BASE.is_correct_lenient(completion, ex) and lenient_correct(completion, ex)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES + ["</answer>", "<answer>18</answer>", "<answer>\u22123</answer>"])
                | st.text(max_size=6), max_size=60).map("".join), st.sampled_from(["18", "-3", "1000", "-7"]),
       st.sampled_from(PREFILLED))
def test_strict_correct_implies_lenient_correct_on_any_text(text, gold, prompt):
    ex = _ex(gold, prompt)
    assert not BASE.is_correct(text, ex) or BASE.is_correct_lenient(text, ex)
    steps = BASE.reasoning_steps(text, ex)
    assert isinstance(steps, int) and steps >= 0


# ---------------------------------------------------------------------------- reasoning steps

@pytest.mark.parametrize("text, final, steps", [
    ("3 + 5 = 8\n8 + 7 = 15", "15", 1),  # the example: one intermediate result
    ("3 + 5 + 7 = 15", "15", 0),  # straight to the answer
    ("2 * 3 = 6 + 1 = 7", "7", 1),  # a chain holds two statements; 6 is intermediate
    ("2 * 3 = 6 + 1 = 7", None, 2),  # no final answer: every statement counts
    ("12 x 3 = 36\n36 \u00f7 4 = 9", "9", 1),  # x and the typographic signs are operators
    ("9 \u2212 4 = 5, 5 \u00d7 2 = 10", "10", 1),
    ("5 + -3 = 2\n2 + 1 = 3", "3", 1),
    ("8 = 8", "1", 0),  # no operator: not a computation
    ("1 + 1 = 2\n</think>\n<answer>\n4 + 4 = 8\n</answer>", "99", 1),  # only before the first <answer>
    ("3 + 5 = 8.0", "8", 0),  # compared as numbers
    ("3 + 5 = 8 apples, then 8 + 1 = 9 pears", "9", 1),
    ("1,000 + 500 = 1,500\n1,500 * 2 = 3,000", "3000", 1),
    ("no arithmetic here", "5", 0),
    ("3 +\n5 = 8", "0", 0),  # a statement sits on one line
])
def test_arithmetic_steps(text, final, steps):
    assert arithmetic_steps(text, final) == steps


def test_arithmetic_steps_is_bounded_on_hostile_text():
    assert arithmetic_steps("1+1=2\n" * 100_000, "3") == MAX_STATEMENTS
    for text in ["1=" * 500_000, "=" * 1_000_000, "9" * 1_000_000, "1 + " * 250_000, "<answer>" * 20_000]:
        assert 0 <= arithmetic_steps(text, "1") <= MAX_STATEMENTS


def test_number_answer_task_counts_steps_with_its_prefill_and_final_answer():
    ex = _ex("15")
    assert BASE.reasoning_steps("3 + 5 = 8\n8 + 7 = 15\n</think>\n<answer>\n15\n</answer>", ex) == 1
    assert BASE.reasoning_steps("3 + 5 + 7 = 15\n</think>\n<answer>\n15\n</answer>", ex) == 0
    # the final answer is the block's, even when a later line says otherwise
    assert BASE.reasoning_steps("3 + 5 = 8\n</think>\n<answer>8</answer> 8 + 7 = 15", ex) == 0
    assert Task().reasoning_steps("3 + 5 = 8", ex) is None  # a task without steps says so


# ---------------------------------------------------------------------------- the metrics

def test_reasoning_metrics():
    m = reasoning_metrics([0, 2, 1, 0], [False, True, False, True])
    assert m == {"steps_share": 0.5, "steps_mean": 0.75, "accuracy_with_steps": 0.5, "accuracy_without_steps": 0.5}
    none_with = reasoning_metrics([0, 0], [True, False])
    assert none_with["steps_share"] == 0 and math.isnan(none_with["accuracy_with_steps"])
    assert none_with["accuracy_without_steps"] == 0.5
    assert reasoning_metrics([None, None], [True, False]) == {}  # the task defines no steps


def test_step_records_carry_the_steps_and_the_step_metrics_summarise_them():
    exs = [_ex("15")] * 3
    texts = ["3 + 5 = 8\n8 + 7 = 15\n</think>\n<answer>\n15\n</answer>",
             "3 + 5 + 7 = 15\n</think>\n<answer>\n15\n</answer>",
             "3 + 5 = 8\n</think>\n<answer>\n8\n</answer>"]
    records = completion_records(BASE, exs, texts, [BASE.score(t, e) for t, e in zip(texts, exs)], [9, 8, 7],
                                 [False] * 3)
    assert [r.steps for r in records] == [1, 0, 0]
    assert records[0].logged()["steps"] == 1
    m = rollout_metrics(records)
    assert m["steps_share"] == pytest.approx(1 / 3) and m["accuracy_with_steps"] == 1.0
    assert m["accuracy_without_steps"] == 0.5
    plain = CompletionRecord("p", "x", 0.0, {}, True, True, 1, False, "x")  # a task without steps
    assert "steps_share" not in rollout_metrics([plain]) and "steps" not in plain.logged()


class StingyLenient(Task):
    """A user task whose lenient grader misses what its strict one accepts."""

    rewards = {"r": (lambda c, e: 0.0, 1.0)}

    def is_correct(self, completion: str, ex: Example) -> bool:
        return completion == ex.target

    def is_correct_lenient(self, completion: str, ex: Example) -> bool:
        return False

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return True


def test_eval_lenient_accuracy_is_never_below_strict():
    exs = [Example("a", "p", "yes"), Example("b", "p", "no")]
    metrics, rows = summarize(StingyLenient(), exs, ["yes", "maybe"], [1, 1], [False, False])
    assert metrics["accuracy"] == metrics["accuracy_lenient"] == 0.5
    assert rows[0]["correct_lenient"] is True and "steps_share" not in metrics


def test_eval_reports_the_steps_figures_and_lenient_at_least_strict():
    exs = [_ex("15"), _ex("15"), _ex("8")]
    texts = ["3 + 5 = 8\n8 + 7 = 15\n</think>\n<answer>\n15\n</answer>\n16",
             "3 + 5 + 7 = 16\n</think>\n<answer>\n16\n</answer>",
             "<answer>8</answer> and 8 + 1 = 9"]
    metrics, rows = summarize(BASE, exs, texts, [10, 8, 6], [False] * 3)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["accuracy_lenient"] == pytest.approx(2 / 3)
    assert metrics["steps_share"] == pytest.approx(1 / 3) and metrics["steps_mean"] == pytest.approx(1 / 3)
    assert (metrics["accuracy_with_steps"], metrics["accuracy_without_steps"]) == (1.0, 0.5)
    assert [r["steps"] for r in rows] == [1, 0, 0]


def test_property_tests_cover_the_unicode_minus():
    assert re.search("\u2212", "".join(PIECES)) and final_number("<answer>\u22123</answer>") == "-3"
