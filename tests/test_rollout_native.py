"""The native rollout engine against HF `generate`, its sampler against softmax(logits / T), the
policy left untouched, the vLLM engine's missing-dependency error and weight export, the benchmark."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from aha import sampling
from aha.errors import ModelError
from aha.model import load_base
from aha.rollout import decoder, encode_prompts, generate, hf, native
from aha.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May? Weng earns 12 dollars an hour for "
        "babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn? ")
WORDS = (TEXT * 3).split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The matmuls here are small: a second thread buys little, and on a busy machine every parallel
    region can wait a scheduler slice for it (10x slower). HF and native run under the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prompts(n: int, step: int = 2) -> list[str]:
    """n distinct prompts of n different lengths."""
    return [" ".join(WORDS[i % 5:i % 5 + 2 + step * i]) for i in range(n)]


def tiny(arch: str, seed: int = 0):
    if arch in ("qwen3", "mistral"):  # not in aha.model.ARCHS: same tiny shape, built here
        from transformers import AutoConfig, AutoModelForCausalLM

        from aha.model import byte_tokenizer

        tok = byte_tokenizer()
        extra = {"sliding_window": 24} if arch == "mistral" else {"head_dim": 16}
        cfg = AutoConfig.for_model(arch, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=259,
                                   max_position_embeddings=2048, tie_word_embeddings=True,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg).eval(), tok
    model, tok = load_base(f"random:tiny-{arch}", torch.float32, seed=seed)
    return model.eval(), tok


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would make the test vacuous
                p.normal_(0, 0.05)
    return model.eval()


def run_all(model, tok, texts, params, eos):
    """Completions (B, C) from HF generate and from each native path."""
    ids, mask = encode_prompts(tok, texts)
    with torch.no_grad():
        ref = hf.generate_ids(model, ids, mask, params, eos, tok.pad_token_id)[0]
        decoder.clear_cache()
        outs = {
            "native": native.generate_ids(model, ids, mask, params, eos, tok.pad_token_id)[0],
            "modules": native.decode(decoder.Decoder(model, fused=False), ids, mask, params, eos,
                                     tok.pad_token_id)[0],
            "static": native.decode_static(decoder.Decoder(model, fused=False), ids, mask, params, eos,
                                           tok.pad_token_id, compile_step=False)[0],
        }
    return ref, outs


# ---------------------------------------------------------------------------- greedy == HF generate

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "qwen3", "mistral"])
def test_greedy_matches_hf_generate_tiny(arch):
    model, tok = tiny(arch)
    texts = prompts(6, step=5)  # 10 to 35 bytes = tokens: past Mistral's 24-token window
    params = SamplingParams(max_new_tokens=24, temperature=0)
    ref, outs = run_all(model, tok, texts, params, [tok.eos_token_id])
    for name, out in outs.items():
        assert torch.equal(out, ref), name
    # A frequent token as EOS: rows stop at different steps, finished rows are dropped mid-way.
    eos = [int(ref[0, 3]), int(ref[3, 5])]
    ref, outs = run_all(model, tok, texts, params, eos)
    assert ref.shape[1] < 24 or (ref == tok.pad_token_id).any()
    for name, out in outs.items():
        assert torch.equal(out, ref), name


def test_greedy_matches_hf_generate_with_lora():
    model, tok = tiny("llama")
    model = with_lora(model)
    ref, outs = run_all(model, tok, prompts(4, step=4), SamplingParams(max_new_tokens=16, temperature=0),
                        [tok.eos_token_id])
    assert torch.equal(outs["modules"], ref)  # the LoRA branch in the forward: the same arithmetic as HF
    assert torch.equal(outs["native"], ref)  # merged into the rollout copy


@pytest.mark.slow
def test_greedy_matches_hf_generate_smollm2():
    """The acceptance test: 16 prompts of different lengths, float32 on CPU, token for token."""
    model, tok = load_base("smollm2-135m", torch.float32)
    model.eval()
    ids, mask = encode_prompts(tok, prompts(16, step=3))
    assert len(set(mask.sum(1).tolist())) == 16
    params = SamplingParams(max_new_tokens=32, temperature=0)
    eos = [tok.eos_token_id]
    with torch.no_grad():
        ref = hf.generate_ids(model, ids, mask, params, eos, tok.pad_token_id)[0]
        decoder.clear_cache()
        out = native.generate_ids(model, ids, mask, params, eos, tok.pad_token_id)[0]
    assert torch.equal(out, ref)
    # With LoRA weights that are not zero, merged into the rollout copy (3 prompts: HF + peft is slow).
    lora = with_lora(model)
    params = SamplingParams(max_new_tokens=16, temperature=0)
    with torch.no_grad():
        ref = hf.generate_ids(lora, ids[:3], mask[:3], params, eos, tok.pad_token_id)[0]
        out = native.generate_ids(lora, ids[:3], mask[:3], params, eos, tok.pad_token_id)[0]
    assert torch.equal(out, ref)


def test_compiled_decode_step_traces(monkeypatch):
    """The CUDA path's fixed-shape step under torch.compile (dynamo only here: no GPU, no inductor)."""
    model, tok = tiny("qwen2")
    dec = decoder.Decoder(model, fused=False)  # CUDA runs the model's own modules
    monkeypatch.setattr(native, "_compiled_step", torch.compile(native._static_step, backend="eager", dynamic=False))
    monkeypatch.setattr(native, "_static_cache", None)
    ids, mask = encode_prompts(tok, prompts(4, step=4))
    params = SamplingParams(max_new_tokens=10, temperature=0)
    with torch.no_grad():
        ref = hf.generate_ids(model, ids, mask, params, [tok.eos_token_id], tok.pad_token_id)[0]
        for _ in range(2):  # the second call reuses the cache and the compiled step
            out, _ = native.decode_static(dec, ids, mask, params, [tok.eos_token_id], tok.pad_token_id,
                                          compile_step=True)
            assert torch.equal(out, ref)


