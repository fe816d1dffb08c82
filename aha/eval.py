"""Held-out evaluation: pass@1, pass@k and maj@k, format rate, length, reflection rate, reasoning steps.

`evaluate` is what both the trainer's periodic eval and `aha eval` call; it generates with the
rollout engine the trainer uses (`aha.rollout.generate`, batched) and scores with the task's own
`is_correct` / `is_formatted`, never reading `Example.target`.

- `accuracy_lenient`: right by `Task.is_correct_lenient` or by `is_correct`, so never below
  `accuracy`. Reasoning steps (`Task.reasoning_steps`, where the task defines them): `steps_share`,
  `steps_mean`, and the strict accuracy of completions with and without steps
  (`aha.metrics.reasoning_metrics`).

- temperature 0 (the default): one greedy completion per problem; `accuracy` is pass@1.
- `samples=K` with temperature > 0: K completions per problem. `accuracy` is the mean
  correctness over all samples (the unbiased pass@1), `pass@k` uses the unbiased estimator of
  Chen et al. 2021 (Codex paper, eq. 1) for k = 1, 2, 4, ... and K, and `maj@K` is a majority
  vote over final answers.
- maj@k: the answer of a completion is the task's `Task.final_answer` (by default the text of its
  last `<answer>...</answer>` block: a number read by the tasks' number rules
  (`aha.tasks.answers.parse_number`: "$1,000" and "1000" are one answer, "1,2" is not 12), else
  the text with whitespace removed). The most common answer
  wins (ties: the one seen first); the problem counts as solved when the first completion giving
  that answer is correct by `task.is_correct`. Completions without an answer do not vote.
  Equivalent answers written differently ("18" vs "18.0", "1+2" vs "2+1") vote separately, which
  can only lower maj@k.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from math import comb
from typing import Any

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_index(task: Any, completions: Sequence[str]) -> int | None:
    """Index of the first completion carrying the most common `task.final_answer` (ties: seen
    first), or None when no completion has an answer."""
    answers = [task.final_answer(c) for c in completions]
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return answers.index(winner)


def k_values(samples: int) -> list[int]:
    """1, 2, 4, ... below `samples`, and `samples` itself."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


