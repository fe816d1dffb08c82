"""The decoder-only transformer of Gemma2, Qwen2 and Llama as pure JAX functions.

Weights are a plain dict (see weights.py) with every decoder layer *stacked* on a leading axis L,
so the layers run as one `jax.lax.scan`: XLA compiles one layer instead of 26, which on a TPU
turns minutes of compilation into seconds, and `jax.checkpoint` on the scanned body is gradient
checkpointing. Linear weights are stored (in, out), so a projection is `x @ w`.

One forward serves training, prefill and decode: keys and values are written into a cache of S
slots at slot `start`, and queries attend to the cache under a (B, S) mask of slots that hold
real tokens. Training passes no cache (S = T). Left padding of prompts is a masked slot, and a
token's rotary position skips padding (`positions`), exactly as HF's `generate` assigns them, so
logits and greedy decoding match the torch path (tests/test_jax_model.py, test_jax_sampler.py).

Family differences are flags on `ModelConfig` (the numbers are HF's config.json's):
- Gemma2: embeddings scaled by sqrt(H); RMSNorm scales by (1 + w); norms after attention and MLP
  too; tanh soft-capping of attention scores (50) and final logits (30); sliding-window attention
  on every other layer; query scaling by query_pre_attn_scalar; GELU (tanh) MLP.
- Qwen2: biases on q/k/v. Llama: none of the above. Both SiLU MLP.
Not done: rope scaling variants (Llama 3's), Gemma3 / Qwen3 (q/k norms) - load fails loudly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelConfig:
    """Hashable, so it can be a static argument of `jax.jit`."""

    family: str  # gemma2 | qwen2 | llama
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2: True (q/k/v only)
    query_scale: float = 0.0  # 0 = head_dim ** -0.5
    attn_softcap: float = 0.0  # 0 = off
    final_softcap: float = 0.0
    sliding_window: int = 0  # 0 = no sliding-window layers
    sliding_layers: tuple[bool, ...] = ()  # per layer: does it use the window?
    activation: str = "silu"  # silu | gelu_tanh

    @property
    def is_gemma(self) -> bool:
        return self.family == "gemma2"

    @classmethod
    def from_hf(cls, c: dict[str, Any]) -> ModelConfig:
        """From a HF config.json dict (transformers 4.x or 5.x spelling)."""
        family = c.get("model_type")
        if family not in ("gemma2", "qwen2", "llama"):
            raise ValueError(f"the JAX backend supports gemma2, qwen2 and llama models, not {family!r}")
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported by the JAX backend")
        n_layers = c["num_hidden_layers"]
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        layer_types = c.get("layer_types")
        if layer_types is None:  # transformers 4.x configs: derive as transformers 5 does
            if family == "gemma2":
                layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
            elif c.get("use_sliding_window"):
                layer_types = ["sliding_attention" if i >= c.get("max_window_layers", 0) else "full_attention"
                               for i in range(n_layers)]
            else:
                layer_types = ["full_attention"] * n_layers
        sliding = tuple(t == "sliding_attention" for t in layer_types)
        act = c.get("hidden_activation") or c.get("hidden_act") or "silu"
        gemma = family == "gemma2"
        return cls(
            family=family, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"], num_layers=n_layers, num_heads=c["num_attention_heads"],
            num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"], head_dim=head_dim,
            rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
            attention_bias=family == "qwen2" or bool(c.get("attention_bias", False)),
            query_scale=c["query_pre_attn_scalar"] ** -0.5 if gemma else 0.0,
            attn_softcap=float(c.get("attn_logit_softcapping") or 0.0) if gemma else 0.0,
            final_softcap=float(c.get("final_logit_softcapping") or 0.0) if gemma else 0.0,
            sliding_window=int(c.get("sliding_window") or 0) if any(sliding) else 0,
            sliding_layers=sliding,
            activation="gelu_tanh" if act.startswith("gelu") else "silu",
        )


# ---------------------------------------------------------------------------- building blocks

def rms_norm(x: jax.Array, w: jax.Array, eps: float, gemma: bool) -> jax.Array:
    """RMSNorm in float32. Gemma scales by (1 + w) before casting back; Llama/Qwen cast, then scale by w."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if gemma:
        return (normed * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * normed.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, HF's "rotate half" layout. x: (B, T, heads, D); positions: (B, T)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # (D/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, D)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def linear(x: jax.Array, layer: Params, lora: Params | None, name: str, lora_scale: float) -> jax.Array:
    """x @ W (+ bias) (+ LoRA's x @ A @ B * scale when `name` is adapted)."""
    y = x @ layer[name]
    if f"{name}_bias" in layer:
        y = y + layer[f"{name}_bias"]
    if lora is not None and name in lora:
        a, b = lora[name]["a"], lora[name]["b"]
        y = y + ((x @ a.astype(x.dtype)) @ b.astype(x.dtype)) * lora_scale
    return y


def attention_mask(kv_valid: jax.Array, start: int | jax.Array, T: int, window: jax.Array) -> jax.Array:
    """(B, T, S) bool: query i (at slot start + i) sees slot j if j holds a real token, j <= start + i,
    and, on sliding layers, start + i - j < window (HF's: the last `window` positions, itself included)."""
    S = kv_valid.shape[1]
    q_slot = start + jnp.arange(T)[:, None]  # (T, 1)
    k_slot = jnp.arange(S)[None, :]  # (1, S)
    ok = (k_slot <= q_slot) & (q_slot - k_slot < window)  # (T, S)
    return ok[None] & kv_valid[:, None, :]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
    """q (B, T, NH, D), k/v (B, S, KVH, D), mask (B, T, S) -> (B, T, NH * D). Grouped-query attention
    without repeating k/v: the NH query heads are viewed as (KVH, NH // KVH)."""
    B, T, NH, D = q.shape
    KVH = k.shape[2]
    q = q.reshape(B, T, KVH, NH // KVH, D)
    scale = cfg.query_scale or D ** -0.5
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * scale  # (B, KVH, G, T, S)
    if cfg.attn_softcap:
        scores = jnp.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(B, T, NH * D)


def mlp(x: jax.Array, layer: Params, lora: Params | None, cfg: ModelConfig, lora_scale: float) -> jax.Array:
    gate = linear(x, layer, lora, "gate_proj", lora_scale)
    act = jax.nn.gelu(gate, approximate=True) if cfg.activation == "gelu_tanh" else jax.nn.silu(gate)
    return linear(act * linear(x, layer, lora, "up_proj", lora_scale), layer, lora, "down_proj", lora_scale)


# ---------------------------------------------------------------------------- the model

def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype: Any) -> dict[str, jax.Array]:
    """Pre-allocated keys and values for every layer: (L, B, S, KVH, D) each."""
    shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array, kv_valid: jax.Array,
            cache: dict[str, jax.Array] | None = None, start: int | jax.Array = 0, lora: Params | None = None,
            lora_scale: float = 1.0, remat: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Final hidden states (B, T, H) after the last norm, and the updated cache.

    tokens, positions: (B, T); kv_valid: (B, S) slots holding real tokens, the T new ones included;
    cache: from `init_cache`, or None for a cache-free pass (S = T, start = 0);
    lora: adapters stacked like the layers (lora.py), applied unmerged so they can be differentiated.
    """
    B, T = tokens.shape
    dtype = params["embed"].dtype
    h = params["embed"][tokens]  # (B, T, H)
    if cfg.is_gemma:  # HF casts the scale to the weights' dtype first (sqrt(2304) = 48.0 in bf16)
        h = h * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
    if cache is None:
        cache = init_cache(cfg, B, T, dtype)
    S = cache["k"].shape[2]
    full_mask = attention_mask(kv_valid, start, T, S + T)  # (B, T, S)
    window_mask = attention_mask(kv_valid, start, T, cfg.sliding_window) if cfg.sliding_window else full_mask
    sliding = jnp.array(cfg.sliding_layers or (False,) * cfg.num_layers)  # (L,)
    eps, gemma = cfg.rms_norm_eps, cfg.is_gemma

    def layer(h: jax.Array, xs: tuple) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        p, ad, k_cache, v_cache, is_sliding = xs  # one layer's slice of each stacked array
        x = rms_norm(h, p["input_layernorm"], eps, gemma)
        q = linear(x, p, ad, "q_proj", lora_scale).reshape(B, T, cfg.num_heads, cfg.head_dim)
        k = linear(x, p, ad, "k_proj", lora_scale).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
        v = linear(x, p, ad, "v_proj", lora_scale).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, axis=1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, axis=1)
        mask = jnp.where(is_sliding, window_mask, full_mask)
        a = linear(attend(q, k_cache, v_cache, mask, cfg), p, ad, "o_proj", lora_scale)
        if gemma:  # norms on both sides of attention and of the MLP
            h = h + rms_norm(a, p["post_attention_layernorm"], eps, True)
            m = mlp(rms_norm(h, p["pre_feedforward_layernorm"], eps, True), p, ad, cfg, lora_scale)
            h = h + rms_norm(m, p["post_feedforward_layernorm"], eps, True)
        else:  # Llama/Qwen's "post_attention_layernorm" is the norm before the MLP
            h = h + a
            h = h + mlp(rms_norm(h, p["post_attention_layernorm"], eps, False), p, ad, cfg, lora_scale)
        return h, (k_cache, v_cache)

    body = jax.checkpoint(layer) if remat else layer
    xs = (params["layers"], lora, cache["k"], cache["v"], sliding)
    h, (ks, vs) = jax.lax.scan(body, h, xs)
    h = rms_norm(h, params["norm"], eps, gemma)
    return h, {"k": ks, "v": vs}


def lm_head(params: Params) -> jax.Array:
    """(H, V): the output projection (the embedding, transposed, when tied)."""
    return params["lm_head"] if "lm_head" in params else params["embed"].T


def logits(params: Params, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """hidden (B, T, H) -> float32 logits (B, T, V), Gemma2's final soft-capping applied."""
    out = (hidden @ lm_head(params)).astype(jnp.float32)
    if cfg.final_softcap:
        out = jnp.tanh(out / cfg.final_softcap) * cfg.final_softcap
    return out


def position_ids(mask: jax.Array) -> jax.Array:
    """Positions that skip left padding, as `generate` assigns them. (B, T) -> (B, T)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
