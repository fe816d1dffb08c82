"""The algorithm variants (issue 16): each function against values computed by hand from its paper's
formula, micro-batching invariance of every loss form, batch statistics over ranks, and a few training
steps with exact resume for each variant. The tables that name them: tests/test_variant_tables.py."""

from __future__ import annotations

import math
from dataclasses import asdict
import threading
from pathlib import Path

import pytest
import torch

from aha.algo import (clipped_surrogate, cispo_surrogate, compute_advantages, group_advantages, loss_weights,
                      mismatch_stats, overlong_penalty, policy_loss, rollout_is_weight, sequence_ratio, token_ratio)
from aha.config import AlgoConfig

GRPO = AlgoConfig()  # the defaults: token ratio, clip at 0.2

# ---------------------------------------------------------------------------- advantages


def test_leave_one_out_hand_computed():
    # RLOO: b_i = (sum - r_i) / (G - 1) -> [6/3, 5/3, 4/3, 3/3]
    adv, zero = compute_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]), 4, baseline="leave_one_out", scale="none")
    assert torch.allclose(adv, torch.tensor([0 - 2.0, 1 - 5 / 3, 2 - 4 / 3, 3 - 1.0]))
    assert zero.tolist() == [False]
    # = G / (G - 1) * (r - mean); with the group scale it reduces to GRPO's advantage
    scaled, _ = compute_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]), 4, "leave_one_out", "group", eps=0.0)
    grpo, _ = group_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]), 4, eps=0.0)
    assert torch.allclose(scaled, grpo)
    equal, _ = compute_advantages(torch.tensor([0.5, 0.5]), 2, "leave_one_out", "none")
    assert equal.tolist() == [0.0, 0.0]


def test_batch_baseline_and_batch_scale_hand_computed():
    # REINFORCE++: b = mean of the batch = 1; an all-equal group keeps r - b (no groups in REINFORCE++)
    r = torch.tensor([0.0, 0.0, 1.0, 3.0])
    adv, zero = compute_advantages(r, 2, baseline="batch", scale="none")
    assert adv.tolist() == [-1.0, -1.0, 0.0, 2.0] and zero.tolist() == [True, False]
    adv, _ = compute_advantages(r, 2, baseline="batch", scale="batch", eps=0.0)
    std = math.sqrt((1 + 1 + 0 + 4) / 4)
    assert torch.allclose(adv, torch.tensor([-1.0, -1.0, 0.0, 2.0]) / std)
    # REINFORCE++-baseline: group means [1, 1, 2] -> A = [-1, 1, 0, 0, -2, 2], / std over the batch of A
    r = torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0, 4.0])
    adv, _ = compute_advantages(r, 2, baseline="group", scale="batch", eps=0.0)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, -2.0, 2.0]) / math.sqrt(10 / 6))
    with pytest.raises(ValueError):
        compute_advantages(r, 2, baseline="median")


def _two_rank_all_sum():
    """An all_sum for two threads standing in for two ranks (a real collective: both must call)."""
    barrier, slots = threading.Barrier(2), [None, None]

    def make(rank):
        def all_sum(values):
            slots[rank] = list(values)
            barrier.wait()
            out = [a + b for a, b in zip(*slots)]
            barrier.wait()
            return out
        return all_sum
    return make


@pytest.mark.parametrize("baseline, scale", [("batch", "batch"), ("group", "batch"), ("batch", "none")])
def test_batch_statistics_span_ranks(baseline, scale):
    """Each rank holds half the groups; with all_sum the advantages equal the 1-process ones."""
    r = torch.tensor([0.0, 1.0, 0.5, 0.5, 3.0, 1.0, 2.0, 2.5])
    whole, _ = compute_advantages(r, 2, baseline, scale)
    make, out = _two_rank_all_sum(), [None, None]

    def run(rank):
        out[rank] = compute_advantages(r[rank * 4:(rank + 1) * 4], 2, baseline, scale, all_sum=make(rank))[0]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert torch.allclose(torch.cat(out), whole, atol=1e-6)


