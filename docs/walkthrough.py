# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One GRPO step, up close
#
# This notebook takes one step of aha's training loop (`grpo_step` in `aha/train.py`) apart, on the
# bundled SmolLM2-135M-Instruct, on a CPU, offline, in well under a minute. Each cell calls the
# function the trainer calls - nothing is re-implemented here - with the trainer's shapes and
# the `cpu-demo` preset's settings, made small (G = 4 completions of at most 24 tokens).
#
# Open it as a notebook with `jupytext --to notebook docs/walkthrough.py` (or Jupyter's jupytext
# extension), or run it as a script: `python docs/walkthrough.py`. The test suite runs it top to
# bottom (`tests/test_walkthrough.py`).
#
# One GRPO step (Shao et al. 2024, DeepSeekMath) is:
#
# 1. take a prompt and sample a **group** of G completions from the current policy;
# 2. **score** each completion with the task's rule-checked rewards;
# 3. turn the rewards into **advantages relative to the group**: better than the group's
#    average is positive, worse is negative - no value network, the group is the baseline;
# 4. compute each completion token's **log-probability** under the policy, the probability
#    **ratio** to the policy that sampled it, and the clipped policy-gradient **loss**;
# 5. take **one optimizer step**, which makes the better-than-average completions more likely.

# %%
import torch

from aha.config import load_config
from aha.model import load_policy, trainable_parameters
from aha.tasks import get_task

cfg = load_config("cpu-demo", ["rollout.num_generations=4", "rollout.max_new_tokens=24", "report_to=none"])
torch.manual_seed(cfg.seed)
policy = load_policy(cfg.model, cfg.finetune, cfg.lora, cfg.device, cfg.dtype, seed=cfg.seed)
model, tokenizer = policy.model, policy.tokenizer
task = get_task(cfg.task, **cfg.task_options)

n_all = sum(p.numel() for p in model.parameters())
n_train = sum(p.numel() for p in trainable_parameters(model))
print(f"{cfg.model}: {n_all / 1e6:.0f}M parameters, {n_train / 1e6:.2f}M trainable "
      f"(LoRA r={cfg.lora.r} on the last {cfg.lora.last_layers} layers); task {task.name!r}")

# %% [markdown]
# ## The prompt
#
# A task hands the trainer `Example`s: an id, a prompt, and a target that only the task's reward
# functions read. The `arith` task, as the `cpu-demo` preset sets it up, asks small sums in a chat
# template with one worked example in the system message, and **pre-fills** the assistant's turn
# with `<think>\n`: the model continues from inside the format.

# %%
ex = task.examples("train")[0]
for message in ex.prompt:
    print(f"[{message['role']}] {message['content']!r}")
print("target (opaque to the trainer):", ex.target)

# %% [markdown]
# ## 1. Sample a group
#
# `aha.rollout.generate` renders the prompt (chat template, pre-fill left open), left-pads,
# samples with the configured engine, and cuts each completion at its first EOS. The same prompt
# repeated G times gives the group. The result is a `Rollout` of plain tensors: prompt ids
# `(G, P)`, completion ids `(G, C)` and a completion mask `(G, C)` that is 1 through the first EOS.

# %%
from aha.rollout import generate
from aha.sampling import SamplingParams

G = cfg.rollout.num_generations
params = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k)
ro = generate(model, tokenizer, [ex.prompt] * G, params, cfg.rollout.engine)
print("prompt_ids", tuple(ro.prompt_ids.shape), "completion_ids", tuple(ro.completion_ids.shape),
      "tokens per completion", ro.completion_mask.sum(dim=1).tolist(), "truncated", ro.truncated.tolist())
for i, text in enumerate(ro.texts):
    print(f"--- completion {i}: {text!r}")

# %% [markdown]
# ## 2. Score it
#
# `task.score(completion, example)` returns the weighted total and each reward's part. Rewards are
# pure functions of the text (here GSM8K's five: correctness, int, strict and soft format, and
# xmlcount, which pays for each tag written once); they judge the pre-fill plus the completion.
# `is_correct` is separate, so format rewards can never inflate the accuracy metric.

# %%
scores = [task.score(text, ex) for text in ro.texts]
rewards = torch.tensor([total for total, _ in scores])  # (G,)
for i, (total, parts) in enumerate(scores):
    shown = ", ".join(f"{name} {value:.3f}" for name, value in parts.items())
    print(f"completion {i}: reward {total:.3f} = {shown}; correct={task.is_correct(ro.texts[i], ex)}")

# %% [markdown]
# ## 3. Advantages relative to the group
#
# `aha.algo.group_advantages` centres each reward on its group's mean and (GRPO) divides by the
# group's standard deviation (`algo.scale_rewards=false` keeps only the centring: Dr. GRPO). A
# group whose rewards are all equal carries **no signal**: every advantage is 0 and the step
# below changes nothing for it - the trainer counts such groups in `frac_zero_std` and warns when
# every group is like that for several steps.

# %%
from aha.algo import group_advantages

advantages, zero_std = group_advantages(rewards, G, scale=cfg.algo.scale_rewards)  # (G,), (1,)
print("rewards   ", [round(r, 3) for r in rewards.tolist()])
print("advantages", [round(a, 3) for a in advantages.tolist()], "| all rewards equal:", bool(zero_std[0]))

# %% [markdown]
# ## 4. Log-probabilities, the ratio, the loss
#
# `aha.logprobs.completion_logprobs` runs the decoder over prompt + completion and projects only
# the completion positions to the vocabulary, a chunk at a time: the `(G, T, vocab)` logits never
# exist at once. It returns each sampled token's log-probability `(G, C)` at the sampling
# temperature (the distribution the tokens were drawn from). The trainer's fast path
# (`batch_logprobs`) runs the shared prompt once per group; this per-row path gives the same numbers.

