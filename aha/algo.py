"""GRPO's arithmetic as pure functions on tensors: advantages, KL, the surrogate losses, how per-token
losses are aggregated, DAPO's length shaping and the rollout/trainer mismatch. Nothing here touches a
model (see logprobs.py for that).

Shapes: N completions in the batch, G per group (N = groups * G), C completion tokens.
Departures from the GRPO paper (Shao et al. 2024) are knobs (config.AlgoConfig), each naming its
source; each is one small function below whose docstring gives the paper's formula, found by its name
in aha/variants.py's tables (`variant`), which config validation and the README read too:
- the baseline: the group mean (GRPO), leave-one-out (RLOO), the batch mean (REINFORCE++);
- the scale: the group's std (GRPO), the batch's std (REINFORCE++), none (Dr. GRPO, Liu et al. 2025);
- the ratio: per token (PPO / GRPO) or per sequence, length-normalised (GSPO);
- the surrogate: PPO's clipped min (with DAPO's clip-higher `epsilon_high` > `epsilon_low` and an
  optional dual clip), or REINFORCE weighted by a clipped stop-gradient ratio (CISPO);
- `loss_weights(agg=...)`: per-sequence mean (GRPO), per-token mean (DAPO), constant (Dr. GRPO);
- DAPO's overlong reward shaping; TIS / MIS weights against the rollout engine's mismatch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

import torch

from aha import variants

if TYPE_CHECKING:
    from aha.config import AlgoConfig

# Sums floats over data-parallel ranks; one process: identity (the default, `list`, returns a copy).
AllSum = Callable[[list[float]], list[float]]


def variant(table: dict[str, str], name: str, choice: str) -> Callable[..., Any]:
    """The function that `name` picks in `table`, one of aha/variants.py's ("module:function" values,
    imported here so that config validation, which reads the same tables, stays torch-free). An unknown
    name is a ValueError naming the choice and its values."""
    if name not in table:
        raise ValueError(f"unknown {choice} {name!r}: not one of {', '.join(table)}")
    module, function = table[name].split(":")
    return getattr(importlib.import_module(module), function)


# ---------------------------------------------------------------------------- advantages

def group_mean_baseline(grouped: torch.Tensor, all_sum: AllSum = list) -> torch.Tensor:
    """GRPO (Shao et al. 2024, §4.1.2): b = mean of the group's rewards. (groups, G) -> (groups, 1).
    `all_sum` is unused (a group is on one rank); every BASELINES function takes it."""
    return grouped.mean(dim=1, keepdim=True)


def leave_one_out_baseline(grouped: torch.Tensor, all_sum: AllSum = list) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): b_i = (sum_j r_j - r_i) / (G - 1),
    the mean of the *other* completions, so the baseline does not depend on r_i (unbiased).
    (groups, G) -> (groups, G). `all_sum` is unused, as in group_mean_baseline."""
    G = grouped.shape[1]
    return (grouped.sum(dim=1, keepdim=True) - grouped) / (G - 1)


def batch_mean_baseline(rewards: torch.Tensor, all_sum: AllSum = list) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): b = mean of every reward in the batch (all ranks), no groups. Any shape
    (the grouped rewards (groups, G) in BASELINES) -> ()."""
    total, n = all_sum([rewards.double().sum().item(), float(rewards.numel())])
    return torch.tensor(total / max(n, 1.0), dtype=rewards.dtype)


def group_std(adv: torch.Tensor) -> torch.Tensor:
    """GRPO's scale: the population std of each group's advantages (= of its rewards for a group or batch
    baseline). (groups, G) -> (groups, 1)."""
    if adv.shape[0] == 0 or adv.shape[1] < 2:  # no groups on this rank, or G = 1
        return torch.zeros_like(adv[:, :1])
    return adv.std(dim=1, keepdim=True, unbiased=False)


def batch_std(adv: torch.Tensor, all_sum: AllSum = list) -> torch.Tensor:
    """REINFORCE++'s global advantage normalisation (Hu 2025): the population std of every advantage in
    the batch (all ranks). Its mean subtraction is a no-op here: every baseline above leaves the batch's
    advantages summing to 0. (any shape) -> ()."""
    x = adv.double().reshape(-1)
    s, s2, n = all_sum([x.sum().item(), (x * x).sum().item(), float(x.numel())])
    n = max(n, 1.0)
    return torch.tensor(max(s2 / n - (s / n) ** 2, 0.0) ** 0.5, dtype=adv.dtype)


def scale_by_group_std(adv: torch.Tensor, eps: float, all_sum: AllSum = list) -> torch.Tensor:
    """GRPO (Shao et al. 2024, §4.1.2): A / (std of the group + eps). (groups, G) -> (groups, G)."""
    return adv / (group_std(adv) + eps)


def scale_by_batch_std(adv: torch.Tensor, eps: float, all_sum: AllSum = list) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): A / (std of the batch, all ranks + eps). (groups, G) -> (groups, G)."""
    return adv / (batch_std(adv, all_sum) + eps)


