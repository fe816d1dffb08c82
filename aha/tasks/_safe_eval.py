"""A safe, exact evaluator for Countdown answers: + - * / on integers, with parentheses.

TinyZero checks the characters with a regex and then calls Python's `eval`. That regex lets
`**` and `//` through, so `9**9**9**9` hangs the reward (and `7//2` counts as arithmetic).
Here, in order, each step bounding the next one's cost:
1. at most MAX_CHARS characters, only ASCII digits, whitespace, `+ - * / ( )`;
2. `ast.parse(mode="eval")`, which can still raise SyntaxError (also for nesting past ~200
   parentheses), MemoryError or RecursionError on pathological nesting: all mean "not valid";
3. an AST walk that allows only int literals, BinOp with + - * /, unary - and +, with a
   depth bound; every value is an exact Fraction (no float rounding), with a size bound.

The walk also returns the integer literals it evaluated: they are the numbers the answer
uses, so the number check and the value come from one reading of the answer. (TinyZero reads
the numbers with a digit regex and the value with `eval`: two views that disagree when a `.`
glues two given numbers into one decimal operand, "1.4 * 5" = 7 with 1, 4 and 5.) Decimal
literals are therefore not allowed at all: a Countdown answer combines the given integers.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

MAX_CHARS = 200
MAX_DEPTH = 200  # >= any depth MAX_CHARS allows ("1+1+...+1" is ~100 deep); guards larger max_chars
MAX_BITS = 2048  # numerator/denominator size bound; unreachable for 200 chars, kept as a guard
_ALLOWED = re.compile(r"[0-9+\-*/()\s]*", re.ASCII)  # re.ASCII: \s and digits stay ASCII; no "."
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,  # Fraction / 0 raises ZeroDivisionError -> not valid
}


class _Invalid(Exception):
    """The expression uses something we do not allow."""


def evaluate(expr: str, max_chars: int = MAX_CHARS) -> tuple[Fraction, list[int]] | None:
    """(exact value, the integer literals in evaluation order) of an allowed arithmetic
    expression, or None if it is not a valid, allowed one. Never raises; bounded time."""
    if len(expr) > max_chars or not _ALLOWED.fullmatch(expr):
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    literals: list[int] = []
    try:
        return _eval(tree.body, literals, 0), literals
    except (_Invalid, ZeroDivisionError):
        return None


def safe_eval(expr: str, max_chars: int = MAX_CHARS) -> Fraction | None:
    """Exact value of an allowed arithmetic expression (see `evaluate`), or None."""
    result = evaluate(expr, max_chars)
    return None if result is None else result[0]


def _eval(node: ast.AST, literals: list[int], depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise _Invalid("too deep")
    if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool, float or complex
        literals.append(node.value)
        value = Fraction(node.value)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        value = _BINOPS[type(node.op)](_eval(node.left, literals, depth + 1), _eval(node.right, literals, depth + 1))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _eval(node.operand, literals, depth + 1)
        value = -operand if isinstance(node.op, ast.USub) else operand
    else:
        raise _Invalid(type(node).__name__)
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Invalid("too large")
    return value
