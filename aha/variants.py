"""The loss's variants by name: one table per choice in config.AlgoConfig, the one place that config
validation (the allowed values), aha/algo.py (which function runs) and the README's "Algorithm variants"
table (tests/test_variant_tables.py checks it lists exactly these names) read. Torch-free on purpose,
as engines.py: config validation imports it, and importing torch costs seconds.

Each value is "module:function"; `aha.algo.variant` imports the function when the loss runs. Every
function of a table takes and returns what the table's comment says, so a new variant is one function,
one row here and one test (and its README row). Shapes: N completions, G per group, C completion tokens;
`algo` is a config.AlgoConfig, or anything with its attributes.
"""

from __future__ import annotations

# algo.baseline: b in A = r - b. f(grouped rewards (groups, G), all_sum) -> b: (groups, 1) or (groups, G) for a
# baseline taken within each group (an all-equal group then has A exactly 0), () for one over the whole batch.
BASELINES: dict[str, str] = {
    "group": "aha.algo:group_mean_baseline",  # GRPO (Shao et al. 2024): the group's mean
    "leave_one_out": "aha.algo:leave_one_out_baseline",  # RLOO (Ahmadian et al. 2024): the mean of the others
    "batch": "aha.algo:batch_mean_baseline",  # REINFORCE++ (Hu 2025): the batch's mean
}

# algo.scale_rewards: A / (std + eps). f(advantages (groups, G), eps, all_sum) -> scaled advantages (groups, G).
SCALES: dict[str, str] = {
    "group": "aha.algo:scale_by_group_std",  # GRPO: the group's std
    "batch": "aha.algo:scale_by_batch_std",  # REINFORCE++: the batch's std
    "none": "aha.algo:no_scale",  # Dr. GRPO (Liu et al. 2025): std scaling over-weights easy and hard groups
}

# algo.ratio: pi / pi_old. f(logp, old_logp, mask or None, xp) -> ratio (B, C), all (B, C).
RATIOS: dict[str, str] = {
    "token": "aha.algo:token_ratio",  # PPO / GRPO: per token
    "sequence": "aha.algo:sequence_ratio",  # GSPO (Zheng et al. 2025): the completion's, length-normalised
}

# algo.surrogate: the per-token loss. f(logp (B, C), ratio (B, C), advantages (B, 1), algo, xp)
# -> (per-token loss (B, C), clipped (B, C) float: 1 where a clip changed the token's gradient).
SURROGATES: dict[str, str] = {
    "clip": "aha.algo:clip_loss",  # PPO's clipped min, DAPO's clip-higher, dual-clip PPO
    "reinforce": "aha.algo:reinforce_loss",  # CISPO (MiniMax-M1, 2025): REINFORCE times the clipped ratio
}

# algo.loss_agg: per-token weights whose weighted sum is the loss. f(mask (B, C) float, n_seqs, n_tokens,
# max_len) -> weights (B, C); n_seqs / n_tokens count the whole batch, so micro-batch sums add up.
AGGREGATIONS: dict[str, str] = {
    "sequence": "aha.algo:sequence_mean_weights",  # GRPO: mean per completion, then over completions
    "token": "aha.algo:token_mean_weights",  # DAPO (Yu et al. 2025): mean over the batch's tokens
    "constant": "aha.algo:constant_weights",  # Dr. GRPO: / (completions * max_new_tokens)
}

# algo.rollout_correction (besides "none": measure only): the weight from rho = pi_trainer / pi_rollout.
# f(rho (B, C), cap) -> weight (B, C), before the mask.
ROLLOUT_CORRECTIONS: dict[str, str] = {
    "truncate": "aha.algo:truncated_is_weight",  # TIS (Yao et al. 2025): min(rho, cap)
    "mask": "aha.algo:masked_is_weight",  # MIS (Liu et al. 2025): rho, 0 above the cap
}

# algo.rollout_correction_level: f(log rho (B, C), mask (B, C) float) -> the log rho each token uses (B, C).
ROLLOUT_CORRECTION_LEVELS: dict[str, str] = {
    "token": "aha.algo:token_log_rho",  # each token its own
    "sequence": "aha.algo:sequence_log_rho",  # the completion's length-normalised one, as GSPO's ratio
}
