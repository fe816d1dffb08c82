"""The torch policy update (aha/update.py): gradients independent of micro-batching, KL and mu,
skipped updates, and the packing of micro-batches."""

from __future__ import annotations

import pytest
import torch

from aha.config import load_config
from aha.model import load_policy
from aha.rollout import generate
from aha.sampling import SamplingParams
from aha.update import micro_batches, policy_update


def _rollout(seed=0, n=8, new=10):
    torch.manual_seed(seed)
    pol = load_policy("random:tiny-qwen2", device="cpu", seed=seed)
    prompts = [f"prompt number {i}" + " x" * i for i in range(n)]
    return pol, generate(pol.model, pol.tokenizer, prompts, SamplingParams(max_new_tokens=new, temperature=1.5))


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
def test_gradient_does_not_depend_on_micro_batching(agg):
    pol, ro = _rollout()
    adv = torch.linspace(-1, 1, 8)
    grads = []
    for budget in (10_000, 30):
        cfg = load_config("smoke", [f"micro_batch_tokens={budget}", f"algo.loss_agg={agg}", "max_grad_norm=0",
                                    "lr=0"])
        opt = torch.optim.SGD([p for p in pol.model.parameters() if p.requires_grad], lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
        n_mb = len(micro_batches(ro, torch.arange(8), adv, budget))
        policy_update(pol.model, ro, adv, torch.arange(8), opt, sched, cfg)
        grads.append(([p.grad.clone() for p in pol.model.parameters() if p.requires_grad], n_mb))
    (g1, n1), (g2, n2) = grads
    assert n1 == 1 and n2 > 1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_kl_is_zero_at_the_start_of_lora_training_and_mu_reuses_rollouts():
    pol, ro = _rollout(seed=1)
    cfg = load_config("smoke", ["algo.beta=0.1", "algo.mu=2", "lr=0.05"])
    opt = torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    adv = torch.linspace(-1, 1, 8)
    # LoRA's B starts at zero: the policy equals the reference (adapters disabled) -> KL 0 before
    # the first optimizer step. After two inner steps the ratio moves off 1 and the KL off 0.
    first = policy_update(pol.model, ro, adv, torch.arange(8), opt, sched, cfg)
    assert first.kl > 0 and opt.state  # measured on the last (second) inner iteration
    cfg1 = load_config("smoke", ["algo.beta=0.1", "algo.mu=1"])
    pol2, ro2 = _rollout(seed=1)
    opt2 = torch.optim.AdamW([p for p in pol2.model.parameters() if p.requires_grad], lr=0.05)
    one = policy_update(pol2.model, ro2, adv, torch.arange(8), opt2,
                        torch.optim.lr_scheduler.LambdaLR(opt2, lambda i: 1.0), cfg1)
    assert one.kl == 0.0 and one.clip_frac == 0.0


def test_all_groups_dropped_skips_the_update():
    pol, ro = _rollout()
    cfg = load_config("smoke")
    opt = torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad])
    stats = policy_update(pol.model, ro, torch.zeros(8), torch.arange(0), opt,
                          torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0), cfg)
    assert stats.update_skipped == 1.0 and not opt.state


def test_micro_batches_hold_each_prompt_once_and_keep_the_gradient():
    """2 prompts x G=4: a micro-batch carries each distinct prompt once, `prompt_index` maps rows to them,
    and the update's gradient is the same whether a pack holds both groups or the rows are split."""
    torch.manual_seed(0)
    pol = load_policy("random:tiny-qwen2", device="cpu", seed=0)
    prompts = [p for p in ("short prompt", "a somewhat longer prompt here") for _ in range(4)]
    ro = generate(pol.model, pol.tokenizer, prompts, SamplingParams(max_new_tokens=6, temperature=1.5))
    adv = torch.linspace(-1, 1, 8)
    (mb,) = micro_batches(ro, torch.arange(8), adv, 10_000)
    assert mb.prompt_ids.shape[0] == 2 and mb.prompt_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.equal(mb.completion_ids, ro.completion_ids[:, :mb.completion_ids.shape[1]])
    small = micro_batches(ro, torch.arange(8), adv, 40)
    assert len(small) > 2 and all(m.prompt_ids.shape[0] <= 2 for m in small)
    grads = []
    for budget in (10_000, 40):
        cfg = load_config("smoke", [f"micro_batch_tokens={budget}", "max_grad_norm=0", "lr=0"])
        opt = torch.optim.SGD([p for p in pol.model.parameters() if p.requires_grad], lr=0.0)
        policy_update(pol.model, ro, adv, torch.arange(8), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1),
                      cfg)
        grads.append([p.grad.clone() for p in pol.model.parameters() if p.requires_grad])
    assert any(g.abs().sum() > 0 for g in grads[0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
