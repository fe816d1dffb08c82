"""Prompts past the model's context (issue 23): longest prompt tokens + rollout.max_new_tokens above the
model's max positions is one line naming the prompt's length and the limit, before anything is
written (it used to be an IndexError mid-rollout, or an out-of-memory kill)."""

from __future__ import annotations

from aha.tasks.base import Example
from reliability_kit import SMOKE, RewardTask, refused, use_task


class LongPrompts(RewardTask):
    def __init__(self, words: int):
        super().__init__()
        self.words = words

    def examples(self, split):
        short = [Example(f"r/{split}/{i}", f"{split} prompt {i}:", None) for i in range(15)]
        return [*short, Example(f"r/{split}/long", "count: " + " ".join(str(i % 10) for i in range(self.words)), None)]


def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    use_task(monkeypatch, LongPrompts(words=3000))
    out = tmp_path / "run"
    line = refused(capsys, [*SMOKE, f"output_dir={out}"], "the longest train prompt (r/train/long) is ",
                   "past the model's context of 2048 positions", "shorten or drop the long prompts")
    assert not out.exists(), line


def test_a_prompt_that_fits_only_without_the_completion_budget_names_the_budget_to_use(tmp_path, capsys, monkeypatch):
    use_task(monkeypatch, LongPrompts(words=1000))
    out = tmp_path / "run"
    line = refused(capsys, [*SMOKE, f"output_dir={out}", "rollout.max_new_tokens=2000"],
                   "with rollout.max_new_tokens=2000 that is", "lower rollout.max_new_tokens to ")
    longest = int(line.split(" is ")[1].split()[0])
    assert f"lower rollout.max_new_tokens to {2048 - longest} or less" in line and not out.exists()


def test_aha_eval_refuses_the_same_naming_its_own_option(tmp_path, capsys):
    import json

    data = tmp_path / "long.jsonl"
    question = "Add these: " + " + ".join(str(i % 10) for i in range(300)) + "?"
    data.write_text(json.dumps({"question": question, "answer": "#### 1"}) + "\n")
    line = refused(capsys, ["eval", "--model", "random:tiny-qwen2", "--task", "gsm8k", "--data", str(data),
                            "--max-new-tokens", "2000", "--json", str(tmp_path / "e.json")],
                   "the longest test prompt (gsm8k/test/0) is ", "with --max-new-tokens 2000 that is",
                   "lower --max-new-tokens to ")
    assert not (tmp_path / "e.json").exists(), line
