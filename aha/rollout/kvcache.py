"""The native engine's pre-allocated KV cache and the attention masks that go with it.

Layout: one (B, H_kv, S, D) key tensor and one value tensor per layer, S = prompt width P +
max_new_tokens, in `generate`'s left-padded layout: slot s of row b holds column s of the padded
sequence, so padding, causal and sliding-window masks are defined on slots exactly as transformers
defines them on cache indices. The model's own attention modules call `update(k, v, layer_idx)` as
they would on a transformers `Cache`. Where it departs from HF's `DynamicCache`: nothing grows by
`torch.cat` (a copy of the whole cache at every token), prompts are written once per unique prompt and
fanned out to the rows of their group, and finished rows are dropped (`keep`) so they cost nothing.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Duck-types the one method of `transformers.Cache` that attention modules call: `update`."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, slots: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        # Zeros, not empty: a masked slot still enters softmax(QK^T)V with weight 0, and 0 * NaN = NaN.
        shape = (batch, n_kv_heads, slots, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self._mode = "decode"
        self._slot: int | torch.Tensor = 0
        self._dst: torch.Tensor | None = None
        self._src: torch.Tensor | None = None

    def prefill(self, dst_rows: torch.Tensor, src_rows: torch.Tensor, start: int) -> None:
        """Next forward is a prefill of a sub-batch of unique prompts over slots start..start+W-1: row
        src_rows[i] of it is written to cache row dst_rows[i] (a prompt shared by G rows is computed once)."""
        self._mode, self._dst, self._src, self._slot = "prefill", dst_rows, src_rows, start

    def decode(self, slot: int | torch.Tensor) -> None:
        """Next forward is one token per row at `slot`; attention sees slots 0..slot (an int), or all
        slots under a mask (a 0-d tensor: fixed shapes for torch.compile / CUDA graphs)."""
        self._mode, self._slot = "decode", slot

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int,
               *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self.k[layer_idx], self.v[layer_idx]
        if self._mode == "prefill":  # k, v: (U, H, W, D); attention is within the prompt itself
            width = k.shape[2]
            kc[self._dst, :, self._slot:self._slot + width] = k[self._src]
            vc[self._dst, :, self._slot:self._slot + width] = v[self._src]
            return k, v
        if isinstance(self._slot, torch.Tensor):  # static shapes: write in place, attend over all slots
            kc.index_copy_(2, self._slot.view(1), k)
            vc.index_copy_(2, self._slot.view(1), v)
            return kc, vc
        kc[:, :, self._slot] = k[:, :, 0]  # k: (B, H, 1, D)
        vc[:, :, self._slot] = v[:, :, 0]
        return kc[:, :, :self._slot + 1], vc[:, :, :self._slot + 1]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (finished sequences): later steps read and compute only live rows."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]


def to_attention_mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean (B, 1, Q, K) mask (True = attend) as an additive float mask, built once per forward
    for all layers: -inf for SDPA (what SDPA turns a boolean mask into, in every layer), the most
    negative float for eager attention (as transformers builds it)."""
    blocked = float("-inf") if impl == "sdpa" else torch.finfo(dtype).min
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, blocked)


def prefill_mask(key_valid: torch.Tensor, window: int | None) -> torch.Tensor:
    """key_valid (U, W) bool (left padding False) -> allowed (U, 1, W, W): causal, not padding, within
    `window` slots for sliding-window layers. A padding query may see itself, so that no softmax row is
    empty (NaN); its output is never read."""
    width = key_valid.shape[1]
    q = torch.arange(width, device=key_valid.device)
    allowed = (q[None, :] <= q[:, None])  # (W, W) causal: key slot <= query slot
    if window is not None:
        allowed = allowed & (q[None, :] > q[:, None] - window)
    allowed = allowed[None, None] & key_valid[:, None, None, :]
    return allowed | torch.eye(width, dtype=torch.bool, device=key_valid.device)


def decode_mask(key_valid: torch.Tensor, slot: int, window: int | None) -> torch.Tensor:
    """key_valid (B, S) bool -> allowed (B, 1, 1, slot + 1) for a query at `slot`."""
    allowed = key_valid[:, None, None, :slot + 1]
    if window is not None and slot >= window:
        allowed = allowed.clone()
        allowed[..., :slot + 1 - window] = False  # HF: key slot > query slot - window
    return allowed


def static_decode_mask(key_valid: torch.Tensor, slot: torch.Tensor, window: int | None) -> torch.Tensor:
    """Like `decode_mask` over all S slots, with `slot` a 0-d tensor (no data-dependent shapes)."""
    s = torch.arange(key_valid.shape[1], device=key_valid.device)
    allowed = key_valid & (s <= slot)
    if window is not None:
        allowed = allowed & (s > slot - window)
    return allowed[:, None, None, :]
