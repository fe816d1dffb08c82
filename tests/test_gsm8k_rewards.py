"""GSM8K rewards: the number rules, then each reward on literal strings."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aha.tasks import Example
from aha.tasks.gsm8k import (
    correctness_reward,
    int_reward,
    normalize_number,
    parse_gold,
    soft_format_reward,
    strict_format_reward,
    xmlcount_reward,
)

# No pre-fill (no "Assistant:" in the prompt): the completion literal is the whole judged text.
EX = Example(id="t/0", prompt="Q?", target="18")
GOOD = "<think>\n9 * 2 = 18\n</think>\n<answer>\n18\n</answer>"


def answer(text: str) -> str:
    return f"<think>\nwork\n</think>\n<answer>\n{text}\n</answer>"


# ---- numbers ----


@pytest.mark.parametrize(
    "text, want",
    [
        ("18", "18"),
        ("  18 \n", "18"),
        ("1,000", "1000"),
        ("$18", "18"),
        ("18.", "18"),
        ("18.0", "18.0"),
        ("$1,000.50", "1000.50"),
        ("-3", "-3"),
        ("$18.00", "18.00"),  # a leading $ is ignored, so this is the number 18
        ("18 dollars", None),  # units are not stripped: strict on purpose
        ("18$", None),
        ("+18", "18"),  # was None: an explicit plus sign is still the number 18
        ("eighteen", None),
        ("1e3", None),
        ("1/2", None),
        ("１８", None),  # fullwidth digits: not ASCII, not a number here
        ("١٨", None),  # Arabic-Indic digits (Decimal would accept them; we do not)
        ("", None),
        ("18\x00", None),
        ("- 3", None),
    ],
)
def test_normalize_number(text: str, want: str | None) -> None:
    assert normalize_number(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        # thousands separators: groups of exactly three digits after a first group of 1-3
        ("1,234", "1234"),
        ("12,345", "12345"),
        ("123,456,789", "123456789"),
        ("1,234.56", "1234.56"),
        ("-1,234", "-1234"),
        ("$1,234,567.5", "1234567.5"),
        ("1,2", None),
        ("12,34", None),
        ("1,23", None),
        ("1,2345", None),
        ("1234,567", None),
        ("123,4567", None),
        ("1,234,56", None),
        ("1,,234", None),
        (",123", None),
        ("123,", None),
        ("1,234,", None),
        ("0,123", None),  # a decimal comma elsewhere, never a thousands group
        ("1.234,5", None),
        ("1 234", None),
        ("1_234", None),
        ("1'234", None),
        # signs: "-", the Unicode minus sign U+2212, "+"; touching the number or the "$"
        ("+18", "18"),
        ("\u221218", "-18"),
        ("\u22121,000", "-1000"),
        ("-0", "-0"),
        ("+-18", None),
        ("--18", None),
        ("- 18", None),
        ("\u201318", None),  # en dash: not a minus sign
        ("\u201418", None),  # em dash
        ("\u2212 18", None),
        # "$": once, before the digits, before or after the sign, spaces allowed after it
        ("$ 18", "18"),
        ("$  1,000", "1000"),
        ("-$18", "-18"),
        ("$-18", "-18"),
        ("\u2212$18", "-18"),
        ("+$18", "18"),
        ("-$-18", None),
        ("$$18", None),
        ("$ -18", "-18"),
        ("$", None),
        ("18 $", None),
        # decimal point: digits after it, or one trailing "." ending a sentence
        (".5", "0.5"),
        ("-.5", "-0.5"),
        ("18.5.", "18.5"),
        ("18..", None),
        (".", None),
        ("1.2.3", None),
        ("18%", None),
        ("1/2", None),
    ],
)
def test_number_rules(text: str, want: str | None) -> None:
    assert normalize_number(text) == want


@st.composite
def _misplaced_comma(draw: st.DrawFn) -> str:
    """A number of 2-13 digits with one comma that is not at a three-digit group boundary. Built
    valid, never filtered: an `assume` on a drawn integer threw most draws away (small integers
    are Hypothesis's favourites) and failed the filter_too_much health check under load."""
    length = draw(st.integers(2, 13))
    digits = str(draw(st.integers(1, 9))) + draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    cut = draw(st.sampled_from([c for c in range(1, length) if (length - c) % 3]))  # c = length - 1 always fits
    return f"{draw(st.sampled_from(['', '-']))}{digits[:cut]},{digits[cut:]}"


@settings(max_examples=300, deadline=None)
@given(n=st.integers(-10**12, 10**12), misplaced=_misplaced_comma())
def test_thousands_commas_property(n: int, misplaced: str) -> None:
    """Property: Python's own grouping ("{:,}") always reads back as the number; a comma anywhere
    that is not a three-digit group boundary never reads as any number."""
    assert normalize_number(f"{n:,}") == str(n)
    assert normalize_number(misplaced) is None, misplaced


def test_normalize_number_refuses_huge_text_before_parsing_it(monkeypatch) -> None:
    import aha.tasks.answers as answers

    monkeypatch.setattr(answers, "_NUMBER", None)  # any parsing attempt would raise
    assert normalize_number("9" * 1_000_000) is None  # the length bound comes first (time: bench/rewards.py)


def test_parse_gold() -> None:
    assert parse_gold("so 16 - 3 = 13\n#### 18") == "18"
    assert parse_gold("#### 1,200") == "1200"
    assert parse_gold("#### -3") == "-3"
    with pytest.raises(ValueError, match="####"):
        parse_gold("no marker 18")
    with pytest.raises(ValueError):
        parse_gold("#### eighteen")


# ---- correctness ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        (answer("17"), 0.0),
        (answer("1,8"), 0.0),  # was 1.0: a comma separates thousands only, so "1,8" is not 18
        (answer("18,"), 0.0),
        (answer("+18"), 1.0),
        (answer("$ 18"), 1.0),
        (answer("$18"), 1.0),
        (answer("18."), 1.0),
        (answer("18.0"), 1.0),
        (answer("18.000"), 1.0),
        (answer("$18.00"), 1.0),
        (answer("18 dollars"), 0.0),  # units: wrong
        (answer("18.5"), 0.0),
        (answer("-18"), 0.0),
        (answer("１８"), 0.0),
        ("18", 0.0),  # no tags
        ("<answer>18</answer>", 1.0),  # no think block: still correct (format is scored apart)
        ("<answer>\n18\n", 0.0),  # never closed
        ("<answer>18</answer>\n<answer>17</answer>", 0.0),  # the last block counts
        ("<answer>17</answer>\n<answer>18</answer>", 1.0),
        ("<answer>18</answer> then <answer>17", 1.0),  # an unclosed trailing block is ignored
        (GOOD + "\nand more text", 1.0),  # text after </answer> is xmlcount's business
        ("<answer>17<answer>18</answer>", 1.0),  # the innermost, last-opened block
        ("", 0.0),
    ],
)
def test_correctness(completion: str, want: float) -> None:
    assert correctness_reward(completion, EX) == want