def test_overlong_penalty_hand_computed():
    # DAPO eq. 13 with L_max = 10, L_cache = 4: 0 up to 6 tokens, then (6 - |y|) / 4, -1 at 10
    lengths = torch.tensor([5, 6, 8, 10])
    assert overlong_penalty(lengths, 10, 4).tolist() == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(lengths, 10, 4, factor=0.5).tolist() == [0.0, 0.0, -0.25, -0.5]
    assert overlong_penalty(lengths, 10, 0).tolist() == [0.0] * 4


# ---------------------------------------------------------------------------- ratios and surrogates


def test_sequence_ratio_is_the_length_normalised_geometric_mean_with_token_gradients():
    logp = torch.tensor([[0.1, 0.3, 5.0], [-0.05, 0.05, 0.0]], requires_grad=True)
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    s = sequence_ratio(logp, old, mask)
    assert torch.allclose(s[0, :2], torch.exp(torch.tensor(0.2)).expand(2))  # the padded 5.0 is ignored
    assert torch.allclose(s[1], torch.ones(3))
    (s * mask).sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[math.exp(0.2)] * 2 + [0.0], [1.0] * 3]))


def test_gspo_objective_hand_computed():
    """GSPO eq. 5: -(1/G) sum_i min(s_i A_i, clip(s_i) A_i), and its gradient (eq. 11 for an unclipped
    sequence: -s_i A_i / |y_i| grad log pi per token, / G)."""
    logp = torch.tensor([[0.1, 0.3, 0.0], [-0.05, 0.05, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    w = loss_weights(mask, "sequence", 2, 5, 3)
    loss, st = policy_loss(logp, torch.zeros(2, 3), adv, w, AlgoConfig(ratio="sequence"), mask=mask)
    # s_1 = e^0.2 = 1.221 -> clipped to 1.2 (A > 0); s_2 = 1 -> -1
    assert torch.isclose(loss, torch.tensor(-(1.2 + -1.0) / 2))
    loss.backward()
    assert torch.allclose(logp.grad[0], torch.zeros(3))  # the clipped sequence gets no gradient
    assert torch.allclose(logp.grad[1], torch.full((3,), 1 / 3 / 2))
    assert torch.isclose(st["clip_frac"], torch.tensor(0.5))
    with pytest.raises(ValueError):
        policy_loss(logp, logp, adv, w, AlgoConfig(ratio="sequence"))  # no mask


def test_dual_clip_hand_computed():
    w = torch.ones(1, 1)
    big = torch.tensor([[1.5]], requires_grad=True)  # ratio e^1.5 = 4.48
    # A < 0: PPO's min keeps -4.48 (loss 4.48); the dual clip bounds it at c A = -3 (loss 3), no gradient
    loss, st = policy_loss(big, torch.zeros(1, 1), torch.tensor([-1.0]), w, GRPO)
    assert torch.isclose(loss, torch.exp(torch.tensor(1.5))) and st["clip_frac"] == 0
    loss, st = policy_loss(big, torch.zeros(1, 1), torch.tensor([-1.0]), w, AlgoConfig(dual_clip=3.0))
    assert torch.isclose(loss, torch.tensor(3.0)) and st["clip_frac"] == 1
    loss.backward()
    assert big.grad.item() == 0.0
    # ratio 2 < c: untouched; A > 0: never dual-clipped
    per_token, clipped = clipped_surrogate(torch.tensor([[2.0]]), torch.tensor([[-1.0]]), 0.2, 0.2, 3.0)
    assert per_token.item() == 2.0 and clipped.item() == 0.0
    per_token, _ = clipped_surrogate(torch.tensor([[4.48]]), torch.tensor([[1.0]]), 0.2, 0.2, 3.0)
    assert torch.isclose(per_token, torch.tensor([[-1.2]]))


def test_cispo_hand_computed_and_clipped_tokens_keep_their_gradient():
    lp = torch.tensor([[0.5]], requires_grad=True)  # ratio e^0.5 = 1.65 against old = 0
    r = token_ratio(lp, torch.zeros(1, 1))
    loss, clipped = cispo_surrogate(lp, r, torch.tensor([[1.0]]), eps_low=1.0, eps_high=0.28)
    assert torch.isclose(loss, torch.tensor([[-1.28 * 0.5]])) and clipped.item() == 1.0
    loss.sum().backward()
    assert torch.isclose(lp.grad, torch.tensor([[-1.28]]))  # PPO's clip would give 0 here
    # no lower bound with eps_low = 1: ratio e^-1 is used as is
    lo = torch.tensor([[-1.0]])
    loss, clipped = cispo_surrogate(lo, token_ratio(lo, torch.zeros(1, 1)), torch.tensor([[-1.0]]), 1.0, 0.28)
    assert torch.isclose(loss, torch.tensor([[math.exp(-1) * -1.0]])) and clipped.item() == 0.0
    # at ratio 1 (mu = 1) its gradient is PPO's: -A per token
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([2.0]), torch.ones(1, 2), AlgoConfig(surrogate="reinforce"))
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-2.0, -2.0]]))


