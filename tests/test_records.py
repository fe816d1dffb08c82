"""What a step reports (aha/records.py): the metrics built from hand-made records, and the same
metric keys from both backends' loops, so `aha report` and a reader of metrics.jsonl see one schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from aha.config import load_config
from aha.log import read_jsonl
from aha.records import CompletionRecord, StepTimes, UpdateStats, rollout_metrics, step_metrics


def _record(reward: float, correct: bool, length: int, text: str = "x") -> CompletionRecord:
    return CompletionRecord("p", text, reward, {"a": reward}, correct, formatted=not correct, length=length,
                            truncated=length >= 4, answer=text.strip())


def test_step_metrics_from_hand_made_records():
    records = [_record(1.0, True, 2, "Wait, no"), _record(0.0, False, 4)]
    m = rollout_metrics(records)
    assert m["reward"] == 0.5 and m["reward_std"] == pytest.approx(2 ** -0.5) and m["reward/a"] == 0.5
    assert (m["accuracy"], m["format_rate"], m["truncated_rate"], m["reflection_rate"]) == (0.5, 0.5, 0.5, 0.5)
    assert (m["completion_len"], m["completion_len_max"]) == (3.0, 4.0)
    stats = UpdateStats.skipped()
    row = step_metrics(records, 0.25, stats, 1e-3, StepTimes(gen=2.0, score=0.5, update=1.5), epoch=1, G=2)
    assert row["step_time"] == 4.0 and row["tokens_per_s"] == 3.0 and row["frac_zero_std"] == 0.25
    assert stats.metrics().items() <= row.items() and row["update_skipped"] == 1.0
    assert row["nonfinite_skipped"] == 0.0 and "nonfinite" not in row
    assert row["answer_collapse"] == 0.0  # one group of two different answers
    assert records[0].logged() == {"prompt_id": "p", "completion": "Wait, no", "reward": 1.0, "rewards": {"a": 1.0},
                                   "correct": True, "length": 2}


def test_answer_collapse_counts_groups_with_one_final_answer():
    from aha.records import answer_collapse, completion_records
    from aha.tasks import Example, Task

    same = ["x\n</think>\n<answer>\n7\n</answer>", "y</think><answer> 7 </answer>"]  # one answer, other text
    differ = ["<answer>7</answer>", "<answer>8</answer>"]
    no_tags_same, no_tags_differ = ["number", " number\n"], ["number", "seven"]
    texts = same + differ + no_tags_same + no_tags_differ
    ex = Example(id="e", prompt="q", target=None)
    task = Task()
    task.is_correct = task.is_formatted = lambda completion, ex: False  # not read by answer_collapse
    records = completion_records(task, [ex] * len(texts), texts, [(0.0, {})] * len(texts), [1] * len(texts),
                                 [False] * len(texts))
    assert answer_collapse(records, 2) == 0.5
    assert answer_collapse(records[:2], 2) == 1.0 and answer_collapse(records[2:4], 2) == 0.0


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
        step0, row = read_jsonl(out / "metrics.jsonl")  # eval_every > 0: the untrained policy at step 0
        assert step0["step"] == 0 and "eval/accuracy_lenient" in step0
        completions = read_jsonl(out / "completions.jsonl")
        keys[name] = (list(step0), list(row), sorted({k for c in completions for k in c}))
    assert keys["torch"] == keys["jax"]
    assert {"eval/accuracy", "loss", "reward/answer", "update_skipped", "answer_collapse"} <= set(keys["torch"][1])
