"""Countdown answers: the safe evaluator, and one view of the answer - the literals the evaluator
sees are the numbers used (property tests against brute-force search)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aha.tasks import Example
from aha.tasks._safe_eval import safe_eval
from aha.tasks.countdown import Countdown, answer_reward, equation_reward, solve


def ans(text: str) -> str:
    return f"<think>\nwork\n</think>\n<answer>{text}</answer>"


# ---- safe evaluator ----


@pytest.mark.parametrize(
    "expr, want",
    [
        ("1 + 2", 3),
        ("(1 + 2) / 3", 1),
        ("8 / (3 - 8 / 3)", 24),  # exact: a float evaluation gives 23.999999999999996
        ("0.1 * 3", None),  # decimal literals are not allowed: answers combine the given integers
        ("1.4 * 5", None),  # ...so a "." cannot glue two given numbers into one operand
        ("7.0", None),
        ("1.", None),
        ("-3 + +5", 2),
        ("  7  ", 7),
        ("(1 +\n 2)", 3),
        ("1 / 0", None),  # division by zero: not valid, not a crash
        ("1 / (2 - 2)", None),
        ("2 ** 3", None),  # TinyZero's eval allows **; we do not
        ("9**9**9**9", None),  # ...and it hangs TinyZero
        ("7 // 2", None),  # TinyZero's eval allows floor division; we do not
        ("7 % 2", None),
        ("1e308*1e308", None),  # "e" is not an allowed character
        ("abs(-1)", None),
        ("x", None),
        ("__import__('os')", None),
        ("1 2", None),
        ("0100", None),  # a Python syntax error, as in TinyZero
        ("١٨", None),
        ("", None),
        ("()", None),
        ("9" * 201, None),  # over the length bound: not evaluated at all
    ],
)
def test_safe_eval(expr: str, want: Fraction | int | None) -> None:
    assert safe_eval(expr) == want


def test_safe_eval_survives_parser_limits_without_the_length_bound() -> None:
    # ast.parse raises SyntaxError / MemoryError / RecursionError on deep nesting; all are caught.
    for expr in ["(" * 10_000 + "1" + ")" * 10_000, "-" * 100_000 + "1"]:
        assert safe_eval(expr, max_chars=10**6) is None  # (its time: bench/rewards.py)
    assert safe_eval("-" * 500 + "1", max_chars=10**6) is None  # past our own AST depth bound
    assert safe_eval("-" * 100 + "1") == 1
    assert safe_eval("(" * 99 + "1" + ")" * 99) == 1  # parentheses make no AST nodes
    assert safe_eval("+".join(["1"] * 100)) == 100  # a 99-deep chain within 200 characters


# ---- one view of the answer: the literals the evaluator sees are the numbers used ----


def test_evaluate_returns_the_literals_it_evaluates() -> None:
    from aha.tasks._safe_eval import evaluate

    assert evaluate("(3 + 5) * -7") == (Fraction(-56), [3, 5, 7])
    assert evaluate("35 / 5") == (Fraction(7), [35, 5])
    assert evaluate("1.4 * 5") is None and evaluate("1 . 4") is None and evaluate(".5 + 1") is None
    assert evaluate("00 + 1") == (Fraction(1), [0, 1])  # "00" is Python's literal 0
    assert evaluate("True + 1") is None and evaluate("1j") is None


def test_a_decimal_point_never_glues_numbers() -> None:
    """The issue's case: [1, 4, 5] -> 7 has no solution; `1.4 * 5` used to score 1.0 and count as correct."""
    ex = Example("c/glue", "Q?", {"nums": [1, 4, 5], "target": 7})
    assert solve([1, 4, 5], 7) is None
    shaped = Countdown(n_train=1, n_test=1, shaping=True)
    for text in ["1.4 * 5", "5 * 1.4", "(1.4) * 5", "14 / 2 * 1", "5 + 1.4 / 1.4 + 1", "7", "7.0 + 0 * 1 * 4 * 5"]:
        completion = ans(text)
        assert answer_reward(completion, ex) == 0.1, text
        assert not shaped.is_correct(completion, ex), text
        assert shaped.score(completion, ex)[1]["answer"] == 0.1, text
    assert equation_reward(ans("1.4 * 5"), ex) == 0.0  # shaping reads the same literals
    assert equation_reward(ans("1 * 4 + 5"), ex) == 1.0 and answer_reward(ans("1 * 4 + 5"), ex) == 0.1


def test_unary_minus_and_negative_targets_agree_with_the_solver() -> None:
    ex = Example("c/neg", "Q?", {"nums": [2, 3], "target": -5})
    assert solve([2, 3], -5) == "-(2 + 3)"
    assert answer_reward(ans(solve([2, 3], -5)), ex) == 1.0
    assert answer_reward(ans("-2 - 3"), ex) == 1.0
    assert solve([2, 3], -7) is None  # -7 and 7 are both out of reach


_ANSWER_CHARS = "0123456789.+-*/() "


@st.composite
def _unsolvable_puzzle(draw: st.DrawFn) -> tuple[list[int], int]:
    nums = draw(st.lists(st.integers(0, 25), min_size=1, max_size=4))
    target = draw(st.integers(-60, 400))
    assume(solve(nums, target) is None)
    return nums, target


