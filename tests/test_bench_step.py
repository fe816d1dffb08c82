"""The benchmarks end to end on the smoke preset: bench/step.py (and that it times the loop's own step),
bench/backends.py, bench/rewards.py. Where TRL is installed (`pip install 'aha[bench]'`) the step
bench runs TRL's side too; CI installs only '.[dev]', so there it checks aha's side alone."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_step_times_the_function_aha_train_loops_over(tmp_path: Path, monkeypatch):
    """bench/step.py calls `grpo_step` on a `build_learner` learner, and `train()` runs one
    `grpo_step` per step: the benchmark times what `aha train` runs, not a copy of it."""
    import aha.train

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import step as bench_step

    assert bench_step.grpo_step is aha.train.grpo_step and bench_step.build_learner is aha.train.build_learner
    calls = []
    real = aha.train.grpo_step
    monkeypatch.setattr(aha.train, "grpo_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    from aha.config import load_config

    aha.train.train(load_config("smoke", [f"output_dir={tmp_path}", "max_steps=2", "save_every=0", "probe_every=0",
                                          "tensorboard=false", "rollout.max_new_tokens=4"]))
    assert len(calls) == 2


def test_bench_rewards_times_every_reward_on_the_hostile_texts():
    r = subprocess.run([sys.executable, "bench/rewards.py"], check=False, capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: over budget on this machine, which is not a failure here
    assert "reward calls, slowest" in r.stdout and "countdown solve" in r.stdout
