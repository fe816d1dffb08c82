"""GSM8K task: each reward on literal strings, the pre-fill, the loaders, and all 8,792 real golds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aha.tasks import Example, get_task
from aha.tasks.gsm8k import (
    GSM8K,
    correctness_reward,
    int_reward,
    normalize_number,
    parse_gold,
    soft_format_reward,
    strict_format_reward,
    xmlcount_reward,
)

# No pre-fill (no "Assistant:" in the prompt): the completion literal is the whole judged text.
EX = Example(id="t/0", prompt="Q?", target="18")
GOOD = "<think>\n9 * 2 = 18\n</think>\n<answer>\n18\n</answer>"


def answer(text: str) -> str:
    return f"<think>\nwork\n</think>\n<answer>\n{text}\n</answer>"


def gsm8k_dir() -> Path:
    """The GSM8K copy beside the repo (never inside it). Missing -> fail loudly, do not skip."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
    d = Path(os.environ.get("AHA_GSM8K_DIR") or default)
    if not ((d / "train.jsonl").is_file() and (d / "test.jsonl").is_file()):
        pytest.fail(f"GSM8K copy not found in {d}: set AHA_GSM8K_DIR or put shared/data/gsm8k beside the repo clone")
    return d


# ---- numbers ----


@pytest.mark.parametrize(
    "text, want",
    [
        ("18", "18"),
        ("  18 \n", "18"),
        ("1,000", "1000"),
        ("$18", "18"),
        ("18.", "18"),
        ("18.0", "18.0"),
        ("$1,000.50", "1000.50"),
        ("-3", "-3"),
        ("$18.00", "18.00"),  # a leading $ is ignored, so this is the number 18
        ("18 dollars", None),  # units are not stripped: strict on purpose
        ("18$", None),
        ("+18", "18"),  # was None: an explicit plus sign is still the number 18
        ("eighteen", None),
        ("1e3", None),
        ("1/2", None),
        ("１８", None),  # fullwidth digits: not ASCII, not a number here
        ("١٨", None),  # Arabic-Indic digits (Decimal would accept them; we do not)
        ("", None),
        ("18\x00", None),
        ("- 3", None),
    ],
)
def test_normalize_number(text: str, want: str | None) -> None:
    assert normalize_number(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        # thousands separators: groups of exactly three digits after a first group of 1-3
        ("1,234", "1234"),
        ("12,345", "12345"),
        ("123,456,789", "123456789"),
        ("1,234.56", "1234.56"),
        ("-1,234", "-1234"),
        ("$1,234,567.5", "1234567.5"),
        ("1,2", None),
        ("12,34", None),
        ("1,23", None),
        ("1,2345", None),
        ("1234,567", None),
        ("123,4567", None),
        ("1,234,56", None),
        ("1,,234", None),
        (",123", None),
        ("123,", None),
        ("1,234,", None),
        ("0,123", None),  # a decimal comma elsewhere, never a thousands group
        ("1.234,5", None),
        ("1 234", None),
        ("1_234", None),
        ("1'234", None),
        # signs: "-", the Unicode minus sign U+2212, "+"; touching the number or the "$"
        ("+18", "18"),
        ("\u221218", "-18"),
        ("\u22121,000", "-1000"),
        ("-0", "-0"),
        ("+-18", None),
        ("--18", None),
        ("- 18", None),
        ("\u201318", None),  # en dash: not a minus sign
        ("\u201418", None),  # em dash
        ("\u2212 18", None),
        # "$": once, before the digits, before or after the sign, spaces allowed after it
        ("$ 18", "18"),
        ("$  1,000", "1000"),
        ("-$18", "-18"),
        ("$-18", "-18"),
        ("\u2212$18", "-18"),
        ("+$18", "18"),
        ("-$-18", None),
        ("$$18", None),
        ("$ -18", "-18"),
        ("$", None),
        ("18 $", None),
        # decimal point: digits after it, or one trailing "." ending a sentence
        (".5", "0.5"),
        ("-.5", "-0.5"),
        ("18.5.", "18.5"),
        ("18..", None),
        (".", None),
        ("1.2.3", None),
        ("18%", None),
        ("1/2", None),
    ],
)
def test_number_rules(text: str, want: str | None) -> None:
    assert normalize_number(text) == want


