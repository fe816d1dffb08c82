"""The rollout engine contract: what the trainer, eval and the benchmarks need from an engine.

An engine turns left-padded prompt ids into completion ids plus the log-prob of every sampled
token, for given sampling parameters, from the policy's weights as of its last `sync_weights`.
It is built once per run (`make_engine`), owned by its caller (the trainer's `Learner`, an
`evaluate` call), told about new weights after each update, and closed at the end. The engine
names live in `aha/engines.py` (the one list validation and the CLI read).

Rendering, padding, completion masks and decoding are shared (`aha.rollout.generate`), so engines
stay small and comparable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from aha.engines import ENGINES
from aha.errors import ConfigError
from aha.sampling import SamplingParams


@runtime_checkable
class Engine(Protocol):
    name: str

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
                 eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt_ids, prompt_mask: (B, P) long, left-padded. Returns (completion ids (B, C) long,
        C <= params.max_new_tokens, right-padded with pad_id after each row's first EOS; log-probs
        (B, C) float32 of each sampled token under the distribution it was drawn from - after
        temperature and the top-k / top-p renormalisation; greedy: under softmax(logits) - 0 at
        padding), both on prompt_ids' device. Sampling draws from torch's global RNG (directly or
        through per-row seeds drawn from it), so a restored RNG state replays a rollout."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next `generate` sample from `model`'s current weights (the policy after an
        update). Cheap when nothing changed since the last sync; a no-op for engines that run the
        model itself (hf, native)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (vLLM: the engine and its memory). Idempotent."""
        ...


class ModelEngine:
    """An engine that samples with the policy module itself (hf, native): it always reads the live
    weights, so `sync_weights` only points it at the model and `close` has nothing to free."""

    name = ""
    generate_ids: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # hf.generate_ids / native.generate_ids

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, **options: Any):
        if options:
            raise ConfigError(f"rollout engine {self.name!r} takes no options (got {', '.join(options)})")
        self.model = model

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
                 eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return type(self).generate_ids(self.model, prompt_ids, prompt_mask, params, eos_ids, pad_id)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def close(self) -> None:
        pass


def engine_class(name: str) -> type:
    """The class registered under `name` in aha/engines.py; raises ConfigError for an unknown name."""
    if name not in ENGINES:
        raise ConfigError(f"unknown rollout engine {name!r}; known: {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_engine(name: str, model: torch.nn.Module, tokenizer: Any = None, **options: Any) -> Engine:
    """Build the engine `name` (aha/engines.py) for `model`; it is ready to generate from the model's
    current weights. The caller owns it: `sync_weights` after each update, `close` at the end.
    Raises ConfigError for an unknown name, ModelError when the engine's package is missing."""
    return engine_class(name)(model, tokenizer, **options)
