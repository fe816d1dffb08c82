"""Countdown task: solver, generator, rewards (and where they depart from TinyZero), splits, loaders."""

from __future__ import annotations

import itertools
import json
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from aha.tasks import Example, get_task
from aha.tasks._safe_eval import safe_eval
from aha.tasks.countdown import (
    PREFILL,
    Countdown,
    answer_reward,
    equation_reward,
    format_reward,
    generate_puzzles,
    puzzle_key,
    solve,
)

# No pre-fill (no "Assistant:" in the prompt): the completion literal is the whole judged text.
EX = Example(id="c/0", prompt="Q?", target={"nums": [3, 5, 7], "target": 22})  # 3 * 5 + 7


def ans(text: str) -> str:
    return f"<think>\nwork\n</think>\n<answer>{text}</answer>"


def uses_exactly(expr: str, nums: list[int]) -> bool:
    return sorted(int(x) for x in re.findall(r"[0-9]+", expr)) == sorted(nums)


def brute_force_solvable(nums: list[int], target: int) -> bool:
    """Independent check: repeatedly replace any two values by a combination of them."""

    def search(values: list[Fraction]) -> bool:
        if len(values) == 1:
            return values[0] == target
        for i, j in itertools.combinations(range(len(values)), 2):
            a, b, rest = values[i], values[j], [v for k, v in enumerate(values) if k not in (i, j)]
            results = [a + b, a - b, b - a, a * b] + ([a / b] if b else []) + ([b / a] if a else [])
            if any(search(rest + [r]) for r in results):
                return True
        return False

    return search([Fraction(n) for n in nums])


def brute_force_solvable_with_unary_minus(nums: list[int], target: int) -> bool:
    """The same search where any sub-expression may be negated, as answers may: values are then
    known only up to sign, and +-a op +-b gives +-|a + b|, +-|a - b|, +-|a * b|, +-|a / b|."""

    def search(values: list[Fraction]) -> bool:
        if len(values) == 1:
            return values[0] == abs(target)
        for i, j in itertools.combinations(range(len(values)), 2):
            a, b, rest = values[i], values[j], [v for k, v in enumerate(values) if k not in (i, j)]
            results = [a + b, abs(a - b), a * b] + ([a / b] if b else []) + ([b / a] if a else [])
            if any(search(rest + [r]) for r in results):
                return True
        return False

    return search([Fraction(abs(n)) for n in nums])


# ---- solver ----


def test_solve_known_puzzles() -> None:
    for nums, target in [
        ([3, 3, 8, 8], 24),
        ([25, 50, 75, 100], 7),
        ([4, 9, 3], 21),
        ([44, 19, 35], 98),
        ([1, 5, 5, 5], 24),
    ]:
        expr = solve(nums, target)
        assert expr is not None and safe_eval(expr) == target and uses_exactly(expr, nums), (nums, expr)
    assert solve([3, 3, 8, 8], 24) == "8 / (3 - 8 / 3)"  # needs a fractional intermediate
    assert solve([1, 1, 1], 100) is None
    assert solve([1, 2], 0) is None
    assert solve([0, 5], 0) is not None and solve([7], 7) == "7" and solve([7], 8) is None
    with pytest.raises(ValueError):
        solve([1] * 7, 7)


def test_solve_agrees_with_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(150):
        nums = [rng.randint(0, 12) for _ in range(rng.randint(2, 4))]
        target = rng.randint(-10, 30)
        expr = solve(nums, target)
        # The solver answers under the answer checker's rules, which allow unary minus...
        assert (expr is not None) == brute_force_solvable_with_unary_minus(nums, target), (nums, target, expr)
        assert expr is None or (safe_eval(expr) == target and uses_exactly(expr, nums))
        # ...which adds nothing for a target >= 0 (its docstring says why), only for negative ones.
        if target >= 0:
            assert (expr is not None) == brute_force_solvable(nums, target), (nums, target, expr)


# ---- generator ----


def test_generator_deterministic_per_seed_and_different_across_seeds() -> None:
    a, b, c = generate_puzzles(200, seed=1), generate_puzzles(200, seed=1), generate_puzzles(200, seed=2)
    assert a == b and a != c
    assert generate_puzzles(50, seed=1) == a[:50]  # puzzle i depends only on (seed, i)
    assert all(set(p) == {"nums", "target", "solution"} for p in a)


