"""Tasks: `get_task(name, **options)` returns a `Task`. Adding a task is one file plus one line in TASKS."""

from __future__ import annotations

import importlib
from typing import Any

from aha.guards import check_task_options
from aha.tasks.base import Example, Messages, RewardFn, Task, prompt_prefill, reward_means

# name -> "module:Class". Imported lazily so that a task's optional dependencies (datasets, ...)
# are only needed when that task is used.
TASKS: dict[str, str] = {
    "gsm8k": "aha.tasks.gsm8k:GSM8K",
    "countdown": "aha.tasks.countdown:Countdown",
    "arith": "aha.tasks.arith:Arith",
}


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name` in TASKS, built with `options` (a config's `task_options`).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: an option the task's constructor does not take.
        ValueError: a bad option value (e.g. template="xml").
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    task_cls = getattr(importlib.import_module(module), cls)
    return task_cls(**check_task_options(name, task_cls, options))  # a misspelt option: one line


__all__ = ["Example", "Messages", "RewardFn", "Task", "TASKS", "get_task", "prompt_prefill", "reward_means"]
