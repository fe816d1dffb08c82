"""The optimizer: torch's AdamW, or bitsandbytes' 8-bit AdamW (optionally paged) for full fine-tuning.

Why 8-bit: AdamW keeps two fp32 moments per trainable parameter, 8 bytes each - 24 GB for a fully
fine-tuned 3B model, four times its bf16 weights. Block-wise 8-bit moments (Dettmers et al. 2022,
"8-bit Optimizers via Block-wise Quantization") take 2 bytes per parameter with the same updates in
practice. "Paged" keeps those states in CUDA unified memory, which the driver evicts to CPU RAM under
memory pressure, so a long-completion step that spikes activation memory slows down instead of going
out of memory. With LoRA the optimizer state is a few MB and the choice hardly matters.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable

import torch

from aha.config import Config
from aha.errors import ConfigError

# optimizer name -> bitsandbytes class; "adamw" is torch's and needs nothing extra.
BNB_CLASSES = {"adamw8bit": "AdamW8bit", "paged_adamw8bit": "PagedAdamW8bit"}


def build_optimizer(cfg: Config, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer` over `params`, with the config's lr, betas and weight decay."""
    params = list(params)
    kwargs = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if cfg.optimizer not in BNB_CLASSES:
        raise ConfigError(f"config key 'optimizer': {cfg.optimizer!r} is not one of adamw, {', '.join(BNB_CLASSES)}")
    check_bnb_available(cfg.optimizer, params)
    bnb_optim = importlib.import_module("bitsandbytes.optim")
    return getattr(bnb_optim, BNB_CLASSES[cfg.optimizer])(params, **kwargs)


def check_bnb_available(name: str, params: list[torch.nn.Parameter]) -> None:
    """8-bit optimizers run bitsandbytes' CUDA kernels on CUDA tensors: say what is missing and the fix."""
    missing = []
    if not has_bitsandbytes():
        missing.append("bitsandbytes (pip install 'aha[qlora]')")
    if not torch.cuda.is_available() or any(p.device.type != "cuda" for p in params):
        missing.append("a CUDA GPU holding the model")
    if missing:
        raise ConfigError(f"optimizer={name} needs {' and '.join(missing)}; without them use optimizer=adamw")


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None
