"""The forward pass that the native engine drives: last-position logits from ids, positions, masks
and a KV cache, for Llama, Qwen2, Qwen3, Mistral and Gemma2 models.

Two implementations behind one interface:

- `Decoder(model, fused=False)` calls the transformers model's own decoder layers, so each computes
  exactly what it computes under `generate`; LoRA adapters run in the forward as peft injected them,
  and 4-bit (QLoRA) weights work. Used on CUDA, where the decode step is CUDA-graphed and the LoRA
  branch's small extra kernels cost little, and for adapters that cannot be merged (DoRA, LoRA bias).
- `Decoder(model, fused=True)` (CPU) runs the same layer math on a *rollout copy* of the weights:
  active LoRA adapters merged in, q/k/v and gate/up concatenated into one matmul each, every matrix
  pre-packed for oneDNN when torch has it. On a CPU, decoding a small batch is matmul-bound: packed
  oneDNN matmuls beat `F.linear`'s MKL call for a 16-row input, the LoRA branch would add two small
  matmuls per projection, and 4 matmuls per layer instead of 7 means fewer thread-pool round trips.
  Norms, rotary embedding, attention function and activation are still the model's own modules.
  The copy is rebuilt only when a weight changed (tensor version counters), so eval and a trainer's
  batched rollouts pay it once per optimizer step. The policy model itself is never modified.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from aha.errors import ModelError
from aha.model import unwrap
from aha.rollout.kvcache import StaticKVCache, to_attention_mask

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral", "gemma2")
Linear = Callable[[torch.Tensor], torch.Tensor]


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> Linear:
    """x (..., in) -> x @ weight.T + bias, with the weight pre-packed once for oneDNN where torch's CPU
    build has it (packed for `rows`-row inputs; any row count works), else plain `F.linear`. Inductor
    uses these same two ops for frozen CPU linears."""
    weight = weight.detach()
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")):
        packed = mkldnn._reorder_linear_weight(weight, rows)
        return lambda x: mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return lambda x: F.linear(x, weight, bias)


@torch.no_grad()
def merged_linear(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a projection with its active LoRA deltas merged; None if they cannot be."""
    get_base = getattr(layer, "get_base_layer", None)
    if get_base is None:  # a plain nn.Linear
        if not isinstance(layer, torch.nn.Linear) or not layer.weight.is_floating_point():
            return None
        return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    base = get_base()
    if not base.weight.is_floating_point():
        return None  # 4-bit base weights
    weight = base.weight.detach()
    if not layer.disable_adapters:
        for name in layer.active_adapters:
            if name not in layer.lora_A or name in layer.merged_adapters:
                continue
            if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
                return None  # DoRA and friends: let peft run them
            weight = weight + layer.get_delta_weight(name).to(weight.dtype)
    return weight, None if base.bias is None else base.bias.detach()


def _eager_attention(attn: torch.nn.Module) -> Callable:
    """The modeling file's own eager attention (Gemma 2's soft-caps its scores)."""
    return sys.modules[type(attn).__module__].eager_attention_forward