@settings(max_examples=300, deadline=None)
@given(n=st.integers(-10**12, 10**12), cut=st.integers(1, 13))
def test_thousands_commas_property(n: int, cut: int) -> None:
    """Property: Python's own grouping ("{:,}") always reads back as the number; a comma anywhere
    that is not a three-digit group boundary never reads as any number."""
    assert normalize_number(f"{n:,}") == str(n)
    digits = str(abs(n))
    assume(cut < len(digits) and (len(digits) - cut) % 3)
    assert normalize_number(f"{'-' if n < 0 else ''}{digits[:cut]},{digits[cut:]}") is None


def test_normalize_number_refuses_huge_text_before_parsing_it(monkeypatch) -> None:
    import aha.tasks._common as common

    monkeypatch.setattr(common, "_NUMBER", None)  # any parsing attempt would raise
    assert normalize_number("9" * 1_000_000) is None  # the length bound comes first (time: bench/rewards.py)


def test_parse_gold() -> None:
    assert parse_gold("so 16 - 3 = 13\n#### 18") == "18"
    assert parse_gold("#### 1,200") == "1200"
    assert parse_gold("#### -3") == "-3"
    with pytest.raises(ValueError, match="####"):
        parse_gold("no marker 18")
    with pytest.raises(ValueError):
        parse_gold("#### eighteen")


# ---- correctness ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        (answer("17"), 0.0),
        (answer("1,8"), 0.0),  # was 1.0: a comma separates thousands only, so "1,8" is not 18
        (answer("18,"), 0.0),
        (answer("+18"), 1.0),
        (answer("$ 18"), 1.0),
        (answer("$18"), 1.0),
        (answer("18."), 1.0),
        (answer("18.0"), 1.0),
        (answer("18.000"), 1.0),
        (answer("$18.00"), 1.0),
        (answer("18 dollars"), 0.0),  # units: wrong
        (answer("18.5"), 0.0),
        (answer("-18"), 0.0),
        (answer("１８"), 0.0),
        ("18", 0.0),  # no tags
        ("<answer>18</answer>", 1.0),  # no think block: still correct (format is scored apart)
        ("<answer>\n18\n", 0.0),  # never closed
        ("<answer>18</answer>\n<answer>17</answer>", 0.0),  # the last block counts
        ("<answer>17</answer>\n<answer>18</answer>", 1.0),
        ("<answer>18</answer> then <answer>17", 1.0),  # an unclosed trailing block is ignored
        (GOOD + "\nand more text", 1.0),  # text after </answer> is xmlcount's business
        ("<answer>17<answer>18</answer>", 1.0),  # the innermost, last-opened block
        ("", 0.0),
    ],
)
def test_correctness(completion: str, want: float) -> None:
    assert correctness_reward(completion, EX) == want


def test_correctness_negative_and_decimal_golds() -> None:
    neg, dec, big = (Example("t/1", "Q?", "-3"), Example("t/2", "Q?", "2.5"), Example("t/3", "Q?", "1000000"))
    assert correctness_reward(answer("-3"), neg) == 1.0
    assert correctness_reward(answer("3"), neg) == 0.0
    assert correctness_reward(answer("2.50"), dec) == 1.0
    assert correctness_reward(answer("2"), dec) == 0.0
    assert correctness_reward(answer("1,000,000"), big) == 1.0
    assert correctness_reward(answer("1000000.0"), big) == 1.0
    assert correctness_reward(answer("1000,000"), big) == 0.0
    assert correctness_reward(answer("\u22123"), neg) == 1.0  # the Unicode minus sign
    assert correctness_reward(answer("-$3"), neg) == 1.0
    assert correctness_reward(answer("+3"), neg) == 0.0
    assert correctness_reward(answer(".5"), Example("t/4", "Q?", "0.5")) == 1.0
    thousand = Example("t/5", "Q?", "1234")
    for wrong in ["12,34", "1,2,3,4", "123,4", "1.234", "1 234"]:
        assert correctness_reward(answer(wrong), thousand) == 0.0, wrong
    for right in ["1,234", "$1,234", "$ 1,234.00", "1234.", "+1,234"]:
        assert correctness_reward(answer(right), thousand) == 1.0, right


