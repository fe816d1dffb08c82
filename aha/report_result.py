"""The report's lead: held-out accuracy of the untrained vs the trained policy under the strict
and the lenient grader (docs/design.md, "What counts as learning"), the share of completions that reason in
intermediate steps and their length, a verdict on what changed beyond chance, and how correct and
incorrect completions differ (length, steps, reflection phrases). Markdown lines for `aha report`'s
report.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


# The held-out figures of the result table: (label, eval key, unit). Rates change in points, length in tokens.
RESULT_ROWS = [
    ("strict: answer in the required format", "eval/accuracy", "%"),
    ("lenient: the final answer, format aside", "eval/accuracy_lenient", "%"),
    ("format rate", "eval/format_rate", "%"),
    ("completions with intermediate steps", "eval/steps_share", "%"),
    ("mean length", "eval/completion_len", "tokens"),
]


def result_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The run's result: held-out accuracy before (step 0) and after (the last eval), both graders,
    the format rate, the share of completions with intermediate steps and the mean length, then the
    verdict (`verdict`)."""
    md = ["## Held-out result: untrained vs trained", ""]
    evals = [r for r in rows if isinstance(r.get("eval/accuracy"), (int, float))]
    if not evals or evals[0]["step"] != 0 or len(evals) < 2:
        return md + ["No held-out eval at step 0 and at a later step in this run: train with `eval_every > 0` "
                     "(it then evaluates the untrained policy before the first update and at the last step).", ""]
    a, b = evals[0], evals[-1]
    md += [f"Greedy decoding, the same {a.get('eval/n', '?')} held-out problems at step 0 and step {b['step']}.", "",
           f"| held-out figure | step 0 (untrained) | step {b['step']} (trained) | change |", "|---|---|---|---|"]
    change: dict[str, float] = {}
    for name, key, unit in RESULT_ROWS:
        if _num(a.get(key)) and _num(b.get(key)):
            if unit == "%":
                change[key] = 100 * (b[key] - a[key])
                md.append(f"| {name} | {100 * a[key]:.1f}% | {100 * b[key]:.1f}% | {change[key]:+.1f} points |")
            else:
                change[key] = b[key] - a[key]
                md.append(f"| {name} | {a[key]:.1f} {unit} | {b[key]:.1f} {unit} | {change[key]:+.1f} {unit} |")
    n = a.get("eval/n")
    md += ["", verdict(change, n if _num(n) else None)]
    pays = [(r["step"], r.get("eval/accuracy_with_steps"), r.get("eval/accuracy_without_steps")) for r in (a, b)]
    if any(_num(w) or _num(wo) for _, w, wo in pays):
        def pct(v: Any) -> str:
            return f"{100 * v:.1f}%" if _num(v) else "- (none)"
        md += ["", "Strict accuracy of completions with intermediate steps vs without: " + "; ".join(
            f"step {s}: {pct(w)} vs {pct(wo)}" for s, w, wo in pays) + "."]
    low = [r["step"] for r in evals
           if _num(r.get("eval/accuracy_lenient")) and r["eval/accuracy_lenient"] < r["eval/accuracy"]]
    if low:
        md += ["", f"Note: lenient accuracy is below strict at step(s) {', '.join(map(str, low))}. These figures come "
               "from a lenient grader that read the last number anywhere, including text written after `</answer>` "
               "(aha before issue 21); today's grader reads the final answer only, so lenient >= strict. "
               "`aha eval --checkpoint ...` re-grades a checkpoint."]
    return md + [""]


def chance_points(n: float | None) -> float:
    """About two standard errors of a proportion near 0.5 on n problems, in points (100 / sqrt(n)):
    changes smaller than this may be chance. 10 when n is unknown."""
    return 100 / math.sqrt(n) if n else 10.0


