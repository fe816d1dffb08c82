"""The baseline engine: transformers' `generate`, with every sampling setting explicit (a
model's own generation_config, e.g. a repetition penalty, must not leak into the rollout)."""

from __future__ import annotations

from typing import Sequence

import torch

from aha.rollout import SamplingParams


def generate_ids(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 params: SamplingParams, eos_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """prompt_ids, prompt_mask: (B, P) left-padded -> completion ids (B, C), C <= max_new_tokens."""
    from transformers import GenerationConfig

    greedy = params.temperature == 0
    # Sampling values are explicit, never None: None lets transformers fall back to its own
    # defaults (top_k=50). For greedy decoding they are left out (transformers warns otherwise).
    sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
    cfg = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=params.max_new_tokens if params.ignore_eos else 0,
        do_sample=not greedy,
        eos_token_id=None if params.ignore_eos else list(eos_ids),
        pad_token_id=pad_id,
        use_cache=True,
        **sampling,
    )
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=cfg)
    return out[:, prompt_ids.shape[1]:]
