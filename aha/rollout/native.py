"""The native rollout engine: the `engine.Engine` contract, with much less work per token than HF `generate`.

Where it departs from HF `generate`, and why each saves time:

- Prefill once per *unique* prompt: GRPO repeats every prompt G times; the G copies share one
  prefill, whose keys/values are fanned out to the G cache rows, and one last-position logit row.
- No padding waste in the prefill on CPU (unique prompts go in buckets of similar length, where a
  padded token costs as much as a real one), and only the last position reaches the LM head.
- A pre-allocated KV cache (`kvcache.StaticKVCache`) instead of `DynamicCache`'s `torch.cat` per token.
- Finished rows leave the batch (with their cache rows), so they cost nothing.
- No logits processors, stopping criteria or per-step mask building: masks are slices of one (B, S)
  padding mask; sampling is a few tensor ops on the last-position logits (aha/sampling.py: temperature,
  top-k, top-p, then one uniform per row from the global RNG through the CDF, so a restored RNG state
  replays a rollout exactly; `torch.multinomial` would draw one random number per vocabulary entry).
- On CPU the forward runs on a fused, LoRA-merged, oneDNN-packed copy of the weights (decoder.py).
- On CUDA the decode step (model + sampling) runs at fixed shapes (batch fixed, whole cache under a
  mask, cache length rounded up) through `torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs;
  `AHA_NATIVE_COMPILE=0` turns that off. Not measured: the machine this was built on had no GPU.

Token for token, greedy decoding equals `generate`'s (tests/test_rollout_native.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from aha.rollout.decoder import Decoder, decoder_for
from aha.rollout.engine import ModelEngine
from aha.rollout.kvcache import StaticKVCache, decode_mask, prefill_mask, static_decode_mask
from aha.sampling import SamplingParams, sample_with_logprobs

# A bucket of unique prompts prefilled together pads every row to its longest. On CPU a padded token
# costs as much as a real one, so a bucket may waste at most this fraction of its tokens; on a GPU a
# forward's fixed cost dominates and all prompts go in one bucket.
PREFILL_WASTE = {"cpu": 0.1}
PREFILL_MAX_TOKENS = 16384  # per bucket: bounds the (U, 1, W, W) mask and the activations
COMPACT_FRACTION = 0.125  # drop finished rows once this fraction of the batch is done (a drop copies the cache)
STATIC_SLOTS = 256  # compiled path: cache length rounded up to a multiple of this, so shapes repeat


def generate_ids(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 params: SamplingParams, eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_ids, prompt_mask: (B, P) left-padded -> (completion ids (B, C), C <= max_new_tokens,
    right-padded with pad_id after each row's EOS; the sampled tokens' log-probs (B, C), 0 after EOS):
    `engine.Engine.generate`'s contract."""
    with torch.no_grad():
        dec = decoder_for(model, rows=prompt_ids.shape[0])
        if prompt_ids.device.type == "cuda" and os.environ.get("AHA_NATIVE_COMPILE", "1") != "0":
            ids, logprobs = decode_static(dec, prompt_ids, prompt_mask, params, eos_ids, pad_id, compile_step=True)
        else:
            ids, logprobs = decode(dec, prompt_ids, prompt_mask, params, eos_ids, pad_id)
    return ids, logprobs


class NativeEngine(ModelEngine):
    """`engine.Engine` over this file's decode loop, on the policy module's weights (on CPU a fused
    copy, rebuilt when a weight changed: decoder.py)."""

    name = "native"
    generate_ids = staticmethod(generate_ids)


# ---------------------------------------------------------------------------- prefill

def _buckets(lengths: list[int], waste: float) -> list[list[int]]:
    """Prompt indices, longest first, grouped so that a bucket's padding is at most `waste` of its tokens."""
    buckets: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if buckets:
            b = buckets[-1]
            width, n = lengths[b[0]], len(b) + 1
            padding = width * n - sum(lengths[j] for j in b) - lengths[i]
            if padding <= waste * width * n and width * n <= PREFILL_MAX_TOKENS:
                b.append(i)
                continue
        buckets.append([i])
    return buckets


def prefill(dec: Decoder, cache: StaticKVCache, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """Fill the prompt slots 0..P-1 of every cache row; -> last-position logits (B, V)."""
    batch, width = prompt_ids.shape
    device = prompt_ids.device
    # Rows with equal ids and mask share one prefill (the G copies of a GRPO group).
    _, inverse = torch.unique(torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1), dim=0,
                              return_inverse=True)  # (B,) row -> unique prompt
    n_unique = int(inverse.max()) + 1
    first = torch.full((n_unique,), batch, device=device).scatter_reduce(
        0, inverse, torch.arange(batch, device=device), "amin")  # (U,) a row holding each prompt
    lengths = prompt_mask[first].sum(dim=1).tolist()
    logits_u: torch.Tensor | None = None
    for bucket in _buckets(lengths, PREFILL_WASTE.get(device.type, 1.0)):
        uniq = torch.tensor(bucket, device=device)
        w = max(lengths[i] for i in bucket)
        ids = prompt_ids[first[uniq], width - w:]  # (U_b, w), still left-padded within the bucket
        mask = prompt_mask[first[uniq], width - w:]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # as `generate` numbers them
        local = torch.full((n_unique,), -1, device=device)
        local[uniq] = torch.arange(len(bucket), device=device)
        dst = (local[inverse] >= 0).nonzero().squeeze(1)  # the cache rows that hold this bucket's prompts
        cache.prefill(dst, local[inverse[dst]], width - w)
        out = dec.forward(ids, positions, dec.masks(prefill_mask, mask.bool()), cache)
        if logits_u is None:
            logits_u = out.new_empty((n_unique, out.shape[1]))
        logits_u[uniq] = out
    assert logits_u is not None
    return logits_u[inverse]  # (B, V): each row of a group samples its own first token


