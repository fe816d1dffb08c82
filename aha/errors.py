"""Expected failures: each message names the problem and the fix. The CLI prints them in one
line and exits 2; anything else is a bug and keeps its traceback."""

import difflib
from collections.abc import Iterable


class AhaError(Exception):
    """Base of the expected failures."""


class ConfigError(AhaError, ValueError):
    """A bad preset, key or value."""


class ModelError(AhaError, RuntimeError):
    """A model that cannot be loaded here."""


class CheckpointError(AhaError, RuntimeError):
    """A checkpoint that is missing, partial, corrupt, or for another model."""


class DataError(AhaError, RuntimeError):
    """A data set that cannot be loaded (e.g. the hub without network)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" naming the choice closest to a misspelt `word` (difflib's ratio), or ""
    when none is close: the hint a refusal of an unknown name appends."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