def no_scale(adv: torch.Tensor, eps: float, all_sum: AllSum = list) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, §3.1): no std scaling, which would over-weight the groups that are nearly
    all right or all wrong. Returns `adv` itself."""
    return adv


def compute_advantages(rewards: torch.Tensor, group_size: int, baseline: str = "group", scale: str = "group",
               eps: float = 1e-4, all_sum: AllSum = list) -> tuple[torch.Tensor, torch.Tensor]:
    """A_i = (r_i - b_i) / (std + eps), with b from `baseline` (variants.BASELINES: group | leave_one_out |
    batch) and std from `scale` (variants.SCALES: group | batch | none). GRPO = (group, group), Dr. GRPO =
    (group, none), RLOO = (leave_one_out, none), REINFORCE++ = (batch, batch), REINFORCE++-baseline =
    (group, batch).

    rewards: (N,) with the G completions of a prompt adjacent. `all_sum` sums over data-parallel ranks
    (batch statistics must be the whole batch's). Returns (advantages (N,), zero_std (N // G,) bool). A group
    whose rewards are all equal has advantage exactly 0 under a group or leave-one-out baseline (any baseline
    taken within the group: b has a groups dimension); under the batch baseline (b is a scalar) it keeps
    r - mean(batch), as REINFORCE++ has no groups.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size).float()  # (groups, G)
    b = variant(variants.BASELINES, baseline, "baseline")(grouped, all_sum)
    adv = variant(variants.SCALES, scale, "reward scale")(grouped - b, eps, all_sum)
    zero_std = (grouped.max(dim=1).values - grouped.min(dim=1).values) == 0  # exact: no eps games
    if b.dim() > 0:  # a baseline within each group: an all-equal group's advantage is 0, not rounding noise / eps
        adv = torch.where(zero_std.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv.reshape(-1), zero_std


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's advantages (scale=True) or Dr. GRPO's (scale=False): `compute_advantages` with a group baseline."""
    return compute_advantages(rewards, group_size, "group", "group" if scale else "none", eps)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward: 0 up to
    L_max - L_cache tokens, then falling linearly to -1 at L_max (= max_new_tokens, where a completion is
    cut), times `factor`. lengths: (N,) completion tokens -> (N,)."""
    if buffer <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    over = (lengths.float() - (max_len - buffer)).clamp(min=0) / buffer
    return -factor * over.clamp(max=1.0)


# ---------------------------------------------------------------------------- the loss

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, xp: Any = torch) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || ref) (Schulman 2020): exp(d) - d - 1, d = ref - logp.
    Non-negative, zero exactly where the policy equals the reference. (B, C) -> (B, C).
    `xp`: the array module (torch, or jax.numpy for the JAX backend)."""
    d = ref_logp - logp
    return xp.exp(d) - d - 1


def sequence_mean_weights(mask: torch.Tensor, n_seqs: int, n_tokens: int, max_len: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 3): 1/|y_i| per token, then the mean over completions: each completion
    counts equally, whatever its length. mask: (B, C) float -> (B, C)."""
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
    return mask / lengths / n_seqs


def token_mean_weights(mask: torch.Tensor, n_seqs: int, n_tokens: int, max_len: int) -> torch.Tensor:
    """DAPO (Yu et al. 2025, §3.3, token-level loss): the mean over every token of the batch; each token
    counts equally, so long completions weigh more. mask: (B, C) float -> (B, C)."""
    return mask / max(n_tokens, 1)