def test_entropy_bonus_and_is_weight_in_the_loss():
    lp = torch.tensor([[-1.0, -2.0]])
    ent = torch.tensor([[0.5, 1.5]], requires_grad=True)
    w = torch.tensor([[0.5, 0.5]])
    base, _ = policy_loss(lp, lp, torch.tensor([1.0]), w, GRPO)
    loss, _ = policy_loss(lp, lp, torch.tensor([1.0]), w, AlgoConfig(entropy_coef=0.1), entropy=ent)
    assert torch.isclose(loss - base, torch.tensor(-0.1 * (0.5 + 1.5) / 2))
    loss.backward()
    assert torch.allclose(ent.grad, torch.tensor([[-0.05, -0.05]]))
    weighted, _ = policy_loss(lp, lp, torch.tensor([1.0]), w, GRPO, is_weight=torch.tensor([[2.0, 0.0]]))
    assert torch.isclose(weighted, torch.tensor(-1.0 * 2.0 * 0.5))  # token 2 masked by MIS
    with pytest.raises(ValueError):
        policy_loss(lp, lp, torch.tensor([1.0]), w, AlgoConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="unknown surrogate 'ppo2': not one of clip, reinforce"):
        policy_loss(lp, lp, torch.tensor([1.0]), w, AlgoConfig(surrogate="ppo2"))


# ---------------------------------------------------------------------------- mismatch


def test_rollout_is_weights_hand_computed():
    trainer = torch.tensor([[-1.0, -2.0, 0.0]])
    rollout = torch.tensor([[-1.5, -1.0, 3.0]])
    mask = torch.tensor([[1, 1, 0]])
    e5, em1 = math.exp(0.5), math.exp(-1.0)  # rho = e^0.5, e^-1; the padded token is 0
    tis = rollout_is_weight(trainer, rollout, mask, cap=1.5, mode="truncate")
    assert torch.allclose(tis, torch.tensor([[1.5, em1, 0.0]]))
    mis = rollout_is_weight(trainer, rollout, mask, cap=1.5, mode="mask")
    assert torch.allclose(mis, torch.tensor([[0.0, em1, 0.0]]))
    assert torch.allclose(rollout_is_weight(trainer, rollout, mask, cap=2.0, mode="mask"),
                          torch.tensor([[e5, em1, 0.0]]))
    seq = rollout_is_weight(trainer, rollout, mask, cap=1.5, mode="truncate", level="sequence")
    assert torch.allclose(seq, torch.tensor([[math.exp(-0.25)] * 2 + [0.0]]))  # mean log rho = -0.25
    with pytest.raises(ValueError):
        rollout_is_weight(trainer, rollout, mask, 2.0, mode="clip")


def test_mismatch_stats_hand_computed():
    trainer = torch.tensor([[0.1, -0.2, 9.0]])
    rollout = torch.zeros(1, 3)
    kl, mx, n = mismatch_stats(trainer, rollout, torch.tensor([[1, 1, 0]]))
    assert kl == pytest.approx((math.exp(0.1) - 1 - 0.1) + (math.exp(-0.2) - 1 + 0.2))  # k3 per token
    assert mx == pytest.approx(0.2) and n == 2
    assert mismatch_stats(trainer, trainer, torch.ones(1, 3)) == (0.0, 0.0, 3.0)


# ---------------------------------------------------------------------------- micro-batching


LOSS_FORMS = [
    {},
    {"ratio": "sequence"},
    {"surrogate": "reinforce"},
    {"dual_clip": 3.0},
    {"ratio": "sequence", "surrogate": "reinforce", "entropy_coef": 0.01},
    {"dual_clip": 2.0, "is_weight": True, "entropy_coef": 0.05},
]