def test_generator_options() -> None:
    puzzles = generate_puzzles(300, seed=3, min_nums=2, max_nums=5, min_num=2, max_num=9, min_target=10, max_target=20)
    assert {len(p["nums"]) for p in puzzles} == {2, 3, 4, 5}
    assert all(2 <= n <= 9 for p in puzzles for n in p["nums"]) and all(10 <= p["target"] <= 20 for p in puzzles)
    counts = [len(p["nums"]) for p in generate_puzzles(2000, seed=4)]
    assert 0.4 < counts.count(3) / len(counts) < 0.6  # 3 and 4 numbers equally likely
    bad_options = [
        {"min_nums": 1},
        {"max_nums": 7},
        {"min_nums": 4, "max_nums": 3},
        {"min_num": 0},
        {"min_target": 9, "max_target": 1},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError):
            generate_puzzles(1, seed=0, **bad)
    with pytest.raises(TypeError):
        generate_puzzles(1, seed=0, colour="red")


@pytest.mark.slow  # ~6 s on 2 cores
def test_10k_generated_puzzles_are_solvable() -> None:
    for p in generate_puzzles(10_000, seed=123):
        nums, target = p["nums"], p["target"]
        assert 3 <= len(nums) <= 4 and all(1 <= n <= 100 for n in nums) and 1 <= target <= 100
        # The stored solution evaluates (safely, exactly) to the target using each number once...
        assert safe_eval(p["solution"]) == target and uses_exactly(p["solution"], nums), p
        # ...and the exhaustive solver finds one as well.
        found = solve(nums, target)
        assert found is not None and safe_eval(found) == target and uses_exactly(found, nums), p


# ---- rewards ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (ans("3 * 5 + 7"), 1.0),
        (ans(" 7 + 5 * 3 "), 1.0),
        (ans("(3 * 5) + 7"), 1.0),
        (ans("3 * 5 + 7.0"), 0.1),  # a decimal literal: not a correct use of the numbers
        (ans("3 * 5 + 7."), 0.1),
        (ans("35 / 5 + 15"), 0.1),  # 35 is not 3 and 5
        (ans("-(3 * -5) + 7"), 1.0),  # unary minus is allowed
        (ans("(((3 * 5))) + (7)"), 1.0),
        (ans("3 * 5 - 7"), 0.1),  # wrong value
        (ans("3 * 5 + 7 + 0"), 0.1),  # an extra number
        (ans("3 * 5 * 7 / 5 + 7 - 7"), 0.1),  # numbers reused
        (ans("15 + 7"), 0.1),  # numbers not from the puzzle
        (ans("3 * 5"), 0.1),  # a number missing
        (ans("3 * 5 + 7 = 22"), 0.1),  # "=" is not an allowed character
        (ans("x"), 0.1),
        (ans(""), 0.1),  # an (empty) answer block still earns the format score
        (ans("7 / (5 - 5)"), 0.1),
        ("3 * 5 + 7", 0.0),  # no answer block
        ("<answer>3 * 5 + 7", 0.0),  # never closed
        ("<answer>3 * 5 - 7</answer> <answer>3 * 5 + 7</answer>", 1.0),  # the last block counts
        ("<answer>3 * 5 + 7</answer> <answer>3 * 5 - 7</answer>", 0.1),
        ("<answer>3 * 5 + 7</answer> <answer>3 * 5", 1.0),  # an unclosed trailing block is ignored
        (ans("3 * 5 + 7") + " and some text after", 1.0),
        ("", 0.0),
    ],
)
def test_answer_reward(completion: str, want: float) -> None:
    assert answer_reward(completion, EX) == want


def test_answer_reward_exact_fractions() -> None:
    ex = Example("c/1", "Q?", {"nums": [3, 3, 8, 8], "target": 24})
    assert answer_reward(ans("8 / (3 - 8 / 3)"), ex) == 1.0
    assert answer_reward(ans("8 / (3 - 8 / 3) + 0.00001"), ex) == 0.1  # extra numbers
    near = Example("c/2", "Q?", {"nums": [1, 3], "target": 0})
    assert answer_reward(ans("1 / 3 - 1 / 3"), Example("c/3", "Q?", {"nums": [1, 1, 3, 3], "target": 0})) == 1.0
    assert answer_reward(ans("1 / 3"), near) == 0.1


# Deliberate departures from TinyZero's countdown.compute_score (see the module docstring).


def test_departure_power_is_rejected_without_computing_anything(monkeypatch) -> None:
    import aha.tasks._safe_eval as se

    done = []  # every arithmetic operation the evaluator performs
    counted = {op: (lambda f: lambda a, b: done.append(f) or f(a, b))(f) for op, f in se._BINOPS.items()}
    monkeypatch.setattr(se, "_BINOPS", counted)
    ex = Example("c/4", "Q?", {"nums": [9, 9, 9, 9], "target": 24})
    assert answer_reward(ans("9**9**9**9"), ex) == 0.1  # TinyZero: eval hangs
    assert done == []  # `**` is refused before any operand is evaluated (its time: bench/rewards.py)
    assert (
        answer_reward(ans("(2 ** 3) * 3"), Example("c/5", "Q?", {"nums": [2, 3, 3], "target": 24})) == 0.1
    )  # TinyZero: 1.0


