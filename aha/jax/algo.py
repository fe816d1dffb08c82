"""GRPO's arithmetic in jnp: `aha/algo.py`'s functions with the same names, signatures and semantics
(tests/test_jax_algo.py checks values and gradients against the torch functions on the same
tensors). The loss and the KL are aha/algo.py's own functions run on jax.numpy; the advantages and
the loss weights are ported (their shape logic differs). Read aha/algo.py for the why of each knob.

Shapes: N completions in the batch, G per group (N = groups * G), C completion tokens.
Difference: `algo.beta`, `agg`, `group_size` must be Python values (they pick the computation at trace
time under `jax.jit`), and stats are always returned as arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from aha.config import AlgoConfig


def group_advantages(rewards: jax.Array, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> tuple[jax.Array, jax.Array]:
    """Advantage of each completion relative to its group, and which groups carry no signal.

    rewards: (N,) with the G completions of a prompt adjacent -> (advantages (N,), zero_std (N // G,))."""
    if rewards.size % group_size:
        raise ValueError(f"{rewards.size} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size).astype(jnp.float32)  # (groups, G)
    mean = grouped.mean(axis=1, keepdims=True)
    std = grouped.std(axis=1, keepdims=True)  # population std, as torch's unbiased=False
    adv = grouped - mean
    if scale:
        adv = adv / (std + eps)
    zero_std = grouped.max(axis=1) == grouped.min(axis=1)  # exact: no eps games
    adv = jnp.where(zero_std[:, None], 0.0, adv)
    return adv.reshape(-1), zero_std


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token k3 estimator of KL(policy || ref) (aha.algo.kl_k3 on jnp). (B, C) -> (B, C)."""
    from aha import algo

    return algo.kl_k3(logp, ref_logp, jnp)


def loss_weights(mask: jax.Array, agg: str, n_seqs: int | jax.Array, n_tokens: int | jax.Array,
                 max_len: int) -> jax.Array:
    """Per-token weights that turn a sum of per-token losses into the chosen aggregate. mask: (B, C);
    n_seqs / n_tokens are totals over the whole batch, so micro-batch sums add up to the batch loss."""
    mask = mask.astype(jnp.float32)
    if agg == "sequence":  # GRPO: each completion counts equally, whatever its length
        lengths = jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
        return mask / lengths / n_seqs
    if agg == "token":  # DAPO: each token counts equally
        return mask / jnp.maximum(n_tokens, 1)
    if agg == "constant":  # Dr. GRPO: a constant normaliser
        return mask / (n_seqs * max_len)
    raise ValueError(f"unknown loss aggregation {agg!r}")


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, weights: jax.Array,
                algo: AlgoConfig, *, ref_logp: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped surrogate plus algo.beta * k3 KL, aggregated by `weights`: aha.algo.policy_loss itself,
    on jnp arrays, with the config's `algo` (an AlgoConfig; validation keeps backend=jax to the token ratio
    and the clip). logp, old_logp, ref_logp, weights: (B, C); advantages: (B,) -> (scalar loss, stats)."""
    import aha.algo  # not `from aha import algo`: the config is `algo` here

    return aha.algo.policy_loss(logp, old_logp, advantages, weights, algo, ref_logp=ref_logp, xp=jnp,
                                stop_gradient=jax.lax.stop_gradient)
