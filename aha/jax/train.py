"""The GRPO loop of the JAX backend, top to bottom: sample prompts -> rollout -> score -> advantages
-> micro-batched update -> log -> eval -> checkpoint. The same steps as aha/train.py, in the same
order, writing the same metrics.jsonl / completions.jsonl (so `aha report` reads a JAX run).

Shared with the torch loop (the backend-neutral modules): config, tasks and rewards, the prompt
order (aha/data.py), the learning-rate schedule (aha/schedule.py), the per-completion records,
update statistics and step metrics (aha/records.py), everything after a step - metrics, held-out
eval, logs, warnings, checkpoint and stop (aha/loop.py) - the run directory and its logs (aha/log.py,
aha/ckptdir.py), eval's `summarize`. JAX here: the sampler, the loss and its gradient, the optax
update, the sharding.

Where it departs from aha/train.py, and why (all for XLA's fixed shapes: a new shape is a new
compilation, seconds to minutes on a TPU):
- prompts are left-padded to a multiple of 32 tokens and completions right-padded to a multiple of
  32, and a micro-batch is a fixed number of rows, so a run compiles a handful of programs;
- DAPO's dropping of all-equal groups (`algo.drop_zero_std`) zeroes their rows' loss weights
  instead of removing the rows: the same loss, a fixed batch shape;
- each step's sampling key is fold_in(key(seed), step): resume needs no RNG state.
Not ported (config validation refuses them, naming each): the advantage baselines and batch scaling
other than GRPO / Dr. GRPO, GSPO's ratio, CISPO, the dual clip, the entropy bonus, DAPO's refill and
overlong shaping / filtering, and the rollout/trainer mismatch (its sampler returns no log-probs).
"""

from __future__ import annotations

import random
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from aha import guards, preflight, rundir
from aha.ckptdir import checkpoint_to_resume, finished_note
from aha.config import Config, ConfigError
from aha.data import LoopState, fresh_state, next_indices
from aha.loop import Backend, Bookkeeper, StepOutcome
from aha.records import StepTimes, UpdateStats, completion_records, probe_record, variant_metrics
from aha.schedule import lr_lambda
from aha.tasks import get_task
from aha.tasks.named_failures import NamedFailures

COMPLETION_BUCKET = 32  # completion widths are padded up to a multiple of this


