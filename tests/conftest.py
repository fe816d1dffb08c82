"""Shared test helpers: a toy task whose reward varies even for a random model (so updates
really change weights), and the location of the GSM8K copy beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aha.tasks.base import Example, Task

REPO = Path(__file__).resolve().parents[1]


def gsm8k_dir() -> Path:
    d = Path(os.environ.get("AHA_GSM8K_DIR", REPO.parent / "shared" / "data" / "gsm8k"))
    assert (d / "test.jsonl").exists(), f"GSM8K copy not found at {d}; set AHA_GSM8K_DIR"
    return d


def letter_fraction(completion: str, ex: Example) -> float:
    return sum(c.isalpha() for c in completion) / max(len(completion), 1)


def has_digit(completion: str, ex: Example) -> float:
    return float(any(c.isdigit() for c in completion))


class ToyTask(Task):
    """Prompts 'p0'..'pN'; rewards: fraction of letters, and 'contains a digit'."""

    name = "toy"
    rewards = {"letters": (letter_fraction, 1.0), "digit": (has_digit, 0.5)}

    def __init__(self, **options):  # the presets' task_options are another task's: ignored
        pass

    def examples(self, split: str):
        n = 16 if split == "train" else 4
        return [Example(id=f"toy/{split}/{i}", prompt=f"{split} prompt {i}:", target=None) for i in range(n)]

    def is_correct(self, completion: str, ex: Example) -> bool:
        return letter_fraction(completion, ex) > 0.5

    def is_formatted(self, completion: str, ex: Example) -> bool:
        return has_digit(completion, ex) > 0


class EqualRewardTask(ToyTask):
    """Every completion gets the same reward: no group ever carries a signal."""

    name = "flat"
    rewards = {"flat": (lambda completion, ex: 1.0, 1.0)}


@pytest.fixture
def toy_task(monkeypatch):
    """Register ToyTask as `task=toy` in the tasks table, as a new task file would be."""
    from aha.tasks import TASKS

    monkeypatch.setitem(TASKS, "toy", "conftest:ToyTask")
    return ToyTask()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only when the -m expression names them (`pytest -m cuda`: bench/gpu_check.py on a
    GPU, and its CPU rehearsal); otherwise they are deselected - counted as such, never skipped - since CI and
    the CPU machines have no GPU. A hook rather than addopts' `-m "not cuda"`, which any other -m would replace."""
    if "cuda" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("cuda")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
