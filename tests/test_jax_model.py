"""The JAX model equals the torch (transformers) model on the same tiny random weights, loaded
through the real path (save_pretrained -> safetensors -> aha.jax.weights); LoRA, its merge and its
peft export agree with peft; chunked log-probs equal the full log-softmax."""

import json

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = jax.numpy

from aha.jax import lora as lora_lib  # noqa: E402
from aha.jax.logprobs import completion_logprobs  # noqa: E402
from aha.jax.model import ModelConfig, forward, logits, position_ids  # noqa: E402
from aha.jax.weights import load_model, read_safetensors  # noqa: E402
from aha.model import random_model  # noqa: E402

ARCHS = ["tiny-gemma2", "tiny-qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def saved(request, tmp_path_factory):
    """(arch, torch model, its save_pretrained directory)."""
    model, tok = random_model(request.param, torch.float32, seed=1)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return request.param, model.eval(), path


def _batch(T: int = 80):
    """Left-padded rows; T > tiny-gemma2's sliding window (64), so the window is exercised."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[0, :7] = 0
    mask[1, :60] = 0
    return ids, mask


def _jax_logits(params, cfg, ids, mask, lora=None, scale=1.0):
    m = jnp.asarray(mask.numpy())
    h, _ = forward(params, cfg, jnp.asarray(ids.numpy()), position_ids(m), m.astype(bool), lora=lora,
                   lora_scale=scale)
    return np.asarray(logits(params, cfg, h))


def test_logits_equal_torch_loaded_from_safetensors(saved):
    arch, model, path = saved
    lm = load_model(str(path), "float32")
    assert lm.config.family == arch.split("-")[1]
    assert lm.eos_ids == [256]
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    out = _jax_logits(jax.tree.map(jnp.asarray, lm.params), lm.config, ids, mask)
    keep = mask.numpy().astype(bool)  # padded positions are garbage on both sides
    np.testing.assert_allclose(out[keep], ref.numpy()[keep], atol=2e-5, rtol=1e-5)


def test_random_arch_has_the_torch_weights():
    a = load_model("random:tiny-qwen2", "float32", seed=1)
    model, _ = random_model("tiny-qwen2", torch.float32, seed=1)
    np.testing.assert_array_equal(a.params["embed"], model.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(a.params["layers"]["q_proj"][1],
                                  model.model.layers[1].self_attn.q_proj.weight.detach().numpy().T)


@pytest.mark.slow
def test_lora_forward_equals_peft_and_merge_equals_unmerged(saved, tmp_path):
    """Adapters with non-zero B, exported in peft's format and loaded by peft onto the torch model,
    give the JAX model's logits: LoRA math, layout and adapter_config all agree."""
    from peft import PeftModel
    from safetensors.numpy import save_file

    _, model, path = saved
    lm = load_model(str(path), "float32")
    params = jax.tree.map(jnp.asarray, lm.params)
    targets = lora_lib.target_names(["all-linear"])
    lora = lora_lib.init(jax.random.key(0), lm.config, r=4, targets=targets)
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), lora)  # B != 0
    scale = 8 / 4
    save_file(lora_lib.to_peft(lora), str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(lora_lib.adapter_config(4, 8, targets, str(path))))
    peft_model = PeftModel.from_pretrained(model, str(tmp_path)).eval()
    ids, mask = _batch(T=24)
    with torch.no_grad():
        ref = peft_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    peft_model.unload()  # leave the shared fixture's model without adapters
    keep = mask.numpy().astype(bool)
    out = _jax_logits(params, lm.config, ids, mask, lora, scale)
    np.testing.assert_allclose(out[keep], ref.numpy()[keep], atol=5e-5, rtol=1e-4)
    merged = _jax_logits(lora_lib.merge(params, lora, scale), lm.config, ids, mask)
    np.testing.assert_allclose(merged[keep], out[keep], atol=5e-5, rtol=1e-4)
    back = lora_lib.from_peft(read_safetensors(tmp_path / "adapter_model.safetensors"), lm.config, targets)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), back, lora))


def test_chunked_logprobs_equal_full_log_softmax_and_torch():
    from aha.logprobs import naive_completion_logprobs

    lm = load_model("random:tiny-gemma2", "float32", seed=2)
    model, _ = random_model("tiny-gemma2", torch.float32, seed=2)
    params = jax.tree.map(jnp.asarray, lm.params)
    ids, mask = _batch(T=30)
    C = 11
    logp, entropy = completion_logprobs(params, lm.config, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()),
                                        C, temperature=0.7, chunk=4)  # 11 = 4 + 4 + 3: padding of the last chunk
    full = jax.nn.log_softmax(_jax_logits(params, lm.config, ids, mask)[:, -C - 1:-1] / 0.7, axis=-1)
    expect = np.take_along_axis(np.asarray(full), ids.numpy()[:, -C:, None], axis=-1)[..., 0]
    # Only real positions: a padded position (all of row 1 here, left-padded past T) holds garbage by
    # contract, and each library fills a fully masked attention row its own way.
    keep = (mask[:, -C - 1:-1] * mask[:, -C:]).numpy().astype(bool)
    assert keep.sum(1).tolist() == [C, 0, C]  # rows 0 and 2 are compared in full; row 1 is all padding
    np.testing.assert_allclose(np.asarray(logp)[keep], expect[keep], atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy)[keep], -(np.exp(full) * full).sum(-1)[keep], atol=1e-4)
    with torch.no_grad():
        torch_logp = naive_completion_logprobs(model, ids, mask, C, temperature=0.7)
    np.testing.assert_allclose(np.asarray(logp)[keep], torch_logp.numpy()[keep], atol=2e-5)


def test_unsupported_models_fail_loudly():
    with pytest.raises(ValueError, match="supports gemma2, qwen2 and llama"):
        ModelConfig.from_hf({"model_type": "mistral"})
    base = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    with pytest.raises(ValueError, match="rope scaling"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "llama3"}})
    # transformers 4.x spelling (no layer_types, rope_theta at the top) of Gemma2 alternates windows
    g = ModelConfig.from_hf({**base, "model_type": "gemma2", "num_hidden_layers": 4, "query_pre_attn_scalar": 4,
                             "sliding_window": 16, "rope_theta": 500.0})
    assert g.sliding_layers == (True, False, True, False) and g.rope_theta == 500.0
