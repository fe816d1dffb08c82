"""bench/step.py end to end on the smoke preset, and aha/optim.py (the optimizer that the trainer and the
bench build). Where TRL is installed (`pip install 'aha[bench]'`) the bench test runs TRL's side too;
CI installs only '.[dev]', so there it checks aha's side alone."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aha.optim
from aha.config import load_config
from aha.errors import ConfigError
from aha.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_step_times_a_grpo_step_and_writes_json(tmp_path: Path):
    vs_trl = importlib.util.find_spec("trl") is not None
    out = tmp_path / "step.json"
    cmd = [sys.executable, "bench/step.py", "-c", "smoke", "rollout.max_new_tokens=8", "--steps", "2",
           "--warmup", "1", "--threads", "1", "--json", str(out), *(["--vs-trl"] if vs_trl else [])]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    sides = ["aha", "trl"] if vs_trl else ["aha"]
    for side in sides:
        s = result[side]
        assert s["step_time"] > 0 and s["peak_mem_bytes"] > 2**20
        assert len(s["step_times"]) == 2
        # the split adds up to the step (up to drawing prompts / collating, which is tiny)
        assert s["gen_time"] + s["score_time"] + s["update_time"] == pytest.approx(s["step_time"], rel=0.1)
        # fixed length: smoke's 2 prompts x G=4 completions of exactly 8 tokens
        assert s["tokens_per_step"] == 2 * 4 * 8
    assert result["model"] == "random:tiny-qwen2" and result["fixed_length"] is True
    if vs_trl:
        assert result["ratio_vs_trl"] == pytest.approx(result["trl"]["step_time"] / result["aha"]["step_time"])
    else:
        assert "trl" not in result and "ratio_vs_trl" not in result
    assert "aha " in r.stdout and "step" in r.stdout  # it says what it measured


def test_bench_step_rejects_a_bad_override_before_running():
    r = subprocess.run([sys.executable, "bench/step.py", "-c", "smoke", "rollout.num_generationz=4"],
                       check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "rollout.num_generationz" in r.stderr


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


@pytest.mark.slow
def test_bench_backends_times_torch_and_jax_on_one_config(tmp_path: Path):
    out = tmp_path / "backends.json"
    cmd = [sys.executable, "bench/backends.py", "-c", "smoke", "device=cpu", "rollout.max_new_tokens=8",
           "--warmup", "1", "--steps", "2", "--json", str(out)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    for side in ("torch", "jax"):
        s = result[side]
        assert len(s["step_times"]) == 2  # the warmup step is left out
        assert s["gen_time"] > 0 and s["update_time"] > 0 and s["step_time"] >= s["gen_time"]
        assert 0 < s["completion_len"] <= 8
    assert result["jax_speedup"]["step"] == pytest.approx(result["torch"]["step_time"] / result["jax"]["step_time"])
    assert "jax vs torch" in r.stdout


def test_bench_backends_refuses_a_config_the_jax_backend_cannot_run():
    r = subprocess.run([sys.executable, "bench/backends.py", "-c", "cpu-demo"], check=False, capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "last_layers" in r.stderr
