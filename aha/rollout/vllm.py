"""Optional rollout engine on vLLM, for users who have it (`pip install 'aha[vllm]'`, vllm>=0.10,<0.13,
in an environment of its own: vLLM pins its own torch). Not tested in CI: no vLLM on those machines.

Colocated: one `vllm.LLM` lives in the training process on the same GPU, built once from the policy's
config with dummy weights (`load_format="dummy"`, no tokenizer: it takes and returns token ids). Each
call wakes it, pushes the policy's current weights (LoRA merged into copies, layer by layer) through
vLLM's public extension point - a `worker_extension_cls` whose method runs inside the worker via
`LLM.collective_rpc` and calls the model's `load_weights` - generates, and puts it back to sleep at
level 2 (weights and KV cache freed), so the optimizer step has the memory. Knobs (environment):
AHA_VLLM_GPU_MEMORY, the fraction of GPU memory vLLM may take while awake (default 0.3).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from aha.errors import ModelError
from aha.model import unwrap
from aha.rollout import SamplingParams

log = logging.getLogger("aha")

VLLM_RANGE = ((0, 10), (0, 13))  # [low, high), as the `vllm` extra in pyproject.toml
INSTALL = ("rollout.engine=vllm needs vLLM: pip install 'aha[vllm]' (vllm>=0.10,<0.13, best in an "
           "environment of its own, as vLLM pins its own torch); or use rollout.engine=native")

_engine: tuple[int, Any] | None = None  # (id of the policy model, vllm.LLM)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ModelError(INSTALL) from e
    version = tuple(int(x) for x in vllm.__version__.split(".")[:2] if x.isdigit())
    if not VLLM_RANGE[0] <= version < VLLM_RANGE[1]:
        log.warning("vLLM %s is outside the tested range >=0.10,<0.13; the engine may not work", vllm.__version__)
    return vllm


class WeightLoader:
    """Mixed into vLLM's GPU worker (`worker_extension_cls`); `LLM.collective_rpc` calls its methods."""

    def aha_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.model.load_weights(weights=weights)  # type: ignore[attr-defined]


def _policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the transformers checkpoint's names, LoRA merged into copies of the weights."""
    from aha.rollout.decoder import merged_linear

    base = unwrap(model)
    for name, module in base.named_modules():
        if hasattr(module, "get_base_layer") and hasattr(module, "lora_A"):
            parts = merged_linear(module)
            if parts is None:
                raise ModelError(f"rollout.engine=vllm cannot merge the adapter on {name} (DoRA, LoRA bias or "
                                 "4-bit weights); use rollout.engine=native")
            yield f"{name}.weight", parts[0]
            if parts[1] is not None:
                yield f"{name}.bias", parts[1]
    for name, param in base.named_parameters():
        if ".base_layer." not in name and "lora_" not in name:  # LoRA layers were yielded merged above
            yield name, param.detach()


def _llm(model: torch.nn.Module, vllm: Any) -> Any:
    global _engine
    if _engine is not None and _engine[0] == id(model):
        return _engine[1]
    _engine = None
    config_dir = tempfile.mkdtemp(prefix="aha-vllm-")
    unwrap(model).config.save_pretrained(config_dir)
    # In-process engine: collective_rpc then hands tensors to the worker without serializing them.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    llm = vllm.LLM(model=config_dir, load_format="dummy", skip_tokenizer_init=True,
                   dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                   gpu_memory_utilization=float(os.environ.get("AHA_VLLM_GPU_MEMORY", "0.3")),
                   enable_sleep_mode=True, worker_extension_cls="aha.rollout.vllm.WeightLoader",
                   # vLLM's own neutral defaults, never a generation_config.json's (repetition
                   # penalty, min_p, ...): the update assumes plain temperature / top-k / top-p sampling.
                   generation_config="vllm")
    llm.sleep(level=2)
    _engine = (id(model), llm)
    return llm


def generate_ids(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 params: SamplingParams, eos_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """prompt_ids, prompt_mask: (B, P) left-padded -> completion ids (B, C), as `hf.generate_ids`."""
    vllm = _import_vllm()
    if prompt_ids.device.type != "cuda":
        raise ModelError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=native")
    llm = _llm(model, vllm)
    greedy = params.temperature == 0
    # One seed per row, drawn from the global RNG: rows of a group differ, a restored RNG state replays.
    seeds = torch.randint(2**31 - 1, (prompt_ids.shape[0],)).tolist()
    sampling = [vllm.SamplingParams(
        n=1, max_tokens=params.max_new_tokens, temperature=0.0 if greedy else params.temperature,
        top_p=1.0 if greedy else params.top_p, top_k=params.top_k if params.top_k > 0 and not greedy else -1,
        ignore_eos=params.ignore_eos, stop_token_ids=[] if params.ignore_eos else list(eos_ids),
        detokenize=False, seed=seed) for seed in seeds]
    prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
    llm.wake_up(tags=["weights"])  # weights first, KV cache after: a lower peak while loading
    try:
        chunk: list[tuple[str, torch.Tensor]] = []
        for item in _policy_weights(model):
            chunk.append(item)
            if len(chunk) == 64:
                llm.collective_rpc("aha_load_weights", args=(chunk,))
                chunk = []
        if chunk:
            llm.collective_rpc("aha_load_weights", args=(chunk,))
        llm.wake_up(tags=["kv_cache"])
        llm.reset_prefix_cache()  # cached prompt blocks were computed by the previous weights
        outputs = llm.generate(prompts, sampling, use_tqdm=False)
    finally:
        llm.sleep(level=2)  # free weights and KV cache for the optimizer step; weights are pushed again
    rows = [list(o.outputs[0].token_ids) for o in outputs]
    out = torch.full((len(rows), max(1, max(len(r) for r in rows))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(prompt_ids.device)
