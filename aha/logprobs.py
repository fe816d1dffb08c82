"""Per-token log-probabilities of sampled completions, without ever holding [B, T, vocab] logits.

The model's decoder gives hidden states (B, T, H); only the C completion positions are projected
to the vocabulary, `chunk` positions at a time, and each chunk is recomputed in the backward pass
(activation checkpointing), so peak memory for logits is (B, chunk, V) instead of (B, T, V) in
fp32 - the largest single tensor of a naive GRPO step with a 150k-256k vocabulary.

`shared_prompt_logprobs` is the fast path of the update: the G completions of a group share one
prompt, so the prompt goes through the decoder once per group (keys and values kept) and the G
completions attend to it, instead of G copies of the prompt each paying forward and backward. The
gradient through the shared keys and values is the sum over the G rows, so the result is the same
as the per-row computation (tested). It needs the KV cache inside the differentiable forward, which
transformers turns off under gradient checkpointing; `batch_logprobs` then uses the per-row path
for the passes that need a backward (the no-grad reference / old-policy passes still share).

`support=(top_k, top_p)` adds a third output: the log-probs renormalised over the tokens a top-k / top-p
sampler keeps at each position (what a rollout engine reports for the tokens it sampled), so the
rollout/trainer mismatch compares like with like. `entropy_grad=True` keeps the entropy in the graph
(the entropy bonus).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from aha.model import unwrap
from aha.sampling import apply_temperature, truncate_logits


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` assigns them. (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


Support = tuple[int, float]  # (top_k, top_p) of the sampler: 0 / 1.0 = no truncation


@dataclass
class MicroBatch:
    """Rows of a rollout that one forward/backward holds. A prompt shared by several rows (the G
    completions of a group) appears once: the update runs it once for all of them."""

    prompt_ids: torch.Tensor  # (U, P) the distinct prompts, left-padded, trimmed to the longest
    prompt_mask: torch.Tensor  # (U, P)
    prompt_index: torch.Tensor  # (b,) row -> its prompt's index in prompt_ids
    completion_ids: torch.Tensor  # (b, C) right-padded, trimmed to the longest
    completion_mask: torch.Tensor  # (b, C) 1 on completion tokens (EOS included)
    advantages: torch.Tensor  # (b,) each row's group-relative advantage
    rollout_logprobs: torch.Tensor | None = None  # (b, C) the rollout engine's log-probs of these tokens


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    temperature: float, softcap: float | None, support: Support | None = None,
                    entropy_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """hidden (B, c, H), targets (B, c) -> (log p of targets (B, c), entropy (B, c)[, log p on the
    sampler's support (B, c), no grad])."""
    logits = F.linear(hidden, weight, bias).float()  # (B, c, V)
    if softcap:  # Gemma 2 squashes final logits with tanh
        logits = torch.tanh(logits / softcap) * softcap
    logits = apply_temperature(logits, temperature)  # the samplers' rule (aha/sampling.py)
    logz = torch.logsumexp(logits, dim=-1)  # (B, c)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    with nullcontext() if entropy_grad else torch.no_grad():  # a metric only, unless there is a bonus
        probs = torch.softmax(logits, dim=-1)
        entropy = logz - (probs * logits).sum(-1)
    if support is None:
        return logp, entropy
    return logp, entropy, _support_logp(logits.detach(), logp.detach(), logz.detach(), support)


def _support_logp(logits: torch.Tensor, logp: torch.Tensor, logz: torch.Tensor, support: Support) -> torch.Tensor:
    """log p - log(mass the sampler keeps): the log-prob under the distribution a top-k / top-p sampler
    draws from (the rollout engines' rule, aha/sampling.py `truncate_logits`). (B, c)."""
    top_k, top_p = support
    if not (0 < top_k < logits.shape[-1] or top_p < 1.0):
        return logp
    with torch.no_grad():
        return logp - (torch.logsumexp(truncate_logits(logits, top_k, top_p), dim=-1) - logz)


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        n_completion: int, temperature: float = 1.0, chunk: int = 256, support: Support | None = None,
                        entropy_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """Log-probs and entropies of the last `n_completion` tokens of each row.

    input_ids, attention_mask: (B, T) = prompt (left-padded) + completion (right-padded).
    Returns (logp (B, C), entropy (B, C)); padded positions hold garbage the caller masks out.
    """
    base = unwrap(model)
    out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids(attention_mask), use_cache=False)
    # The hidden state at t predicts token t + 1: positions T-C-1 .. T-2 predict the completion.
    hidden = out.last_hidden_state[:, -n_completion - 1:-1]  # (B, C, H)
    return _head_logprobs(base, hidden, input_ids[:, -n_completion:], temperature, chunk, support, entropy_grad)


def _head_logprobs(base: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                   chunk: int, support: Support | None = None, entropy_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """hidden (B, C, H) -> (logp (B, C), entropy (B, C)[, support logp (B, C)]), `chunk` positions of
    logits at a time."""
    head = base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    outs: list[list[torch.Tensor]] = []
    for start in range(0, hidden.shape[1], chunk):
        h, t = hidden[:, start:start + chunk], targets[:, start:start + chunk]
        args = (h, t, head.weight, head.bias, temperature, softcap, support, entropy_grad)
        if torch.is_grad_enabled() and h.requires_grad:
            outs.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            outs.append(_chunk_logprobs(*args))
    return tuple(torch.cat(parts, dim=1) for parts in zip(*outs))


def shared_prompt_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                           prompt_index: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                           temperature: float = 1.0, chunk: int = 256, support: Support | None = None,
                           entropy_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """Log-probs and entropies of completions whose prompts are shared.

    prompt_ids, prompt_mask: (U, P) the distinct prompts, left-padded; prompt_index: (B,) each
    completion's row in prompt_ids; completion_ids, completion_mask: (B, C) right-padded.
    Returns (logp (B, C), entropy (B, C)), equal to `completion_logprobs` on the concatenated rows.
    """
    base = unwrap(model)
    decoder = base.get_decoder()
    p_out = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                    use_cache=True)
    cache = p_out.past_key_values
    cache.batch_select_indices(prompt_index)  # (U, ...) -> (B, ...); the backward sums the rows' gradients
    mask = torch.cat([prompt_mask[prompt_index], completion_mask], dim=1)  # (B, P + C)
    C = completion_ids.shape[1]
    starts = prompt_mask.sum(dim=1)[prompt_index].unsqueeze(1)  # (B, 1) each row's prompt length
    positions = starts + torch.arange(C, device=prompt_index.device)  # (B, C)
    c_out = decoder(input_ids=completion_ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)
    # The prompt's last hidden state predicts the first completion token; completion token t the t + 1-th.
    hidden = torch.cat([p_out.last_hidden_state[prompt_index, -1:], c_out.last_hidden_state[:, :-1]], dim=1)
    return _head_logprobs(base, hidden, completion_ids, temperature, chunk, support, entropy_grad)


def batch_logprobs(model: torch.nn.Module, mb: MicroBatch, temperature: float = 1.0, chunk: int = 256,
                   support: Support | None = None, entropy_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """(log-probs, entropies), each (b, C), of a micro-batch from `update.micro_batches`: the
    shared-prompt path unless the model is gradient-checkpointed and gradients are wanted, then
    the per-row path."""
    base = unwrap(model)
    checkpointed = base.training and any(getattr(m, "gradient_checkpointing", False) for m in base.modules())

    def shared() -> tuple[torch.Tensor, ...]:
        return shared_prompt_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.prompt_index, mb.completion_ids,
                                      mb.completion_mask, temperature, chunk, support, entropy_grad)

    if not checkpointed:
        return shared()
    if not torch.is_grad_enabled():
        # No backward, so nothing to checkpoint: transformers checkpoints (and drops the cache) only
        # in training mode, so the reference / old-policy passes run in eval mode on the shared path.
        base.eval()
        try:
            return shared()
        finally:
            base.train()
    ids = torch.cat([mb.prompt_ids[mb.prompt_index], mb.completion_ids], dim=1)
    mask = torch.cat([mb.prompt_mask[mb.prompt_index], mb.completion_mask], dim=1)
    return completion_logprobs(model, ids, mask, mb.completion_ids.shape[1], temperature, chunk, support,
                               entropy_grad)


def naive_completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              n_completion: int, temperature: float = 1.0) -> torch.Tensor:
    """The reference computation (full logits through the model's own forward), for tests."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask), use_cache=False).logits
    logits = logits[:, -n_completion - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, -n_completion:].unsqueeze(-1)).squeeze(-1)
