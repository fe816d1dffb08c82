"""The algorithm's invariants and hand-computed values (docs/design.md, "House style")."""

import math

import pytest
import torch

from aha.algo import group_advantages, kl_k3, loss_weights, policy_loss
from aha.config import AlgoConfig

GRPO = AlgoConfig()  # the defaults: token ratio, clip at 0.2, no KL


def test_equal_rewards_give_zero_advantage_and_are_counted():
    adv, zero = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 2.0]), group_size=3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert zero.tolist() == [True, False]


def test_advantages_hand_computed():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0])
    adv, _ = group_advantages(r, group_size=4, scale=False)  # Dr. GRPO: centred only
    assert adv.tolist() == [-1.5, -0.5, 0.5, 1.5]
    adv, _ = group_advantages(r, group_size=4, scale=True, eps=0.0)
    std = math.sqrt(1.25)
    assert torch.allclose(adv, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std)


def test_groups_are_independent():
    a, _ = group_advantages(torch.tensor([0.0, 1.0, 10.0, 20.0]), group_size=2)
    assert torch.allclose(a, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-3)


def test_bad_group_size():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), group_size=2)


def test_kl_zero_when_policy_equals_reference_and_positive_otherwise():
    lp = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    assert torch.equal(kl_k3(lp, lp), torch.zeros_like(lp))
    assert (kl_k3(lp, lp - 0.3) > 0).all() and (kl_k3(lp, lp + 0.3) > 0).all()
    d = torch.tensor(0.3)
    assert torch.isclose(kl_k3(torch.tensor(0.0), d), torch.exp(d) - d - 1)


def test_masked_tokens_contribute_nothing():
    torch.manual_seed(0)
    lp = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    w = loss_weights(mask, "sequence", n_seqs=2, n_tokens=6, max_len=4)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), w, GRPO)
    loss.backward()
    assert lp.grad[0, 2:].abs().sum() == 0
    # Changing a masked token's log-prob changes nothing.
    lp2 = lp.detach().clone()
    lp2[0, 3] = 42.0
    loss2, _ = policy_loss(lp2, lp2, torch.tensor([1.0, -1.0]), w, GRPO)
    assert torch.isclose(loss.detach(), loss2)


def test_aggregations_hand_computed():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    per_tok = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 8.0]])
    seq = (per_tok * loss_weights(mask, "sequence", 2, 5, 3)).sum()
    assert torch.isclose(seq, torch.tensor(((1 + 3) / 2 + (2 + 2 + 8) / 3) / 2))  # GRPO
    tok = (per_tok * loss_weights(mask, "token", 2, 5, 3)).sum()
    assert torch.isclose(tok, torch.tensor((1 + 3 + 2 + 2 + 8) / 5))  # DAPO
    const = (per_tok * loss_weights(mask, "constant", 2, 5, 3)).sum()
    assert torch.isclose(const, torch.tensor((1 + 3 + 2 + 2 + 8) / (2 * 3)))  # Dr. GRPO
    with pytest.raises(ValueError):
        loss_weights(mask, "mean", 2, 5, 3)


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
def test_micro_batches_sum_to_the_full_batch_loss(agg):
    torch.manual_seed(1)
    lp, old = torch.randn(6, 5), torch.randn(6, 5)
    adv = torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    n_tok = int(mask.sum())
    full, _ = policy_loss(lp, old, adv, loss_weights(mask, agg, 6, n_tok, 5), GRPO)
    parts = sum(policy_loss(lp[s], old[s], adv[s], loss_weights(mask[s], agg, 6, n_tok, 5), GRPO)[0]
                for s in (slice(0, 2), slice(2, 3), slice(3, 6)))
    assert torch.isclose(full, parts)


def test_surrogate_at_ratio_one_is_minus_advantage_and_gradient_is_policy_gradient():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    w = loss_weights(torch.ones(1, 2), "token", 1, 2, 2)
    loss, st = policy_loss(lp, lp.detach(), torch.tensor([2.0]), w, GRPO)
    assert torch.isclose(loss, torch.tensor(-2.0))
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, -1.0]]))  # -A * w
    assert st["clip_frac"] == 0


def test_clip_hand_computed_with_clip_higher():
    # ratio = e^0.5 ~ 1.65 with A > 0: clipped at 1 + eps_high; with A < 0 the unclipped term is min.
    lp, old = torch.tensor([[0.5]]), torch.tensor([[0.0]])
    w = torch.ones(1, 1)
    dapo = AlgoConfig(epsilon_low=0.2, epsilon_high=0.28)
    loss, st = policy_loss(lp, old, torch.tensor([1.0]), w, dapo)
    assert torch.isclose(loss, torch.tensor(-1.28)) and st["clip_frac"] == 1
    loss, st = policy_loss(lp, old, torch.tensor([-1.0]), w, dapo)
    assert torch.isclose(loss, torch.exp(torch.tensor(0.5))) and st["clip_frac"] == 0
    # ratio = e^-0.5 ~ 0.61 with A < 0: clipped at 1 - eps_low.
    loss, st = policy_loss(-lp, old, torch.tensor([-1.0]), w, dapo)
    assert torch.isclose(loss, torch.tensor(0.8)) and st["clip_frac"] == 1


def test_clipped_tokens_get_no_gradient():
    lp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    loss, _ = policy_loss(lp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), GRPO)
    loss.backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] != 0


def test_kl_term_is_added_with_beta_and_needs_ref():
    lp, ref = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.5, -0.5]])
    w = loss_weights(torch.ones(1, 2), "token", 1, 2, 2)
    base, _ = policy_loss(lp, lp, torch.tensor([0.0]), w, GRPO)
    loss, st = policy_loss(lp, lp, torch.tensor([0.0]), w, AlgoConfig(beta=0.1), ref_logp=ref)
    assert torch.isclose(loss - base, 0.1 * kl_k3(lp, ref).mean())
    assert torch.isclose(st["kl"], kl_k3(lp, ref).mean())
    with pytest.raises(ValueError):
        policy_loss(lp, lp, torch.tensor([0.0]), w, AlgoConfig(beta=0.1))