def test_departure_floor_division_is_rejected() -> None:
    ex = Example("c/6", "Q?", {"nums": [7, 2, 1], "target": 4})
    assert answer_reward(ans("7 // 2 + 1"), ex) == 0.1  # TinyZero: 1.0
    assert answer_reward(ans("7 / 2 + 1 / 2"), Example("c/7", "Q?", {"nums": [7, 2, 1, 2], "target": 4})) == 1.0


def test_departure_long_answers_are_not_evaluated() -> None:
    nums = [1] * 101
    ex = Example("c/8", "Q?", {"nums": nums, "target": 101})
    expr = "+".join(["1"] * 101)  # 201 characters: correct, but over the 200-character bound
    assert len(expr) == 201 and answer_reward(ans(expr), ex) == 0.1
    ex100 = Example("c/9", "Q?", {"nums": [1] * 100, "target": 100})
    assert answer_reward(ans("+".join(["1"] * 100)), ex100) == 1.0


def test_departure_multiline_answer_block_counts() -> None:
    assert answer_reward("<think>x</think>\n<answer>\n3 * 5 + 7\n</answer>", EX) == 1.0  # TinyZero: 0.0


def test_shaping_rewards() -> None:
    assert format_reward(ans("anything"), EX) == 1.0
    assert format_reward("<think>a</think> text <answer>b</answer>", EX) == 1.0
    assert format_reward("<answer>b</answer><think>a</think>", EX) == 0.0
    assert format_reward("<think>a</think><answer>b", EX) == 0.0
    assert format_reward("", EX) == 0.0
    assert equation_reward(ans("3 * 5 + 7"), EX) == 1.0
    assert equation_reward(ans("3 * 5 - 7"), EX) == 1.0  # wrong value, right numbers
    assert equation_reward(ans("5 - 3"), EX) == 1.0  # a subset of the numbers
    assert equation_reward(ans("5 - 5"), EX) == 0.0  # 5 used twice
    assert equation_reward(ans("2 + 5"), EX) == 0.0  # 2 is not given
    assert equation_reward(ans("3 +"), EX) == 0.0
    assert equation_reward(ans(""), EX) == 0.0
    assert equation_reward("", EX) == 0.0


def test_task_rewards_score_and_metrics() -> None:
    plain, shaped = Countdown(n_train=10, n_test=5), Countdown(n_train=10, n_test=5, shaping=True)
    assert set(plain.rewards) == {"answer"}  # TinyZero-compatible by default
    assert {n: w for n, (_, w) in shaped.rewards.items()} == {"answer": 1.0, "format": 0.1, "equation": 0.1}
    total, parts = shaped.score(ans("3 * 5 + 7"), EX)
    assert parts == {"answer": 1.0, "format": 0.1, "equation": 0.1} and total == pytest.approx(1.2)
    total, parts = shaped.score(ans("3 * 5 - 7"), EX)
    assert total == pytest.approx(sum(parts.values())) == pytest.approx(0.3)
    assert plain.score(ans("3 * 5 - 7"), EX) == (0.1, {"answer": 0.1})
    assert plain.is_correct(ans("3 * 5 + 7"), EX) and not plain.is_correct(ans("3 * 5 - 7"), EX)
    assert plain.is_formatted(ans("1"), EX) and not plain.is_formatted("<answer>1</answer>", EX)


def test_base_prompt_and_prefill() -> None:
    task = Countdown(n_train=10, n_test=5)
    ex = task.examples("test")[0]
    nums, target = ex.target["nums"], ex.target["target"]
    assert f"Using the numbers {nums}, create an equation that equals {target}." in ex.prompt
    assert "<answer> (1 + 2) / 3 </answer>" in ex.prompt
    assert ex.prompt.endswith("\nAssistant: Let me solve this step by step.\n<think>")
    assert task.prefill(ex) == PREFILL
    solution = solve(nums, target)
    completion = f" I try things.\n</think>\n<answer> {solution} </answer>"
    assert task.is_correct(completion, ex) and task.is_formatted(completion, ex)
    assert not task.is_formatted(f"<answer> {solution} </answer>", ex)  # no </think>


def test_chat_prompt() -> None:
    ex = Countdown(n_train=10, n_test=5, template="chat").examples("train")[3]
    assert [m["role"] for m in ex.prompt] == ["system", "user", "assistant"]
    assert ex.prompt[-1]["content"] == PREFILL and str(ex.target["target"]) in ex.prompt[1]["content"]
    assert format_reward("x</think><answer>1</answer>", ex) == 1.0  # sees the pre-filled <think>
    with pytest.raises(ValueError, match="template"):
        Countdown(template="instruct")


