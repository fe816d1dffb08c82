"""The Task contract's defaults and the tasks table (aha/tasks/base.py, aha/tasks/__init__.py):
what `aha play` and `aha eval` ask of a task, so that neither needs to know which task it is."""

from __future__ import annotations

import pytest

from aha.tasks import TASKS, Task, get_task, prompt_prefill


def test_final_answer_normalises_the_last_answer_block():
    task = Task()
    assert task.final_answer("<think>x</think><answer>\n 1,000 \n</answer>") == "1000"
    assert task.final_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert task.final_answer("<answer>(1 + 2) * 3</answer>") == "(1+2)*3"
    assert task.final_answer("no answer") is None and task.final_answer("<answer>7") is None
    assert task.final_answer("<answer>  </answer>") is None


def test_user_prompt_is_the_tasks_template_or_the_text_as_typed():
    gsm = get_task("gsm8k")
    assert gsm.user_prompt("What is 2+3?") == gsm.prompt("What is 2+3?")
    arith = get_task("arith")
    assert arith.user_prompt("What is 2+3?") == arith.prompt("What is 2+3?")
    cd = get_task("countdown")
    assert cd.user_prompt("3 7 25 50 -> 75") == cd.prompt([3, 7, 25, 50], 75)
    assert cd.user_prompt("3, 7, 25 = 75") == cd.prompt([3, 7, 25], 75)
    assert cd.user_prompt("hello there") == "hello there"  # not a puzzle: as typed
    assert Task().user_prompt("anything") == "anything"


def test_prefill_of_every_template_is_what_the_prompt_starts_the_answer_with():
    for name in ("gsm8k", "arith"):
        for template in ("base", "chat"):
            task = get_task(name, template=template)
            assert prompt_prefill(task.user_prompt("q")) == "<think>\n"
    ex = get_task("countdown").examples("test")[0]
    assert get_task("countdown").prefill(ex) == prompt_prefill(ex.prompt) != ""
    assert prompt_prefill("raw text") == ""


def test_an_unknown_task_names_the_known_ones(monkeypatch):
    with pytest.raises(ValueError, match="known tasks: arith, countdown, gsm8k"):
        get_task("nope")
    monkeypatch.setitem(TASKS, "nope", "aha.tasks.arith:Arith")  # one line in the table adds a task
    assert get_task("nope").name == "arith"