# ---- int ----


@pytest.mark.parametrize(
    "text, want",
    [
        ("18", 1.0),
        ("-3", 1.0),
        ("1,000", 1.0),
        ("1,00", 0.0),
        ("+18", 1.0),
        ("\u221218", 1.0),
        ("$18", 1.0),
        ("18.", 1.0),
        ("18.0", 0.0),
        ("18.5", 0.0),
        ("x", 0.0),
        ("", 0.0),
    ],
)
def test_int(text: str, want: float) -> None:
    assert int_reward(answer(text), EX) == want


def test_int_needs_an_answer_block() -> None:
    assert int_reward("18", EX) == 0.0
    assert int_reward("", EX) == 0.0


# ---- strict format ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        (GOOD + "\n", 1.0),  # one trailing newline allowed
        (GOOD + "\n\n", 0.0),
        ("<think>\nline 1\nline 2\n</think>\n<answer>\n18\n</answer>", 1.0),  # multi-line (gist: no DOTALL)
        ("<think>\n\n</think>\n<answer>\n\n</answer>", 1.0),  # empty parts are still the format
        ("<think>9*2</think><answer>18</answer>", 0.0),  # no newlines
        ("<think>\nx\n</think>\n\n<answer>\n18\n</answer>", 0.0),
        ("hi " + GOOD, 0.0),
        (GOOD + " bye", 0.0),
        ("<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n18\n</answer>", 0.0),  # tags twice
        ("<think>\na <answer> b\n</think>\n<answer>\n18\n</answer>", 0.0),
        ("<think>\n</think>\n<answer>\n18\n</answer>", 0.0),  # "<think>\n" and "\n</think>" overlap
        ("<answer>\n18\n</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_strict_format(completion: str, want: float) -> None:
    assert strict_format_reward(completion, EX) == want


# ---- soft format ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        ("<think>a</think><answer>b</answer>", 1.0),
        ("preamble <think>a</think> \n\t <answer>b</answer> trailing", 1.0),
        # The gist's re.match without DOTALL never matched a multi-line think block: fixed here.
        ("<think>\nline 1\nline 2\n</think>\n<answer>\n18\n</answer>", 1.0),
        ("<think>a</think> text <answer>b</answer>", 0.0),  # only whitespace between
        ("<answer>b</answer><think>a</think>", 0.0),
        ("<think>a</think><answer>b", 0.0),
        ("<think>a<answer>b</answer>", 0.0),
        ("</think><answer>b</answer><think>", 0.0),
        ("<think></think> <answer></answer>", 1.0),
        ("", 0.0),
    ],
)
def test_soft_format(completion: str, want: float) -> None:
    assert soft_format_reward(completion, EX) == want


# ---- xmlcount (raw in [0, 1]; weight 0.5) ----


@pytest.mark.parametrize(
    "completion, want",
    [
        (GOOD, 1.0),
        (GOOD + "\n", 1.0),  # one trailing newline is free
        (GOOD + "abc", 1.0 - 3 * 0.002),
        (GOOD + "\nabc\n", 1.0 - 4 * 0.002),
        (GOOD + "x" * 10_000, 0.0),  # clamped at 0
        ("<think>\nx\n</think>\n", 0.5),
        ("<think>\n<think>\nx\n</think>\n<answer>\n18\n</answer>", 0.75),  # a tag twice earns nothing
        ("<answer>18</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_xmlcount(completion: str, want: float) -> None:
    assert xmlcount_reward(completion, EX) == pytest.approx(want)


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
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hub_failure_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(RuntimeError, match=r"data="):
        GSM8K().examples("train")


# ---- the real data set ----


def test_every_real_gold_parses_and_scores_full_correctness() -> None:
    d = gsm8k_dir()
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
