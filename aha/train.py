"""The GRPO training loop (torch), top to bottom: sample prompts -> `grpo_step` (rollout -> score
-> advantages -> update) -> log -> eval -> checkpoint.

Read `train()` first, then `grpo_step()`: together they are the algorithm's control flow. What
happens after a step (metrics, held-out eval, logs, warnings, checkpoint, stop) is aha/loop.py's
`Bookkeeper`, shared with the JAX loop; this file keeps only the torch step. The
arithmetic is in algo.py (its variants are `algo.*` knobs), DAPO's dynamic sampling with refill in
dynamic_sampling.py, the update's bookkeeping in update.py (which also measures how far the rollout
engine's sampled log-probs are from the trainer's, `mismatch/*`), the memory-lean log-probs in
logprobs.py; the prompt order, the lr schedule, the step records and metrics, the run directory
and the seeds are in data.py, schedule.py, records.py, log.py, ckptdir.py and seeding.py, which
the JAX loop (aha/jax/train.py) shares. `bench/step.py` times `grpo_step` itself.

Under torchrun the same loop runs data-parallel: each rank rolls out its share of the step's
prompts and DDP all-reduces the gradients; the few places that differ call aha/distributed.py
(`d` below; a no-op on one process).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from aha import checkpoint, distributed, guards, preflight, rundir
from aha.algo import compute_advantages, overlong_penalty
from aha.ckptdir import checkpoint_to_resume, finished_note
from aha.config import Config, ConfigError
from aha.data import LoopState, fresh_state, next_indices
from aha.dynamic_sampling import Sampled, dynamic_sample, has_spread
from aha.loop import Backend, Bookkeeper, StepOutcome
from aha.logprobs import batch_logprobs
from aha.model import load_policy, trainable_parameters
from aha.optim import build_optimizer
from aha.records import CompletionRecord, StepTimes, UpdateStats, completion_records, probe_record, variant_metrics
from aha.rollout import Rollout, generate, render_prompt
from aha.sampling import SamplingParams
from aha.rollout.engine import Engine, make_engine
from aha.schedule import lr_lambda
from aha.seeding import sampling_seed, seed_rngs
from aha.tasks import Example, Task, get_task
from aha.tasks.named_failures import NamedFailures
from aha.update import Mismatch, policy_update


@rundir.guarded  # cheap checks first, then one trainer per run directory; SIGTERM saves and stops
def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> Path:
    """Run GRPO as configured. `resume`: None (fresh run), "latest", or a checkpoint path.
    Returns the run directory (`cfg.output_dir`)."""
    d, device = distributed.setup(cfg.device)  # one process: Dist(rank=0, world=1), nothing initialised
    if cfg.prompts_per_step % d.world:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split over {d.world} processes "
                          f"(a group never spans ranks); make it a multiple of --nproc-per-node")
    run_dir = Path(cfg.output_dir)
    ckpt_path = checkpoint_to_resume(run_dir, resume, overwrite, checkpoint.verify, cfg)
    finished = finished_note(ckpt_path, cfg)
    if finished:  # nothing to train: touch nothing (no log trim, no config rewrite), load no model
        if d.main:
            print(finished, file=sys.stderr)
        distributed.shutdown(d)
        return run_dir
    seed_rngs(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    task = NamedFailures(get_task(cfg.task, **cfg.task_options))  # a raising reward: named, with the step
    train_set = preflight.train_examples(task, cfg)  # an empty split stops here, before anything is written
    learner = build_learner(cfg, device, d)
    render_prompt(learner.tokenizer, train_set[0].prompt)  # a chat template that alters the pre-fill stops here
    preflight.check_context(learner.tokenizer, learner.model.config, train_set, cfg.rollout.max_new_tokens,
                            render_prompt)
    state: LoopState = fresh_state()
    if ckpt_path is not None:
        state.update(checkpoint.load(ckpt_path, learner.model, learner.optimizer, learner.scheduler,
                                     rank=d.rank, world=d.world))
        if d.main:
            print(f"aha: resumed from {ckpt_path} at step {state['step']}", file=sys.stderr)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    backend = Backend(held_out_eval=lambda: held_out_eval(learner, task, cfg), probe=lambda: probe(learner, task, cfg),
                      save=lambda step: save(learner, run_dir, step, state, cfg, config_yaml),
                      close=learner.engine.close)
    # After each step (log, eval, warnings, checkpoint, stop): aha/loop.py, shared with the JAX loop.
    book = Bookkeeper(cfg, run_dir, state, backend, config_yaml, resumed=ckpt_path is not None, overwrite=overwrite,
                      main=d.main, all_sum=lambda xs: distributed.all_sum(xs, d))

    r = cfg.rollout
    sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k, stop=tuple(task.stop_strings))
    book.baseline()  # the untrained policy's held-out accuracy: the baseline to beat
    learner.model.train()

    def draw() -> list[Example]:
        """1. Prompts: a seeded permutation per epoch, walked by a cursor saved in checkpoints. Every
        rank draws the same prompts_per_step prompts and takes its share."""
        examples = [train_set[i] for i in next_indices(len(train_set), cfg.prompts_per_step, state, cfg.seed)]
        return distributed.shard(examples, d)

    for step in range(state["step"] + 1, cfg.max_steps + 1):
        task.step = step
        t0 = time.perf_counter()
        # 1-5. Prompts, rollout, score, advantages, update (`draw` again for DAPO's refill).
        res = grpo_step(learner, task, draw(), cfg, sampling, draw=draw)

        # 6-7. Log, eval, checkpoint: rank 0 gathers every rank's records and logs what a 1-process run would.
        records = [rec for rank_records in distributed.gather(res.records, d) for rec in rank_records]
        n_zero, n_groups = distributed.all_sum([res.zero_std.float().sum().item(), float(len(res.zero_std))], d)
        _, t_gen, t_score, t_end = res.marks
        times = StepTimes.from_marks(t0, t_gen, t_score, t_end)
        book.after_step(step, StepOutcome(records, n_zero, n_groups, res.stats, learner.scheduler.get_last_lr()[0],
                                          times, res.extra))
    book.close()
    learner.net = learner.model  # release DDP (its reducer holds the process group) before leaving the group
    distributed.shutdown(d)
    return run_dir


@dataclass
class Learner:
    """What a GRPO step reads and changes: the policy, its reference and its optimizer, and the rollout
    engine that samples from the policy (synced after each update, closed when the run ends)."""

    model: torch.nn.Module  # the policy (a peft model with LoRA / QLoRA)
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR  # lr_lambda, stepped once per optimizer step
    net: torch.nn.Module  # the update's forward: DDP over batch_logprobs(model, ...) under torchrun
    ref_model: torch.nn.Module | None  # frozen copy for the KL term of full fine-tuning; LoRA needs none
    d: distributed.Dist
    engine: Engine  # rollout.engine, built once for the run (aha/rollout/engine.py)


def build_learner(cfg: Config, device: str, d: distributed.Dist = distributed.Dist()) -> Learner:
    """Load the policy and build its optimizer and schedule, as `aha train` does (and bench/step.py).
    Call after seeding: the policy's random weights and the ranks' sampling streams come from it."""
    policy = load_policy(cfg.model, cfg.finetune, cfg.lora, device, cfg.dtype, cfg.gradient_checkpointing,
                         cfg.seed)  # same seed everywhere: every rank starts from the same weights
    model = policy.model
    if d.rank > 0:  # ranks sample different completions; rank 0 keeps the 1-process stream
        seed_rngs(sampling_seed(cfg.seed, d.rank))
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
    r = cfg.rollout
    options = {"servers": r.vllm_servers, "adapter_dir": r.vllm_adapter_dir} if r.engine == "vllm-server" else {}
    engine = make_engine(cfg.rollout.engine, model, policy.tokenizer, **options)
    return Learner(model, policy.tokenizer, optimizer, scheduler, net, ref_model, d, engine)


@dataclass
class StepResult:
    """What one GRPO step produced on this rank (N = its prompts x G rows, over every sampling round)."""

    rollout: Rollout  # (N, ...) the sampled completions
    records: list[CompletionRecord]  # (N,) one per completion, in rollout order
    zero_std: torch.Tensor  # (N / G,) bool: groups whose G rewards were all equal (no signal)
    stats: UpdateStats  # the update's figures (summed over ranks)
    marks: tuple[Any, Any, Any, Any]  # clock() at the start, after rollout, after scoring, after the update
    extra: dict[str, float]  # records.variant_metrics: mismatch/*, and dynamic/* and overlong shaping when on


def grpo_step(learner: Learner, task: Task, examples: Sequence[Example], cfg: Config, sampling: SamplingParams,
              clock: Callable[[], Any] = time.perf_counter,
              draw: Callable[[], Sequence[Example]] | None = None) -> StepResult:
    """One GRPO step on `examples` (this rank's prompts): G completions each from the current
    policy, the task's rewards, the advantages (algo.baseline / algo.scale_rewards), and `algo.mu`
    optimizer steps.

    `draw` gives this rank's share of the next prompts_per_step prompts: DAPO's dynamic sampling
    (algo.drop_zero_std, algo.max_refill_rounds > 0) calls it to refill the groups it dropped; without
    it there is no refill. `clock` is read at the phase boundaries (`StepResult.marks`): the loop times
    with the default, bench/step.py with a clock that also synchronizes CUDA and reads the CPU time.
    With refill rounds the marks are the last round's, so "rollout" also covers earlier rounds' scoring.
    """
    G, a, d = cfg.rollout.num_generations, cfg.algo, learner.d
    t0 = clock()
    # Rollout and score: G completions per prompt from the current policy, and their rewards.
    first = sample_round(learner, task, examples, cfg, sampling, clock)
    if a.drop_zero_std:  # DAPO's dynamic sampling: all-equal groups dropped, refilled from more prompts
        refill = (lambda: sample_round(learner, task, draw(), cfg, sampling, clock)) if draw else None
        batch, keep, extra_rounds = dynamic_sample(first, refill, G, cfg.prompts_per_step, a.max_refill_rounds,
                                                   learner.tokenizer.pad_token_id, d)
    else:  # GRPO: every group is kept
        batch, keep, extra_rounds = first, torch.ones(len(first.group), dtype=torch.bool), 0
    ro = batch.ro

    # Advantages over the kept groups (batch statistics over every rank's); all-equal groups carry no
    # signal. Overlong filtering (algo.mask_truncated) then masks truncated completions out of the loss.
    rows = keep.nonzero().squeeze(1)
    kept_adv, _ = compute_advantages(batch.rewards[rows], G, a.baseline, a.scale_rewards,
                                     all_sum=lambda xs: distributed.all_sum(xs, d))
    advantages = torch.zeros(len(batch.group))
    advantages[rows] = kept_adv
    zero_std = ~has_spread(batch.rewards, G)  # every group sampled this step
    if a.mask_truncated:
        rows = rows[~ro.truncated.cpu()[rows]]

    # Update: mu optimizer steps over these rollouts, micro-batched by a token budget - none when a
    # reward or advantage is NaN/inf on any rank (aha/guards.py).
    mismatch = Mismatch()
    problem = guards.nonfinite_inputs(batch.scores, advantages)
    if distributed.all_sum([float(problem is not None)], d)[0]:
        stats = UpdateStats.skipped(nonfinite=problem or "reward on another rank")
    else:
        stats = policy_update(learner.model, ro, advantages, rows, learner.optimizer, learner.scheduler, cfg,
                              learner.ref_model, learner.net, d, mismatch=mismatch)
    learner.engine.sync_weights(learner.model)  # the next rollout samples the updated policy (timed as update)
    t_end = clock()
    task_rewards = torch.tensor([total for total, _ in batch.scores])
    n_kept, shaping, n = distributed.all_sum([keep.sum().item() / G, (batch.rewards - task_rewards).sum().item(),
                                              float(len(batch.group))], d)
    extra = variant_metrics(mismatch.metrics(d), a.drop_zero_std, extra_rounds, n_kept,
                            shaping / n if a.overlong_buffer else None)
    return StepResult(ro, batch.records, zero_std, stats, (t0, *batch.marks, t_end), extra)


def sample_round(learner: Learner, task: Task, examples: Sequence[Example], cfg: Config, sampling: SamplingParams,
                 clock: Callable[[], Any] = time.perf_counter) -> Sampled:
    """Roll out G completions for each of `examples` (a prompt's G rows adjacent: a group) and score
    them: the task's rule-checked rewards plus DAPO's overlong shaping (0 when off); accuracy and format
    are separate, unpaid figures (the records). `Sampled.marks` holds `clock()` after the rollout and
    after scoring."""
    G, a = cfg.rollout.num_generations, cfg.algo
    rows_examples = [ex for ex in examples for _ in range(G)]
    ro = generate(learner.model, learner.tokenizer, [ex.prompt for ex in rows_examples], sampling,
                  learner.engine, cfg.rollout.batch_size)
    t_gen = clock()
    scores = [task.score(text, ex) for text, ex in zip(ro.texts, rows_examples)]
    lengths = ro.completion_mask.sum(dim=1)
    records = completion_records(task, rows_examples, ro.texts, scores, lengths, ro.truncated)
    rewards = torch.tensor([total for total, _ in scores]) + overlong_penalty(  # (N,)
        lengths.cpu(), cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_penalty)
    return Sampled(rows_examples, ro, scores, rewards, records, (t_gen, clock()))


def held_out_eval(learner: Learner, task: Task, cfg: Config) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy accuracy (strict and lenient) on the first `eval_limit` test problems: the same
    problems and decoding at every eval, so step 0 against the end is a fair comparison. Returns
    (the `eval/*` metrics, the completions for eval_completions.jsonl). Greedy decoding consumes no
    RNG: resume stays exact."""
    from aha.eval import evaluate

    result = evaluate(learner.model, learner.tokenizer, task, split="test", limit=cfg.eval_limit,
                      max_new_tokens=cfg.rollout.max_new_tokens, engine=learner.engine, save_completions=True)
    learner.model.train()
    rows = result.pop("rows")
    return {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}, rows


def probe(learner: Learner, task: Task, cfg: Config) -> dict[str, Any]:
    """A greedy completion of the first held-out prompt (records.probe_record). Greedy sampling
    consumes no RNG: resume stays exact."""
    ex = task.examples("test")[0]
    params = SamplingParams(cfg.rollout.max_new_tokens, temperature=0.0, stop=tuple(task.stop_strings))
    text = generate(learner.model, learner.tokenizer, [ex.prompt], params, learner.engine).texts[0]
    return probe_record(task, ex, text)


def save(learner: Learner, run_dir: Path, step: int, state: LoopState, cfg: Config,
         config_yaml: str) -> Path | None:
    """Rank 0 writes the checkpoint; every rank's RNG state goes in it (a collective: all ranks call this).
    Returns the checkpoint's path on rank 0, None on the other ranks."""
    d = learner.d
    rngs = distributed.gather(checkpoint.rng_state(), d)
    path = None
    if d.main:
        path = checkpoint.save(run_dir, step, learner.model, learner.tokenizer, learner.optimizer,
                               learner.scheduler, dict(state), config_yaml, cfg.keep_last, rng_states=rngs)
    distributed.barrier(d)  # no rank runs ahead of a checkpoint it may be asked to resume from
    return path
