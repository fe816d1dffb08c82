"""Tasks: `get_task(name, **options)` returns a `Task`. Adding a task is one file plus one line in TASKS,
or no change here at all: `get_task("path/to/my_task.py:MyTask")` loads a user's own (tasks/user.py)."""

from __future__ import annotations

import importlib
from typing import Any

from aha.errors import ConfigError
from aha.preflight import check_task_options
from aha.tasks import user
from aha.tasks.base import Example, Messages, RewardFn, Task, prompt_prefill, reward_means

# name -> "module:Class". Imported lazily so that a task's optional dependencies (datasets, ...)
# are only needed when that task is used.
TASKS: dict[str, str] = {
    "gsm8k": "aha.tasks.gsm8k:GSM8K",
    "countdown": "aha.tasks.countdown:Countdown",
    "arith": "aha.tasks.arith:Arith",
}


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name` in TASKS, or a user's Task subclass named `path/to/file.py:Class`
    or `module:Class` (aha/tasks/user.py), built with `options` (a config's `task_options`).

    Raises:
        ConfigError: an unknown name (the message lists the known ones), or a user task that cannot
            be loaded or breaks the Task contract (tasks/user.py).
        TypeError: an option a built-in task's constructor does not take.
        ValueError: a bad option value (e.g. template="xml").
    """
    if name not in TASKS and user.is_user_spec(name):
        return user.load_user_task(name, **options)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}, "
                          "or your own as path/to/my_task.py:ClassName")
    module, cls = TASKS[name].split(":")
    task_cls = getattr(importlib.import_module(module), cls)
    return task_cls(**check_task_options(name, task_cls, options))  # a misspelt option: one line


__all__ = ["Example", "Messages", "RewardFn", "Task", "TASKS", "get_task", "prompt_prefill", "reward_means"]
