"""Chunked log-probs equal the naive full-logits computation, values and gradients."""

import pytest
import torch

from aha.logprobs import completion_logprobs, naive_completion_logprobs, position_ids
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
