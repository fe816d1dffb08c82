"""The checks `config.load_config` runs on a loaded Config, beyond types: allowed values, ranges,
the algorithm knobs that only make sense together, and what backend=jax supports. Each failure is a
`ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import TYPE_CHECKING, Any

from aha import variants
from aha.engines import ENGINES
from aha.errors import ConfigError, did_you_mean
from aha.trackers import check_trackers

if TYPE_CHECKING:  # config calls these checks: they read its dataclasses through the instance
    from aha.config import Config, RolloutConfig

_CHOICES = {
    "backend": ("torch", "jax"),
    "finetune": ("lora", "qlora", "full"),
    "lr_schedule": ("constant", "cosine", "linear"),
    "rollout.engine": tuple(ENGINES),
    # the algorithm's variants: their tables themselves (aha/variants.py), so a new row is a new allowed value
    "algo.loss_agg": variants.AGGREGATIONS,
    "algo.baseline": variants.BASELINES,
    "algo.scale_rewards": variants.SCALES,
    "algo.ratio": variants.RATIOS,
    "algo.surrogate": variants.SURROGATES,
    "algo.rollout_correction": ("none", *variants.ROLLOUT_CORRECTIONS),  # none: measured, not corrected
    "algo.rollout_correction_level": variants.ROLLOUT_CORRECTION_LEVELS,
    "optimizer": ("adamw", "adamw8bit", "paged_adamw8bit"),
}


def validate(cfg: Config) -> None:
    """Check values that types alone cannot: choices (engine, loss_agg, ...), ranges (counts >= 1,
    rates >= 0, top_p in (0, 1]), at least 2 generations per group, and what backend=jax supports.
    Returns None; raises ConfigError naming the key and the allowed values. Also turns the older boolean
    `algo.scale_rewards` into its string form."""
    if isinstance(cfg.algo.scale_rewards, bool):  # the older boolean form
        cfg.algo.scale_rewards = "group" if cfg.algo.scale_rewards else "none"
    validate_finite(cfg)
    validate_limits(cfg)
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(allowed)}"
                              + did_you_mean(str(value), allowed))
    positive = ["max_steps", "prompts_per_step", "rollout.num_generations", "rollout.max_new_tokens",
                "algo.mu", "micro_batch_tokens", "logprob_chunk", "lora.r", "keep_last"]
    for key in positive:
        if _get(cfg, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {_get(cfg, key)}")
    non_negative = ["lr", "warmup_steps", "weight_decay", "max_grad_norm", "algo.beta", "algo.epsilon_low",
                    "algo.epsilon_high", "algo.entropy_coef", "algo.max_refill_rounds", "algo.overlong_buffer",
                    "algo.overlong_penalty", "rollout.temperature", "rollout.top_k", "rollout.batch_size",
                    "eval_every", "eval_limit", "save_every", "log_completions_every", "probe_every",
                    "warn_no_signal_steps", "max_nonfinite_steps", "lora.last_layers"]
    for key in non_negative:
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {_get(cfg, key)}")
    if cfg.rollout.top_p > 1:
        raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.rollout.num_generations < 2:
        raise ConfigError("config key 'rollout.num_generations' must be >= 2: GRPO compares completions in a group")
    greedy = greedy_setting(cfg.rollout)
    if greedy:
        raise ConfigError(f"{greedy} makes sampling greedy: the G completions of every prompt would be identical, "
                          "every group's advantage zero and nothing learned; sample for training "
                          "(rollout.temperature > 0, rollout.top_k 0 = off or >= 2, rollout.top_p up to 1)")
    if cfg.rollout.engine == "vllm-server" and cfg.finetune == "full":
        raise ConfigError("rollout.engine=vllm-server syncs LoRA adapters only: use finetune=lora, or "
                          "rollout.engine=vllm for full fine-tuning")
    validate_algo(cfg)
    if cfg.backend == "jax":
        validate_jax(cfg)
    if cfg.report_table_every < 0:
        raise ConfigError(f"config key 'report_table_every' must be >= 0, got {cfg.report_table_every}")
    check_trackers(cfg.report_to, cfg.tensorboard)  # a missing tracker package stops here, before any model loads


# Upper bounds: not what a run should use but what no run can, so a typo (extra zeros, a seed pasted
# from elsewhere) is one line here instead of a hang or a traceback after the run directory exists.
SEED_MAX = 2**32 - 1  # numpy's RandomState takes 0..2**32-1; torch and python's random take more
MAX_NEW_TOKENS_MAX = 2**20  # 1,048,576: no model aha loads has a longer context (the model's own is checked at load)
SEQUENCES_MAX = 2**16  # prompts_per_step * G; the largest preset uses 128, and 65,536 sequences' logits of
# one sampling step alone are 12 GiB in fp32 at the smallest vocabulary in use (SmolLM2's 49,152)
TOKENS_MAX = 2**28  # completion tokens per step: ~45 minutes of sampling even at 100k tokens/s
LORA_R_MAX = 2**14  # 16,384: the largest hidden size in use (Llama-3.1-405B); a rank at a layer's full
# width is no longer low-rank: finetune=full does that for less memory


def validate_finite(cfg: Any, prefix: str = "") -> None:
    """Every float key (nested dataclasses too) must be a finite number: range checks like `x < 0`
    are false for NaN, so a NaN clip range or temperature would otherwise pass and train on garbage."""
    hints = typing.get_type_hints(type(cfg))
    defaults = type(cfg)()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_finite(value, prefix=f"{prefix}{f.name}.")
        elif hints[f.name] is float and not math.isfinite(value):
            raise ConfigError(f"config key '{prefix}{f.name}' must be a finite number, got {value}: set a number "
                              f"(the default is {getattr(defaults, f.name)})")


def validate_limits(cfg: Config) -> None:
    """Values no run can use: empty paths, seeds outside the RNGs' range, probabilities outside [0, 1),
    LoRA alpha <= 0, and sizes past the bounds above (why each bound: the comments beside them)."""
    for key in ("output_dir", "model", "task"):
        if not str(_get(cfg, key)).strip():
            example = {"output_dir": "runs/NAME", "model": "smollm2-135m", "task": "gsm8k"}[key]
            why = " (the run would write into the current directory)" if key == "output_dir" else ""
            raise ConfigError(f"config key {key!r} is empty{why}: set it, e.g. {key}={example}")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(f"config key 'seed' must be in 0..{SEED_MAX} (what numpy, torch and python's random "
                          f"all accept), got {cfg.seed}")
    for key in ("lora.dropout", "adam_beta1", "adam_beta2"):
        if not 0 <= _get(cfg, key) < 1:
            raise ConfigError(f"config key {key!r} must be in [0, 1), got {_get(cfg, key)}")
    if cfg.lora.alpha <= 0:
        raise ConfigError(f"config key 'lora.alpha' must be > 0 (the update is scaled by alpha / r), got "
                          f"{cfg.lora.alpha}: e.g. lora.alpha={2 * cfg.lora.r} (2 x lora.r)")
    r = cfg.rollout
    if r.max_new_tokens > MAX_NEW_TOKENS_MAX:
        raise ConfigError(f"config key 'rollout.max_new_tokens' is {r.max_new_tokens:,}, above {MAX_NEW_TOKENS_MAX:,} "
                          "(longer than any model's context): lower it")
    sequences = cfg.prompts_per_step * r.num_generations
    if sequences > SEQUENCES_MAX:
        raise ConfigError(f"prompts_per_step * rollout.num_generations is {sequences:,} sequences per step, above "
                          f"{SEQUENCES_MAX:,} (far past what one step can sample: the largest preset uses 128): lower "
                          "prompts_per_step or rollout.num_generations")
    if sequences * r.max_new_tokens > TOKENS_MAX:
        raise ConfigError(f"prompts_per_step * rollout.num_generations * rollout.max_new_tokens is "
                          f"{sequences * r.max_new_tokens:,} completion tokens per step, above {TOKENS_MAX:,} (hours "
                          "of sampling per step): lower one of them")
    if cfg.lora.r > LORA_R_MAX:
        raise ConfigError(f"config key 'lora.r' is {cfg.lora.r:,}, above {LORA_R_MAX:,} (wider than any model's "
                          "layers): lower it, or train every weight with finetune=full")


def greedy_setting(rollout: RolloutConfig) -> str | None:
    """The setting that makes rollouts greedy (one token kept at every step), or None. Greedy
    groups are degenerate: equal completions, equal rewards, zero advantages, no gradient."""
    if rollout.temperature == 0:
        return "rollout.temperature=0"
    if rollout.top_k == 1:
        return "rollout.top_k=1"
    # The nucleus keeps the most likely token alone whenever its probability reaches top_p, and over
    # V tokens that probability is at least 1/V: top_p <= 1/V is greedy at every step. 2**18 bounds
    # the vocabularies in use (Gemma's 256k), so below 2**-18 that holds for any model.
    if rollout.top_p <= 2**-18:
        return f"rollout.top_p={rollout.top_p:g}"
    return None


def validate_algo(cfg: Config) -> None:
    """The algorithm knobs that only make sense together."""
    a = cfg.algo
    if a.dual_clip and (a.dual_clip <= 1 or a.surrogate != "clip"):
        raise ConfigError(f"config key 'algo.dual_clip' must be 0 (off) or > 1 with algo.surrogate=clip, got "
                          f"{a.dual_clip} with surrogate={a.surrogate}")
    if a.max_refill_rounds and not a.drop_zero_std:
        raise ConfigError("config key 'algo.max_refill_rounds' refills groups dropped for equal rewards: "
                          "set algo.drop_zero_std=true too")
    if a.overlong_buffer >= cfg.rollout.max_new_tokens:
        raise ConfigError(f"config key 'algo.overlong_buffer' ({a.overlong_buffer}) must be below "
                          f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens})")
    if a.rollout_correction_cap < 1:
        raise ConfigError(f"config key 'algo.rollout_correction_cap' must be >= 1, got {a.rollout_correction_cap}")


JAX_VARIANTS = {"scale_rewards": ("group", "none"), "loss_agg": ("sequence", "token", "constant")}


def validate_jax(cfg: Config) -> None:
    """What backend=jax does not do (yet), each with the fix."""
    fix = "; use backend=torch for it"
    if cfg.finetune != "lora":
        raise ConfigError(f"backend=jax trains LoRA adapters only, not finetune={cfg.finetune}: set finetune=lora{fix}")
    if cfg.optimizer != "adamw":
        raise ConfigError(f"optimizer={cfg.optimizer} is a bitsandbytes CUDA optimizer: set optimizer=adamw "
                          "(optax AdamW) with backend=jax")
    if cfg.rollout.engine in ("vllm", "vllm-server"):
        raise ConfigError("backend=jax samples with its own jitted sampler, not vLLM: drop "
                          f"rollout.engine={cfg.rollout.engine}")
    if not (cfg.device == "auto" or cfg.device == "cpu"):
        raise ConfigError(f"backend=jax picks its devices itself (all TPU cores / GPUs): set device=auto "
                          f"(or device=cpu), not {cfg.device!r}")
    if cfg.dtype == "float16":
        raise ConfigError("backend=jax computes in bfloat16 or float32: set dtype=bfloat16 (or auto)")
    if cfg.lora.dropout > 0:
        raise ConfigError("backend=jax has no LoRA dropout: set lora.dropout=0" + fix)
    if cfg.lora.last_layers:
        raise ConfigError("backend=jax adapts every layer: set lora.last_layers=0" + fix)
    if cfg.rollout.batch_size:
        raise ConfigError("backend=jax generates a step's rollouts in one batch: set rollout.batch_size=0")
    a, default = cfg.algo, type(cfg.algo)()
    ported = ("scale_rewards", "loss_agg", "epsilon_low", "epsilon_high", "beta", "mu", "drop_zero_std")
    unported = [f"algo.{f.name}={getattr(a, f.name)}" for f in dataclasses.fields(a)
                if f.name not in ported and getattr(a, f.name) != getattr(default, f.name)]
    # Of these two tables' rows, the JAX loop runs only those it was written for (aha/jax/train.py, jax/algo.py):
    # a row added to variants.py is refused here, not met by a ValueError after the run directory was written.
    for key, ported_rows in JAX_VARIANTS.items():
        if getattr(a, key) not in ported_rows:
            unported.insert(0, f"algo.{key}={getattr(a, key)}")
    if unported:
        raise ConfigError(f"backend=jax does not implement {', '.join(unported)}" + fix)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
