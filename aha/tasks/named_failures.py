"""A task wrapper that names a failure: when a task's reward or judge raises, the run stops with a
`RewardError` saying which reward, at which step, on which example and completion, instead of a
bare message or a traceback into the task's file.

It lives with the tasks because it is one: it wraps a `Task` and passes everything else through,
and `aha train` (both backends) and `aha eval` use it wherever a task is. It checks nothing before
the run (that is aha/preflight.py) and guards no numbers (that is aha/guards.py): the Task contract
says rewards never raise, and this is what holds a user's task to it.
"""

from __future__ import annotations

from typing import Any

from aha.errors import AhaError


class RewardError(AhaError):
    """A task's reward or judge raised: named with the step and the completion (AHA_DEBUG=1: traceback)."""


JUDGES = ("score", "is_correct", "is_correct_lenient", "is_formatted", "final_answer")


class NamedFailures:
    """A task whose rewards and judges, when they raise, raise a RewardError naming the reward, the
    step (`step`, set by the training loop; None in `aha eval`), the example and a short repr of the
    completion, instead of ending the run with a bare message or a traceback into the task's file.
    Everything else is the task's own (attributes are passed through)."""

    def __init__(self, task: Any):
        self.__dict__["_task"], self.__dict__["step"] = task, None

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._task, name)
        if name not in JUDGES or not callable(value):
            return value

        def judged(*args: Any, **kwargs: Any) -> Any:  # (completion, ex), or (completion,) for final_answer
            try:
                return value(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a user's reward may raise anything: name it
                completion = str(args[0]) if args else ""
                raise self._named(name, completion, args[1] if len(args) > 1 else None, e) from e
        return judged

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "step":
            self.__dict__["step"] = value
        else:
            setattr(self._task, name, value)

    def _named(self, judge: str, completion: str, ex: Any, err: Exception) -> RewardError:
        what = f"{judge}()"
        if judge == "score":  # which reward: the first that raises again on the same text
            for reward, (fn, _) in getattr(self._task, "rewards", {}).items():
                try:
                    fn(completion, ex)
                except Exception:  # noqa: BLE001 - the one that raised
                    what = f"reward {reward!r}"
                    break
        short = completion if len(completion) <= 60 else completion[:60] + "..."
        when = f" at step {self.step}" if self.step is not None else ""
        where = f" on example {ex.id}," if getattr(ex, "id", None) is not None else " on"
        message = " ".join(str(err).split())[:160]
        return RewardError(f"{what} of task {getattr(self._task, 'name', type(self._task).__name__)} raised "
                           f"{type(err).__name__}: {message}{when}{where} completion "
                           f"{short!r}; a reward must return a number for any text (AHA_DEBUG=1 shows the traceback)")
