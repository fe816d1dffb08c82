"""Preflight: the cheap checks that refuse bad input before anything slow (hub, data, model) runs.

- `preflight`: what takes milliseconds (device, installed extras, the model name) runs first, so
  `aha train -c rtx5090` on a CPU-only machine fails at once with the fix.
- `check_task_options`: a task's options against its own constructor, one line listing the known
  (values coerced by the config's own rules, `config.coerce`).
- `require_examples` / `train_examples`: an empty split (empty data file, n_train=0) is refused
  instead of looping; `split_overlap` / `overlap_warning`: a "held-out" split that repeats train
  prompts is said out loud.
- `check_context`: prompts that cannot fit the model's context with the completion budget.

Each failure is one line (a ConfigError, DataError or ModelError) that names the fix. What guards a
run once it is going - non-finite rewards, losses and updates - is aha/guards.py.
"""

from __future__ import annotations

import heapq
import importlib.util
import inspect
import json
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aha.config import coerce
from aha.engines import VLLM_INSTALL
from aha.errors import ConfigError, DataError, ModelError, did_you_mean


def preflight(cfg: Any) -> None:
    """Device and installed extras, before any hub, data or model access (cheapest checks first)."""
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard, "
                          "or set tensorboard=false")
    if cfg.backend != "torch":
        return  # the jax backend checks its own devices (validation.validate_jax, aha/jax/train.py)
    import torch

    from aha.model import ARCHS, check_qlora_available, resolve_device, smollm2_gguf_path
    from aha.optim import BNB_CLASSES, check_bnb_available

    device = resolve_device(cfg.device)  # device=cuda without CUDA: the error names the fix
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"device={cfg.device} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if cfg.finetune == "qlora":
        check_qlora_available()
    if cfg.optimizer in BNB_CLASSES:
        check_bnb_available(cfg.optimizer, [])
    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:

        raise ModelError(VLLM_INSTALL)
    model_source(cfg.model, ARCHS)
    if cfg.model == "smollm2-135m":
        smollm2_gguf_path()


def model_source(name: str, archs: dict[str, Any]) -> None:
    """What can be said about a model name without loading it (aha/model.py's `load_base` rules)."""
    if name.startswith("random:"):
        arch = name.split(":", 1)[1]
        if arch not in archs:
            raise ModelError(f"unknown architecture {arch!r} for random:<arch>; known: {', '.join(archs)}")
        return
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"model file {path} does not exist")
        if importlib.util.find_spec("gguf") is None:
            raise ModelError(f"model={name} is a GGUF file: loading it needs the gguf package (pip install gguf)")
    elif name.startswith((".", "/", "~")) and not path.exists():
        raise ModelError(f"model directory {path} does not exist")


