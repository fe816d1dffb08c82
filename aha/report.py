"""`aha report RUN_DIR`: plots and sample completions from a run's logs, in RUN_DIR/report/.

Reads `metrics.jsonl` (one row per step) and `completions.jsonl`, writes PNG plots (matplotlib,
Agg backend: no display needed) and `report.md`, which embeds them by relative path and holds:

- first, the result: held-out accuracy of the untrained policy (the step-0 eval) against the
  trained one (the last eval), same problems and greedy decoding, under the strict grader (the
  answer in the required format: what the rewards pay for) and the lenient one (the final answer,
  format aside), so a gain from format alone is told apart from better answers; with the share of
  completions that write intermediate steps and their length, and a verdict that says "reasoning
  emerged" only when steps and accuracy rose together beyond chance (aha/report_result.py);
- length and reflection-phrase rate of correct vs incorrect completions;
- the "aha" steps: the first step where the *smoothed* format rate, accuracy and reflection-phrase
  rate reach their thresholds (defaults 0.5, 0.2, 0.1; flags change them), or "not reached" with
  the best value. Smoothing is a trailing moving average, so a crossing never peeks at later steps;
- a summary table (first, last and best smoothed value of the main metrics);
- plots, among them the held-out evals on one step axis: accuracy (strict, lenient), steps share, length;
- one prompt's completion early, in the middle and late in the run. Rows the trainer marks
  `"probe": true` (a fixed held-out prompt, greedy) are used when present; otherwise the prompt id
  seen at the most widely spread steps; otherwise (no prompt seen twice) any completions from an
  early, a middle and a late step - the report says which.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aha.errors import AhaError
from aha.fsio import atomic_write_text
from aha.report_result import correct_vs_incorrect, result_section

DEFAULT_THRESHOLDS = {"format_rate": 0.5, "accuracy": 0.2, "reflection_rate": 0.1}
MAX_SAMPLE_CHARS = 2000
Series = tuple[list[int], list[float]]


# ---------------------------------------------------------------------------- data

def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows sorted by step (a step logged twice keeps its last row)."""
    from aha.log import read_jsonl

    path = Path(run_dir) / "metrics.jsonl"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; pass the output_dir of a run "
                                "(e.g. runs/cpu-demo)")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl, so it is not a run directory (or the run "
                                "has not finished a step yet); pass the output_dir of a run, e.g. runs/smoke")
    by_step = {r["step"]: r for r in read_jsonl(path) if isinstance(r, dict) and isinstance(r.get("step"), int)}
    if not by_step:
        raise AhaError(f"{path} holds no logged steps yet; wait for the first step, or train with "
                       "`aha train -c smoke` to see a report")
    return [by_step[s] for s in sorted(by_step)]


def series(rows: Sequence[dict[str, Any]], key: str) -> Series:
    """(steps, values) of one metric, skipping steps where it is missing or not a finite number."""
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def default_window(n_steps: int) -> int:
    return max(1, min(25, round(n_steps / 20)))


def first_crossing(s: Series, threshold: float) -> int | None:
    """First step whose value is >= threshold."""
    return next((step for step, v in zip(*s) if v >= threshold), None)


