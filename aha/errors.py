"""Expected failures: each message names the problem and the fix. The CLI prints them in one
line and exits 2; anything else is a bug and keeps its traceback."""


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
