"""The GRPO training loop, top to bottom: sample prompts -> rollout -> score -> advantages ->
micro-batched update -> log -> eval -> checkpoint.

Read `train()` first; `policy_update()` is the only other piece with real logic. The algorithm's
arithmetic is in algo.py, the memory-lean log-probs in logprobs.py.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from aha import checkpoint
from aha.algo import group_advantages, loss_weights, policy_loss
from aha.config import Config, ConfigError
from aha.log import RunLogger, reflection_rate
from aha.logprobs import completion_logprobs
from aha.model import load_policy, trainable_parameters
from aha.optim import build_optimizer
from aha.rollout import Rollout, SamplingParams, generate
from aha.tasks import get_task, reward_means


def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> Path:
    """Run GRPO as configured. `resume`: None (fresh run), "latest", or a checkpoint path."""
    run_dir = Path(cfg.output_dir)
    ckpt_path = _checkpoint_to_resume(run_dir, resume, overwrite)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    task = get_task(cfg.task, **cfg.task_options)
    train_set = task.examples("train")
    policy = load_policy(cfg.model, cfg.finetune, cfg.lora, cfg.device, cfg.dtype, cfg.gradient_checkpointing,
                         cfg.seed)
    model, tokenizer = policy.model, policy.tokenizer
    # Full fine-tuning needs a frozen copy for the KL term; LoRA disables its adapters instead.
    ref_model = None
    if cfg.algo.beta > 0 and policy.finetune == "full":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = build_optimizer(cfg, trainable_parameters(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    state: dict[str, Any] = {"step": 0, "epoch": 0, "cursor": 0}
    if ckpt_path is not None:
        state.update(checkpoint.load(ckpt_path, model, optimizer, scheduler))
        print(f"aha: resumed from {ckpt_path} at step {state['step']}", file=sys.stderr)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    logger = RunLogger(run_dir, cfg.tensorboard, resume_step=state["step"] if ckpt_path else None)
    progress = Progress(cfg.max_steps, state["step"])

    G = cfg.rollout.num_generations
    sampling = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                              cfg.rollout.top_k)
    model.train()
    for step in range(state["step"] + 1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        # 1. Prompts: a seeded permutation per epoch, walked by a cursor saved in checkpoints.
        examples = [train_set[i] for i in next_indices(len(train_set), cfg.prompts_per_step, state, cfg.seed)]
        group = [ex for ex in examples for _ in range(G)]  # each prompt G times, adjacent

        # 2. Rollout: G completions per prompt from the current policy.
        ro = generate(model, tokenizer, [ex.prompt for ex in group], sampling, cfg.rollout.engine,
                      cfg.rollout.batch_size)
        t_gen = time.perf_counter()

        # 3. Score: the task's rule-checked rewards; accuracy and format are separate metrics.
        scores = [task.score(text, ex) for text, ex in zip(ro.texts, group)]
        rewards = torch.tensor([total for total, _ in scores])  # (N,)
        correct = [task.is_correct(text, ex) for text, ex in zip(ro.texts, group)]
        formatted = [task.is_formatted(text, ex) for text, ex in zip(ro.texts, group)]
        t_score = time.perf_counter()

        # 4. Advantages within each group; all-equal groups carry no signal (optionally dropped).
        advantages, zero_std = group_advantages(rewards, G, scale=cfg.algo.scale_rewards)
        rows = torch.arange(len(group))
        if cfg.algo.drop_zero_std:
            rows = rows[~zero_std.repeat_interleave(G)]

        # 5. Update: mu optimizer steps over these rollouts, micro-batched by a token budget.
        stats = policy_update(model, ro, advantages, rows, optimizer, scheduler, cfg, ref_model)
        t_end = time.perf_counter()

        # 6. Log.
        lengths = ro.completion_mask.sum(dim=1).float()
        metrics = {
            "reward": rewards.mean().item(), "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
            **reward_means([parts for _, parts in scores]),
            "accuracy": sum(correct) / len(correct), "format_rate": sum(formatted) / len(formatted),
            "completion_len": lengths.mean().item(), "completion_len_max": lengths.max().item(),
            "truncated_rate": ro.truncated.float().mean().item(),
            "reflection_rate": reflection_rate(ro.texts), "frac_zero_std": zero_std.float().mean().item(),
            **stats, "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": lengths.sum().item() / max(t_gen - t0, 1e-9),
            "step_time": t_end - t0, "gen_time": t_gen - t0, "score_time": t_score - t_gen,
            "update_time": t_end - t_score, "epoch": state["epoch"],
        }
        if cfg.eval_every and step % cfg.eval_every == 0:
            from aha.eval import evaluate

            result = evaluate(model, tokenizer, task, split="test", limit=cfg.eval_limit,
                              max_new_tokens=cfg.rollout.max_new_tokens, engine=cfg.rollout.engine)
            metrics.update({f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        logger.log_metrics(step, metrics)
        if cfg.log_completions_every and step % cfg.log_completions_every == 0:
            logger.log_completions(step, [
                {"prompt_id": ex.id, "completion": text, "reward": total, "rewards": parts, "correct": ok}
                for ex, text, (total, parts), ok in zip(group, ro.texts, scores, correct)])
        if cfg.probe_every and (step == 1 or step % cfg.probe_every == 0 or step == cfg.max_steps):
            logger.log_completions(step, [probe_completion(model, tokenizer, task, cfg)])
        progress.update(step, metrics)

        # 7. Checkpoint (the state saved is the state *after* this step).
        state["step"] = step
        if step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0):
            checkpoint.save(run_dir, step, model, tokenizer, optimizer, scheduler, state, config_yaml, cfg.keep_last)
    progress.close()
    logger.close()
    return run_dir


def probe_completion(model: torch.nn.Module, tokenizer: Any, task: Any, cfg: Config) -> dict[str, Any]:
    """A greedy completion of one fixed held-out prompt, so a report can show the same prompt
    early, middle and late in the run. Greedy sampling consumes no RNG: resume stays exact."""
    ex = task.examples("test")[0]
    params = SamplingParams(cfg.rollout.max_new_tokens, temperature=0.0)
    text = generate(model, tokenizer, [ex.prompt], params, cfg.rollout.engine).texts[0]
    total, parts = task.score(text, ex)
    return {"prompt_id": ex.id, "completion": text, "reward": total, "rewards": parts,
            "correct": task.is_correct(text, ex), "probe": True}


def policy_update(model: torch.nn.Module, ro: Rollout, advantages: torch.Tensor, rows: torch.Tensor,
                  optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Config,
                  ref_model: torch.nn.Module | None = None) -> dict[str, float]:
    """mu optimizer steps on the rows `rows` of a rollout. Returns the step's update metrics."""
    a = cfg.algo
    temperature = cfg.rollout.temperature or 1.0  # log-probs of the distribution we sampled from
    nan = float("nan")
    if len(rows) == 0:  # every group was dropped (all rewards equal): nothing to learn from
        return {"loss": 0.0, "grad_norm": 0.0, "entropy": nan, "kl": nan, "clip_frac": 0.0, "update_skipped": 1.0}
    cmask = ro.completion_mask
    n_seqs, n_tokens = len(rows), int(cmask[rows].sum())
    batches = micro_batches(ro, rows, advantages, cfg.micro_batch_tokens)

    def logprobs(mb: dict[str, torch.Tensor], m: torch.nn.Module = model) -> tuple[torch.Tensor, torch.Tensor]:
        return completion_logprobs(m, mb["ids"], mb["mask"], mb["cmask"].shape[1], temperature, cfg.logprob_chunk)

    with torch.no_grad():
        # mu > 1 reuses these rollouts for several optimizer steps: the ratio needs the log-probs
        # of the policy that sampled them. With mu = 1 that policy *is* the current one.
        old = [logprobs(mb)[0] for mb in batches] if a.mu > 1 else None
        ref = None
        if a.beta > 0:
            if ref_model is not None:
                ref = [logprobs(mb, ref_model)[0] for mb in batches]
            else:
                with model.disable_adapter():  # LoRA: the base model is the reference
                    ref = [logprobs(mb)[0] for mb in batches]

    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    entropy_sum = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    for it in range(a.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, mb in enumerate(batches):
            logp, entropy = logprobs(mb)  # (b, c)
            w = loss_weights(mb["cmask"], a.loss_agg, n_seqs, n_tokens, cfg.rollout.max_new_tokens)
            loss, st = policy_loss(logp, old[i] if old else logp.detach(), mb["adv"], w, a.epsilon_low,
                                   a.epsilon_high, a.beta, ref[i] if ref else None)
            loss.backward()
            if it == a.mu - 1:  # report the last inner iteration's figures
                totals["loss"] += loss.item()
                totals["kl"] += st["kl"].item() if "kl" in st else 0.0
                totals["clip_frac"] += st["clip_frac"].item()
                entropy_sum += (entropy * mb["cmask"]).sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
    return {**totals, "kl": totals["kl"] if a.beta > 0 else nan, "entropy": entropy_sum / max(n_tokens, 1),
            "grad_norm": grad_norm.item(), "update_skipped": 0.0}


def micro_batches(ro: Rollout, rows: torch.Tensor, advantages: torch.Tensor,
                  token_budget: int) -> list[dict[str, torch.Tensor]]:
    """Pack rows into micro-batches of at most `token_budget` padded tokens each (at least one row),
    trimming each micro-batch's padding to its own longest prompt and completion."""
    p_len = ro.prompt_mask.sum(dim=1)  # (N,)
    c_len = ro.completion_mask.sum(dim=1)  # (N,)
    groups: list[list[int]] = [[]]
    for r in rows.tolist():
        trial = groups[-1] + [r]
        cost = len(trial) * (int(p_len[trial].max()) + int(c_len[trial].max()))
        if groups[-1] and cost > token_budget:
            groups.append([r])
        else:
            groups[-1] = trial
    out = []
    P = ro.prompt_ids.shape[1]
    for g in groups:
        idx = torch.tensor(g)
        pw, cw = int(p_len[idx].max()), max(int(c_len[idx].max()), 1)
        ids = torch.cat([ro.prompt_ids[idx, P - pw:], ro.completion_ids[idx, :cw]], dim=1)
        cmask = ro.completion_mask[idx, :cw]
        mask = torch.cat([ro.prompt_mask[idx, P - pw:], cmask], dim=1)
        out.append({"ids": ids, "mask": mask, "cmask": cmask, "adv": advantages[idx].to(ids.device)})
    return out


def next_indices(n: int, k: int, state: dict[str, Any], seed: int) -> list[int]:
    """k example indices from a seeded per-epoch permutation; advances state's epoch/cursor."""
    out: list[int] = []
    while len(out) < k:
        gen = torch.Generator().manual_seed(seed * 100_003 + state["epoch"])
        perm = torch.randperm(n, generator=gen).tolist()
        take = perm[state["cursor"]:state["cursor"] + k - len(out)]
        out += take
        state["cursor"] += len(take)
        if state["cursor"] >= n:
            state["epoch"] += 1
            state["cursor"] = 0
    return out


def lr_lambda(cfg: Config):
    """Linear warmup, then constant / cosine / linear decay, per optimizer step."""
    total = max(cfg.max_steps * cfg.algo.mu, 1)

    def f(i: int) -> float:
        if cfg.warmup_steps and i < cfg.warmup_steps:
            return (i + 1) / cfg.warmup_steps
        frac = min((i - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        if cfg.lr_schedule == "linear":
            return 1 - frac
        return 1.0

    return f


def _checkpoint_to_resume(run_dir: Path, resume: str | None, overwrite: bool) -> Path | None:
    if resume is not None:
        path = checkpoint.latest(run_dir) if resume == "latest" else Path(resume)
        checkpoint.verify(path)
        return path
    has_run = (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size > 0
    if not overwrite and (has_run or checkpoint.list_checkpoints(run_dir)):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, pick another "
                          f"output_dir=..., or pass --overwrite to replace it")
    return None


class Progress:
    """A tqdm bar with live reward and ETA on a terminal; one plain line per step otherwise."""

    def __init__(self, total: int, start: int):
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, desc="aha train", unit="step", disable=not self.tty)

    def update(self, step: int, m: dict[str, float]) -> None:
        short = {"reward": m["reward"], "acc": m["accuracy"], "fmt": m["format_rate"], "len": m["completion_len"]}
        if self.tty:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in short.items()})
            self.bar.update(1)
        else:
            fields = " ".join(f"{k}={v:.3g}" for k, v in short.items())
            print(f"step {step}/{self.bar.total} {fields} time={m['step_time']:.1f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
