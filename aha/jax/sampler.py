"""The JAX rollout engine: one jitted function from prompt ids to completion ids.

- A pre-allocated KV cache of P + max_new_tokens slots (model.init_cache); the prompt is prefilled
  in one forward, then each decode step is a one-token forward writing slot P + t.
- The decode loop is a `lax.while_loop` inside the jitted function: no Python per token, and it
  stops as soon as every row has emitted an EOS (rows that finished early emit `pad_id`).
- Sampling (`sample_logits`): temperature, then top-k, then top-p (`truncate_logits`: the rule of the
  torch engines, aha/sampling.py, in jnp), then a categorical draw from an explicit PRNG key.
  temperature = 0 is greedy; greedy output equals the torch engines' token for token
  (tests/test_jax_sampler.py).
- Shapes are static per (batch, prompt width, max_new_tokens, sampling settings): the trainer pads
  prompt width up to a multiple of `PROMPT_BUCKET`, so a run compiles a handful of programs.

Prompt rendering, padding, completion masks and decoding are the torch path's (aha.rollout).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aha.jax.model import ModelConfig, Params, forward, init_cache, logits, position_ids

PROMPT_BUCKET = 32  # prompt widths are padded up to a multiple of this: fewer distinct programs


@dataclass
class JaxRollout:
    """As aha.rollout.Rollout, with numpy arrays."""

    prompt_ids: np.ndarray  # (B, P) left-padded
    prompt_mask: np.ndarray  # (B, P)
    completion_ids: np.ndarray  # (B, C) right-padded with pad_id
    completion_mask: np.ndarray  # (B, C) 1 through the first EOS inclusive
    texts: list[str]
    truncated: np.ndarray  # (B,) bool


def truncate_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Logits (B, V) with the tokens a top-k, then top-p sampler drops set to the dtype's lowest value: the
    jnp twin of aha/sampling.py `truncate_logits` (the torch engines' and the trainer's rule; the two keep
    the same tokens, tests/test_jax_sampler.py). Top-k keeps every token at least as likely as the k-th
    (ties kept); top-p keeps, on what top-k kept, the tokens whose logit reaches the least likely one of
    the nucleus (the likeliest tokens while the mass before each is < top_p: HF's smallest set whose mass
    reaches top_p), so a tie at the boundary keeps all its tokens. top_p in (0, 1]."""
    neg_inf = jnp.finfo(logits.dtype).min  # not -inf: what top-k drops stays finite in top-p's softmax
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V) descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly likelier tokens
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = kept.min(axis=-1, keepdims=True)  # the least likely token still kept
        logits = jnp.where(logits < threshold, neg_inf, logits)
    return logits


def sample_logits(key: jax.Array, logits: jax.Array, temperature: float, top_p: float, top_k: int) -> jax.Array:
    """Next tokens (B,) from float32 logits (B, V): temperature, `truncate_logits`, then a categorical
    draw from `key` (greedy at temperature 0). The settings are Python values (static under jit)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = truncate_logits(logits / temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1)


@partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_p", "top_k", "eos_ids", "pad_id"))
def generate_ids(params: Params, cfg: ModelConfig, prompt_ids: jax.Array, prompt_mask: jax.Array, key: jax.Array,
                 max_new_tokens: int, temperature: float, top_p: float, top_k: int, eos_ids: tuple[int, ...],
                 pad_id: int) -> jax.Array:
    """prompt_ids, prompt_mask: (B, P) left-padded -> completion ids (B, max_new_tokens), pad after EOS."""
    B, P = prompt_ids.shape
    S = P + max_new_tokens
    eos = jnp.array(eos_ids)
    cache = init_cache(cfg, B, S, params["embed"].dtype)
    kv_valid = jnp.zeros((B, S), bool).at[:, :P].set(prompt_mask.astype(bool))  # (B, S)
    hidden, cache = forward(params, cfg, prompt_ids, position_ids(prompt_mask), kv_valid, cache, 0)
    n_prompt = prompt_mask.sum(axis=1).astype(jnp.int32)  # (B,) real prompt tokens = next position

    key, sub = jax.random.split(key)
    token = sample_logits(sub, logits(params, cfg, hidden[:, -1:])[:, 0], temperature, top_p, top_k)  # (B,)
    out = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, eos)

    def cond(state: tuple) -> jax.Array:
        t, _, _, _, _, done, _ = state
        return (t < max_new_tokens) & ~done.all()

    def step(state: tuple) -> tuple:
        t, token, cache, kv_valid, out, done, key = state  # token: sampled at t - 1, not yet in the cache
        kv_valid = kv_valid.at[:, P + t - 1].set(True)
        positions = (n_prompt + t - 1)[:, None]  # (B, 1)
        hidden, cache = forward(params, cfg, token[:, None], positions, kv_valid, cache, P + t - 1)
        key, sub = jax.random.split(key)
        nxt = sample_logits(sub, logits(params, cfg, hidden)[:, 0], temperature, top_p, top_k)
        nxt = jnp.where(done, pad_id, nxt)  # finished rows only pad
        out = out.at[:, t].set(nxt)
        return t + 1, nxt, cache, kv_valid, out, done | jnp.isin(nxt, eos), key

    state = (jnp.int32(1), token, cache, kv_valid, out, done, key)
    return jax.lax.while_loop(cond, step, state)[4]


def bucket_prompts(ids: np.ndarray, mask: np.ndarray, pad_id: int, bucket: int = PROMPT_BUCKET):
    """Left-pad (B, P) prompts to a width that is a multiple of `bucket` (a masked slot costs nothing
    but compute, a new width costs a compilation)."""
    width = -(-ids.shape[1] // bucket) * bucket
    extra = width - ids.shape[1]
    return (np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id), np.pad(mask, ((0, 0), (extra, 0))))


def generate(params: Params, cfg: ModelConfig, tokenizer: Any, prompts: Sequence[Any], key: jax.Array,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_ids: Sequence[int] = (), put: Any = None) -> JaxRollout:
    """Sample one completion per prompt (repeat a prompt G times for a group). `put` places the
    (B, P) inputs on devices (sharding.py's batch placement); default: jax's default device."""
    import torch

    from aha.rollout import completion_mask, decode_completions, encode_prompts

    eos = tuple(sorted(set(eos_ids) or {tokenizer.eos_token_id}))
    ids, mask = encode_prompts(tokenizer, prompts)
    ids, mask = bucket_prompts(ids.numpy(), mask.numpy(), tokenizer.pad_token_id)
    put = put or jnp.asarray
    out = generate_ids(params, cfg, put(ids.astype(np.int32)), put(mask.astype(np.int32)), key, max_new_tokens,
                       float(temperature), float(top_p), int(top_k), eos, int(tokenizer.pad_token_id))
    completion = torch.from_numpy(np.asarray(out).astype(np.int64))
    cmask, truncated = completion_mask(completion, eos)
    texts = decode_completions(tokenizer, completion, cmask, eos)
    return JaxRollout(ids, mask, completion.numpy(), cmask.numpy(), texts, truncated.numpy())