# ---- examples ----


def test_splits_are_deterministic_disjoint_and_test_is_fixed() -> None:
    a, b = Countdown(n_train=300, n_test=100, seed=1), Countdown(n_train=300, n_test=100, seed=2)
    assert [e.target for e in a.examples("test")] == [e.target for e in b.examples("test")]
    assert [e.target for e in a.examples("train")] != [e.target for e in b.examples("train")]
    again = Countdown(n_train=300, n_test=100, seed=1)
    assert list(a.examples("train")) == list(again.examples("train"))
    train, test = a.examples("train"), a.examples("test")
    assert len(train) == 300 and len(test) == 100
    assert train[0].id == "countdown/train/0" and test[99].id == "countdown/test/99"
    assert train[-1] == train[299] and train[5:7] == [train[5], train[6]]
    with pytest.raises(IndexError):
        train[300]
    # Train item i is generate_puzzles(n, seed)[i] unless that puzzle is in the test set.
    test_keys = {puzzle_key(e.target["nums"], e.target["target"]) for e in test}
    assert len(test_keys) == 100  # test puzzles are unique
    for ex, p in zip(train, generate_puzzles(300, seed=1), strict=True):
        if puzzle_key(p["nums"], p["target"]) not in test_keys:
            assert ex.target == {"nums": p["nums"], "target": p["target"]}
    with pytest.raises(ValueError, match="split"):
        a.examples("val")


def test_train_never_contains_a_test_puzzle() -> None:
    # A tiny puzzle space makes collisions common, so the redraw is exercised.
    opts = {"min_nums": 2, "max_nums": 2, "max_num": 6, "min_target": 1, "max_target": 12}
    task = Countdown(n_train=400, n_test=20, **opts)
    test_keys = {puzzle_key(e.target["nums"], e.target["target"]) for e in task.examples("test")}
    collided = [p for p in generate_puzzles(400, seed=0, **opts) if puzzle_key(p["nums"], p["target"]) in test_keys]
    assert collided, "the test should exercise the redraw"
    assert all(puzzle_key(e.target["nums"], e.target["target"]) not in test_keys for e in task.examples("train"))


def test_get_task_passes_options() -> None:
    task = get_task("countdown", n_train=7, n_test=3, seed=5, min_nums=4, max_nums=4, shaping=True)
    assert isinstance(task, Countdown) and len(task.examples("train")) == 7 and "format" in task.rewards
    assert all(len(e.target["nums"]) == 4 for e in task.examples("test"))


# ---- loaders (TinyZero's data set format) ----

ROWS = [{"nums": [i, i + 1, i + 2], "target": 3 * i + 3} for i in range(1, 11)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_jsonl_single_file_is_split(tmp_path: Path) -> None:
    task = Countdown(n_train=100, n_test=3, data=_write_jsonl(tmp_path / "cd.jsonl", ROWS))
    train, test = task.examples("train"), task.examples("test")
    assert [e.target for e in test] == ROWS[-3:] and [e.target for e in train] == ROWS[:-3]
    assert test[0].id == "countdown/test/0" and "equals 27" in test[0].prompt
    assert task.is_correct(ans(f"{ROWS[0]['nums'][0]} + 2 + 3"), train[0])
    capped = Countdown(n_train=4, n_test=3, data=str(tmp_path / "cd.jsonl"))
    assert [e.target for e in capped.examples("train")] == ROWS[:4]


def test_load_parquet_and_dict(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "train.parquet")
    test = _write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    task = Countdown(n_test=1, data={"train": tmp_path / "train.parquet", "test": test})
    assert [e.target for e in task.examples("train")] == ROWS
    assert [e.target for e in task.examples("test")] == ROWS[:1]


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        Countdown(data=tmp_path / "missing.jsonl").examples("train")
    with pytest.raises(ValueError, match="target"):
        Countdown(data=_write_jsonl(tmp_path / "a.jsonl", [{"nums": [1, 2]}])).examples("train")
    with pytest.raises(ValueError, match="row 0"):
        Countdown(data=_write_jsonl(tmp_path / "b.jsonl", [{"nums": "1 2", "target": 3}])).examples("train")
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Jiayi-Pan/Countdown-Tasks-3to4"):
        Countdown(data="hub").examples("test")


def test_loaded_puzzles_need_non_negative_numbers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Countdown(data=_write_jsonl(tmp_path / "neg.jsonl", [{"nums": [-3, 2], "target": 1}])).examples("train")