class Decoder:
    def __init__(self, model: torch.nn.Module, fused: bool, rows: int = 16) -> None:
        base = unwrap(model)
        cfg = base.config
        if cfg.model_type not in SUPPORTED:
            raise ModelError(f"rollout.engine=native supports {', '.join(SUPPORTED)} models, not "
                             f"{cfg.model_type!r}; use rollout.engine=hf")
        self.impl = cfg._attn_implementation
        if self.impl not in ("sdpa", "eager"):
            raise ModelError(f"rollout.engine=native needs eager or sdpa attention, the model uses {self.impl!r}; "
                             "load it with attn_implementation='sdpa' or use rollout.engine=hf")
        self.model_type = cfg.model_type
        self.decoder = base.get_decoder()
        self.head_module = base.get_output_embeddings()
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if cfg.model_type == "mistral":  # Mistral's window, when set, applies to every layer
            self.types = ["sliding_attention" if cfg.sliding_window else "full_attention"] * self.n_layers
        else:
            self.types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * self.n_layers)
        self.windows = {"full_attention": None, "sliding_attention": getattr(cfg, "sliding_window", None)}
        self.dtype = self.decoder.embed_tokens.weight.dtype
        self.layers = list(self.decoder.layers[:self.n_layers])
        attn = self.layers[0].self_attn
        self.attention = _eager_attention(attn) if self.impl == "eager" else ALL_ATTENTION_FUNCTIONS[self.impl]
        softcap = getattr(cfg, "attn_logit_softcapping", None)
        self.attention_kwargs = [dict(dropout=0.0, scaling=layer.self_attn.scaling,
                                      sliding_window=getattr(layer.self_attn, "sliding_window", None),
                                      **({"softcap": softcap} if softcap else {})) for layer in self.layers]
        self.fused: list[tuple[Linear, Linear, Linear, Linear]] | None = None
        self.head: Linear = self.head_module
        if fused:
            self._fuse(rows)

    # ------------------------------------------------------------------ rollout weights

    def _fuse(self, rows: int) -> None:
        fused = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            parts = [merged_linear(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                              mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
            if any(p is None for p in parts):
                return  # an adapter that cannot be merged: stay on the model's own modules
            (q, qb), (k, kb), (v, vb), (o, ob), (g, gb), (u, ub), (d, db) = parts  # type: ignore[misc]
            qkv_bias = None if qb is None else torch.cat([qb, kb, vb])
            gate_up_bias = None if gb is None else torch.cat([gb, ub])
            fused.append((_packed_linear(torch.cat([q, k, v]), qkv_bias, rows), _packed_linear(o, ob, rows),
                          _packed_linear(torch.cat([g, u]), gate_up_bias, rows), _packed_linear(d, db, rows)))
        head = merged_linear(self.head_module)
        if head is not None:
            self.head = _packed_linear(*head, rows)
        self.fused = fused

    # ------------------------------------------------------------------ forward

    def masks(self, make: Callable[..., torch.Tensor], *args: object) -> dict[str, torch.Tensor]:
        """One attention mask per layer type in use, from a boolean `make(*args, window)`."""
        return {t: to_attention_mask(make(*args, self.windows[t]), self.impl, self.dtype) for t in set(self.types)}

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, masks: dict[str, torch.Tensor],
                cache: StaticKVCache) -> torch.Tensor:
        """ids, positions (B, T) -> float32 logits of the last position (B, V)."""
        h = self.decoder.embed_tokens(ids)  # (B, T, H); Gemma's scaling is inside its embedding module
        rope = self.decoder.rotary_emb(h, positions)  # cos, sin: (B, T, D)
        if self.fused is not None:
            rope = (rope[0].unsqueeze(2), rope[1].unsqueeze(2))  # (B, T, 1, D): broadcast over heads
        for i, (layer, kind) in enumerate(zip(self.layers, self.types)):
            if self.fused is None:
                h = layer(h, attention_mask=masks[kind], position_embeddings=rope, position_ids=positions,
                          past_key_values=cache)
            else:
                h = self._layer(i, h, rope, masks[kind], cache)
        logits = self.head(self.decoder.norm(h[:, -1:]))[:, 0]  # (B, V): only the last position
        if self.softcap:  # Gemma 2
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    def _layer(self, i: int, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
               cache: StaticKVCache) -> torch.Tensor:
        """One decoder layer on the fused weights; the same operations, in the same order, as the
        transformers layer (modeling_llama / _qwen2 / _qwen3 / _mistral / _gemma2)."""
        layer, (qkv, o_proj, gate_up, down) = self.layers[i], self.fused[i]  # type: ignore[index]
        attn, gemma, nh = layer.self_attn, self.model_type == "gemma2", self.n_heads
        batch, width, _ = h.shape
        x = layer.input_layernorm(h)
        heads = qkv(x).view(batch, width, -1, self.head_dim)  # (B, T, nh + 2 nkv, D): q | k | v heads
        qk, v = heads[:, :, :nh + self.n_kv_heads], heads[:, :, nh + self.n_kv_heads:]
        if self.model_type == "qwen3":  # RMSNorm over each head's dims, before rotary
            qk = torch.cat([attn.q_norm(qk[:, :, :nh]), attn.k_norm(qk[:, :, nh:])], dim=2)
        cos, sin = rope  # (B, T, 1, D)
        qk = qk * cos + _rotate_half(qk) * sin  # q and k at once: per element, HF's arithmetic
        q, k, v = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), v.transpose(1, 2)  # (B, h, T, D)
        k, v = cache.update(k, v, i)
        out, _ = self.attention(attn, q, k, v, mask, **self.attention_kwargs[i])  # (B, T, nh, D)
        out = o_proj(out.reshape(batch, width, -1))
        if gemma:
            out = layer.post_attention_layernorm(out)
        h = h + out
        x = (layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm)(h)
        gate, up = gate_up(x).chunk(2, dim=-1)
        x = down(layer.mlp.act_fn(gate) * up)
        if gemma:
            x = layer.post_feedforward_layernorm(x)
        return h + x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# A fused copy is kept per model while its weights are unchanged: a trainer's batched rollout and an
# eval loop call the engine many times between two optimizer steps. On CUDA the decoder is kept too,
# so that the compiled decode step sees the same objects from one call to the next.
_DECODERS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, Decoder]] = weakref.WeakKeyDictionary()
FUSE_ON_CPU = True  # False: the model's own modules on CPU too (bench/rollout.py --lora compares both)


def weights_version(params: Iterable[torch.Tensor]) -> tuple:
    """A value that changes whenever any of `params` is written: every engine that keeps its own copy
    of the weights (the fused decoder here, vLLM in-process and its servers) compares it to skip
    unchanged syncs. `_version` counts in-place writes (optimizer steps, load_state_dict);
    `data_ptr` catches swapped storage."""
    return tuple((p.data_ptr(), p._version) for p in params)


def clear_cache() -> None:
    """Forget the fused copies (a benchmark timing a rollout right after an optimizer step)."""
    _DECODERS.clear()


def decoder_for(model: torch.nn.Module, rows: int) -> Decoder:
    """The decoder for this model on its device: fused on CPU, the model's own modules elsewhere."""
    fused = next(model.parameters()).device.type == "cpu" and FUSE_ON_CPU
    version = weights_version(model.parameters()) if fused else ()  # the module path reads the live weights
    hit = _DECODERS.get(model)
    if hit is not None and hit[0] == version and (hit[1].fused is not None) == fused:
        return hit[1]
    _DECODERS.pop(model, None)  # free the old copy before building the new one
    with torch.no_grad():
        dec = Decoder(model, fused=fused, rows=rows)
    _DECODERS[model] = (version, dec)
    return dec
