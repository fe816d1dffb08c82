"""The newcomer frictions of issue 23 that have a cheap fix: each one's behaviour, as a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aha.cli import main
from aha.cli.commands import _file_word
from aha.config import ConfigError, load_config
from reliability_kit import SMOKE

REPO = Path(__file__).resolve().parents[1]


def test_eval_json_name_of_a_task_file_has_no_folders_or_colon():
    assert _file_word("/abs/path/my_task.py:MyTask") == "my_task.MyTask"
    assert _file_word("gsm8k") == "gsm8k" and "/" not in _file_word("a/b:c") and ":" not in _file_word("a/b:c")


def test_lr_rate_suggests_lr():
    with pytest.raises(ConfigError, match=r"did you mean lr\?"):
        load_config("smoke", ["lr_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"did you mean lr_schedule\?"):
        load_config("smoke", ["lr_schedul=cosine"])


def test_task_help_lists_every_task_and_the_file_form():
    from aha.tasks import TASKS

    out = subprocess.run([sys.executable, "-m", "aha", "eval", "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=120).stdout
    assert all(name in out for name in TASKS) and "my_task.py:ClassName" in out


def test_a_relative_task_file_is_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "my_task.py").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", ["task=my_task.py:Mine"])
    assert cfg.task == f"{tmp_path / 'my_task.py'}:Mine"


def test_resuming_a_finished_run_does_not_also_say_run_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*SMOKE, f"output_dir={run}", "max_steps=1"]) == 0
    capsys.readouterr()
    assert main([*SMOKE, f"output_dir={run}", "max_steps=1", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "already reached max_steps=1" in err and "run written" not in err


def test_the_model_card_code_runs_as_written_from_anywhere(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main([*SMOKE, f"output_dir={run}", "max_steps=1"]) == 0
    out = tmp_path / "exports" / "m"
    assert main(["export", str(run), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0].replace("max_new_tokens=256", "max_new_tokens=2")
    assert "[...]" not in code and f"from_pretrained({str(out)!r})" in code
    monkeypatch.chdir(tmp_path)  # not the export's parent: the card names the --out path itself
    exec(compile(code, "README.md", "exec"), {})
