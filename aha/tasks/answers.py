"""Reading answers and numbers out of model text: the last `<answer>` block, numbers by the tasks'
one number rule (`parse_number`), the lenient final answer, and the count of intermediate results.

Pure functions of text that know nothing of examples or tasks, so the Task contract (base.py) and
the tasks' helpers (_common.py) both build on them. Everything here runs on model output of any
size, so it uses `str.find`/`rfind`/`count` (linear time, C speed) instead of regexes with lazy
`.*?`, which can take quadratic time on crafted text.
"""

from __future__ import annotations

import re
from decimal import Decimal

OPEN, CLOSE = "<answer>", "</answer>"

# Longest answer text we look at, and longest number in it: real answers are a few characters;
# anything longer is not a number and is rejected before any parsing (1 MB of digits costs nothing).
MAX_ANSWER_CHARS = 1000
MAX_NUMBER_CHARS = 100
# sign | "$" (then spaces allowed) | sign | integer part | fraction | one trailing "."; see parse_number.
_NUMBER = re.compile(
    r"(?P<sign>[-+\u2212]?)"
    r"(?:\$[ \t]*(?P<sign2>[-+\u2212]?))?"
    r"(?P<int>[1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+)?"  # thousands groups of exactly three digits
    r"(?:\.(?P<frac>[0-9]+))?"
    r"\.?",
    re.ASCII,
)


def parse_number(text: str) -> str | None:
    """`text` as a plain decimal numeral ("-3", "1000", "18.5", "0.5"), or None if it is not one number.

    The rules (README, "Tasks"), chosen so that a text counts as a number only when every reader
    would read that number:
    - surrounding whitespace is ignored;
    - a sign: "-", the Unicode minus sign U+2212 (both mean minus) or "+", touching what follows
      ("- 3" is not -3); en and em dashes are not minus signs;
    - one "$" before the digits, before or after the sign ("$18", "-$18", "$-18"), and spaces
      after it ("$ 18");
    - a comma only as a thousands separator: between groups of exactly three digits after a
      first group of 1-3 digits not starting with 0 ("1,234", "12,345,678"). "1,2", "12,34",
      "1234,567", "0,5" and "1,,234" are not numbers (not 12, 1234, ...);
    - a decimal point with digits after it ("18.5", ".5" = 0.5), and one trailing "." (the end
      of a sentence: "18." is 18);
    - nothing else: no units or words ("18 dollars", "18%"), no exponent, no fractions ("1/2"),
      no spaces, underscores or apostrophes inside the number, only ASCII digits ("１８" is not 18).
    """
    if len(text) > MAX_ANSWER_CHARS:
        return None
    text = text.strip()
    m = _NUMBER.fullmatch(text) if len(text) <= MAX_NUMBER_CHARS else None
    if m is None or (m["int"] is None and m["frac"] is None) or (m["sign"] and m["sign2"]):
        return None
    sign = "-" if (m["sign"] or m["sign2"]) in ("-", "\u2212") else ""
    whole = (m["int"] or "0").replace(",", "")
    return sign + whole + (f".{m['frac']}" if m["frac"] is not None else "")


def last_answer(text: str) -> str | None:
    """Content of the last complete `<answer>...</answer>` block (newlines allowed), else None.

    That is the last `<answer>` that has a `</answer>` after it, up to the first `</answer>`
    after it. An unclosed trailing `<answer>` (a truncated completion) is ignored, so an earlier
    closed block still counts. Linear time whatever the text.
    """
    close = text.rfind(CLOSE)
    if close < 0:
        return None
    start = text.rfind(OPEN, 0, close)
    if start < 0:
        return None
    start += len(OPEN)
    return text[start : text.find(CLOSE, start)]


# A number in running text: an optional minus sign ("-" or U+2212) that does not follow a digit or a
# letter ("10-3" is 10 then 3; "= -3" is minus three), digits with optional thousands groups,
# optional decimals. No nested ambiguity: linear to scan. What it finds is then read by
# `parse_number`, the one number rule of strict and lenient grading alike.
_NUMBER_IN_TEXT = re.compile(r"(?:(?<![0-9A-Za-z])[-\u2212])?[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?")


