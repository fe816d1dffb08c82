"""Countdown puzzles: an exhaustive exact solver and a seeded generator of solvable puzzles.

The public entry points are re-exported by `aha.tasks.countdown` (`solve`, `generate_puzzles`).
The generator builds a random expression over random numbers and keeps it when its value is an
integer in the target range, so every puzzle is solvable by construction and the expression is
its stored solution; tests check 10,000 of them with `solve`. (TinyZero's `gen_dataset`
draws the numbers and the target independently, with no solvability check.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

# ---- solver ----

Value = int | Fraction  # exact; ints while integral, which keeps the arithmetic fast
Node = Any  # an int leaf, or (op, left Node, right Node)
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _norm(v: Value) -> Value:
    return v.numerator if type(v) is Fraction and v.denominator == 1 else v


def _div(a: Value, b: Value) -> Value:
    return _norm(Fraction(a, b) if type(a) is int and type(b) is int else a / b)


def _splits(nums: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each unordered split of a sorted multiset into two non-empty parts, once."""
    n, seen, out = len(nums), set(), []
    for mask in range(1, (1 << n) - 1, 2):  # bit 0 always on the left: {A, B} == {B, A}
        left = tuple(nums[i] for i in range(n) if mask >> i & 1)
        if left not in seen:
            seen.add(left)
            out.append((left, tuple(nums[i] for i in range(n) if not mask >> i & 1)))
    return out


def _reachable(nums: tuple[int, ...], memo: dict) -> dict[Value, Node]:
    """Every value an expression using each of `nums` exactly once can take -> one such expression."""
    if nums in memo:
        return memo[nums]
    out: dict[Value, Node] = {nums[0]: nums[0]} if len(nums) == 1 else {}
    for left, right in _splits(nums):
        right_values = _reachable(right, memo).items()
        for a, na in _reachable(left, memo).items():
            for b, nb in right_values:
                for v, node in (
                    (a + b, ("+", na, nb)),
                    (a * b, ("*", na, nb)),
                    (a - b, ("-", na, nb)),
                    (b - a, ("-", nb, na)),
                ):
                    out.setdefault(v, node)
                if b:
                    out.setdefault(_div(a, b), ("/", na, nb))
                if a:
                    out.setdefault(_div(b, a), ("/", nb, na))
    memo[nums] = out
    return out


def _partners(a: Value, t: Value, other: dict[Value, Node]) -> tuple[str, bool, Value] | None:
    """An op and a value b in `other` such that `a op b` (or `b op a` if flipped) equals t."""
    candidates: list[tuple[str, bool, Value]] = [("+", False, t - a), ("-", False, a - t), ("-", True, t + a)]
    if a:
        candidates += [("*", False, _div(t, a)), ("/", True, t * a)]
    if t:
        candidates.append(("/", False, _div(a, t)))
    for op, flipped, b in candidates:
        if b in other and (op != "/" or flipped or b):
            return op, flipped, b
    if not t and not a:  # 0 = 0 * b for any b
        return "*", False, next(iter(other))
    return None


def solve(nums: list[int], target: int) -> str | None:
    """One expression using each number exactly once with + - * / and parentheses that equals
    `target` exactly, or None if there is none. Exhaustive over all expression trees (rational
    intermediates allowed), memoized on sub-multisets: under 1 ms for 4 numbers, ~15 ms for 5;
    cost grows fast, so more than 6 numbers is refused.

    The answer checker also allows unary minus. For non-negative numbers that reaches exactly the
    values v and -v for v reachable without it (a negative sub-expression A - B turns into B - A,
    and so on up the tree), so unary minus matters only for a negative target, where the solver
    tries `-(expression for -target)`: "no solution" here means no answer can score."""
    if not 1 <= len(nums) <= 6:
        raise ValueError(f"solve takes 1 to 6 numbers, got {len(nums)}")
    found = _solve(tuple(sorted(nums)), target)
    if found is None and target < 0 and min(nums) >= 0:
        negated = _solve(tuple(sorted(nums)), -target)
        return None if negated is None else f"-({negated})"
    return found


