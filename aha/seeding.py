"""Every random stream of a run, derived from the config's one `seed`, in one place.

A run has three kinds of randomness: the prompt order (one permutation per epoch), the sampling
of completions (python's and torch's global RNGs, one stream per rank under torchrun), and LoRA's
initial A matrices (`aha.model.load_policy` seeds those itself, so every rank starts equal). The
numbers below are what runs have always used: changing one changes every run's data order or
samples, and breaks resuming a checkpoint written before the change bit-exactly.
"""

from __future__ import annotations

import random

# Large primes keep the derived seeds of different (seed, index) pairs apart in practice.
_EPOCH_STRIDE = 100_003  # seed * this + epoch: a run would need 100,003 epochs to reach the next seed's orders
_RANK_STRIDE = 1009  # seed + this * rank: the ranks' sampling streams
_STEP_STRIDE = 7919  # step * this + rank: fresh streams when a resume changes the number of processes


def seed_rngs(seed: int) -> None:
    """Seed python's `random` and torch's global RNG (CPU and every CUDA device) with `seed`."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def data_order_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s prompt permutation (`aha.data.next_indices`)."""
    return seed * _EPOCH_STRIDE + epoch


def sampling_seed(seed: int, rank: int) -> int:
    """The sampling stream of process `rank`; rank 0's is `seed` itself, so rank 0 of a torchrun
    job samples what a 1-process run samples."""
    return seed + _RANK_STRIDE * rank


def resharded_sampling_seed(step: int, rank: int) -> int:
    """The sampling stream of `rank` after resuming a checkpoint of `step` written by another number
    of processes: its saved RNG states do not map onto these ranks, so the streams restart."""
    return step * _STEP_STRIDE + rank