@rundir.guarded  # cheap checks first, then one trainer per run directory; SIGTERM saves and stops
def train(cfg: Config, resume: str | None = None, overwrite: bool = False) -> Path:
    """Run GRPO as configured on JAX. `resume`: None (fresh run), "latest", or a checkpoint path."""
    if cfg.device == "cpu":  # before any jax call picks a backend
        jax.config.update("jax_platforms", "cpu")
    from aha.jax import checkpoint
    from aha.jax import lora as lora_lib
    from aha.jax.algo import group_advantages
    from aha.jax.sampler import generate
    from aha.jax.sharding import make_mesh, put_batch, replicate, shard_params
    from aha.jax.weights import load_model
    from aha.rollout import render_prompt

    run_dir = Path(cfg.output_dir)
    ckpt_path = checkpoint_to_resume(run_dir, resume, overwrite, checkpoint.verify, cfg)
    finished = finished_note(ckpt_path, cfg)
    if finished:  # nothing to train: touch nothing (no log trim, no config rewrite), load no model
        print(finished, file=sys.stderr)
        return run_dir
    random.seed(cfg.seed)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    G = cfg.rollout.num_generations
    n_rows = cfg.prompts_per_step * G
    if n_rows % n_dev:
        raise ConfigError(f"prompts_per_step * rollout.num_generations = {n_rows} rows do not split over "
                          f"{n_dev} devices; make it a multiple of {n_dev} (e.g. prompts_per_step="
                          f"{-(-n_rows // n_dev) * n_dev // G or 1} with num_generations={G})")

    task = NamedFailures(get_task(cfg.task, **cfg.task_options))  # a raising reward: named, with the step
    train_set = preflight.train_examples(task, cfg)  # an empty split stops here, before anything is written
    lm = load_model(cfg.model, resolve_dtype(cfg.dtype), cfg.seed)
    mcfg, tokenizer = lm.config, lm.tokenizer
    render_prompt(tokenizer, train_set[0].prompt)  # a chat template that alters the pre-fill stops here
    # ModelConfig keeps no max positions: the HF config.json's, as the torch loop checks them
    preflight.check_context(tokenizer, SimpleNamespace(**lm.hf_config), train_set, cfg.rollout.max_new_tokens,
                            render_prompt)
    params = shard_params(lm.params, mesh)  # frozen, split over the devices
    lm.params = None  # drop the host copy
    targets = lora_lib.target_names(cfg.lora.target_modules)
    scale = cfg.lora.alpha / cfg.lora.r
    lora = lora_lib.init(jax.random.key(cfg.seed), mcfg, cfg.lora.r, targets)
    optimizer = build_optimizer(cfg)
    opt_state = optimizer.init(lora)
    state: LoopState = fresh_state()
    if ckpt_path is not None:
        lora, opt_state, restored = checkpoint.load(ckpt_path, lora, opt_state, targets, mcfg)
        state.update(restored)
        print(f"aha: resumed from {ckpt_path} at step {state['step']}", file=sys.stderr)
    lora, opt_state = replicate(lora, mesh), replicate(opt_state, mesh)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    adapter_cfg = lora_lib.adapter_config(cfg.lora.r, cfg.lora.alpha, targets, cfg.model)
    fns = step_functions(mcfg, cfg, scale, optimizer, mesh)
    schedule = lr_lambda(cfg)
    base_key = jax.random.key(cfg.seed)
    put = partial(put_batch, mesh=mesh)

    def sample(prompts: list[Any], key: jax.Array, temperature: float) -> Any:
        merged = fns["merge"](params, lora)  # LoRA folded into the weights: one matmul per projection
        return generate(merged, mcfg, tokenizer, prompts, key, cfg.rollout.max_new_tokens, temperature,
                        cfg.rollout.top_p, cfg.rollout.top_k, lm.eos_ids, put)

    def save(step: int) -> Path:  # reads `lora` and `opt_state` as they are when called: the step's result
        return checkpoint.save(run_dir, step, lora, opt_state, tokenizer, {k: state[k] for k in ("epoch", "cursor")},
                               config_yaml, cfg.keep_last, adapter_cfg)

    backend = Backend(held_out_eval=lambda: held_out_eval(sample, task, cfg.eval_limit, n_dev),
                      probe=lambda: probe(sample, task, n_dev), save=save)
    # After each step (log, eval, warnings, checkpoint, stop): aha/loop.py, shared with the torch loop.
    book = Bookkeeper(cfg, run_dir, state, backend, config_yaml, resumed=ckpt_path is not None, overwrite=overwrite)
    book.baseline()  # the untrained policy's held-out accuracy: the baseline to beat
    for step in range(state["step"] + 1, cfg.max_steps + 1):
        task.step = step
        t0 = time.perf_counter()
        # 1. Prompts: the torch path's seeded per-epoch permutation and cursor.
        examples = [train_set[i] for i in next_indices(len(train_set), cfg.prompts_per_step, state, cfg.seed)]
        rows_examples = [ex for ex in examples for _ in range(G)]  # each prompt G times, adjacent: a group

        # 2. Rollout: G completions per prompt from the current policy.
        ro = sample([ex.prompt for ex in rows_examples], jax.random.fold_in(base_key, step), cfg.rollout.temperature)
        t_gen = time.perf_counter()

        # 3. Score: the task's rule-checked rewards; accuracy and format are separate, unpaid figures.
        scores = [task.score(text, ex) for text, ex in zip(ro.texts, rows_examples)]
        records = completion_records(task, rows_examples, ro.texts, scores, ro.completion_mask.sum(axis=1),
                                     ro.truncated)
        t_score = time.perf_counter()

        # 4. Advantages within each group; all-equal groups carry no signal (optionally weighted out).
        rewards = np.array([total for total, _ in scores], np.float32)  # (N,)
        advantages, zero_std = (np.asarray(x) for x in group_advantages(jnp.asarray(rewards), G,
                                                                         scale=cfg.algo.scale_rewards == "group"))
        keep = ~np.repeat(zero_std, G) if cfg.algo.drop_zero_std else np.ones(n_rows, bool)  # (N,)

        # 5. Update: mu optimizer steps over these rollouts, in fixed-size micro-batches - none when a
        # reward or advantage is NaN/inf (aha/guards.py).
        lrs = [cfg.lr * schedule(state["step"] * cfg.algo.mu + i) for i in range(cfg.algo.mu)]  # per optimizer step
        problem = guards.nonfinite_inputs(scores, advantages)
        if problem is None:
            lora, opt_state, stats = policy_update(fns, params, lora, opt_state, ro, advantages, keep, cfg, lrs,
                                                   n_dev, put)
        else:
            stats = UpdateStats.skipped(nonfinite=problem)
        t_end = time.perf_counter()

        # 6-7. Log, eval, checkpoint: the torch loop's records and metrics; no mismatch (NaN: the sampler
        # returns no log-probs), no refill.
        times = StepTimes.from_marks(t0, t_gen, t_score, t_end)
        extra = variant_metrics(None, cfg.algo.drop_zero_std, 0, float((~zero_std).sum()))
        book.after_step(step, StepOutcome(records, float(zero_std.sum()), float(len(zero_std)), stats, lrs[-1],
                                          times, extra))
    book.close()
    return run_dir