@st.composite
def _answer_over(draw: st.DrawFn, nums: list[int]) -> str:
    """Answer-like strings built from the puzzle's own numbers, glued by operators, "." or nothing,
    with stray digits, unary minus and parentheses: the texts most likely to fool a checker."""
    pieces = [str(n) for n in draw(st.permutations(nums))]
    pieces += draw(st.lists(st.from_regex(r"[0-9]{1,3}", fullmatch=True), max_size=2))
    out = ""
    for i, piece in enumerate(pieces):
        if i:
            out += draw(st.sampled_from([" + ", " - ", " * ", " / ", "+", "-", "*", "/", ".", "", " ", "*-"]))
        out += draw(st.sampled_from(["", "", "(", "-", "-(", "(("])) + piece + draw(st.sampled_from(["", "", ")", "))", ".", ".0"]))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data(), puzzle=_unsolvable_puzzle())
def test_no_answer_solves_an_unsolvable_puzzle(data: st.DataObject, puzzle: tuple[list[int], int]) -> None:
    """Property: when the solver proves a puzzle has no solution, no answer over digits, ".",
    operators, parentheses and spaces is correct, for the answer reward, is_correct and score."""
    nums, target = puzzle
    ex = Example("c/prop", "Q?", {"nums": nums, "target": target})
    task = Countdown(n_train=1, n_test=1, shaping=True)
    texts = [data.draw(st.text(_ANSWER_CHARS, max_size=40)), data.draw(_answer_over(nums))]
    for text in texts:
        completion = ans(text)
        assert answer_reward(completion, ex) == 0.1, (nums, target, text)
        assert not task.is_correct(completion, ex), (nums, target, text)
        assert task.score(completion, ex)[1]["answer"] == 0.1


@settings(max_examples=300, deadline=None)
@given(data=st.data(), nums=st.lists(st.integers(0, 25), min_size=1, max_size=4), target=st.integers(-60, 400))
def test_every_correct_answer_is_a_solution(data: st.DataObject, nums: list[int], target: int) -> None:
    """Property, the other way round: any answer scored correct evaluates to the target, uses exactly
    the puzzle's numbers, and the puzzle is one the solver solves; the shaping reward agrees."""
    from aha.tasks._safe_eval import evaluate

    ex = Example("c/prop2", "Q?", {"nums": nums, "target": target})
    for text in [data.draw(st.text(_ANSWER_CHARS, max_size=40)), data.draw(_answer_over(nums))]:
        parsed = evaluate(text)
        if answer_reward(ans(text), ex) == 1.0:
            assert parsed is not None and parsed[0] == target and sorted(parsed[1]) == sorted(nums)
            assert solve(nums, target) is not None, (nums, target, text)
        if equation_reward(ans(text), ex) == 1.0:
            assert parsed is not None and all(parsed[1].count(n) <= nums.count(n) for n in parsed[1])


def _lenient_value(text: str) -> Fraction | None:
    """The value a checker that accepts decimal literals would give (TinyZero's `eval`, exactly)."""
    import ast

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(ast.get_source_segment(source, node) or str(node.value))
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = walk(node.left), walk(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(
                node.op, ast.Div) else a / b
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -walk(node.operand) if isinstance(node.op, ast.USub) else walk(node.operand)
        raise ValueError(type(node).__name__)

    source = text.strip()
    try:
        return walk(ast.parse(source, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


@st.composite
def _glued_answer(draw: st.DrawFn) -> tuple[list[int], str]:
    """(nums, answer) where the answer reads two of the numbers as one decimal, x.y, scaled by a
    third number to an integer ("1.4 * 5" with [1, 4, 5]), plus maybe a fourth; or where it is a
    free mix of the numbers (`_answer_over`)."""
    if draw(st.booleans()):
        nums = draw(st.lists(st.integers(1, 12), min_size=2, max_size=4))
        return nums, draw(_answer_over(nums))
    x, y = draw(st.integers(0, 20)), draw(st.integers(1, 9))
    c = 10 // math.gcd(y, 10) * draw(st.integers(1, 3))
    text = draw(st.sampled_from([f"{x}.{y} * {c}", f"{c} * {x}.{y}", f"({x}.{y}) * {c}", f"{c} / (1 / {x}.{y})"]))
    nums = [x, y, c]
    if draw(st.booleans()):
        e = draw(st.integers(1, 12))
        text, nums = text + draw(st.sampled_from([f" + {e}", f" - {e}"])), nums + [e]
    return draw(st.permutations(nums)), text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(glued=_glued_answer())
def test_puzzles_made_from_glued_answers(glued: tuple[list[int], str]) -> None:
    """Property aimed at the glue: the puzzle's target is the value of an answer built from its own
    numbers with "." allowed (as TinyZero's `eval` reads it). When the solver proves that puzzle
    has no solution, the answer that defined it is not correct."""
    nums, text = glued
    value = _lenient_value(text)
    assume(value is not None and value.denominator == 1)
    target = int(value)
    assume(solve(nums, target) is None)
    ex = Example("c/glued", "Q?", {"nums": nums, "target": target})
    assert answer_reward(ans(text), ex) == 0.1, (nums, target, text)
    assert not Countdown(n_train=1, n_test=1).is_correct(ans(text), ex)
