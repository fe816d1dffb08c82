"""Rollout: sample completions for a batch of prompts with a chosen engine.

`generate(...)` is the one entry point the trainer and eval use. An engine (the contract is
`engine.Engine`; the names are in aha/engines.py) only turns token ids into completion token ids
and their log-probs; prompt rendering, padding, the completion masks (which end at the first EOS)
and decoding are shared here, so engines stay small and comparable.
Engines: `hf` (transformers `generate`, the baseline), `native` and `vllm` (see their files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from aha.errors import ConfigError
from aha.rollout.stops import stop_at_strings
from aha.tasks.base import Messages

if TYPE_CHECKING:
    from aha.rollout.engine import Engine
    from aha.sampling import SamplingParams


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, C) right-padded
    completion_mask: torch.Tensor  # (B, C) 1 up to and including the first EOS
    texts: list[str]  # decoded completions, EOS and padding removed
    truncated: torch.Tensor  # (B,) bool: hit max_new_tokens without EOS
    # (B, C) float32: the engine's log-prob of each sampled token under the distribution it sampled from
    # (after temperature and top-k / top-p renormalisation), 0 at padding; None if the engine gave none.
    logprobs: torch.Tensor | None = None


def render_prompt(tokenizer: Any, prompt: str | Messages) -> str:
    """Plain text as is; chat messages through the tokenizer's chat template. A final assistant
    message is a pre-fill that the model continues, so it is left open.

    Rewards judge `prefill + completion` with the pre-fill taken from the Example (the final
    message's content, `tasks._common.prefill_of`), so the rendered prompt must end with exactly
    that text. Some chat templates alter the final message (trim its whitespace: "<think>\\n"
    becomes "<think>"; or drop it): the model would then be conditioned on text other than the
    one judged (strict format paying for a newline it never saw). That is a ConfigError naming
    the tokenizer, checked on every render (a string comparison), so train, eval, play and the
    probe all stop on it; the trainer renders one prompt before it writes anything."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this task gives chat messages but the tokenizer has no chat template; "
                         "use the task's base template (task_options.template=base)")
    prefill = prompt[-1]["content"] if prompt[-1]["role"] == "assistant" else None
    try:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=prefill is None,
                                             continue_final_message=prefill is not None)
    except ValueError as e:  # transformers: the template deleted (part of) the final message
        if prefill is None or "continue_final_message" not in str(e):
            raise
        raise ConfigError(_prefill_changed(tokenizer, prefill, "drops it")) from e
    if prefill is not None and not text.endswith(prefill):
        raise ConfigError(_prefill_changed(tokenizer, prefill, f"renders the prompt's end as {text[-40:]!r}"))
    return text


def _prefill_changed(tokenizer: Any, prefill: str, what: str) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return (f"the chat template of tokenizer {name!r} changes the pre-filled assistant message {prefill!r} (it "
            f"{what}), so the rewards would judge text the model was not conditioned on; use the task's base "
            "template (task_options.template=base) with this model, or a tokenizer whose chat template keeps "
            "the final assistant message as written")


def encode_prompts(tokenizer: Any, prompts: Sequence[str | Messages],
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask), both (B, P). Chat-rendered text already holds its special tokens."""
    rows = []
    for p in prompts:
        text = render_prompt(tokenizer, p)
        rows.append(tokenizer(text, add_special_tokens=isinstance(p, str)).input_ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def eos_token_ids(tokenizer: Any, model: torch.nn.Module | None = None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    return sorted(ids)


def completion_mask(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (B, C) that is 1 through the first EOS inclusive, truncated (B,) bool)."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))
    seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # an EOS strictly earlier
    return (~seen_before).long(), ~is_eos.any(dim=1)


def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str | Messages], params: SamplingParams,
             engine: str | Engine = "hf", batch_size: int = 0) -> Rollout:
    """Sample one completion per prompt (repeat a prompt G times for a group) from `model`'s current
    weights. `engine`: an Engine the caller owns (it is synced to `model` first: free when the weights
    did not change), or a name from aha/engines.py, built for this call and closed after it."""
    from aha.rollout.engine import make_engine

    own = isinstance(engine, str)
    eng = make_engine(engine, model, tokenizer) if own else engine
    device = next(model.parameters()).device
    eos = eos_token_ids(tokenizer, model)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    step = batch_size or len(prompts)
    pieces, logprob_pieces = [], []
    was_training = model.training
    model.eval()  # no dropout, KV cache allowed even with gradient checkpointing on
    try:
        eng.sync_weights(model)
        with torch.no_grad():
            for i in range(0, len(prompts), step):
                ids, logprobs = eng.generate(prompt_ids[i:i + step], prompt_mask[i:i + step], params, eos,
                                             tokenizer.pad_token_id)
                pieces.append(ids)
                logprob_pieces.append(logprobs)
    finally:
        model.train(was_training)
        if own:
            eng.close()
    width = max(p.shape[1] for p in pieces)
    completion_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((len(prompts), width), dtype=torch.float32, device=device)
    row = 0
    for p, lp in zip(pieces, logprob_pieces):
        completion_ids[row:row + p.shape[0], :p.shape[1]] = p
        logprobs[row:row + p.shape[0], :p.shape[1]] = lp
        row += p.shape[0]
    mask, truncated = completion_mask(completion_ids, eos if not params.ignore_eos else [])
    mask, truncated = stop_at_strings(tokenizer, completion_ids, mask, truncated, eos, params.stop)
    texts = decode_completions(tokenizer, completion_ids, mask, eos)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, truncated, logprobs * mask)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One Rollout of several, rows in order: prompts re-padded on the left, completions on the right."""
    P = max(r.prompt_ids.shape[1] for r in parts)
    C = max(r.completion_ids.shape[1] for r in parts)

    def pad(x: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
        extra = x.new_full((x.shape[0], width - x.shape[1]), value)
        return torch.cat([extra, x] if left else [x, extra], dim=1)

    with_logprobs = all(r.logprobs is not None for r in parts)
    return Rollout(
        torch.cat([pad(r.prompt_ids, P, pad_id, True) for r in parts]),
        torch.cat([pad(r.prompt_mask, P, 0, True) for r in parts]),
        torch.cat([pad(r.completion_ids, C, pad_id, False) for r in parts]),
        torch.cat([pad(r.completion_mask, C, 0, False) for r in parts]),
        [t for r in parts for t in r.texts],
        torch.cat([r.truncated for r in parts]),
        torch.cat([pad(r.logprobs, C, 0.0, False) for r in parts]) if with_logprobs else None,  # type: ignore[arg-type]
    )


def decode_completions(tokenizer: Any, completion_ids: torch.Tensor, mask: torch.Tensor,
                       eos_ids: Sequence[int]) -> list[str]:
    texts = []
    for ids, m in zip(completion_ids.tolist(), mask.tolist()):
        kept = [t for t, keep in zip(ids, m) if keep and t not in eos_ids]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts
