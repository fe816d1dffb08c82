"""Helpers shared by the tasks: pre-fills, prompt templates, splits, local data files. Reading
answers and numbers out of model text is answers.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aha.tasks.base import Example, Messages, prompt_prefill


def prefill_of(ex: Example) -> str:
    """The pre-fill of the example's prompt (`base.prompt_prefill`). Rewards judge
    `prefill_of(ex) + completion`, so a completion that continues a pre-filled `<think>` is scored
    as a whole. Deriving it from the prompt keeps rewards pure functions of (completion, example)
    with one source of truth."""
    return prompt_prefill(ex.prompt)


def check_template(template: str) -> None:
    if template not in ("base", "chat"):
        raise ValueError(f"template must be 'base' or 'chat', got {template!r}")


def templated(question: str, template: str, system: str, preamble: str, prefill: str) -> str | Messages:
    """A question as the model sees it: chat messages (system, user, a pre-filled assistant turn)
    for instruct models, or the R1-Zero text (preamble, "User: ...", "Assistant: " + pre-fill)
    for base models. `system` and `preamble` are the two templates' instructions."""
    if template == "chat":
        return [{"role": "system", "content": system}, {"role": "user", "content": question},
                {"role": "assistant", "content": prefill}]
    return f"{preamble}\nUser: {question}\nAssistant: {prefill}"


def check_split(split: str) -> None:
    """The tasks here have a train and a test split; anything else is a ValueError naming them."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def resolve_path(data: str | Path | dict[str, Any], split: str) -> Path:
    """`data` is one path used for every split, or a dict {"train": path, "test": path}."""
    if isinstance(data, dict):
        if split not in data:
            raise ValueError(f"data has no {split!r} entry; give a dict like {{'train': PATH, 'test': PATH}}")
        return Path(data[split])
    return Path(data)


def read_rows(path: str | Path, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a local JSONL (`.jsonl`/`.json`, one object a line) or Parquet file.

    A missing file -> FileNotFoundError naming it; missing columns -> ValueError naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with `datasets`; only needed for Parquet

        table = pq.read_table(path)
        _check_columns(path, table.column_names, columns)
        return table.select(list(columns)).to_pylist()
    if suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not a JSON object per line ({err})") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                _check_columns(path, row.keys(), columns, where=f" (line {lineno})")
                rows.append(row)
        return rows
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet")


def _check_columns(path: Path, have: Any, need: tuple[str, ...], where: str = "") -> None:
    missing = [c for c in need if c not in set(have)]
    if missing:
        raise ValueError(f"{path}{where}: missing column(s) {missing}; the file needs columns {list(need)}")