def test_correctness_negative_and_decimal_golds() -> None:
    neg, dec, big = (Example("t/1", "Q?", "-3"), Example("t/2", "Q?", "2.5"), Example("t/3", "Q?", "1000000"))
    assert correctness_reward(answer("-3"), neg) == 1.0
    assert correctness_reward(answer("3"), neg) == 0.0
    assert correctness_reward(answer("2.50"), dec) == 1.0
    assert correctness_reward(answer("2"), dec) == 0.0
    assert correctness_reward(answer("1,000,000"), big) == 1.0
    assert correctness_reward(answer("1000000.0"), big) == 1.0
    assert correctness_reward(answer("1000,000"), big) == 0.0
    assert correctness_reward(answer("\u22123"), neg) == 1.0  # the Unicode minus sign
    assert correctness_reward(answer("-$3"), neg) == 1.0
    assert correctness_reward(answer("+3"), neg) == 0.0
    assert correctness_reward(answer(".5"), Example("t/4", "Q?", "0.5")) == 1.0
    thousand = Example("t/5", "Q?", "1234")
    for wrong in ["12,34", "1,2,3,4", "123,4", "1.234", "1 234"]:
        assert correctness_reward(answer(wrong), thousand) == 0.0, wrong
    for right in ["1,234", "$1,234", "$ 1,234.00", "1234.", "+1,234"]:
        assert correctness_reward(answer(right), thousand) == 1.0, right


