"""Checks that refuse bad input early and keep bad numbers out of the weights.

- `preflight`: what takes milliseconds (device, installed extras) runs before anything slow (hub,
  data, model), so `aha train -c rtx5090` on a CPU-only machine fails at once with the fix.
- `check_task_options`: a task's options against its own constructor, one line listing the known.
- `require_examples`: an empty split (empty data file, n_train=0) is refused instead of looping.
- The non-finite guard: a NaN or inf reward (named), advantage, loss or gradient norm skips the
  optimizer step with one warning (`nonfinite_skipped` in the metrics); an update that overflows
  the weights (lr far too high) is rolled back; `max_nonfinite_steps` such steps in a row stop the
  run (`NonFiniteError`); `require_finite` refuses to checkpoint non-finite weights or optimizer
  state. A skipped step still advances the data cursor (its prompts are not retried), so a
  resumed run stays exact.
"""

from __future__ import annotations

import heapq
import importlib.util
import inspect
import json
import math
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aha.errors import AhaError, ConfigError, DataError, ModelError, did_you_mean

# A rolled-back update needs a copy of the trainable weights from before the step; above this
# size (full fine-tuning of a large model) the copy is not kept and an overflow stops the run.
SNAPSHOT_MAX_BYTES = 1 << 30
# An update is an overflow when it leaves a weight non-finite, or beyond WEIGHT_LIMIT in magnitude
# and WEIGHT_GROWTH times the largest weight before it. Trained LLM weights stay far below 1e6 (fp16
# cannot even hold 7e4); a weight that large makes the next forward pass overflow (attention
# logits grow with its square), and the sampler then fails far from the cause.
WEIGHT_LIMIT = 1e6
WEIGHT_GROWTH = 1e3


class NonFiniteError(AhaError):
    """Non-finite values in too many steps in a row, or in weights about to be saved."""


# ---------------------------------------------------------------------------- before anything slow

def preflight(cfg: Any) -> None:
    """Device and installed extras, before any hub, data or model access (cheapest checks first)."""
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard, "
                          "or set tensorboard=false")
    if cfg.backend != "torch":
        return  # the jax backend checks its own devices (config.validate_jax, aha/jax/train.py)
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
        from aha.rollout.vllm import INSTALL

        raise ModelError(INSTALL)
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
    from aha.config import _coerce

    return {k: _coerce(v, hints[k], f"task_options.{k}") if k in hints else v for k, v in options.items()}


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


# ---------------------------------------------------------------------------- a reward that raises

class RewardError(AhaError):
    """A task's reward or judge raised: named with the step and the completion (AHA_DEBUG=1: traceback)."""


JUDGES = ("score", "is_correct", "is_correct_lenient", "is_formatted", "final_answer")


