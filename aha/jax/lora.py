"""LoRA (Hu et al. 2021) on the attention/MLP projections, as a separate pytree of A and B matrices.

The adapters are stacked over layers like the weights they adapt: `lora[name] = {"a": (L, in, r),
"b": (L, r, out)}`, and model.forward adds `x @ A @ B * alpha / r` to each adapted projection.
Training differentiates the adapters only; the frozen weights never get gradients or optimizer
state. The sampler runs on merged weights (W + A @ B * scale, `merge`), one matmul per projection
instead of three. Initialisation is peft's: A uniform in +-1/sqrt(in) (kaiming-uniform with a =
sqrt(5)), B zero, so training starts at the base model exactly.

A checkpoint stores the adapters in peft's format (`to_peft` / `from_peft`: names, (out, in)
layout, adapter_config.json), so `aha eval` and `aha play` - the torch path - load a JAX run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aha.errors import ConfigError
from aha.jax.model import LINEARS, ModelConfig, Params

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def target_names(target_modules: list[str]) -> tuple[str, ...]:
    """The config's `lora.target_modules` as projection names ("all-linear" = all seven)."""
    if target_modules == ["all-linear"]:
        return LINEARS
    unknown = [t for t in target_modules if t not in LINEARS]
    if unknown:
        raise ConfigError(f"config key 'lora.target_modules': {unknown} not supported by backend=jax; "
                          f"use names from {', '.join(LINEARS)} or [all-linear]")
    return tuple(t for t in LINEARS if t in target_modules)


def dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of every projection."""
    H, I, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H),
            "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}


def init(key: jax.Array, cfg: ModelConfig, r: int, targets: tuple[str, ...]) -> Params:
    """Fresh float32 adapters: A random, B zero."""
    out: Params = {}
    for name, k in zip(targets, jax.random.split(key, len(targets))):
        d_in, d_out = dims(cfg)[name]
        bound = 1.0 / np.sqrt(d_in)
        out[name] = {"a": jax.random.uniform(k, (cfg.num_layers, d_in, r), jnp.float32, -bound, bound),
                     "b": jnp.zeros((cfg.num_layers, r, d_out), jnp.float32)}
    return out


def merge(params: Params, lora: Params, scale: float) -> Params:
    """Weights with the adapters folded in (W + A @ B * scale), in the weights' dtype."""
    layers = dict(params["layers"])
    for name, ab in lora.items():
        w = layers[name]
        layers[name] = (w.astype(jnp.float32) + jnp.einsum("lir,lro->lio", ab["a"], ab["b"]) * scale).astype(w.dtype)
    return {**params, "layers": layers}


def _peft_key(i: int, name: str, which: str) -> str:
    where = "self_attn" if name in _ATTN else "mlp"
    return f"base_model.model.model.layers.{i}.{where}.{name}.lora_{which}.weight"


def to_peft(lora: Params) -> dict[str, np.ndarray]:
    """peft's adapter_model.safetensors layout: lora_A (r, in), lora_B (out, r) per layer."""
    out = {}
    for name, ab in lora.items():
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        for i in range(a.shape[0]):
            out[_peft_key(i, name, "A")] = np.ascontiguousarray(a[i].T)
            out[_peft_key(i, name, "B")] = np.ascontiguousarray(b[i].T)
    return out


def from_peft(sd: dict[str, np.ndarray], cfg: ModelConfig, targets: tuple[str, ...]) -> Params:
    """The inverse of `to_peft`; a missing key is a KeyError naming it."""
    out: Params = {}
    for name in targets:
        a = np.stack([sd[_peft_key(i, name, "A")].T for i in range(cfg.num_layers)])
        b = np.stack([sd[_peft_key(i, name, "B")].T for i in range(cfg.num_layers)])
        out[name] = {"a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    return out


def adapter_config(r: int, alpha: int, targets: tuple[str, ...], base_model: str) -> dict[str, Any]:
    """The adapter_config.json peft needs to rebuild the same adapters on the torch path."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": list(targets), "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "base_model_name_or_path": base_model}
