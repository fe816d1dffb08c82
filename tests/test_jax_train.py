"""The JAX backend end to end on CPU: the CLI smoke run with a checkpoint and `--resume`, exact
resume on a task whose reward varies, the torch path loading a JAX checkpoint, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("jax")

from aha.cli import main  # noqa: E402
from aha.config import load_config  # noqa: E402
from aha.errors import ConfigError  # noqa: E402
from aha.log import read_jsonl  # noqa: E402

TIMING = {"step_time", "gen_time", "score_time", "update_time", "tokens_per_s"}
SMOKE = ["backend=jax", "model=random:tiny-qwen2", "tensorboard=false", "rollout.max_new_tokens=16"]


@pytest.mark.slow
def test_cli_smoke_run_checkpoint_and_resume(tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-c", "smoke", f"output_dir={out}", "max_steps=2", "save_every=1", *SMOKE]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    required = {"reward", "accuracy", "format_rate", "completion_len", "reflection_rate", "frac_zero_std", "kl",
                "entropy", "grad_norm", "lr", "step_time", "gen_time", "reward/answer", "clip_frac", "loss"}
    assert required <= rows[0].keys()
    ckpt = out / "checkpoints" / "step-2"
    assert json.loads((ckpt / "meta.json").read_text()) == {"step": 2, "complete": True, "backend": "jax"}
    for f in ("adapter_model.safetensors", "adapter_config.json", "optimizer.npz", "jax_state.json", "config.yaml"):
        assert (ckpt / f).is_file(), f
    # a second run into the same directory refuses instead of destroying it
    assert main(["train", "-c", "smoke", f"output_dir={out}", "max_steps=2", *SMOKE]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume latest continues from step 2
    assert main(["train", "-c", "smoke", f"output_dir={out}", "max_steps=3", "save_every=1", *SMOKE,
                 "--resume"]) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert "resumed from" in capsys.readouterr().err
    # resuming the finished run says so and changes no byte, as on the torch backend
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main(["train", "-c", "smoke", f"output_dir={out}", "max_steps=3", *SMOKE, "--resume"]) == 0
    assert "already reached max_steps=3; nothing to train" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    # the torch path (aha eval / aha play) loads the JAX run's adapter onto the same base
    from aha.trained import load_trained

    policy = load_trained(checkpoint=out)
    assert policy.finetune == "lora" and hasattr(policy.model, "peft_config")


def _toy(out: Path, *extra: str):
    return load_config("smoke", [f"output_dir={out}", "task=toy", *SMOKE, "rollout.max_new_tokens=12", "lr=0.01",
                                 "probe_every=2", *extra])


@pytest.mark.slow
def test_resume_gives_the_same_metrics_as_a_straight_run(tmp_path: Path, toy_task):
    import aha.jax.train as jt

    straight = jt.train(_toy(tmp_path / "a", "max_steps=4", "save_every=2"))
    split = tmp_path / "b"
    jt.train(_toy(split, "max_steps=2", "save_every=2"))
    jt.train(_toy(split, "max_steps=4", "save_every=2"), resume="latest")
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 for r in a)  # the toy reward varies: the adapters really learn
    for ra, rb in zip(a, b):
        for k in ra.keys() - TIMING:
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
            else:
                assert rb[k] == ra[k], (ra["step"], k)


@pytest.mark.parametrize("override,fix", [
    ("finetune=full", "finetune=lora"), ("optimizer=adamw8bit", "optimizer=adamw"),
    ("rollout.engine=vllm", "rollout.engine"), ("device=cuda:0", "device=auto"), ("dtype=float16", "bfloat16"),
    ("lora.dropout=0.1", "lora.dropout=0"), ("lora.last_layers=2", "lora.last_layers=0"),
    ("rollout.batch_size=4", "rollout.batch_size=0"), ("lora.target_modules=[lm_head]", "all-linear"),
])
def test_config_rejects_what_jax_does_not_do_and_names_the_fix(override, fix):
    with pytest.raises(ConfigError, match=fix.replace("[", r"\[")):
        cfg = load_config("smoke", ["backend=jax", override])
        from aha.jax.lora import target_names  # target names are checked where the model's names are known

        target_names(cfg.lora.target_modules)
    with pytest.raises(ConfigError, match="backend"):
        load_config("smoke", ["backend=tpu"])


def test_tpu_presets_load():
    for name in ("tpu-v3-8", "tpu-v2-8"):
        cfg = load_config(name)
        assert cfg.backend == "jax" and cfg.model == "google/gemma-2-2b" and cfg.task == "countdown"
        assert cfg.prompts_per_step * cfg.rollout.num_generations % 8 == 0  # splits over 8 cores


def test_micro_batch_rows_fit_the_budget_and_the_devices():
    from aha.jax.train import micro_batch_rows

    assert micro_batch_rows(64, 100, 1600, 8) == 16
    assert micro_batch_rows(64, 100, 100, 8) == 8  # never fewer rows than devices
    assert micro_batch_rows(48, 10, 10_000, 1) == 48
    assert micro_batch_rows(48, 10, 250, 1) == 24  # divides the batch: fixed shapes


def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_written(tmp_path: Path, capsys, monkeypatch):
    """As on the torch backend (tests/test_reliability_context.py): the longest prompt's tokens plus
    rollout.max_new_tokens past the model's max positions (config.json's, 2048 here) is one line naming
    the budget to use, before the run directory exists - not a rollout that runs off the context."""
    import aha.jax.train
    from aha.tasks.base import Example, Task

    class LongPrompt(Task):
        name = "long"
        rewards = {"zero": (lambda completion, ex: 0.0, 1.0)}

        def examples(self, split):
            return [Example(f"l/{split}/{i}", f"prompt {i}:", None) for i in range(3)] + [
                Example(f"l/{split}/long", "count: " + " ".join(str(i % 10) for i in range(1000)), None)]

        def is_correct(self, completion, ex):
            return False

        def is_formatted(self, completion, ex):
            return False

    monkeypatch.setattr(aha.jax.train, "get_task", lambda name, **o: LongPrompt())
    out = tmp_path / "run"
    assert main(["train", "-c", "smoke", f"output_dir={out}", *SMOKE, "rollout.max_new_tokens=2000"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aha: error: the longest train prompt (l/train/long) is "), lines
    assert "past the model's context of 2048 positions: lower rollout.max_new_tokens to " in lines[0], lines
    longest = int(lines[0].split(" is ")[1].split()[0])
    assert 1000 < longest < 2048 and f"to {2048 - longest} or less" in lines[0], lines
    assert not out.exists()
