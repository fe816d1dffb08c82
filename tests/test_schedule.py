"""When things happen: the learning-rate multiplier per optimizer step, and the held-out eval's steps."""

from __future__ import annotations

import pytest

from aha.config import load_config
from aha.schedule import eval_due, lr_lambda


def multipliers(*overrides: str) -> list[float]:
    """The multiplier at every optimizer step of the run, and one past the last (where decays reach 0)."""
    cfg = load_config("smoke", list(overrides))
    f = lr_lambda(cfg)
    return [f(i) for i in range(cfg.max_steps * cfg.algo.mu + 1)]


def test_constant_with_linear_warmup():
    m = multipliers("max_steps=6", "warmup_steps=3")
    assert m == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1])


def test_cosine_and_linear_decay_reach_zero_after_the_last_optimizer_step():
    # as transformers' get_*_schedule_with_warmup: every step of the run has a non-zero lr
    cos = multipliers("max_steps=4", "lr_schedule=cosine")
    lin = multipliers("max_steps=5", "lr_schedule=linear")
    assert cos[0] == pytest.approx(1) and cos[-1] == pytest.approx(0, abs=1e-12) and min(cos[:-1]) > 0
    assert cos[2] == pytest.approx(0.5)  # halfway through: cos(pi / 2)
    assert lin == pytest.approx([1, 0.8, 0.6, 0.4, 0.2, 0])
    assert all(a >= b for a, b in zip(cos, cos[1:]))


def test_the_schedule_counts_optimizer_steps_not_grpo_steps():
    # mu=2: two optimizer steps per GRPO step, so 3 GRPO steps decay over 6 optimizer steps
    m = multipliers("max_steps=3", "algo.mu=2", "lr_schedule=linear")
    assert m == pytest.approx([1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0])


@pytest.mark.parametrize("every, steps, want", [
    (0, 10, []),  # off
    (4, 10, [0, 4, 8, 10]),  # the untrained baseline, every 4, and always the last step
    (5, 10, [0, 5, 10]),
    (20, 3, [0, 3]),  # a short run still ends measured
])
def test_eval_due(every, steps, want):
    cfg = load_config("smoke", [f"eval_every={every}", f"max_steps={steps}"])
    assert [s for s in range(steps + 1) if eval_due(s, cfg)] == want