def last_number(text: str) -> str | None:
    """The last number written anywhere in `text`, read by `parse_number` ("1,000" -> "1000",
    "\u22123" -> "-3"), or None (no number, or the last one is not a number by that rule: longer
    than MAX_NUMBER_CHARS). Linear time."""
    # Only the end is read: the last digit (ten C-speed rfinds), and the scan of a window before it
    # that any number short enough to be read fits in. A number reaching past the window's start is
    # longer than MAX_NUMBER_CHARS, so the window's piece of it is too and is rejected alike.
    end = max(text.rfind(d) for d in "0123456789")
    if end < 0:
        return None
    start = max(0, end - 4 * MAX_NUMBER_CHARS)
    last = None
    for last in _NUMBER_IN_TEXT.finditer(text, start, end + 1):  # the sign's look-behind sees before `start`
        pass
    return parse_number(last.group()) if last is not None else None


def final_number(completion: str, prefill: str = "") -> str | None:
    """The completion's final answer as a number, the lenient reading (never text after the answer):

    - the content of the last complete `<answer>...</answer>` block of `prefill + completion`
      (the block strict grading reads) when there is one: the whole content as a number by
      `parse_number`, else the last number written inside it ("<answer>15 apples</answer>" -> 15),
      else None - text after `</answer>` is never read;
    - otherwise the last number written in the completion (the pre-fill is the prompt's text, not
      the model's, so its numbers are not answers).

    So a completion whose answer block strict grading accepts has that same number here: strict-
    correct implies lenient-correct. Never raises; linear time.
    """
    block = last_answer(prefill + completion)
    if block is not None:
        return parse_number(block) or last_number(block)
    return last_number(completion)


# A chain of arithmetic: numbers joined by operators or "=" on one line ("3 + 5 = 8", "2 x 3 = 6 + 1 = 7").
# Each repetition must consume one operator character, which no other part can match, so the
# decomposition is unique and a failed repetition backtracks only itself: linear to scan.
_NUM = r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?"
_OPS = "+-*/x\u00d7\u00f7\u2212"  # + - * / x and the typographic times, divide and minus signs
_OP_OR_EQ = "[" + re.escape(_OPS + "=") + "]"
# Possessive (`*+`): nothing follows the repetition, so giving iterations back never helps, and not
# saving backtracking state makes a 1 MB chain ~10x faster.
_CHAIN = re.compile(rf"{_NUM}(?:[ \t]*{_OP_OR_EQ}[ \t]*[-\u2212]?{_NUM})*+")
_LEADING_NUMBER = re.compile(rf"[ \t]*([-\u2212]?{_NUM})")
# Where the statement count stops: the first MAX_STEPS_CHARS characters, MAX_STATEMENTS statements.
# Real completions are far shorter; the caps bound the time on hostile text (~10 ms).
MAX_STEPS_CHARS = 100_000
MAX_STATEMENTS = 1000


def arithmetic_steps(text: str, final: str | None) -> int:
    """How many intermediate results `text` writes before its first `<answer>`: statements
    `A op B (op C ...) = R` (numbers; op one of + - * / x \u00d7 \u00f7 and U+2212; on one line) whose
    result R is not `final` (compared as numbers; with `final` None every statement counts).

    For 3 + 5 + 7 answered 15: "3 + 5 = 8\n8 + 7 = 15" is 1 step, "3 + 5 + 7 = 15" is 0 (one line
    straight to the answer). A chain "2 * 3 = 6 + 1 = 7" holds two statements (2*3=6, 6+1=7).
    Whether a statement is true is not checked: this counts what the model writes, accuracy is
    measured separately. Only the first MAX_STEPS_CHARS characters and MAX_STATEMENTS statements are
    examined. Never raises; linear time.
    """
    cut = text.find(OPEN, 0, MAX_STEPS_CHARS)
    text = text[:cut if cut >= 0 else MAX_STEPS_CHARS]
    if "=" not in text:
        return 0
    goal = _as_decimal(final)
    steps = examined = 0
    for chain in _CHAIN.findall(text):
        if "=" not in chain:
            continue
        sides = chain.split("=")
        for left, right in zip(sides, sides[1:]):
            examined += 1
            if examined > MAX_STATEMENTS:
                return steps
            # The left side must compute something: an operator after its first number.
            if not any(op in left.strip().lstrip("-\u2212") for op in _OPS):
                continue
            m = _LEADING_NUMBER.match(right)
            result = _as_decimal(parse_number(m.group(1))) if m else None
            if result is None or goal is None or result != goal:
                steps += 1
    return steps


def _as_decimal(number: str | None) -> Decimal | None:
    """A `parse_number` string as a Decimal (exact comparison), or None."""
    return Decimal(number) if number is not None else None
