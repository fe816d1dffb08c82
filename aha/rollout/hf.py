"""The baseline engine: transformers' `generate`, sampling exactly softmax(logits / T) restricted by
top-k / top-p, nothing else.

transformers fills every generation setting a call leaves unset from the model's own
`generation_config` (a checkpoint's generation_config.json): a repetition penalty (common for
instruct models), n-gram bans, `min_p`, suppressed or banned tokens, a minimum length, beams...
Any of them changes the rollouts while the update computes log-probs of plain temperature
sampling. So the call runs against a neutral generation config that carries only what ends a
sequence (EOS, from the tokenizer and the model's config: `rollout.eos_token_ids`) and the pad id."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from aha.model import unwrap
from aha.rollout import SamplingParams


@contextmanager
def neutral_generation_config(model: torch.nn.Module, eos_ids: Sequence[int] | None, pad_id: int) -> Iterator[None]:
    """Swap the model's generation_config for a neutral one for the duration (peft's wrapper reads
    the inner model's), and put the model's own back afterwards, whatever happens."""
    from transformers import GenerationConfig

    base = unwrap(model)
    own = base.generation_config
    base.generation_config = GenerationConfig(eos_token_id=list(eos_ids) if eos_ids else None, pad_token_id=pad_id)
    try:
        yield
    finally:
        base.generation_config = own


def generate_ids(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 params: SamplingParams, eos_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """prompt_ids, prompt_mask: (B, P) left-padded -> completion ids (B, C), C <= max_new_tokens."""
    from transformers import GenerationConfig

    greedy = params.temperature == 0
    # Sampling values are explicit, never None: None lets transformers fall back to its own
    # defaults (top_k=50). For greedy decoding they are left out (transformers warns otherwise).
    sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
    eos = None if params.ignore_eos else list(eos_ids)
    cfg = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=params.max_new_tokens if params.ignore_eos else 0,
        do_sample=not greedy,
        eos_token_id=eos,
        pad_token_id=pad_id,
        use_cache=True,
        **sampling,
    )
    with neutral_generation_config(model, eos, pad_id):
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=cfg)
    return out[:, prompt_ids.shape[1]:]
