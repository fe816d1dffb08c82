"""DAPO's dynamic sampling (Yu et al. 2025, §3.2): a group whose G rewards are all equal has zero
advantage and teaches nothing, so it is dropped; with `algo.max_refill_rounds` > 0 more prompts are
drawn, a batch of `prompts_per_step` at a time, until the step has `prompts_per_step` groups with a
reward spread or the extra rounds run out. The surplus of the last round is not used (as DAPO).

Data-parallel: every rank draws the same prompts and rolls out its share, so which groups are kept
must be decided the same way everywhere: `keep_first` walks the groups in global draw order (round,
rank, position) - the order a 1-process run sees them in - and keeps the first `want` with a spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from aha import distributed
from aha.records import CompletionRecord
from aha.rollout import Rollout, concat_rollouts


@dataclass
class Sampled:
    """One round's (or the merged rounds') completions on this rank, each prompt's G adjacent."""

    group: list[Any]  # (N,) the example of each completion
    ro: Rollout
    scores: list[tuple[float, dict[str, float]]]  # (N,) the task's (total, parts)
    rewards: torch.Tensor  # (N,) what the advantages see: the task's reward plus any shaping
    records: list[CompletionRecord]  # (N,) what is logged of each completion
    marks: tuple[Any, Any]  # the step's clock after the rollout and after scoring (merged: the last round's)


def has_spread(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """(N,) rewards -> (N // G,) bool: the group's rewards are not all equal (exactly)."""
    grouped = rewards.reshape(-1, G)
    return grouped.max(dim=1).values != grouped.min(dim=1).values


def keep_first(flags: list[list[list[bool]]], want: int, rank: int) -> list[bool]:
    """flags[rank][round][i]: whether group i of that rank's share of that round has a spread. Returns
    this rank's keep flag for each of its groups (round-major): the first `want` groups with a spread in
    global draw order. Pure, so every rank computes the same split."""
    n_rounds = len(flags[0])
    taken = 0
    mine: list[bool] = []
    for rnd in range(n_rounds):
        for r, per_rank in enumerate(flags):
            for ok in per_rank[rnd]:
                keep = ok and taken < want
                taken += keep
                if r == rank:
                    mine.append(keep)
    return mine


def dynamic_sample(first: Sampled, refill: Callable[[], Sampled] | None, G: int, want: int, max_extra_rounds: int,
                   pad_id: int, d: distributed.Dist = distributed.Dist()) -> tuple[Sampled, torch.Tensor, int]:
    """Given the step's `first` round (this rank's share of prompts_per_step prompts, rolled out and
    scored), keep the first `want` groups with a reward spread, calling `refill` (the same for the next
    prompts) while fewer than `want` over all ranks have one and extra rounds remain; without `refill`
    there is no refill, only the dropping.

    Returns (every round's completions merged, keep (N,) bool over them: whole groups, the extra rounds used).
    """
    rounds = [first]
    max_extra_rounds = max_extra_rounds if refill is not None else 0
    while True:
        local = [has_spread(s.rewards, G).tolist() for s in rounds]
        flags = distributed.gather(local, d)  # every rank's flags, on every rank
        found = sum(ok for per_rank in flags for rnd in per_rank for ok in rnd)
        if found >= want or len(rounds) > max_extra_rounds:
            break
        rounds.append(refill())
    keep = torch.tensor(keep_first(flags, want, d.rank), dtype=torch.bool).repeat_interleave(G)
    merged = rounds[0] if len(rounds) == 1 else Sampled(
        [ex for s in rounds for ex in s.group], concat_rollouts([s.ro for s in rounds], pad_id),
        [sc for s in rounds for sc in s.scores], torch.cat([s.rewards for s in rounds]),
        [rec for s in rounds for rec in s.records], rounds[-1].marks)
    return merged, keep, len(rounds) - 1
