"""When things happen, for both backends: the learning-rate schedule (a multiplier of `lr` per
optimizer step; torch's LambdaLR calls it, the JAX loop injects `lr * lr_lambda(cfg)(i)` into
optax) and the held-out evaluation's steps."""

from __future__ import annotations

import math
from typing import Callable

from aha.config import Config


def lr_lambda(cfg: Config) -> Callable[[int], float]:
    """Linear warmup over `warmup_steps`, then constant / cosine / linear decay that reaches 0 just
    after the last optimizer step (as transformers' schedules: every step of the run has a non-zero
    lr). One GRPO step makes `algo.mu` optimizer steps, so `i` counts those."""
    total = max(cfg.max_steps * cfg.algo.mu, 1)

    def f(i: int) -> float:
        if cfg.warmup_steps and i < cfg.warmup_steps:
            return (i + 1) / cfg.warmup_steps
        frac = min((i - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        if cfg.lr_schedule == "linear":
            return 1 - frac
        return 1.0

    return f


def eval_due(step: int, cfg: Config) -> bool:
    """Whether the held-out eval runs after GRPO step `step` (0 = before the first update, the
    untrained policy's baseline): never with `eval_every=0`, else at 0, every `eval_every` steps
    and at the last step, so a run always ends with a measured result."""
    return bool(cfg.eval_every) and (step % cfg.eval_every == 0 or step == cfg.max_steps)