def constant_weights(mask: torch.Tensor, n_seqs: int, n_tokens: int, max_len: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, §3.1): a constant normaliser, completions * max_new_tokens, so there is no
    length bias either way. mask: (B, C) float -> (B, C)."""
    return mask / (n_seqs * max_len)


def loss_weights(mask: torch.Tensor, agg: str, n_seqs: int, n_tokens: int, max_len: int) -> torch.Tensor:
    """Per-token weights that turn a sum of per-token losses into the chosen aggregate, `agg` a name in
    variants.AGGREGATIONS (sequence | token | constant).

    mask: (B, C) for any slice (micro-batch) of the batch; `n_seqs` / `n_tokens` are totals over
    the *whole* batch, so that summing (loss * weights) over micro-batches gives the full-batch
    loss exactly - gradient accumulation then needs no further scaling.
    """
    return variant(variants.AGGREGATIONS, agg, "loss aggregation")(mask.float(), n_seqs, n_tokens, max_len)


def token_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None = None,
                xp: Any = torch) -> torch.Tensor:
    """PPO / GRPO's per-token ratio r_t = pi(y_t) / pi_old(y_t) (Shao et al. 2024, eq. 3). (B, C) -> (B, C);
    1 when old_logp is logp.detach() (mu = 1), with gradient r_t * grad log pi(y_t). `mask` is unused (every
    RATIOS function takes it: the sequence ratio needs it)."""
    return xp.exp(logp - old_logp)


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None,
                   xp: Any = torch) -> torch.Tensor:
    """GSPO's length-normalised sequence ratio (Zheng et al. 2025, eq. 7), s_i = exp(mean_t log r_t) over
    the completion's tokens, in its GSPO-token form (eq. 13-14): every token carries the value s_i and the
    gradient s_i * grad log pi(y_t). With the `sequence` aggregation this is GSPO's objective (eq. 5)
    exactly. logp, old_logp, mask: (B, C) -> (B, C). Torch only: `xp` is unused (every RATIOS function
    takes it)."""
    if mask is None:
        raise ValueError("ratio='sequence' needs the completion mask")
    m = mask.float()
    log_s = ((logp - old_logp).detach() * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.exp(log_s + logp - logp.detach())  # value s_i; d/d logp_t = s_i


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float,
                      dual_clip: float = 0.0, xp: Any = torch) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective (Schulman et al. 2017, eq. 7) with DAPO's decoupled clip range (Yu et al.
    2025, §3.1 clip-higher): -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A). `dual_clip` c > 1 (dual-clip
    PPO, Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL") also bounds the loss of a
    negative advantage: -max(min(...), c A) where A < 0, so one token with a huge ratio cannot dominate.

    ratio: (B, C); adv: (B, 1). Returns (per-token loss (B, C), clipped (B, C) float: 1 where a clip took
    the token's gradient away)."""
    unclipped = ratio * adv
    clipped = xp.clip(ratio, 1 - eps_low, 1 + eps_high) * adv
    objective = xp.minimum(unclipped, clipped)
    is_clipped = clipped < unclipped  # min() took the clipped branch: no gradient there
    if dual_clip > 0:
        floor = dual_clip * adv
        dual = (adv < 0) & (floor > objective)
        objective = xp.where(dual, floor, objective)
        is_clipped = is_clipped | dual
    return -objective, xp.where(is_clipped, 1.0, 0.0)


