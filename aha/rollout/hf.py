"""The baseline engine: transformers' `generate`, sampling exactly softmax(logits / T) restricted by
top-k / top-p, nothing else.

transformers fills every generation setting a call leaves unset from the model's own
`generation_config` (a checkpoint's generation_config.json): a repetition penalty (common for
instruct models), n-gram bans, `min_p`, suppressed or banned tokens, a minimum length, beams...
Any of them changes the rollouts while the update computes log-probs of plain temperature
sampling. So the call runs against a neutral generation config that carries only what ends a
sequence (EOS, from the tokenizer and the model's config: `rollout.eos_token_ids`) and the pad id.

Temperature, top-k and top-p are applied by our own logits processor (`_Warp`: the rule of
aha/sampling.py, which every torch engine and the trainer share), followed by `_SampledLogprobs`, which
sees the scores `generate` samples from and records the sampled tokens' log-probs (custom processors
run *before* the warpers `generate` builds from its config, so the config's sampling values are left
neutral)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from aha.model import unwrap
from aha.rollout.engine import ModelEngine
from aha.sampling import SamplingParams, warp


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


class _SampledLogprobs:
    """A logits processor that records log-softmax of the final scores of each step and, one step later
    (when the sampled token is in input_ids), the log-prob of that token. Memory: one (B, V) row."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None  # (B, V) log-probs of the step not yet resolved
        self.steps: list[torch.Tensor] = []  # (B,) per resolved step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.steps.append(self.last.gather(1, input_ids[:, -1:]).squeeze(1))
        self.last = scores.float().log_softmax(dim=-1)
        return scores

    def logprobs(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """(B, C) for the completion `generate` returned (it may have dropped its last speculative steps)."""
        steps = list(self.steps)
        C = completion_ids.shape[1]
        if len(steps) < C and self.last is not None:
            steps.append(self.last.gather(1, completion_ids[:, len(steps):len(steps) + 1]).squeeze(1))
        out = torch.stack(steps[:C], dim=1) if steps else completion_ids.new_zeros((len(completion_ids), 0)).float()
        return out.nan_to_num(neginf=0.0)  # padding after EOS may sit outside the kept set


class _Warp:
    """A logits processor that applies the sampling rule (aha/sampling.py `warp`: temperature, top-k,
    top-p) in place of HF's three warpers, so that this engine, the native one and the trainer's
    log-probs share one top-k / top-p rule. The temperature division is `TemperatureLogitsWarper`'s, and
    at temperature 1 without truncation it returns `scores` itself, as an empty warper list did: such
    rollouts are bit-identical to HF's. It draws no random numbers (`generate` samples its one
    `torch.multinomial` per step after all processors), so the RNG is consumed as before."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return warp(scores, self.params)


def generate_ids(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 params: SamplingParams, eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_ids, prompt_mask: (B, P) left-padded -> (completion ids (B, C), C <= max_new_tokens, the
    sampled tokens' log-probs (B, C) under the warped distribution): `engine.Engine.generate`'s contract."""
    from transformers import GenerationConfig, LogitsProcessorList

    greedy = params.temperature == 0
    # Sampling values are explicit, never None: None lets transformers fall back to its own defaults
    # (top_k=50); neutral, as _Warp applies ours. For greedy decoding they are left out (transformers
    # warns otherwise).
    sampling = {} if greedy else {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    eos = None if params.ignore_eos else list(eos_ids)
    recorder = _SampledLogprobs()
    processors = LogitsProcessorList([recorder] if greedy else [_Warp(params), recorder])
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
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=cfg,
                             logits_processor=processors)
    ids = out[:, prompt_ids.shape[1]:]
    return ids, recorder.logprobs(ids)


class HFEngine(ModelEngine):
    """`engine.Engine` over transformers' `generate` on the policy module itself."""

    name = "hf"
    generate_ids = staticmethod(generate_ids)
