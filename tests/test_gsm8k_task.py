"""GSM8K task: score and pre-fill, templates, the loaders, and all 8,792 real golds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from aha.tasks import Example, get_task
from aha.tasks.gsm8k import GSM8K, correctness_reward, normalize_number, parse_gold

# No pre-fill (no "Assistant:" in the prompt): the completion literal is the whole judged text.
EX = Example(id="t/0", prompt="Q?", target="18")
GOOD = "<think>\n9 * 2 = 18\n</think>\n<answer>\n18\n</answer>"


def answer(text: str) -> str:
    return f"<think>\nwork\n</think>\n<answer>\n{text}\n</answer>"


# ---- the task: score, pre-fill, templates ----


def test_score_total_is_sum_and_full_marks() -> None:
    task = GSM8K()
    total, parts = task.score(GOOD, EX)
    assert parts == {"correctness": 2.0, "int": 0.5, "strict_format": 0.5, "soft_format": 0.5, "xmlcount": 0.5}
    assert total == pytest.approx(sum(parts.values())) == pytest.approx(4.0)
    assert task.score("", EX) == (0.0, dict.fromkeys(parts, 0.0))
    assert task.is_correct(GOOD, EX) and not task.is_correct(answer("17"), EX)
    assert task.is_formatted(answer("17"), EX) and not task.is_formatted("18", EX)


def _tmp_task(tmp_path: Path, template: str) -> GSM8K:
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "Twice 9?", "answer": "9*2=18\n#### 18"}) + "\n")
    return GSM8K(data=path, template=template)


def test_base_template_prefills_think(tmp_path: Path) -> None:
    task = _tmp_task(tmp_path, "base")
    ex = task.examples("test")[0]
    assert isinstance(ex.prompt, str) and "User: Twice 9?" in ex.prompt
    assert "<think>\n" in ex.prompt and "<answer>\n" in ex.prompt  # asks for the format
    assert ex.prompt.endswith("\nAssistant: <think>\n")
    assert task.prefill(ex) == "<think>\n"
    # The completion continues after the pre-filled "<think>\n" and is judged as a whole.
    completion = GOOD.removeprefix("<think>\n")
    total, parts = task.score(completion, ex)
    assert total == pytest.approx(4.0), parts
    assert task.is_correct(completion, ex) and task.is_formatted(completion, ex)
    # Repeating the pre-filled tag breaks the strict format and one xmlcount tag.
    _, parts = task.score(GOOD, ex)
    assert parts["strict_format"] == 0.0 and parts["xmlcount"] == pytest.approx(0.375)


def test_chat_template_messages_with_prefill(tmp_path: Path) -> None:
    task = _tmp_task(tmp_path, "chat")
    ex = task.examples("train")[0]
    assert [m["role"] for m in ex.prompt] == ["system", "user", "assistant"]
    assert ex.prompt[1]["content"] == "Twice 9?"
    assert "<answer>" in ex.prompt[0]["content"]
    assert ex.prompt[-1]["content"] == task.prefill(ex) == "<think>\n"
    assert task.score(GOOD.removeprefix("<think>\n"), ex)[0] == pytest.approx(4.0)
    custom = GSM8K(data=tmp_path / "g.jsonl", template="chat", system_prompt="Be brief.")
    assert custom.examples("test")[0].prompt[0]["content"] == "Be brief."


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="template"):
        GSM8K(template="instruct")
    with pytest.raises(ValueError, match="split"):
        GSM8K(data="x.jsonl").examples("validation")


# ---- loaders ----


ROWS = [
    {"question": "One?", "answer": "so\n#### 1"},
    {"question": "Many?", "answer": "lots\n#### 1,200"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_jsonl_path_serves_both_splits(tmp_path: Path) -> None:
    task = get_task("gsm8k", data=str(_write_jsonl(tmp_path / "g.jsonl", ROWS)))
    assert isinstance(task, GSM8K)
    for split in ("train", "test"):
        exs = task.examples(split)
        assert [e.id for e in exs] == [f"gsm8k/{split}/0", f"gsm8k/{split}/1"]
        assert [e.target for e in exs] == ["1", "1200"]


def test_load_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "g.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    exs = GSM8K(data=path).examples("test")
    assert [e.target for e in exs] == ["1", "1200"] and "Many?" in exs[1].prompt


def test_load_dict_of_paths(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = _write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    task = GSM8K(data={"train": train, "test": test})
    assert len(task.examples("train")) == 2 and len(task.examples("test")) == 1
    with pytest.raises(ValueError, match="'test'"):
        GSM8K(data={"train": train}).examples("test")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        GSM8K(data=missing).examples("test")


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "solution": "#### 1"}])
    with pytest.raises(ValueError, match="answer"):
        GSM8K(data=path).examples("test")
    bad = tmp_path / "g.csv"
    bad.write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported"):
        GSM8K(data=bad).examples("test")


def test_hub_failure_says_to_pass_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"data=") as err:
        GSM8K().examples("test")
    assert "openai/gsm8k" in str(err.value) and "get_task('gsm8k', data=" in str(err.value)
    assert "task_options.data=" in str(err.value) and "--data " in str(err.value)  # the CLI's two ways too
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hub_failure_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(RuntimeError, match=r"data="):
        GSM8K().examples("train")


# ---- the real data set ----


def test_every_real_gold_parses_and_scores_full_correctness(gsm8k_dir: Path) -> None:
    d = gsm8k_dir
    task = GSM8K(data={"train": d / "train.jsonl", "test": d / "test.jsonl"})
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (7473, 1319)
    assert test[0].id == "gsm8k/test/0" and test[0].target == "18"  # Janet's ducks
    for ex in [*train, *test]:
        assert normalize_number(ex.target) == ex.target and "." not in ex.target, ex
        total, parts = task.score(f"<answer>\n{ex.target}\n</answer>", ex)
        assert parts["correctness"] == 2.0, ex
        assert task.is_correct(f"<answer>{ex.target}</answer>", ex)
    # The golds as written, thousands separators included ("1,200"), score too.
    for name in ("train.jsonl", "test.jsonl"):
        for line in (d / name).read_text(encoding="utf-8").splitlines():
            gold = json.loads(line)["answer"]
            written = gold.rpartition("####")[2].strip()
            assert correctness_reward(f"<answer>{written}</answer>", Example("g", "Q?", parse_gold(gold))) == 1.0


def test_prefill_rules() -> None:
    from aha.tasks._common import prefill_of

    assert prefill_of(Example("p", "User: hi\nAssistant: <think>\n", "1")) == "<think>\n"
    assert prefill_of(Example("p", "User: Assistant: quoted\nAssistant:", "1")) == ""  # the last turn counts
    assert prefill_of(Example("p", "no turns at all", "1")) == ""
    assert prefill_of(Example("p", [{"role": "user", "content": "hi"}], "1")) == ""
    assert prefill_of(
        Example("p", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>"}], "1")
    ) == ("<think>")
    assert prefill_of(Example("p", [], "1")) == ""


@pytest.mark.parametrize("text,gold,ok", [
    ("18 + 2 = 20", "20", True), ("The answer is 1,000 dollars.", "1000", True), ("-3 then -4", "-4", True),
    ("20\n</think>\n<answer>\n20\n</answer>", "20", True), ("it is 20, or 21", "20", False),
    ("no number here", "1", False), ("18.0", "18", True), ("7" * 5000, "7", False),
])
def test_lenient_grader_reads_the_last_number(text, gold, ok):
    from aha.tasks.gsm8k import lenient_correct

    ex = Example(id="x", prompt="q", target=gold)
    assert lenient_correct(text, ex) is ok