@pytest.mark.parametrize("form", LOSS_FORMS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()) or "grpo")
@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
def test_every_loss_form_sums_over_micro_batches_to_the_full_batch(form, agg):
    torch.manual_seed(1)
    lp = (torch.randn(6, 5) * 0.5).requires_grad_()
    old = lp.detach() + torch.randn(6, 5) * 0.8  # ratios far from 1: clips and dual clips happen
    ent = torch.rand(6, 5).requires_grad_()
    adv = torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    isw = torch.rand(6, 5) * 2
    n_tok = int(mask.sum())
    a = AlgoConfig(epsilon_low=0.2, epsilon_high=0.28, **{k: v for k, v in form.items() if k != "is_weight"})

    def loss_of(s):
        return policy_loss(lp[s], old[s], adv[s], loss_weights(mask[s], agg, 6, n_tok, 5), a, mask=mask[s],
                           entropy=ent[s], is_weight=isw[s] if form.get("is_weight") else None)[0]

    full = loss_of(slice(0, 6))
    g_full = torch.autograd.grad(full, [lp, ent], allow_unused=True)
    parts = sum(loss_of(s) for s in (slice(0, 2), slice(2, 3), slice(3, 6)))
    g_parts = torch.autograd.grad(parts, [lp, ent], allow_unused=True)
    assert torch.isclose(full, parts)
    for a, b in zip(g_full, g_parts):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-7)


# ---------------------------------------------------------------------------- in the trainer

