"""`aha report`: aha steps, smoothing and sample picking on synthetic logs, the plots' pixels,
a real smoke run, and clear errors for directories that are not runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aha.cli import main
from aha.errors import AhaError
from aha.report import first_crossing, moving_average, pick_samples, write_report

PLOTS = ("rewards.png", "accuracy.png", "length.png", "reflection.png", "training.png")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def write_run(run: Path, steps: int = 100, probe: bool = True, accuracy_top: float = 0.4) -> Path:
    """A synthetic run: format learned around step 30, accuracy around step 60 (no noise)."""
    run.mkdir(parents=True, exist_ok=True)
    metrics, completions = [], []
    for s in range(1, steps + 1):
        fmt, acc = sigmoid((s - 30) / 4), accuracy_top * sigmoid((s - 60) / 6)
        row = {"step": s, "reward": 2 * acc + 0.5 * fmt, "reward/correctness": 2 * acc, "reward/soft_format": 0.5 * fmt,
               "accuracy": acc, "format_rate": fmt, "completion_len": 50 + s, "completion_len_max": 200,
               "reflection_rate": 0.002 * s, "truncated_rate": 0.1, "frac_zero_std": 1 - fmt, "kl": None,
               "entropy": 1.0, "grad_norm": 0.3}
        if s % 25 == 0:
            row["eval/accuracy"], row["eval/format_rate"] = acc, fmt
        metrics.append(row)
        completions.append({"step": s, "prompt_id": f"train/{s}", "completion": f"train {s}", "reward": 0.0,
                            "rewards": {}, "correct": False})
        if probe and s % 10 == 0:
            completions.append({"step": s, "prompt_id": "test/0", "probe": True, "completion": f"probe at {s}",
                                "reward": 1.0, "rewards": {}, "correct": s > 50, "prompt": "What is 2+2?"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (run / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in completions))
    (run / "config.yaml").write_text("model: smollm2-135m\nfinetune: lora\ntask: gsm8k\n")
    return run


def test_moving_average_and_first_crossing():
    assert moving_average([0, 2, 4, 6], 2) == [0, 1, 3, 5]  # trailing: never looks ahead
    assert moving_average([1, 2, 3], 1) == [1, 2, 3]
    assert first_crossing(([1, 2, 3], [0.1, 0.5, 0.9]), 0.5) == 2
    assert first_crossing(([1, 2, 3], [0.1, 0.2, 0.3]), 0.5) is None


def test_report_on_a_synthetic_run(tmp_path):
    run = write_run(tmp_path / "run")
    md_path = write_report(run, window=1)
    assert md_path == run / "report" / "report.md"
    md = md_path.read_text()
    for name in PLOTS:
        assert (run / "report" / name).stat().st_size > 10_000
        assert f"]({name})" in md  # embedded by relative path
    # sigmoid((s - 30) / 4) >= 0.5 first at s = 30; 0.4 * sigmoid((s - 60) / 6) >= 0.2 at s = 60;
    # the reflection rate 0.002 * s reaches 0.1 at s = 50.
    assert "| format learned | `format_rate` >= 0.5 | **step 30** |" in md
    assert "| accuracy | `accuracy` >= 0.2 | **step 60** |" in md
    assert "| reflection | `reflection_rate` >= 0.1 | **step 50** |" in md
    assert "| completion_len | 51.0 | 150.0 |" in md
    assert "probe prompt `test/0`" in md
    where = [md.index(f"step {s} (prompt `test/0`") for s in (10, 50, 100)]  # early, middle, late probes
    assert where == sorted(where)
    assert "probe at 100" in md and "What is 2+2?" in md and "Model **smollm2-135m**" in md


def test_smoothing_delays_the_crossing_and_unreached_thresholds_say_so(tmp_path):
    run = write_run(tmp_path / "run", accuracy_top=0.1)
    md = write_report(run, window=10, thresholds={"format_rate": 0.5}).read_text()
    assert "moving average over 10 step(s)" in md
    fmt = [sigmoid((s - 30) / 4) for s in range(1, 101)]
    trailing = [sum(fmt[max(0, i - 9):i + 1]) / len(fmt[max(0, i - 9):i + 1]) for i in range(100)]
    expected = next(i + 1 for i, v in enumerate(trailing) if v >= 0.5)
    assert expected > 30  # the trailing mean lags the raw curve: a crossing never uses later steps
    assert f"| format learned | `format_rate` >= 0.5 | **step {expected}** |" in md
    assert "| accuracy | `accuracy` >= 0.2 | not reached (best 0.100 at step 100)" in md


def test_plots_show_the_curves(tmp_path, monkeypatch):
    """Each PNG holds the logged curves: the plotted lines carry the metrics (raw and smoothed), and
    the image is not blank."""
    import matplotlib.figure
    import matplotlib.image

    drawn: dict[str, dict[str, list[float]]] = {}
    save = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, path, *args, **kwargs):
        drawn[Path(path).name] = {line.get_label(): list(line.get_ydata()) for ax in fig.axes for line in ax.lines}
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    run = write_run(tmp_path / "run", steps=60, accuracy_top=0.9)
    write_report(run, window=5)
    acc = [0.9 * sigmoid((s - 60) / 6) for s in range(1, 61)]
    assert drawn["accuracy.png"]["accuracy (train)"] == pytest.approx(moving_average(acc, 5))
    assert drawn["accuracy.png"]["accuracy (held-out, strict)"] == pytest.approx([acc[24], acc[49]])
    assert drawn["length.png"]["mean"] == pytest.approx(moving_average([50 + s for s in range(1, 61)], 5))
    assert drawn["rewards.png"]["correctness"] == pytest.approx(moving_average([2 * a for a in acc], 5))
    assert drawn["reflection.png"]["train"] == pytest.approx(moving_average([0.002 * s for s in range(1, 61)], 5))
    for name in PLOTS:
        img = matplotlib.image.imread(str(run / "report" / name))[..., :3]
        assert (img.sum(axis=-1) < 2.5).sum() > 5000, name  # thousands of non-white pixels: lines, text


def test_sample_fallbacks_without_probe_rows():
    rows = [{"step": s, "prompt_id": f"p{s}", "completion": f"c{s}"} for s in range(1, 11)]
    picked, how = pick_samples(rows)
    assert [r["step"] for r in picked] == [1, 5, 10] and "different" in how  # midpoint 5.5: 5 is closer first
    rows += [{"step": 2, "prompt_id": "again", "completion": "a2"},
             {"step": 9, "prompt_id": "again", "completion": "a9"},
             {"step": 4, "prompt_id": "p4", "completion": "second p4"}]
    picked, how = pick_samples(rows)
    assert [r["completion"] for r in picked] == ["a2", "a9"] and "`again`" in how
    assert pick_samples([]) == ([], "completions.jsonl holds no completions.")


def test_report_on_a_real_smoke_run(tmp_path_factory, tmp_path):
    from aha.config import load_config
    from aha.train import train

    run = tmp_path_factory.getbasetemp() / "smoke-run"  # shared with test_eval when both run
    if not (run / "metrics.jsonl").is_file():
        train(load_config("smoke", [f"output_dir={run}", "tensorboard=false"]), overwrite=True)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for name in PLOTS:
        assert (tmp_path / "rep" / name).is_file()
    assert "3 logged steps (1 to 3)" in md and "task **countdown**" in md
    assert "### early: step 1" in md and "### late: step 3" in md


def test_report_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(AhaError, match="no logged steps"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_report_without_completions_says_so(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "completions.jsonl").unlink()
    md = write_report(run).read_text()
    assert "No completions.jsonl" in md


def _with_evals(run: Path, before: tuple[float, float], after: tuple[float, float], n: int = 200) -> Path:
    """Add a step-0 eval row and a last-step eval with (strict, lenient) accuracies, plus eval completions."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("eval/accuracy", None)
    rows.insert(0, {"step": 0, "eval/accuracy": before[0], "eval/accuracy_lenient": before[1], "eval/n": n,
                    "eval/format_rate": 0.1})
    rows[-1].update({"eval/accuracy": after[0], "eval/accuracy_lenient": after[1], "eval/n": n,
                     "eval/format_rate": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = rows[-1]["step"]
    ev = [{"step": last, "id": f"t/{i}", "completion": "wait, 2+2=4" if i % 2 else "4", "correct": i % 2 == 1,
           "length": 10 if i % 2 else 2} for i in range(4)]
    (run / "eval_completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ev))
    return run


def test_report_leads_with_held_out_accuracy_before_and_after(tmp_path):
    run = _with_evals(write_run(tmp_path / "run"), before=(0.04, 0.50), after=(0.60, 0.66))
    md = write_report(run, window=1).read_text()
    result = md.index("## Held-out result")
    assert result < md.index("## The aha steps") and result < md.index("## Summary")
    assert "| strict: answer in the required format | 4.0% | 60.0% | +56.0 points |" in md
    assert "| lenient: the final answer, format aside | 50.0% | 66.0% | +16.0 points |" in md
    assert "more right answers" in md
    # correct vs incorrect: the final eval's two correct completions are 10 tokens and reflect, the others not
    assert "held-out eval at step 100, correct" in md
    table = md[md.index("## Correct vs incorrect"):md.index("## The aha steps")]
    assert "| mean length (tokens) | - | - | 10.0 | 2.0 |" in table
    assert "| reflection-phrase rate | - | 0.0% | 100.0% | 0.0% |" in table  # no correct training rollout


def test_report_calls_a_format_only_gain_format(tmp_path):
    run = _with_evals(write_run(tmp_path / "run"), before=(0.04, 0.50), after=(0.50, 0.51))
    md = write_report(run, window=1).read_text()
    assert "mostly **format**" in md and "more right answers" not in md


def test_report_without_a_step_0_eval_says_how_to_get_one(tmp_path):
    md = write_report(write_run(tmp_path / "run"), window=1).read_text()
    assert "eval_every > 0" in md


# ---------------------------------------------------------------------------- the verdict (issue 21)

def _verdict(before: dict, after: dict, n: int = 200) -> str:
    """result_section on two hand-made eval rows (step 0 and step 40): its text."""
    from aha.report_result import result_section

    rows = [{"step": 0, "eval/n": n, **before}, {"step": 20}, {"step": 40, "eval/n": n, **after}]
    return "\n".join(result_section(rows))


def _ev(strict: float, lenient: float, steps: float | None = None, length: float = 20.0) -> dict:
    row = {"eval/accuracy": strict, "eval/accuracy_lenient": lenient, "eval/completion_len": length,
           "eval/format_rate": 0.9}
    return row if steps is None else {**row, "eval/steps_share": steps}


@pytest.mark.parametrize("before, after, says, never", [
    # steps and lenient accuracy rose together beyond the ~7 points of 200 problems
    (_ev(0.2, 0.4, 0.05), _ev(0.7, 0.75, 0.6, 45.0), "**Reasoning emerged**", "format**"),
    # better answers, the steps share flat
    (_ev(0.2, 0.4, 0.05), _ev(0.7, 0.75, 0.08), "but without intermediate steps (the steps share moved only +3.0",
     "Reasoning emerged"),
    # steps without accuracy
    (_ev(0.2, 0.4, 0.05), _ev(0.22, 0.42, 0.5), "**Steps without accuracy**", "Reasoning emerged"),
    # format only: strict up, lenient and steps within chance
    (_ev(0.05, 0.5, 0.0), _ev(0.5, 0.52, 0.02), "mostly **format**", "Reasoning emerged"),
    # nothing moved beyond chance
    (_ev(0.3, 0.4, 0.1), _ev(0.33, 0.41, 0.12), "**Nothing beyond chance**", "Reasoning emerged"),
    # both graders fell
    (_ev(0.5, 0.6), _ev(0.2, 0.3), "**Worse than untrained**", "Reasoning emerged"),
    # a task without steps: better answers, and the verdict says steps are not defined
    (_ev(0.2, 0.4), _ev(0.7, 0.75), "no steps share was logged", "Reasoning emerged"),
])
def test_each_verdict_branch(before, after, says, never):
    md = _verdict(before, after)
    assert says in md and never not in md


def test_a_strict_rise_with_a_lenient_fall_is_described_as_it_happened():
    """The issue's case: strict +77, lenient -11.5 used to print 'lenient only -11.5 (within the ~7
    points chance allows)'."""
    md = _verdict(_ev(0.025, 0.54), _ev(0.795, 0.425))
    assert "within" not in md and "lenient only" not in md
    assert "lenient accuracy fell 11.5 points" in md and "fewer final answers are right" in md
    assert "lenient accuracy is below strict at step(s) 40" in md  # the old grader's figures, said so


def test_reasoning_emerged_needs_both_beyond_the_chance_band():
    # +6 points on 200 problems is inside the ~7-point band: no claim
    md = _verdict(_ev(0.2, 0.4, 0.05), _ev(0.26, 0.46, 0.11))
    assert "Reasoning emerged" not in md and "Nothing beyond chance" in md
    # on 10,000 problems the band is 1 point: the same change is real
    assert "Reasoning emerged" in _verdict(_ev(0.2, 0.4, 0.05), _ev(0.26, 0.46, 0.11), n=10_000)


def test_the_result_table_shows_steps_length_and_with_vs_without(tmp_path):
    before = {**_ev(0.2, 0.4, 0.05, 18.0), "eval/accuracy_with_steps": None, "eval/accuracy_without_steps": 0.2}
    after = {**_ev(0.7, 0.75, 0.6, 45.0), "eval/accuracy_with_steps": 0.8, "eval/accuracy_without_steps": 0.55}
    md = _verdict(before, after)
    assert "| completions with intermediate steps | 5.0% | 60.0% | +55.0 points |" in md
    assert "| mean length | 18.0 tokens | 45.0 tokens | +27.0 tokens |" in md
    assert "step 0: - (none) vs 20.0%; step 40: 80.0% vs 55.0%" in md


def test_report_plots_held_out_accuracy_steps_and_length_on_one_axis(tmp_path):
    run = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if "eval/accuracy" in r:
            r.update({"eval/accuracy_lenient": r["eval/accuracy"] + 0.1, "eval/steps_share": r["step"] / 200,
                      "eval/completion_len": 20 + r["step"] / 5, "eval/n": 200})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = write_report(run, window=1).read_text()
    assert (run / "report" / "held_out.png").stat().st_size > 10_000 and "](held_out.png)" in md
