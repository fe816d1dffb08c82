"""The GRPO training loop, top to bottom: sample prompts -> rollout -> score -> advantages ->
micro-batched update -> log -> eval -> checkpoint.

Read `train()` first; `policy_update()` is the only other piece with real logic. The algorithm's
arithmetic is in algo.py (its variants are `algo.*` knobs), DAPO's dynamic sampling with refill in
dynamic_sampling.py, the memory-lean log-probs in logprobs.py. Every step also measures how far the
rollout engine's sampled log-probs are from the trainer's (`mismatch/*`). Under torchrun the same loop
runs data-parallel: each rank rolls out its share of the step's prompts and DDP all-reduces the
gradients; the few places that differ call aha/distributed.py (`d` below; a no-op on one process).
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from aha import checkpoint, distributed
from aha.algo import (compute_advantages, loss_weights, mismatch_stats, overlong_penalty, policy_loss,
                      rollout_is_weight)
from aha.config import Config, ConfigError
from aha.dynamic_sampling import Sampled, dynamic_sample, has_spread
from aha.log import RunLogger, reflection_rate
from aha.logprobs import batch_logprobs
from aha.model import load_policy, trainable_parameters
from aha.optim import build_optimizer
from aha.rollout import Rollout, SamplingParams, generate, render_prompt
from aha.tasks import get_task, reward_means


def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> Path:
    """Run GRPO as configured. `resume`: None (fresh run), "latest", or a checkpoint path."""
    d, device = distributed.setup(cfg.device)  # one process: Dist(rank=0, world=1), nothing initialised
    if cfg.prompts_per_step % d.world:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split over {d.world} processes "
                          f"(a group never spans ranks); make it a multiple of --nproc-per-node")
    run_dir = Path(cfg.output_dir)
    ckpt_path = checkpoint_to_resume(run_dir, resume, overwrite, cfg=cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    task = get_task(cfg.task, **cfg.task_options)
    train_set = task.examples("train")
    policy = load_policy(cfg.model, cfg.finetune, cfg.lora, device, cfg.dtype, cfg.gradient_checkpointing,
                         cfg.seed)  # same seed everywhere: every rank starts from the same weights
    model, tokenizer = policy.model, policy.tokenizer
    render_prompt(tokenizer, train_set[0].prompt)  # a chat template that alters the pre-fill stops here
    if d.rank > 0:  # ranks sample different completions; rank 0 keeps the 1-process stream
        random.seed(cfg.seed + 1009 * d.rank)
        torch.manual_seed(cfg.seed + 1009 * d.rank)
    net = distributed.wrap(model, batch_logprobs, d)  # DDP when distributed: all-reduces gradients
    if policy.finetune == "full" and policy.dtype != torch.float32 and d.main:
        # No fp32 master copy: an AdamW step smaller than the weight's rounding step (~0.4% in bf16) is lost.
        print(f"aha: warning: finetune=full on {policy.dtype} weights: updates below their precision are lost; "
              "dtype=float32 trains exactly (more memory), or use finetune=lora", file=sys.stderr)
    # Full fine-tuning needs a frozen copy for the KL term; LoRA disables its adapters instead.
    ref_model = None
    if cfg.algo.beta > 0 and policy.finetune == "full":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = build_optimizer(cfg, trainable_parameters(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    state: dict[str, Any] = {"step": 0, "epoch": 0, "cursor": 0}
    if ckpt_path is not None:
        state.update(checkpoint.load(ckpt_path, model, optimizer, scheduler, rank=d.rank, world=d.world))
        if d.main:
            print(f"aha: resumed from {ckpt_path} at step {state['step']}", file=sys.stderr)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    logger = progress = None
    if d.main:  # rank 0 writes everything on disk
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
        logger = RunLogger(run_dir, cfg.tensorboard, resume_step=state["step"] if ckpt_path else None)
        progress = Progress(cfg.max_steps, state["step"])

    G = cfg.rollout.num_generations
    sampling = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                              cfg.rollout.top_k)
    def held_out_eval(step: int) -> dict[str, float]:
        """Greedy accuracy (strict and lenient) on the first `eval_limit` test problems: the same
        problems, the same decoding at every eval, so step 0 vs the end is a fair comparison.
        The completions go to eval_completions.jsonl for the report."""
        from aha.eval import evaluate

        result = evaluate(model, tokenizer, task, split="test", limit=cfg.eval_limit,
                          max_new_tokens=cfg.rollout.max_new_tokens, engine=cfg.rollout.engine,
                          save_completions=True)
        model.train()
        logger.log_eval_completions(step, result.pop("rows"))
        return {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}

    if cfg.eval_every and state["step"] == 0 and d.main:  # the untrained policy: the baseline to beat
        logger.log_metrics(0, held_out_eval(0))
    model.train()
    no_signal = 0  # consecutive steps in which every group's rewards were equal
    a = cfg.algo
    clock = {"gen": 0.0, "score": 0.0}  # this step's generation and scoring time, over its rounds

    def sample_round() -> Sampled:
        """Steps 1-3 for the next prompts_per_step prompts (once a step; more with DAPO's refill)."""
        # 1. Prompts: a seeded permutation per epoch, walked by a cursor saved in checkpoints.
        # Every rank draws the same prompts and takes its share.
        examples = [train_set[i] for i in next_indices(len(train_set), cfg.prompts_per_step, state, cfg.seed)]
        examples = distributed.shard(examples, d)
        group = [ex for ex in examples for _ in range(G)]  # each prompt G times, adjacent
        # 2. Rollout: G completions per prompt from the current policy.
        t = time.perf_counter()
        ro = generate(model, tokenizer, [ex.prompt for ex in group], sampling, cfg.rollout.engine,
                      cfg.rollout.batch_size)
        clock["gen"] += time.perf_counter() - t
        # 3. Score: the task's rule-checked rewards; accuracy and format are separate metrics.
        t = time.perf_counter()
        scores = [task.score(text, ex) for text, ex in zip(ro.texts, group)]
        rewards = torch.tensor([total for total, _ in scores])  # (N,)
        rewards = rewards + overlong_penalty(ro.completion_mask.sum(dim=1).cpu(), cfg.rollout.max_new_tokens,
                                             a.overlong_buffer, a.overlong_penalty)  # DAPO; 0 when off
        clock["score"] += time.perf_counter() - t
        return Sampled(group, ro, scores, rewards)

    for step in range(state["step"] + 1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        clock.update(gen=0.0, score=0.0)
        # 1-3, with DAPO's dynamic sampling: groups whose rewards are all equal are dropped (drop_zero_std)
        # and refilled from more prompts, up to max_refill_rounds extra rounds (dynamic_sampling.py).
        batch, keep, extra_rounds = dynamic_sample(sample_round, G, cfg.prompts_per_step, a.drop_zero_std,
                                                   a.max_refill_rounds, tokenizer.pad_token_id, d)
        group, ro, scores = batch.group, batch.ro, batch.scores
        t_score = time.perf_counter()

        # 4. Advantages over the kept groups (batch statistics over every rank's); all-equal groups carry
        # no signal. Overlong filtering then masks truncated completions out of the loss.
        rows = keep.nonzero().squeeze(1)
        kept_adv, _ = compute_advantages(batch.rewards[rows], G, a.baseline, a.scale_rewards,
                                         all_sum=lambda xs: distributed.all_sum(xs, d))
        adv = torch.zeros(len(group))
        adv[rows] = kept_adv
        zero_std = ~has_spread(batch.rewards, G)  # every group sampled this step
        if a.mask_truncated:
            rows = rows[~ro.truncated.cpu()[rows]]

        # 5. Update: mu optimizer steps over these rollouts, micro-batched by a token budget.
        stats = policy_update(model, ro, adv, rows, optimizer, scheduler, cfg, ref_model, net, d)
        t_end = time.perf_counter()

        # 6. Log: rank 0 gathers every rank's rows and computes what a 1-process run would.
        rows_out = completion_rows(task, group, ro.texts, scores, ro.completion_mask.sum(dim=1), ro.truncated)
        rows_out = [r for rank_rows in distributed.gather(rows_out, d) for r in rank_rows]
        n_zero, n_groups, n_kept, shaping = distributed.all_sum(
            [zero_std.float().sum().item(), float(len(zero_std)), float(keep.sum().item()) / G,
             (batch.rewards - torch.tensor([total for total, _ in scores])).sum().item()], d)
        if d.main:
            metrics = {
                **rollout_metrics(rows_out), "frac_zero_std": n_zero / n_groups,
                "answer_collapse": answer_collapse([r["completion"] for r in rows_out], G),
                **stats, "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": sum(r["length"] for r in rows_out) / max(clock["gen"], 1e-9),
                "step_time": t_end - t0, "gen_time": clock["gen"], "score_time": clock["score"],
                "update_time": t_end - t_score, "epoch": state["epoch"],
            }
            if a.drop_zero_std:  # DAPO's dynamic sampling: how hard it was to fill the step
                metrics.update({"dynamic/extra_rounds": extra_rounds, "dynamic/kept_groups": n_kept})
            if a.overlong_buffer:
                metrics["reward/overlong_penalty"] = shaping / len(rows_out)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metrics.update(held_out_eval(step))
            logger.log_metrics(step, metrics)
            if cfg.log_completions_every and step % cfg.log_completions_every == 0:
                logger.log_completions(step, logged(rows_out))
            if cfg.probe_every and (step == 1 or step % cfg.probe_every == 0 or step == cfg.max_steps):
                logger.log_completions(step, [probe_completion(model, tokenizer, task, cfg)])
            progress.update(step, metrics)
            # A run whose groups all carry equal rewards learns nothing: say so while it runs.
            no_signal = no_signal + 1 if n_zero == n_groups else 0
            if cfg.warn_no_signal_steps and no_signal == cfg.warn_no_signal_steps:
                print(no_signal_warning(no_signal, metrics), file=sys.stderr, flush=True)

        # 7. Checkpoint (the state saved is the state *after* this step).
        _save_if_due(step, cfg, state, d, run_dir, model, tokenizer, optimizer, scheduler, config_yaml)
    if d.main:
        progress.close()
        logger.close()
    distributed.shutdown(d)
    return run_dir


def completion_rows(task: Any, group: list[Any], texts: list[str], scores: list[tuple[float, dict[str, float]]],
                    lengths: Any, truncated: Any) -> list[dict[str, Any]]:
    """One record per completion: what a step's metrics and completions.jsonl are made of."""
    return [{"prompt_id": ex.id, "completion": text, "reward": total, "rewards": parts,
             "correct": task.is_correct(text, ex), "formatted": task.is_formatted(text, ex),
             "length": int(n), "truncated": bool(tr)}
            for ex, text, (total, parts), n, tr in zip(group, texts, scores, lengths, truncated)]


def logged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields of `completion_rows` that completions.jsonl keeps."""
    return [{k: r[k] for k in ("prompt_id", "completion", "reward", "rewards", "correct", "length")} for r in rows]


def rollout_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Reward, accuracy, format and length figures of a step's completions (all ranks' rows)."""
    rewards = torch.tensor([r["reward"] for r in rows])
    lengths = torch.tensor([float(r["length"]) for r in rows])
    n = len(rows)
    return {
        "reward": rewards.mean().item(), "reward_std": rewards.std().item() if n > 1 else 0.0,
        **reward_means([r["rewards"] for r in rows]),
        "accuracy": sum(r["correct"] for r in rows) / n, "format_rate": sum(r["formatted"] for r in rows) / n,
        "completion_len": lengths.mean().item(), "completion_len_max": lengths.max().item(),
        "truncated_rate": sum(r["truncated"] for r in rows) / n,
        "reflection_rate": reflection_rate([r["completion"] for r in rows]),
    }


def answer_collapse(texts: list[str], G: int) -> float:
    """Share of groups whose G completions all give the same final answer: the last `<answer>`
    block (whitespace and commas removed), or the whole stripped text when there is none.

    texts: (N,) completions, each group's G adjacent. A collapsed group has nothing left to
    compare; unlike `frac_zero_std` it also shows a policy that agrees with itself while the
    rewards still differ on format details.
    """
    from aha.eval import vote_answer

    answers = [vote_answer(t) or t.strip() for t in texts]
    groups = [answers[i:i + G] for i in range(0, len(answers), G)]
    return sum(len(set(g)) == 1 for g in groups) / max(len(groups), 1)


def no_signal_warning(steps: int, m: dict[str, float]) -> str:
    """The one-line warning for `steps` consecutive steps in which no group carried a signal."""
    return (f"aha: warning: no group has carried a learning signal for {steps} steps (every group's rewards "
            f"equal, so every advantage is 0 and nothing is learned; answer_collapse={m['answer_collapse']:.2f}, "
            f"entropy={m['entropy']:.3g}, reward={m['reward']:.3g}). Usual causes: rewards that are all equal "
            "(too hard or too easy, or a reward bug), sampling too narrow (low temperature or top_p/top_k, "
            "entropy collapsed: lower lr), reward hacking (every completion games the same reward); "
            "see completions.jsonl")


def _save_if_due(step: int, cfg: Config, state: dict[str, Any], d: distributed.Dist, run_dir: Path,
                 model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                 config_yaml: str) -> None:
    """Rank 0 writes the checkpoint; every rank's RNG state goes in it (a collective: all ranks call this)."""
    state["step"] = step
    if not (step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0)):
        return
    rngs = distributed.gather(checkpoint.rng_state(), d)
    if d.main:
        checkpoint.save(run_dir, step, model, tokenizer, optimizer, scheduler, state, config_yaml, cfg.keep_last,
                        rng_states=rngs)
    distributed.barrier(d)  # no rank runs ahead of a checkpoint it may be asked to resume from


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
                  ref_model: torch.nn.Module | None = None, net: torch.nn.Module | None = None,
                  d: distributed.Dist = distributed.Dist()) -> dict[str, float]:
    """mu optimizer steps on the rows `rows` of a rollout. Returns the step's update metrics.

    `net` is `distributed.wrap(model, batch_logprobs, d)` (built once by `train`); under torchrun
    each rank passes its own rollout and the result is the 1-process update on all ranks' rows.
    """
    a = cfg.algo
    temperature = cfg.rollout.temperature or 1.0  # log-probs of the distribution we sampled from
    # The trainer's log-probs renormalised over the sampler's top-k / top-p support: what the rollout
    # engine's log-probs are comparable with (the mismatch metrics, TIS / MIS).
    support = (cfg.rollout.top_k, cfg.rollout.top_p)
    nan = float("nan")
    net = net if net is not None else distributed.wrap(model, batch_logprobs, d)
    cmask = ro.completion_mask
    # The loss weights use the global batch (all ranks), so the ranks' losses sum to the 1-process loss.
    n_seqs, n_tokens = (int(x) for x in distributed.all_sum([len(rows), cmask[rows].sum().item()], d))
    if n_seqs == 0:  # every group of every rank was dropped (all rewards equal): nothing to learn from
        return {"loss": 0.0, "grad_norm": 0.0, "entropy": nan, "kl": nan, "clip_frac": 0.0, "update_skipped": 1.0}
    # A rank whose groups were all dropped still joins DDP's all-reduce, with a zero-weighted row.
    idle = len(rows) == 0
    batches = micro_batches(ro, torch.arange(1) if idle else rows, advantages, cfg.micro_batch_tokens)
    if a.rollout_correction != "none" and "rollout_logp" not in batches[0]:
        raise ValueError("algo.rollout_correction needs the rollout engine's log-probs (Rollout.logprobs)")

    def logprobs(mb: dict[str, torch.Tensor], m: torch.nn.Module = model) -> tuple[torch.Tensor, ...]:
        return batch_logprobs(m, mb, temperature, cfg.logprob_chunk, support=support)

    with torch.no_grad():
        # mu > 1 reuses these rollouts for several optimizer steps: the ratio needs the log-probs
        # of the policy that sampled them. With mu = 1 that policy *is* the current one.
        old = [logprobs(mb) for mb in batches] if a.mu > 1 else None
        ref = None
        if a.beta > 0:
            if ref_model is not None:
                ref = [logprobs(mb, ref_model)[0] for mb in batches]
            else:
                with model.disable_adapter():  # LoRA: the base model is the reference
                    ref = [logprobs(mb)[0] for mb in batches]

    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    entropy_sum = 0.0
    mismatch = [0.0, 0.0, 0.0]  # k3 KL sum, max |diff|, tokens: the policy before this step vs the engine
    params = [p for p in model.parameters() if p.requires_grad]
    for it in range(a.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, mb in enumerate(batches):
            with distributed.no_sync(net, sync=i == len(batches) - 1):  # one all-reduce, after the last
                logp, entropy, support_logp = net(mb, temperature, cfg.logprob_chunk, support=support,
                                                  entropy_grad=a.entropy_coef > 0)  # (b, c)
                old_logp, old_support = (old[i][0], old[i][2]) if old else (logp.detach(), support_logp)
                w = loss_weights(mb["cmask"], a.loss_agg, n_seqs, n_tokens, cfg.rollout.max_new_tokens)
                if idle:
                    w = w * 0.0
                is_weight = None
                if "rollout_logp" in mb:
                    if it == 0 and not idle:
                        kl_sum, max_abs, n = mismatch_stats(old_support, mb["rollout_logp"], mb["cmask"])
                        mismatch = [mismatch[0] + kl_sum, max(mismatch[1], max_abs), mismatch[2] + n]
                    if a.rollout_correction != "none":
                        is_weight = rollout_is_weight(old_support, mb["rollout_logp"], mb["cmask"],
                                                      a.rollout_correction_cap, a.rollout_correction,
                                                      a.rollout_correction_level)
                loss, st = policy_loss(logp, old_logp, mb["adv"], w, a.epsilon_low, a.epsilon_high, a.beta,
                                       ref[i] if ref else None, ratio=a.ratio, surrogate=a.surrogate,
                                       dual_clip=a.dual_clip, mask=mb["cmask"], is_weight=is_weight,
                                       entropy=entropy, entropy_coef=a.entropy_coef)
                # DDP averages gradients over ranks; the global loss is their sum, hence * world.
                (loss * d.world).backward()
            if it == a.mu - 1 and not idle:  # report the last inner iteration's figures
                totals["loss"] += loss.item()
                totals["kl"] += st["kl"].item() if "kl" in st else 0.0
                totals["clip_frac"] += st["clip_frac"].item()
                entropy_sum += (entropy.detach() * mb["cmask"]).sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
    loss, kl, clip_frac, entropy_sum, mm_kl, mm_n = distributed.all_sum(
        [totals["loss"], totals["kl"], totals["clip_frac"], entropy_sum, mismatch[0], mismatch[2]], d)
    out = {"loss": loss, "kl": kl if a.beta > 0 else nan, "clip_frac": clip_frac,
           "entropy": entropy_sum / max(n_tokens, 1), "grad_norm": grad_norm.item(), "update_skipped": 0.0}
    if "rollout_logp" in batches[0]:  # the rollout/trainer mismatch, measured every step
        out.update({"mismatch/kl": mm_kl / max(mm_n, 1),
                    "mismatch/max_abs_logp_diff": max(distributed.gather(mismatch[1], d))})
    return out


def micro_batches(ro: Rollout, rows: torch.Tensor, advantages: torch.Tensor,
                  token_budget: int) -> list[dict[str, torch.Tensor]]:
    """Pack rows into micro-batches of at most `token_budget` tokens each (at least one row).

    A micro-batch holds its distinct prompts once (`prompt_ids` (U, P), trimmed to its longest)
    and each row's completion (`cids` (b, C), trimmed likewise) with `group` (b,) pointing at its
    prompt: the update runs a prompt once for all of its G completions (logprobs.batch_logprobs).
    The budget counts what that forward holds: U * P prompt tokens + b * C completion tokens.
    """
    p_len = ro.prompt_mask.sum(dim=1).tolist()  # (N,) host lists: packing is bookkeeping, not tensor work
    c_len = ro.completion_mask.sum(dim=1).tolist()
    # Rows with identical (padded) prompt ids share a prompt: the G rows of a group.
    prompt_of = torch.unique(ro.prompt_ids, dim=0, return_inverse=True)[1].tolist()  # (N,) row -> prompt

    def cost(g: list[int]) -> int:
        prompts = {prompt_of[r] for r in g}
        return len(prompts) * max(p_len[r] for r in g) + len(g) * max(c_len[r] for r in g)

    packs: list[list[int]] = [[]]
    for r in rows.tolist():
        if packs[-1] and cost(packs[-1] + [r]) > token_budget:
            packs.append([r])
        else:
            packs[-1].append(r)
    out = []
    P = ro.prompt_ids.shape[1]
    for g in packs:
        idx = torch.tensor(g)
        first_row: dict[int, int] = {}  # prompt -> the first row that has it, in order of appearance
        for r in g:
            first_row.setdefault(prompt_of[r], r)
        order = {p: i for i, p in enumerate(first_row)}
        group = torch.tensor([order[prompt_of[r]] for r in g])  # (b,) row -> its prompt's index
        reps = torch.tensor(list(first_row.values()))  # (U,)
        pw, cw = max(p_len[r] for r in g), max(max(c_len[r] for r in g), 1)
        out.append({"prompt_ids": ro.prompt_ids[reps, P - pw:], "prompt_mask": ro.prompt_mask[reps, P - pw:],
                    "group": group.to(ro.prompt_ids.device), "cids": ro.completion_ids[idx, :cw],
                    "cmask": ro.completion_mask[idx, :cw], "adv": advantages[idx].to(ro.prompt_ids.device)})
        if ro.logprobs is not None:  # (b, c) the rollout engine's log-probs of these tokens
            out[-1]["rollout_logp"] = ro.logprobs[idx, :cw]
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


def checkpoint_to_resume(run_dir: Path, resume: str | None, overwrite: bool,
                         verify: Any = checkpoint.verify, cfg: Config | None = None) -> Path | None:
    """The checkpoint to resume from (checked by `verify`, the backend's own, and its config against
    `cfg`: `checkpoint.check_config`), or None for a fresh run - refused when the run directory
    already holds one and `overwrite` is not set."""
    if resume is not None:
        path = checkpoint.latest(run_dir) if resume == "latest" else Path(resume)
        verify(path)
        warning = checkpoint.check_config(path, cfg.to_dict()) if cfg is not None else None
        if warning and os.environ.get("RANK", "0") == "0":
            print(f"aha: warning: {warning}", file=sys.stderr)
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