def verdict(change: dict[str, float], n: float | None) -> str:
    """The lead sentence: what happened between step 0 and the last eval, beyond chance.

    Args:
        change: held-out changes by eval key: "eval/accuracy", "eval/accuracy_lenient",
            "eval/steps_share" (points), "eval/completion_len" (tokens); missing keys were not logged.
        n: the number of held-out problems (the chance band is `chance_points(n)`).
    Returns:
        "Reasoning emerged" only when the share of completions with intermediate steps and lenient
        accuracy both rose beyond chance; otherwise which of better answers, steps, format or
        nothing happened - and a fall beyond chance is called a fall.
    """
    noise = chance_points(n)
    on = f"on {n:g} problems" if n else "(number of problems unknown)"
    band = f"(chance alone moves a figure {on} by about {noise:.0f} points)"
    strict, lenient = change.get("eval/accuracy"), change.get("eval/accuracy_lenient")
    steps, length = change.get("eval/steps_share"), change.get("eval/completion_len")

    def up(x: float | None) -> bool:
        return x is not None and x > noise

    def down(x: float | None) -> bool:
        return x is not None and x < -noise

    def moved(name: str, x: float | None) -> str:
        if x is None:
            return f"{name} was not logged"
        if down(x):
            return f"{name} fell {-x:.1f} points"
        return f"{name} rose {x:+.1f} points" if up(x) else f"{name} moved only {x:+.1f} points"

    longer = f"; mean length {length:+.1f} tokens" if length is not None else ""
    if up(steps) and up(lenient):
        return (f"**Reasoning emerged**: the share of completions that write intermediate steps rose {steps:+.1f} "
                f"points together with lenient accuracy ({lenient:+.1f} points{longer}) {band}.")
    if up(lenient):
        how = (f", but without intermediate steps ({moved('the steps share', steps)})" if steps is not None
               else " (no steps share was logged: the task defines no reasoning steps, or the run predates them)")
        return (f"Lenient accuracy rose {lenient:+.1f} points {band}: the trained model writes **more right answers**, "
                f"not only the format{how}{longer}.")
    if up(steps):
        return (f"**Steps without accuracy**: the share of completions that write intermediate steps rose "
                f"{steps:+.1f} points, but {moved('lenient accuracy', lenient)} {band}{longer}.")
    if up(strict):
        worse = (", and fewer final answers are right than at step 0" if down(lenient) else "")
        return (f"Strict accuracy rose {strict:+.1f} points but {moved('lenient accuracy', lenient)} {band}: the "
                "gain is mostly **format** (the answer now sits where the strict grader looks), not better answers"
                f"{worse}{longer}.")
    if down(lenient) or down(strict):
        return (f"**Worse than untrained**: {moved('strict accuracy', strict)} and "
                f"{moved('lenient accuracy', lenient)} "
                f"{band}{longer}.")
    return (f"**Nothing beyond chance**: neither grader nor the steps share moved by more than ~{noise:.0f} points "
            f"{on}{longer}.")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def correct_vs_incorrect(completions: Sequence[dict[str, Any]], eval_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Length (tokens), reflection-phrase rate and (where the task counts them) the share with
    intermediate steps, of correct vs incorrect completions."""
    from aha.metrics import has_reflection

    train = [r for r in completions if not r.get("probe") and isinstance(r.get("correct"), bool)
             and isinstance(r.get("completion"), str)]
    last = max((r.get("step", 0) for r in eval_rows), default=None)
    final = [r for r in eval_rows if r.get("step") == last and isinstance(r.get("completion"), str)]
    cols = [(f"training rollouts, {w}", [r for r in train if r["correct"] == ok]) for w, ok in
            (("correct", True), ("incorrect", False))]
    if final:
        cols += [(f"held-out eval at step {last}, {w}", [r for r in final if bool(r.get("correct")) == ok])
                 for w, ok in (("correct", True), ("incorrect", False))]
    if not train and not final:
        return []

    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.1f}" if xs else "-"

    def rate(rs: list[dict[str, Any]]) -> str:
        return f"{100 * sum(has_reflection(r['completion']) for r in rs) / len(rs):.1f}%" if rs else "-"

    md = ["## Correct vs incorrect completions", "",
          "| | " + " | ".join(name for name, _ in cols) + " |", "|---" * (len(cols) + 1) + "|",
          "| completions | " + " | ".join(str(len(rs)) for _, rs in cols) + " |",
          "| mean length (tokens) | " + " | ".join(
              mean([float(r["length"]) for r in rs if isinstance(r.get("length"), (int, float))]) for _, rs in cols)
          + " |",
          "| reflection-phrase rate | " + " | ".join(rate(rs) for _, rs in cols) + " |"]
    if any(isinstance(r.get("steps"), int) for _, rs in cols for r in rs):  # the task counts reasoning steps
        def with_steps(rs: list[dict[str, Any]]) -> str:
            counted = [r["steps"] for r in rs if isinstance(r.get("steps"), int)]
            return f"{100 * sum(s > 0 for s in counted) / len(counted):.1f}%" if counted else "-"
        md.append("| with intermediate steps | " + " | ".join(with_steps(rs) for _, rs in cols) + " |")
    return md + [""]
