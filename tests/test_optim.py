"""The optimizer that the trainer and the benchmarks build (aha/optim.py)."""

from __future__ import annotations

import pytest
import torch

import aha.optim
from aha.config import load_config
from aha.errors import ConfigError
from aha.optim import build_optimizer


def _params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(4, 3).parameters())


def test_adamw_is_torch_adamw_with_the_configs_settings():
    cfg = load_config(None, ["lr=0.01", "weight_decay=0.1", "adam_beta1=0.8", "adam_beta2=0.95"])
    opt = build_optimizer(cfg, _params())
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.01, 0.1, (0.8, 0.95))
    assert len(group["params"]) == 2


def test_unknown_optimizer_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["optimizer=sgd"])


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_optimizer_without_bitsandbytes_names_the_install(monkeypatch, name):
    monkeypatch.setattr(aha.optim, "has_bitsandbytes", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'aha\[qlora\]'.*optimizer=adamw"):
        build_optimizer(load_config(None, [f"optimizer={name}"]), _params())


def test_8bit_optimizer_on_cpu_tensors_needs_cuda(monkeypatch):
    monkeypatch.setattr(aha.optim, "has_bitsandbytes", lambda: True)
    with pytest.raises(ConfigError, match="CUDA GPU.*optimizer=adamw") as err:
        build_optimizer(load_config(None, ["optimizer=adamw8bit"]), _params())
    assert "pip install" not in str(err.value)
