"""Tasks from the user's own file or module: the README example run as written, and one-line
errors for each way a class can break the Task contract."""

from __future__ import annotations

import json
import re
import shlex
import sys
import textwrap

import pytest

from aha.cli import main
from aha.errors import ConfigError, DataError
from aha.tasks import get_task
from conftest import REPO

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (4, 4), (10, 7), (1, 1)]]


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Add your own task")
    return text[start:text.index("\n## ", start)]


def test_readme_task_example_trains_from_a_file_outside_the_package(tmp_path, monkeypatch):
    """The README's example file and its local-file command, as written, on the smoke preset."""
    import datasets

    section = readme_section()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "my_task.py").write_text(code)
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    command = next(line for line in section.splitlines() if line.startswith("aha train") and "path: json" in line)
    argv = shlex.split(command.split("#")[0])[1:]
    argv[argv.index("-c") + 1] = "smoke"  # the tiny random model instead of the CPU demo's
    monkeypatch.chdir(tmp_path)  # the README's relative paths: my_task.py, train.jsonl, test.jsonl
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    rc = main(argv + ["output_dir=run", "max_steps=2", "save_every=0", "tensorboard=false", "eval_every=2",
                      "eval_limit=2", "rollout.max_new_tokens=8", "probe_every=0"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # Its reward is logged like a built-in task's, and the held-out eval ran on its test split.
    assert all("reward/correct" in r and "accuracy" in r and "format_rate" in r for r in steps)
    assert "eval/accuracy" in rows[0] and rows[0]["eval/n"] == 2
    done = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    assert json.loads(done[0])["prompt_id"].startswith("qa/train/")


GOOD = """
from aha.tasks import Example, Task

def exact(completion, ex):
    return float(completion.strip() == ex.target)

class Good(Task):
    name = "good"
    rewards = {"exact": (exact, 1.0)}
    def __init__(self, n=2):
        self.n = n
    def examples(self, split):
        return [Example(id=f"good/{split}/{i}", prompt=f"{i}+{i}=", target=str(2 * i)) for i in range(self.n)]
    def is_correct(self, completion, ex):
        return exact(completion, ex) == 1.0
    def is_formatted(self, completion, ex):
        return True
"""


def write(tmp_path, body: str, name: str = "task_file.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(GOOD) + textwrap.dedent(body))
    return path


def test_file_and_module_specs_load_the_class(tmp_path, monkeypatch):
    path = write(tmp_path, "")
    task = get_task(f"{path}:Good", n=3)
    assert task.name == "good" and len(task.examples("train")) == 3
    assert task.score("2", task.examples("test")[1]) == (1.0, {"exact": 1.0})
    monkeypatch.chdir(tmp_path)
    assert get_task("task_file.py:Good").n == 2  # relative to the current directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert get_task("task_file:Good").n == 2  # a module name: the current directory is searched last


BROKEN = {
    "no rewards": ("class Bad(Good):\n    rewards = {}", "has no rewards"),
    "rewards not a dict": ("class Bad(Good):\n    rewards = [exact]", "rewards must be a dict"),
    "reward not callable": ("class Bad(Good):\n    rewards = {'exact': ('exact', 1.0)}", "'exact' is not callable"),
    "reward not a pair": ("class Bad(Good):\n    rewards = {'exact': exact}", "(function, weight) pair"),
    "weight not a number": ("class Bad(Good):\n    rewards = {'exact': (exact, '1')}", "weight must be a number"),
    "examples not a list": ("class Bad(Good):\n    def examples(self, split):\n        return (e for e in [])",
                            "returned a generator, not a list of Example"),
    "examples of dicts": ("class Bad(Good):\n    def examples(self, split):\n        return [{'prompt': 'x'}]",
                          "[0] is a dict, not an Example"),
    "no examples": ("class Bad(Good):\n    def examples(self, split):\n        return []", "returned no examples"),
    "examples not defined": ("class Bad(Task):\n    rewards = Good.rewards\n    is_correct = Good.is_correct\n"
                             "    is_formatted = Good.is_formatted", "does not define examples"),
    "bad prompt": ("class Bad(Good):\n    def examples(self, split):\n        return [Example('a', 3, None)]",
                   "prompt is a int"),
    "no is_formatted": ("class Bad(Task):\n    rewards = Good.rewards\n    examples = Good.examples\n"
                        "    is_correct = Good.is_correct",
                        "does not define is_formatted"),
    "not a Task": ("class Bad:\n    rewards = Good.rewards", "not a subclass of aha.tasks.Task"),
    "bad option": ("class Bad(Good):\n    pass", "failed: "),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_contract_breaches_are_one_line_errors(case, tmp_path):
    body, message = BROKEN[case]
    path = write(tmp_path, body)
    options = {"m": 1} if case == "bad option" else {}
    with pytest.raises(ConfigError) as err:
        get_task(f"{path}:Bad", **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_class_or_module_and_failing_data(tmp_path, monkeypatch):
    path = write(tmp_path, "class Loader(Good):\n    def examples(self, split):\n"
                           "        raise OSError('no such data set\\nsecond line')")
    cases = {f"{tmp_path}/nope.py:Good": "not found", f"{path}:Nope": "has no 'Nope' (Task subclasses there: "
             "Good, Loader)", f"{path}": "names no class", "no_such_module_xyz:Task": "no module 'no_such_module_xyz'",
             "unknown": "or your own as path/to/my_task.py:ClassName"}
    for spec, message in cases.items():
        with pytest.raises(ConfigError) as err:
            get_task(spec)
        assert message in str(err.value), (spec, str(err.value))
    with pytest.raises(DataError, match=r"examples\('train'\) raised OSError: no such data set$"):
        get_task(f"{path}:Loader")
    (tmp_path / "syntax.py").write_text("class Broken(:\n")
    with pytest.raises(ConfigError, match="importing .* failed: SyntaxError"):
        get_task(f"{tmp_path}/syntax.py:Broken")


def test_cli_reports_a_broken_task_before_loading_the_model(tmp_path, capsys):
    path = write(tmp_path, "class Bad(Good):\n    rewards = {'exact': (None, 1.0)}")
    rc = main(["train", "-c", "smoke", f"task={path}:Bad", f"output_dir={tmp_path}/run", "task_options={}",
               "model=random:tiny-qwen2"])  # a model that passes preflight (aha/preflight.py) but is never loaded
    err = capsys.readouterr().err
    assert rc == 2 and "reward 'exact' is not callable" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written
