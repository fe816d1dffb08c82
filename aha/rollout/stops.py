"""Stop strings, engine-agnostic: end a completion at the token that completes a stop string.

An engine generates until EOS or max_new_tokens; `stop_at_strings` then shortens each row's
completion mask so that it ends at the first token whose decoded prefix contains a stop string
(e.g. the `</answer>` that closes a tag task's answer). Tokens after it stay in `completion_ids`
but are masked: they carry no loss, are not decoded and do not count in the length. The engine may
have spent time on them; stopping the engines early is an optimisation this does not need.

Why on decoded text, not token ids: a stop string can be split over tokens in many ways ("</",
"answer", ">" or "</answer>"), and the token that completes it is the first one whose decoded
prefix contains it. That prefix test is monotone in the prefix length, so a binary search finds
it with O(log C) decodes per row, and only rows whose full text contains a stop string are searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def stop_at_strings(tokenizer: Any, completion_ids: torch.Tensor, mask: torch.Tensor, truncated: torch.Tensor,
                    eos_ids: Sequence[int], stops: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks ended at the first stop string.

    Args:
        tokenizer: decodes ids (`decode(ids, skip_special_tokens=True)`).
        completion_ids: (B, C) the generated ids, right-padded.
        mask: (B, C) 1 through the first EOS (`rollout.completion_mask`).
        truncated: (B,) bool, hit max_new_tokens without EOS.
        eos_ids: the ids that end a completion (never decoded).
        stops: the stop strings; empty -> the inputs unchanged.
    Returns:
        (mask (B, C), truncated (B,)): a stopped row's mask is 1 through the token that completes
        its earliest stop string (and an EOS generated right after it), and the row is not
        truncated (it finished). The inputs are not modified.
    """
    stops = [s for s in stops if s]
    if not stops:
        return mask, truncated
    mask, truncated = mask.clone(), truncated.clone()
    eos = set(eos_ids)
    for row, (ids, keep) in enumerate(zip(completion_ids.tolist(), mask.tolist())):
        ids = [t for t, k in zip(ids, keep) if k]  # the mask is a prefix of ones
        end = stop_token_index(lambda n: tokenizer.decode([t for t in ids[:n] if t not in eos],
                                                          skip_special_tokens=True), len(ids), stops)
        if end is None:
            continue
        end += 1  # the first token after the stop string
        if end < len(ids) and ids[end] in eos:
            end += 1  # an EOS right after it stays: the model ended there itself, as without stop strings
        mask[row, end:] = 0
        truncated[row] = False  # a stopped row finished, even if its stop string came with the last token
    return mask, truncated


def stop_token_index(decode_prefix: Any, n: int, stops: Sequence[str]) -> int | None:
    """Index of the first token whose decoded prefix contains one of `stops`, or None.

    `decode_prefix(k)` is the text of the first k tokens (k in 0..n). Binary search over k: containing
    a stop string is monotone in k (a prefix's text is a prefix of the longer one's)."""
    def has_stop(k: int) -> bool:
        text = decode_prefix(k)
        return any(s in text for s in stops)

    if n == 0 or not has_stop(n):
        return None
    lo, hi = 1, n  # the smallest k with has_stop(k) lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if has_stop(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1
