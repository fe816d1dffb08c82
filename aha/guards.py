"""The non-finite guard: keeps NaN and inf out of the weights and out of the checkpoints.

A NaN or inf reward (named), advantage, loss or gradient norm skips the optimizer step with one
warning (`nonfinite_skipped` in the metrics); an update that overflows the weights (lr far too
high) is rolled back; `max_nonfinite_steps` such steps in a row stop the run (`NonFiniteError`);
`require_finite` refuses to checkpoint non-finite weights or optimizer state. A skipped step still
advances the data cursor (its prompts are not retried), so a resumed run stays exact.

The checks before a run starts are aha/preflight.py; a reward that raises is named by
aha/tasks/named_failures.py.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from aha.errors import AhaError

# A rolled-back update needs a copy of the trainable weights from before the step; above this
# size (full fine-tuning of a large model) the copy is not kept and an overflow stops the run.
SNAPSHOT_MAX_BYTES = 1 << 30
# An update is an overflow when it leaves a weight non-finite, or beyond WEIGHT_LIMIT in magnitude
# and WEIGHT_GROWTH times the largest weight before it. Trained LLM weights stay far below 1e6 (fp16
# cannot even hold 7e4); a weight that large makes the next forward pass overflow (attention
# logits grow with its square), and the sampler then fails far from the cause.
WEIGHT_LIMIT = 1e6
WEIGHT_GROWTH = 1e3


class NonFiniteError(AhaError):
    """Non-finite values in too many steps in a row, or in weights about to be saved."""


def nonfinite_inputs(scores: Sequence[tuple[float, dict[str, float]]], advantages: Any) -> str | None:
    """What is non-finite among a step's rewards (each named, with how many completions) and
    advantages (`.tolist()` of a tensor or array), or None when all are finite."""
    counts: dict[str, int] = {}
    for total, parts in scores:
        names = [n for n, v in parts.items() if not math.isfinite(v)]
        if not names and not math.isfinite(total):
            names = ["(total)"]
        for n in names:
            counts[n] = counts.get(n, 0) + 1
    if counts:
        return ", ".join(f"reward {n!r} in {k} of {len(scores)} completions" for n, k in counts.items())
    if not all(math.isfinite(float(x)) for x in advantages.tolist()):
        return "advantages (the rewards are finite but too large to normalise)"
    return None


def _max_abs(tensors: Sequence[Any]) -> float:
    """The largest |value| over float tensors (NaN if any is NaN, inf if any is inf), one device sync."""
    import torch

    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return 0.0
    # inf-norms in each tensor's own dtype (exact, no float32 copy of bf16 weights), fused per
    # dtype and device as clip_grad_norm_ does: a few kernels for hundreds of LoRA matrices
    norms = torch.stack([n.float().to(tensors[0].device)
                         for n in torch._foreach_norm([t.detach() for t in tensors], math.inf)])
    if torch.isnan(norms).any():
        return math.nan
    return float(norms.max())


def finite(tensors: Sequence[Any]) -> bool:
    """Whether every value of these tensors is finite (one device sync)."""
    return math.isfinite(_max_abs(tensors))


def optimizer_tensors(optimizer: Any) -> list[Any]:
    """The optimizer's floating-point state (moments...), which a checkpoint saves too."""
    import torch

    return [v for st in optimizer.state.values() for v in st.values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()]


def overflowed(before: float, after: float) -> bool:
    """Whether an update took the largest |weight| from `before` to an overflow: non-finite, or
    beyond both WEIGHT_LIMIT and WEIGHT_GROWTH times what it was."""
    return not after <= max(WEIGHT_LIMIT, WEIGHT_GROWTH * before)  # NaN compares False


def guarded_step(optimizer: Any, params: list[Any], grad_norm: Any) -> str | None:
    """`optimizer.step()` unless the gradient is non-finite. An update that overflows the weights
    (see `overflowed`) is undone from a copy; optimizer state it made non-finite is dropped (that
    parameter's moments restart). Returns what was non-finite, or None after a clean step."""
    import torch

    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return "loss or gradient"
    size = sum(p.numel() * p.element_size() for p in params)
    snapshot = [p.detach().clone() for p in params] if size <= SNAPSHOT_MAX_BYTES else None
    before = _max_abs(params)
    try:
        optimizer.step()
        after = _max_abs(params)
    except RuntimeError as e:  # torch refuses a step size beyond float range (lr ~ 1e38) mid-step
        if "overflow" not in str(e):
            raise
        after = math.inf
    if not overflowed(before, after) and finite(optimizer_tensors(optimizer)):
        return None
    if snapshot is None:
        raise NonFiniteError("the optimizer step made the weights non-finite (an overflow: is lr far too high?) "
                             "and they are too large to roll back; stopped without saving them. Lower lr and "
                             "resume from the last checkpoint with --resume")
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)
    for p in params:
        state = optimizer.state.get(p) or {}
        if not finite([v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]):
            optimizer.state[p] = {}
    return "update (the step overflowed the weights; lr far too high?)"


def require_finite(tensors: Sequence[Any], what: str) -> None:
    """Refuse to save non-finite values (checkpoint weights or optimizer state)."""
    if not finite(list(tensors)):
        raise NonFiniteError(f"refusing to save {what}: it holds non-finite values (NaN or inf); the previous "
                             "checkpoint is intact - resume from it with --resume, with a lower lr")


class NonFiniteGuard:
    """Counts steps skipped for non-finite values: one warning each, a stop after `limit` in a row
    (0 = never stop). `record` returns the `nonfinite_skipped` metric (1.0 or 0.0)."""

    def __init__(self, limit: int, verbose: bool = True):
        self.limit, self.verbose, self.streak = limit, verbose, 0

    def record(self, step: int, problem: str | None) -> float:
        if problem is None:
            self.streak = 0
            return 0.0
        self.streak += 1
        if self.limit and self.streak >= self.limit:
            raise NonFiniteError(
                f"{self.streak} steps in a row (up to step {step}) had non-finite values, last: {problem}; their "
                "non-finite updates were not applied and every checkpoint is finite. Fix the cause (a reward "
                "returning NaN/inf, or lr too high), then --resume (max_nonfinite_steps sets how many in a row "
                "are tolerated)")
        if self.verbose:
            stop = f"; the run stops at {self.limit} in a row" if self.limit else ""
            print(f"aha: warning: step {step}: non-finite {problem}; skipped this optimizer step "
                  f"({self.streak} in a row{stop})", file=sys.stderr, flush=True)
        return 1.0