def resolve_dtype(name: str) -> str:
    """auto: bfloat16 on TPU/GPU (the MXU's and tensor cores' type), float32 on CPU."""
    if name == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return name


def build_optimizer(cfg: Config) -> Any:
    """optax AdamW with the torch path's hyper-parameters; the learning rate is injected per step
    (aha/schedule.py's `lr_lambda` sets it), and clipping by global norm comes first as in torch."""
    import optax

    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=cfg.lr, b1=cfg.adam_beta1, b2=cfg.adam_beta2,
                                                  eps=1e-8, weight_decay=cfg.weight_decay)
    clip = optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm else optax.identity()
    return optax.chain(clip, adamw)


def step_functions(mcfg: Any, cfg: Config, scale: float, optimizer: Any, mesh: Any) -> dict[str, Any]:
    """The jitted pieces of a step. Everything from the config is closed over, so it is static.
    Adapters, optimizer state and gradients stay replicated over `mesh` (sharding.py): left to
    itself XLA may split them, and a new input sharding next step would mean a recompilation."""
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    whole = NamedSharding(mesh, PartitionSpec())

    from aha.jax.algo import policy_loss
    from aha.jax.lora import merge
    from aha.jax.logprobs import completion_logprobs

    a = cfg.algo
    temperature = cfg.rollout.temperature or 1.0  # log-probs of the distribution we sampled from

    def logprobs(lora: Any, params: Any, mb: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return completion_logprobs(params, mcfg, mb["ids"], mb["mask"], mb["cmask"].shape[1], temperature,
                                   cfg.logprob_chunk, lora, scale, remat=cfg.gradient_checkpointing)

    def loss_fn(lora: Any, params: Any, mb: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        logp, entropy = logprobs(lora, params, mb)  # (b, C)
        old = mb["old"] if "old" in mb else jax.lax.stop_gradient(logp)  # mu = 1: ratio is 1, gradient flows
        loss, st = policy_loss(logp, old, mb["adv"], mb["weights"], a, ref_logp=mb.get("ref"))
        return loss, {**st, "entropy_sum": (entropy * mb["cmask"]).sum()}

    def apply(lora: Any, opt_state: Any, grads: Any, lr: jax.Array) -> tuple[Any, Any, jax.Array, jax.Array]:
        opt_state[-1].hyperparams["learning_rate"] = lr
        updates, new_state = optimizer.update(grads, opt_state, lora)
        new_lora = optax.apply_updates(lora, updates)
        # A NaN/inf gradient, or an update that overflows the weights (lr far too high), is not
        # applied: the old adapters and optimizer state are kept (aha/guards.py).
        norm = optax.global_norm(grads)
        floats = [x for x in jax.tree_util.tree_leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)]

        def max_abs(tree: Any) -> jax.Array:  # NaN if any value is NaN
            return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)]))

        limit = jnp.maximum(guards.WEIGHT_LIMIT, guards.WEIGHT_GROWTH * max_abs(lora))
        ok = (jnp.isfinite(norm) & jnp.all(jnp.stack([jnp.isfinite(x).all() for x in floats]))
              & (max_abs(new_lora) <= limit))  # NaN compares False
        keep = partial(jax.tree.map, lambda new, old: jnp.where(ok, new, old))
        return keep(new_lora, lora), keep(new_state, opt_state), norm, ok

    donate = () if jax.default_backend() == "cpu" else (0, 1)  # the CPU backend cannot reuse buffers
    return {
        "grad": jax.jit(jax.value_and_grad(loss_fn, has_aux=True), out_shardings=whole),
        "logprobs": jax.jit(lambda lora, params, mb: logprobs(lora, params, mb)[0]),
        "apply": jax.jit(apply, donate_argnums=donate, out_shardings=whole),
        "add": jax.jit(lambda x, y: jax.tree.map(jnp.add, x, y), donate_argnums=donate[:1], out_shardings=whole),
        "merge": jax.jit(lambda params, lora: merge(params, lora, scale)),
    }


