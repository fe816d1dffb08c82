from aha.tasks import get_task
from aha.tasks.arith import TEMPLATES, _draw

import random


def test_arith_examples_are_deterministic_disjoint_and_correct():
    t = get_task("arith", n_train=500, n_test=50)
    train, test = t.examples("train"), t.examples("test")
    assert len(train) == 500 and len(test) == 50
    assert [e.prompt for e in get_task("arith", n_train=500, n_test=50).examples("train")] == [e.prompt for e in train]
    assert not {e.prompt[1]["content"] for e in train} & {e.prompt[1]["content"] for e in test}
    assert [e.prompt for e in get_task("arith", seed=1, n_train=50).examples("train")] != [e.prompt for e in train[:50]]


def test_arith_answers_are_positive_integers_for_every_template():
    rng = random.Random(0)
    seen = set()
    for _ in range(2000):
        q, a = _draw(rng)
        assert int(a) > 0
        seen.add(next(i for i, (tpl, _) in enumerate(TEMPLATES) if tpl.split("{")[0] in q or True))
    assert seen


def test_arith_uses_gsm8k_rewards_with_the_prefill():
    t = get_task("arith", n_train=10, n_test=5)
    ex = t.examples("test")[0]
    right = f"add them\n</think>\n<answer>\n{ex.target}\n</answer>"
    total, parts = t.score(right, ex)
    assert parts == {"correctness": 2.0, "int": 0.5, "strict_format": 0.5, "soft_format": 0.5, "xmlcount": 0.5}
    assert total == 4.0 and t.is_correct(right, ex) and t.is_formatted(right, ex)
    wrong = "no idea"
    assert not t.is_correct(wrong, ex) and not t.is_formatted(wrong, ex)
    base = get_task("arith", template="base", n_train=1, n_test=1).examples("test")[0]
    assert isinstance(base.prompt, str) and base.prompt.endswith("Assistant: <think>\n")


def test_sums_are_held_out_by_problem_and_the_example_never_answers_the_question():
    from aha.tasks.arith import all_sums

    t = get_task("arith", problems="sums", prompt_style="example", n_train=2000, n_test=200)
    train, test = t.examples("train"), t.examples("test")
    assert len(train) == 2000 and len(test) == 200 and len(all_sums(20)) == 441 + 231
    question = lambda e: e.prompt[1]["content"]  # noqa: E731
    assert not {question(e) for e in train} & {question(e) for e in test}
    assert len({question(e) for e in test}) == 200
    for e in train[:300] + list(test):
        q = question(e)  # "What is a op b?"
        a, op, b = q.removeprefix("What is ").removesuffix("?").split()
        assert int(e.target) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        system = e.prompt[0]["content"]
        shown = system.split('For example, for "What is ')[1].split("?")[0]
        assert shown.split()[1] != op  # the worked example uses the other operation
        assert f"<answer>\n{e.target}\n</answer>" not in system  # and copying its answer is never right
    # same seed, same split; another seed, another split
    assert [question(e) for e in get_task("arith", problems="sums", n_test=200).examples("test")] == \
        [question(e) for e in test]
    assert [question(e) for e in get_task("arith", problems="sums", seed=1).examples("test")] != \
        [question(e) for e in test]


def test_arith_weights_and_lenient_grader():
    t = get_task("arith", problems="sums", weights={"soft_format": 0.25, "xmlcount": 0.0})
    ex = t.examples("test")[0]
    _, parts = t.score(f"x\n</think>\n<answer>\n{ex.target}\n</answer>", ex)
    assert parts["soft_format"] == 0.25 and parts["xmlcount"] == 0.0 and parts["correctness"] == 2.0
    assert t.is_correct_lenient(f"so the sum is {ex.target}.", ex) and not t.is_correct(f"{ex.target}", ex)
    assert not t.is_correct_lenient(f"{ex.target} and then 99999", ex)
    import pytest

    with pytest.raises(ValueError, match="unknown reward"):
        get_task("arith", weights={"corectness": 1.0})
    with pytest.raises(ValueError, match="problems='sums'"):
        get_task("arith", prompt_style="example")


def test_muladd_is_held_out_by_problem_with_a_one_step_example_that_never_answers():
    from aha.tasks.arith import all_muladds

    t = get_task("arith", problems="muladd", prompt_style="example", max_factor=6, max_operand=12,
                 n_train=600, n_test=100)
    train, test = t.examples("train"), t.examples("test")
    assert len(all_muladds(6, 12)) == 5 * 5 * 12 and len(train) == 600 and len(test) == 100
    question = lambda e: e.prompt[1]["content"]  # noqa: E731
    assert not {question(e) for e in train} & {question(e) for e in test}
    assert len({question(e) for e in test}) == 100
    for e in list(train[:300]) + list(test):
        a, times, b, plus, c = question(e).removeprefix("What is ").removesuffix("?").split()
        assert (times, plus) == ("*", "+") and 2 <= int(a) <= 6 and 2 <= int(b) <= 6 and 1 <= int(c) <= 12
        assert int(e.target) == int(a) * int(b) + int(c)
        system = e.prompt[0]["content"]
        shown = system.split('For example, for "What is ')[1].split("?")[0].split()
        assert len(shown) == 3 and shown[1] == "-"  # one step, another operation: no two-step solution shown
        assert f"<answer>\n{e.target}\n</answer>" not in system
    right = f"{a} * {b} = {int(a) * int(b)}\n</think>\n<answer>\n{e.target}\n</answer>"
    assert t.is_correct(right, e)
    assert [question(e) for e in get_task("arith", problems="muladd", seed=1, n_test=100).examples("test")] != \
        [question(e) for e in test]


def test_arith_refuses_bad_muladd_options():
    import pytest

    with pytest.raises(ValueError, match="max_factor"):
        get_task("arith", problems="muladd", max_factor=1)
    with pytest.raises(ValueError, match="leaves no training problems"):
        get_task("arith", problems="muladd", max_factor=2, max_operand=3, n_test=3).examples("test")
    with pytest.raises(ValueError, match="problems must be"):
        get_task("arith", problems="muldiv")
