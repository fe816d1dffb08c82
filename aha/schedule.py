"""The learning-rate schedule: a multiplier of `lr` per optimizer step, for both backends (torch's
LambdaLR calls it; the JAX loop injects `lr * lr_lambda(cfg)(i)` into optax)."""

from __future__ import annotations

import math
from typing import Callable

from aha.config import Config


def lr_lambda(cfg: Config) -> Callable[[int], float]:
    """Linear warmup over `warmup_steps`, then constant / cosine / linear decay to 0 at the last
    optimizer step. One GRPO step makes `algo.mu` optimizer steps, so `i` counts those."""
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