# ---- int ----


@pytest.mark.parametrize(
    "text, want",
    [
        ("18", 1.0),
        ("-3", 1.0),
        ("1,000", 1.0),
        ("1,00", 0.0),
        ("+18", 1.0),
        ("\u221218", 1.0),
        ("$18", 1.0),
        ("18.", 1.0),
        ("18.0", 0.0),
        ("18.5", 0.0),
        ("x", 0.0),
        ("", 0.0),
    ],
)
def test_int(text: str, want: float) -> None:
    assert int_reward(answer(text), EX) == want


def test_int_needs_an_answer_block() -> None:
    assert int_reward("18", EX) == 0.0
    assert int_reward("", EX) == 0.0


# ---- strict format ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        (GOOD + "\n", 1.0),  # one trailing newline allowed
        (GOOD + "\n\n", 0.0),
        ("<think>\nline 1\nline 2\n</think>\n<answer>\n18\n</answer>", 1.0),  # multi-line (gist: no DOTALL)
        ("<think>\n\n</think>\n<answer>\n\n</answer>", 1.0),  # empty parts are still the format
        ("<think>9*2</think><answer>18</answer>", 0.0),  # no newlines
        ("<think>\nx\n</think>\n\n<answer>\n18\n</answer>", 0.0),
        ("hi " + GOOD, 0.0),
        (GOOD + " bye", 0.0),
        ("<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n18\n</answer>", 0.0),  # tags twice
        ("<think>\na <answer> b\n</think>\n<answer>\n18\n</answer>", 0.0),
        ("<think>\n</think>\n<answer>\n18\n</answer>", 0.0),  # "<think>\n" and "\n</think>" overlap
        ("<answer>\n18\n</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_strict_format(completion: str, want: float) -> None:
    assert strict_format_reward(completion, EX) == want


# ---- soft format ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        ("<think>a</think><answer>b</answer>", 1.0),
        ("preamble <think>a</think> \n\t <answer>b</answer> trailing", 1.0),
        # The gist's re.match without DOTALL never matched a multi-line think block: fixed here.
        ("<think>\nline 1\nline 2\n</think>\n<answer>\n18\n</answer>", 1.0),
        ("<think>a</think> text <answer>b</answer>", 0.0),  # only whitespace between
        ("<answer>b</answer><think>a</think>", 0.0),
        ("<think>a</think><answer>b", 0.0),
        ("<think>a<answer>b</answer>", 0.0),
        ("</think><answer>b</answer><think>", 0.0),
        ("<think></think> <answer></answer>", 1.0),
        ("", 0.0),
    ],
)
def test_soft_format(completion: str, want: float) -> None:
    assert soft_format_reward(completion, EX) == want


# ---- xmlcount (raw in [0, 1]; weight 0.5) ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        (GOOD + "\n", 1.0),  # one trailing newline is free
        (GOOD + "abc", 1.0 - 3 * 0.002),
        (GOOD + "\nabc\n", 1.0 - 4 * 0.002),
        (GOOD + "x" * 10_000, 0.0),  # clamped at 0
        ("<think>\nx\n</think>\n", 0.5),
        ("<think>\n<think>\nx\n</think>\n<answer>\n18\n</answer>", 0.75),  # a tag twice earns nothing
        ("<answer>18</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_xmlcount(completion: str, want: float) -> None:
    assert xmlcount_reward(completion, EX) == pytest.approx(want)
