"""GRPO's arithmetic as pure functions on tensors: advantages, KL, the clipped surrogate, and
how per-token losses are aggregated. Nothing here touches a model (see logprobs.py for that).

Shapes: N completions in the batch, G per group (N = groups * G), C completion tokens.
Departures from the GRPO paper (Shao et al. 2024) are knobs, each naming its source:
- `scale`: Dr. GRPO (Liu et al. 2025) drops the division by the group's std.
- `eps_high` > `eps_low`: DAPO's clip-higher (Yu et al. 2025), keeps low-probability tokens alive.
- `loss_weights(agg=...)`: per-sequence mean (GRPO), per-token mean (DAPO), constant (Dr. GRPO).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantage of each completion relative to its group, and which groups carry no signal.

    rewards: (N,) with the G completions of a prompt adjacent. Returns (advantages (N,),
    zero_std (N // G,) bool): a group whose rewards are all equal has advantage 0 everywhere.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size).float()  # (groups, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False) if group_size > 1 else torch.zeros_like(mean)
    adv = grouped - mean
    if scale:
        adv = adv / (std + eps)
    zero_std = (grouped.max(dim=1).values - grouped.min(dim=1).values) == 0  # exact: no eps games
    adv = torch.where(zero_std.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv.reshape(-1), zero_std


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, xp: Any = torch) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || ref) (Schulman 2020): exp(d) - d - 1, d = ref - logp.
    Non-negative, zero exactly where the policy equals the reference. (B, C) -> (B, C).
    `xp`: the array module (torch, or jax.numpy for the JAX backend)."""
    d = ref_logp - logp
    return xp.exp(d) - d - 1


def loss_weights(mask: torch.Tensor, agg: str, n_seqs: int, n_tokens: int, max_len: int) -> torch.Tensor:
    """Per-token weights that turn a sum of per-token losses into the chosen aggregate.

    mask: (B, C) for any slice (micro-batch) of the batch; `n_seqs` / `n_tokens` are totals over
    the *whole* batch, so that summing (loss * weights) over micro-batches gives the full-batch
    loss exactly - gradient accumulation then needs no further scaling.
    """
    mask = mask.float()
    if agg == "sequence":  # GRPO: each completion counts equally, whatever its length
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
        return mask / lengths / n_seqs
    if agg == "token":  # DAPO: each token counts equally; long completions weigh more
        return mask / max(n_tokens, 1)
    if agg == "constant":  # Dr. GRPO: a constant normaliser, no length bias either way
        return mask / (n_seqs * max_len)
    raise ValueError(f"unknown loss aggregation {agg!r}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
                ref_logp: torch.Tensor | None = None, xp: Any = torch,
                stop_gradient: Callable[[Any], Any] = torch.Tensor.detach) -> tuple[torch.Tensor, dict[str, Any]]:
    """The clipped surrogate (PPO / GRPO) plus beta * k3 KL, aggregated by `weights`.

    logp, old_logp, ref_logp, weights: (B, C); advantages: (B,). Returns (scalar loss, stats) where
    stats hold weighted sums (same aggregation as the loss) of the KL and the clipped fraction.
    `xp` / `stop_gradient`: torch and Tensor.detach here; the JAX backend passes jax.numpy and
    jax.lax.stop_gradient, so both backends run this one function (aha/jax/algo.py).
    """
    ratio = xp.exp(logp - old_logp)  # (B, C); 1 when old_logp is logp.detach() (mu = 1)
    adv = advantages[:, None]  # (B, 1)
    unclipped = ratio * adv
    clipped = xp.clip(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -xp.minimum(unclipped, clipped)  # (B, C)
    stats: dict[str, Any] = {}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp, xp)
        per_token = per_token + beta * kl
        stats["kl"] = stop_gradient(kl * weights).sum()
    is_clipped = xp.where(clipped < unclipped, 1.0, 0.0)  # min() took the clipped branch: no gradient there
    stats["clip_frac"] = stop_gradient(is_clipped * weights).sum()
    return (per_token * weights).sum(), stats
