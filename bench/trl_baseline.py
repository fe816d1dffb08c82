"""The baseline for bench/step.py: the same GRPO step through TRL's `GRPOTrainer` (no vLLM).

"The same step" means, from one aha `Config`: the same model (loaded by `aha.model.load_base`, same
dtype, device, LoRA rank / alpha / dropout / target modules / layers, gradient checkpointing), the same
prompts in the same order (rendered to text exactly as aha renders them, so both tokenize the same
string), G completions per prompt with the same length limit and sampling settings, the task's own
reward functions and weights, the same advantage scaling, loss aggregation, clip range, beta, mu,
learning rate, betas, weight decay, grad clipping and optimizer (TRL's lr schedule is left constant: a
schedule changes no work), and one optimizer step per batch of prompts_per_step * G completions. By
default TRL runs that batch in one forward/backward (aha packs micro-batches by a token budget);
`rows_per_forward` splits it into gradient-accumulation micro-batches when one would not fit.

What is timed: each optimizer step of `trainer.train()`, from the Trainer's `on_step_begin` callback to
its `on_step_end` (the callbacks bracket generation, reward scoring, advantages, forward/backward,
clipping, `optimizer.step()` and the scheduler; they leave out the dataloader's fetch of the prompt
strings and logging, which is off). The split: `gen` = TRL's `_generate_and_score_completions` less its
reward calls (tokenize, `model.generate`, decode, advantages), `score` = `_calculate_rewards`,
`update` = the rest of the step. TRL is a bench-only dependency (`pip install 'aha[bench]'`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from aha.config import Config
from aha.model import load_base, resolve_device, resolve_dtype
from aha.rollout import render_prompt
from aha.tasks import get_task
from aha.tasks.base import Example
from aha.data import next_indices

# aha's algo.loss_agg -> TRL's loss_type (TRL's docs: "grpo" = mean over each sequence's tokens, then
# over sequences; "dapo" = over all tokens of the global batch; "dr_grpo" = over max_completion_length).
LOSS_TYPE = {"sequence": "grpo", "token": "dapo", "constant": "dr_grpo"}
OPTIM = {"adamw": "adamw_torch", "adamw8bit": "adamw_bnb_8bit", "paged_adamw8bit": "paged_adamw_8bit"}


class TaskReward:
    """One of an aha task's reward functions in TRL's calling convention: TRL passes the completions and
    the dataset's columns; the `ex_id` column finds the Example the reward function needs."""

    def __init__(self, name: str, fn: Callable[[str, Example], float], by_id: dict[str, Example]):
        self.__name__ = name  # TRL names its reward metrics after it
        self.fn, self.by_id = fn, by_id

    def __call__(self, prompts: list, completions: list[str], ex_id: list[str], **_: Any) -> list[float]:
        return [float(self.fn(text, self.by_id[i])) for text, i in zip(completions, ex_id)]


def run_trl(cfg: Config, steps: int, warmup: int, fixed_length: bool, rows_per_forward: int = 0) -> dict[str, Any]:
    """warmup + steps optimizer steps of TRL's GRPOTrainer; per-step times of the last `steps`."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model, tokenizer = load_base(cfg.model, dtype, quantize_4bit=cfg.finetune == "qlora", seed=cfg.seed)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    # The prompts aha's loop would draw, in its order; TRL then walks them unshuffled.
    task = get_task(cfg.task, **cfg.task_options)
    train_set = task.examples("train")
    state = {"step": 0, "epoch": 0, "cursor": 0}
    P, G = cfg.prompts_per_step, cfg.rollout.num_generations
    picked = [train_set[i] for _ in range(warmup + steps) for i in next_indices(len(train_set), P, state, cfg.seed)]
    data = Dataset.from_dict({"prompt": [render_prompt(tokenizer, ex.prompt) for ex in picked],
                              "ex_id": [ex.id for ex in picked]})
    by_id = {ex.id: ex for ex in picked}
    rewards = [TaskReward(name, fn, by_id) for name, (fn, _) in task.rewards.items()]

    a, r = cfg.algo, cfg.rollout
    rows = rows_per_forward or P * G
    if (P * G) % rows:
        raise ValueError(f"rows_per_forward={rows} does not divide the step's {P * G} completions")
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="aha-bench-trl-"), report_to="none", logging_strategy="no",
        save_strategy="no", disable_tqdm=True, seed=cfg.seed, use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        # One generation of P * G completions per optimizer step, in (P * G) / rows forward/backward passes.
        max_steps=warmup + steps, per_device_train_batch_size=rows, gradient_accumulation_steps=P * G // rows,
        generation_batch_size=P * G, num_generations=G, max_completion_length=r.max_new_tokens, shuffle_dataset=False,
        temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, use_vllm=False,
        # Fixed length: exactly max_new_tokens per completion on both sides (aha: ignore_eos).
        generation_kwargs={"min_new_tokens": r.max_new_tokens} if fixed_length else None,
        beta=a.beta, num_iterations=a.mu, epsilon=a.epsilon_low, epsilon_high=a.epsilon_high,
        loss_type=LOSS_TYPE[a.loss_agg], scale_rewards="group" if a.scale_rewards else "none",
        reward_weights=[w for _, w in task.rewards.values()],
        learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, max_grad_norm=cfg.max_grad_norm,
        optim=OPTIM[cfg.optimizer],
    )
    peft_config = None
    if cfg.finetune in ("lora", "qlora"):
        from peft import LoraConfig

        lo = cfg.lora
        n_layers = model.config.num_hidden_layers
        peft_config = LoraConfig(
            r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, task_type="CAUSAL_LM",
            target_modules="all-linear" if lo.target_modules == ["all-linear"] else lo.target_modules,
            layers_to_transform=list(range(n_layers - lo.last_layers, n_layers)) if lo.last_layers else None)

    # wall and CPU time (see bench/step.py's clock) of each step and of the instrumented calls in it
    timings: dict[str, list[tuple[float, float]]] = {"step": [], "prepare": [], "score": []}
    tokens: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            self.t0 = clock()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            timings["step"].append(elapsed(self.t0))

    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=data,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    _time_method(trainer, "_generate_and_score_completions", timings["prepare"], sync)
    _time_method(trainer, "_calculate_rewards", timings["score"], sync)
    generate_single_turn = trainer._generate_single_turn

    def counted(*args: Any, **kwargs: Any):  # completion tokens per step, to check both sides did equal work
        out = generate_single_turn(*args, **kwargs)
        tokens.append(float(sum(len(ids) for ids in out[0])))
        return out

    trainer._generate_single_turn = counted
    trainer.train()

    import trl

    keep = slice(warmup, warmup + steps)
    out: dict[str, Any] = {"tokens": tokens[keep], "version": trl.__version__}
    for i, prefix in enumerate(("", "cpu_")):  # wall, then CPU time
        step, prep, score = ([t[i] for t in timings[k][keep]] for k in ("step", "prepare", "score"))
        out.update({f"{prefix}steps": step, f"{prefix}score": score,
                    f"{prefix}gen": [p - s for p, s in zip(prep, score)],
                    f"{prefix}update": [t - p for t, p in zip(step, prep)]})
    return out


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def _time_method(obj: Any, name: str, out: list[tuple[float, float]], sync: Callable[[], None]) -> None:
    """Wrap obj.name so each call's (wall, CPU) time is appended to `out` (bench-only instrumentation)."""
    fn = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any):
        sync()
        t0 = clock()
        result = fn(*args, **kwargs)
        sync()
        out.append(elapsed(t0))
        return result

    setattr(obj, name, timed)
