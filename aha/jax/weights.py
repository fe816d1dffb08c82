"""Load a model for the JAX backend: HF safetensors (a hub id or a local directory), the bundled
`smollm2-135m`, or `random:<arch>`; returns host (numpy) weights in model.py's layout.

Why our own loader and not a library's: reading safetensors is a JSON header and byte offsets, 30
lines here, memory-mapped so a 5 GB checkpoint is not read twice; `safetensors`' numpy reader
refuses bfloat16 (numpy has no such dtype), so we view the bytes as `ml_dtypes.bfloat16` (shipped
with jax). `random:<arch>` draws the *torch* model (aha.model.random_model, same seed, same
weights) and converts it, so the two backends can be compared on identical weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from aha.errors import ModelError
from aha.jax.model import LINEARS, ModelConfig

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


@dataclass
class LoadedModel:
    params: dict[str, Any]  # numpy arrays, model.py's layout
    config: ModelConfig
    tokenizer: Any
    eos_ids: list[int]  # every id that ends a completion
    hf_config: dict[str, Any]


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a read-only, memory-mapped numpy array."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def params_from_state_dict(sd: dict[str, np.ndarray], cfg: ModelConfig, dtype: Any = np.float32) -> dict[str, Any]:
    """HF names (`model.layers.3.self_attn.q_proj.weight`, (out, in)) -> stacked (in, out) arrays."""
    sd = {k.removeprefix("base_model.model."): v for k, v in sd.items()}

    def get(name: str) -> np.ndarray:
        if name not in sd:
            raise ModelError(f"weight {name!r} is missing from the checkpoint: not a {cfg.family} model?")
        return np.asarray(sd[name]).astype(dtype)

    def stack(fmt: str, transpose: bool) -> np.ndarray:
        mats = [get(fmt.format(i)) for i in range(cfg.num_layers)]
        return np.stack([m.T for m in mats] if transpose else mats)  # (L, ...)

    layers: dict[str, np.ndarray] = {}
    for name in LINEARS:
        where = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        layers[name] = stack(f"model.layers.{{}}.{where}.{name}.weight", transpose=True)  # (L, in, out)
        if cfg.attention_bias and name in ("q_proj", "k_proj", "v_proj"):
            layers[f"{name}_bias"] = stack(f"model.layers.{{}}.{where}.{name}.bias", transpose=False)
    for norm in _NORMS[:4 if cfg.is_gemma else 2]:
        layers[norm] = stack(f"model.layers.{{}}.{norm}.weight", transpose=False)  # (L, H)
    params: dict[str, Any] = {"embed": get("model.embed_tokens.weight"), "norm": get("model.norm.weight"),
                              "layers": layers}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = get("lm_head.weight").T
    return params


def load_dir(path: Path, dtype: Any = np.float32) -> tuple[dict[str, Any], ModelConfig, dict[str, Any]]:
    """A HF model directory: config.json + model.safetensors (or sharded model-0000x-of-0000y)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face model directory")
    hf_config = json.loads((path / "config.json").read_text())
    try:
        cfg = ModelConfig.from_hf(hf_config)
    except ValueError as e:
        raise ModelError(f"{path}: {e}") from e
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path} has no .safetensors weights (the JAX backend does not read .bin files)")
    sd: dict[str, np.ndarray] = {}
    for f in files:
        sd.update(read_safetensors(f))
    return params_from_state_dict(sd, cfg, dtype), cfg, hf_config


def _eos_ids(tokenizer: Any, path: Path | None) -> list[int]:
    """The tokenizer's EOS and those of the model's generation_config.json (Gemma's <end_of_turn>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = path / "generation_config.json" if path is not None else None
    if gen is not None and gen.is_file():
        extra = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([extra] if isinstance(extra, int) else extra or [])
    return sorted(ids)


def hub_dir(name: str) -> Path:
    """A hub id's files (config, tokenizer, safetensors) in the HF cache, downloaded if needed."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"]))
    except Exception as e:  # network errors, gated repos, unknown ids: one line that says what to do
        raise ModelError(f"could not download {name!r} ({type(e).__name__}: {str(e)[:200]}). A hub id needs "
                         "network access; a gated model (google/gemma-2-2b) also needs its licence accepted "
                         "on the hub and `huggingface-cli login` or HF_TOKEN") from e


def load_model(name: str, dtype: str = "float32", seed: int = 0) -> LoadedModel:
    """Any model name the torch path accepts (but .gguf files), as host arrays in `dtype`."""
    from transformers import AutoTokenizer

    np_dtype = NP_DTYPES[dtype]
    if name.startswith("random:"):
        import torch

        from aha.model import random_model

        model, tokenizer = random_model(name.split(":", 1)[1], torch.float32, seed)
        sd = {k: v.numpy() for k, v in model.state_dict().items()}
        hf_config = model.config.to_dict()
        cfg = ModelConfig.from_hf(hf_config)
        return LoadedModel(params_from_state_dict(sd, cfg, np_dtype), cfg, tokenizer, _eos_ids(tokenizer, None),
                           hf_config)
    if name == "smollm2-135m":
        from aha.model import _smollm2_dir

        name = str(_smollm2_dir())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        raise ModelError("the JAX backend reads safetensors; convert the .gguf model with the torch path first")
    if not path.is_dir():
        if name.startswith((".", "/", "~")):
            raise ModelError(f"model directory {path} does not exist")
        path = hub_dir(name)
    params, cfg, hf_config = load_dir(path, np_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(params, cfg, tokenizer, _eos_ids(tokenizer, path), hf_config)
