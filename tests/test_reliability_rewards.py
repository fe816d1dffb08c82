"""A reward that raises is named (issue 23): the reward, the step, the example and a short repr of the
completion, in one line on both backends and in `aha eval`; AHA_DEBUG=1 shows the traceback."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from aha.cli import main
from aha.tasks.named_failures import RewardError
from reliability_kit import SMOKE, RewardTask, refused, use_task


def boom(completion, ex):
    return {"a": 1.0}[completion[:0] + "missing"]  # a KeyError: used to end in a traceback into this file


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_raising_reward_is_one_line_naming_reward_step_and_completion(tmp_path, capsys, monkeypatch, backend):
    if backend == "jax":
        if importlib.util.find_spec("jax") is None:
            pytest.skip("jax is not installed")
        import aha.jax.train

        monkeypatch.setattr(aha.jax.train, "get_task", lambda name, **o: RewardTask(boom=boom))
    use_task(monkeypatch, RewardTask(boom=boom))
    line = refused(capsys, [*SMOKE, f"output_dir={tmp_path / 'run'}", f"backend={backend}", "probe_every=0"],
                   "reward 'boom' of task rtask raised KeyError: 'missing' at step 1 on example r/train/",
                   "completion '", "AHA_DEBUG=1", after_steps=True)
    assert "Traceback" not in line


def test_aha_debug_shows_the_traceback(tmp_path, monkeypatch):
    use_task(monkeypatch, RewardTask(boom=boom))
    monkeypatch.setenv("AHA_DEBUG", "1")
    with pytest.raises(RewardError) as err:
        main([*SMOKE, f"output_dir={tmp_path / 'run'}", "probe_every=0"])
    assert isinstance(err.value.__cause__, KeyError)


def test_aha_eval_names_a_raising_judge(tmp_path, capsys):
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent("""
        from aha.tasks.base import Example, Task

        class Raising(Task):
            name = "raising"
            rewards = {"one": (lambda c, ex: 1.0, 1.0)}
            def __init__(self, **options): pass
            def examples(self, split):
                return [Example(f"x/{split}/0", f"{split}: 2 + 2 =", "4")]
            def is_correct(self, completion, ex):
                raise ZeroDivisionError("my grader divided by zero")
            def is_formatted(self, completion, ex):
                return True
    """))
    refused(capsys, ["eval", "--model", "random:tiny-qwen2", "--task", f"{path}:Raising", "--limit", "1",
                     "--max-new-tokens", "2", "--json", str(tmp_path / "e.json")],
            "is_correct() of task raising raised ZeroDivisionError: my grader divided by zero on example x/test/0",
            after_steps=True)  # eval's progress line comes first
    assert not (tmp_path / "e.json").exists()