class NamedFailures:
    """A task whose rewards and judges, when they raise, raise a RewardError naming the reward, the
    step (`step`, set by the training loop; None in `aha eval`), the example and a short repr of the
    completion, instead of ending the run with a bare message or a traceback into the task's file.
    Everything else is the task's own (attributes are passed through)."""

    def __init__(self, task: Any):
        self.__dict__["_task"], self.__dict__["step"] = task, None

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._task, name)
        if name not in JUDGES or not callable(value):
            return value

        def judged(*args: Any, **kwargs: Any) -> Any:  # (completion, ex), or (completion,) for final_answer
            try:
                return value(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a user's reward may raise anything: name it
                completion = str(args[0]) if args else ""
                raise self._named(name, completion, args[1] if len(args) > 1 else None, e) from e
        return judged

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "step":
            self.__dict__["step"] = value
        else:
            setattr(self._task, name, value)

    def _named(self, judge: str, completion: str, ex: Any, err: Exception) -> RewardError:
        what = f"{judge}()"
        if judge == "score":  # which reward: the first that raises again on the same text
            for reward, (fn, _) in getattr(self._task, "rewards", {}).items():
                try:
                    fn(completion, ex)
                except Exception:  # noqa: BLE001 - the one that raised
                    what = f"reward {reward!r}"
                    break
        short = completion if len(completion) <= 60 else completion[:60] + "..."
        when = f" at step {self.step}" if self.step is not None else ""
        where = f" on example {ex.id}," if getattr(ex, "id", None) is not None else " on"
        message = " ".join(str(err).split())[:160]
        return RewardError(f"{what} of task {getattr(self._task, 'name', type(self._task).__name__)} raised "
                           f"{type(err).__name__}: {message}{when}{where} completion "
                           f"{short!r}; a reward must return a number for any text (AHA_DEBUG=1 shows the traceback)")


# ---------------------------------------------------------------------------- non-finite values

def nonfinite_inputs(scores: Sequence[tuple[float, dict[str, float]]], advantages: Any) -> str | None:
    """What is non-finite among a step's rewards (each named, with how many completions) and
    advantages (`.tolist()` of a tensor or array), or None when all are finite."""
    counts: dict[str, int] = {}
    for total, parts in scores:
        names = [n for n, v in parts.items() if not math.isfinite(v)]
        if not names and not math.isfinite(total):
            names = ["(total)"]
        for n in names:
            counts[n] = counts.get(n, 0) + 1
    if counts:
        return ", ".join(f"reward {n!r} in {k} of {len(scores)} completions" for n, k in counts.items())
    if not all(math.isfinite(float(x)) for x in advantages.tolist()):
        return "advantages (the rewards are finite but too large to normalise)"
    return None


def _max_abs(tensors: Sequence[Any]) -> float:
    """The largest |value| over float tensors (NaN if any is NaN, inf if any is inf), one device sync."""
    import torch

    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return 0.0
    # inf-norms in each tensor's own dtype (exact, no float32 copy of bf16 weights), fused per
    # dtype and device as clip_grad_norm_ does: a few kernels for hundreds of LoRA matrices
    norms = torch.stack([n.float().to(tensors[0].device)
                         for n in torch._foreach_norm([t.detach() for t in tensors], math.inf)])
    if torch.isnan(norms).any():
        return math.nan
    return float(norms.max())


def finite(tensors: Sequence[Any]) -> bool:
    """Whether every value of these tensors is finite (one device sync)."""
    return math.isfinite(_max_abs(tensors))


def optimizer_tensors(optimizer: Any) -> list[Any]:
    """The optimizer's floating-point state (moments...), which a checkpoint saves too."""
    import torch

    return [v for st in optimizer.state.values() for v in st.values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()]


def overflowed(before: float, after: float) -> bool:
    """Whether an update took the largest |weight| from `before` to an overflow: non-finite, or
    beyond both WEIGHT_LIMIT and WEIGHT_GROWTH times what it was."""
    return not after <= max(WEIGHT_LIMIT, WEIGHT_GROWTH * before)  # NaN compares False


def guarded_step(optimizer: Any, params: list[Any], grad_norm: Any) -> str | None:
    """`optimizer.step()` unless the gradient is non-finite. An update that overflows the weights
    (see `overflowed`) is undone from a copy; optimizer state it made non-finite is dropped (that
    parameter's moments restart). Returns what was non-finite, or None after a clean step."""
    import torch

    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return "loss or gradient"
    size = sum(p.numel() * p.element_size() for p in params)
    snapshot = [p.detach().clone() for p in params] if size <= SNAPSHOT_MAX_BYTES else None
    before = _max_abs(params)
    try:
        optimizer.step()
        after = _max_abs(params)
    except RuntimeError as e:  # torch refuses a step size beyond float range (lr ~ 1e38) mid-step
        if "overflow" not in str(e):
            raise
        after = math.inf
    if not overflowed(before, after) and finite(optimizer_tensors(optimizer)):
        return None
    if snapshot is None:
        raise NonFiniteError("the optimizer step made the weights non-finite (an overflow: is lr far too high?) "
                             "and they are too large to roll back; stopped without saving them. Lower lr and "
                             "resume from the last checkpoint with --resume")
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)
    for p in params:
        state = optimizer.state.get(p) or {}
        if not finite([v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]):
            optimizer.state[p] = {}
    return "update (the step overflowed the weights; lr far too high?)"


def require_finite(tensors: Sequence[Any], what: str) -> None:
    """Refuse to save non-finite values (checkpoint weights or optimizer state)."""
    if not finite(list(tensors)):
        raise NonFiniteError(f"refusing to save {what}: it holds non-finite values (NaN or inf); the previous "
                             "checkpoint is intact - resume from it with --resume, with a lower lr")


class NonFiniteGuard:
    """Counts steps skipped for non-finite values: one warning each, a stop after `limit` in a row
    (0 = never stop). `record` returns the `nonfinite_skipped` metric (1.0 or 0.0)."""

    def __init__(self, limit: int, verbose: bool = True):
        self.limit, self.verbose, self.streak = limit, verbose, 0

    def record(self, step: int, problem: str | None) -> float:
        if problem is None:
            self.streak = 0
            return 0.0
        self.streak += 1
        if self.limit and self.streak >= self.limit:
            raise NonFiniteError(
                f"{self.streak} steps in a row (up to step {step}) had non-finite values, last: {problem}; their "
                "non-finite updates were not applied and every checkpoint is finite. Fix the cause (a reward "
                "returning NaN/inf, or lr too high), then --resume (max_nonfinite_steps sets how many in a row "
                "are tolerated)")
        if self.verbose:
            stop = f"; the run stops at {self.limit} in a row" if self.limit else ""
            print(f"aha: warning: step {step}: non-finite {problem}; skipped this optimizer step "
                  f"({self.streak} in a row{stop})", file=sys.stderr, flush=True)
        return 1.0