def _solve(key: tuple[int, ...], target: int) -> str | None:
    if len(key) == 1:
        return _format(key[0]) if key[0] == target else None
    memo: dict = {}
    # Top level: instead of enumerating every value of the whole set, look up for each value
    # `a` of the smaller side the partner `b` that would give the target (early exit).
    for left, right in _splits(key):
        small, big = _reachable(left, memo), _reachable(right, memo)
        if len(small) > len(big):
            small, big = big, small
        for a, na in small.items():
            hit = _partners(a, target, big)
            if hit:
                op, flipped, b = hit
                return _format((op, big[b], na) if flipped else (op, na, big[b]))
    return None


def _format(node: Node, parent: str = "", right: bool = False) -> str:
    """Infix text with only the parentheses needed (exact arithmetic, so a*(b/c) = a*b/c)."""
    if not isinstance(node, tuple):
        return f"({node})" if node < 0 else str(node)
    op, left, rhs = node
    text = f"{_format(left, op)} {op} {_format(rhs, op, right=True)}"
    if parent and (_PREC[op] < _PREC[parent] or (right and _PREC[op] == _PREC[parent] and parent in "-/")):
        return f"({text})"
    return text


# ---- generator ----


@dataclass(frozen=True)
class PuzzleOptions:
    min_nums: int = 3
    max_nums: int = 4
    min_num: int = 1
    max_num: int = 100
    min_target: int = 1
    max_target: int = 100

    def __post_init__(self) -> None:
        if not 2 <= self.min_nums <= self.max_nums <= 6:
            raise ValueError(f"need 2 <= min_nums <= max_nums <= 6, got {self.min_nums}, {self.max_nums}")
        if not 1 <= self.min_num <= self.max_num:
            raise ValueError(f"need 1 <= min_num <= max_num, got {self.min_num}, {self.max_num}")
        if self.min_target > self.max_target:
            raise ValueError(f"need min_target <= max_target, got {self.min_target}, {self.max_target}")


# 6-13% of random expressions land in the default target range: 100k tries run out only when
# the options make a new puzzle (nearly) impossible, and then we say so instead of looping.
MAX_TRIES = 100_000


def _random_expression(nums: list[int], rng: random.Random) -> tuple[Value, Node]:
    if len(nums) == 1:
        return nums[0], nums[0]
    k = rng.randint(1, len(nums) - 1)
    (a, na), (b, nb) = _random_expression(nums[:k], rng), _random_expression(nums[k:], rng)
    op = rng.choice("+-*/" if b else "+-*")
    if op == "/":
        value = _div(a, b)
    else:  # normalized, so that 1/2 + 1/2 counts as the integer 1
        value = _norm(a + b if op == "+" else a - b if op == "-" else a * b)
    return value, (op, na, nb)


def draw_puzzle(rng: random.Random, opts: PuzzleOptions, exclude: set | frozenset = frozenset()) -> dict:
    """Random numbers and a random expression over them, until its value is an integer target
    in range (so the puzzle is solvable by construction) and the puzzle is not in `exclude`."""
    # The count is drawn once: redrawing it on each try would favour counts that hit the range
    # more often (3 numbers over 4, about 2:1 by default).
    count = rng.randint(opts.min_nums, opts.max_nums)
    for _ in range(MAX_TRIES):
        nums = [rng.randint(opts.min_num, opts.max_num) for _ in range(count)]
        # Build on a shuffled copy: otherwise the solution would use the numbers in the order
        # the prompt lists them, a regularity a policy could learn instead of arithmetic.
        order = rng.sample(nums, len(nums))
        value, node = _random_expression(order, rng)
        if (
            type(value) is int
            and opts.min_target <= value <= opts.max_target
            and puzzle_key(nums, value) not in exclude
        ):
            return {"nums": nums, "target": value, "solution": _format(node)}
    raise ValueError(
        f"no new puzzle with a target in [{opts.min_target}, {opts.max_target}] after {MAX_TRIES} tries: {opts}"
    )


def puzzle_key(nums: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    """Identity of a puzzle: the multiset of numbers and the target."""
    return tuple(sorted(nums)), target


def generate_puzzles(n: int, seed: int, **opts: int) -> list[dict]:
    """`n` solvable puzzles {"nums", "target", "solution"}; puzzle i depends only on (seed, i, opts).

    Options: min_nums, max_nums (3, 4), min_num, max_num (1, 100), min_target, max_target (1, 100).
    """
    options = PuzzleOptions(**opts)
    return [draw_puzzle(random.Random(f"countdown/{seed}/{i}"), options) for i in range(n)]