def test_generate_entry_point_and_groups():
    """Through `aha.rollout.generate`: same texts and masks as the HF engine, groups of G sharing a prefill."""
    model, tok = tiny("qwen2")
    group = [p for p in prompts(3, step=6) for _ in range(4)]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    a = generate(model, tok, group, params, engine="hf")
    b = generate(model, tok, group, params, engine="native")
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.completion_mask, b.completion_mask) and torch.equal(a.truncated, b.truncated)


def test_ignore_eos_and_shapes():
    model, tok = tiny("llama")
    ids, mask = encode_prompts(tok, prompts(3))
    eos = list(range(259))  # every token ends a row, unless EOS is ignored
    with torch.no_grad():
        out = native.generate_ids(model, ids, mask, SamplingParams(max_new_tokens=7, ignore_eos=True), eos,
                                  tok.pad_token_id)[0]
        assert out.shape == (3, 7)
        out = native.generate_ids(model, ids, mask, SamplingParams(max_new_tokens=7), eos, tok.pad_token_id)[0]
        assert out.shape == (3, 1)  # all rows finished at the first token: stop, as `generate` does
        one = native.generate_ids(model, ids[:1, -2:], mask[:1, -2:], SamplingParams(max_new_tokens=3), [],
                                  tok.pad_token_id)[0]
        assert one.shape == (1, 3)


# ---------------------------------------------------------------------------- sampling

def test_sampling_reproducible_at_a_seed():
    model, tok = tiny("llama")
    ids, mask = encode_prompts(tok, [p for p in prompts(2) for _ in range(4)])
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, top_k=50)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return native.generate_ids(model, ids, mask, params, [tok.eos_token_id], tok.pad_token_id)[0]

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r) for r in a[:4].tolist()}) > 1  # one shared prefill, yet each row samples its own


def chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson's chi-square test of counts against probs at p = 1e-6 (Wilson-Hilferty critical value)."""
    keep = probs > 0
    n = counts.sum()
    expected = probs[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    df = int(keep.sum()) - 1
    z = 4.75  # one-sided p ~ 1e-6
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat < critical


@pytest.mark.parametrize("vocab,temperature,top_k,top_p", [
    (24, 1.0, 0, 1.0), (24, 0.7, 0, 1.0), (24, 1.3, 5, 1.0), (24, 1.0, 0, 0.8), (24, 0.9, 8, 0.7),
    (512, 1.0, 0, 1.0), (512, 0.8, 40, 0.9)])  # 512: the two-level CDF (blocks of 256)
def test_sampler_matches_softmax(vocab, temperature, top_k, top_p):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=gen) * (2 if vocab < 100 else 1)  # (V,)
    torch.manual_seed(0)
    n = 100_000
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    samples = sampling.sample(logits.expand(n, -1), params)
    counts = torch.bincount(samples, minlength=vocab).double()
    probs = torch.softmax(logits.double() / temperature, -1)
    order = probs.argsort(descending=True)
    keep = torch.zeros(vocab, dtype=torch.bool)
    keep[order[:top_k or vocab]] = True
    if top_p < 1:  # smallest set of the likeliest tokens whose mass reaches top_p (after top-k)
        p = torch.where(keep, probs, 0.0)
        p = p / p.sum()
        mass_before = p[order].cumsum(0) - p[order]
        keep[order[mass_before >= top_p]] = False
    expected = torch.where(keep, probs, 0.0)
    expected = expected / expected.sum()
    assert counts.sum() == n and counts[~keep].sum() == 0  # truncation respected
    assert chi_square_ok(counts, expected)


def test_engine_first_token_matches_softmax():
    """End to end: the first token of many rows of one prompt follows softmax(model logits / T)."""
    model, tok = tiny("gemma2")  # soft-capped logits on the way
    ids, mask = encode_prompts(tok, ["Natalia sold clips"])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
        torch.manual_seed(0)
        n = 20_000
        out = native.generate_ids(model, ids.expand(n, -1), mask.expand(n, -1),
                                  SamplingParams(max_new_tokens=1, temperature=0.5), [], tok.pad_token_id)[0]
    counts = torch.bincount(out[:, 0], minlength=logits.shape[0]).double()
    assert chi_square_ok(counts, torch.softmax(logits / 0.5, -1))


# ---------------------------------------------------------------------------- the policy is left alone

def test_policy_left_exactly_as_it_was():
    model, tok = tiny("qwen2")
    model = with_lora(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    ids, mask = encode_prompts(tok, prompts(3))
    with torch.no_grad():
        native.generate_ids(model, ids, mask, SamplingParams(max_new_tokens=5), [tok.eos_token_id], tok.pad_token_id)
    assert model.training
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(getattr(m, "merged", False) for m in model.modules())


def test_rollout_copy_follows_weight_updates():
    model, tok = tiny("llama")
    ids, mask = encode_prompts(tok, prompts(2))
    params = SamplingParams(max_new_tokens=6, temperature=0)
    with torch.no_grad():
        native.generate_ids(model, ids, mask, params, [], tok.pad_token_id)
        for p in model.parameters():  # an optimizer step writes in place
            p.add_(torch.randn_like(p) * 0.05)
        ref = hf.generate_ids(model, ids, mask, params, [], tok.pad_token_id)[0]
        out = native.generate_ids(model, ids, mask, params, [], tok.pad_token_id)[0]
    assert torch.equal(out, ref)


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ModelError, match="rollout.engine=hf"):
        native.generate_ids(model, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long),
                            SamplingParams(max_new_tokens=2), [0], 0)


# ---------------------------------------------------------------------------- the benchmark

def test_bench_rollout_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_rollout", ROOT / "bench" / "rollout.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    bench.main(["--model", "random:tiny-llama", "--device", "cpu", "--prompts", "2", "--group", "2",
                "--new-tokens", "4", "--repeats", "1", "--lora", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["engines"]) == {"hf", "native", "native-lora-forward"}
    assert result["ratio_vs_hf"]["hf"] == 1.0 and result["engines"]["native"]["tokens_per_s"] > 0
    assert result["batch"] == 4 and result["new_tokens"] == 4 and result["dtype"] == "float32"
