"""Held out means held out (issue 23): a test split sharing prompts with the train split is said
loudly, with the count, when training evaluates on it and in `aha eval` (and recorded in its JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from aha import preflight
from aha.cli import main
from aha.tasks.base import Example, Task


class Overlapping(Task):
    name = "overlap"
    rewards = {"one": (lambda c, ex: 1.0, 1.0)}

    def __init__(self, shared: int = 3):
        self.shared = shared

    def examples(self, split):
        if split == "train":
            return [Example(f"t/{i}", f"problem {i}", None) for i in range(10)]
        return [Example(f"e/{i}", f"problem {i if i < self.shared else 100 + i}", None) for i in range(5)]

    def is_correct(self, completion, ex):
        return False

    def is_formatted(self, completion, ex):
        return False


def _cfg(eval_every):
    return SimpleNamespace(task="overlap", task_options={}, eval_every=eval_every, probe_every=0)


def test_training_that_evaluates_on_train_prompts_warns_with_the_count(capsys):
    preflight.train_examples(Overlapping(shared=3), _cfg(eval_every=5))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: 3 of the 5 test prompts of task overlap are also train prompts" in err
    assert "not held out" in err and "disjoint" in err


def test_disjoint_splits_or_no_eval_say_nothing(capsys):
    preflight.train_examples(Overlapping(shared=0), _cfg(eval_every=5))
    preflight.train_examples(Overlapping(shared=3), _cfg(eval_every=0))  # no eval: the test split is not reported
    assert capsys.readouterr().err == ""


def _gsm8k_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(n)))
    return path


def test_aha_eval_on_a_split_that_repeats_train_prompts_warns_and_records_it(tmp_path, capsys):
    train, test = _gsm8k_file(tmp_path / "train.jsonl", 6), _gsm8k_file(tmp_path / "test.jsonl", 4)
    out = tmp_path / "e.json"
    data = json.dumps({"train": str(train), "test": str(test)})
    assert main(["eval", "--model", "random:tiny-qwen2", "--task", "gsm8k", "--task-option", f"data={data}",
                 "--limit", "1", "--max-new-tokens", "2", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 of the 4 test prompts of task gsm8k are also train prompts" in err
    assert json.loads(out.read_text())["train_overlap"] == 4


def test_aha_eval_of_one_data_file_is_not_compared_with_itself(tmp_path, capsys):
    test = _gsm8k_file(tmp_path / "test.jsonl", 4)
    out = tmp_path / "e.json"
    assert main(["eval", "--model", "random:tiny-qwen2", "--task", "gsm8k", "--data", str(test), "--limit", "1",
                 "--max-new-tokens", "2", "--json", str(out)]) == 0
    assert "train prompts" not in capsys.readouterr().err and "train_overlap" not in json.loads(out.read_text())