# %%
from aha.logprobs import completion_logprobs

input_ids = torch.cat([ro.prompt_ids, ro.completion_ids], dim=1)  # (G, P + C)
attention_mask = torch.cat([ro.prompt_mask, ro.completion_mask], dim=1)
C = ro.completion_ids.shape[1]
cmask = ro.completion_mask  # (G, C)
model.train()
logp, entropy = completion_logprobs(model, input_ids, attention_mask, C, cfg.rollout.temperature,
                                    cfg.logprob_chunk)  # (G, C) each
print("log-prob of each whole completion:", [round(x, 2) for x in (logp * cmask).sum(dim=1).tolist()])
print(f"mean entropy per token: {(entropy * cmask).sum().item() / cmask.sum().item():.3f} nats")

# %% [markdown]
# The **ratio** is `exp(logp - old_logp)`, where `old_logp` are the log-probs of the policy that
# sampled the group. With one optimizer step per batch (`algo.mu=1`, the default) that policy *is*
# the current one, so `old_logp = logp.detach()` and the ratio is exactly 1 - yet its gradient is
# the policy gradient, `ratio * grad(logp)`. The PPO clip (`epsilon_low/high`) only bites when the
# same rollouts are reused for several steps (`mu > 1`).
#
# `aha.algo.loss_weights` turns per-token losses into the configured aggregate (`cpu-demo` uses
# `token`: every token counts the same, DAPO; `sequence` averages within each completion first,
# GRPO), and `aha.algo.policy_loss` computes `-min(ratio * A, clip(ratio) * A)` per token, weighted.
# With the ratio at 1 the loss's *value* is minus the weighted mean advantage - about 0, since the
# advantages of a group sum to 0 - but its gradient is not zero.

# %%
from aha.algo import loss_weights, policy_loss

old_logp = logp.detach()
ratio = torch.exp(logp - old_logp)
w = loss_weights(cmask, cfg.algo.loss_agg, n_seqs=G, n_tokens=int(cmask.sum()), max_len=cfg.rollout.max_new_tokens)
loss, stats = policy_loss(logp, old_logp, advantages, w, cfg.algo)
print("ratio on completion tokens:", sorted(set(ratio[cmask.bool()].tolist())))
print(f"loss {loss.item():.4f} (aggregation {cfg.algo.loss_agg!r}), clipped fraction {stats['clip_frac'].item():.2f}")

# %% [markdown]
# ## 5. One optimizer step
#
# Backward, clip the gradient norm, step - as `policy_update` (aha/update.py) does. Only the LoRA matrices train.
# LoRA's B matrices start at zero, so the adapted model starts equal to the base, and the gradient
# of each A matrix (which flows through B) is zero too: the first step moves the B matrices only -
# half of the LoRA tensors. AdamW's first step moves every parameter with a gradient by about lr.

# %%
from aha.optim import build_optimizer

params = trainable_parameters(model)
optimizer = build_optimizer(cfg, params)
before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
optimizer.zero_grad(set_to_none=True)
loss.backward()
grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
optimizer.step()
moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()
         if p.requires_grad}
print(f"gradient norm {grad_norm.item():.4f}; {sum(v > 0 for v in moved.values())} of {len(moved)} LoRA "
      f"tensors moved, by at most {max(moved.values()):.2e} (lr {cfg.lr:g})")

# %% [markdown]
# ## What changed
#
# The same completions, scored by the updated policy: each one's total log-probability moved, up
# for positive advantages and down for negative ones (the step follows the gradient of
# `sum(A * logp)`, first order). The ratio is no longer 1: if these rollouts were used again
# (`mu > 1`), the clip would start to matter, and the surrogate loss is now lower.

# %%
with torch.no_grad():
    new_logp, _ = completion_logprobs(model, input_ids, attention_mask, C, cfg.rollout.temperature,
                                      cfg.logprob_chunk)
delta = ((new_logp - old_logp) * cmask).sum(dim=1)  # (G,) change in log p(completion)
for i in range(G):
    print(f"completion {i}: advantage {advantages[i].item():+.3f} -> log p changed by {delta[i].item():+.4f}")
new_loss, new_stats = policy_loss(new_logp, old_logp, advantages, w, cfg.algo)
new_ratio = torch.exp(new_logp - old_logp)[cmask.bool()]
print(f"ratio now in [{new_ratio.min().item():.4f}, {new_ratio.max().item():.4f}]; "
      f"surrogate loss {loss.item():.4f} -> {new_loss.item():.4f}")
print("agreement of sign(advantage) and sign(change):",
      sum((a * d > 0) for a, d in zip(advantages.tolist(), delta.tolist()) if a != 0), "of",
      sum(a != 0 for a in advantages.tolist()), "completions with a non-zero advantage")

# %% [markdown]
# ## What the trainer adds around this step
#
# `train()` repeats this with `prompts_per_step` prompts at once and adds: micro-batches packed by
# a token budget (`micro_batches`, aha/update.py), the shared-prompt log-prob path, `mu > 1` with stored
# old log-probs, the KL term to a reference (the same model with its LoRA adapters disabled, so no
# second copy), a learning-rate schedule, the metrics (`metrics.jsonl`, TensorBoard, W&B), held-out
# evals at step 0 and at the end, and atomic checkpoints. Run the whole thing with
# `aha train -c cpu-demo`, then look with `aha report runs/cpu-demo`.
