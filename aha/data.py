"""The prompt order of a run: a seeded permutation per epoch, walked by a cursor that checkpoints
save, so a resumed run draws exactly the prompts the uninterrupted one would have. Both backends
and the benchmarks draw through `next_indices`."""

from __future__ import annotations

from typing import TypedDict

import torch

from aha.seeding import data_order_seed


class LoopState(TypedDict):
    """Where a run is; saved in every checkpoint (the keys are the checkpoint format)."""

    step: int  # the last finished step
    epoch: int  # passes over the training split so far
    cursor: int  # the next position in this epoch's permutation


def fresh_state() -> LoopState:
    return {"step": 0, "epoch": 0, "cursor": 0}


def next_indices(n: int, k: int, state: LoopState, seed: int) -> list[int]:
    """k example indices (of n) from a seeded per-epoch permutation; advances state's epoch/cursor.

    An epoch boundary inside a step takes the rest of this epoch, then the start of the next one.
    torch's `randperm` draws the permutation (with its own generator, so no global RNG is touched):
    both backends use it, so a torch and a JAX run of one config see the same prompts.
    """
    out: list[int] = []
    while len(out) < k:
        gen = torch.Generator().manual_seed(data_order_seed(seed, state["epoch"]))
        perm = torch.randperm(n, generator=gen).tolist()
        take = perm[state["cursor"]:state["cursor"] + k - len(out)]
        out += take
        state["cursor"] += len(take)
        if state["cursor"] >= n:
            state["epoch"] += 1
            state["cursor"] = 0
    return out
