"""The JAX sampler: greedy output equals the torch engine's token for token on tiny random Gemma2
and Qwen2; rows stop at EOS; temperature / top-k / top-p restrict and follow the distribution."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from aha.jax.sampler import bucket_prompts, generate, sample_logits, truncate_logits  # noqa: E402
from aha.jax.weights import load_model  # noqa: E402
from aha.model import load_policy  # noqa: E402
from aha.sampling import SamplingParams  # noqa: E402
from aha.rollout import generate as torch_generate  # noqa: E402

PROMPTS = ["Using 3 5 7, make 22.", "2+2=", "The quick brown fox jumps over the lazy dog, then"]


@pytest.mark.parametrize("arch", ["tiny-gemma2", "tiny-qwen2"])
def test_greedy_equals_torch_engine(arch):
    lm = load_model(f"random:{arch}", "float32", seed=0)
    policy = load_policy(f"random:{arch}", "full", device="cpu", dtype="float32", seed=0)
    ref = torch_generate(policy.model, policy.tokenizer, PROMPTS, SamplingParams(40, temperature=0.0), "hf")
    params = jax.tree.map(jnp.asarray, lm.params)
    out = generate(params, lm.config, lm.tokenizer, PROMPTS, jax.random.key(0), 40, temperature=0.0,
                   eos_ids=lm.eos_ids)
    for i in range(len(PROMPTS)):
        ours = out.completion_ids[i][out.completion_mask[i] == 1].tolist()
        theirs = ref.completion_ids[i][ref.completion_mask[i] == 1].tolist()
        assert ours == theirs
    assert out.texts == ref.texts


def test_rows_stop_at_their_first_eos():
    lm = load_model("random:tiny-qwen2", "float32", seed=0)
    params = jax.tree.map(jnp.asarray, lm.params)
    free = generate(params, lm.config, lm.tokenizer, PROMPTS, jax.random.key(0), 12, temperature=0.0)
    eos = int(free.completion_ids[0, 3])  # make row 0's 4th greedy token an end-of-sequence token
    out = generate(params, lm.config, lm.tokenizer, PROMPTS, jax.random.key(0), 12, temperature=0.0,
                   eos_ids=[eos])
    row = out.completion_ids[0].tolist()
    first = row.index(eos)
    assert row[:first + 1] == free.completion_ids[0, :first + 1].tolist()
    assert all(t == lm.tokenizer.pad_token_id for t in row[first + 1:])
    assert out.completion_mask[0].sum() == first + 1 and not out.truncated[0]


def test_sampling_is_seeded_and_differs_across_keys():
    lm = load_model("random:tiny-gemma2", "float32", seed=0)
    params = jax.tree.map(jnp.asarray, lm.params)
    run = lambda k: generate(params, lm.config, lm.tokenizer, PROMPTS, jax.random.key(k), 8,  # noqa: E731
                             temperature=1.0, top_p=0.95, top_k=50).completion_ids
    a, b, c = run(1), run(1), run(2)
    assert (a == b).all() and not (a == c).all()


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]] * 4000))  # (B, V)
    keys = jax.random.key(0)
    draws = np.asarray(sample_logits(keys, logits, 1.0, 1.0, 2))
    assert set(draws.tolist()) == {0, 1}  # top-2
    np.testing.assert_allclose((draws == 0).mean(), 2 / 3, atol=0.03)  # renormalised over the kept two
    draws = np.asarray(sample_logits(keys, logits, 1.0, 0.7, 0))
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.75: the two likeliest
    draws = np.asarray(sample_logits(keys, logits, 1.0, 0.8, 0))
    assert set(draws.tolist()) == {0, 1, 2}
    assert np.asarray(sample_logits(keys, logits, 0.0, 1.0, 0)).tolist() == [0] * 4000  # greedy
    hot = np.asarray(sample_logits(keys, logits, 100.0, 1.0, 0))  # a high temperature flattens
    np.testing.assert_allclose(np.bincount(hot, minlength=4) / 4000, 0.25, atol=0.03)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (0, 0.3), (5, 1.0), (40, 0.8), (3, 0.95), (60, 0.5)])
def test_truncation_keeps_the_tokens_the_torch_rule_keeps(top_k, top_p):
    """On the same logits the jnp truncation keeps exactly the tokens aha/sampling.py's `truncate_logits`
    (the torch engines' and the trainer's rule) keeps, ties on a boundary included."""
    import torch

    from aha.sampling import truncate_logits as torch_truncate

    logits = (np.random.default_rng(0).standard_normal((64, 100)) * 2).astype(np.float32)
    logits[32:] = np.round(logits[32:] * 2) / 2  # coarse values: many ties, some across the top-k / top-p edge
    ours = np.asarray(truncate_logits(jnp.asarray(logits), top_k, top_p)) > np.finfo(np.float32).min
    theirs = torch.isfinite(torch_truncate(torch.from_numpy(logits), top_k, top_p)).numpy()
    assert (ours == theirs).all()
    assert ours.sum(axis=1).min() >= 1 and not ours.all()


def test_prompt_buckets_left_pad():
    ids, mask = bucket_prompts(np.array([[5, 6]]), np.array([[1, 1]]), pad_id=9, bucket=4)
    assert ids.tolist() == [[9, 9, 5, 6]] and mask.tolist() == [[0, 0, 1, 1]]
