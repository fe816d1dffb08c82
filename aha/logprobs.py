"""Per-token log-probabilities of sampled completions, without ever holding [B, T, vocab] logits.

The model's decoder gives hidden states (B, T, H); only the C completion positions are projected
to the vocabulary, `chunk` positions at a time, and each chunk is recomputed in the backward pass
(activation checkpointing), so peak memory for logits is (B, chunk, V) instead of (B, T, V) in
fp32 - the largest single tensor of a naive GRPO step with a 150k-256k vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from aha.model import unwrap


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` assigns them. (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    temperature: float, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, c, H), targets (B, c) -> (log p of targets (B, c), entropy (B, c), no grad)."""
    logits = F.linear(hidden, weight, bias).float()  # (B, c, V)
    if softcap:  # Gemma 2 squashes final logits with tanh
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)  # (B, c)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    with torch.no_grad():  # entropy is a metric only; keep it out of the graph
        probs = torch.softmax(logits, dim=-1)
        entropy = logz - (probs * logits).sum(-1)
    return logp, entropy


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        n_completion: int, temperature: float = 1.0,
                        chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the last `n_completion` tokens of each row.

    input_ids, attention_mask: (B, T) = prompt (left-padded) + completion (right-padded).
    Returns (logp (B, C), entropy (B, C)); padded positions hold garbage the caller masks out.
    """
    base = unwrap(model)
    out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids(attention_mask), use_cache=False)
    # The hidden state at t predicts token t + 1: positions T-C-1 .. T-2 predict the completion.
    hidden = out.last_hidden_state[:, -n_completion - 1:-1]  # (B, C, H)
    targets = input_ids[:, -n_completion:]  # (B, C)
    head = base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    logps, entropies = [], []
    for start in range(0, n_completion, chunk):
        h, t = hidden[:, start:start + chunk], targets[:, start:start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(_chunk_logprobs, h, t, head.weight, head.bias, temperature, softcap,
                                 use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(h, t, head.weight, head.bias, temperature, softcap)
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1)


def naive_completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              n_completion: int, temperature: float = 1.0) -> torch.Tensor:
    """The reference computation (full logits through the model's own forward), for tests."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask), use_cache=False).logits
    logits = logits[:, -n_completion - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, -n_completion:].unsqueeze(-1)).squeeze(-1)
