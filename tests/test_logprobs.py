"""Chunked log-probs equal the naive full-logits computation, values and gradients."""

import pytest
import torch

from aha.logprobs import (MicroBatch, batch_logprobs, completion_logprobs, naive_completion_logprobs, position_ids,
                          shared_prompt_logprobs)
from aha.model import load_policy


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as rollouts have
    mask[1, :2] = 0
    return ids, mask


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("arch", ["tiny-qwen2", "tiny-llama", "tiny-gemma2"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_equals_naive_with_gradients(arch, chunk):
    pol = load_policy(f"random:{arch}", finetune="full", device="cpu", seed=1)
    model = pol.model
    ids, mask = _batch(model.config.vocab_size)
    lp, ent = completion_logprobs(model, ids, mask, n_completion=5, temperature=0.7, chunk=chunk)
    (lp * torch.arange(5)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = naive_completion_logprobs(model, ids, mask, n_completion=5, temperature=0.7)
    (ref * torch.arange(5)).sum().backward()
    assert torch.allclose(lp, ref, atol=1e-5)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)
    assert (ent > 0).all()


def test_chunked_under_lora_matches_naive():
    pol = load_policy("random:tiny-qwen2", finetune="lora", device="cpu", seed=2)
    ids, mask = _batch(pol.model.config.vocab_size, seed=3)
    lp, _ = completion_logprobs(pol.model, ids, mask, n_completion=4, chunk=2)
    ref = naive_completion_logprobs(pol.model, ids, mask, n_completion=4)
    assert torch.allclose(lp, ref, atol=1e-5)


def test_entropy_matches_definition():
    pol = load_policy("random:tiny-llama", finetune="full", device="cpu")
    ids, mask = _batch(pol.model.config.vocab_size)
    with torch.no_grad():
        _, ent = completion_logprobs(pol.model, ids, mask, n_completion=3)
        logits = pol.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -4:-1]
        p = torch.softmax(logits.float(), -1)
        assert torch.allclose(ent, -(p * torch.log(p)).sum(-1), atol=1e-4)


def _shared_batch(vocab: int, seed: int = 0, P: int = 7, C: int = 6):
    """3 distinct left-padded prompts; 5 completions pointing at them (right-padded)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, vocab, (3, P), generator=g)
    pmask = torch.ones_like(prompts)
    pmask[0, :3] = 0
    pmask[2, :1] = 0
    prompt_index = torch.tensor([0, 0, 1, 2, 2])
    comps = torch.randint(0, vocab, (5, C), generator=g)
    cmask = torch.ones_like(comps)
    cmask[1, 2:] = 0  # ended early (EOS at position 1)
    cmask[3, 4:] = 0
    return prompts, pmask, prompt_index, comps, cmask


@pytest.mark.parametrize("arch", ["tiny-qwen2", "tiny-llama", "tiny-gemma2"])
def test_shared_prompt_equals_per_row_with_gradients(arch):
    """One prompt forward per group gives the per-row log-probs and the same gradients (the
    backward through the repeated keys/values sums the rows)."""
    pol = load_policy(f"random:{arch}", finetune="full", device="cpu", seed=4)
    model = pol.model
    prompts, pmask, prompt_index, comps, cmask = _shared_batch(model.config.vocab_size)
    w = torch.randn(5, 6, generator=torch.Generator().manual_seed(9)) * cmask
    lp, ent = shared_prompt_logprobs(model, prompts, pmask, prompt_index, comps, cmask, temperature=0.8, chunk=4)
    (lp * w).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ids, mask = torch.cat([prompts[prompt_index], comps], 1), torch.cat([pmask[prompt_index], cmask], 1)
    ref, ref_ent = completion_logprobs(model, ids, mask, 6, temperature=0.8, chunk=4)
    (ref * w).sum().backward()
    real = cmask.bool()
    assert torch.allclose(lp[real], ref[real], atol=1e-5)
    assert torch.allclose(ent[real], ref_ent[real], atol=1e-4)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_shared_prompt_beyond_gemma2_sliding_window():
    """Prompt + completion longer than Gemma 2's sliding window (64 in the tiny config): the cached
    keys of the sliding layers must still line up with the per-row forward."""
    pol = load_policy("random:tiny-gemma2", finetune="full", device="cpu", seed=5)
    prompts, pmask, prompt_index, comps, cmask = _shared_batch(pol.model.config.vocab_size, P=50, C=30)
    with torch.no_grad():
        lp, _ = shared_prompt_logprobs(pol.model, prompts, pmask, prompt_index, comps, cmask)
        ids, mask = torch.cat([prompts[prompt_index], comps], 1), torch.cat([pmask[prompt_index], cmask], 1)
        ref = naive_completion_logprobs(pol.model, ids, mask, 30)
    real = cmask.bool()
    assert torch.allclose(lp[real], ref[real], atol=1e-5)


def test_batch_logprobs_falls_back_to_per_row_under_gradient_checkpointing():
    """transformers drops the KV cache in checkpointed layers; the per-row path must be taken then,
    and it must give the same numbers."""
    pol = load_policy("random:tiny-qwen2", finetune="lora", device="cpu", gradient_checkpointing=True, seed=6)
    prompts, pmask, prompt_index, comps, cmask = _shared_batch(pol.model.config.vocab_size)
    mb = MicroBatch(prompts, pmask, prompt_index, comps, cmask, torch.zeros(len(comps)))
    pol.model.train()
    lp, _ = batch_logprobs(pol.model, mb)
    lp.sum().backward()  # the checkpointed path really ran with gradients
    pol.model.eval()
    with torch.no_grad():
        shared, _ = batch_logprobs(pol.model, mb)  # eval mode: no checkpointing, shared path
    real = cmask.bool()
    assert torch.allclose(lp.detach()[real], shared[real], atol=1e-5)


def test_no_grad_passes_of_a_checkpointed_model_use_the_shared_path(monkeypatch):
    """The reference / old-policy passes need no backward: they take the shared path (in eval mode,
    where transformers keeps the cache), give the per-row numbers, and leave the model training."""
    import aha.logprobs as lp_mod

    pol = load_policy("random:tiny-qwen2", finetune="lora", device="cpu", gradient_checkpointing=True, seed=6)
    prompts, pmask, prompt_index, comps, cmask = _shared_batch(pol.model.config.vocab_size)
    mb = MicroBatch(prompts, pmask, prompt_index, comps, cmask, torch.zeros(len(comps)))
    calls = []
    real_shared = lp_mod.shared_prompt_logprobs
    monkeypatch.setattr(lp_mod, "shared_prompt_logprobs", lambda *a, **k: calls.append(1) or real_shared(*a, **k))
    pol.model.train()
    with torch.no_grad():
        shared, _ = batch_logprobs(pol.model, mb)
    assert calls and pol.model.training
    ids, mask = torch.cat([prompts[prompt_index], comps], 1), torch.cat([pmask[prompt_index], cmask], 1)
    with torch.no_grad():
        ref, _ = completion_logprobs(pol.model, ids, mask, comps.shape[1])
    real = cmask.bool()
    assert torch.allclose(shared[real], ref[real], atol=1e-5)
