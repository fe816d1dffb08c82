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
