"""The run configuration: one typed dataclass, YAML presets, `key=value` overrides (checked by
validation.py), and what may differ on resume.

A preset is a YAML file of overrides on top of the defaults below. `load_config` applies the
preset, then the command line's `key=value` pairs (nested keys with dots: `rollout.temperature=0.9`,
`task_options.data=train.jsonl`). An unknown key or a value of the wrong type is a `ConfigError`
that names the key, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aha.errors import ConfigError, did_you_mean
from aha.validation import validate

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class LoraConfig:
    r: int = 16  # LoRA rank
    alpha: int = 32  # scaling = alpha / r
    dropout: float = 0.0  # > 0 makes the training forward differ from the rollout's
    # 0 = adapt every decoder layer; N = only the last N. The backward pass then stops at the
    # lowest adapted layer, which roughly halves a CPU step (the cpu-demo preset uses it).
    last_layers: int = 0
    # Module names to adapt; "all-linear" = every linear layer but the LM head (peft's shortcut).
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class RolloutConfig:
    engine: str = "hf"  # aha/engines.py: hf (transformers generate) | native | vllm | vllm-server
    num_generations: int = 8  # G: completions per prompt; advantages are relative within a group
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    batch_size: int = 0  # sequences generated at once; 0 = all of a step at once
    # engine=vllm-server: the servers' URLs ([http://127.0.0.1:8000]), and where LoRA adapter versions are
    # written for them ("" = a temporary directory; remote servers need one they read at the same path)
    vllm_servers: list[str] = field(default_factory=list)
    vllm_adapter_dir: str = ""


@dataclass
class AlgoConfig:
    # Advantage = (r - baseline) / std; README "Algorithm variants" maps papers to these keys.
    # baseline: "group" = mean of the prompt's G rewards (GRPO, Shao et al. 2024); "leave_one_out" = mean
    # of the other G - 1 (RLOO, Ahmadian et al. 2024); "batch" = mean of the whole batch (REINFORCE++, Hu 2025).
    baseline: str = "group"
    # scale_rewards: divide by the std of the advantages over the "group" (GRPO), the "batch" (REINFORCE++)
    # or "none" (Dr. GRPO, Liu et al. 2025: std scaling over-weights easy and hard groups). The older
    # booleans still work: true = group, false = none.
    scale_rewards: bool | str = "group"
    # Loss aggregation: "sequence" = mean over each completion's tokens, then over completions
    # (GRPO, Shao et al. 2024); "token" = mean over all tokens of the batch (DAPO, Yu et al. 2025);
    # "constant" = sum over tokens / (completions * max_new_tokens) (Dr. GRPO).
    loss_agg: str = "sequence"
    # ratio: "token" = pi/pi_old per token (PPO, GRPO); "sequence" = its length-normalised geometric mean
    # over the completion (GSPO, Zheng et al. 2025; use epsilon_low=3e-4, epsilon_high=4e-4).
    ratio: str = "token"
    # surrogate: "clip" = PPO's min(r A, clip(r) A) (a clipped token gets no gradient); "reinforce" =
    # sg(clip(r)) * A * log pi, the clipped ratio as a constant weight (CISPO, MiniMax 2025: clipped tokens
    # still learn; the paper sets no lower bound, epsilon_low=1, and loss_agg=token).
    surrogate: str = "clip"
    epsilon_low: float = 0.2  # PPO clip range below 1
    epsilon_high: float = 0.2  # above 1; DAPO's clip-higher uses 0.28
    dual_clip: float = 0.0  # c > 1 bounds a negative advantage's loss at -c A (dual-clip PPO, Ye et al. 2020); 0 = off
    beta: float = 0.0  # k3 KL to the reference model; 0 skips the reference forward entirely
    entropy_coef: float = 0.0  # entropy bonus: loss -= coef * entropy (same aggregation); 0 = off
    mu: int = 1  # optimizer steps per batch of rollouts (GRPO's mu); > 1 uses old log-probs
    # DAPO (Yu et al. 2025). Dynamic sampling: drop groups whose rewards are all equal (no signal) and,
    # with max_refill_rounds > 0, draw up to that many extra batches of prompts until prompts_per_step
    # groups carry a reward spread (the surplus is not used).
    drop_zero_std: bool = False
    max_refill_rounds: int = 0
    # Overlong reward shaping: a penalty falling linearly from 0 to -overlong_penalty over the last
    # overlong_buffer tokens before rollout.max_new_tokens (0 = off); mask_truncated drops completions
    # cut at max_new_tokens from the loss (overlong filtering; they still count in their group's baseline).
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    mask_truncated: bool = False
    # Rollout/trainer mismatch: weight each token's loss by rho = pi_trainer / pi_rollout, capped
    # ("truncate", TIS, Yao et al. 2025) or zeroed above the cap ("mask", MIS, Liu et al. 2025); per
    # "token" or per "sequence" (length-normalised). "none": only measured (mismatch/* metrics).
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0
    rollout_correction_level: str = "token"


@dataclass
class Config:
    """Everything a run does, with the defaults below; a preset (configs/NAME.yaml) and `key=value`
    overrides set fields by their dotted names (`rollout.temperature`). Build one with
    `load_config`, which validates it; `to_dict()` is what a run saves as config.yaml."""

    # --- run ---
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 100
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    deterministic: bool = False  # torch.use_deterministic_algorithms; used by the resume test
    # torch (the default) | jax: the same GRPO in JAX for TPUs (aha/jax/, docs/tpu.md). Under jax,
    # device is auto (jax's default backend) or cpu, and rollout.engine is unused (its own sampler).
    backend: str = "torch"
    # --- model ---
    model: str = "smollm2-135m"  # hub id, local dir, .gguf file, smollm2-135m, random:<arch>
    finetune: str = "lora"  # lora | qlora (4-bit base, CUDA + bitsandbytes) | full
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    # --- task ---
    task: str = "gsm8k"
    task_options: dict[str, Any] = field(default_factory=dict)  # passed to get_task(task, **options)
    # --- sampling and algorithm ---
    prompts_per_step: int = 4  # distinct prompts per step; the batch is prompts_per_step * G
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # --- optimisation ---
    lr: float = 5e-6
    lr_schedule: str = "constant"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0  # 0 = no clipping
    # adamw (torch) | adamw8bit | paged_adamw8bit: bitsandbytes' 8-bit moments (2 instead of 8 bytes
    # per trainable parameter; paged = evicted to CPU RAM under memory pressure), for full fine-tuning
    # on CUDA. See aha/optim.py.
    optimizer: str = "adamw"
    micro_batch_tokens: int = 4096  # token budget per forward/backward micro-batch
    logprob_chunk: int = 256  # sequence chunk for log-probs: [B, chunk, vocab] logits at most
    # --- logging, eval, checkpoints ---
    log_completions_every: int = 1  # write completions.jsonl every N steps (0 = never)
    probe_every: int = 10  # greedy completion of one fixed test prompt every N steps (0 = never)
    eval_every: int = 0  # 0 = never; else also at step 0 (the untrained policy) and the last step
    warn_no_signal_steps: int = 5  # warn once this many steps in a row carry no signal (0 = never)
    # A step with a NaN/inf reward, advantage, loss or gradient skips its update (aha/guards.py);
    # this many in a row stop the run (0 = never stop).
    max_nonfinite_steps: int = 3
    eval_limit: int = 50  # held-out examples per periodic eval
    save_every: int = 50  # 0 = only at the end
    keep_last: int = 3  # checkpoints kept on disk
    tensorboard: bool = True  # legacy switch: false removes tensorboard from report_to
    # Trackers that get every metric (the names of metrics.jsonl), the config, and completions tables:
    # tensorboard | wandb | trackio, each an optional extra (aha/trackers.py); [] or [none]: only the JSONL files.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    report_table_every: int = 10  # send a table of the step's completions to the trackers every N steps (0 = never)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_path(name_or_path: str) -> Path:
    """`rtx5090`, `configs/rtx5090.yaml` or any YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    presets = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no config {name_or_path!r}{did_you_mean(name_or_path, presets)}: not a YAML file and not "
                      f"a preset (presets: {', '.join(presets)})")


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """The configuration of a run: the defaults, then the preset, then the overrides, validated.

    Args:
        preset: a preset name (`smoke`: configs/smoke.yaml), a YAML path, or None for the defaults.
        overrides: `key=value` strings; the value is read as YAML (`lr=1e-5`, `lora.target_modules=[q_proj]`)
            and nested keys are dotted (`rollout.temperature=0.9`).
    Returns:
        A validated `Config`.
    Raises:
        ConfigError: an unknown preset, invalid YAML, an unknown key or a value of the wrong type
            (the message names the key), or a value `validate` refuses.
    """
    cfg = Config()
    if preset is not None:
        path = preset_path(preset)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        _apply_mapping(cfg, data, prefix="")
    drop_other_task_options(cfg, overrides or [])
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        set_key(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    validate(cfg)
    absolute_task_file(cfg)
    return cfg


def absolute_task_file(cfg: Config) -> None:
    """A task given as a relative `path/to/my_task.py:Class` that exists here becomes absolute, so the
    run's saved config.yaml finds it from any directory (`aha eval --checkpoint` run elsewhere)."""
    file, sep, cls = cfg.task.rpartition(":")
    if sep and file.endswith(".py") and not Path(file).expanduser().is_absolute() and Path(file).is_file():
        cfg.task = f"{Path(file).resolve()}:{cls}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: plain YAML lets
    the last one win silently, so `lr: 1e-5` above a forgotten `lr: 1e-3` would train at 1e-3."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, it is no key
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"line {line}"
                raise _DuplicateKey(f"key {key!r} is given twice ({where}): keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` (None when empty). Raises ConfigError naming the file: not valid
    YAML, or a key given twice in one mapping (the line numbers of both)."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def drop_other_task_options(cfg: Config, overrides: list[str]) -> None:
    """`task=X` on the command line over a preset made for another task: the preset's task_options
    belong to that task, so they are dropped (with a note), not passed to X. Options given on the
    command line (task_options.KEY=VALUE) are applied afterwards and kept."""
    tasks = [yaml.safe_load(v) for k, sep, v in (o.partition("=") for o in overrides) if sep and k.strip() == "task"]
    if not tasks or str(tasks[-1]) == cfg.task or not cfg.task_options:
        return
    if any(k.strip() == "task_options" for k, sep, _ in (o.partition("=") for o in overrides) if sep):
        cfg.task_options = {}  # replaced whole on the command line anyway: no note
        return
    print(f"aha: note: task={tasks[-1]} replaces the preset's task {cfg.task}; its task_options "
          f"({', '.join(cfg.task_options)}) are dropped - set {tasks[-1]}'s own as task_options.KEY=VALUE",
          file=sys.stderr)
    cfg.task_options = {}


def _apply_mapping(obj: Any, data: dict, prefix: str) -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if dataclasses.is_dataclass(getattr(obj, key, None)) and isinstance(value, dict):
            _apply_mapping(getattr(obj, key), value, prefix=f"{full}.")
        else:
            set_key(obj, str(key), value, full_name=full)


def set_key(obj: Any, dotted: str, value: Any, full_name: str | None = None) -> None:
    """Set `a.b.c = value` with type checking; dict fields accept any sub-key."""
    name = full_name or dotted
    head, _, rest = dotted.partition(".")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields:
        # a typo (difflib), else a shortened name (every key with the same first three letters)
        # a near-certain typo (lr_schedul), else the word before "_" (lr_rate -> lr, not lr_schedule), else a
        # likely typo (difflib), else a shortened name (every key with the same first three letters)
        stem = [head.split("_")[0]] if "_" in head and head.split("_")[0] in fields else []
        close = (difflib.get_close_matches(head, fields, n=2, cutoff=0.85) or stem
                 or difflib.get_close_matches(head, fields, n=2) or [k for k in fields if k.startswith(head[:3])])
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown config key {name!r}{hint}; known keys here: {', '.join(fields)}")
    current = getattr(obj, head)
    if rest:
        if dataclasses.is_dataclass(current):
            return set_key(current, rest, value, full_name=name)
        if isinstance(current, dict):
            sub = current
            *parents, leaf = rest.split(".")
            for p in parents:
                sub = sub.setdefault(p, {})
            sub[leaf] = value
            return None
        raise ConfigError(f"config key {name!r}: {head!r} has no sub-keys")
    hints = typing.get_type_hints(type(obj))
    setattr(obj, head, coerce(value, hints[head], name))
    return None


def coerce(value: Any, tp: Any, name: str) -> Any:
    """`value` (from YAML or a command-line `key=value`) as type `tp`, by the config's rules; `name`
    is the key the error message names.

    Accepts: `X | None` (None, else the first member that takes the value), a config dataclass (from
    a mapping, its keys checked as in a preset), `list[X]` (a list, or a comma-separated string:
    `q_proj,v_proj`), `dict` (a mapping, copied), `Any` (as is), `bool` (true/false only, never 0/1),
    `int` (an integer, not a bool), `float` (a number, or a string such as `1e-5` that YAML 1.1
    leaves unparsed), `str` (a string or a number, not a bool); any other type passes the value as is.

    Raises:
        ConfigError: the value does not fit `tp`, naming the key, the value and what was expected.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, name)
            except ConfigError:
                pass
        raise ConfigError(f"config key {name!r}: {value!r} is not a {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {value!r}")
        sub = tp()
        _apply_mapping(sub, value, prefix=f"{name}.")
        return sub
    if origin is list:
        if isinstance(value, str):  # `lora.target_modules=q_proj,v_proj` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key {name!r}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item_tp, name) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {name!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {name!r}: expected a string, got {value!r}")
    return value