def summarize(task: Any, examples: Sequence[Any], texts: Sequence[str], lengths: Sequence[float],
              truncated: Sequence[bool], samples: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-completion rows from `samples` completions per example (adjacent in `texts`)."""
    n, K = len(examples), samples
    from aha.metrics import reasoning_metrics, reflection_rate
    from aha.records import reasoning_steps

    correct = [bool(task.is_correct(t, examples[i // K])) for i, t in enumerate(texts)]
    # A task that does not subclass Task may lack the lenient grader: it then grades as is_correct.
    grade_lenient = getattr(task, "is_correct_lenient", task.is_correct)
    # Lenient is the looser reading: right by it or by the strict grader (a user task's lenient
    # method that misses what its strict one accepts cannot make lenient accuracy the lower one).
    lenient = [c or bool(grade_lenient(t, examples[i // K])) for i, (t, c) in enumerate(zip(texts, correct))]
    formatted = [bool(task.is_formatted(t, examples[i // K])) for i, t in enumerate(texts)]
    steps = [reasoning_steps(task, t, examples[i // K]) for i, t in enumerate(texts)]
    total = max(len(texts), 1)

    metrics: dict[str, Any] = {
        "n": n,
        "accuracy": sum(correct) / total,
        "accuracy_lenient": sum(lenient) / total,
        "format_rate": sum(formatted) / total,
        "completion_len": sum(lengths) / total,
        "reflection_rate": reflection_rate(list(texts)),
        "truncated_rate": sum(bool(t) for t in truncated) / total,
        # steps_share, steps_mean, accuracy_with_steps / _without_steps (strict), where the task defines steps
        **reasoning_metrics(steps, correct),
    }
    if K > 1:
        per_example = [sum(correct[i * K:(i + 1) * K]) for i in range(n)]
        for k in k_values(K):
            metrics[f"pass@{k}"] = sum(pass_at_k(K, c, k) for c in per_example) / max(n, 1)
        maj = 0
        for i in range(n):
            winner = majority_index(task, texts[i * K:(i + 1) * K])
            maj += winner is not None and correct[i * K + winner]
        metrics[f"maj@{K}"] = maj / max(n, 1)
    rows = [{"id": examples[i // K].id, "sample": i % K, "completion": t, "correct": c, "correct_lenient": le,
             "formatted": f, "length": int(n), **({} if st is None else {"steps": st})}
            for i, (t, c, le, f, n, st) in enumerate(zip(texts, correct, lenient, formatted, lengths, steps))]
    return metrics, rows


class ProgressLines:
    """Progress without a terminal: a line at most every `every` seconds, and one at the end."""

    every = 30.0

    def __init__(self, total: int):
        self.total, self.t0 = total, time.perf_counter()
        self.last = self.t0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        left = f", ~{(self.total - done) / rate:.0f} s left" if done < self.total and rate > 0 else ""
        print(f"aha eval: {done}/{self.total} completions, {now - self.t0:.0f} s{left}", file=sys.stderr, flush=True)


def evaluate(model: Any, tokenizer: Any, task: Any, split: str = "test", limit: int | None = None,
             batch_size: int = 16, max_new_tokens: int = 256, engine: Any = "hf", temperature: float = 0.0,
             samples: int = 1, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             save_completions: bool = False, progress: bool = False) -> dict[str, Any]:
    """Generate on the first `limit` examples of `split` and score them (see the module docstring).

    Returns the metrics (n, accuracy, accuracy_lenient, format_rate, completion_len, reflection_rate,
    truncated_rate, the steps_* figures where the task defines steps, and pass@k / maj@k when samples > 1),
    plus "rows" when save_completions. Sampling draws from
    a private RNG seeded with `seed`, so the caller's (the trainer's) random stream is untouched.
    `engine`: an `aha.rollout.engine.Engine` the caller owns (the trainer's), or a name from
    aha/engines.py: that engine is built once for this call and closed at its end.
    """
    import torch

    from aha.rollout import generate, render_prompt
    from aha.sampling import SamplingParams
    from aha.rollout.engine import make_engine

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if samples > 1 and temperature == 0:
        raise ValueError(f"samples={samples} with temperature 0 gives {samples} identical greedy completions; "
                         "set a temperature > 0 (e.g. 0.7) for pass@k / maj@k")
    pool = task.examples(split)
    examples = list(pool[:limit] if limit else pool)  # slice first: a split may be built lazily
    # Generate in order of prompt length so that a batch's left padding (wasted prefill) is small;
    # results go back to the examples' order below. Character length is a good enough proxy.
    order = sorted(range(len(examples)), key=lambda i: len(render_prompt(tokenizer, examples[i].prompt)))
    prompts = [examples[i].prompt for i in order for _ in range(samples)]  # each prompt K times, adjacent
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            stop=tuple(getattr(task, "stop_strings", ())))
    device = next(model.parameters()).device
    texts: list[str] = []
    lengths: list[float] = []
    truncated: list[bool] = []
    from tqdm import tqdm

    bar = tqdm(total=len(prompts), desc="aha eval", unit="seq", disable=not (progress and sys.stderr.isatty()))
    lines = ProgressLines(len(prompts)) if progress and not sys.stderr.isatty() else None  # logs, pipes
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    own = isinstance(engine, str)
    eng = make_engine(engine, model, tokenizer) if own else engine
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                ro = generate(model, tokenizer, prompts[i:i + batch_size], params, eng)
                texts += ro.texts
                lengths += ro.completion_mask.sum(dim=1).tolist()
                truncated += ro.truncated.tolist()
                bar.update(len(ro.texts))
                if lines is not None:
                    lines.update(len(texts))
    finally:
        if own:
            eng.close()
    bar.close()
    at = {i: pos for pos, i in enumerate(order)}  # example index -> its place in generation order
    back = [at[i] * samples + j for i in range(len(examples)) for j in range(samples)]
    texts, lengths, truncated = ([xs[k] for k in back] for xs in (texts, lengths, truncated))
    metrics, rows = summarize(task, examples, texts, lengths, truncated, samples)
    if save_completions:
        metrics["rows"] = rows
    return metrics
