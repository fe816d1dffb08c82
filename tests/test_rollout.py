import torch

from aha.model import load_policy
from aha.rollout import SamplingParams, completion_mask, encode_prompts, generate, render_prompt


def test_completion_mask_ends_at_first_eos():
    ids = torch.tensor([[5, 6, 2, 9, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    mask, truncated = completion_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_encode_left_pads_and_renders_chat_prefill():
    tok = load_policy("random:tiny-qwen2", device="cpu").tokenizer
    ids, mask = encode_prompts(tok, ["ab", "abcd"])
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]] and ids[0, 0] == tok.pad_token_id
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\n"}]
    text = render_prompt(tok, msgs)
    assert text.endswith("<|im_start|>assistant\n<think>\n")  # pre-fill left open for the model


def test_generate_stops_at_eos_and_masks_after_it():
    torch.manual_seed(0)
    pol = load_policy("random:tiny-qwen2", device="cpu")
    ro = generate(pol.model, pol.tokenizer, ["x"] * 16, SamplingParams(max_new_tokens=40, temperature=2.0))
    eos = pol.tokenizer.eos_token_id
    for ids, m, text in zip(ro.completion_ids.tolist(), ro.completion_mask.tolist(), ro.texts):
        n = sum(m)
        assert all(m[:n]) and not any(m[n:])
        assert eos not in ids[:n - 1]  # nothing is kept past the first EOS
    # with a 259-token vocabulary and T=2 some of the 16 completions end early
    assert (~ro.truncated).any() and ro.truncated.tolist() == [eos not in ids for ids in ro.completion_ids.tolist()]


def test_greedy_is_deterministic_and_sampling_reproducible_by_seed():
    pol = load_policy("random:tiny-llama", device="cpu")
    p = SamplingParams(max_new_tokens=12, temperature=0.0)
    a = generate(pol.model, pol.tokenizer, ["hello", "a b c"], p).completion_ids
    b = generate(pol.model, pol.tokenizer, ["hello", "a b c"], p).completion_ids
    assert torch.equal(a, b)
    s = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9)
    torch.manual_seed(5)
    x = generate(pol.model, pol.tokenizer, ["hello"] * 4, s).completion_ids
    torch.manual_seed(5)
    y = generate(pol.model, pol.tokenizer, ["hello"] * 4, s).completion_ids
    assert torch.equal(x, y)


def test_ignore_eos_generates_exactly_max_new_tokens():
    pol = load_policy("random:tiny-qwen2", device="cpu")
    ro = generate(pol.model, pol.tokenizer, ["x"] * 4, SamplingParams(max_new_tokens=17, temperature=2.0,
                                                                      ignore_eos=True))
    assert ro.completion_ids.shape == (4, 17) and ro.completion_mask.all()


def test_generate_restores_training_mode():
    pol = load_policy("random:tiny-qwen2", device="cpu")
    pol.model.train()
    generate(pol.model, pol.tokenizer, ["x"], SamplingParams(max_new_tokens=3))
    assert pol.model.training
