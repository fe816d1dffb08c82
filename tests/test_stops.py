"""Stop strings (aha/rollout/stops.py): the completion mask ends at the token that completes the
first stop string, whatever the engine generated after it; a character-level fake tokenizer."""

from __future__ import annotations

import pytest
import torch

from aha.rollout.stops import stop_at_strings, stop_token_index
from aha.sampling import SamplingParams

EOS, PAD = 0, 0


class CharTokenizer:
    """One token per character (id = code point); 0 is EOS/padding."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i != EOS)


def _batch(texts: list[str], eos_after: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tok = CharTokenizer()
    rows = [tok.encode(t) + ([EOS] if e else []) for t, e in zip(texts, eos_after)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, torch.tensor([not e for e in eos_after])


def test_the_mask_ends_at_the_token_completing_the_stop_string():
    texts = ["<answer>7</answer>\nUser: 1 + 1", "<answer>7</answer>", "no stop here", "x</answer></answer>"]
    ids, mask, truncated = _batch(texts, [False, True, True, False])
    new_mask, new_truncated = stop_at_strings(CharTokenizer(), ids, mask, truncated, [EOS], ["</answer>"])
    kept = [CharTokenizer().decode([t for t, m in zip(r, k) if m]) for r, k in zip(ids.tolist(), new_mask.tolist())]
    assert kept == ["<answer>7</answer>", "<answer>7</answer>", "no stop here", "x</answer>"]
    assert new_truncated.tolist() == [False, False, False, False]  # a stopped row finished
    assert new_mask[1].sum() == mask[1].sum()  # stopped at its last text token: the EOS stays in the mask
    assert torch.equal(mask, _batch(texts, [False, True, True, False])[1])  # inputs are not modified


def test_no_stop_strings_change_nothing():
    ids, mask, truncated = _batch(["a</answer>b"], [False])
    assert stop_at_strings(CharTokenizer(), ids, mask, truncated, [EOS], ()) == (mask, truncated)


@pytest.mark.parametrize("text, stops, index", [
    ("ab</answer>cd", ["</answer>"], 10),
    ("ab</answer>cd", ["</answer>", "b<"], 2),  # the earliest of several
    ("</answer>", ["</answer>"], 8),
    ("abc", ["</answer>"], None),
    ("", ["x"], None),
])
def test_stop_token_index(text, stops, index):
    assert stop_token_index(lambda k: text[:k], len(text), stops) == index


def test_multi_character_tokens_stop_at_the_token_that_completes_the_string():
    pieces = ["<answer>", "12", "</", "answer", ">", "\n", "more"]
    assert stop_token_index(lambda k: "".join(pieces[:k]), len(pieces), ["</answer>"]) == 4


CANNED = "<answer>5</answer>\nUser: 9"  # what the fake engine "generates"


class FakeEngine:
    """An engine (aha/rollout/engine.py's contract) that always "generates" CANNED."""

    def generate(self, prompt_ids, prompt_mask, params, eos_ids, pad_id):
        ids = torch.tensor([CharTokenizer().encode(CANNED)] * prompt_ids.shape[0])
        return ids, torch.zeros(ids.shape)

    def sync_weights(self, model):
        pass

    def close(self):
        pass


def test_generate_applies_the_stop_strings_of_its_params(monkeypatch):
    """rollout.generate masks after the stop string and decodes only up to it, for any engine."""
    import aha.rollout as rollout

    tok = CharTokenizer()
    tok.pad_token_id, tok.eos_token_id = PAD, EOS
    one_prompt = (torch.ones(1, 2, dtype=torch.long),) * 2  # (ids, mask)
    monkeypatch.setattr(rollout, "encode_prompts", lambda tokenizer, prompts, device: one_prompt)
    model = torch.nn.Linear(1, 1)
    ro = rollout.generate(model, tok, ["p"], SamplingParams(max_new_tokens=30, stop=("</answer>",)), FakeEngine())
    assert ro.texts == ["<answer>5</answer>"] and int(ro.completion_mask.sum()) == len("<answer>5</answer>")
    assert not ro.truncated.item() and ro.logprobs is not None
    plain = rollout.generate(model, tok, ["p"], SamplingParams(max_new_tokens=30), FakeEngine())
    assert plain.texts == [CANNED] and plain.truncated.item()