def cispo_surrogate(logp: torch.Tensor, ratio: torch.Tensor, adv: torch.Tensor, eps_low: float,
                    eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, 2025, eq. 4-5): REINFORCE weighted by the clipped, stop-gradient ratio,
    -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi(y_t). Unlike PPO's clip, a clipped token keeps its
    gradient (scaled by the bound): rare "fork" tokens still learn. The paper sets no lower bound
    (eps_low >= 1) and pairs it with the `token` aggregation.

    logp, ratio: (B, C); adv: (B, 1). Returns (per-token loss (B, C), clipped (B, C) float: 1 where the
    weight hit a bound)."""
    weight = torch.clamp(ratio.detach(), 1 - eps_low, 1 + eps_high)
    return -weight * adv * logp, (weight != ratio.detach()).float()


def clip_loss(logp: torch.Tensor, ratio: torch.Tensor, adv: torch.Tensor, algo: AlgoConfig,
              xp: Any = torch) -> tuple[torch.Tensor, torch.Tensor]:
    """SURROGATES["clip"]: `clipped_surrogate` (PPO, DAPO's clip-higher, dual clip) with the config's
    algo.epsilon_low / epsilon_high / dual_clip. `logp` is unused: the ratio carries the gradient."""
    return clipped_surrogate(ratio, adv, algo.epsilon_low, algo.epsilon_high, algo.dual_clip, xp)


def reinforce_loss(logp: torch.Tensor, ratio: torch.Tensor, adv: torch.Tensor, algo: AlgoConfig,
                   xp: Any = torch) -> tuple[torch.Tensor, torch.Tensor]:
    """SURROGATES["reinforce"]: `cispo_surrogate` (CISPO) with the config's algo.epsilon_low / epsilon_high.
    Torch only: `xp` is unused."""
    return cispo_surrogate(logp, ratio, adv, algo.epsilon_low, algo.epsilon_high)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                algo: AlgoConfig, *, ref_logp: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                is_weight: torch.Tensor | None = None, entropy: torch.Tensor | None = None, xp: Any = torch,
                stop_gradient: Callable[[Any], Any] = torch.Tensor.detach) -> tuple[torch.Tensor, dict[str, Any]]:
    """The surrogate (variants.SURROGATES[algo.surrogate]: PPO / GRPO's clip, or CISPO's weighted REINFORCE)
    of the ratio (variants.RATIOS[algo.ratio]: per token, or GSPO's per sequence), times the
    rollout-correction weight `is_weight`, plus algo.beta * k3 KL, minus algo.entropy_coef * entropy,
    aggregated by `weights`. `algo`: a config.AlgoConfig, or anything with its attributes (epsilon_low,
    epsilon_high, dual_clip, beta, ratio, surrogate, entropy_coef).

    logp, old_logp, ref_logp, weights, mask, is_weight, entropy: (B, C); advantages: (B,). `mask` is
    needed by the sequence ratio; `entropy` (with its gradient) by the entropy bonus. Returns (scalar
    loss, stats): weighted sums (same aggregation as the loss) of the KL and the clipped fraction.
    `xp` / `stop_gradient`: torch and Tensor.detach here; the JAX backend passes jax.numpy and
    jax.lax.stop_gradient, so both backends run this one function (aha/jax/algo.py). The JAX backend
    runs the defaults (token ratio, clip; no dual clip); the other variants are torch-only.
    """
    beta, entropy_coef = algo.beta, algo.entropy_coef
    r = variant(variants.RATIOS, algo.ratio, "ratio")(logp, old_logp, mask, xp)
    adv = advantages[:, None]  # (B, 1)
    per_token, is_clipped = variant(variants.SURROGATES, algo.surrogate, "surrogate")(logp, r, adv, algo, xp)
    if is_weight is not None:  # TIS / MIS: a constant per token, computed from the rollout's log-probs
        per_token = per_token * stop_gradient(is_weight)
    stats: dict[str, Any] = {}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp, xp)
        per_token = per_token + beta * kl
        stats["kl"] = stop_gradient(kl * weights).sum()
    if entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        per_token = per_token - entropy_coef * entropy
    stats["clip_frac"] = stop_gradient(is_clipped * weights).sum()
    return (per_token * weights).sum(), stats


# ---------------------------------------------------------------------------- rollout / trainer mismatch

def truncated_is_weight(rho: torch.Tensor, cap: float) -> torch.Tensor:
    """TIS (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"):
    min(rho, cap). (B, C) -> (B, C)."""
    return rho.clamp(max=cap)


def masked_is_weight(rho: torch.Tensor, cap: float) -> torch.Tensor:
    """MIS (Liu et al. 2025, "When Speed Kills Stability"): rho * 1[rho <= cap], so a token the trainer
    finds far likelier than the engine did drops out instead of counting at the cap. (B, C) -> (B, C)."""
    return rho * (rho <= cap).float()


def token_log_rho(log_rho: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each token's own log rho (TIS / MIS as published). (B, C) -> (B, C); `mask` is unused."""
    return log_rho


def sequence_log_rho(log_rho: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The completion's length-normalised log rho on each of its tokens, as GSPO's ratio (Zheng et al.
    2025, eq. 7). log_rho (0 at padding), mask: (B, C) float -> (B, C)."""
    return (log_rho.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)).expand_as(mask)


def rollout_is_weight(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                      mode: str = "truncate", level: str = "token") -> torch.Tensor:
    """The importance weight rho = pi_trainer(y) / pi_rollout(y) that corrects for the rollout engine
    sampling from a slightly different distribution than the trainer's (bf16, other kernels, vLLM).
    `truncate`: TIS, min(rho, cap) (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
    Off-Policy RL Training"); `mask`: MIS, rho * 1[rho <= cap] (Liu et al. 2025, "When Speed Kills
    Stability"). `level=sequence` uses the length-normalised rho of the whole completion (as GSPO's ratio).
    `mode` / `level`: names in variants.ROLLOUT_CORRECTIONS / ROLLOUT_CORRECTION_LEVELS.

    Both log-probs must be on the same support: under top-p / top-k the engine's are renormalised over the
    kept tokens, so the trainer's must be too (logprobs.py `support`), else rho carries the kept mass
    (TRL issue #6789). All (B, C); returns (B, C), no gradient, 0 at padding."""
    m = mask.float()
    log_rho = (trainer_logp - rollout_logp).detach() * m
    log_rho = variant(variants.ROLLOUT_CORRECTION_LEVELS, level, "rollout correction level")(log_rho, m)
    rho = torch.exp(log_rho)
    return variant(variants.ROLLOUT_CORRECTIONS, mode, "rollout correction")(rho, cap) * m


def mismatch_stats(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor,
                   mask: torch.Tensor) -> tuple[float, float, float]:
    """How far the rollout engine's sampling distribution is from the trainer's, on the sampled tokens:
    (sum over tokens of the k3 estimate of KL(rollout || trainer) (Schulman 2020; rho - 1 - log rho with
    rho = pi_trainer / pi_rollout, unbiased under the rollout's samples), max |log-prob difference|,
    token count). Sums, so micro-batches and ranks add up. All inputs (B, C)."""
    m = mask.bool()
    d = (trainer_logp - rollout_logp).detach().double()[m]
    if d.numel() == 0:
        return 0.0, 0.0, 0.0
    return (torch.exp(d) - 1 - d).sum().item(), d.abs().max().item(), float(d.numel())
