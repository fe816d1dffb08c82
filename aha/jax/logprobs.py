"""Per-token log-probabilities of sampled completions, without ever holding [B, T, vocab] logits.

As aha/logprobs.py: only the C completion positions reach the LM head, `chunk` positions at a time
under `jax.checkpoint`, so the backward pass recomputes each chunk's (B, chunk, V) float32 logits
instead of keeping them all - with Gemma2's 256k vocabulary, 8 rows x 512 tokens of logits would
be 4 GB, a quarter of a v3 core's memory. The chunks run as a `lax.map` (one compiled body).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aha.jax.model import ModelConfig, Params, forward, logits, position_ids


def head_logprobs(params: Params, cfg: ModelConfig, hidden: jax.Array, targets: jax.Array, temperature: float,
                  chunk: int) -> tuple[jax.Array, jax.Array]:
    """hidden (B, C, H), targets (B, C) -> (log p of targets (B, C), entropy (B, C), no gradient)."""
    B, C, H = hidden.shape
    chunk = min(chunk, C)
    n = -(-C // chunk)
    pad = n * chunk - C  # pad C up to whole chunks; the padded positions are sliced off below
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, H).swapaxes(0, 1)  # (n, B, c, H)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)  # (n, B, c)

    @jax.checkpoint
    def one(xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        h, t = xs
        z = logits(params, cfg, h) / temperature  # (B, c, V) float32
        logz = jax.nn.logsumexp(z, axis=-1)  # (B, c)
        logp = jnp.take_along_axis(z, t[..., None], axis=-1)[..., 0] - logz
        zs = jax.lax.stop_gradient(z)  # entropy is a metric only
        entropy = jax.lax.stop_gradient(logz) - (jax.nn.softmax(zs, axis=-1) * zs).sum(-1)
        return logp, entropy

    logp, entropy = jax.lax.map(one, (hidden, targets))  # (n, B, c) each
    unchunk = lambda x: x.swapaxes(0, 1).reshape(B, n * chunk)[:, :C]  # noqa: E731
    return unchunk(logp), unchunk(entropy)


def completion_logprobs(params: Params, cfg: ModelConfig, ids: jax.Array, mask: jax.Array, n_completion: int,
                        temperature: float = 1.0, chunk: int = 256, lora: Params | None = None,
                        lora_scale: float = 1.0, remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies of the last `n_completion` tokens of each row.

    ids, mask: (B, T) = prompt (left-padded) + completion (right-padded) -> (logp (B, C), entropy (B, C));
    padded positions hold garbage the caller masks out."""
    hidden, _ = forward(params, cfg, ids, position_ids(mask), mask.astype(bool), lora=lora, lora_scale=lora_scale,
                        remat=remat)
    # The hidden state at t predicts token t + 1: positions T-C-1 .. T-2 predict the completion.
    hidden = hidden[:, -n_completion - 1:-1]  # (B, C, H)
    return head_logprobs(params, cfg, hidden, ids[:, -n_completion:], temperature, chunk)