def policy_update(fns: dict[str, Any], params: Any, lora: Any, opt_state: Any, ro: Any, advantages: np.ndarray,
                  keep: np.ndarray, cfg: Config, lrs: list[float], n_dev: int,
                  put: Any) -> tuple[Any, Any, UpdateStats]:
    """mu optimizer steps (learning rates `lrs`) on the kept rows `keep` (N,) of a rollout.
    Returns (adapters, optimizer state, the update's statistics)."""
    from aha.jax.algo import loss_weights

    a = cfg.algo
    cmask = ro.completion_mask * keep[:, None]  # (N, C): dropped rows weigh nothing
    n_seqs, n_tokens = int(keep.sum()), int(cmask.sum())
    if n_seqs == 0:  # every group was dropped (all rewards equal): nothing to learn from
        return lora, opt_state, UpdateStats.skipped()
    weights = np.asarray(loss_weights(jnp.asarray(cmask), a.loss_agg, n_seqs, n_tokens, cfg.rollout.max_new_tokens))
    batches = micro_batches(ro, advantages, weights, cmask, cfg.micro_batch_tokens, n_dev)
    batches = [{k: put(v) for k, v in mb.items()} for mb in batches]
    if a.mu > 1:  # the ratio's denominator: the policy that sampled these rollouts
        for mb in batches:
            mb["old"] = fns["logprobs"](lora, params, mb)
    if a.beta > 0:  # LoRA: the reference is the base model, i.e. no adapters
        for mb in batches:
            mb["ref"] = fns["logprobs"](None, params, mb)
    nonfinite = None  # what was NaN/inf in a skipped (or rolled-back) optimizer step
    for it in range(a.mu):
        grads, totals = None, {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy_sum": 0.0}
        for mb in batches:
            (loss, st), g = fns["grad"](lora, params, mb)
            grads = g if grads is None else fns["add"](grads, g)
            totals["loss"] += float(loss)
            for k in ("kl", "clip_frac", "entropy_sum"):
                totals[k] += float(st[k]) if k in st else 0.0
        lora, opt_state, grad_norm, ok = fns["apply"](lora, opt_state, grads, jnp.float32(lrs[it]))
        if not bool(ok):
            nonfinite = ("loss or gradient" if not np.isfinite(float(grad_norm))
                         else "update (the step overflowed the weights; lr far too high?)")
    entropy = totals.pop("entropy_sum") / max(n_tokens, 1)
    return lora, opt_state, UpdateStats(loss=totals["loss"], kl=totals["kl"] if a.beta > 0 else float("nan"),
                                        clip_frac=totals["clip_frac"], entropy=entropy,
                                        grad_norm=float(grad_norm), update_skipped=float(nonfinite is not None),
                                        nonfinite=nonfinite)


def micro_batch_rows(n_rows: int, width: int, token_budget: int, n_dev: int) -> int:
    """Rows per micro-batch: the most that fit `token_budget` padded tokens, a multiple of the device
    count, dividing the batch evenly (fixed shapes). At least n_dev rows."""
    best = n_dev
    for m in range(n_dev, n_rows + 1, n_dev):
        if n_rows % m == 0 and m * width <= token_budget:
            best = m
    return best


def micro_batches(ro: Any, advantages: np.ndarray, weights: np.ndarray, cmask: np.ndarray, token_budget: int,
                  n_dev: int) -> list[dict[str, np.ndarray]]:
    """Fixed-size micro-batches of (prompt + completion) rows, the completion trimmed to a multiple of
    COMPLETION_BUCKET covering the longest completion."""
    longest = int(ro.completion_mask.sum(axis=1).max())
    C = min(max(-(-longest // COMPLETION_BUCKET) * COMPLETION_BUCKET, 1), ro.completion_ids.shape[1])
    ids = np.concatenate([ro.prompt_ids, ro.completion_ids[:, :C]], axis=1).astype(np.int32)  # (N, P + C)
    mask = np.concatenate([ro.prompt_mask, ro.completion_mask[:, :C]], axis=1).astype(np.int32)
    n = len(ids)
    m = micro_batch_rows(n, ids.shape[1], token_budget, n_dev)
    return [{"ids": ids[i:i + m], "mask": mask[i:i + m], "cmask": cmask[i:i + m, :C].astype(np.float32),
             "adv": advantages[i:i + m].astype(np.float32), "weights": weights[i:i + m, :C]}
            for i in range(0, n, m)]


def _padded(prompts: list[Any], n_dev: int) -> list[Any]:
    """Prompts repeated at the end up to a multiple of the device count (the batch is split by rows)."""
    return prompts + [prompts[-1]] * (-len(prompts) % n_dev)


def probe(sample: Any, task: Any, n_dev: int) -> dict[str, Any]:
    """A greedy completion of the first held-out prompt (records.probe_record)."""
    ex = task.examples("test")[0]
    return probe_record(task, ex, sample(_padded([ex.prompt], n_dev), jax.random.key(0), 0.0).texts[0])


def held_out_eval(sample: Any, task: Any, limit: int, n_dev: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy pass@1 (strict and lenient) and the other `aha.eval.summarize` metrics on the first
    `limit` test examples: (the `eval/*` metrics, the completions for eval_completions.jsonl), as torch."""
    from aha.eval import summarize

    examples = list(task.examples("test")[:limit])
    ro = sample(_padded([ex.prompt for ex in examples], n_dev), jax.random.key(0), 0.0)
    n = len(examples)
    metrics, rows = summarize(task, examples, ro.texts[:n], ro.completion_mask.sum(axis=1)[:n].tolist(),
                              ro.truncated[:n].tolist())
    return {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, rows