VARIANTS = {
    "dr_grpo": ["algo.scale_rewards=false", "algo.loss_agg=constant"],
    "rloo": ["algo.baseline=leave_one_out", "algo.scale_rewards=none"],
    "reinforce_pp": ["algo.baseline=batch", "algo.scale_rewards=batch"],
    "gspo": ["algo.ratio=sequence", "algo.epsilon_low=3e-4", "algo.epsilon_high=4e-4", "algo.mu=2"],
    "cispo": ["algo.surrogate=reinforce", "algo.epsilon_low=1", "algo.epsilon_high=0.28", "algo.loss_agg=token",
              "algo.mu=2"],
    # (+ algo.mask_truncated=true, tested apart: the random model's completions nearly all hit the limit)
    "dapo": ["algo.loss_agg=token", "algo.epsilon_high=0.28", "algo.drop_zero_std=true", "algo.max_refill_rounds=2",
             "algo.overlong_buffer=4"],
    "dual_clip_entropy": ["algo.dual_clip=3", "algo.entropy_coef=0.01", "algo.mu=2", "algo.beta=0.05"],
    "tis_native_top_p": ["algo.rollout_correction=truncate", "rollout.engine=native", "rollout.top_p=0.9",
                         "rollout.top_k=20"],
    "mis_sequence": ["algo.rollout_correction=mask", "algo.rollout_correction_level=sequence", "algo.mu=2"],
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_three_steps_with_finite_metrics_and_resumes_exactly(name, tmp_path: Path, toy_task):
    """`aha train -c smoke` with the variant's keys (toy task, so groups carry a signal): 3 steps, every
    metric finite, and a run stopped after step 2 and resumed ends where the straight run does."""
    from safetensors.torch import load_file

    from aha.config import load_config
    from aha.log import read_jsonl
    from aha.train import train

    def cfg(out: Path, steps: int):
        return load_config("smoke", [f"output_dir={out}", "task=toy", "deterministic=true", "tensorboard=false",
                                     "rollout.max_new_tokens=12", "lr=0.01", "probe_every=0", "save_every=2",
                                     f"max_steps={steps}", *VARIANTS[name]])

    straight = train(cfg(tmp_path / "a", 3))
    train(cfg(tmp_path / "b", 2))
    split = train(cfg(tmp_path / "b", 3), resume="latest")
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert [r["step"] for r in a] == [1, 2, 3] == [r["step"] for r in b]
    timing = {"step_time", "gen_time", "score_time", "update_time", "tokens_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in b]
    for row in a:
        for k, v in row.items():
            if k != "kl" or "algo.beta=0.05" in VARIANTS[name]:
                assert v is not None and math.isfinite(v), (k, v)
        assert row["mismatch/max_abs_logp_diff"] < 1e-4  # float32 CPU: the engine samples the trainer's policy
    assert any(r["grad_norm"] > 0 for r in a)
    wa = load_file(straight / "checkpoints/step-3/adapter_model.safetensors")
    wb = load_file(split / "checkpoints/step-3/adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_overlong_filtering_masks_truncated_completions_out_of_the_loss(tmp_path: Path, toy_task, monkeypatch):
    import aha.train
    from aha.config import load_config

    seen = []
    real = aha.train.policy_update

    def spy(model, ro, adv, rows, *args, **kw):
        seen.append((ro.truncated.clone(), rows.clone()))
        return real(model, ro, adv, rows, *args, **kw)

    monkeypatch.setattr(aha.train, "policy_update", spy)
    aha.train.train(load_config("smoke", [f"output_dir={tmp_path}", "task=toy", "tensorboard=false", "max_steps=3",
                                          "save_every=0", "probe_every=0", "rollout.max_new_tokens=24",
                                          "algo.mask_truncated=true", "algo.overlong_buffer=8"]))
    for truncated, rows in seen:
        assert rows.tolist() == (~truncated).nonzero().squeeze(1).tolist()
    assert any(t.any() and not t.all() for t, _ in seen)  # both kinds occurred


UPDATE_VARIANTS = {
    "gspo": ["algo.ratio=sequence", "algo.epsilon_low=0.01", "algo.epsilon_high=0.02"],
    "cispo_tis": ["algo.surrogate=reinforce", "algo.epsilon_low=1", "algo.epsilon_high=0.05", "algo.loss_agg=token",
                  "algo.rollout_correction=truncate", "algo.rollout_correction_cap=1.1"],
    "dual_clip_entropy_mis": ["algo.dual_clip=1.05", "algo.entropy_coef=0.1", "algo.loss_agg=constant",
                              "algo.rollout_correction=mask", "algo.rollout_correction_level=sequence",
                              "algo.rollout_correction_cap=1.1"],
}


@pytest.mark.parametrize("name", UPDATE_VARIANTS)
def test_update_does_not_depend_on_micro_batching(name):
    """policy_update with each loss form: one micro-batch or many give the same weights after mu = 2 SGD
    steps (the second step's ratios are off 1, so clips and weights are exercised)."""
    from aha.config import load_config
    from aha.model import load_policy
    from aha.rollout import generate
    from aha.sampling import SamplingParams
    from aha.update import Mismatch, micro_batches, policy_update

    results = []
    for budget in (10_000, 30):
        torch.manual_seed(0)
        pol = load_policy("random:tiny-qwen2", device="cpu", seed=0)
        prompts = [f"prompt number {i}" + " x" * i for i in range(8)]
        ro = generate(pol.model, pol.tokenizer, prompts, SamplingParams(max_new_tokens=10, temperature=1.5))
        ro.logprobs = ro.logprobs + torch.randn(ro.logprobs.shape, generator=torch.Generator().manual_seed(1)) * 0.1
        cfg = load_config("smoke", [f"micro_batch_tokens={budget}", "max_grad_norm=0", "algo.mu=2",
                                    *UPDATE_VARIANTS[name]])
        params = [p for p in pol.model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=2.0)
        adv = torch.linspace(-1, 1, 8)
        n_mb = len(micro_batches(ro, torch.arange(8), adv, budget))
        mismatch = Mismatch()
        stats = policy_update(pol.model, ro, adv, torch.arange(8), opt,
                              torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0), cfg, mismatch=mismatch)
        stats = {**asdict(stats), **mismatch.metrics()}
        results.append(([p.detach().clone() for p in params], stats, n_mb))
    (w1, s1, n1), (w2, s2, n2) = results
    assert n1 == 1 and n2 > 1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w1, w2))
    for k in ("loss", "clip_frac", "entropy", "mismatch/kl", "mismatch/max_abs_logp_diff"):
        assert s1[k] == pytest.approx(s2[k], rel=1e-5, abs=1e-7), k
    assert s1["clip_frac"] > 0 and s1["mismatch/kl"] > 0
