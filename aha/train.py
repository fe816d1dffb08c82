"""The GRPO training loop, top to bottom: sample prompts -> rollout -> score -> advantages ->
micro-batched update -> log -> eval -> checkpoint.

Read `train()` first; `policy_update()` is the only other piece with real logic. The algorithm's
arithmetic is in algo.py, the memory-lean log-probs in logprobs.py. Under torchrun the same loop
runs data-parallel: each rank rolls out its share of the step's prompts and DDP all-reduces the
gradients; the few places that differ call aha/distributed.py (`d` below; a no-op on one process).
"""

from __future__ import annotations

import copy
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from aha import checkpoint, distributed, fsio, guards, rundir
from aha.algo import group_advantages, loss_weights, policy_loss
from aha.config import Config, ConfigError
from aha.log import RunLogger, reflection_rate
from aha.logprobs import batch_logprobs
from aha.model import load_policy, trainable_parameters
from aha.optim import build_optimizer
from aha.rollout import Rollout, SamplingParams, generate
from aha.tasks import get_task, reward_means


@rundir.guarded  # cheap checks first, then one trainer per run directory; SIGTERM saves and stops
def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> Path:
    """Run GRPO as configured. `resume`: None (fresh run), "latest", or a checkpoint path."""
    d, device = distributed.setup(cfg.device)  # one process: Dist(rank=0, world=1), nothing initialised
    if cfg.prompts_per_step % d.world:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split over {d.world} processes "
                          f"(a group never spans ranks); make it a multiple of --nproc-per-node")
    run_dir = Path(cfg.output_dir)
    ckpt_path = checkpoint_to_resume(run_dir, resume, overwrite)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    task = get_task(cfg.task, **cfg.task_options)
    train_set = task.examples("train")
    guards.require_examples(train_set, cfg.task, "train", cfg.task_options)  # before anything is written
    if cfg.eval_every or cfg.probe_every:
        guards.require_examples(task.examples("test"), cfg.task, "test", cfg.task_options)
    policy = load_policy(cfg.model, cfg.finetune, cfg.lora, device, cfg.dtype, cfg.gradient_checkpointing,
                         cfg.seed)  # same seed everywhere: every rank starts from the same weights
    model, tokenizer = policy.model, policy.tokenizer
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
    if d.main:  # rank 0 writes everything on disk; every check has passed, so now --overwrite replaces the old run
        rundir.prepare(run_dir, overwrite, resuming=ckpt_path is not None)
        fsio.atomic_write_text(run_dir / "config.yaml", config_yaml)
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
    nonfinite = guards.NonFiniteGuard(cfg.max_nonfinite_steps, verbose=d.main)
    for step in range(state["step"] + 1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        # 1. Prompts: a seeded permutation per epoch, walked by a cursor saved in checkpoints.
        # Every rank draws the same prompts and takes its share.
        examples = [train_set[i] for i in next_indices(len(train_set), cfg.prompts_per_step, state, cfg.seed)]
        examples = distributed.shard(examples, d)
        group = [ex for ex in examples for _ in range(G)]  # each prompt G times, adjacent

        # 2. Rollout: G completions per prompt from the current policy.
        ro = generate(model, tokenizer, [ex.prompt for ex in group], sampling, cfg.rollout.engine,
                      cfg.rollout.batch_size)
        t_gen = time.perf_counter()

        # 3. Score: the task's rule-checked rewards; accuracy and format are separate metrics.
        scores = [task.score(text, ex) for text, ex in zip(ro.texts, group)]
        rewards = torch.tensor([total for total, _ in scores])  # (N,)
        t_score = time.perf_counter()

        # 4. Advantages within each group; all-equal groups carry no signal (optionally dropped).
        advantages, zero_std = group_advantages(rewards, G, scale=cfg.algo.scale_rewards)
        rows = torch.arange(len(group))
        if cfg.algo.drop_zero_std:
            rows = rows[~zero_std.repeat_interleave(G)]

        # 5. Update: mu optimizer steps over these rollouts, micro-batched by a token budget - none
        # when a reward or advantage is NaN/inf on any rank (aha/guards.py).
        problem = guards.nonfinite_inputs(scores, advantages)
        if distributed.all_sum([float(problem is not None)], d)[0]:
            stats = {**SKIPPED_UPDATE, "nonfinite": problem or "reward on another rank"}
        else:
            stats = policy_update(model, ro, advantages, rows, optimizer, scheduler, cfg, ref_model, net, d)
        problem = stats.pop("nonfinite")
        t_end = time.perf_counter()

        # 6. Log: rank 0 gathers every rank's rows and computes what a 1-process run would.
        rows_out = completion_rows(task, group, ro.texts, scores, ro.completion_mask.sum(dim=1), ro.truncated)
        rows_out = [r for rank_rows in distributed.gather(rows_out, d) for r in rank_rows]
        n_zero = distributed.all_sum([zero_std.float().sum().item()], d)[0]
        if d.main:
            metrics = {
                **rollout_metrics(rows_out), "frac_zero_std": n_zero / cfg.prompts_per_step,
                "answer_collapse": answer_collapse([r["completion"] for r in rows_out], G),
                **stats, "nonfinite_skipped": float(problem is not None), "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": sum(r["length"] for r in rows_out) / max(t_gen - t0, 1e-9),
                "step_time": t_end - t0, "gen_time": t_gen - t0, "score_time": t_score - t_gen,
                "update_time": t_end - t_score, "epoch": state["epoch"],
            }
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metrics.update(held_out_eval(step))
            logger.log_metrics(step, metrics)
            if cfg.log_completions_every and step % cfg.log_completions_every == 0:
                logger.log_completions(step, logged(rows_out))
            if cfg.probe_every and (step == 1 or step % cfg.probe_every == 0 or step == cfg.max_steps):
                logger.log_completions(step, [probe_completion(model, tokenizer, task, cfg)])
            progress.update(step, metrics)
            # A run whose groups all carry equal rewards learns nothing: say so while it runs.
            no_signal = no_signal + 1 if n_zero == cfg.prompts_per_step else 0
            if cfg.warn_no_signal_steps and no_signal == cfg.warn_no_signal_steps:
                print(no_signal_warning(no_signal, metrics), file=sys.stderr, flush=True)
        nonfinite.record(step, problem)  # one warning; stops the run after max_nonfinite_steps in a row

        # 7. Checkpoint (the state saved is the state *after* this step); after a SIGTERM or Ctrl-C,
        # save now and stop.
        stop = distributed.all_sum([float(rundir.stop_signal() is not None)], d)[0] > 0 and step < cfg.max_steps
        saved = _save_if_due(step, cfg, state, d, run_dir, model, tokenizer, optimizer, scheduler, config_yaml,
                             force=stop)
        if stop:
            raise rundir.stopped(rundir.stop_signal() or signal.SIGTERM, step, saved)
    if d.main:
        progress.close()
        logger.close()
    distributed.shutdown(d)
    return run_dir


# The update metrics of a step whose update was skipped for non-finite rewards or advantages.
SKIPPED_UPDATE = {"loss": math.nan, "grad_norm": math.nan, "entropy": math.nan, "kl": math.nan, "clip_frac": math.nan,
                  "update_skipped": 1.0}


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
                 config_yaml: str, force: bool = False) -> Path | None:
    """Rank 0 writes the checkpoint; every rank's RNG state goes in it (a collective: all ranks call this).
    Returns the checkpoint's path on rank 0 when one was written."""
    state["step"] = step
    if not (force or step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0)):
        return None
    rngs = distributed.gather(checkpoint.rng_state(), d)
    path = None
    if d.main:
        path = checkpoint.save(run_dir, step, model, tokenizer, optimizer, scheduler, state, config_yaml,
                               cfg.keep_last, rng_states=rngs)
    distributed.barrier(d)  # no rank runs ahead of a checkpoint it may be asked to resume from
    return path


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
    nan = float("nan")
    net = net if net is not None else distributed.wrap(model, batch_logprobs, d)
    cmask = ro.completion_mask
    # The loss weights use the global batch (all ranks), so the ranks' losses sum to the 1-process loss.
    n_seqs, n_tokens = (int(x) for x in distributed.all_sum([len(rows), cmask[rows].sum().item()], d))
    if n_seqs == 0:  # every group of every rank was dropped (all rewards equal): nothing to learn from
        return {"loss": 0.0, "grad_norm": 0.0, "entropy": nan, "kl": nan, "clip_frac": 0.0, "update_skipped": 1.0,
                "nonfinite": None}
    # A rank whose groups were all dropped still joins DDP's all-reduce, with a zero-weighted row.
    idle = len(rows) == 0
    batches = micro_batches(ro, torch.arange(1) if idle else rows, advantages, cfg.micro_batch_tokens)

    def logprobs(mb: dict[str, torch.Tensor], m: torch.nn.Module = model) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_logprobs(m, mb, temperature, cfg.logprob_chunk)

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
    nonfinite = None  # what was NaN/inf in a skipped (or rolled-back) optimizer step
    entropy_sum = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    for it in range(a.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, mb in enumerate(batches):
            with distributed.no_sync(net, sync=i == len(batches) - 1):  # one all-reduce, after the last
                logp, entropy = net(mb, temperature, cfg.logprob_chunk)  # (b, c)
                w = loss_weights(mb["cmask"], a.loss_agg, n_seqs, n_tokens, cfg.rollout.max_new_tokens)
                if idle:
                    w = w * 0.0
                loss, st = policy_loss(logp, old[i] if old else logp.detach(), mb["adv"], w, a.epsilon_low,
                                       a.epsilon_high, a.beta, ref[i] if ref else None)
                # DDP averages gradients over ranks; the global loss is their sum, hence * world.
                (loss * d.world).backward()
            if it == a.mu - 1 and not idle:  # report the last inner iteration's figures
                totals["loss"] += loss.item()
                totals["kl"] += st["kl"].item() if "kl" in st else 0.0
                totals["clip_frac"] += st["clip_frac"].item()
                entropy_sum += (entropy * mb["cmask"]).sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        nonfinite = guards.guarded_step(optimizer, params, grad_norm) or nonfinite  # no NaN/inf into the weights
        scheduler.step()
    loss, kl, clip_frac, entropy_sum = distributed.all_sum(
        [totals["loss"], totals["kl"], totals["clip_frac"], entropy_sum], d)
    return {"loss": loss, "kl": kl if a.beta > 0 else nan, "clip_frac": clip_frac,
            "entropy": entropy_sum / max(n_tokens, 1), "grad_norm": grad_norm.item(),
            "update_skipped": float(nonfinite is not None), "nonfinite": nonfinite}


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
                         verify: Any = checkpoint.verify) -> Path | None:
    """The checkpoint to resume from (checked by `verify`, the backend's own), or None for a fresh
    run - refused when the run directory already holds one and `overwrite` is not set."""
    if resume is not None:
        path = checkpoint.latest(run_dir) if resume == "latest" else Path(resume)
        verify(path)
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
