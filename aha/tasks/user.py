"""Tasks from the user's own code: `task=path/to/my_task.py:MyTask` or `task=my_pkg.tasks:MyTask`.

`load_user_task(spec, **options)` imports the file (or module), instantiates the class with the
task options, and checks the contract before anything expensive happens (the trainer calls
`get_task` before it loads the model): a `Task` subclass with a non-empty `rewards` dict of
`name -> (callable, number)`, its own `is_correct` and `is_formatted`, and `examples("train")` /
`examples("test")` that return a non-empty sequence of `Example`, and `stop_strings` (if set) a
tuple of non-empty strings. Every breach is a one-line
`ConfigError` naming what to fix. The rewards are then logged as `reward/<name>` like any
built-in task's; the core never learns that the task came from outside the package.

A file is imported under a private module name and is not added to `sys.path`; a
`module.path:Class` is imported normally, with the current directory searched last.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aha.errors import AhaError, ConfigError, DataError
from aha.tasks.base import Example, Task

SPLITS = ("train", "test")


def is_user_spec(name: str) -> bool:
    """Whether a task name points at user code (`file.py:Class`, `module:Class`, or a `.py` file)."""
    return ":" in name or name.endswith(".py")


def load_user_task(spec: str, **options: Any) -> Task:
    """The task class named by `spec`, instantiated with `options` and checked against the contract.

    Args:
        spec: `path/to/file.py:ClassName` (a path relative to the current directory, or absolute)
            or `package.module:ClassName`.
        **options: keyword arguments for the class's constructor (the config's `task_options`).

    Returns:
        The task instance.

    Raises:
        ConfigError: the file, module or class cannot be found or imported, the class is not a
            `Task`, its constructor refuses the options, or it breaks the contract.
        DataError: `examples(split)` raised while loading its data.
    """
    cls = load_task_class(spec)
    try:
        task = cls(**options)
    except TypeError as e:  # an option the constructor does not take (or a missing one)
        raise ConfigError(f"task {spec!r}: {cls.__name__}({_fmt_options(options)}) failed: {e}; "
                          "set task_options to what its __init__ accepts") from e
    check_task(task, spec)
    return task


def load_task_class(spec: str) -> type[Task]:
    """Import `spec` (`file.py:Class` or `module:Class`) and return the class; see `load_user_task`."""
    where, sep, attr = spec.rpartition(":")
    if not sep:
        where, attr = spec, ""
    if not attr or not attr.isidentifier():
        raise ConfigError(f"task {spec!r} names no class: write {where or 'my_task.py'}:ClassName "
                          "(the Task subclass to use)")
    if not where:
        raise ConfigError(f"task {spec!r} names no file or module: write path/to/my_task.py:{attr} "
                          f"or my_package.my_module:{attr}")
    module = _import_file(where, spec) if _looks_like_file(where) else _import_module(where, spec)
    cls = getattr(module, attr, None)
    if cls is None:
        tasks = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Task) and v is not Task]
        found = f"Task subclasses there: {', '.join(tasks)}" if tasks else "it defines no Task subclass"
        raise ConfigError(f"task {spec!r}: {where} has no {attr!r} ({found})")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task {spec!r}: {attr} is not a subclass of aha.tasks.Task; define it as "
                          f"`class {attr}(Task):` with `from aha.tasks import Task`")
    return cls


def check_task(task: Task, spec: str) -> None:
    """Raise a one-line error if `task` breaks the Task contract (see the module docstring).

    Args:
        task: the instance to check; `examples` is called once per split.
        spec: how the user named it, for the messages.

    Raises:
        ConfigError: a contract breach, naming the fix.
        DataError: `examples(split)` raised (data not found, no network, ...).
    """
    rewards = getattr(task, "rewards", None)
    fix = "set rewards = {'name': (function, weight)} on the class"
    if not isinstance(rewards, dict):
        raise ConfigError(f"task {spec!r}: rewards must be a dict, got {type(rewards).__name__}; {fix}")
    if not rewards:
        raise ConfigError(f"task {spec!r} has no rewards: {fix}")
    for name, value in rewards.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"task {spec!r}: reward names must be non-empty strings, got {name!r}")
        if not (isinstance(value, tuple) and len(value) == 2):
            raise ConfigError(f"task {spec!r}: reward {name!r} must be a (function, weight) pair, got {value!r}")
        fn, weight = value
        if not callable(fn):
            raise ConfigError(f"task {spec!r}: reward {name!r} is not callable (got {type(fn).__name__} {fn!r}); "
                              "give a function (completion: str, example: Example) -> float")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"task {spec!r}: reward {name!r} has weight {weight!r}; the weight must be a number")
    stops = getattr(task, "stop_strings", ())
    if not (isinstance(stops, (tuple, list)) and all(isinstance(x, str) and x for x in stops)):
        raise ConfigError(f"task {spec!r}: stop_strings is {stops!r}; give a tuple of non-empty strings, "
                          "e.g. stop_strings = ('</answer>',), or () to generate to EOS")
    for method in ("is_correct", "is_formatted"):
        if getattr(type(task), method, None) is getattr(Task, method):
            raise ConfigError(f"task {spec!r}: {type(task).__name__} does not define {method}(self, completion, "
                              f"ex) -> bool; the trainer reports it as a metric")
    for split in SPLITS:
        check_examples(task, split, spec)


def check_examples(task: Task, split: str, spec: str) -> Sequence[Example]:
    """`task.examples(split)`, checked: a non-empty list or tuple of `Example` whose ids are strings
    and whose prompts are text or chat messages (a list of {"role", "content"} dicts)."""
    try:
        examples = task.examples(split)
    except AhaError:
        raise
    except NotImplementedError as e:
        raise ConfigError(f"task {spec!r}: {type(task).__name__} does not define examples(self, split) "
                          "-> list[Example]") from e
    except Exception as e:  # the user's data loading: report it in one line (AHA_DEBUG=1 for the traceback)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(f"task {spec!r}: examples({split!r}) raised {type(e).__name__}: {first}") from e
    what = f"task {spec!r}: examples({split!r})"
    if not isinstance(examples, (list, tuple)):
        raise ConfigError(f"{what} returned a {type(examples).__name__}, not a list of Example; "
                          "return [Example(id=..., prompt=..., target=...) for ...]")
    if not examples:
        raise ConfigError(f"{what} returned no examples; the trainer needs at least one per split")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise ConfigError(f"{what}[{i}] is a {type(ex).__name__}, not an Example; build "
                              "Example(id=..., prompt=..., target=...) (from aha.tasks import Example)")
        if not isinstance(ex.id, str):
            raise ConfigError(f"{what}[{i}].id is {ex.id!r}; ids must be strings")
        if not _is_prompt(ex.prompt):
            raise ConfigError(f"{what}[{i}].prompt is a {type(ex.prompt).__name__}; a prompt is a string or "
                              "a list of chat messages {'role': ..., 'content': ...}")
    return examples


def _is_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    return isinstance(prompt, list) and bool(prompt) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)


def _looks_like_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _import_file(where: str, spec: str) -> Any:
    path = Path(where).expanduser()
    if not path.is_file():
        raise ConfigError(f"task {spec!r}: file {path} not found (relative paths start at the current "
                          f"directory, {Path.cwd()})")
    path = path.resolve()
    # A private, path-derived module name: two files called task.py do not collide, and classes
    # defined in the file (dataclasses, pickling) find their module in sys.modules.
    name = f"_aha_user_task_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"task {spec!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"task {spec!r}: importing {path} failed: {_one_line(e)} (AHA_DEBUG=1 shows the "
                          "traceback)") from e
    return module


def _import_module(where: str, spec: str) -> Any:
    # `aha` is a console script: the current directory is not on sys.path as it is for `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name and where.startswith(e.name):  # the module itself (or a parent package) is missing
            raise ConfigError(f"task {spec!r}: no module {where!r} (not installed, and not under the current "
                              f"directory); for a file write path/to/file.py:ClassName") from e
        raise ConfigError(f"task {spec!r}: importing {where} failed: {_one_line(e)}") from e
    except Exception as e:
        raise ConfigError(f"task {spec!r}: importing {where} failed: {_one_line(e)} (AHA_DEBUG=1 shows the "
                          "traceback)") from e


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fmt_options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())
