"""What a step reports (aha/records.py): the metrics built from hand-made records, and the same
metric keys from both backends' loops, so `aha report` and a reader of metrics.jsonl see one schema."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from aha.config import load_config
from aha.log import read_jsonl
from aha.records import CompletionRecord, StepTimes, UpdateStats, rollout_metrics, step_metrics


def _record(reward: float, correct: bool, length: int, text: str = "x") -> CompletionRecord:
    return CompletionRecord("p", text, reward, {"a": reward}, correct, formatted=not correct, length=length,
                            truncated=length >= 4)


def test_step_metrics_from_hand_made_records():
    records = [_record(1.0, True, 2, "Wait, no"), _record(0.0, False, 4)]
    m = rollout_metrics(records)
    assert m["reward"] == 0.5 and m["reward_std"] == pytest.approx(2 ** -0.5) and m["reward/a"] == 0.5
    assert (m["accuracy"], m["format_rate"], m["truncated_rate"], m["reflection_rate"]) == (0.5, 0.5, 0.5, 0.5)
    assert (m["completion_len"], m["completion_len_max"]) == (3.0, 4.0)
    stats = UpdateStats.skipped()
    row = step_metrics(records, 0.25, stats, 1e-3, StepTimes(gen=2.0, score=0.5, update=1.5), epoch=1)
    assert row["step_time"] == 4.0 and row["tokens_per_s"] == 3.0 and row["frac_zero_std"] == 0.25
    assert asdict(stats).items() <= row.items() and row["update_skipped"] == 1.0
    assert records[0].logged() == {"prompt_id": "p", "completion": "Wait, no", "reward": 1.0, "rewards": {"a": 1.0},
                                   "correct": True}


@pytest.mark.slow
def test_both_backends_write_the_same_metric_keys(tmp_path: Path):
    pytest.importorskip("jax")
    from aha.jax.train import train as train_jax
    from aha.train import train as train_torch

    common = ["model=random:tiny-qwen2", "device=cpu", "tensorboard=false", "rollout.max_new_tokens=8",
              "max_steps=1", "save_every=0", "eval_every=1", "eval_limit=2", "probe_every=1",
              "log_completions_every=1"]
    keys = {}
    for name, run in (("torch", train_torch), ("jax", train_jax)):
        out = run(load_config("smoke", [f"output_dir={tmp_path / name}", f"backend={name}", *common]))
        (row,) = read_jsonl(out / "metrics.jsonl")
        completions = read_jsonl(out / "completions.jsonl")
        keys[name] = (list(row), sorted({k for c in completions for k in c}))
    assert keys["torch"] == keys["jax"]
    assert {"eval/accuracy", "loss", "reward/answer", "update_skipped"} <= set(keys["torch"][0])