def check_task_options(name: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Task `cls`'s options checked against its constructor: an option it does not take, a required
    one missing, or a value of the wrong type (by its annotation, with the config's own rules) is
    one line that lists the options it knows. Returns the options with their values coerced."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    known = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ConfigError(f"task {name!r} does not accept the option {', '.join(map(repr, unknown))}{hint}; "
                          f"its options: {', '.join(known) or 'none'} (task_options.KEY=VALUE; --task-option "
                          "KEY=VALUE for aha eval/play)")
    missing = [n for n in known if params[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise ConfigError(f"task {name!r} needs the option(s) {', '.join(missing)}: "
                          f"set task_options.{missing[0]}=...")
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve here: the task checks its own values
        hints = {}
    return {k: coerce(v, hints[k], f"task_options.{k}") if k in hints else v for k, v in options.items()}


def require_examples(examples: Sequence[Any], task: str, split: str, options: dict[str, Any]) -> None:
    """An empty split is an error here, not an endless loop or an accuracy of 0 on 0 examples later."""
    if len(examples) == 0:
        opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "none"
        raise DataError(f"task {task!r} has 0 {split} examples (task options: {opts}); an empty data file or "
                        f"a count of 0 leaves nothing to run on: give it data")


def train_examples(task: Any, cfg: Any) -> Sequence[Any]:
    """The task's train split for `aha train`; an empty one (or an empty test split, when evals or
    the probe need it) is a DataError before anything is written."""
    examples = task.examples("train")
    require_examples(examples, cfg.task, "train", cfg.task_options)
    if cfg.eval_every or cfg.probe_every:
        require_examples(task.examples("test"), cfg.task, "test", cfg.task_options)
    # the periodic eval is what a test split that repeats train prompts would mislabel as held out
    warning = overlap_warning(task, cfg.task, "test", train=examples) if cfg.eval_every else None
    if warning and os.environ.get("RANK", "0") == "0":
        print(warning, file=sys.stderr, flush=True)
    return examples


def _prompt_key(prompt: Any) -> str:
    """A prompt (text or chat messages) as a comparable string."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


def split_overlap(task: Any, split: str, train: Sequence[Any] | None = None) -> tuple[int, int, str] | None:
    """(shared, total, an example) when prompts of `split` also appear in the task's train split, else
    None (also when either split cannot be loaded: its own check reports that). `train`: the train
    examples if already loaded."""
    if split == "train":
        return None
    try:
        train = task.examples("train") if train is None else train
        held_out = task.examples(split)
    except Exception:  # noqa: BLE001 - no such split, no data here: nothing to compare
        return None
    seen = {_prompt_key(ex.prompt) for ex in train}
    shared = [ex for ex in held_out if _prompt_key(ex.prompt) in seen]
    if not shared:
        return None
    text = shared[0].prompt if isinstance(shared[0].prompt, str) else _prompt_key(shared[0].prompt)
    return len(shared), len(held_out), " ".join(text.split())[-80:]


def overlap_warning(task: Any, name: str, split: str, train: Sequence[Any] | None = None) -> str | None:
    """One loud line when the held-out split shares prompts with the train split (a "held-out" eval
    of training problems), or None."""
    overlap = split_overlap(task, split, train)
    if overlap is None:
        return None
    shared, total, example = overlap
    return (f"aha: warning: {shared} of the {total} {split} prompts of task {name} are also train prompts (e.g. "
            f"...{example!r}): the {split} accuracy is not held out; point the task's train and {split} data "
            "at disjoint files")


# The config keys that hold a model's context length (positions), by architecture family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
LONGEST_CHECKED = 64  # prompts tokenized, the longest by characters: tokens grow with characters


def max_positions(config: Any) -> int | None:
    """The model's context length from its config, or None when it does not say."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if type(value) is int and value > 0:
            return value
    return None


def check_context(tokenizer: Any, config: Any, examples: Sequence[Any], max_new_tokens: int,
                  render: Any, split: str = "train", budget: str = "rollout.max_new_tokens=") -> None:
    """Refuse (ConfigError, one line) prompts that cannot fit the model's context with the completion
    budget: longest prompt tokens + max_new_tokens > max positions. Past it, position ids run off the
    embedding table (an IndexError mid-rollout) or attention's memory explodes. Checks the
    LONGEST_CHECKED longest prompts by characters, rendered by `render(tokenizer, prompt)`. `budget`:
    how the message names the completion budget (`--max-new-tokens ` in `aha eval`)."""
    limit = max_positions(config)
    if not limit or not examples:
        return

    def chars(prompt: Any) -> int:
        return len(prompt) if isinstance(prompt, str) else sum(len(str(m.get("content", ""))) for m in prompt)

    lengths = [(len(tokenizer(render(tokenizer, ex.prompt))["input_ids"]), ex.id)
               for ex in heapq.nlargest(LONGEST_CHECKED, examples, key=lambda ex: chars(ex.prompt))]
    longest, ex_id = max(lengths)
    if longest + max_new_tokens > limit:
        fix = (f"lower {budget.rstrip('= ')} to {limit - longest} or less" if longest < limit
               else "shorten or drop the long prompts")
        raise ConfigError(f"the longest {split} prompt ({ex_id}) is {longest} tokens; with {budget}"
                          f"{max_new_tokens} that is {longest + max_new_tokens}, past the model's context of {limit} "
                          f"positions: {fix} (or use a model with a longer context)")