def pick_samples(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Completion rows from an early, a middle and a late step, and a sentence saying what they are."""
    rows = [r for r in rows if isinstance(r.get("step"), int) and isinstance(r.get("completion"), str)]
    probes = [r for r in rows if r.get("probe")]
    if probes:
        pool = probes
        how = (f"The trainer's fixed probe prompt `{probes[0].get('prompt_id')}` (greedy), "
               f"logged at {_n_steps(pool)} steps.")
    else:
        steps_of: dict[str, set[int]] = defaultdict(set)
        for r in rows:
            steps_of[str(r.get("prompt_id"))].add(r["step"])
        best = max(steps_of, key=lambda p: (max(steps_of[p]) - min(steps_of[p]), len(steps_of[p])), default=None)
        if best is not None and len(steps_of[best]) > 1:
            pool = [r for r in rows if str(r.get("prompt_id")) == best]
            how = (f"No probe rows in completions.jsonl; prompt `{best}` is the one seen at the most widely "
                   f"spread steps ({len(steps_of[best])} steps); the first of its completions at each step is shown.")
        else:
            pool = rows
            how = ("No probe rows and no prompt was seen at more than one step, so these are completions of "
                   "*different* prompts (the first logged at each step).")
    steps = sorted({r["step"] for r in pool})
    if not steps:
        return [], "completions.jsonl holds no completions."
    middle = min(steps, key=lambda s: abs(s - (steps[0] + steps[-1]) / 2))
    chosen = sorted({steps[0], middle, steps[-1]})
    first_at = {}
    for r in pool:
        first_at.setdefault(r["step"], r)
    return [first_at[s] for s in chosen], how


def _n_steps(rows: Sequence[dict[str, Any]]) -> int:
    return len({r["step"] for r in rows})


# ---------------------------------------------------------------------------- plots

def _plot(ax: Any, s: Series, window: int, label: str, color: str, width: float = 1.6) -> None:
    """Raw values faint, their moving average bold."""
    if not s[0]:
        return
    ax.plot(s[0], s[1], color=color, alpha=0.25, linewidth=0.8)
    few = len(s[0]) < 10  # a short run: markers, or a single step would draw nothing
    ax.plot(s[0], moving_average(s[1], window), color=color, linewidth=width, label=label,
            marker="o" if few else None, markersize=3)


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one logged step: widen, or the locator falls back to fractional steps
        mid = round((lo + hi) / 2)
        ax.set_xlim(mid - 1, mid + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "step 0.96" on short runs


def _finish(fig: Any, ax: Any, title: str, path: Path, ylabel: str = "") -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    _integer_steps(ax)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def make_plots(rows: Sequence[dict[str, Any]], out: Path, window: int, aha: dict[str, int | None],
               thresholds: dict[str, float]) -> list[tuple[str, str]]:
    """Write the PNGs; returns (file name, caption) for each."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and over ssh
    import matplotlib.pyplot as plt

    made = []

    def save(fig: Any, ax: Any, name: str, title: str, caption: str, ylabel: str = "") -> None:
        _finish(fig, ax, title, out / name, ylabel)
        plt.close(fig)
        made.append((name, caption))

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    _plot(ax, series(rows, "reward"), window, "total", "black", 2.2)
    components = sorted({k for r in rows for k in r if k.startswith("reward/")})
    for i, key in enumerate(components):
        _plot(ax, series(rows, key), window, key.removeprefix("reward/"), f"C{i}")
    save(fig, ax, "rewards.png", "Reward per component (weighted, mean over the batch)", "Rewards", "reward")

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for row, (key, color) in enumerate((("accuracy", "C0"), ("format_rate", "C1"))):
        _plot(ax, series(rows, key), window, f"{key} (train)", color)
        ev = series(rows, f"eval/{key}")
        if ev[0]:
            held_out = key == "accuracy"  # the result: its own colour, joined points (step 0 -> the end)
            ax.plot(ev[0], ev[1], "o-" if held_out else "s", color="C3" if held_out else color, markersize=5,
                    linewidth=2.0, label=f"{key} (held-out, strict)" if held_out else f"{key} (held-out)")
        ax.axhline(thresholds[key], color=color, linestyle=":", linewidth=0.9)
        if aha.get(key) is not None:
            ax.axvline(aha[key], color=color, linestyle="--", linewidth=1.0)
            # one text row per marker: two aha steps a step apart would otherwise print over each other
            ax.annotate(f" {key.split('_')[0]} @ {aha[key]}", (aha[key], 1.0 - 0.06 * row), color=color,
                        fontsize=8, va="top")
    ev = series(rows, "eval/accuracy_lenient")
    if ev[0]:
        ax.plot(ev[0], ev[1], "^--", color="C2", markersize=5, label="accuracy (held-out, lenient)")
    ax.set_ylim(-0.02, 1.05)
    save(fig, ax, "accuracy.png", "Accuracy and format rate", "Accuracy and format rate (dotted: thresholds, "
         "dashed: the aha steps)", "fraction of completions")

    held_out = reasoning_plot(rows, plt)
    if held_out is not None:
        fig, ax = held_out
        save(fig, ax, "held_out.png", "Held-out: accuracy, steps and length (greedy, every eval)",
             "Held-out accuracy (strict, lenient), share of completions with intermediate steps, and mean "
             "completion length (right axis): reasoning that emerges shows steps and accuracy rising together",
             "fraction of held-out problems")

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    _plot(ax, series(rows, "completion_len"), window, "mean", "C2")
    mx = series(rows, "completion_len_max")
    if mx[0]:
        ax.plot(mx[0], mx[1], color="C2", alpha=0.4, linestyle="--", linewidth=0.9, label="max")
    ev = series(rows, "eval/completion_len")
    if ev[0]:
        ax.plot(ev[0], ev[1], "o", color="C2", markersize=5, label="eval mean")
    save(fig, ax, "length.png", "Completion length", "Completion length (tokens)", "tokens")

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    _plot(ax, series(rows, "reflection_rate"), window, "train", "C3")
    ev = series(rows, "eval/reflection_rate")
    if ev[0]:
        ax.plot(ev[0], ev[1], "o", color="C3", markersize=5, label="eval")
    ax.axhline(thresholds["reflection_rate"], color="C3", linestyle=":", linewidth=0.9)
    save(fig, ax, "reflection.png", "Reflection-phrase rate (\"wait\", \"let me check\", ...)",
         "Share of completions with a reflection phrase (aha.metrics.REFLECTION_PHRASES)", "fraction")

    health = [k for k in ("frac_zero_std", "answer_collapse", "truncated_rate", "entropy", "kl", "grad_norm", "clip_frac",
                          "mismatch/kl", "mismatch/max_abs_logp_diff", "dynamic/extra_rounds") if series(rows, k)[0]]
    if health:
        cols = 2
        nrows = (len(health) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(9, 2.6 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, health):
            _plot(ax, series(rows, key), window, key, "C4")
            ax.set_title(key, fontsize=10)
            ax.grid(alpha=0.3)
            _integer_steps(ax)
        for ax in list(axes.flat)[len(health):]:
            ax.axis("off")
        fig.supxlabel("step")
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=110)
        plt.close(fig)
        made.append(("training.png", ("Training health: groups with no reward spread, truncation, entropy, KL, "
                                      "gradient norm, clipping, the engine/trainer mismatch, DAPO's refill rounds")))
    return made


def reasoning_plot(rows: Sequence[dict[str, Any]], plt: Any) -> tuple[Any, Any] | None:
    """(figure, axes) of the held-out evals on one step axis: strict and lenient accuracy and the
    steps share (left, fractions), mean completion length (right, tokens); None without evals."""
    curves = [("eval/accuracy", "accuracy, strict", "C3", "o-"),
              ("eval/accuracy_lenient", "accuracy, lenient", "C2", "^--"),
              ("eval/steps_share", "completions with steps", "C0", "s-")]
    if not series(rows, "eval/accuracy")[0]:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key, label, color, style in curves:
        s = series(rows, key)
        if s[0]:
            ax.plot(s[0], s[1], style, color=color, markersize=5, linewidth=1.8, label=label)
    ax.set_ylim(-0.02, 1.05)
    length = series(rows, "eval/completion_len")
    if length[0]:
        right = ax.twinx()
        right.plot(length[0], length[1], "d:", color="C7", markersize=5, linewidth=1.4)
        right.set_ylabel("tokens")
        right.set_ylim(0, max(length[1]) * 1.15 + 1)
        # an empty twin on the left axis puts the length into its legend (`_finish` draws that one)
        ax.plot([], [], "d:", color="C7", markersize=5, linewidth=1.4, label="mean length (tokens, right axis)")
    return fig, ax


# ---------------------------------------------------------------------------- report.md

def write_report(run_dir: str | Path, out_dir: str | Path | None = None, window: int = 0,
                 thresholds: dict[str, float] | None = None) -> Path:
    """Write the plots and report.md (default: RUN_DIR/report/); returns the report.md path."""
    from aha.log import read_jsonl

    run_dir = Path(run_dir)
    rows = load_metrics(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    window = window or default_window(len(rows))
    # Eval points are already means over many problems and are sparse: they are not smoothed.
    keys = ("reward", "accuracy", "format_rate", "completion_len", "reflection_rate", "truncated_rate",
            "answer_collapse", "frac_zero_std", "steps_share", "eval/accuracy", "eval/accuracy_lenient",
            "eval/format_rate", "eval/steps_share", "eval/completion_len")
    smoothed = {k: _smooth(series(rows, k), 1 if k.startswith("eval/") else window) for k in keys}
    aha = {k: first_crossing(smoothed[k], th[k]) for k in th}
    plots = make_plots(rows, out, window, aha, th)

    comp_path = run_dir / "completions.jsonl"
    completions = read_jsonl(comp_path) if comp_path.is_file() else []
    cfg = _run_config(run_dir)
    first, last = rows[0]["step"], rows[-1]["step"]
    intro = (f"Model **{cfg.get('model', '?')}** ({cfg.get('finetune', '?')}), task **{cfg.get('task', '?')}**, "
             f"{len(rows)} logged steps ({first} to {last}). Curves: moving average over {window} step(s), raw "
             "values faint; thresholds apply to the smoothed curves.")
    eval_path = run_dir / "eval_completions.jsonl"
    eval_rows = read_jsonl(eval_path) if eval_path.is_file() else []
    md = [f"# aha report: `{run_dir}`", "", intro, "", *result_section(rows), *correct_vs_incorrect(completions, eval_rows),
          "## The aha steps", "", "| event | threshold (smoothed) | first step |", "|---|---|---|"]
    names = {"format_rate": "format learned", "accuracy": "accuracy", "reflection_rate": "reflection"}
    for key, name in names.items():
        md.append(f"| {name} | `{key}` >= {th[key]:g} | {_crossing_text(aha[key], smoothed[key])} |")
    md += ["", "## Summary", "", "| metric | first | last | best (smoothed) |", "|---|---|---|---|"]
    for key, s in smoothed.items():
        raw = series(rows, key)
        if raw[0]:
            best = _best(s, low=key in ("truncated_rate", "answer_collapse", "frac_zero_std"))
            md.append(f"| {key} | {_fmt(raw[1][0])} | {_fmt(raw[1][-1])} | {_fmt(best[1])} at step {best[0]} |")
    md += ["", "## Curves", ""]
    for name, caption in plots:
        md += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    md += _samples_section(completions, comp_path.is_file())
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


def _smooth(s: Series, window: int) -> Series:
    return s[0], moving_average(s[1], window)


def _best(s: Series, low: bool = False) -> tuple[int, float]:
    pick = min if low else max
    i = pick(range(len(s[1])), key=lambda j: s[1][j])
    return s[0][i], s[1][i]


def _crossing_text(step: int | None, s: Series) -> str:
    if step is not None:
        return f"**step {step}**"
    if not s[0]:
        return "not logged"
    best_step, best = _best(s)
    return f"not reached (best {_fmt(best)} at step {best_step})"


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _samples_section(completions: list[dict[str, Any]], have_file: bool) -> list[str]:
    md = ["## The same prompt, early / middle / late", ""]
    if not have_file:
        return md + ["No completions.jsonl in this run (log_completions_every=0?).", ""]
    picked, how = pick_samples(completions)
    md += [how, ""]
    for row, when in zip(picked, ("early", "middle", "late") if len(picked) == 3 else ("early", "late")):
        reward = row.get("reward")
        ok = row.get("correct")
        facts = [f"prompt `{row.get('prompt_id')}`"]
        if isinstance(reward, (int, float)):
            facts.append(f"reward {reward:.3f}")
        if ok is not None:
            facts.append("correct" if ok else "not correct")
        md += [f"### {when}: step {row['step']} ({', '.join(facts)})", ""]
        if isinstance(row.get("prompt"), str):
            md += ["Prompt:", "", *_fenced(row["prompt"]), "", "Completion:", ""]
        md += [*_fenced(row["completion"]), ""]
    return md


def _fenced(text: str) -> list[str]:
    """Text in a fence that it cannot close, with control characters made visible and length capped."""
    clean = "".join(c if c in "\n\t" or c.isprintable() else "\ufffd" for c in text)
    if len(clean) > MAX_SAMPLE_CHARS:
        clean = clean[:MAX_SAMPLE_CHARS] + f"\n... [{len(clean) - MAX_SAMPLE_CHARS} more characters]"
    longest = max((len(run) for run in clean.split("\n") if set(run) == {"~"}), default=0)
    fence = "~" * max(3, longest + 1)
    return [fence + "text", clean, fence]


def _run_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError:
        return {}  # a damaged config only costs the header line its model and task names
    return data if isinstance(data, dict) else {}
