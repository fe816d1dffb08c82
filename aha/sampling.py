"""The one sampling rule of the torch engines and of the trainer's log-probs.

A rollout engine draws each next token from softmax(logits / T), restricted to the top_k likeliest
tokens and then to the nucleus of the top_p most likely ones, renormalised (T = 0: greedy). The
update's TIS / MIS corrections and the mismatch metrics compare the engine's log-prob of a sampled
token with the trainer's, so both must use one rule: the native engine (rollout/native.py), the HF
engine (rollout/hf.py, as a logits processor), `aha play` and the trainer (logprobs.py, the
`support` log-probs) all call this file. The JAX sampler (jax/sampler.py) cannot share torch code and
implements the same rule in jnp (tests/test_jax_sampler.py checks that the two keep the same tokens);
vLLM samples with its own.

Torch only, and nothing of aha: importing it pulls in neither the rollout package nor transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    """What a rollout engine samples with (`engine.Engine.generate`): the sampling rule's knobs
    (temperature, top_p, top_k) and the completion's bounds."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)
    stop: tuple[str, ...] = ()  # a completion ends at the token completing one (Task.stop_strings; stops.py)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, the same tensor at temperature 1 (T > 0; T = 0 is greedy, the caller's
    case). The division is HF's `TemperatureLogitsWarper`'s, so HF rollouts stay bit-identical."""
    return logits if temperature == 1.0 else logits / temperature


def truncate_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits (..., V) with -inf outside the tokens a top-k, then top-p sampler keeps; the same tensor
    when neither truncates (top_k 0 or >= V, top_p 1). top_p in (0, 1].

    Top-k keeps every token at least as likely as the k-th likeliest (HF's `TopKLogitsWarper`: ties
    with the k-th are kept). Top-p, on what top-k kept, keeps the nucleus: going down from the
    likeliest token, each token while the renormalised mass of the tokens before it is < top_p (so the
    smallest set whose mass reaches top_p, as HF's `TopPLogitsWarper`), and then every token whose logit
    equals the least likely one kept. That last clause is where this departs from HF: HF's set at a tie
    on the boundary depends on how `torch.sort` orders equal values (unspecified on CUDA); a threshold
    on the logit makes the set a function of the values alone, so the engine, the trainer and the jnp
    sampler agree."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits = torch.sort(logits, dim=-1, descending=True).values  # (..., V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (..., V): mass of the strictly likelier tokens
        # the least likely logit of the nucleus; mass_before of the likeliest token is exactly 0 < top_p
        threshold = torch.where(mass_before < top_p, sorted_logits, float("inf")).amin(dim=-1, keepdim=True)
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return logits


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The logits (..., V) a sampler draws from: temperature, then top-k, then top-p (T > 0)."""
    return truncate_logits(apply_temperature(logits, params.temperature), params.top_k, params.top_p)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens (B,) from last-position float32 logits (B, V) under `warp`; greedy at T = 0."""
    return sample_with_logprobs(logits, params, generator)[0]


def sample_with_logprobs(logits: torch.Tensor, params: SamplingParams,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(next tokens (B,), their log-probs (B,) under the distribution they were drawn from: after the
    temperature and the top-k / top-p renormalisation; greedy: under softmax(logits)). One uniform per
    row from `generator` (default: torch's global RNG), none when greedy."""
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
    probs = warp(logits, params).softmax(dim=-1)
    tokens = sample_categorical(probs, generator)
    return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log()


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw (B,) per row of probs (B, V) by inverting the CDF with one uniform per row from
    `generator` (default: the global RNG, so a restored RNG state replays a rollout). `torch.multinomial`
    draws one exponential per *entry* (B x V random numbers): ~15 ms per step on a CPU for 16 rows of a
    49k vocabulary, a quarter of a SmolLM2 decode step. The CDF is taken in two levels (blocks of up to
    256 tokens, then the chosen block) in float64, reading probs once."""
    batch, vocab = probs.shape
    block = math.gcd(vocab, 256)
    if block < 16:  # a vocabulary that blocks do not divide: one level
        block = vocab
    blocks = probs.view(batch, vocab // block, block)  # (B, nb, b)
    mass = blocks.sum(dim=-1).double()  # (B, nb); float32 sums of <= 256 terms: ~1e-7 relative error
    if generator is None:
        u = torch.rand((batch, 1), dtype=torch.float64, device=probs.device)
    else:  # a generator lives on one device (play's is on the CPU)
        u = torch.rand((batch, 1), dtype=torch.float64, device=generator.device, generator=generator).to(probs.device)
    j, u = _invert_cdf(mass, u)
    inner = blocks.gather(1, j[:, :, None].expand(batch, 1, block)).squeeze(1).double()  # (B, b)
    k, _ = _invert_cdf(inner, u)
    return (j * block + k).squeeze(-1)


def _invert_cdf(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weights (B, n) >= 0, u (B, 1) in [0, 1) -> (index (B, 1) of the entry where the fraction u of the
    total mass falls, the fraction of that entry's own mass below u: the uniform for a next level)."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # < total: mass > 0
    i = torch.searchsorted(cdf, x, right=True)  # first entry whose CDF exceeds x
    below = cdf.gather(1, i) - weights.gather(1, i)
    return i, ((x - below) / weights.gather(1, i)).clamp(0, 1)
