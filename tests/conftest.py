"""Shared test helpers: a toy task whose reward varies even for a random model (so updates
really change weights), and the location of the GSM8K copy beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aha.tasks.base import Example, Task

REPO = Path(__file__).resolve().parents[1]


class GSM8KMissing(Exception):
    """Neither a local GSM8K copy nor the hub: the one line that says both ways."""


def find_gsm8k(hub_dir: Path) -> Path:
    """A directory holding GSM8K's train.jsonl and test.jsonl (question/answer rows): AHA_GSM8K_DIR,
    else ../shared/data/gsm8k beside the clone, else the hub's openai/gsm8k (config main) through
    `datasets`, written into `hub_dir`. Raises GSM8KMissing, one line naming both ways."""
    import json

    from aha.errors import DataError
    from aha.tasks.gsm8k import HUB_CONFIG, HUB_ID, _load_hub

    local = Path(os.environ.get("AHA_GSM8K_DIR") or REPO.parent / "shared" / "data" / "gsm8k")
    if all((local / f"{split}.jsonl").is_file() for split in ("train", "test")):
        return local
    try:
        rows = {split: _load_hub(split) for split in ("train", "test")}
    except DataError as err:
        cause = err.__cause__ or err
        raise GSM8KMissing(
            f"GSM8K data not found: no train.jsonl and test.jsonl in {local} (put a copy there or set "
            f"AHA_GSM8K_DIR=DIR), and the hub copy {HUB_ID} ({HUB_CONFIG}) could not be loaded through "
            f"`datasets`: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from err
    hub_dir.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        (hub_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows), encoding="utf-8")
    return hub_dir


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory) -> Path:
    """GSM8K for the tests (`find_gsm8k`), looked up once per session. Missing: every test that needs
    it fails with the same one line and no traceback (not skipped: a skip would hide it)."""
    try:
        return find_gsm8k(tmp_path_factory.getbasetemp() / "gsm8k-hub")
    except GSM8KMissing as err:
        message = str(err)
    pytest.fail(message, pytrace=False)  # outside the except: no chained exceptions printed either


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
