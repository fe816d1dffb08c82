"""The report's lead: held-out accuracy of the untrained vs the trained policy under the strict
and the lenient grader (DESIGN "What counts as learning"), and how correct and incorrect
completions differ (length, reflection phrases). Markdown lines for `aha report`'s report.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def result_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The run's result: held-out accuracy before (step 0) and after (the last eval), both graders."""
    md = ["## Held-out result: untrained vs trained", ""]
    evals = [r for r in rows if isinstance(r.get("eval/accuracy"), (int, float))]
    if not evals or evals[0]["step"] != 0 or len(evals) < 2:
        return md + ["No held-out eval at step 0 and at a later step in this run: train with `eval_every > 0` "
                     "(it then evaluates the untrained policy before the first update and at the last step).", ""]
    a, b = evals[0], evals[-1]
    md += [f"Greedy decoding, the same {a.get('eval/n', '?')} held-out problems at step 0 and step {b['step']}.", "",
           f"| grader | step 0 (untrained) | step {b['step']} (trained) | change |", "|---|---|---|---|"]
    graders = [("strict: answer in the required format", "eval/accuracy"),
               ("lenient: the last number written", "eval/accuracy_lenient"), ("format rate", "eval/format_rate")]
    change = {}
    for name, key in graders:
        if isinstance(a.get(key), (int, float)) and isinstance(b.get(key), (int, float)):
            change[key] = 100 * (b[key] - a[key])
            md.append(f"| {name} | {100 * a[key]:.1f}% | {100 * b[key]:.1f}% | {change[key]:+.1f} points |")
    strict, lenient = change.get("eval/accuracy"), change.get("eval/accuracy_lenient")
    n = a.get("eval/n")
    # About two standard errors of a proportion near 0.5 on n problems: changes below it may be chance.
    noise = 100 / math.sqrt(n) if isinstance(n, (int, float)) and n > 0 else 10.0
    if strict is not None and lenient is not None:
        if lenient > noise:
            verdict = (f"Lenient accuracy rose {lenient:+.1f} points (chance alone moves a figure on {n} problems "
                       f"by about {noise:.0f}): the trained model writes **more right answers**, not only the format.")
        elif strict > noise:
            verdict = (f"Strict accuracy rose {strict:+.1f} points but lenient only {lenient:+.1f} (within the "
                       f"~{noise:.0f} points chance allows on {n} problems): the gain is mostly **format** (the "
                       "answer now sits where the grader looks), not better answers.")
        else:
            verdict = f"Neither grader moved by more than chance allows on {n} problems (~{noise:.0f} points)."
        md += ["", verdict]
    return md + [""]


def correct_vs_incorrect(completions: Sequence[dict[str, Any]], eval_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Length (tokens) and reflection-phrase rate of correct vs incorrect completions."""
    from aha.log import has_reflection

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
          "| reflection-phrase rate | " + " | ".join(rate(rs) for _, rs in cols) + " |", ""]
    return md