# ---------------------------------------------------------------------------- decode

def decode(dec: Decoder, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
           eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager decode: attention reads only the slots written so far; finished rows leave the batch.
    -> (completion ids (B, C), their log-probs (B, C))."""
    batch, width = prompt_ids.shape
    n_new, device = params.max_new_tokens, prompt_ids.device
    cache = StaticKVCache(dec.n_layers, batch, dec.n_kv_heads, width + n_new, dec.head_dim, dec.dtype, device)
    key_valid = torch.cat([prompt_mask.bool(), prompt_mask.new_ones((batch, n_new), dtype=torch.bool)], 1)  # (B, S)
    positions = prompt_mask.sum(dim=1, keepdim=True)  # (B, 1): the first new token's position
    out = torch.full((batch, n_new), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros((batch, n_new), dtype=torch.float32, device=device)
    eos = torch.tensor([] if params.ignore_eos else list(eos_ids), dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)  # live row -> output row
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # finished, not yet dropped
    tokens, lps = sample_with_logprobs(prefill(dec, cache, prompt_ids, prompt_mask), params)
    for t in range(n_new):
        tokens = tokens.masked_fill(done, pad_id)
        out[rows, t] = tokens
        out_lp[rows, t] = lps.masked_fill(done, 0.0)
        if t == n_new - 1:
            break
        if len(eos):
            done |= torch.isin(tokens, eos)
            n_done = int(done.sum())  # one host sync per token, as `generate`'s stopping check
            if n_done == len(rows):
                return out[:, :t + 1], out_lp[:, :t + 1]
            if n_done >= COMPACT_FRACTION * len(rows):
                live = (~done).nonzero().squeeze(1)
                cache.keep(live)
                rows, tokens, positions, key_valid, done = (x[live] for x in (rows, tokens, positions,
                                                                              key_valid, done))
        slot = width + t
        cache.decode(slot)
        masks = dec.masks(decode_mask, key_valid, slot)
        tokens, lps = sample_with_logprobs(dec.forward(tokens[:, None], positions, masks, cache), params)
        positions = positions + 1
    return out, out_lp


def _static_step(dec: Decoder, cache: StaticKVCache, key_valid: torch.Tensor, tokens: torch.Tensor,
                 positions: torch.Tensor, slot: torch.Tensor, temperature: float, top_k: int,
                 top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed-shape decode step, model and sampling: the unit that is compiled and CUDA-graphed
    (sampling knobs as plain numbers: the graph is specialized on them). -> (tokens (B,), log-probs (B,))."""
    cache.decode(slot)
    masks = dec.masks(static_decode_mask, key_valid, slot)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    return sample_with_logprobs(dec.forward(tokens[:, None], positions, masks, cache), params)


_compiled_step = None
_static_cache: tuple[tuple, StaticKVCache] | None = None  # reused: CUDA graphs want fixed addresses


def decode_static(dec: Decoder, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
                  eos_ids: Sequence[int], pad_id: int, compile_step: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-shape decode for torch.compile + CUDA graphs: the batch never shrinks (finished rows run on,
    their tokens replaced by padding), attention covers every slot under a mask, the cache length is
    rounded up to STATIC_SLOTS and the cache is kept between calls, so graphs are reused."""
    global _compiled_step, _static_cache
    batch, width = prompt_ids.shape
    n_new, device = params.max_new_tokens, prompt_ids.device
    slots = -(-(width + n_new) // STATIC_SLOTS) * STATIC_SLOTS
    key = (batch, slots, dec.n_layers, dec.n_kv_heads, dec.head_dim, dec.dtype, device)
    if _static_cache is None or _static_cache[0] != key:
        _static_cache = None  # free the old one first
        cache = StaticKVCache(dec.n_layers, batch, dec.n_kv_heads, slots, dec.head_dim, dec.dtype, device)
        if compile_step:
            for t in cache.k + cache.v:  # written in place by the graph; their addresses never move
                torch._dynamo.mark_static_address(t)
        _static_cache = (key, cache)
    cache = _static_cache[1]  # stale slots from an earlier call are finite and masked out
    if compile_step and _compiled_step is None:
        _compiled_step = torch.compile(_static_step, mode="reduce-overhead", dynamic=False)
    step = _compiled_step if compile_step else _static_step
    key_valid = torch.cat([prompt_mask.bool(), prompt_mask.new_ones((batch, slots - width), dtype=torch.bool)], 1)
    positions = prompt_mask.sum(dim=1, keepdim=True)
    out = torch.full((batch, n_new), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros((batch, n_new), dtype=torch.float32, device=device)
    eos = torch.tensor([] if params.ignore_eos else list(eos_ids), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    ends = torch.full((batch,), n_new, device=device)  # completion length of each row
    tokens, lps = sample_with_logprobs(prefill(dec, cache, prompt_ids, prompt_mask), params)
    for t in range(n_new):
        tokens = tokens.masked_fill(done, pad_id)
        out[:, t] = tokens
        out_lp[:, t] = lps.masked_fill(done, 0.0)
        if t == n_new - 1:
            break
        if len(eos):
            new = torch.isin(tokens, eos) & ~done
            ends = torch.where(new, t + 1, ends)
            done |= new
            if t % 8 == 7 and bool(done.all()):  # a host sync every 8 tokens, not every token
                break
        slot = torch.tensor(width + t, device=device)
        # clone: a CUDA graph's output buffer is overwritten by its next replay
        tokens, lps = (x.clone() for x in step(dec, cache, key_valid, tokens, positions, slot, params.temperature,
                                                  params.top_k, params.top_p))
        positions = positions + 1
    n = int(ends.max())
    return out[:, :n], out_lp[:, :n]
