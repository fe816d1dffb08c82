"""Helpers shared by the tasks: pre-fills, answer extraction, numbers in answers, local data files.

Everything here runs on model output of any size, so it uses `str.find`/`rfind`/`count` (linear
time, C speed) instead of regexes with lazy `.*?`, which can take quadratic time on crafted text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aha.tasks.base import Example, Messages, prompt_prefill

OPEN, CLOSE = "<answer>", "</answer>"

# Longest answer text we look at, and longest number in it: real answers are a few characters;
# anything longer is not a number and is rejected before any parsing (1 MB of digits costs nothing).
MAX_ANSWER_CHARS = 1000
MAX_NUMBER_CHARS = 100
# sign | "$" (then spaces allowed) | sign | integer part | fraction | one trailing "."; see parse_number.
_NUMBER = re.compile(
    r"(?P<sign>[-+\u2212]?)"
    r"(?:\$[ \t]*(?P<sign2>[-+\u2212]?))?"
    r"(?P<int>[1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+)?"  # thousands groups of exactly three digits
    r"(?:\.(?P<frac>[0-9]+))?"
    r"\.?",
    re.ASCII,
)


def parse_number(text: str) -> str | None:
    """`text` as a plain decimal numeral ("-3", "1000", "18.5", "0.5"), or None if it is not one number.

    The rules (README, "Tasks"), chosen so that a text counts as a number only when every reader
    would read that number:
    - surrounding whitespace is ignored;
    - a sign: "-", the Unicode minus sign U+2212 (both mean minus) or "+", touching what follows
      ("- 3" is not -3); en and em dashes are not minus signs;
    - one "$" before the digits, before or after the sign ("$18", "-$18", "$-18"), and spaces
      after it ("$ 18");
    - a comma only as a thousands separator: between groups of exactly three digits after a
      first group of 1-3 digits not starting with 0 ("1,234", "12,345,678"). "1,2", "12,34",
      "1234,567", "0,5" and "1,,234" are not numbers (not 12, 1234, ...);
    - a decimal point with digits after it ("18.5", ".5" = 0.5), and one trailing "." (the end
      of a sentence: "18." is 18);
    - nothing else: no units or words ("18 dollars", "18%"), no exponent, no fractions ("1/2"),
      no spaces, underscores or apostrophes inside the number, only ASCII digits ("１８" is not 18).
    """
    if len(text) > MAX_ANSWER_CHARS:
        return None
    text = text.strip()
    m = _NUMBER.fullmatch(text) if len(text) <= MAX_NUMBER_CHARS else None
    if m is None or (m["int"] is None and m["frac"] is None) or (m["sign"] and m["sign2"]):
        return None
    sign = "-" if (m["sign"] or m["sign2"]) in ("-", "\u2212") else ""
    whole = (m["int"] or "0").replace(",", "")
    return sign + whole + (f".{m['frac']}" if m["frac"] is not None else "")


def prefill_of(ex: Example) -> str:
    """The pre-fill of the example's prompt (`base.prompt_prefill`). Rewards judge
    `prefill_of(ex) + completion`, so a completion that continues a pre-filled `<think>` is scored
    as a whole. Deriving it from the prompt keeps rewards pure functions of (completion, example)
    with one source of truth."""
    return prompt_prefill(ex.prompt)


def last_answer(text: str) -> str | None:
    """Content of the last complete `<answer>...</answer>` block (newlines allowed), else None.

    That is the last `<answer>` that has a `</answer>` after it, up to the first `</answer>`
    after it. An unclosed trailing `<answer>` (a truncated completion) is ignored, so an earlier
    closed block still counts. Linear time whatever the text.
    """
    close = text.rfind(CLOSE)
    if close < 0:
        return None
    start = text.rfind(OPEN, 0, close)
    if start < 0:
        return None
    start += len(OPEN)
    return text[start : text.find(CLOSE, start)]


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
