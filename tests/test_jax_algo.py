"""The JAX port of aha/algo.py equals the torch functions, values and gradients, on the same tensors;
plus the invariants of tests/test_algo.py, rerun on the port."""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = jax.numpy

from aha import algo as ta  # noqa: E402
from aha.config import AlgoConfig  # noqa: E402
from aha.jax import algo as ja  # noqa: E402

GRPO = AlgoConfig()  # the defaults, what backend=jax runs


def _batch(seed: int, B: int = 6, C: int = 7):
    rng = np.random.default_rng(seed)
    logp = (rng.normal(size=(B, C)) * 0.3 - 1.5).astype(np.float32)
    old = logp + (rng.normal(size=(B, C)) * 0.2).astype(np.float32)  # ratios around 1, some clipped
    ref = logp + (rng.normal(size=(B, C)) * 0.2).astype(np.float32)
    adv = rng.normal(size=(B,)).astype(np.float32)
    mask = (np.arange(C)[None] < rng.integers(1, C + 1, size=(B, 1))).astype(np.float32)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_equal_torch(scale):
    rewards = np.array([0.0, 1.0, 0.1, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 1.0, 1.5], np.float32)
    t_adv, t_zero = ta.group_advantages(torch.tensor(rewards), 4, scale=scale)
    j_adv, j_zero = ja.group_advantages(jnp.asarray(rewards), 4, scale=scale)
    np.testing.assert_allclose(np.asarray(j_adv), t_adv.numpy(), rtol=1e-6, atol=1e-6)
    assert np.asarray(j_zero).tolist() == t_zero.tolist() == [False, True, False]
    with pytest.raises(ValueError):
        ja.group_advantages(jnp.zeros(5), 2)


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_policy_loss_and_gradients_equal_torch(agg, beta, eps_high):
    logp, old, ref, adv, mask = _batch(seed=1)
    n_seqs, n_tokens, max_len = mask.shape[0], int(mask.sum()), mask.shape[1]

    t_logp = torch.tensor(logp, requires_grad=True)
    t_w = ta.loss_weights(torch.tensor(mask), agg, n_seqs, n_tokens, max_len)
    a = AlgoConfig(epsilon_low=0.2, epsilon_high=eps_high, beta=beta)
    t_loss, t_st = ta.policy_loss(t_logp, torch.tensor(old), torch.tensor(adv), t_w, a, ref_logp=torch.tensor(ref))
    t_loss.backward()

    def f(lp):
        w = ja.loss_weights(jnp.asarray(mask), agg, n_seqs, n_tokens, max_len)
        loss, st = ja.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), w, a, ref_logp=jnp.asarray(ref))
        return loss, st

    (j_loss, j_st), j_grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
    np.testing.assert_allclose(float(j_loss), t_loss.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(j_grad), t_logp.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert t_st.keys() == j_st.keys()
    for k in t_st:
        np.testing.assert_allclose(float(j_st[k]), t_st[k].item(), rtol=1e-5, atol=1e-7)
    assert 0 < float(j_st["clip_frac"]) < 1  # the batch exercises both branches of the clip


def test_mu_one_ratio_and_kl_invariants():
    logp, _, _, adv, mask = _batch(seed=2)
    lp = jnp.asarray(logp)
    assert float(jnp.abs(ja.kl_k3(lp, lp)).max()) == 0.0
    assert bool((ja.kl_k3(lp, lp + 0.3) > 0).all())
    w = ja.loss_weights(jnp.asarray(mask), "sequence", 6, int(mask.sum()), 7)
    # old = stop_gradient(logp): the surrogate is -mean(adv) and its gradient the policy gradient.
    grad = jax.grad(lambda x: ja.policy_loss(x, jax.lax.stop_gradient(x), jnp.asarray(adv), w, GRPO)[0])(lp)
    np.testing.assert_allclose(np.asarray(grad), -adv[:, None] * np.asarray(w), rtol=1e-6)
    assert float(jnp.abs(grad * (1 - mask)).max()) == 0.0  # masked tokens get no gradient
    with pytest.raises(ValueError):
        ja.policy_loss(lp, lp, jnp.asarray(adv), w, AlgoConfig(beta=0.1))
    with pytest.raises(ValueError):
        ja.loss_weights(jnp.asarray(mask), "median", 1, 1, 1)


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
def test_micro_batches_sum_to_the_full_batch_loss(agg):
    logp, old, _, adv, mask = _batch(seed=3)
    n_seqs, n_tokens = mask.shape[0], int(mask.sum())
    full = ja.policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                          ja.loss_weights(jnp.asarray(mask), agg, n_seqs, n_tokens, 7), GRPO)[0]
    parts = sum(ja.policy_loss(jnp.asarray(logp[s]), jnp.asarray(old[s]), jnp.asarray(adv[s]),
                               ja.loss_weights(jnp.asarray(mask[s]), agg, n_seqs, n_tokens, 7), GRPO)[0]
                for s in (slice(0, 2), slice(2, 6)))
    np.testing.assert_allclose(float(full), float(parts), rtol=1e-6)
